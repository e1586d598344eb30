"""The data engineer's half of the job: backfill, reprocess, status, check, erase, erasures,
rollup.

Hours past the retention `maintain` recorded are `retired` everywhere: backfill neither loads
nor lists them, status says `retired`, check neither lists nor counts them as unloaded.

Each operation is a function over an `HourLoader` returning plain data; the CLI only parses
arguments and renders. Everything here reads the ledger and S3, and writes only through the
same pipeline the Lambda uses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from loader.extract.deletion import ObjectEraser
from loader.load.completion import completed_objects, incomplete_keys, meta_rows_by_key
from loader.load.erasure import erased_by_hour, list_requests
from loader.load.ledger import event_loaded_hours, hour_records
from loader.load.rollups import Deltas, rebuild_day
from loader.pipeline.erase import Eraser, ErasureRequest, request_view
from loader.pipeline.hour import HourLoader
from loader.pipeline.job import HourJob
from loader.report import Report
from loader.schema import RunState, TriggerKind
from loader.window import HOUR, floor_hour, hour_label, hour_of_key, hour_prefix, hours_between

Progress = Callable[[str, Report | None], None]


@dataclass
class BackfillResult:
    reports: list[Report] = field(default_factory=list)
    skipped_complete: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hours": [r.to_dict() for r in self.reports],
            "skipped_complete": self.skipped_complete,
            "retired": [r.hour for r in self.reports if r.state == RunState.RETIRED],
            "inserted": sum(r.inserted for r in self.reports),
        }


def backfill(
    loader: HourLoader,
    start: datetime,
    end: datetime,
    *,
    force: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> BackfillResult:
    """Every hour in [start, end] in order; hours the ledger marks complete are skipped unless
    `force`, hours past retention come back `retired` (nothing read or written). Stops at the
    first failing hour (after recording it): rerun to resume."""
    result = BackfillResult()
    loader.check_schema()
    with loader.engine.connect() as conn:
        records = hour_records(conn, loader.tables, floor_hour(start), floor_hour(end))
    for hour in hours_between(start, end):
        record = records.get(hour)
        complete = record is not None and record.ever_complete
        if not force and complete and not loader.retired(hour):
            result.skipped_complete.append(hour_label(hour))
            if progress:
                progress(hour_label(hour), None)
            continue
        report = loader.load(HourJob(hour, TriggerKind.BACKFILL, dry_run=dry_run))
        result.reports.append(report)
        if progress:
            progress(hour_label(hour), report)
    return result


def reprocess(
    loader: HourLoader,
    hour: datetime | None = None,
    key: str | None = None,
    progress: Progress | None = None,
) -> list[Report]:
    """Re-read the objects with open quarantine entries and load what now parses; entries of
    objects that load cleanly are marked resolved. With `hour` or `key`, also re-read the
    objects of that hour (or that key) a failed or killed run left part-way: rows in the
    warehouse but no completion record. Idempotent like every load."""
    loader.check_schema()
    q = loader.tables.quarantine
    stmt = sa.select(q.c.hour, q.c.s3_key).where(q.c.resolved_at.is_(None)).distinct()
    if hour is not None:
        stmt = stmt.where(q.c.hour == floor_hour(hour))
    if key is not None:
        stmt = stmt.where(q.c.s3_key == key)
    by_hour: dict[datetime, set[str]] = defaultdict(set)
    events_prefix = loader.settings.events_prefix
    with loader.engine.connect() as conn:
        for row in conn.execute(stmt):
            by_hour[row.hour].add(row.s3_key)
        # A prefix scan of the hour's rows: only for an hour or a key named, never the whole
        # history (the next lookback or rerun of an hour completes such objects as well).
        if key is not None:
            key_hour = hour_of_key(key, events_prefix)
            if (
                key_hour is not None
                and (hour is None or key_hour == floor_hour(hour))
                and key in incomplete_keys(conn, loader.tables, key)
            ):
                by_hour[key_hour].add(key)
        elif hour is not None:
            prefix = hour_prefix(floor_hour(hour), events_prefix)
            by_hour[floor_hour(hour)] |= incomplete_keys(conn, loader.tables, prefix)
    reports = []
    for each_hour in sorted(h for h in by_hour if by_hour[h]):
        job = HourJob(
            each_hour,
            TriggerKind.REPROCESS,
            only_keys=frozenset(by_hour[each_hour]),
            resolve_quarantine=True,
        )
        report = loader.load(job)
        reports.append(report)
        if progress:
            progress(hour_label(each_hour), report)
    return reports


def parse_since(text: str) -> timedelta:
    """`48h`, `7d`, `90m` → a duration."""
    units = {"m": "minutes", "h": "hours", "d": "days"}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"--since must look like 48h, 7d or 90m, got {text!r}")
    return timedelta(**{units[text[-1]]: int(text[:-1])})


def status(
    loader: HourLoader,
    since: timedelta | None = None,
    now: datetime | None = None,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, Any]:
    """One entry per hour from `now - since` (or from `start`) to the last complete hour (or to
    `end`): the ledger's newest run, the objects recorded as loaded in full, open quarantine
    entries, and `missing` for hours with S3 objects but no run in the ledger.

    Runs that read only the keys notifications named (trigger `event`) never make an hour
    `complete`: an hour they loaded into reads `awaiting_sweep` until its hourly run has swept
    it, and `inserted_by_events` says how much of the hour they loaded.

    Hours past the recorded retention read `retired` (their ledger rows are kept: `ledger`
    is the newest run's state), and S3 is not listed for them."""
    now = now or datetime.now(UTC)
    loader.check_schema()
    last = floor_hour(end) if end is not None else floor_hour(now) - HOUR
    if start is not None:
        first = floor_hour(start)
    else:
        first = floor_hour(now - (since if since is not None else timedelta(hours=48)))
    with loader.engine.connect() as conn:
        records = hour_records(conn, loader.tables, first, last)
        counts = _hour_counts(conn, loader, first, last)
        notified = event_loaded_hours(conn, loader.tables, first, last)
        erased = erased_by_hour(
            conn, loader.tables, [hour_label(h) for h in hours_between(first, last)]
        )
    hours = []
    for hour in hours_between(first, last):
        record = records.get(hour)
        events = notified.get(hour)
        entry: dict[str, Any] = {"hour": hour_label(hour)}
        if loader.retired(hour, now):
            entry.update(state="retired", ledger=record.state if record else None)
        elif record is None and events is not None:
            entry.update(_awaiting_sweep(hour, events, counts))
        elif record is None:
            has_objects = next(
                iter(loader.source.list_objects(hour_prefix(hour, loader.settings.events_prefix))),
                None,
            )
            entry["state"] = "missing" if has_objects else "empty"
        else:
            entry.update(_run_entry(hour, record.last_run, record.ever_complete, counts, now))
        if events is not None:
            entry["inserted_by_events"] = int(events["inserted"])
        entry["quarantined"] = int(counts.open_quarantine.get(hour, 0))
        # The ledger's counts stay as the runs loaded them; events erased since are shown here.
        entry["erased"] = erased.get(hour_label(hour), 0)
        hours.append(entry)
    return {"hours": hours}


@dataclass
class _HourCounts:
    """Per hour: objects recorded as loaded, open quarantine entries, events inserted."""

    loaded: dict[datetime, int]
    open_quarantine: dict[datetime, int]
    inserted: dict[datetime, int]


def _hour_counts(
    conn: sa.Connection, loader: HourLoader, first: datetime, last: datetime
) -> _HourCounts:
    q, done, runs = loader.tables.quarantine, loader.tables.loaded_objects, loader.tables.load_runs
    loaded: dict[datetime, int] = dict(
        conn.execute(
            sa.select(done.c.hour, sa.func.count())
            .where(done.c.hour.between(first, last))
            .group_by(done.c.hour)
        ).all()
    )
    open_counts: dict[datetime, int] = dict(
        conn.execute(
            sa.select(q.c.hour, sa.func.count())
            .where(q.c.hour.between(first, last), q.c.resolved_at.is_(None))
            .group_by(q.c.hour)
        ).all()
    )
    # Lookback and reprocess runs add late events to an hour: the hour's total is the sum.
    inserted: dict[datetime, int] = dict(
        conn.execute(
            sa.select(runs.c.hour, sa.func.sum(runs.c.inserted))
            .where(runs.c.hour.between(first, last), runs.c.shard.is_(None))
            .group_by(runs.c.hour)
        ).all()
    )
    return _HourCounts(loaded, open_counts, inserted)


def _awaiting_sweep(hour: datetime, events: dict[str, Any], counts: _HourCounts) -> dict[str, Any]:
    """An hour only notifications have loaded into: not complete until its hourly run."""
    last = events["last_finished_at"]
    return {
        "state": "awaiting_sweep",
        "trigger": TriggerKind.EVENT,
        "objects_loaded": int(counts.loaded.get(hour, 0)),
        "inserted": int(counts.inserted.get(hour, 0)),
        "event_runs": int(events["runs"]),
        "finished_at": last.isoformat() if last else None,
    }


def _run_entry(
    hour: datetime, run: dict[str, Any], ever_complete: bool, counts: _HourCounts, now: datetime
) -> dict[str, Any]:
    """What the ledger says of an hour that ran: its newest run, with the hour's totals."""
    state = run["state"]
    if state == RunState.RUNNING and run["finished_at"] is None and run["started_at"] < now - HOUR:
        state = RunState.FAILED  # a run that never finished (killed): say so
    if state in (RunState.FAILED, RunState.RUNNING) and ever_complete:
        state = RunState.COMPLETE
    return {
        "state": state,
        "trigger": run["trigger"],
        "objects_listed": run["objects_listed"],
        "objects_loaded": int(counts.loaded.get(hour, 0)),
        "inserted": int(counts.inserted.get(hour, 0)),
        "inserted_last_run": run["inserted"],
        "duplicates": run["duplicate_exact"] + run["duplicate_conflicting"],
        "duplicate_conflicting": run["duplicate_conflicting"],
        "suppressed": run["suppressed"],
        "skipped": run["malformed"] + run["invalid"],
        "finished_at": run["finished_at"].isoformat() if run["finished_at"] else None,
        "lag_seconds": (
            round((run["finished_at"] - (hour + HOUR)).total_seconds())
            if run["finished_at"]
            else None
        ),
        "error": run["error_summary"],
    }


#: A retired hour's counts in `check`: unknown, never listed.
_NOT_COUNTED: dict[str, Any] = dict.fromkeys(("objects", "loaded", "quarantined", "unloaded"))


def check(loader: HourLoader, start: datetime, end: datetime) -> dict[str, Any]:
    """Reconcile S3 against the warehouse: per hour, objects listed vs objects recorded as
    loaded in full vs objects accounted for in the quarantine; every other key is unloaded.

    A key counts as loaded when it has a completion record and still holds the
    clickstream_ingest_meta rows it had then: rows alone say nothing (a failed run can leave
    part of an object), and a completion record whose rows a DBA deleted is out of date.

    An hour past the recorded retention is `retired`: not listed, nothing counted unloaded."""
    hours: list[dict[str, Any]] = []
    unloaded: list[str] = []
    q = loader.tables.quarantine
    loader.check_schema()
    for hour in hours_between(start, end):
        if loader.retired(hour):
            hours.append({"hour": hour_label(hour), "state": "retired", **_NOT_COUNTED})
            continue
        prefix = hour_prefix(hour, loader.settings.events_prefix)
        keys = [ref.key for ref in loader.source.list_objects(prefix)]
        with loader.engine.connect() as conn:
            completed = completed_objects(conn, loader.tables, prefix, hour)
            present = meta_rows_by_key(conn, loader.tables, prefix)
            quarantined = set(
                conn.execute(
                    sa.select(q.c.s3_key).where(q.c.hour == hour, q.c.resolved_at.is_(None))
                ).scalars()
            )
        accounted = {k for k, rows in completed.items() if present.get(k, 0) >= rows}
        missing = [k for k in keys if k not in accounted]
        unloaded.extend(missing)
        hours.append(
            {
                "hour": hour_label(hour),
                "objects": len(keys),
                "loaded": sum(1 for k in keys if k in accounted and k not in quarantined),
                "quarantined": sum(1 for k in keys if k in accounted and k in quarantined),
                "unloaded": len(missing),
                "state": "unloaded" if missing else "reconciled",
            }
        )
    return {"hours": hours, "unloaded_keys": unloaded}


def erase(loader: HourLoader, request: ErasureRequest) -> dict[str, Any]:
    """One erasure request (loader/pipeline/erase.py): the record it leaves, or for a dry run
    what it would delete. Deletes from the bucket with the caller's own S3 rights."""
    settings = loader.settings
    objects = (
        None
        if request.dry_run
        else ObjectEraser(settings.raw_bucket, max_attempts=settings.s3_max_attempts)
    )
    try:
        return Eraser(loader, objects).erase(request)
    finally:
        if objects is not None:
            objects.close()


def erasures(
    loader: HourLoader,
    *,
    open_only: bool = False,
    overdue: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The erasure requests, oldest first: all, the open ones, or those open past their due
    date."""
    now = now or datetime.now(UTC)
    with loader.engine.connect() as conn:
        rows = list_requests(
            conn, loader.tables, open_only=open_only, due_by=now if overdue else None
        )
    views = [request_view(row, now) for row in rows]
    return {
        "requests": views,
        "open": sum(1 for v in views if v["state"] == "open"),
        "overdue": sum(1 for v in views if v["overdue"]),
    }


def rollup_days(start: datetime, end: datetime) -> list[date]:
    """The UTC days the hours `start`..`end` fall in: the rollups' grain."""
    first, last = floor_hour(start).date(), floor_hour(end).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def rollup(
    loader: HourLoader,
    start: datetime,
    end: datetime,
    *,
    dry_run: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Recount the dashboard's rollups of every UTC day the hours `start`..`end` touch from the
    raw rows, and apply the difference (a DBA deleted or edited rows by hand; the rollups are
    per day, so whole days are recounted). One transaction per day, holding the rollups' locks:
    loads of the same day wait for it (a second or so per day), reads do not. `dry_run` only
    compares, in a REPEATABLE READ snapshot, and locks nothing."""
    loader.check_schema()
    days = []
    for day in rollup_days(start, end):
        if dry_run:
            difference = loader.retrying("rollup check")(_compare_day, loader, day)
        else:
            difference = loader.retrying("rollup")(_rebuild_day, loader, day)
        entry = _rollup_entry(day, difference, dry_run)
        days.append(entry)
        if progress:
            progress(entry)
    return {"days": days, "in_step": all(d["in_step"] for d in days), "dry_run": dry_run}


def _rebuild_day(loader: HourLoader, day: date) -> Deltas:
    with loader.engine.begin() as conn:
        return rebuild_day(conn, loader.tables, day)


def _compare_day(loader: HourLoader, day: date) -> Deltas:
    with loader.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            return rebuild_day(conn, loader.tables, day, apply=False)


def _rollup_entry(day: date, difference: Deltas, dry_run: bool) -> dict[str, Any]:
    """What one day's recount found: how far the rollups were from the rows."""
    in_step = difference.is_empty()
    return {
        "day": day.isoformat(),
        "state": "in step" if in_step else ("out of step" if dry_run else "rebuilt"),
        "in_step": in_step,
        "events": sum(d[0] for d in difference.events.values()),
        "event_rows": len(difference.events),
        "product_rows": len(difference.products),
        "client_days": len(difference.presence),
    }
