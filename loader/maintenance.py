"""`clickstream-loader maintain`: the DBA's partition job, run with the tables' owner's login.

One run, in this order (docs/partitions.md has the why of each step):

1. records the retention in clickstream_retention (keep_days, ahead_days), so every loader
   treats the hours before the new horizon as retired before their rows go;
2. makes the missing day partitions from the horizon (today - keep_days, UTC) to today +
   ahead_days, through clickstream_ensure_partitions in chunks of at most 32 days (what the
   function accepts);
3. deletes the rows of the plain tables that retire with their day (`RETIRED_ROWS`: the
   quarantine, and the hook for later per-day tables), one hour (or day) per transaction;
4. retires every partition whose whole range lies before the horizon (a `_legacy` partition
   once its upper bound does): ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY, which takes
   SHARE UPDATE EXCLUSIVE on the parent (loads and reads go on), then DROP TABLE. Every
   statement waits at most `lock_timeout`; a timed-out step is retried with backoff. A detach
   interrupted after its first transaction leaves the partition "detach pending": the next
   attempt (or run) finishes it with DETACH PARTITION ... FINALIZE;
5. takes the days whose events are gone (before the oldest clickstream_events partition left,
   at most the horizon) out of the dashboard's rollups (loader/load/rollups.py `retire_days`),
   so they stay exact.

Idempotent: a second run finds nothing to make or drop. One run at a time (an advisory lock).
The ledger (clickstream_load_runs) is kept: `status` reads it to say an hour is `retired`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from tenacity import RetryCallState

from loader.config import load_database_settings
from loader.errors import TerminalError, TransientError, sqlstate
from loader.load.db import make_engine, retrying
from loader.load.locks import lock_key
from loader.load.retention import Retention, day_start, read_retention
from loader.load.rollups import retire_days
from loader.load.tables import DEFAULT_TABLES
from loader.observability import log
from loader.schema import (
    CLAIMS_TABLE,
    DAY_PARTITIONED,
    ENSURE_PARTITIONS_FUNCTION,
    EVENTS_TABLE,
    QUARANTINE_TABLE,
    clickstream_retention,
)

T = TypeVar("T")

#: clickstream_ensure_partitions makes at most this many days a call.
ENSURE_CHUNK_DAYS: Final = 32
#: ... and never more than this many days ahead of today.
MAX_AHEAD_DAYS: Final = 366
#: Days a parent keeps beyond the horizon. The claims of an event in a day's first hour sit in
#: the day before (the odd grid's two-hour window starts at 23:00), so that day's claims
#: partition stays as long as the events of the day after it.
EXTRA_DAYS: Final = {CLAIMS_TABLE: 1}
#: Written on a partition before it is detached, so a run stopped between the detach and the
#: drop leaves a table the next run recognises as its own and drops.
RETIRING_MARKER: Final = "clickstream-loader maintain: retired partition, detached to be dropped"
#: The one-run-at-a-time advisory lock.
MAINTAIN_LOCK_KEY: Final = lock_key("maintain", None)


@dataclass(frozen=True)
class RetiredRows:
    """A plain (unpartitioned) table whose rows retire with their UTC day: `maintain` deletes
    those whose `column` (a UTC instant) is before the horizon, one value of it per
    transaction."""

    table: str
    column: str


#: The hook for per-day tables that are not partitioned: each listed table loses its rows
#: before the horizon in step 3. A per-day table that is partitioned like the event tables goes
#: into loader.schema.DAY_PARTITIONED (and clickstream_ensure_partitions) instead, and its
#: partitions are then made and dropped with the others. The dashboard's rollups are
#: derived from the events, not retired by date alone: step 5 (`_retire_rollups`).
RETIRED_ROWS: Final = (RetiredRows(QUARANTINE_TABLE, "hour"),)


class MaintenanceError(TerminalError):
    """The run could not finish; the message says what is left and that a rerun finishes it."""


class MaintenanceRefused(TerminalError):
    """The run was refused before it changed anything (bad options, a shorter retention
    without --allow-shorter)."""


class MaintenanceBusy(TransientError):
    """Another `maintain` holds the warehouse's maintenance lock."""


