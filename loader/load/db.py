"""The warehouse connection: a small engine, the retry policy, and error text safe to log.

What is retried is loader/errors.py's decision (`is_transient`: SQLSTATE-based for the
database). Error text that may echo row values (DETAIL, "Failing row contains ...") never
leaves this module: `describe_error` renders only the SQLSTATE, its name and the object
(constraint, column) involved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

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
from loader.errors import QUERY_CANCELED, QUERY_CANCELED_RETRIES, is_transient, sqlstate

T = TypeVar("T")


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
