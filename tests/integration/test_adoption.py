"""Adopting the warehouse the original ETL has been filling, and switching over without duplicates.

Every test starts from an empty database holding exactly the original ETL's table (its
`ensureTableExists` DDL, no alembic_version), filled the way its `parseEvent` and batch INSERT
fill it: 16 columns, a random uuid4 where the event had no id, 'unknown' where it had no name,
event_timestamp = `_ingest.receivedAt`. `original_etl_row` mirrors that code (SBW-Cloudworks/
ClickStream.Lambda, ClickStream.Lambda.ETL/index.mjs @3c55626).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from conftest import alembic_config, db_settings
from test_grants import run_psql
from test_migrations import HEAD, _alembic_cli, _env_for, _env_without_database, _script

import lambda_function
from loader.common import EventRecord, SourceObject
from loader.config import DatabaseSettings, Settings
from loader.load.adoption import AdoptedRange, read_adopted_range
from loader.load.copy import write_batch_copy
from loader.load.revision import check_revision, code_revisions
from loader.load.sink import BatchWriter, write_batch
from loader.load.tables import tables_for
from loader.pipeline.job import HourJob
from loader.schema import metadata
from loader.transform.mapping import transform_object

ROOT = Path(__file__).resolve().parents[2]

#: The original ETL's `ensureTableExists`, verbatim.
ORIGINAL_ETL_DDL = """
CREATE TABLE IF NOT EXISTS clickstream_events (
  event_id UUID PRIMARY KEY, event_timestamp TIMESTAMPTZ NOT NULL, event_name TEXT NOT NULL,
  user_id TEXT, user_login_state TEXT, identity_source TEXT, client_id TEXT, session_id TEXT,
  is_first_visit BOOLEAN, context_product_id TEXT, context_product_name TEXT,
  context_product_category TEXT, context_product_brand TEXT, context_product_price BIGINT,
  context_product_discount_price BIGINT, context_product_url_path TEXT)
"""
ORIGINAL_ETL_COLUMNS = (
    "event_id",
    "event_timestamp",
    "event_name",
    "user_id",
    "user_login_state",
    "identity_source",
    "client_id",
    "session_id",
    "is_first_visit",
    "context_product_id",
    "context_product_name",
    "context_product_category",
    "context_product_brand",
    "context_product_price",
    "context_product_discount_price",
    "context_product_url_path",
)
#: Its batch statement: the 16 columns, ON CONFLICT (event_id) DO NOTHING.
ORIGINAL_ETL_INSERT = (
    f"INSERT INTO clickstream_events ({','.join(ORIGINAL_ETL_COLUMNS)}) "
    f"VALUES ({','.join('%s' for _ in ORIGINAL_ETL_COLUMNS)}) ON CONFLICT (event_id) DO NOTHING"
)

HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
PREFIX = "events/2026/11/24/13/"
LAST_MODIFIED = HOUR + timedelta(minutes=30)
TABLES = tables_for(Settings(raw_bucket="b", db=DatabaseSettings()))
ADOPTION = "0003_adopt_original_etl_table"
#: The revision the adoption follows (read, not assumed: revisions may be re-chained).
BEFORE_ADOPTION = str(_script().get_revision(ADOPTION).down_revision)


def _coalesce(*values: Any) -> Any:
    """JavaScript's `a ?? b ?? null`."""
    return next((v for v in values if v is not None), None)


