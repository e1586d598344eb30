"""Write batches of events into both warehouse tables: exactly once, one transaction per batch.

`INSERT ... ON CONFLICT (event_id) DO NOTHING RETURNING event_id` into clickstream_events and
clickstream_ingest_meta in one transaction: a batch lands in both tables or in neither, a rerun
inserts only what is missing, and RETURNING tells inserted rows from duplicates. Rows go in
`event_id` order so concurrent runs of the same hour take row locks in the same order and
cannot deadlock each other. On a warehouse adopted from the original ETL, events that duplicate
one of its rows under another id are taken out of the batch first (loader/load/adoption.py). An
object's completion record (`record_completed`) goes into the
transaction of its last rows: that, not the rows themselves, is what says it is loaded.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Protocol

import psycopg2
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.sql.schema import RETAIN_SCHEMA

from loader import schema
from loader.config import Settings
from loader.load.adoption import AdoptedRange, adopted_duplicates
from loader.load.db import describe_error, dumps_json, is_data_error, sqlstate
from loader.transform.mapping import EventRecord, Rejection

#: The columns the transform fills; any other column (loaded_at, one a DBA added) gets its
#: default, whichever write method runs.
EVENT_COLUMNS: Final = tuple(c.name for c in schema.clickstream_events.c if c.name != "loaded_at")
META_COLUMNS: Final = tuple(
    c.name for c in schema.clickstream_ingest_meta.c if c.name != "loaded_at"
)


@dataclass(frozen=True)
class Tables:
    """The tables one loader writes: TARGET_TABLE may rename/move the events table."""

    events: sa.Table
    meta: sa.Table
    load_runs: sa.Table
    quarantine: sa.Table
    adoptions: sa.Table
    loaded_objects: sa.Table


def tables_for(settings: Settings) -> Tables:
    """Schema.py's tables, or copies under TARGET_TABLE's name and schema."""
    if settings.target_table == schema.EVENTS_TABLE and settings.target_schema is None:
        return Tables(
            schema.clickstream_events,
            schema.clickstream_ingest_meta,
            schema.clickstream_load_runs,
            schema.clickstream_quarantine,
            schema.clickstream_adoptions,
            schema.clickstream_loaded_objects,
        )
    md = sa.MetaData()
    target = settings.target_schema or RETAIN_SCHEMA
    events = schema.clickstream_events.to_metadata(md, schema=target, name=settings.target_table)
    return Tables(
        events,
        schema.clickstream_ingest_meta.to_metadata(md, schema=target),
        schema.clickstream_load_runs.to_metadata(md, schema=target),
        schema.clickstream_quarantine.to_metadata(md, schema=target),
        schema.clickstream_adoptions.to_metadata(md, schema=target),
        schema.clickstream_loaded_objects.to_metadata(md, schema=target),
    )


@dataclass
class BatchOutcome:
    """What one batch did. Duplicates are split by payload hash: exact repeats are harmless,
    conflicting ones (same id, other payload) are worth a look. `duplicate_adopted` counts the
    exact duplicates that matched a row adopted from the original ETL (included in
    `duplicate_exact`)."""

    inserted: int = 0
    meta_inserted: int = 0
    duplicate_exact: int = 0
    duplicate_conflicting: int = 0
    duplicate_adopted: int = 0
    conflicting: list[tuple[str, uuid.UUID]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    newest_event_at: datetime | None = None

    def add(self, other: BatchOutcome) -> None:
        self.inserted += other.inserted
        self.meta_inserted += other.meta_inserted
        self.duplicate_exact += other.duplicate_exact
        self.duplicate_conflicting += other.duplicate_conflicting
        self.duplicate_adopted += other.duplicate_adopted
        self.conflicting.extend(other.conflicting)
        self.rejected.extend(other.rejected)
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
    return sorted(firsts.values(), key=lambda r: r.event_id), repeats


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


def write_batch(
    conn: sa.Connection,
    tables: Tables,
    records: Sequence[EventRecord],
    adopted: AdoptedRange | None = None,
) -> BatchOutcome:
    """Insert a batch into both tables inside the caller's transaction."""
    outcome = BatchOutcome()
    unique, repeats = _split_in_batch_duplicates(records)
    unique = _without_adopted_duplicates(conn, tables, outcome, unique, adopted)
    if not unique:
        _classify(conn, tables, outcome, unique, repeats, set())
        return outcome
    events_stmt = (
        insert(tables.events)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(tables.events.c.event_id)
    )
    meta_stmt = (
        insert(tables.meta)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(tables.meta.c.event_id)
    )
    inserted = set(conn.execute(events_stmt, [r.event for r in unique]).scalars())
    outcome.meta_inserted = len(conn.execute(meta_stmt, [r.meta for r in unique]).scalars().all())
    _classify(conn, tables, outcome, unique, repeats, inserted)
    return outcome


