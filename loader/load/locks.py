"""One locking rule per hour, with session-level advisory locks.

A full-hour run (schedule, `run`, backfill, lookback, reprocess, finalize) holds the hour's lock
exclusively; a shard holds it shared, plus its own shard's lock exclusively. Shards of an hour
run in parallel with each other, never with a full-hour run of that hour, and never twice at
once; different hours never wait on each other.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa


def lock_key(hour_label: str, shard: str | None) -> int:
    """A stable signed 64-bit key for pg_advisory_lock, from the hour (and shard)."""
    digest = hashlib.sha256(f"clickstream-loader:{hour_label}:{shard or '*'}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _try_lock(conn: sa.Connection, hour_key: int, shard_key: int | None) -> bool:
    """One attempt at the hour's locks, all or nothing."""
    if shard_key is None:
        return bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(hour_key))).scalar())
    if not conn.execute(sa.select(sa.func.pg_try_advisory_lock_shared(hour_key))).scalar():
        return False
    if conn.execute(sa.select(sa.func.pg_try_advisory_lock(shard_key))).scalar():
        return True
    conn.execute(sa.select(sa.func.pg_advisory_unlock_shared(hour_key)))
    return False


def _unlock(conn: sa.Connection, hour_key: int, shard_key: int | None) -> None:
    if shard_key is None:
        conn.execute(sa.select(sa.func.pg_advisory_unlock(hour_key)))
        return
    conn.execute(sa.select(sa.func.pg_advisory_unlock(shard_key)))
    conn.execute(sa.select(sa.func.pg_advisory_unlock_shared(hour_key)))


@contextmanager
def hour_lock(
    engine: sa.Engine, hour_label: str, shard: str | None, wait_s: float
) -> Iterator[bool]:
    """Hold the hour's advisory locks for the block (see the module docstring for the rule);
    yields False if they are still taken after waiting up to `wait_s`. The locks live on their
    own connection and die with it, so a killed loader never leaves an hour locked."""
    hour_key = lock_key(hour_label, None)
    shard_key = None if shard is None else lock_key(hour_label, shard)
    with engine.connect() as conn:
        deadline = time.monotonic() + wait_s
        while True:
            acquired = _try_lock(conn, hour_key, shard_key)
            conn.commit()
            if acquired or time.monotonic() >= deadline:
                break
            time.sleep(min(0.25, max(deadline - time.monotonic(), 0)))
        try:
            yield acquired
        finally:
            if acquired:
                try:
                    _unlock(conn, hour_key, shard_key)
                    conn.commit()
                except sa.exc.DBAPIError:
                    pass  # connection gone: the server already released the locks