@dataclass(frozen=True)
class MaintainOptions:
    keep_days: int
    ahead_days: int
    dry_run: bool = False
    lock_timeout_s: float = 5.0
    attempts: int = 5
    allow_shorter: bool = False

    def validate(self) -> None:
        if self.keep_days < 1:
            raise MaintenanceRefused(f"keep_days must be at least 1, got {self.keep_days}")
        if not 0 <= self.ahead_days <= MAX_AHEAD_DAYS:
            raise MaintenanceRefused(
                f"ahead_days must be 0 to {MAX_AHEAD_DAYS}, got {self.ahead_days}"
            )
        if self.lock_timeout_s <= 0 or self.attempts < 1:
            raise MaintenanceRefused("lock_timeout_s must be positive and attempts at least 1")


def options_from_event(event: dict[str, Any]) -> MaintainOptions:
    """The maintenance Lambda's payload: {"action": "maintain", "keep_days": D,
    "ahead_days": N}, optionally "allow_shorter": true."""
    keep, ahead = event.get("keep_days"), event.get("ahead_days", 7)
    if not isinstance(keep, int) or not isinstance(ahead, int) or isinstance(keep, bool):
        raise MaintenanceRefused(
            'maintain needs {"action": "maintain", "keep_days": D, "ahead_days": N} with whole '
            f"numbers, got keep_days={keep!r}, ahead_days={ahead!r}"
        )
    options = MaintainOptions(keep, ahead, allow_shorter=event.get("allow_shorter") is True)
    options.validate()
    return options


@dataclass(frozen=True)
class Partition:
    """One attached partition of a day-partitioned parent, as pg_catalog describes it.
    `parent_sql` and `sql` are schema-qualified names quoted by PostgreSQL's format('%I.%I')."""

    parent: str
    name: str
    parent_sql: str
    sql: str
    lower: datetime | None  # None: MINVALUE (a `_legacy` partition)
    upper: datetime
    pending: bool  # detach pending: an interrupted DETACH ... CONCURRENTLY

    def covers(self, instant: datetime) -> bool:
        return (self.lower is None or self.lower <= instant) and instant < self.upper


@dataclass
class MaintainResult:
    """What a run did (or, dry, would do)."""

    today: date
    horizon: datetime
    options: MaintainOptions
    previous: Retention | None
    made: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    finalized: list[str] = field(default_factory=list)
    rows_deleted: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.options.dry_run,
            "keep_days": self.options.keep_days,
            "ahead_days": self.options.ahead_days,
            "today": self.today.isoformat(),
            "horizon": self.horizon.isoformat(),
            "previous_keep_days": self.previous.keep_days if self.previous else None,
            "made": list(self.made),
            "dropped": list(self.dropped),
            "finalized": list(self.finalized),
            "rows_deleted": dict(self.rows_deleted),
            "retries": self.retries,
            "seconds": round(self.seconds, 3),
        }


def maintain_warehouse(options: MaintainOptions) -> MaintainResult:
    """`maintain` against the warehouse the DW_PG_* settings (or DW_PG_SECRET_ARN) name: the
    CLI's and the maintenance Lambda's entry. Those must be the tables' owner's credentials."""
    engine = make_engine(load_database_settings(), pool_size=1, max_overflow=0)
    try:
        return maintain(engine, options)
    finally:
        engine.dispose()


def maintain(engine: sa.Engine, options: MaintainOptions) -> MaintainResult:
    """Premake and retire partitions as the module docstring says; one run at a time."""
    options.validate()
    try:
        return _maintain(engine, options)
    except sa.exc.ProgrammingError as exc:
        if sqlstate(exc) != "42501":  # insufficient_privilege
            raise
        raise MaintenanceError(
            "permission denied (SQLSTATE 42501): `maintain` detaches and drops partitions and "
            "records the retention, which only the tables' owner may do. Run it with the "
            "owner's login (the one `alembic upgrade` runs as), not the loader's"
        ) from exc


