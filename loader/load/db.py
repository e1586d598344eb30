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
from typing import Any, Final, TypeVar

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


def error_summary(exc: BaseException) -> str:
    """An error for the ledger and the day run's message: SQLSTATE-based for database errors
    (no row data), the exception's type and first 500 characters otherwise."""
    if sqlstate(exc) is not None or isinstance(exc, sa.exc.DBAPIError):
        return describe_error(exc)
    return f"{type(exc).__name__}: {str(exc)[:500]}"


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
