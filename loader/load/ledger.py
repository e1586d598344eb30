"""The load ledger (clickstream_load_runs): what ran, what it did, and what an hour's state is.

One row per run per hour, written when the run starts and updated when it ends, so a killed run
stays visible as `running` with no `finished_at`. A fanned-out hour gets one more row once every
shard has completed: its finalize, one per hour and shard count however often it is retried.
Who may run an hour at the same time is loader/load/locks.py's rule.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import distinct_on, insert

from loader.load.tables import Tables
from loader.report import Report
from loader.window import SHARD_SCHEMES, Shard

#: Triggers whose runs load only some keys of an hour: never proof that the hour is complete.
SOME_KEYS_TRIGGERS: Final = ("reprocess", "event")

_COUNT_COLUMNS = (
    "objects_listed",
    "events_read",
    "inserted",
    "duplicate_exact",
    "duplicate_conflicting",
    "sanitised",
    "truncated",
    "retries",
    "suppressed",
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

    Reprocess and event runs are left out: they read only some keys of an hour (its
    quarantined ones, the ones notifications named), so their `complete` says nothing about
    the rest of the hour (a partial hour stays partial, a notified one awaits its sweep)."""
    runs = tables.load_runs
    shard_filter = runs.c.shard.is_(None) if shard is None else runs.c.shard == shard
    whole_hour = sa.and_(
        runs.c.hour.between(start, end), shard_filter, runs.c.trigger.not_in(SOME_KEYS_TRIGGERS)
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


def event_loaded_hours(
    conn: sa.Connection, tables: Tables, start: datetime, end: datetime
) -> dict[datetime, dict[str, Any]]:
    """Hours in [start, end] that notifications loaded into (event runs), with how many runs
    and events: the hourly run of such an hour is a sweep of what they missed."""
    runs = tables.load_runs
    rows = conn.execute(
        sa.select(
            runs.c.hour,
            sa.func.count().label("runs"),
            sa.func.coalesce(sa.func.sum(runs.c.inserted), 0).label("inserted"),
            sa.func.max(runs.c.finished_at).label("last_finished_at"),
        )
        .where(runs.c.hour.between(start, end), runs.c.trigger == "event")
        .group_by(runs.c.hour)
    ).mappings()
    return {row["hour"]: dict(row) for row in rows}


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


def _shard_runs(
    conn: sa.Connection, tables: Tables, hour: datetime, labels: list[str]
) -> list[dict[str, Any]]:
    """The hour's runs of the shards named, by shard, oldest first."""
    runs = tables.load_runs
    query = (
        sa.select(runs)
        .where(runs.c.hour == hour, runs.c.shard.in_(labels))
        .order_by(runs.c.shard, runs.c.started_at)
    )
    return [dict(row) for row in conn.execute(query).mappings()]


def _covering_scheme(
    by_shard: dict[str, list[dict[str, Any]]], schemes: list[list[str]]
) -> tuple[list[str], list[dict[str, Any]]]:
    """The scheme closest to complete (the first on a tie): its shards without a complete run,
    and, when there are none, the passes that listed each of its shards once."""
    found: list[tuple[list[str], list[dict[str, Any]]]] = []
    for labels in schemes:
        covering = {shard: _covering_runs(by_shard.get(shard, [])) for shard in labels}
        missing = sorted(shard for shard, passes in covering.items() if passes is None)
        found.append((missing, [run for passes in covering.values() for run in passes or []]))
    return min(found, key=lambda scheme: len(scheme[0]))


def finalize_sharded_hour(
    engine: sa.Engine,
    tables: Tables,
    hour: datetime,
    shard_count: int,
    report: Report,
    loader_version: str,
) -> list[str]:
    """Record a fanned-out hour as one full-hour run once every shard has completed.

    The shards are those of one scheme (loader/window.py `SHARD_SCHEMES`): range shards, or
    the crc32 shards of a fan-out planned before them. The two kinds own different keys, so a
    set mixing them proves nothing. Returns the shards (labels) still missing a complete run,
    of the scheme closest to complete. When none is missing, the hour's finalize row (one per
    hour and shard count, whatever the number of retries) holds: `inserted` and `retries`
    summed over every run of every shard of either kind (each event is inserted by exactly one
    run, whichever pass, attempt or kind it was), the other counts summed over the passes that
    listed each shard of the complete scheme once (its newest complete run and the partial
    passes it resumed from).
    """
    runs = tables.load_runs
    schemes = [
        [Shard(i, shard_count, by).label() for i in range(shard_count)] for by in SHARD_SCHEMES
    ]
    with engine.begin() as conn:
        shard_runs = _shard_runs(conn, tables, hour, [label for ls in schemes for label in ls])
        by_shard: dict[str, list[dict[str, Any]]] = {}
        for row in shard_runs:
            by_shard.setdefault(row["shard"], []).append(row)
        missing, passes = _covering_scheme(by_shard, schemes)
        if missing:
            return missing
        totals = _shard_totals(passes, shard_runs)
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
    _report_finalized(report, run_id, totals, newest)
    return []


def _report_finalized(
    report: Report, run_id: uuid.UUID, totals: dict[str, int], newest: datetime | None
) -> None:
    report.run_id = str(run_id)
    report.inserted = totals["inserted"]
    report.objects_listed = totals["objects_listed"]
    report.events_read = totals["events_read"]
    report.duplicate_exact = totals["duplicate_exact"]
    report.duplicate_conflicting = totals["duplicate_conflicting"]
    report.duplicates = report.duplicate_exact + report.duplicate_conflicting
    report.retries = totals["retries"]
    report.suppressed = totals["suppressed"]
    report.state = "complete"
    report.newest_event_at = newest.isoformat() if newest else None


def _shard_totals(passes: list[dict[str, Any]], every_run: list[dict[str, Any]]) -> dict[str, int]:
    """The finalize row's counts: summed over the passes that listed each shard once, except
    `inserted` and `retries`, summed over every run (an event is inserted by exactly one)."""
    totals: dict[str, int] = {
        name: sum(int(run[name]) for run in passes)
        for name in (*_COUNT_COLUMNS, "malformed", "invalid", "quarantined")
    }
    for name in ("inserted", "retries"):
        totals[name] = sum(int(run[name]) for run in every_run)
    return totals
