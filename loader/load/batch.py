"""One batch, one transaction: the write method, and what happens when PostgreSQL refuses a row.

A value the transform let through can still be refused by the database (a constraint a DBA
added, a NOT NULL column without a default). The batch is then bisected until the refused events
are alone: everything else loads, those are quarantined, and one poison row costs O(log n) extra
round trips instead of the batch or the hour.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from loader.common import EventRecord, Rejection
from loader.errors import is_data_error, sqlstate
from loader.load.adoption import AdoptedRange, adopted_duplicates
from loader.load.completion import Completion, record_completed
from loader.load.copy import write_batch_copy
from loader.load.db import describe_error
from loader.load.partitions import batch_days, ensure_partitions, forget_partitions
from loader.load.quarantine import quarantine, rejection_row, resolve_quarantined
from loader.load.rollups import apply_inserted
from loader.load.sink import BatchOutcome, BatchWriter, write_batch
from loader.load.tables import Tables
from loader.observability import log


def batch_writer(method: str) -> BatchWriter:
    """WRITE_METHOD → the function that writes a batch (both have identical semantics)."""
    return write_batch_copy if method == "copy" else write_batch


def write_isolating_poison(
    engine: sa.Engine,
    tables: Tables,
    records: Sequence[EventRecord],
    writer: BatchWriter = write_batch,
    adopted: AdoptedRange | None = None,
) -> BatchOutcome:
    """Write a batch; if the database rejects a row the transform let through, bisect until
    the offending events are alone, load everything else, and return those as rejections.

    Each half commits on its own, so one poison row costs O(log n) extra round trips, not the
    batch. Transient errors propagate to the caller's retry loop untouched. Each committed part
    counts its own inserted rows into the dashboard's rollups.
    """
    try:
        with engine.begin() as conn:
            outcome = writer(conn, tables, records, adopted)
            apply_inserted(conn, tables, outcome.inserted_rows)
            return outcome
    except sa.exc.DBAPIError as exc:
        if not is_data_error(exc):
            raise
        if len(records) == 1:
            record = records[0]
            outcome = BatchOutcome()
            outcome.rejected.append(
                Rejection(
                    record.key,
                    record.position,
                    "rejected",
                    describe_error(exc),
                    record.event_id,
                    sqlstate(exc),
                )
            )
            return outcome
        middle = len(records) // 2
        outcome = write_isolating_poison(engine, tables, records[:middle], writer, adopted)
        outcome.add(write_isolating_poison(engine, tables, records[middle:], writer, adopted))
        return outcome


@dataclass(frozen=True)
class BatchTarget:
    """What a batch's quarantine rows and completion records name: the objects' bucket and
    hour, the run, and whether existing completion records are rewritten (reprocess: the
    counts moved)."""

    bucket: str
    hour: datetime
    run_id: uuid.UUID
    refresh: bool = False


def commit_batch(
    engine: sa.Engine,
    tables: Tables,
    writer: BatchWriter,
    records: Sequence[EventRecord],
    *,
    quarantine_rows: Sequence[dict[str, Any]],
    resolved_keys: Sequence[str],
    completed: Sequence[Completion],
    target: BatchTarget,
    adopted: AdoptedRange | None = None,
) -> BatchOutcome:
    """One transaction: the events into both tables, the batch's rejections into the quarantine,
    its completed objects into clickstream_loaded_objects, and what it inserted into the
    dashboard's rollups. If PostgreSQL refuses a row the transform let through, isolate it by
    bisection."""
    now = datetime.now(UTC)
    # The writer makes sure of its events' days; the completion records need the hour's.
    days = batch_days((r.event["event_timestamp"] for r in records), target.hour)
    ensure_partitions(engine, tables, days, now.date())
    try:
        with engine.begin() as conn:
            outcome = writer(conn, tables, records, adopted)
            quarantine(conn, tables, quarantine_rows)
            resolve_quarantined(conn, tables, resolved_keys, now)
            _record_completed(conn, tables, completed, target)
            # Last: the rollup rows it updates stay locked until commit, and every batch of
            # the same day updates some of the same rows.
            apply_inserted(conn, tables, outcome.inserted_rows)
            return outcome
    except sa.exc.DBAPIError as exc:
        if not is_data_error(exc):
            raise
        if _no_partition(exc):
            # A partition this process made or saw went away (a DBA dropped it): ask again,
            # so only rows no partition may hold (more than a year ahead) are bisected out.
            forget_partitions(engine)
            ensure_partitions(engine, tables, days, now.date())
        log.warning("batch refused by the database: isolating the offending events")
    outcome = write_isolating_poison(engine, tables, records, writer, adopted)
    # The good halves are committed, each on its own. The refused events' quarantine rows and
    # the objects' completion commit together after them: a run that dies in between leaves
    # the objects unrecorded, and the next lookback or rerun reads them again.
    refused = Counter(r.key for r in outcome.rejected)
    extra = [rejection_row(r, target.bucket, target.hour, now) for r in outcome.rejected]
    completed = [replace(c, quarantined=c.quarantined + refused[c.key]) for c in completed]
    with engine.begin() as conn:
        quarantine(conn, tables, [*quarantine_rows, *extra])
        resolve_quarantined(conn, tables, [k for k in resolved_keys if k not in refused], now)
        _record_completed(conn, tables, completed, target)
    return outcome


def _no_partition(exc: sa.exc.DBAPIError) -> bool:
    """PostgreSQL found no partition for a row (23514, like a failed CHECK)."""
    diag = getattr(exc.orig, "diag", None)
    message = getattr(diag, "message_primary", None) or ""
    return sqlstate(exc) == "23514" and message.startswith("no partition of relation")


def _record_completed(
    conn: sa.Connection, tables: Tables, completed: Sequence[Completion], target: BatchTarget
) -> None:
    record_completed(
        conn,
        tables,
        completed,
        bucket=target.bucket,
        hour=target.hour,
        run_id=target.run_id,
        refresh=target.refresh,
    )


def count_new(
    engine: sa.Engine,
    tables: Tables,
    records: Sequence[EventRecord],
    adopted: AdoptedRange | None = None,
) -> int:
    """Dry run: how many of these events the warehouse does not hold yet (reads only),
    neither under their id nor as a row adopted from the original ETL."""
    first_copies = list({r.event_id: r for r in records}.values())
    if not first_copies:
        return 0
    events = tables.events
    with engine.connect() as conn:
        adopted_ids = adopted_duplicates(conn, events, tables.meta, first_copies, adopted)
        ids = [r.event_id for r in first_copies if r.event_id not in adopted_ids]
        if not ids:
            return 0
        present = conn.execute(
            sa.select(sa.func.count()).where(events.c.event_id.in_(ids))
        ).scalar_one()
    return len(ids) - int(present)