def _classify(
    conn: sa.Connection,
    tables: Tables,
    outcome: BatchOutcome,
    unique: Sequence[EventRecord],
    repeats: Sequence[EventRecord],
    inserted: set[uuid.UUID],
) -> None:
    """Count inserted rows, and split the rest into exact and conflicting duplicates."""
    outcome.inserted = len(inserted)
    for record in unique:
        if record.event_id in inserted:
            stamp = record.event["event_timestamp"]
            if outcome.newest_event_at is None or stamp > outcome.newest_event_at:
                outcome.newest_event_at = stamp
    skipped = [r for r in unique if r.event_id not in inserted]
    if not skipped and not repeats:
        return
    known = _stored_digests(conn, tables, [r.event_id for r in skipped])
    for record in unique:  # repeats inside the batch compare against their first copy
        known.setdefault(record.event_id, record.meta["payload_sha256"])
    for record in [*skipped, *repeats]:
        stored = known.get(record.event_id)
        if stored is None or stored == record.meta["payload_sha256"]:
            outcome.duplicate_exact += 1
        else:
            outcome.duplicate_conflicting += 1
            outcome.conflicting.append((record.key, record.event_id))


def _stored_digests(
    conn: sa.Connection, tables: Tables, event_ids: list[uuid.UUID]
) -> dict[uuid.UUID, bytes | None]:
    if not event_ids:
        return {}
    rows = conn.execute(
        sa.select(tables.meta.c.event_id, tables.meta.c.payload_sha256).where(
            tables.meta.c.event_id.in_(event_ids)
        )
    )
    return {row.event_id: row.payload_sha256 for row in rows}


class BatchWriter(Protocol):
    """`write_batch` or `write_batch_copy`."""

    def __call__(
        self,
        conn: sa.Connection,
        tables: Tables,
        records: Sequence[EventRecord],
        adopted: AdoptedRange | None = None,
    ) -> BatchOutcome: ...


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


def rejection_row(
    rejection: Rejection, bucket: str, hour: datetime, now: datetime
) -> dict[str, Any]:
    return {
        "s3_bucket": bucket,
        "s3_key": rejection.key,
        "position": rejection.position,
        "hour": hour,
        "event_id": rejection.event_id,
        "reason_code": rejection.reason,
        "sqlstate": rejection.sqlstate,
        "error_text": rejection.detail[:1000],
        "first_seen_at": now,
        "last_seen_at": now,
        "attempts": 1,
        "resolved_at": None,
    }


def quarantine(conn: sa.Connection, tables: Tables, rows: Sequence[dict[str, Any]]) -> None:
    """Record (or refresh) quarantine entries; a later success clears `resolved_at`'s null."""
    if not rows:
        return
    stmt = insert(tables.quarantine)
    stmt = stmt.on_conflict_do_update(
        index_elements=["s3_key", "position"],
        set_={
            "last_seen_at": stmt.excluded.last_seen_at,
            "attempts": tables.quarantine.c.attempts + 1,
            "reason_code": stmt.excluded.reason_code,
            "sqlstate": stmt.excluded.sqlstate,
            "error_text": stmt.excluded.error_text,
            "resolved_at": None,
        },
    )
    # One row per (key, position) per statement: ON CONFLICT DO UPDATE may not touch a row twice.
    unique = {(r["s3_key"], r["position"]): r for r in rows}
    conn.execute(stmt, list(unique.values()))


def resolve_quarantined(
    conn: sa.Connection, tables: Tables, keys: Sequence[str], now: datetime
) -> int:
    """Mark open quarantine entries of keys that now loaded as resolved."""
    if not keys:
        return 0
    q = tables.quarantine
    result = conn.execute(
        sa.update(q)
        .where(q.c.s3_key.in_(list(keys)), q.c.resolved_at.is_(None))
        .values(resolved_at=now)
    )
    return int(result.rowcount or 0)


# PostgreSQL array literals (`{"a","b"}`), sent as one text parameter each and cast by the
# server: psycopg2 adapts a Python list element by element, several times the CPU per batch.
_ARRAY_ESCAPE = re.compile(r'["\\]').search


