"""The warehouse connection: a small engine, failure classes by SQLSTATE, and the retry policy.

PostgreSQL tells us what went wrong with a SQLSTATE; the Python exception class says much less
(a deadlock and a bad value can both arrive as a plain DBAPIError). Retry decisions are taken
from the code, and error text that may echo row values (DETAIL, "Failing row contains ...")
never leaves this module: `describe_error` renders only the SQLSTATE, its name and the object
(constraint, column) involved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson
import sqlalchemy as sa
from psycopg2 import errorcodes
from tenacity import (
    RetryCallState,
    Retrying,
    retry_base,
    stop_after_attempt,
    stop_after_delay,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from loader.config import DatabaseSettings
from loader.schema import HEAD_REVISION, KNOWN_REVISIONS

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

T = TypeVar("T")

#: SQLSTATEs worth a retry: the same statement may well succeed a moment later.
TRANSIENT_SQLSTATES: Final = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "57P01",  # admin_shutdown (server restart, pg_terminate_backend)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (server starting up)
        "53300",  # too_many_connections
        "53400",  # configuration_limit_exceeded
        "25P03",  # idle_in_transaction_session_timeout
    }
)
#: query_canceled: statement_timeout ran out, or a DBA's pg_cancel_backend. A cancel is worth one
#: more try; a statement that timed out will most likely time out again, and every attempt costs
#: a whole DW_PG_STATEMENT_TIMEOUT_MS, so it is retried at most this many times per operation.
QUERY_CANCELED: Final = "57014"
QUERY_CANCELED_RETRIES: Final = 1
#: Whole SQLSTATE classes that are transient: 08 connection exception, 53 insufficient resources.
TRANSIENT_CLASSES: Final = ("08", "53", "58")
#: Classes where the data itself is at fault: retrying cannot help, bisecting can.
DATA_ERROR_CLASSES: Final = ("22", "23")


class SchemaRevisionError(RuntimeError):
    """The warehouse is not at the revision this loader was built for."""


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE behind a SQLAlchemy/psycopg2 exception, if the server sent one."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def is_transient(exc: BaseException) -> bool:
    """Connection trouble, lock/serialization conflicts, resource limits, a cancelled
    statement: try again (a cancelled one only once, see `retrying`)."""
    code = sqlstate(exc)
    if code is not None:
        return (
            code in TRANSIENT_SQLSTATES
            or code == QUERY_CANCELED
            or code.startswith(TRANSIENT_CLASSES)
        )
    # No SQLSTATE: the client lost or never had the connection (refused, reset, timed out).
    if isinstance(exc, sa.exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(
            exc, sa.exc.OperationalError | sa.exc.InterfaceError
        )
    return isinstance(exc, ConnectionError | TimeoutError)


def is_data_error(exc: BaseException) -> bool:
    """The row is at fault (bad value, constraint): isolate it, do not retry it."""
    code = sqlstate(exc)
    return code is not None and code.startswith(DATA_ERROR_CLASSES)


def describe_error(exc: BaseException) -> str:
    """A one-line description safe to log and store: no DETAIL, no row values, no password."""
    code = sqlstate(exc)
    orig = getattr(exc, "orig", exc)
    if code is not None:
        name = errorcodes.lookup(code) or "unknown"
        diag = getattr(orig, "diag", None)
        where = [
            f"{label}={value}"
            for label, value in (
                ("table", getattr(diag, "table_name", None)),
                ("column", getattr(diag, "column_name", None)),
                ("constraint", getattr(diag, "constraint_name", None)),
            )
            if value
        ]
        return " ".join([f"SQLSTATE {code} ({name.lower()})", *where])
    # Connection-level errors carry libpq text (host, port, reason), never row data.
    first_line = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {first_line}"[:300]


def dumps_json(value: Any) -> str:
    """jsonb serializer: orjson for speed, the standard library for integers past 64 bits."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def make_engine(db: DatabaseSettings, *, pool_size: int = 1, max_overflow: int = 1) -> sa.Engine:
    """At most two connections: the run's advisory lock holds one, batches use the other.

    Timeouts are set per session so a stuck lock or an abandoned transaction cannot hold the
    warehouse (or the Lambda) hostage; `hide_parameters` keeps row values out of exceptions.
    """
    options = " ".join(
        [
            f"-c statement_timeout={db.statement_timeout_ms}",
            f"-c lock_timeout={db.lock_timeout_ms}",
            f"-c idle_in_transaction_session_timeout={db.idle_in_transaction_timeout_ms}",
        ]
    )
    return sa.create_engine(
        db.url(),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=300,
        hide_parameters=True,
        json_serializer=dumps_json,
        connect_args={"connect_timeout": db.connect_timeout_s, "options": options},
    )


@dataclass(frozen=True)
class CodeRevisions:
    """The Alembic history this code was built for: its head, and every revision it knows."""

    head: str
    known: frozenset[str]


def code_revisions() -> CodeRevisions:
    """From loader.schema's constants, which a test keeps equal to migrations/versions."""
    return CodeRevisions(HEAD_REVISION, frozenset(KNOWN_REVISIONS))


def code_head_revision() -> str:
    """The Alembic head this code expects."""
    return HEAD_REVISION


# --- expand/contract: which loaders may load into a newer warehouse ------------------------------
#
# A loader knows only the revisions shipped with it, so it cannot read the file of a newer one.
# The newer release's env.py can: after every migration step it writes, in the same transaction,
# the list of revisions whose loaders may load into the new head as the comment of the
# alembic_version table. The loader reads it with the version, in the same statement.

