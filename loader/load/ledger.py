"""The load ledger and the per-hour lock: what ran, what it did, and who is running now.

One `clickstream_load_runs` row per run per hour, written when the run starts and updated when
it ends, so a killed run stays visible as `running` with no `finished_at`.

One locking rule per hour, session-level advisory locks: a full-hour run (schedule, `run`,
backfill, lookback, reprocess, finalize) holds the hour's lock exclusively; a shard holds it
shared, plus its own shard's lock exclusively. Shards of an hour run in parallel with each other,
never with a full-hour run of that hour, and never twice at once; different hours never wait on
each other.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import distinct_on, insert

from loader.load.sink import Tables
from loader.report import Report


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


_COUNT_COLUMNS = (
    "objects_listed",
    "events_read",
    "inserted",
    "duplicate_exact",
    "duplicate_conflicting",
    "sanitised",
    "truncated",
    "retries",
)


def _counts(report: Report) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(report, name) for name in _COUNT_COLUMNS}
    values["malformed"] = report.malformed.count
    values["invalid"] = report.invalid.count
    values["quarantined"] = report.quarantined.count
    return values


def start_run(
    engine: sa.Engine,
    tables: Tables,
    report: Report,
    hour: datetime,
    started_at: datetime,
    loader_version: str,
) -> None:
    """Record the run as `running`. Idempotent: this is retried, and a COMMIT whose reply was
    lost may have landed - the retry must not fail on its own row (unique violation)."""
    with engine.begin() as conn:
        conn.execute(
            insert(tables.load_runs)
            .values(
                run_id=uuid.UUID(report.run_id),
                hour=hour,
                trigger=report.trigger,
                shard=report.shard,
                started_at=started_at,
                state="running",
                loader_version=loader_version,
                db_revision=report.db_revision,
            )
            .on_conflict_do_nothing(index_elements=["run_id"])
        )


def finish_run(engine: sa.Engine, tables: Tables, report: Report, finished_at: datetime) -> None:
    runs = tables.load_runs
    with engine.begin() as conn:
        conn.execute(
            sa.update(runs)
            .where(runs.c.run_id == uuid.UUID(report.run_id))
            .values(
                finished_at=finished_at,
                state=report.state,
                resume_after=report.resume_after,
                newest_event_at=(
                    datetime.fromisoformat(report.newest_event_at)
                    if report.newest_event_at
                    else None
                ),
                error_summary=report.error,
                **_counts(report),
            )
        )


@dataclass(frozen=True)
class HourRecord:
    """The ledger's view of one hour: its newest run and whether any run completed it."""

    hour: datetime
    state: str
    last_run: dict[str, Any]
    ever_complete: bool


def hour_records(
    conn: sa.Connection, tables: Tables, start: datetime, end: datetime, shard: str | None = None
) -> dict[datetime, HourRecord]:
    """Newest run per hour in [start, end], full-hour runs only unless a shard is named.

    Reprocess runs are left out: they read only an hour's quarantined keys, so their
    `complete` says nothing about the rest of the hour (a partial hour stays partial)."""
    runs = tables.load_runs
    shard_filter = runs.c.shard.is_(None) if shard is None else runs.c.shard == shard
    whole_hour = sa.and_(
        runs.c.hour.between(start, end), shard_filter, runs.c.trigger != "reprocess"
    )
    newest = (
        sa.select(runs)
        .where(whole_hour)
        .ext(distinct_on(runs.c.hour))
        .order_by(runs.c.hour, runs.c.started_at.desc())
    )
    completed = set(
        conn.execute(
            sa.select(runs.c.hour).where(whole_hour, runs.c.state == "complete").distinct()
        ).scalars()
    )
    out: dict[datetime, HourRecord] = {}
    for row in conn.execute(newest).mappings():
        out[row["hour"]] = HourRecord(
            row["hour"], row["state"], dict(row), row["hour"] in completed
        )
    return out


def _under(column: sa.ColumnElement[str], prefix: str) -> sa.ColumnElement[bool]:
    """`column LIKE 'prefix%'` with the prefix taken literally (the "C" collation lets a btree
    index on the column serve it)."""
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return column.like(pattern, escape="\\")


def completed_objects(conn: sa.Connection, tables: Tables, prefix: str) -> dict[str, int]:
    """Keys under `prefix` recorded as loaded in full, each with the clickstream_ingest_meta
    rows it had when it completed.

    Only this record says an object is loaded: rows in the event tables or the quarantine may
    be what a failed run left of it (the slices of a big object commit one by one).
    """
    done = tables.loaded_objects
    rows = conn.execute(
        sa.select(done.c.s3_key, done.c.meta_rows).where(_under(done.c.s3_key, prefix))
    )
    return {row.s3_key: row.meta_rows for row in rows}


def meta_rows_by_key(conn: sa.Connection, tables: Tables, prefix: str) -> dict[str, int]:
    """clickstream_ingest_meta rows per key under `prefix`, now (a prefix scan of its index)."""
    meta = tables.meta
    rows = conn.execute(
        sa.select(meta.c.s3_key, sa.func.count())
        .where(_under(meta.c.s3_key, prefix))
        .group_by(meta.c.s3_key)
    )
    return {key: int(n) for key, n in rows}