def _coerce_number(value: Any) -> Any:
    """The original ETL's coerceNumber: a finite number or numeric string, else null."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, int) else (number if number == number else None)


def original_etl_row(raw: Any) -> tuple[Any, ...] | None:
    """The 16 parameters the original ETL binds for one parsed object (parseEvent)."""
    if not isinstance(raw, dict):
        return None
    product = raw.get("product") or raw.get("context_product") or {}
    received = (raw.get("_ingest") or {}).get("receivedAt")
    payload_ts = raw.get("event_timestamp") or raw.get("eventTimestamp")
    timestamp = received or payload_ts or LAST_MODIFIED.isoformat()
    row = {
        "event_id": raw.get("event_id") or raw.get("eventId") or str(uuid.uuid4()),
        "event_timestamp": datetime.fromisoformat(timestamp),
        "event_name": raw.get("eventName") or raw.get("event_name") or "unknown",
        "user_id": _coalesce(raw.get("userId"), raw.get("user_id")),
        "user_login_state": _coalesce(raw.get("userLoginState"), raw.get("user_login_state")),
        "identity_source": _coalesce(raw.get("identity_source"), raw.get("identitySource")),
        "client_id": _coalesce(raw.get("clientId"), raw.get("client_id")),
        "session_id": _coalesce(raw.get("sessionId"), raw.get("session_id")),
        "is_first_visit": _coalesce(raw.get("isFirstVisit"), raw.get("is_first_visit")),
        "context_product_id": _coalesce(product.get("id"), product.get("product_id")),
        "context_product_name": _coalesce(product.get("name"), product.get("product_name")),
        "context_product_category": _coalesce(
            product.get("category"), product.get("product_category")
        ),
        "context_product_brand": _coalesce(
            product.get("brand"), product.get("brandName"), product.get("product_brand")
        ),
        "context_product_price": _coerce_number(
            _coalesce(product.get("price"), product.get("product_price"))
        ),
        "context_product_discount_price": _coerce_number(
            _coalesce(product.get("discountPrice"), product.get("product_discount_price"))
        ),
        "context_product_url_path": _coalesce(
            product.get("urlPath"), product.get("product_url_path")
        ),
    }
    return tuple(row[c] for c in ORIGINAL_ETL_COLUMNS)


def original_etl_load(conn: psycopg.Connection, bodies: list[bytes]) -> int:
    """What one run of the original ETL writes for these objects: one batch, one transaction."""
    rows = [row for body in bodies if (row := original_etl_row(json.loads(body))) is not None]
    with conn.cursor() as cur:
        cur.execute(ORIGINAL_ETL_DDL)
        cur.executemany(ORIGINAL_ETL_INSERT, rows)
    conn.commit()
    return len(rows)


# --- real-shaped objects -------------------------------------------------------------------------

PRODUCT = {
    "id": "cmiplel24000uxzk04dxmtt1t",
    "name": "Bàn phím cơ AULA M75 TM",
    "category": "keyboard",
    "brand": "AULA",
    "price": 1690000,
    "discountPrice": 0,
    "urlPath": "/product/ban-phim-co-aula-m75",
}
NAMES = ["page_view", "product_view", "add_to_cart_click", "category_view", "click"]


def tracker_event(index: int, *, with_id: bool) -> dict[str, Any]:
    """One event as the tracker sends it and the ingest Lambda stores it (one per object)."""
    received = HOUR + timedelta(seconds=61 * index, milliseconds=7 * index)
    event: dict[str, Any] = {
        "event_name": NAMES[index % len(NAMES)],
        "pageUrl": f"https://shop.example.vn/product/{index}",
        "referrer": None,
        "userLoginState": "anonymous",
        "clientId": str(uuid.UUID(int=1000 + index % 4)),
        "sessionId": str(uuid.UUID(int=2000 + index % 3)),
        "isFirstVisit": index == 0,
    }
    if with_id:
        event = {"eventId": str(uuid.UUID(int=5000 + index, version=4)), **event}
    if event["event_name"] == "category_view":
        event["product"] = {"category": "mobiles", "id": "mobiles"}
    elif event["event_name"] != "page_view":
        event["product"] = dict(PRODUCT)
    event["_ingest"] = {
        "receivedAt": received.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "sourceIp": "203.0.113.7",
        "userAgent": "Mozilla/5.0",
        "method": "POST",
        "path": "/clickstream",
    }
    return event


def hour_objects(count: int) -> list[tuple[str, bytes]]:
    """`count` objects, every other one from a tracker that predates eventId, sorted by key as
    ListObjectsV2 returns them; plus one array body the ingest Lambda spread into an object."""
    objects = [
        (
            f"{PREFIX}event-{uuid.UUID(int=index * 7919 + 11, version=4)}.json",
            json.dumps(tracker_event(index, with_id=index % 2 == 0), ensure_ascii=False).encode(),
        )
        for index in range(count)
    ]
    spread = {"0": "h", "1": "i", "_ingest": {"receivedAt": "2026-11-24T13:59:00.000Z"}}
    objects.append(
        (f"{PREFIX}event-{uuid.UUID(int=1, version=4)}.json", json.dumps(spread).encode())
    )
    return sorted(objects)


# --- fixtures and helpers ------------------------------------------------------------------------


# clickstream_ingest_meta as the revisions before 0006 had it (no event_timestamp).
META_BEFORE_0006 = sa.table(
    "clickstream_ingest_meta",
    *(
        sa.column(c.name, c.type)
        for c in metadata.tables["clickstream_ingest_meta"].c
        if c.name != "event_timestamp"
    ),
)


def _engine(info: psycopg.ConnectionInfo) -> sa.Engine:
    return sa.create_engine(db_settings(info).url(), poolclass=sa.NullPool)


@pytest.fixture
def legacy(postgresql: psycopg.Connection) -> psycopg.Connection:
    """An empty database with the original ETL's table and nothing else."""
    with postgresql.cursor() as cur:
        cur.execute(ORIGINAL_ETL_DDL)
    postgresql.commit()
    return postgresql


