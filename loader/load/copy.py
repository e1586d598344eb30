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
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import psycopg2
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from loader.common import EventRecord
from loader.load.adoption import AdoptedRange
from loader.load.db import dumps_json
from loader.load.sink import BatchOutcome, write_with
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


def _insert_via_copy(
    conn: sa.Connection, tables: Tables, unique: list[EventRecord]
) -> tuple[set[uuid.UUID], int]:
    _ensure_stage_tables(conn, tables)
    stage_events, stage_meta = _stage(tables.events), _stage(tables.meta)
    event_rows, meta_rows = [r.event for r in unique], [r.meta for r in unique]
    event_columns = _written_columns(tables.events, event_rows)
    meta_columns = _written_columns(tables.meta, meta_rows)
    _copy_into(conn, stage_events, event_rows, event_columns)
    _copy_into(conn, stage_meta, meta_rows, meta_columns)

    def move(table: sa.Table, stage: sa.TableClause, columns: Sequence[str]) -> Any:
        select = sa.select(*(stage.c[c] for c in columns)).order_by(stage.c.event_id)
        return (
            insert(table)
            .from_select(list(columns), select)
            .on_conflict_do_nothing(index_elements=["event_id"])
        )

    events = move(tables.events, stage_events, event_columns).returning(tables.events.c.event_id)
    inserted = set(conn.execute(events).scalars())
    # Only the count of new meta rows is needed: the rowcount, not 500 ids turned into UUIDs.
    return inserted, conn.execute(move(tables.meta, stage_meta, meta_columns)).rowcount


def write_batch_copy(
    conn: sa.Connection,
    tables: Tables,
    records: Sequence[EventRecord],
    adopted: AdoptedRange | None = None,
) -> BatchOutcome:
    """`write_batch` through COPY staging: same result, same transaction discipline."""
    return write_with(_insert_via_copy, conn, tables, records, adopted)
