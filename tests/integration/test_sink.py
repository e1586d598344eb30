"""The sink's contract, proven for both write methods (COPY staging and INSERT ... RETURNING).

Each test runs once per method against a real PostgreSQL at Alembic head: same rows, same
counts, same duplicate classification, same atomicity.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from loader.common import EventRecord, SourceObject
from loader.config import ConfigError, DatabaseSettings, Settings
from loader.load.batch import write_isolating_poison
from loader.load.completion import Completion, record_completed
from loader.load.copy import write_batch_copy
from loader.load.sink import BatchWriter, write_batch
from loader.load.tables import tables_for
from loader.transform.mapping import transform_object

HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
TABLES = tables_for(Settings(raw_bucket="b", db=DatabaseSettings()))


@pytest.fixture(params=[write_batch_copy, write_batch], ids=["copy", "insert"])
def writer(request: pytest.FixtureRequest) -> BatchWriter:
    return request.param  # type: ignore[no-any-return]


def event(index: int, **fields: Any) -> EventRecord:
    payload = {
        "event_id": str(uuid.UUID(int=index + 1)),
        "event_name": "page_view",
        "pageUrl": f"https://shop.example.com/p/{index}",
        "sessionId": "s-1",
        "product": {"price": "12.50"},
        "notes": "tab\there\nnewline \\ backslash",
        "_ingest": {"receivedAt": "2026-11-24T13:00:01Z", "sourceIp": "203.0.113.9"},
        **fields,
    }
    body = json.dumps(payload).encode()
    result = transform_object(SourceObject("b", f"events/2026/11/24/13/o-{index}.json", HOUR), body)
    return result.events[0]


def rows(engine: sa.Engine, table: str = "clickstream_events") -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY event_id")).mappings().all()


def write(engine: sa.Engine, writer: BatchWriter, records: list[EventRecord]) -> Any:
    with engine.begin() as conn:
        return writer(conn, TABLES, records)


def test_batch_lands_in_both_tables_with_every_value_intact(
    dw_engine: sa.Engine, writer: BatchWriter
) -> None:
    records = [event(i) for i in range(20)]
    outcome = write(dw_engine, writer, records)
    assert outcome.inserted == 20 and outcome.meta_inserted == 20
    stored = rows(dw_engine)
    assert [r["event_id"] for r in stored] == sorted(r.event_id for r in records)
    first = stored[0]
    assert first["properties"] == {"notes": "tab\there\nnewline \\ backslash"}
    assert str(first["context_product_price"]) == "12.50"
    meta = rows(dw_engine, "clickstream_ingest_meta")[0]
    assert str(meta["source_ip"]) == "203.0.113.9"
    assert bytes(meta["payload_sha256"]) == records[0].meta["payload_sha256"]
    assert meta["ingest_metadata"] == {
        "receivedAt": "2026-11-24T13:00:01Z",
        "sourceIp": "203.0.113.9",
    }


def test_rerun_inserts_nothing_and_classifies_duplicates(
    dw_engine: sa.Engine, writer: BatchWriter
) -> None:
    write(dw_engine, writer, [event(i) for i in range(10)])
    before = rows(dw_engine)
    changed = event(3, pageUrl="https://elsewhere.example/")  # same id, other payload
    outcome = write(dw_engine, writer, [*(event(i) for i in range(10)), changed, event(10)])
    assert outcome.inserted == 1
    assert outcome.duplicate_exact == 10  # the 10 reruns; the in-batch copy of 3 conflicts
    assert outcome.duplicate_conflicting == 1
    assert outcome.conflicting == [(changed.key, changed.event_id)]
    after = {r["event_id"]: dict(r) for r in rows(dw_engine)}
    assert len(after) == 11
    for row in before:  # untouched: same values, same loaded_at
        assert after[row["event_id"]] == dict(row)


def test_in_batch_repeats_are_exact_duplicates(dw_engine: sa.Engine, writer: BatchWriter) -> None:
    outcome = write(dw_engine, writer, [event(1), event(1), event(2)])
    assert (outcome.inserted, outcome.duplicate_exact, outcome.duplicate_conflicting) == (2, 1, 0)


def test_a_refused_batch_leaves_neither_table_touched(
    dw_engine: sa.Engine, writer: BatchWriter
) -> None:
    with dw_engine.begin() as conn:
        conn.execute(
            sa.text(
                "ALTER TABLE clickstream_ingest_meta ADD CONSTRAINT test_no_nine "
                "CHECK (s3_key <> 'events/2026/11/24/13/o-9.json')"
            )
        )
    with pytest.raises(sa.exc.IntegrityError):
        write(dw_engine, writer, [event(i) for i in range(12)])
    assert rows(dw_engine) == [] and rows(dw_engine, "clickstream_ingest_meta") == []


def test_bisection_isolates_the_poison_row_and_loads_the_rest(
    dw_engine: sa.Engine, writer: BatchWriter
) -> None:
    with dw_engine.begin() as conn:
        conn.execute(
            sa.text(
                "ALTER TABLE clickstream_events ADD CONSTRAINT test_poison "
                "CHECK (page_url IS DISTINCT FROM 'https://poison.example/')"
            )
        )
    records = [event(i) for i in range(64)]
    records[41] = event(41, pageUrl="https://poison.example/")
    outcome = write_isolating_poison(dw_engine, TABLES, records, writer)
    assert outcome.inserted == 63
    assert [(r.key, r.reason, r.sqlstate) for r in outcome.rejected] == [
        ("events/2026/11/24/13/o-41.json", "rejected", "23514")
    ]
    assert "poison.example" not in outcome.rejected[0].detail
    assert len(rows(dw_engine)) == 63 and len(rows(dw_engine, "clickstream_ingest_meta")) == 63


def test_copy_stage_is_empty_after_each_batch(dw_engine: sa.Engine) -> None:
    engine = dw_engine.execution_options()
    with engine.connect() as conn:
        with conn.begin():
            write_batch_copy(conn, TABLES, [event(i) for i in range(5)])
        with conn.begin():
            outcome = write_batch_copy(conn, TABLES, [event(i) for i in range(5, 8)])
            staged = conn.execute(sa.text("SELECT count(*) FROM pg_temp.stage_clickstream_events"))
            assert outcome.inserted == 3
            assert staged.scalar_one() == 3  # this batch only: the previous commit emptied it
    assert len(rows(dw_engine)) == 8


def test_writers_agree_row_for_row(dw_settings: DatabaseSettings) -> None:
    """Write the same hostile-ish batch with each method; compare the stored rows."""
    bodies = [
        {"event_name": "click", "element": {"text": "a\tb\\c\nd"}, "isFirstVisit": "TRUE"},
        {"event_name": "x" * 300, "userId": 42, "product": {"price": "NaN", "name": None}},
        {"event_name": "custom", "timestamp": 1795525573000, "big": 123456789012345678901234567890},
    ]
    records = [
        transform_object(SourceObject("b", f"k-{i}", HOUR), json.dumps(b).encode()).events[0]
        for i, b in enumerate(bodies)
    ]
    engine = sa.create_engine(dw_settings.url(), poolclass=sa.NullPool)
    try:
        write(engine, write_batch, records)
        via_insert = [dict(r) for r in rows(engine)]
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM clickstream_events"))
        write(engine, write_batch_copy, records)
        via_copy = [dict(r) for r in rows(engine)]
    finally:
        engine.dispose()
    strip = lambda rs: [{k: v for k, v in r.items() if k != "loaded_at"} for r in rs]  # noqa: E731
    assert strip(via_insert) == strip(via_copy)
    assert len(via_copy) == 3
    big = next(r for r in via_copy if r["event_name"] == "custom")
    assert big["properties"] == {"big": 123456789012345678901234567890}


def test_settings_default_to_copy() -> None:
    from loader.config import load_settings

    assert load_settings({"RAW_BUCKET_NAME": "b"}).write_method == "copy"
    assert (
        load_settings({"RAW_BUCKET_NAME": "b", "WRITE_METHOD": "insert"}).write_method == "insert"
    )
    with pytest.raises(ConfigError, match="WRITE_METHOD"):
        load_settings({"RAW_BUCKET_NAME": "b", "WRITE_METHOD": "fast"})


def test_absent_json_is_sql_null_not_json_null(dw_engine: sa.Engine, writer: BatchWriter) -> None:
    """`properties IS NULL` must find events with nothing left over, whatever the write path."""
    plain = transform_object(
        SourceObject("b", "k-plain", HOUR), b'{"event_name": "page_view"}'
    ).events[0]
    write(dw_engine, writer, [plain])
    with dw_engine.connect() as conn:
        nulls = conn.execute(
            sa.text(
                "SELECT properties IS NULL, element IS NULL, ingest_metadata IS NULL "
                "FROM clickstream_events JOIN clickstream_ingest_meta USING (event_id)"
            )
        ).one()
    assert tuple(nulls) == (True, True, True)


def test_completion_records_keep_any_key_and_count_the_keys_meta_rows(
    dw_engine: sa.Engine,
) -> None:
    """The objects travel as arrays: every character a key may hold comes back as
    it was, and `meta_rows` counts the rows naming each key in the same transaction."""
    odd = [
        'events/2026/11/24/13/quote"and\\backslash.json',
        "events/2026/11/24/13/{braces},comma.json",
        "events/2026/11/24/13/NULL",
        "events/2026/11/24/13/space and ünïcødé 事件 🙂.json",
        "events/2026/11/24/13/o-1.json",
    ]
    modified = [HOUR, None, HOUR, HOUR, HOUR]
    run_id = uuid.uuid4()
    with dw_engine.begin() as conn:
        write_batch(conn, TABLES, [event(1), event(2)])  # from o-1.json and o-2.json
        record_completed(
            conn,
            TABLES,
            [
                Completion(k, i, 2 * i, m, HOUR - timedelta(hours=1), HOUR + timedelta(hours=2))
                for i, (k, m) in enumerate(zip(odd, modified, strict=True))
            ],
            bucket="b",
            hour=HOUR,
            run_id=run_id,
        )
    with dw_engine.connect() as conn:
        stored = {
            r["s3_key"]: r
            for r in conn.execute(sa.text("SELECT * FROM clickstream_loaded_objects")).mappings()
        }
    assert sorted(stored) == sorted(odd)
    for i, (key, last_modified) in enumerate(zip(odd, modified, strict=True)):
        row = stored[key]
        assert (row["events"], row["quarantined"], row["s3_last_modified"]) == (
            i,
            2 * i,
            last_modified,
        )
        assert (row["s3_bucket"], row["hour"], row["run_id"]) == ("b", HOUR, run_id)
        assert row["meta_rows"] == (1 if key.endswith("/o-1.json") else 0)