@pytest.fixture
def legacy_engine(legacy: psycopg.Connection) -> Iterator[sa.Engine]:
    engine = _engine(legacy.info)
    yield engine
    engine.dispose()


def adopt(engine: sa.Engine) -> None:
    """`alembic upgrade head`, in-process on an injected connection."""
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")


def legacy_rows(conn: psycopg.Connection) -> dict[uuid.UUID, tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(ORIGINAL_ETL_COLUMNS)} FROM clickstream_events")
        rows = {row[0]: row for row in cur.fetchall()}
    conn.rollback()  # hold no lock the migration would wait for
    return rows


# The tables of the schema as a DBA reads them: partitioned parents and plain tables, not the
# partitions that hold their rows (an adopted warehouse has a `_legacy` one, a fresh one none).
_TABLES = (
    "SELECT c.oid, c.relname FROM pg_class c "
    "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') "
    "AND NOT c.relispartition AND c.relname <> 'alembic_version'"
)


def catalog(conn: psycopg.Connection) -> dict[str, Any]:
    """What `\\d+` shows of every table but alembic_version: columns with types, nullability,
    defaults and comments; indexes; constraints; table comments. Partitions are left out."""
    with conn.cursor() as cur:
        cur.execute(
            f"""
            WITH t AS ({_TABLES})
            SELECT table_name, column_name, data_type, is_nullable, column_default,
                   col_description((quote_ident(table_schema) || '.' || quote_ident(table_name))
                                   ::regclass, ordinal_position)
            FROM information_schema.columns JOIN t ON t.relname = table_name
            WHERE table_schema = current_schema()
            """
        )
        columns = {(r[0], r[1]): r[2:] for r in cur.fetchall()}
        cur.execute(
            f"""
            WITH t AS ({_TABLES})
            SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x
            JOIN t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
            """
        )
        indexes = dict(cur.fetchall())
        cur.execute(
            f"""
            WITH t AS ({_TABLES})
            SELECT c.conname, c.contype, pg_get_constraintdef(c.oid)
            FROM pg_constraint c JOIN t ON t.oid = c.conrelid
            """
        )
        constraints = {r[0]: r[1:] for r in cur.fetchall()}
        cur.execute(
            f"WITH t AS ({_TABLES}) SELECT relname, obj_description(oid, 'pg_class') FROM t"
        )
        tables = dict(cur.fetchall())
    conn.rollback()
    return {"columns": columns, "indexes": indexes, "constraints": constraints, "tables": tables}


def many_legacy_rows(conn: psycopg.Connection, count: int) -> None:
    """`count` rows of every shape the original ETL writes: random ids, 'unknown' names, BIGINT
    prices, NULLs, for the objects of one hour."""
    bodies = []
    for index in range(count):
        event = tracker_event(index, with_id=index % 3 == 0)
        if index % 10 == 9:
            event.pop("event_name")  # stored as 'unknown'
        bodies.append(json.dumps(event).encode())
    assert original_etl_load(conn, bodies) == count


# --- adoption ------------------------------------------------------------------------------------


