"""One row per event across day partitions: each event claims two dedup windows.

A primary key must hold the partition key, so (event_timestamp, event_id) lets in a second copy
of an event with another receivedAt. Before a batch's rows go in, each event claims
(window_start, event_id) in clickstream_event_claims for two windows: the two-hour window of
its event_timestamp on a grid starting at even UTC hours, and the one on a grid starting at odd
hours. Any two instants less than an hour apart fall in one window of one of the grids, so two
copies received less than an hour apart always claim a common row. The claims' primary key makes
the second claimant wait for the first to commit and then lose, whatever partitions, batches or
runs the copies come through: only an event that wins both of its claims is inserted.

Claims go in sorted by (window_start, event_id) in one statement, so concurrent batches wait
for each other in one order and cannot deadlock. A loser's claim that did go in is taken back in
the same transaction: every claim names a stored row. Deleting an event deletes its claims
(the trigger of revision 0006), so a DBA's deleted rows load again on a rerun.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

from loader.common import EventRecord
from loader.load.tables import Tables
from loader.schema import CLAIM_WINDOW_HOURS

WINDOW = timedelta(hours=CLAIM_WINDOW_HOURS)
#: The origins of the two grids, as revision 0006's trigger and backfill use them.
EVEN_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
ODD_ORIGIN = EVEN_ORIGIN + WINDOW / 2


def claim_windows(event_timestamp: datetime) -> tuple[datetime, datetime]:
    """The starts of the two windows holding `event_timestamp` (PostgreSQL's date_bin)."""
    return (
        EVEN_ORIGIN + (event_timestamp - EVEN_ORIGIN) // WINDOW * WINDOW,
        ODD_ORIGIN + (event_timestamp - ODD_ORIGIN) // WINDOW * WINDOW,
    )


def claim_days(records: Iterable[EventRecord]) -> set[date]:
    """The UTC days of the claims' partitions the records need (a window may start the day
    before its event)."""
    return {
        start.astimezone(UTC).date()
        for r in records
        for start in claim_windows(r.event["event_timestamp"])
    }


def _claim_rows(records: Sequence[EventRecord]) -> list[tuple[datetime, uuid.UUID, datetime]]:
    rows: list[tuple[datetime, uuid.UUID, datetime]] = []
    for r in records:
        stamp = r.event["event_timestamp"]
        rows.extend((start, r.event_id, stamp) for start in claim_windows(stamp))
    rows.sort(key=lambda row: (row[0], row[1].int))
    return rows


def _unnest(rows: Sequence[tuple[datetime, uuid.UUID, datetime]]) -> sa.TableValuedAlias:
    starts, ids, stamps = zip(*rows, strict=True) if rows else ((), (), ())
    return (
        sa.func.unnest(
            sa.bindparam("starts", list(starts), type_=ARRAY(sa.DateTime(timezone=True))),
            sa.bindparam("ids", list(ids), type_=ARRAY(PG_UUID(as_uuid=True))),
            sa.bindparam("stamps", list(stamps), type_=ARRAY(sa.DateTime(timezone=True))),
        )
        .table_valued("window_start", "event_id", "event_timestamp", with_ordinality="position")
        .render_derived(name="claim")
    )


def claim(conn: sa.Connection, tables: Tables, records: Sequence[EventRecord]) -> set[uuid.UUID]:
    """Claim both windows of every record (one per event_id) in the caller's transaction; the
    event_ids that won both. A claim another copy holds is waited for, then lost."""
    if not records:
        return set()
    claims = tables.claims
    wanted = _unnest(_claim_rows(records))
    statement = (
        insert(claims)
        .from_select(
            ["window_start", "event_id", "event_timestamp"],
            sa.select(wanted.c.window_start, wanted.c.event_id, wanted.c.event_timestamp).order_by(
                wanted.c.position
            ),
        )
        .on_conflict_do_nothing(index_elements=["window_start", "event_id"])
        .returning(claims.c.window_start, claims.c.event_id)
    )
    won = conn.execute(statement).all()
    per_event = Counter(event_id for _, event_id in won)
    lost_one = [(start, event_id) for start, event_id in won if per_event[event_id] == 1]
    if lost_one:  # a copy holds its other window: take this one back
        conn.execute(
            sa.delete(claims).where(
                sa.tuple_(claims.c.window_start, claims.c.event_id).in_(lost_one)
            )
        )
    return {event_id for event_id, n in per_event.items() if n == 2}


@dataclass(frozen=True, slots=True)
class Holder:
    """The stored copy an event lost its claim to."""

    event_timestamp: datetime
    digest: bytes | None
    has_meta: bool


def holders(
    conn: sa.Connection, tables: Tables, records: Sequence[EventRecord]
) -> dict[uuid.UUID, Holder]:
    """For events that lost a claim: the stored copy holding it, with its payload digest (None,
    and no metadata, for a row adopted from the original ETL)."""
    if not records:
        return {}
    claims, meta = tables.claims, tables.meta
    wanted = _unnest(_claim_rows(records))
    rows = conn.execute(
        sa.select(
            claims.c.event_id,
            claims.c.event_timestamp,
            meta.c.payload_sha256,
            meta.c.event_id.is_not(None).label("has_meta"),
        ).select_from(
            claims.join(
                wanted,
                sa.and_(
                    claims.c.window_start == wanted.c.window_start,
                    claims.c.event_id == wanted.c.event_id,
                ),
            ).outerjoin(
                meta,
                sa.and_(
                    meta.c.event_timestamp == claims.c.event_timestamp,
                    meta.c.event_id == claims.c.event_id,
                ),
            )
        )
    )
    return {
        row.event_id: Holder(row.event_timestamp, row.payload_sha256, row.has_meta) for row in rows
    }