#: Module-level flag a revision sets when a loader built for its down_revision still loads
#: correctly into it: additive changes (a nullable column or one with a default, an index, a
#: table the loader does not use). Anything the old loader would write wrongly, or fail on, leaves
#: it unset, and the chain of compatibility stops there.
COMPATIBLE_MARKER: Final = "loader_compatible"
_COMPATIBILITY_PREFIX: Final = "clickstream-loader: loaders built for these revisions may load here"
_COMPATIBILITY_SEPARATOR: Final = " (this one first): "


def compatible_loader_revisions(script: ScriptDirectory, head: str | None) -> list[str]:
    """`head`, then each down_revision for as long as the revision above it declares
    `loader_compatible = True`: the revisions whose loaders may load into `head`."""
    chain: list[str] = []
    revision = script.get_revision(head) if head else None
    while revision is not None:
        chain.append(revision.revision)
        down = revision.down_revision
        if not getattr(revision.module, COMPATIBLE_MARKER, False) or not isinstance(down, str):
            break
        revision = script.get_revision(down)
    return chain


def compatibility_comment(chain: list[str]) -> str | None:
    """The alembic_version table comment that records `compatible_loader_revisions`."""
    if not chain:
        return None
    return _COMPATIBILITY_PREFIX + _COMPATIBILITY_SEPARATOR + " ".join(chain)


def parse_compatibility_comment(comment: str | None, version: str) -> frozenset[str]:
    """The revisions a warehouse at `version` accepts loaders of; only `version` itself unless
    the comment was written for that very version (an edited or stale comment counts for
    nothing)."""
    if comment and comment.startswith(_COMPATIBILITY_PREFIX + _COMPATIBILITY_SEPARATOR):
        chain = comment.split(_COMPATIBILITY_SEPARATOR, 1)[1].split()
        if chain and chain[0] == version:
            return frozenset(chain)
    return frozenset({version})


@dataclass(frozen=True)
class WarehouseRevision:
    version: str | None
    accepts_loaders_of: frozenset[str]


#: One statement per check: the version and the compatibility comment of the same table.
_READ_REVISION = sa.text(
    "SELECT version_num, obj_description('alembic_version'::regclass, 'pg_class') "
    "FROM alembic_version"
)


def database_revision(conn: sa.Connection) -> WarehouseRevision:
    """The warehouse's Alembic version; no version at all when alembic_version does not exist.
    A role without SELECT on it is told so: that is a missing grant, not a missing table."""
    try:
        with conn.begin_nested():
            row = conn.execute(_READ_REVISION).first()
    except sa.exc.ProgrammingError as exc:
        code = sqlstate(exc)
        if code == "42P01":  # undefined_table
            return WarehouseRevision(None, frozenset())
        if code == "42501":  # insufficient_privilege
            raise SchemaRevisionError(
                "the loader's role may not read alembic_version (SQLSTATE 42501, permission "
                "denied): the DBA grants it SELECT there (deploy/grants.sql)"
            ) from None
        raise
    if row is None or row[0] is None:
        return WarehouseRevision(None, frozenset())
    version = str(row[0])
    return WarehouseRevision(version, parse_compatibility_comment(row[1], version))


def check_revision(conn: sa.Connection, code: CodeRevisions) -> str:
    """Refuse to load into a warehouse this loader was not built for; the loader never runs DDL.

    Loads when the warehouse is at the loader's head, or ahead of it by revisions that all
    declare themselves loader-compatible (expand/contract: the DBA applies the additive step,
    the loader is deployed after). Behind, ahead by anything else, or unknown: refused, naming
    both revisions and what to do."""
    found = database_revision(conn)
    current = found.version
    if current == code.head:
        return current
    if current is None or current in code.known:
        raise SchemaRevisionError(
            f"DW is at revision {current or '<none: alembic_version missing>'}, loader needs "
            f"{code.head}: run `alembic upgrade head` against the warehouse first"
        )
    if code.head in found.accepts_loaders_of:
        return current
    raise SchemaRevisionError(
        f"DW is at revision {current}, which this loader (built for {code.head}) does not know "
        f"and which is not declared loader-compatible back to {code.head}: deploy the loader "
        f"built for {current}, or downgrade the warehouse to {code.head}"
    )


class _RetryTransient(retry_base):
    """Transient errors, a cancelled statement (57014) at most QUERY_CANCELED_RETRIES times."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if exc is None or not is_transient(exc):
            return False
        if sqlstate(exc) == QUERY_CANCELED:
            # Retrying's statistics are per call (reset when a call begins) and per thread.
            stats = retry_state.retry_object.statistics
            stats["query_canceled"] = int(stats.get("query_canceled", 0)) + 1
            return int(stats["query_canceled"]) <= QUERY_CANCELED_RETRIES
        return True


def retrying(
    budget_s: float,
    max_attempts: int,
    on_retry: Callable[[RetryCallState], None] | None = None,
    deadline_s: float | None = None,
) -> Retrying:
    """Exponential backoff with full jitter, on transient errors only, within a time budget.

    `deadline_s` (the Lambda's time left before its safety margin) is a hard end: no backoff
    sleep is started that would end past it, whatever the budget says."""
    stop: stop_base = stop_after_delay(budget_s) | stop_after_attempt(max_attempts)
    if deadline_s is not None:
        stop = stop | stop_before_delay(max(deadline_s, 0.0))
    return Retrying(
        retry=_RetryTransient(),
        stop=stop,
        wait=wait_random_exponential(multiplier=0.25, max=8),
        before_sleep=on_retry,
        reraise=True,
    )


def log_retry(logger: logging.Logger | Any, what: str) -> Callable[[RetryCallState], None]:
    def _log(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            f"{what}: transient failure, retrying",
            extra={
                "attempt": state.attempt_number,
                "error": describe_error(exc) if exc else None,
                "sleep_s": round(state.upcoming_sleep, 3),
            },
        )

    return _log