def test_upgrade_head_adopts_the_original_etl_table_in_place(
    legacy: psycopg.Connection, dw: psycopg.Connection
) -> None:
    # GIVEN the original ETL's table with rows as it writes them, and no alembic_version
    many_legacy_rows(legacy, 60)
    before = legacy_rows(legacy)
    env = _env_for(legacy.info)

    # WHEN a DBA runs plain `alembic upgrade head`, then `alembic check`
    upgraded = _alembic_cli("upgrade", "head", env=env)
    checked = _alembic_cli("check", env=env)

    # THEN every row and every id survived, values unchanged (prices now numeric)
    assert upgraded.returncode == 0, upgraded.stderr
    after = legacy_rows(legacy)
    assert after == before
    assert {type(row[13]) for row in after.values()} == {Decimal, type(None)}
    assert sum(row[2] == "unknown" for row in after.values()) == 6
    # ... the table is exactly what a fresh warehouse at head has: columns, types, defaults,
    # comments, indexes, constraint names (pk_clickstream_events) and the other tables
    assert catalog(legacy) == catalog(dw)
    assert set(catalog(legacy)["tables"]) == set(metadata.tables)
    # ... models and migrations agree, and the loader's revision guard passes
    assert checked.returncode == 0, checked.stderr
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr
    engine = _engine(legacy.info)
    try:
        with engine.connect() as conn:
            assert check_revision(conn, code_revisions()) == HEAD
            adoption = conn.execute(sa.text("SELECT * FROM clickstream_adoptions")).one()
            loaded_at = set(
                conn.execute(sa.text("SELECT DISTINCT loaded_at FROM clickstream_events")).scalars()
            )
    finally:
        engine.dispose()
    # ... and the adoption is on record: how many rows, over which time range
    stamps = [row[1] for row in before.values()]
    assert adoption.table_name == "clickstream_events"
    assert adoption.revision == ADOPTION
    assert adoption.adopted_rows == 60
    assert (adoption.first_event_at, adoption.last_event_at) == (min(stamps), max(stamps))
    assert loaded_at == {adoption.adopted_at}


def test_a_fresh_warehouse_records_no_adoption(dw: psycopg.Connection) -> None:
    with dw.cursor() as cur:
        cur.execute("SELECT count(*) FROM clickstream_adoptions")
        assert cur.fetchone() == (0,)


def test_a_warehouse_already_loading_is_not_taken_for_an_adopted_one(
    postgresql: psycopg.Connection,
) -> None:
    # GIVEN a warehouse of ours at the revision before, with rows the loader wrote
    engine = _engine(postgresql.info)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), BEFORE_ADOPTION)
        records = _records(3, with_id=False)
        with engine.begin() as conn:  # as the loader of that revision wrote them
            for record in records:
                conn.execute(sa.insert(metadata.tables["clickstream_events"]), record.event)
                conn.execute(sa.insert(META_BEFORE_0006), record.meta)

        # WHEN it is upgraded to head
        adopt(engine)

        # THEN nothing is recorded as adopted, and no switch-over match can ever apply
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM clickstream_adoptions")).scalar() == 0
    finally:
        engine.dispose()


def _render(*args: str) -> subprocess.CompletedProcess[str]:
    return _alembic_cli(*args, env=_env_without_database())


def test_the_adoption_renders_offline_for_review_and_applies_with_psql(
    legacy: psycopg.Connection, tmp_path: Path
) -> None:
    # GIVEN the original ETL's table with rows, and the SQL a DBA renders for it, no database
    many_legacy_rows(legacy, 20)
    before = legacy_rows(legacy)
    rendered = _render("-x", "adopt_original_etl=true", "upgrade", "head", "--sql")
    assert rendered.returncode == 0, rendered.stderr
    sql = rendered.stdout
    # the original ETL's table is adopted, not created (0006 later makes it a partition)
    assert "CREATE TABLE clickstream_events (" not in sql.split("0006_partition_by_day")[0]
    assert "CREATE TABLE clickstream_ingest_meta (" in sql
    assert "ALTER COLUMN context_product_price TYPE numeric" in sql
    assert "ALTER INDEX IF EXISTS clickstream_events_pkey RENAME TO pk_clickstream_events" in sql
    adopt_sql = tmp_path / "adopt.sql"
    adopt_sql.write_text(sql, encoding="utf-8")

    # WHEN the reviewed file is run with psql
    applied = run_psql(legacy.info, adopt_sql)

    # THEN the warehouse is at head with every row, and models and migrations agree
    assert applied.returncode == 0, applied.stderr
    assert legacy_rows(legacy) == before
    env = _env_for(legacy.info)
    current = _alembic_cli("current", env=env)
    assert HEAD in current.stdout
    checked = _alembic_cli("check", env=env)
    assert checked.returncode == 0, checked.stderr