def incomplete_keys(conn: sa.Connection, tables: Tables, prefix: str) -> set[str]:
    """Keys under `prefix` with rows in the event tables or the quarantine but no completion
    record: objects a failed or killed run left part-way."""
    meta, q, done = tables.meta, tables.quarantine, tables.loaded_objects
    with_rows = sa.union(
        sa.select(meta.c.s3_key.label("s3_key")).where(_under(meta.c.s3_key, prefix)),
        sa.select(q.c.s3_key.label("s3_key")).where(_under(q.c.s3_key, prefix)),
    ).subquery()
    unrecorded = sa.select(with_rows.c.s3_key).where(
        ~sa.exists().where(done.c.s3_key == with_rows.c.s3_key)
    )
    return set(conn.execute(unrecorded).scalars())


def open_quarantine(
    conn: sa.Connection, tables: Tables, hour: datetime | None = None, key: str | None = None
) -> Sequence[sa.Row[Any]]:
    q = tables.quarantine
    stmt = (
        sa.select(q).where(q.c.resolved_at.is_(None)).order_by(q.c.hour, q.c.s3_key, q.c.position)
    )
    if hour is not None:
        stmt = stmt.where(q.c.hour == hour)
    if key is not None:
        stmt = stmt.where(q.c.s3_key == key)
    return conn.execute(stmt).all()


def finalize_run_id(hour_label: str, shard_count: int) -> uuid.UUID:
    """The same id for every finalize of an hour fanned out `shard_count` ways: a retried
    finalize updates its one ledger row instead of adding another."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"clickstream-loader:finalize:{hour_label}:{shard_count}")


def _covering_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """A shard's runs, oldest first → its newest complete run and the partial passes it
    resumed from (the passes that together listed the shard once); None if none completed."""
    complete = [i for i, run in enumerate(runs) if run["state"] == "complete"]
    if not complete:
        return None
    end = complete[-1]
    start = end
    while start > 0 and runs[start - 1]["state"] == "partial":
        start -= 1
    return runs[start : end + 1]


def finalize_sharded_hour(
    engine: sa.Engine,
    tables: Tables,
    hour: datetime,
    shard_count: int,
    report: Report,
    loader_version: str,
) -> list[str]:
    """Record a fanned-out hour as one full-hour run once every shard has completed.

    Returns the shards (`i/n`) still missing a complete run. When none is missing, the hour's
    finalize row (one per hour and shard count, whatever the number of retries) holds:
    `inserted` and `retries` summed over every run of every shard (each event is inserted by
    exactly one run, whichever pass or attempt it was), the other counts summed over the passes
    that listed each shard once (its newest complete run and the partial passes it resumed from).
    """
    runs = tables.load_runs
    expected = {f"{i}/{shard_count}" for i in range(shard_count)}
    with engine.begin() as conn:
        shard_runs = (
            conn.execute(
                sa.select(runs)
                .where(runs.c.hour == hour, runs.c.shard.in_(expected))
                .order_by(runs.c.shard, runs.c.started_at)
            )
            .mappings()
            .all()
        )
        by_shard: dict[str, list[dict[str, Any]]] = {}
        for row in shard_runs:
            by_shard.setdefault(row["shard"], []).append(dict(row))
        covering = {shard: _covering_runs(by_shard.get(shard, [])) for shard in expected}
        missing = sorted(shard for shard, passes in covering.items() if passes is None)
        if missing:
            return missing
        passes = [run for shard_passes in covering.values() for run in shard_passes or []]
        every_run = [dict(row) for row in shard_runs]
        totals: dict[str, int] = {
            name: sum(int(run[name]) for run in passes)
            for name in (*_COUNT_COLUMNS, "malformed", "invalid", "quarantined")
        }
        for name in ("inserted", "retries"):
            totals[name] = sum(int(run[name]) for run in every_run)
        newest = max(
            (run["newest_event_at"] for run in passes if run["newest_event_at"]), default=None
        )
        run_id = finalize_run_id(report.hour, shard_count)
        values: dict[str, Any] = {
            "started_at": min(run["started_at"] for run in passes),
            "finished_at": datetime.now(UTC),
            "state": "complete",
            "newest_event_at": newest,
            "loader_version": loader_version,
            "db_revision": report.db_revision,
            **totals,
        }
        conn.execute(
            insert(runs)
            .values(run_id=run_id, hour=hour, trigger=report.trigger, shard=None, **values)
            .on_conflict_do_update(index_elements=["run_id"], set_=values)
        )
    report.run_id = str(run_id)
    report.inserted = totals["inserted"]
    report.objects_listed = totals["objects_listed"]
    report.events_read = totals["events_read"]
    report.duplicate_exact = totals["duplicate_exact"]
    report.duplicate_conflicting = totals["duplicate_conflicting"]
    report.duplicates = report.duplicate_exact + report.duplicate_conflicting
    report.retries = totals["retries"]
    report.state = "complete"
    report.newest_event_at = newest.isoformat() if newest else None
    return []