def _maintain(engine: sa.Engine, options: MaintainOptions) -> MaintainResult:
    started = time.monotonic()
    with _maintenance_connection(engine, options) as conn:
        today = conn.execute(sa.text("SELECT (now() AT TIME ZONE 'UTC')::date")).scalar_one()
        horizon = day_start(today - timedelta(days=options.keep_days))
        previous = read_retention(conn, clickstream_retention)
        _refuse_a_silent_shrink(previous, options)
        result = MaintainResult(today, horizon, options, previous)
        before = partitions(conn)
        if options.dry_run:
            _plan(conn, result, before)
        else:
            _apply(conn, result, before)
    result.seconds = time.monotonic() - started
    log.info("maintenance finished", extra={"maintenance": result.to_dict()})
    return result


@contextmanager
def _maintenance_connection(engine: sa.Engine, options: MaintainOptions) -> Iterator[sa.Connection]:
    """An autocommit session (DETACH ... CONCURRENTLY runs outside a transaction) with the
    run's lock_timeout and UTC, holding the maintenance lock."""
    with engine.connect() as raw:
        conn = raw.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(
            sa.select(
                sa.func.set_config("lock_timeout", f"{options.lock_timeout_s * 1000:.0f}", False)
            )
        )
        conn.execute(sa.select(sa.func.set_config("TimeZone", "UTC", False)))
        if not conn.execute(sa.select(sa.func.pg_try_advisory_lock(MAINTAIN_LOCK_KEY))).scalar():
            raise MaintenanceBusy("another `clickstream-loader maintain` is running: try later")
        try:
            yield conn
        finally:
            # A connection gone has released the lock with it.
            with suppress(sa.exc.DBAPIError):
                conn.execute(sa.select(sa.func.pg_advisory_unlock(MAINTAIN_LOCK_KEY)))


def _refuse_a_silent_shrink(previous: Retention | None, options: MaintainOptions) -> None:
    """A shorter retention drops days of events at once, for good: only when asked twice."""
    if previous is None or options.keep_days >= previous.keep_days or options.allow_shorter:
        return
    raise MaintenanceRefused(
        f"the warehouse keeps {previous.keep_days} days (recorded by {previous.updated_by}); "
        f"--keep-days {options.keep_days} would drop {previous.keep_days - options.keep_days} "
        "more days of events at once, for good. If that is intended, add --allow-shorter "
        "(see what goes with --dry-run --allow-shorter first)"
    )


# --- what exists --------------------------------------------------------------------------------

_PARTITIONS = sa.text(
    r"""
    SELECT p.relname AS parent, c.relname AS name, i.inhdetachpending AS pending,
           format('%I.%I', pn.nspname, p.relname) AS parent_sql,
           format('%I.%I', n.nspname, c.relname) AS sql,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz
               AS lower,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
               AS upper
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_class p ON p.oid = i.inhparent
    JOIN pg_namespace pn ON pn.oid = p.relnamespace
    WHERE i.inhparent = ANY (CAST(:parents AS regclass[]))
    ORDER BY p.relname, upper
    """
)


def partitions(conn: sa.Connection) -> list[Partition]:
    """Every attached partition of the day-partitioned parents (on the search_path)."""
    rows = conn.execute(_PARTITIONS, {"parents": list(DAY_PARTITIONED)}).mappings()
    return [
        Partition(
            r["parent"],
            r["name"],
            r["parent_sql"],
            r["sql"],
            r["lower"],
            r["upper"],
            bool(r["pending"]),
        )
        for r in rows
    ]


def retirable(found: list[Partition], horizon: datetime) -> list[Partition]:
    """The partitions whose whole range lies before their parent's horizon."""
    return [p for p in found if p.upper <= horizon - timedelta(days=EXTRA_DAYS.get(p.parent, 0))]


