"""The retention the DBA applies (`clickstream-loader maintain`), as the loader reads it.

`maintain --keep-days D` records D in clickstream_retention before it drops the day partitions
older than today - D (UTC). Every loader reads that row once per invocation, beside the revision
check, and then treats an hour whose whole range lies before the horizon as **retired**: its rows
are gone or about to go, so it is never listed, fetched, written or reported as unloaded. No row
(a warehouse nobody ran `maintain` against): nothing is retired.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa

from loader.window import HOUR, hour_label


@dataclass(frozen=True)
class Retention:
    """clickstream_retention's one row."""

    keep_days: int
    ahead_days: int
    updated_at: datetime
    updated_by: str

    def horizon(self, now: datetime) -> datetime:
        """The start of the oldest UTC day kept: today - keep_days, 00:00 UTC."""
        return day_start(now.astimezone(UTC).date() - timedelta(days=self.keep_days))

    def retires(self, hour: datetime, now: datetime) -> bool:
        """Whether the whole of `hour` lies before the horizon."""
        return hour + HOUR <= self.horizon(now)

    def describe(self, now: datetime) -> str:
        """One line for messages: what is kept, and since when it was recorded."""
        return (
            f"retention keeps {self.keep_days} days: hours before "
            f"{hour_label(self.horizon(now))} are retired (recorded by {self.updated_by} at "
            f"{self.updated_at.astimezone(UTC):%Y-%m-%dT%H:%MZ})"
        )


def day_start(day: date) -> datetime:
    """00:00 UTC of a date."""
    return datetime.combine(day, time(), UTC)


def retired(retention: Retention | None, hour: datetime, now: datetime) -> bool:
    """Whether `hour` is past retention; never without a recorded retention."""
    return retention is not None and retention.retires(hour, now)


def read_retention(conn: sa.Connection, table: sa.Table) -> Retention | None:
    """The recorded retention (clickstream_retention, `Tables.retention`), or None when
    `maintain` has never recorded one."""
    t = table
    row = conn.execute(
        sa.select(t.c.keep_days, t.c.ahead_days, t.c.updated_at, t.c.updated_by)
    ).first()
    if row is None:
        return None
    return Retention(int(row.keep_days), int(row.ahead_days), row.updated_at, str(row.updated_by))
