"""Day partitions: make sure the partitions a batch writes into exist, before it writes.

The loader runs no DDL of its own. Revision 0006 created `clickstream_ensure_partitions(first_day,
last_day)`, a SECURITY DEFINER function the table owner controls: the loader asks it for the UTC
days a batch needs (events, their claims' windows, the object's hour), once per day per process.
It takes SHARE UPDATE EXCLUSIVE on a parent only when a partition is missing, so loads and
queries go on. If it cannot (EXECUTE revoked, the day retired, a lock held too long), the batch is
not written and the hour stops with `PartitionMissing`, naming the days and the fix; nothing is
lost and the hour is not marked complete.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Final

import sqlalchemy as sa

from loader.errors import TerminalError, is_transient
from loader.load.db import describe_error
from loader.load.tables import Tables
from loader.schema import ENSURE_PARTITIONS_FUNCTION

#: The function refuses more days than this in one call.
DAYS_PER_CALL: Final = 32
#: Nor days further ahead than this: an event stamped later is refused by PostgreSQL (no
#: partition) and quarantined like any row the database refuses.
MAX_DAYS_AHEAD: Final = 366

# Days known to have their partitions, per engine (a warm Lambda container keeps its engine).
_known: weakref.WeakKeyDictionary[sa.Engine, set[date]] = weakref.WeakKeyDictionary()


class PartitionMissing(TerminalError):
    """A batch needs a day partition the warehouse would not make: stop the hour, lose nothing."""


def batch_days(stamps: Iterable[datetime], hour: datetime | None) -> set[date]:
    """The UTC days whose partitions a batch writes: each event's day and the objects' hour
    (clickstream_loaded_objects). The claims' partition of the day before a day (an event in
    its first hour claims the odd grid's window from 23:00 the day before) comes with that day:
    clickstream_ensure_partitions makes it, even when the day before is past retention, where
    asking for that day itself would be refused."""
    days = set() if hour is None else {hour.astimezone(UTC).date()}
    days.update(stamp.astimezone(UTC).date() for stamp in stamps)
    return days


def _runs(days: list[date]) -> Iterator[tuple[date, date]]:
    """Sorted days as runs of consecutive days, none longer than DAYS_PER_CALL."""
    first = last = days[0]
    for day in days[1:]:
        if day == last + timedelta(days=1) and (day - first).days < DAYS_PER_CALL:
            last = day
            continue
        yield first, last
        first = last = day
    yield first, last


def ensure_partitions(engine: sa.Engine, tables: Tables, days: set[date], today: date) -> None:
    """Make sure the partitions of `days` exist (days more than MAX_DAYS_AHEAD ahead are left
    out: their rows are refused and quarantined). Raises PartitionMissing when the warehouse
    cannot make one; transient errors propagate to the caller's retry policy."""
    known = _known.setdefault(engine, set())
    limit = today + timedelta(days=MAX_DAYS_AHEAD)
    wanted = sorted(d for d in days - known if d <= limit)
    if not wanted:
        return
    call = sa.select(
        getattr(sa.func, ENSURE_PARTITIONS_FUNCTION)(sa.bindparam("a"), sa.bindparam("b"))
    )
    for first, last in _runs(wanted):
        try:
            with engine.begin() as conn:
                conn.execute(call, {"a": first, "b": last})
        except sa.exc.DBAPIError as exc:
            if is_transient(exc):
                raise
            raise PartitionMissing(
                f"no partition for the UTC days {first}..{last} and the warehouse would not make "
                f"one ({describe_error(exc)}). Nothing of this batch was written and the hour is "
                "not complete. Fix: run `clickstream-loader maintain --ahead-days N --keep-days "
                "D` as the tables' owner (it makes the partitions), or GRANT EXECUTE ON FUNCTION "
                f"{ENSURE_PARTITIONS_FUNCTION}(date, date) TO the loader's role; then rerun "
                "the hour."
            ) from exc
        known.update(first + timedelta(days=i) for i in range((last - first).days + 1))


def forget_partitions(engine: sa.Engine) -> None:
    """Ask the warehouse again next time (a partition was dropped under this process)."""
    _known.pop(engine, None)
