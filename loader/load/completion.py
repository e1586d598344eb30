"""Per-object completion records (clickstream_loaded_objects): what says an object is loaded.

Rows in the event tables or the quarantine do not prove an object loaded: the slices of an
object larger than a batch commit one by one, and a run can die between them. Its completion
record does: it is written in the transaction of the object's last rows and quarantine entries,
and records how many clickstream_ingest_meta rows the object had then.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

from loader.load.tables import Tables


@dataclass(frozen=True)
class Completion:
    """An object whose last rows are in the batch being committed."""

    key: str
    events: int
    quarantined: int
    last_modified: datetime | None
    #: The object's first and last event_timestamp: its meta rows are counted in those days'
    #: partitions only (None when it has no event).
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None


def record_completed(
    conn: sa.Connection,
    tables: Tables,
    completions: Sequence[Completion],
    *,
    bucket: str,
    hour: datetime,
    run_id: uuid.UUID,
    refresh: bool = False,
) -> None:
    """Record objects as loaded, inside the transaction that commits their last rows.

    One statement per batch whatever its size: the objects travel as arrays and `meta_rows`
    is counted by the server, in this transaction, from the key's index. A row already there
    is kept as it is (a rerun writes nothing), unless `refresh` (reprocess: the counts moved).
    """
    if not completions:
        return
    conn.execute(
        _completion_statement(tables.loaded_objects, tables.meta, refresh),
        {
            "keys": [c.key for c in completions],
            "events": [c.events for c in completions],
            "quarantined": [c.quarantined for c in completions],
            "modified": [c.last_modified for c in completions],
            "first": [c.first_event_at for c in completions],
            "last": [c.last_event_at for c in completions],
            "bucket": bucket,
            "hour": hour,
            "run_id": run_id,
        },
    )


def _completion_statement(done: sa.Table, meta: sa.Table, refresh: bool) -> sa.Insert:
    """INSERT ... SELECT FROM unnest(arrays)."""
    objects = (
        sa.func.unnest(
            sa.bindparam("keys", type_=ARRAY(sa.Text)),
            sa.bindparam("events", type_=ARRAY(sa.Integer)),
            sa.bindparam("quarantined", type_=ARRAY(sa.Integer)),
            sa.bindparam("modified", type_=ARRAY(sa.DateTime(timezone=True))),
            sa.bindparam("first", type_=ARRAY(sa.DateTime(timezone=True))),
            sa.bindparam("last", type_=ARRAY(sa.DateTime(timezone=True))),
        )
        .table_valued("s3_key", "events", "quarantined", "s3_last_modified", "first", "last")
        .render_derived()
    )
    # Bounded by the object's own event times, so only those days' partitions are searched.
    meta_rows = (
        sa.select(sa.func.count())
        .where(
            meta.c.s3_key == objects.c.s3_key,
            meta.c.event_timestamp.between(objects.c.first, objects.c.last),
        )
        .scalar_subquery()
    )
    rows = sa.select(
        objects.c.s3_key,
        sa.bindparam("bucket", type_=sa.Text),
        sa.bindparam("hour", type_=sa.DateTime(timezone=True)),
        objects.c.events,
        meta_rows,
        objects.c.quarantined,
        objects.c.s3_last_modified,
        sa.bindparam("run_id", type_=PG_UUID(as_uuid=True)),
        sa.func.now(),
    )
    stmt = insert(done).from_select(
        [
            "s3_key",
            "s3_bucket",
            "hour",
            "events",
            "meta_rows",
            "quarantined",
            "s3_last_modified",
            "run_id",
            "completed_at",
        ],
        rows,
    )
    if not refresh:
        return stmt.on_conflict_do_nothing(index_elements=["hour", "s3_key"])
    updated = ("events", "meta_rows", "quarantined", "s3_last_modified", "run_id", "completed_at")
    return stmt.on_conflict_do_update(
        index_elements=["hour", "s3_key"], set_={name: stmt.excluded[name] for name in updated}
    )


def _under(column: sa.ColumnElement[str], prefix: str) -> sa.ColumnElement[bool]:
    """`column LIKE 'prefix%'` with the prefix taken literally (the "C" collation lets a btree
    index on the column serve it)."""
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return column.like(pattern, escape="\\")


def completed_objects(
    conn: sa.Connection, tables: Tables, prefix: str, hour: datetime | None = None
) -> dict[str, int]:
    """Keys under `prefix` recorded as loaded in full, each with the clickstream_ingest_meta
    rows it had when it completed. With `hour`, only that hour's partition is read.

    Only this record says an object is loaded: rows in the event tables or the quarantine may
    be what a failed run left of it (the slices of a big object commit one by one).
    """
    done = tables.loaded_objects
    query = sa.select(done.c.s3_key, done.c.meta_rows).where(_under(done.c.s3_key, prefix))
    if hour is not None:
        query = query.where(done.c.hour == hour)
    rows = conn.execute(query)
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
