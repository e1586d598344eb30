"""What can go wrong, and whether trying again can help: one root, two branches, one decision.

Every error the loader raises on purpose is a `LoaderError`. A `TransientError` may pass: the
same work a moment or an invocation later can succeed (S3 or the network failing past the
retries, a fanned-out hour whose shards are not all done yet). A `TerminalError` will not pass
by itself: a setting, the credentials or a policy is wrong, a payload is not one the loader
understands, the warehouse is not at a revision this code was built for.

`is_transient` is the one decision on what is retried: the loader's own errors by their branch,
database errors by SQLSTATE (PostgreSQL says what went wrong; the Python exception class says
much less: a deadlock and a bad value can both arrive as a plain DBAPIError), connection
trouble by type. `is_data_error` says when the row, not the moment, is at fault: that is
isolated (bisected and quarantined), never retried.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa


class LoaderError(Exception):
    """The root of every error the loader raises on purpose."""


class TransientError(LoaderError):
    """May pass: the same work later (a retry, the next invocation) can succeed."""


class TerminalError(LoaderError):
    """Will not pass by itself: configuration, access, a payload or a schema to fix first."""


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
#: Whole SQLSTATE classes that are transient: 08 connection exception, 53 insufficient resources,
#: 58 system error.
TRANSIENT_CLASSES: Final = ("08", "53", "58")
#: Classes where the data itself is at fault: retrying cannot help, bisecting can.
DATA_ERROR_CLASSES: Final = ("22", "23")


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE behind a SQLAlchemy/psycopg2 exception, if the server sent one."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def is_transient(exc: BaseException) -> bool:
    """Whether trying again can help: a `TransientError`; a database error whose SQLSTATE says
    so (a cancelled statement only once: see loader/load/db.py `retrying`) or that lost its
    connection; a connection refused, reset or timed out. A `LoaderError` on neither branch wraps
    another error (its `__cause__`), which decides."""
    if isinstance(exc, LoaderError):
        if isinstance(exc, TransientError | TerminalError):
            return isinstance(exc, TransientError)
        return exc.__cause__ is not None and is_transient(exc.__cause__)
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