def missing_days(found: list[Partition], first: date, last: date) -> list[tuple[str, date]]:
    """(parent, day) of every day from `first` to `last` (and the day before `first` for the
    claims) no partition covers: what clickstream_ensure_partitions would make."""
    out = []
    for parent in DAY_PARTITIONED:
        day = first - timedelta(days=EXTRA_DAYS.get(parent, 0))
        while day <= last:
            start = day_start(day)
            if not any(p.parent == parent and p.covers(start) for p in found):
                out.append((parent, day))
            day += timedelta(days=1)
    return out


def _partition_name(parent: str, day: date) -> str:
    return f"{parent}_p{day:%Y%m%d}"


# --- dry run ------------------------------------------------------------------------------------


def _plan(conn: sa.Connection, result: MaintainResult, found: list[Partition]) -> None:
    """What a real run would do, changing nothing."""
    last = result.today + timedelta(days=result.options.ahead_days)
    result.made = [
        _partition_name(p, d) for p, d in missing_days(found, result.horizon.date(), last)
    ]
    result.dropped = [p.name for p in retirable(found, result.horizon)]
    result.finalized = [p.name for p in retirable(found, result.horizon) if p.pending]
    for rows in RETIRED_ROWS:
        table = _rows_table(rows)
        result.rows_deleted[rows.table] = conn.execute(
            sa.select(sa.func.count())
            .select_from(table)
            .where(table.c[rows.column] < result.horizon)
        ).scalar_one()
    kept = [p for p in found if p not in retirable(found, result.horizon)]
    _retire_rollups(conn, result, kept, apply=False)


# --- the run ------------------------------------------------------------------------------------


def _apply(conn: sa.Connection, result: MaintainResult, before: list[Partition]) -> None:
    options = result.options
    _record_retention(conn, options)
    last = result.today + timedelta(days=options.ahead_days)
    _ensure_partitions(conn, result, result.horizon.date(), last)
    names_before = {p.name for p in before}
    after = partitions(conn)
    result.made = [p.name for p in after if p.name not in names_before]
    for rows in RETIRED_ROWS:
        result.rows_deleted[rows.table] = _delete_retired_rows(conn, rows, result.horizon)
    failed: list[str] = []
    for part in retirable(after, result.horizon):
        try:
            _retry(result, f"retire {part.name}", partial(_retire, conn, part, result))
        except sa.exc.DBAPIError as exc:
            log.warning(
                "could not retire a partition",
                extra={"partition": part.name, "sqlstate": sqlstate(exc)},
            )
            failed.append(part.name)
    for name in _drop_leftovers(conn):
        result.dropped.append(name)
    _retry(result, "retire rollup days", partial(_retire_rollups, conn, result, partitions(conn)))
    if failed:
        raise MaintenanceError(
            f"could not retire {', '.join(failed)} within {options.attempts} attempts of "
            f"{options.lock_timeout_s:g} s lock_timeout (long transactions on the parent?); "
            f"everything else is done. Rerun `clickstream-loader maintain`: it finishes them "
            "(a detach left pending is finalized)"
        )


def _retire_rollups(
    conn: sa.Connection, result: MaintainResult, kept: list[Partition], *, apply: bool = True
) -> None:
    """The rollups lose the days no clickstream_events partition holds any more: those before
    the oldest one left (none while a `_legacy` partition from MINVALUE stays), at most the
    horizon's."""
    events = [p for p in kept if p.parent == EVENTS_TABLE]
    if any(p.lower is None for p in events):
        return
    before = min([result.horizon, *(p.lower for p in events if p.lower is not None)]).date()
    deleted = retire_days(conn, DEFAULT_TABLES, before, apply=apply)
    result.rows_deleted.update({table: n for table, n in deleted.items() if n})
    if apply and any(deleted.values()):
        log.info("retired days out of the rollups", extra={"before": str(before), **deleted})


def _record_retention(conn: sa.Connection, options: MaintainOptions) -> None:
    t = clickstream_retention
    values = {"keep_days": options.keep_days, "ahead_days": options.ahead_days}
    conn.execute(
        insert(t)
        .values(singleton=True, **values)
        .on_conflict_do_update(
            index_elements=["singleton"],
            set_={**values, "updated_at": sa.func.now(), "updated_by": sa.func.current_user()},
        )
    )


