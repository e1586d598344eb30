"""One batch, one transaction: the write method, and what happens when PostgreSQL refuses a row.

A value the transform let through can still be refused by the database (a constraint a DBA
added, a NOT NULL column without a default). The batch is then bisected until the refused events
are alone: everything else loads, those are quarantined, and one poison row costs O(log n) extra
round trips instead of the batch or the hour.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from loader.common import EventRecord, Rejection
from loader.load.adoption import AdoptedRange
from loader.load.copy import write_batch_copy
from loader.load.db import describe_error, is_data_error, sqlstate
from loader.load.sink import BatchOutcome, BatchWriter, write_batch
from loader.load.tables import Tables


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
    batch. Transient errors propagate to the caller's retry loop untouched.
    """
    try:
        with engine.begin() as conn:
            return writer(conn, tables, records, adopted)
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