def _text_array(values: Sequence[str]) -> str:
    quoted = (
        v.replace("\\", "\\\\").replace('"', '\\"') if _ARRAY_ESCAPE(v) else v for v in values
    )
    return '{"' + '","'.join(quoted) + '"}'


def _int_array(values: Sequence[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def _timestamp_array(values: Sequence[datetime | None]) -> str:
    return "{" + ",".join("NULL" if v is None else v.isoformat() for v in values) + "}"


@dataclass(frozen=True)
class Completion:
    """An object whose last rows are in the batch being committed."""

    key: str
    events: int
    quarantined: int
    last_modified: datetime | None


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
            "keys": _text_array([c.key for c in completions]),
            "events": _int_array([c.events for c in completions]),
            "quarantined": _int_array([c.quarantined for c in completions]),
            "modified": _timestamp_array([c.last_modified for c in completions]),
            "bucket": bucket,
            "hour": hour,
            "run_id": run_id,
        },
    )


@functools.cache
def _completion_statement(done: sa.Table, meta: sa.Table, refresh: bool) -> sa.Insert:
    """INSERT ... SELECT FROM unnest(arrays): built once per table, like a prepared statement."""
    objects = (
        sa.func.unnest(
            sa.cast(sa.bindparam("keys"), ARRAY(sa.Text)),
            sa.cast(sa.bindparam("events"), ARRAY(sa.Integer)),
            sa.cast(sa.bindparam("quarantined"), ARRAY(sa.Integer)),
            sa.cast(sa.bindparam("modified"), ARRAY(sa.DateTime(timezone=True))),
        )
        .table_valued("s3_key", "events", "quarantined", "s3_last_modified")
        .render_derived()
    )
    meta_rows = (
        sa.select(sa.func.count()).where(meta.c.s3_key == objects.c.s3_key).scalar_subquery()
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
        return stmt.on_conflict_do_nothing(index_elements=["s3_key"])
    updated = ("events", "meta_rows", "quarantined", "s3_last_modified", "run_id", "completed_at")
    return stmt.on_conflict_do_update(
        index_elements=["s3_key"], set_={name: stmt.excluded[name] for name in updated}
    )


# --- COPY staging: the same contract, fewer round trips -------------------------------------
#
# Each batch is streamed with COPY into session-local temporary tables (created once per
# connection, emptied at commit), then moved with INSERT ... SELECT ... ON CONFLICT DO NOTHING
# RETURNING: the same statement semantics as `write_batch`, built from Core constructs.
# Temporary tables need the TEMPORARY privilege on the database (see deploy/grants.sql).

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _copy_field(value: Any) -> str:
    """One value in COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return dumps_json(value).translate(_COPY_ESCAPES)
    return str(value)


# The same text as `_copy_field`, chosen by exact type (a subclass takes `_copy_field`'s
# isinstance chain): the loader's hot loop, ~2x faster than the chain (bench/README.md, profile).
# Escaping is skipped only for text holding none of the four characters it would replace.
_NEEDS_ESCAPE = re.compile(r"[\\\n\r\t]").search


def _copy_text(value: str) -> str:
    return value.translate(_COPY_ESCAPES) if _NEEDS_ESCAPE(value) else value


def _copy_json(value: Any) -> str:
    return _copy_text(dumps_json(value))


_COPY_BY_TYPE: Final[dict[type, Callable[[Any], str]]] = {
    type(None): lambda _: "\\N",
    bool: lambda value: "t" if value else "f",
    str: _copy_text,
    bytes: lambda value: "\\\\x" + value.hex(),
    datetime: datetime.isoformat,
    dict: _copy_json,
    list: _copy_json,
    uuid.UUID: str,
    Decimal: str,
    int: str,
}


def _copy_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> io.StringIO:
    formatter = _COPY_BY_TYPE.get
    lines = []
    for row in rows:
        fields = []
        for column in columns:
            value = row.get(column)
            format_value = formatter(type(value))
            fields.append(_copy_field(value) if format_value is None else format_value(value))
        lines.append("\t".join(fields) + "\n")
    buffer = io.StringIO()
    buffer.writelines(lines)
    buffer.seek(0)
    return buffer


def _written_columns(table: sa.Table, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The columns a batch sets, in table order: what `INSERT` names for the same rows (the
    keys of the first row), so both methods leave every other column to its default. COPY
    naming a column the rows lack would write NULL into it instead, and a NOT NULL DEFAULT
    column a DBA added would then refuse every event."""
    first = rows[0]
    return [c.name for c in table.c if c.name in first]


def _stage(table: sa.Table) -> sa.TableClause:
    return sa.table(f"stage_{table.name}", *(sa.column(c.name) for c in table.c), schema="pg_temp")


_STAGE_READY: Final = "clickstream_stage_ready"


def _forget_stage_tables(conn: sa.Connection) -> None:
    """A rollback undoes the CREATE TEMPORARY TABLE of its transaction: create them again."""
    with contextlib.suppress(sa.exc.SQLAlchemyError):  # a lost connection took its info along
        conn.info.pop(_STAGE_READY, None)


def _ensure_stage_tables(conn: sa.Connection, tables: Tables) -> None:
    # Session-local scratch space, not schema: `LIKE` copies the real columns' types.
    info = conn.connection.info
    if info.get(_STAGE_READY):
        return
    preparer = conn.dialect.identifier_preparer
    for table in (tables.events, tables.meta):
        # Quoted like every Core statement quotes it (a mixed-case TARGET_TABLE stays itself).
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {preparer.quote(_stage(table).name)} "
            f"(LIKE {preparer.format_table(table)} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
    # The CREATE belongs to the caller's transaction: if that batch rolls back (a poison row
    # about to be bisected, a lost connection), the flag must go too, or every later batch on
    # this session fails with 3F000 (schema "pg_temp" does not exist).
    if not sa.event.contains(conn.engine, "rollback", _forget_stage_tables):
        sa.event.listen(conn.engine, "rollback", _forget_stage_tables)
    info[_STAGE_READY] = True


def _copy_into(
    conn: sa.Connection,
    stage: sa.TableClause,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
) -> None:
    quote = conn.dialect.identifier_preparer.quote
    statement = f"COPY pg_temp.{quote(stage.name)} ({', '.join(map(quote, columns))}) FROM STDIN"
    dbapi_connection = conn.connection.dbapi_connection
    cursor = dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.copy_expert(statement, _copy_rows(rows, columns))
    except psycopg2.Error as exc:
        # The raw cursor's errors bypass SQLAlchemy: wrap them as it wraps every other statement's,
        # so a value the staging table refuses (a NOT NULL a DBA added) is bisected and
        # quarantined like one INSERT refuses, instead of failing the hour with its DETAIL.
        raise sa.exc.DBAPIError.instance(
            statement,
            None,
            exc,
            psycopg2.Error,
            hide_parameters=True,
            connection_invalidated=conn.dialect.is_disconnect(
                exc,  # type: ignore[arg-type]  # psycopg2.Error is this dialect's DBAPI Error
                dbapi_connection,
                cursor,
            ),
            dialect=conn.dialect,
        ) from exc
    finally:
        cursor.close()


def write_batch_copy(
    conn: sa.Connection,
    tables: Tables,
    records: Sequence[EventRecord],
    adopted: AdoptedRange | None = None,
) -> BatchOutcome:
    """`write_batch` through COPY staging: same result, same transaction discipline."""
    outcome = BatchOutcome()
    unique, repeats = _split_in_batch_duplicates(records)
    unique = _without_adopted_duplicates(conn, tables, outcome, unique, adopted)
    if not unique:
        _classify(conn, tables, outcome, unique, repeats, set())
        return outcome
    _ensure_stage_tables(conn, tables)
    stage_events, stage_meta = _stage(tables.events), _stage(tables.meta)
    event_rows, meta_rows = [r.event for r in unique], [r.meta for r in unique]
    event_columns = _written_columns(tables.events, event_rows)
    meta_columns = _written_columns(tables.meta, meta_rows)
    _copy_into(conn, stage_events, event_rows, event_columns)
    _copy_into(conn, stage_meta, meta_rows, meta_columns)

    def move(table: sa.Table, stage: sa.TableClause, columns: Sequence[str]) -> list[uuid.UUID]:
        select = sa.select(*(stage.c[c] for c in columns)).order_by(stage.c.event_id)
        stmt = (
            insert(table)
            .from_select(list(columns), select)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(table.c.event_id)
        )
        return list(conn.execute(stmt).scalars())

    inserted = set(move(tables.events, stage_events, event_columns))
    outcome.meta_inserted = len(move(tables.meta, stage_meta, meta_columns))
    _classify(conn, tables, outcome, unique, repeats, inserted)
    return outcome


def batch_writer(method: str) -> BatchWriter:
    """WRITE_METHOD → the function that writes a batch (both have identical semantics)."""
    return write_batch_copy if method == "copy" else write_batch