def _ensure_partitions(
    conn: sa.Connection, result: MaintainResult, first: date, last: date
) -> None:
    start = first
    while start <= last:
        end = min(start + timedelta(days=ENSURE_CHUNK_DAYS - 1), last)
        _retry(result, f"make partitions {start} to {end}", partial(_ensure, conn, start, end))
        start = end + timedelta(days=1)


def _ensure(conn: sa.Connection, first: date, last: date) -> int:
    """One call of clickstream_ensure_partitions: the partitions it made."""
    ensure = getattr(sa.func, ENSURE_PARTITIONS_FUNCTION)
    return int(conn.execute(sa.select(ensure(first, last))).scalar_one())


def _rows_table(rows: RetiredRows) -> sa.TableClause:
    return sa.table(rows.table, sa.column(rows.column))


def _delete_retired_rows(conn: sa.Connection, rows: RetiredRows, horizon: datetime) -> int:
    """Delete `rows.table`'s rows before the horizon, one `column` value per transaction."""
    table = _rows_table(rows)
    column = table.c[rows.column]
    values = conn.execute(sa.select(column).where(column < horizon).distinct()).scalars().all()
    deleted = 0
    for value in sorted(values):
        deleted += conn.execute(sa.delete(table).where(column == value)).rowcount
    if deleted:
        log.info("retired rows deleted", extra={"table": rows.table, "rows": deleted})
    return deleted


_DETACH_STATE = sa.text(
    "SELECT i.inhdetachpending FROM pg_inherits i WHERE i.inhrelid = to_regclass(:name)"
)


def _retire(conn: sa.Connection, part: Partition, result: MaintainResult) -> None:
    """Detach (or finish detaching) one partition, then drop it. Reads its state first, so a
    retry after a detach that stopped half-way finalizes it."""
    pending = conn.execute(_DETACH_STATE, {"name": part.sql}).scalar()
    if pending is None:
        pass  # already detached by an earlier attempt: only the drop is left
    elif pending:
        conn.execute(sa.text(f"ALTER TABLE {part.parent_sql} DETACH PARTITION {part.sql} FINALIZE"))
        result.finalized.append(part.name)
    else:
        conn.execute(
            sa.text(f"COMMENT ON TABLE {part.sql} IS :marker"), {"marker": RETIRING_MARKER}
        )
        conn.execute(
            sa.text(f"ALTER TABLE {part.parent_sql} DETACH PARTITION {part.sql} CONCURRENTLY")
        )
    conn.execute(sa.text(f"DROP TABLE IF EXISTS {part.sql}"))
    result.dropped.append(part.name)
    log.info("partition retired", extra={"partition": part.name, "parent": part.parent})


_LEFTOVERS = sa.text(
    """
    SELECT c.relname AS name, format('%I.%I', n.nspname, c.relname) AS sql
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND NOT c.relispartition
      AND n.oid = (SELECT relnamespace FROM pg_class WHERE oid = CAST(:parent AS regclass))
      AND obj_description(c.oid, 'pg_class') = :marker
    """
)


def _drop_leftovers(conn: sa.Connection) -> list[str]:
    """Tables a run detached but did not drop (it stopped in between): they carry the marker."""
    parent = next(iter(DAY_PARTITIONED))
    rows = conn.execute(_LEFTOVERS, {"parent": parent, "marker": RETIRING_MARKER}).all()
    for row in rows:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {row.sql}"))
        log.info("leftover of an interrupted run dropped", extra={"table": row.name})
    return [row.name for row in rows]


def _retry(result: MaintainResult, what: str, step: Callable[[], T]) -> T:
    """Run `step`, retrying lock timeouts and other transient errors with backoff."""
    options = result.options

    def count(state: RetryCallState) -> None:
        result.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            f"{what}: retrying",
            extra={"attempt": state.attempt_number, "sqlstate": sqlstate(exc) if exc else None},
        )

    budget = options.attempts * (options.lock_timeout_s + 8)
    return retrying(budget, options.attempts, on_retry=count)(step)
