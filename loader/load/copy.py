"""`write_batch` through COPY staging: the same contract as the INSERT writer, fewer round trips.

Each batch is streamed with COPY into session-local temporary tables (created once per
connection, emptied at commit), then moved with INSERT ... SELECT ... ON CONFLICT DO NOTHING
RETURNING: the same statement semantics as `write_batch`, built from Core constructs.
Temporary tables need the TEMPORARY privilege on the database (see deploy/grants.sql).
"""

from __future__ import annotations

import contextlib
import io
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import psycopg2
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from loader.common import EventRecord
from loader.load.adoption import AdoptedRange
from loader.load.db import dumps_json
from loader.load.sink import KEY, BatchOutcome, write_with
from loader.load.tables import Tables

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


# Hand-tuned, kept because measured: formatting a column at a time saves ~20 µs per event
# (~5.5% of the default path's CPU) over `_copy_field` per value (bench/results/copy_format.md).
# A column's values mostly share one type, so its formatting is chosen once per column, and a
# text column is searched for the characters COPY escapes in one pass over all of its values.
# tests/unit/test_copy_text.py holds it equal to `_copy_field`.
_NEEDS_ESCAPE = re.compile(r"[\\\n\r\t]").search
_NULL: Final = "\\N"


def _text_column(values: Sequence[str | None]) -> list[str]:
    if _NEEDS_ESCAPE("".join(filter(None, values))) is None:
        return [_NULL if v is None else v for v in values]
    return [_NULL if v is None else v.translate(_COPY_ESCAPES) for v in values]


def _copy_column(values: Sequence[Any]) -> list[str]:
    """One column of a batch in COPY's text format: what `_copy_field` gives for each value."""
    kinds = set(map(type, values)) - {type(None)}
    if kinds <= {str}:
        return _text_column(values)
    kind = kinds.pop() if len(kinds) == 1 else None
    if kind is datetime:
        return [_NULL if v is None else v.isoformat() for v in values]
    if kind in (uuid.UUID, Decimal, int):
        return [_NULL if v is None else str(v) for v in values]
    if kind in (dict, list):
        return _text_column([None if v is None else dumps_json(v) for v in values])
    return [_copy_field(v) for v in values]  # mixed types, bool, bytes, a subclass


def _copy_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> io.StringIO:
    """The rows as COPY text, the columns in `columns` order (a row lacking one writes NULL)."""
    formatted = [_copy_column([row.get(c) for row in rows]) for c in columns]
    buffer = io.StringIO()
    buffer.writelines(line + "\n" for line in map("\t".join, zip(*formatted, strict=True)))
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


def _move_statement(table: sa.Table, columns: list[str]) -> sa.Insert:
    """INSERT ... SELECT FROM the stage table ... ON CONFLICT DO NOTHING, in key order."""
    stage = _stage(table)
    select = sa.select(*(stage.c[c] for c in columns)).order_by(*(stage.c[c] for c in KEY))
    return insert(table).from_select(columns, select).on_conflict_do_nothing(index_elements=KEY)


def _insert_via_copy(
    conn: sa.Connection, tables: Tables, events: list[EventRecord], metas: list[EventRecord]
) -> tuple[set[uuid.UUID], int]:
    _ensure_stage_tables(conn, tables)
    inserted: set[uuid.UUID] = set()
    if events:
        event_rows = [r.event for r in events]
        event_columns = _written_columns(tables.events, event_rows)
        _copy_into(conn, _stage(tables.events), event_rows, event_columns)
        moved = _move_statement(tables.events, event_columns)
        inserted = set(conn.execute(moved.returning(tables.events.c.event_id)).scalars())
    if not metas:
        return inserted, 0
    meta_rows = [r.meta for r in metas]
    meta_columns = _written_columns(tables.meta, meta_rows)
    _copy_into(conn, _stage(tables.meta), meta_rows, meta_columns)
    return inserted, conn.execute(_move_statement(tables.meta, meta_columns)).rowcount


def write_batch_copy(
    conn: sa.Connection,
    tables: Tables,
    records: Sequence[EventRecord],
    adopted: AdoptedRange | None = None,
) -> BatchOutcome:
    """`write_batch` through COPY staging: same result, same transaction discipline."""
    return write_with(_insert_via_copy, conn, tables, records, adopted)
