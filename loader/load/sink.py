"""Write batches of events into both warehouse tables: exactly once, inside the caller's
transaction.

Each event first claims its dedup windows (loader/load/claims.py): only the events that win
both are new. Those go into clickstream_events and clickstream_ingest_meta with
`INSERT ... ON CONFLICT (event_timestamp, event_id) DO NOTHING RETURNING event_id`, in one
transaction: a batch lands in both tables or in neither, a rerun inserts only what is missing,
and the claims tell new events from duplicates whatever day partition a copy sits in. Claims
and rows go in key order so concurrent runs take their locks in one order and cannot deadlock
each other. On a warehouse adopted from the original ETL, events that duplicate one of its rows
under another id are taken out of the batch first (loader/load/adoption.py).
`write_with` is the contract both writers share; COPY staging (loader/load/copy.py) is the other
way of inserting the rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from loader.common import EventRecord, Rejection
from loader.load.adoption import AdoptedRange, adopted_duplicates
from loader.load.claims import Holder, claim, holders
from loader.load.partitions import batch_days, ensure_partitions
from loader.load.tables import Tables


@dataclass
class BatchOutcome:
    """What one batch did. Duplicates are split by payload hash: exact repeats are harmless,
    conflicting ones (same id, other payload) are worth a look. `duplicate_adopted` counts the
    exact duplicates that matched a row adopted from the original ETL (included in
    `duplicate_exact`). `inserted_rows` are the clickstream_events rows the batch inserted,
    for the dashboard's rollups (loader/load/rollups.py)."""

    inserted: int = 0
    meta_inserted: int = 0
    duplicate_exact: int = 0
    duplicate_conflicting: int = 0
    duplicate_adopted: int = 0
    #: Events the suppression list refused (loader/load/suppression.py): never written.
    suppressed: int = 0
    conflicting: list[tuple[str, uuid.UUID]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    newest_event_at: datetime | None = None
    inserted_rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def add(self, other: BatchOutcome) -> None:
        self.inserted += other.inserted
        self.meta_inserted += other.meta_inserted
        self.duplicate_exact += other.duplicate_exact
        self.duplicate_conflicting += other.duplicate_conflicting
        self.duplicate_adopted += other.duplicate_adopted
        self.suppressed += other.suppressed
        self.conflicting.extend(other.conflicting)
        self.rejected.extend(other.rejected)
        self.inserted_rows.extend(other.inserted_rows)
        if other.newest_event_at and (
            self.newest_event_at is None or other.newest_event_at > self.newest_event_at
        ):
            self.newest_event_at = other.newest_event_at


def _split_in_batch_duplicates(
    records: Sequence[EventRecord],
) -> tuple[list[EventRecord], list[EventRecord]]:
    """First occurrence of each event_id, and the repeats (compared by hash afterwards)."""
    firsts: dict[uuid.UUID, EventRecord] = {}
    repeats: list[EventRecord] = []
    for record in records:
        if record.event_id in firsts:
            repeats.append(record)
        else:
            firsts[record.event_id] = record
    return sorted(firsts.values(), key=lambda r: r.event_id.int), repeats


def _without_adopted_duplicates(
    conn: sa.Connection,
    tables: Tables,
    outcome: BatchOutcome,
    unique: list[EventRecord],
    adopted: AdoptedRange | None,
) -> list[EventRecord]:
    """Take out (and count as exact duplicates) the events the original ETL already stored."""
    matched = adopted_duplicates(conn, tables.events, tables.meta, unique, adopted)
    if not matched:
        return unique
    outcome.duplicate_exact += len(matched)
    outcome.duplicate_adopted += len(matched)
    return [r for r in unique if r.event_id not in matched]


#: The primary key of both event tables: the partition key first.
KEY: Final = ["event_timestamp", "event_id"]

#: Inserts events into clickstream_events and metadata rows into clickstream_ingest_meta (each
#: in the order given) and returns the event_ids the events table took and how many
#: clickstream_ingest_meta rows went in.
RowInserter = Callable[
    [sa.Connection, Tables, list[EventRecord], list[EventRecord]], tuple[set[uuid.UUID], int]
]


def write_with(
    insert_rows: RowInserter,
    conn: sa.Connection,
    tables: Tables,
    records: Sequence[EventRecord],
    adopted: AdoptedRange | None = None,
) -> BatchOutcome:
    """A batch through `insert_rows`: in-batch repeats and adopted duplicates taken out first,
    claims decide what is new, what was not inserted is classified afterwards. Both writers are
    this with their inserter."""
    outcome = BatchOutcome()
    if records:  # on its own connection: the partition function's lock is not this batch's
        days = batch_days((r.event["event_timestamp"] for r in records), hour=None)
        ensure_partitions(conn.engine, tables, days, datetime.now(UTC).date())
    unique, repeats = _split_in_batch_duplicates(records)
    unique = _without_adopted_duplicates(conn, tables, outcome, unique, adopted)
    won = claim(conn, tables, unique)
    new = [r for r in unique if r.event_id in won]
    held = holders(conn, tables, [r for r in unique if r.event_id not in won])
    for record in new:  # the partition key, copied: an event and its metadata share a day
        record.meta["event_timestamp"] = record.event["event_timestamp"]
    # A row stored under this id without metadata (adopted from the original ETL, which kept no
    # `_ingest`) gets this copy's lineage, in the row's own day.
    lineage = [r for r in unique if r.event_id in held and not held[r.event_id].has_meta]
    for record in lineage:
        record.meta["event_timestamp"] = held[record.event_id].event_timestamp
    inserted: set[uuid.UUID] = set()
    if new or lineage:
        inserted, outcome.meta_inserted = insert_rows(conn, tables, new, [*new, *lineage])
    _classify(outcome, unique, repeats, inserted, held)
    return outcome


def _insert_values(
    conn: sa.Connection, tables: Tables, events: list[EventRecord], metas: list[EventRecord]
) -> tuple[set[uuid.UUID], int]:
    events_stmt = (
        insert(tables.events)
        .on_conflict_do_nothing(index_elements=KEY)
        .returning(tables.events.c.event_id)
    )
    meta_stmt = (
        insert(tables.meta)
        .on_conflict_do_nothing(index_elements=KEY)
        .returning(tables.meta.c.event_id)
    )
    inserted = (
        set(conn.execute(events_stmt, [r.event for r in events]).scalars()) if events else set()
    )
    if not metas:
        return inserted, 0
    return inserted, len(conn.execute(meta_stmt, [r.meta for r in metas]).scalars().all())


def write_batch(
    conn: sa.Connection,
    tables: Tables,
    records: Sequence[EventRecord],
    adopted: AdoptedRange | None = None,
) -> BatchOutcome:
    """Insert a batch into both tables inside the caller's transaction."""
    return write_with(_insert_values, conn, tables, records, adopted)


def _classify(
    outcome: BatchOutcome,
    unique: Sequence[EventRecord],
    repeats: Sequence[EventRecord],
    inserted: set[uuid.UUID],
    held: Mapping[uuid.UUID, Holder],
) -> None:
    """Count inserted rows, and split the rest into exact and conflicting duplicates by the
    payload digest of the stored copy (none known, as for an adopted row: exact)."""
    outcome.inserted = len(inserted)
    for record in unique:
        if record.event_id in inserted:
            outcome.inserted_rows.append(record.event)
            stamp = record.event["event_timestamp"]
            if outcome.newest_event_at is None or stamp > outcome.newest_event_at:
                outcome.newest_event_at = stamp
    skipped = [r for r in unique if r.event_id not in inserted]
    if not skipped and not repeats:
        return
    known = {event_id: holder.digest for event_id, holder in held.items()}
    for record in unique:  # repeats inside the batch compare against their first copy
        known.setdefault(record.event_id, record.meta["payload_sha256"])
    for record in [*skipped, *repeats]:
        stored = known.get(record.event_id)
        if stored is None or stored == record.meta["payload_sha256"]:
            outcome.duplicate_exact += 1
        else:
            outcome.duplicate_conflicting += 1
            outcome.conflicting.append((record.key, record.event_id))


class BatchWriter(Protocol):
    """`write_batch` or `write_batch_copy`."""

    def __call__(
        self,
        conn: sa.Connection,
        tables: Tables,
        records: Sequence[EventRecord],
        adopted: AdoptedRange | None = None,
    ) -> BatchOutcome: ...