def test_the_adoption_revision_renders_the_same_for_fresh_and_adopted_warehouses() -> None:
    revision_range = f"{BEFORE_ADOPTION}:{ADOPTION}"

    fresh = _render("upgrade", revision_range, "--sql")
    adopted = _render("-x", "adopt_original_etl=true", "upgrade", revision_range, "--sql")

    assert fresh.returncode == 0, fresh.stderr
    assert adopted.returncode == 0, adopted.stderr
    assert fresh.stdout == adopted.stdout
    assert "ADD COLUMN IF NOT EXISTS loaded_at" in fresh.stdout


def test_the_fresh_warehouse_sql_fails_cleanly_on_the_original_etl_table(
    legacy: psycopg.Connection, tmp_path: Path
) -> None:
    # GIVEN the SQL rendered without the flag (for an empty warehouse)
    sql = _render("upgrade", "head", "--sql")
    assert sql.returncode == 0, sql.stderr
    fresh_sql = tmp_path / "up.sql"
    fresh_sql.write_text(sql.stdout, encoding="utf-8")

    # WHEN it is run against the original ETL's warehouse by mistake
    applied = run_psql(legacy.info, fresh_sql)

    # THEN it stops at the first CREATE TABLE and leaves nothing behind
    assert applied.returncode != 0
    assert 'relation "clickstream_events" already exists' in applied.stderr
    with legacy.cursor() as cur:
        cur.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
        )
        assert cur.fetchall() == [("clickstream_events",)]


def test_the_offline_flag_must_say_true_or_false() -> None:
    rendered = _render("-x", "adopt_original_etl=maybe", "upgrade", "head", "--sql")

    assert rendered.returncode != 0
    assert "adopt_original_etl must be true or false" in rendered.stderr


def test_a_clickstream_events_that_is_not_the_original_etls_is_refused(
    postgresql: psycopg.Connection,
) -> None:
    # GIVEN some other table under the same name
    with postgresql.cursor() as cur:
        cur.execute("CREATE TABLE clickstream_events (id bigint PRIMARY KEY, name text)")
    postgresql.commit()
    engine = _engine(postgresql.info)
    try:
        # WHEN the migrations run, THEN they refuse, naming what is missing, and change nothing
        with pytest.raises(RuntimeError, match=r"not the original ETL's table.*event_id"):
            adopt(engine)
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()
    assert tables == ["clickstream_events"]


def test_downgrade_refuses_on_an_adopted_warehouse(
    legacy: psycopg.Connection, legacy_engine: sa.Engine
) -> None:
    # GIVEN an adopted warehouse
    many_legacy_rows(legacy, 5)
    adopt(legacy_engine)

    # WHEN a DBA downgrades below the adoption
    with (
        pytest.raises(sa.exc.DBAPIError, match="restore the backup") as excinfo,
        legacy_engine.begin() as conn,
    ):
        command.downgrade(alembic_config(conn), BEFORE_ADOPTION)

    # THEN it is refused and nothing changes: still at head, the adoption still on record
    assert excinfo.value.orig.pgcode == "P0001"  # raise_exception
    with legacy_engine.connect() as conn:
        assert check_revision(conn, code_revisions()) == HEAD
        assert conn.execute(sa.text("SELECT count(*) FROM clickstream_adoptions")).scalar() == 1


def test_downgrade_of_a_fresh_warehouse_puts_back_the_previous_comments(
    postgresql: psycopg.Connection,
) -> None:
    engine = _engine(postgresql.info)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), BEFORE_ADOPTION)
        before = catalog(postgresql)
        adopt(engine)
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), BEFORE_ADOPTION)
    finally:
        engine.dispose()
    assert catalog(postgresql) == before


# --- switching over ------------------------------------------------------------------------------


def _record(index: int, *, with_id: bool, key_number: int | None = None) -> EventRecord:
    """tracker_event(index) as the loader transforms it, from its own object."""
    body = json.dumps(tracker_event(index, with_id=with_id)).encode()
    key = f"{PREFIX}event-{uuid.UUID(int=key_number or index + 77, version=4)}.json"
    (record,) = transform_object(SourceObject("b", key, LAST_MODIFIED), body).events
    return record


def _records(count: int, *, with_id: bool, offset: int = 0) -> list[EventRecord]:
    return [_record(index, with_id=with_id) for index in range(offset, offset + count)]


@pytest.fixture
def adopted_loader_env(
    legacy: psycopg.Connection,
    legacy_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    s3: Any,
    bucket: str,
    s3_endpoint: str,
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, Any]]:
    """An hour in the bucket that the original ETL loaded in part (it read only the first keys
    of its one ListObjectsV2 page), then the warehouse adopted, and the Lambda pointed at it."""
    objects = hour_objects(24)
    for key, body in objects:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    first_page = objects[:10]  # the original ETL's cap is 1,000 keys; 10 here
    original_etl_load(legacy, [body for _, body in first_page])
    adopt(legacy_engine)
    settings = db_settings(legacy.info)
    env = {
        "RAW_BUCKET_NAME": bucket,
        "DW_PG_HOST": settings.host or "",
        "DW_PG_PORT": str(settings.port),
        "DW_PG_USER": settings.user or "",
        "DW_PG_DATABASE": settings.database or "",
        "DW_PG_SSL": "disable",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "WRITE_METHOD": getattr(request, "param", "copy"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    lambda_function._factory.close()
    yield {"objects": objects, "first_page": first_page}
    lambda_function._factory.close()


def _one_row_per_event(engine: sa.Engine) -> list[Any]:
    """Events stored more than once: the same receive time, client, session and name."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT event_timestamp, client_id, session_id, event_name, count(*) "
                "FROM clickstream_events GROUP BY 1, 2, 3, 4 HAVING count(*) > 1"
            )
        ).all()


@pytest.mark.parametrize("adopted_loader_env", ["copy", "insert"], indirect=True)
def test_loading_an_hour_the_original_etl_loaded_inserts_only_what_it_missed(
    adopted_loader_env: dict[str, Any], legacy_engine: sa.Engine
) -> None:
    objects, first_page = adopted_loader_env["objects"], adopted_loader_env["first_page"]
    payloads = {key: json.loads(body) for key, body in objects}
    valid = [key for key, p in payloads.items() if "event_name" in p]
    loaded_before = {key for key, _ in first_page}
    without_id_loaded = [k for k in valid if k in loaded_before and "eventId" not in payloads[k]]
    assert without_id_loaded and len(without_id_loaded) < len(loaded_before)  # a real mix
    with legacy_engine.connect() as conn:
        stored_before = conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar()

    # WHEN the loader loads the hour, then loads it again
    first = lambda_function.lambda_handler({"hour": "2026-11-24T13"}, None)
    second = lambda_function.lambda_handler({"hour": "2026-11-24T13"}, None)

    # THEN it inserted exactly the events the original ETL missed; the ones it had (by id, or
    # by receive time, client, session and name) count as exact duplicates
    missed = [k for k in valid if k not in loaded_before]
    assert first["state"] == "complete"
    assert first["inserted"] == len(missed)
    assert first["duplicate_exact"] == len(valid) - len(missed)
    assert first["duplicate_adopted"] == len(without_id_loaded)
    assert first["duplicate_conflicting"] == 0
    assert first["invalid"]["count"] == 1  # the spread array: the original ETL stored 'unknown'
    # ... and the rerun inserts nothing
    assert second["inserted"] == 0
    assert second["duplicate_exact"] == len(valid)
    assert second["duplicate_adopted"] == len(without_id_loaded)
    with legacy_engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar()
        keys = set(conn.execute(sa.text("SELECT s3_key FROM clickstream_ingest_meta")).scalars())
    assert stored == stored_before + len(missed)
    # ... lineage is added where the id proves the row is the object's event (the original ETL
    # discarded `_ingest`); a row matched by content stays adopted (no metadata), so the rerun
    # matches it again
    with_id_loaded = {k for k in valid if k in loaded_before and "eventId" in payloads[k]}
    assert keys == set(missed) | with_id_loaded
    assert _one_row_per_event(legacy_engine) == []


def test_a_dry_run_counts_only_what_the_original_etl_missed(
    adopted_loader_env: dict[str, Any],
) -> None:
    objects, first_page = adopted_loader_env["objects"], adopted_loader_env["first_page"]
    valid = [key for key, body in objects if "event_name" in json.loads(body)]
    missed = [key for key in valid if key not in {k for k, _ in first_page}]
    loader = lambda_function._factory.get()

    report = loader.load(HourJob(HOUR, "backfill", dry_run=True))

    assert report.would_insert == len(missed)


@pytest.fixture(params=[write_batch_copy, write_batch], ids=["copy", "insert"])
def writer(request: pytest.FixtureRequest) -> BatchWriter:
    return request.param  # type: ignore[no-any-return]


def _adopted(engine: sa.Engine) -> AdoptedRange | None:
    with engine.connect() as conn:
        return read_adopted_range(conn, TABLES.adoptions)


def test_the_match_never_applies_to_the_loaders_own_rows(
    legacy: psycopg.Connection, legacy_engine: sa.Engine, writer: BatchWriter
) -> None:
    # GIVEN an adopted warehouse whose range covers the hour, and an event the loader wrote there
    original_etl_load(
        legacy, [json.dumps(tracker_event(i, with_id=False)).encode() for i in (0, 40)]
    )
    adopt(legacy_engine)
    adopted = _adopted(legacy_engine)
    assert adopted is not None
    own = _record(20, with_id=False)
    assert adopted.covers(own.event["event_timestamp"])
    with legacy_engine.begin() as conn:
        assert writer(conn, TABLES, [own], adopted).inserted == 1

    # WHEN another object brings an event without a payload id that looks the same (same receive
    # time, client, session and name)
    twin = _record(20, with_id=False, key_number=424242)
    assert twin.event_id != own.event_id and not twin.id_from_payload
    with legacy_engine.begin() as conn:
        outcome = writer(conn, TABLES, [twin], adopted)

    # THEN it is inserted: rows the loader wrote carry ingest metadata and are never matched
    assert (outcome.inserted, outcome.duplicate_exact, outcome.duplicate_adopted) == (1, 0, 0)


def test_an_event_with_a_payload_id_is_never_matched_by_content(
    legacy: psycopg.Connection, legacy_engine: sa.Engine, writer: BatchWriter
) -> None:
    # GIVEN an adopted row the original ETL stored under a random id (no eventId)
    original_etl_load(legacy, [json.dumps(tracker_event(1, with_id=False)).encode()])
    adopt(legacy_engine)
    adopted = _adopted(legacy_engine)

    # WHEN an event with the same content but its own payload id arrives
    (record,) = _records(1, with_id=True, offset=1)
    assert record.id_from_payload
    with legacy_engine.begin() as conn:
        outcome = writer(conn, TABLES, [record], adopted)

    # THEN it is its own event (the original ETL would have stored it under that id)
    assert (outcome.inserted, outcome.duplicate_adopted) == (1, 0)


def test_batches_outside_the_adopted_range_send_no_match_query(
    legacy: psycopg.Connection, legacy_engine: sa.Engine, writer: BatchWriter
) -> None:
    # GIVEN an adopted warehouse, and a batch of derived-id events an hour after its range
    many_legacy_rows(legacy, 10)
    adopt(legacy_engine)
    adopted = _adopted(legacy_engine)
    later = _records(20, with_id=False, offset=200)
    assert adopted is not None and not any(
        adopted.covers(r.event["event_timestamp"]) for r in later
    )
    statements: list[str] = []

    def record_statement(*args: Any) -> None:
        statements.append(args[2])

    # WHEN it is written, and then a batch inside the range
    sa.event.listen(legacy_engine, "before_cursor_execute", record_statement)
    try:
        with legacy_engine.begin() as conn:
            outside = writer(conn, TABLES, later, adopted)
        outside_statements = list(statements)
        statements.clear()
        with legacy_engine.begin() as conn:
            writer(conn, TABLES, _records(2, with_id=False, offset=1), adopted)
    finally:
        sa.event.remove(legacy_engine, "before_cursor_execute", record_statement)

    # THEN the first batch ran only the normal statements; the second one looked for matches
    assert outside.inserted == 20
    assert not any("candidate" in s for s in outside_statements)
    assert sum("candidate" in s for s in statements) == 1
