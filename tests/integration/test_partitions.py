"""Day partitions: any hour loads right after `alembic upgrade head`, one row per event across
partitions (and runs), and a partition the warehouse will not make stops the hour, losing nothing.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from conftest import alembic_config, db_settings

import lambda_function
from loader.common import EventRecord
from loader.load.batch import batch_writer
from loader.load.revision import check_revision, code_revisions
from loader.load.sink import BatchOutcome
from loader.load.tables import DEFAULT_TABLES
from loader.schema import HEAD_REVISION
from loader.window import hour_prefix
from tools.demo.traffic import generate_hour, upload

A_YEAR_AGO = datetime(2025, 12, 6, 10, tzinfo=UTC)
LATE_HOUR = datetime(2026, 11, 24, 23, tzinfo=UTC)
NEXT_DAY_HOUR = datetime(2026, 11, 25, 0, tzinfo=UTC)


@pytest.fixture
def handler(loader_env: dict[str, str]) -> Iterator[Any]:
    lambda_function._factory.close()
    yield lambda_function.lambda_handler
    lambda_function._factory.close()


def rows_by_partition(engine: sa.Engine, table: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1")
        ).all()
    return {name: n for name, n in rows}


def test_an_hour_from_a_year_ago_loads_right_after_upgrade_head(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN a warehouse fresh from `alembic upgrade head` (no partition at all) and an old hour
    assert rows_by_partition(dw_engine, "clickstream_events") == {}
    objects = upload(s3, bucket, generate_hour(A_YEAR_AGO, 30, malformed_ratio=0))
    expected = sum(1 for o in objects if o.expect == "event")

    # WHEN it is loaded, twice
    first = handler({"hour": "2025-12-06T10"}, None)
    second = handler({"hour": "2025-12-06T10"}, None)

    # THEN it lands in that day's partitions of every table, once
    assert (first["state"], first["inserted"]) == ("complete", expected)
    assert (second["inserted"], second["duplicate_exact"]) == (0, expected)
    assert rows_by_partition(dw_engine, "clickstream_events") == {
        "clickstream_events_p20251206": expected
    }
    assert rows_by_partition(dw_engine, "clickstream_ingest_meta") == {
        "clickstream_ingest_meta_p20251206": expected
    }
    assert rows_by_partition(dw_engine, "clickstream_loaded_objects") == {
        "clickstream_loaded_objects_p20251206": len(objects)
    }
    # ... with two claims per event (both windows of 10:xx start that day)
    assert rows_by_partition(dw_engine, "clickstream_event_claims") == {
        "clickstream_event_claims_p20251206": 2 * expected
    }


def _event_object(event_id: str, received_at: str, session: str) -> bytes:
    return json.dumps(
        {
            "eventName": "page_view",
            "eventId": event_id,
            "pageUrl": "https://shop.example/",
            "userId": None,
            "userLoginState": "anonymous",
            "clientId": "c-1",
            "sessionId": session,
            "_ingest": {"receivedAt": received_at, "sourceIp": "203.0.113.9"},
        }
    ).encode()


def test_the_same_event_id_across_midnight_from_two_concurrent_runs_lands_once(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN one event delivered twice: just before midnight (hour 23 of one day, the first
    # day's partition) and just after (hour 00 of the next day, the next day's partition)
    event_id = str(uuid.uuid4())
    late = f"{hour_prefix(LATE_HOUR)}event-{uuid.uuid4()}.json"
    early = f"{hour_prefix(NEXT_DAY_HOUR)}event-{uuid.uuid4()}.json"
    s3.put_object(
        Bucket=bucket, Key=late, Body=_event_object(event_id, "2026-11-24T23:59:59.900Z", "s")
    )
    s3.put_object(
        Bucket=bucket, Key=early, Body=_event_object(event_id, "2026-11-25T00:00:00.100Z", "s")
    )

    # WHEN both hours load at the same time, in two threads
    reports: dict[str, dict[str, Any]] = {}
    start = threading.Barrier(2)

    def load(hour: str) -> None:
        start.wait()
        reports[hour] = handler({"hour": hour}, None)

    threads = [threading.Thread(target=load, args=(h,)) for h in ("2026-11-24T23", "2026-11-25T00")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    # THEN the event is stored once, and the other copy counts as a duplicate
    assert {r["state"] for r in reports.values()} == {"complete"}
    assert sum(r["inserted"] for r in reports.values()) == 1
    assert sum(r["duplicates"] for r in reports.values()) == 1
    with dw_engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM clickstream_events WHERE event_id = :id"),
                {"id": event_id},
            ).scalar_one()
            == 1
        )
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM clickstream_ingest_meta WHERE event_id = :id"),
                {"id": event_id},
            ).scalar_one()
            == 1
        )


def _record(event_id: uuid.UUID, stamp: datetime, key: str, digest: bytes) -> EventRecord:
    event = {"event_id": event_id, "event_name": "page_view", "event_timestamp": stamp}
    meta = {"event_id": event_id, "s3_bucket": "b", "s3_key": key, "payload_sha256": digest}
    return EventRecord(event_id, key, 1, event, meta)


TABLES = DEFAULT_TABLES


@pytest.mark.parametrize("method", ["copy", "insert"])
@pytest.mark.parametrize("gap", [timedelta(milliseconds=200), timedelta(minutes=59)])
def test_a_second_copy_waits_for_the_first_and_loses_whatever_partition_it_is_in(
    dw_engine: sa.Engine, method: str, gap: timedelta
) -> None:
    # GIVEN two copies of one event received `gap` apart, across midnight: two day partitions
    event_id = uuid.uuid4()
    first_at = datetime(2026, 11, 24, 23, 59, 59, 900_000, tzinfo=UTC)
    first = _record(event_id, first_at, "events/2026/11/24/23/a.json", b"\x01" * 32)
    second = _record(event_id, first_at + gap, "events/2026/11/25/00/b.json", b"\x01" * 32)
    writer = batch_writer(method)

    # WHEN the first copy's batch is written but not yet committed, and the second copy's
    # batch runs meanwhile on another connection
    outcomes: list[BatchOutcome] = []
    with dw_engine.connect() as conn_a:
        with conn_a.begin():
            assert writer(conn_a, TABLES, [first]).inserted == 1

            def second_batch() -> None:
                with dw_engine.begin() as conn_b:
                    outcomes.append(writer(conn_b, TABLES, [second]))

            racer = threading.Thread(target=second_batch)
            racer.start()
            racer.join(timeout=2)
            # ... it waits on the first copy's claim instead of inserting
            assert racer.is_alive() and outcomes == []
        racer.join(timeout=30)

    # THEN once the first commits, the second is an exact duplicate: one row, one meta row
    assert [(o.inserted, o.duplicate_exact) for o in outcomes] == [(0, 1)]
    with dw_engine.connect() as conn:
        stored = (
            conn.execute(
                sa.text("SELECT event_timestamp FROM clickstream_events WHERE event_id = :id"),
                {"id": event_id},
            )
            .scalars()
            .all()
        )
        metas = conn.execute(
            sa.text("SELECT count(*) FROM clickstream_ingest_meta WHERE event_id = :id"),
            {"id": event_id},
        ).scalar_one()
        claims = conn.execute(
            sa.text("SELECT count(*) FROM clickstream_event_claims WHERE event_id = :id"),
            {"id": event_id},
        ).scalar_one()
    assert stored == [first_at]
    assert metas == 1
    assert claims == 2  # the loser took back the claim it had won


def test_copies_more_than_two_hours_apart_are_two_events(dw_engine: sa.Engine) -> None:
    # The documented limit of the claims: copies that share no window are distinct events.
    event_id = uuid.uuid4()
    at = datetime(2026, 11, 24, 10, tzinfo=UTC)
    writer = batch_writer("copy")
    with dw_engine.begin() as conn:
        writer(conn, TABLES, [_record(event_id, at, "events/2026/11/24/10/a.json", b"\x01" * 32)])
    with dw_engine.begin() as conn:
        later = _record(
            event_id, at + timedelta(hours=2), "events/2026/11/24/12/b.json", b"\x02" * 32
        )
        assert writer(conn, TABLES, [later]).inserted == 1


def test_a_deleted_event_loads_again_on_a_rerun(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    objects = upload(s3, bucket, generate_hour(A_YEAR_AGO, 10, malformed_ratio=0))
    expected = sum(1 for o in objects if o.expect == "event")
    assert handler({"hour": "2025-12-06T10"}, None)["inserted"] == expected
    with dw_engine.begin() as conn:
        deleted = conn.execute(
            sa.text(
                "DELETE FROM clickstream_events WHERE event_id IN "
                "(SELECT event_id FROM clickstream_events ORDER BY event_id LIMIT 3)"
            )
        ).rowcount
        # a DBA's delete takes the event's metadata and claims along (the trigger)
        conn.execute(sa.text("DELETE FROM clickstream_loaded_objects"))
    assert deleted == 3
    rerun = handler({"hour": "2025-12-06T10"}, None)
    assert (rerun["inserted"], rerun["duplicate_exact"]) == (3, expected - 3)


def test_a_partition_the_warehouse_will_not_make_stops_the_hour_without_loss(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN a DBA who took the partition function away (as revoking EXECUTE would)
    objects = upload(s3, bucket, generate_hour(A_YEAR_AGO, 10, malformed_ratio=0))
    expected = sum(1 for o in objects if o.expect == "event")
    with dw_engine.begin() as conn:
        conn.execute(
            sa.text("ALTER FUNCTION clickstream_ensure_partitions(date, date) RENAME TO turned_off")
        )

    # WHEN the hour loads, THEN it stops with an error naming the days and the fix
    with pytest.raises(Exception, match=r"2025-12-06.*clickstream-loader maintain") as raised:
        handler({"hour": "2025-12-06T10"}, None)
    assert "PartitionMissing" in type(raised.value).__name__
    # ... nothing was written and the hour is not complete
    with dw_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one() == 0
        states = conn.execute(sa.text("SELECT state FROM clickstream_load_runs")).scalars().all()
    assert states == ["failed"]

    # WHEN the DBA puts it back, THEN a rerun completes the hour
    with dw_engine.begin() as conn:
        conn.execute(
            sa.text("ALTER FUNCTION turned_off(date, date) RENAME TO clickstream_ensure_partitions")
        )
    lambda_function._factory.close()
    rerun = handler({"hour": "2025-12-06T10"}, None)
    assert (rerun["state"], rerun["inserted"]) == ("complete", expected)


# --- converting a populated warehouse ----------------------------------------------------------


def _migrate(engine: sa.Engine, revision: str, *, down: bool = False) -> None:
    with engine.connect() as conn:  # alembic owns the transactions, as `alembic upgrade` does
        (command.downgrade if down else command.upgrade)(alembic_config(conn), revision)
        conn.commit()


def _table_rows(engine: sa.Engine, table: str, order: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY {order}"))]


def test_upgrade_converts_a_populated_warehouse_with_rows_and_grants_intact(
    postgresql: psycopg.Connection, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a warehouse at 0005 that the loader of that revision filled (two days of events),
    # and a reader role a DBA granted SELECT
    engine = sa.create_engine(db_settings(postgresql.info).url(), poolclass=sa.NullPool)
    role = f"dashboard_{uuid.uuid4().hex[:8]}"
    try:
        _migrate(engine, "0005_event_trigger")
        with engine.begin() as conn:
            for day, count in ((23, 40), (24, 30)):
                stamp = datetime(2026, 11, day, 13, tzinfo=UTC)
                conn.execute(sa.text(OLD_FILL), {"n": count, "at": stamp, "day": day})
            conn.execute(sa.text(f"CREATE ROLE {role}"))
            conn.execute(sa.text(f"GRANT SELECT ON clickstream_events TO {role}"))
        events = _table_rows(engine, "clickstream_events", "event_id")
        metas = _table_rows(engine, "clickstream_ingest_meta", "event_id")

        # WHEN a DBA runs `alembic upgrade head`
        _migrate(engine, "head")

        # THEN every row is there unchanged (meta gained the event's timestamp), in the legacy
        # partition, and the grant holds on the new parent
        assert _table_rows(engine, "clickstream_events", "event_id") == events
        after = _table_rows(engine, "clickstream_ingest_meta", "event_id")
        stamps = {row[0]: row[2] for row in events}  # event_id, event_name, event_timestamp
        assert [row[:-1] for row in after] == metas
        assert [row[-1] for row in after] == [stamps[row[0]] for row in after]
        assert rows_by_partition(engine, "clickstream_events") == {"clickstream_events_legacy": 70}
        with engine.connect() as conn:
            assert conn.execute(
                sa.text("SELECT has_table_privilege(:r, 'clickstream_events', 'SELECT')"),
                {"r": role},
            ).scalar_one()
            assert check_revision(conn, code_revisions()) == HEAD_REVISION
            # ... and every existing event holds its two claims
            assert (
                conn.execute(sa.text("SELECT count(*) FROM clickstream_event_claims")).scalar_one()
                == 140
            )

        # WHEN the downgrade runs, THEN the plain tables come back with every row
        _migrate(engine, "0005_event_trigger", down=True)
        assert _table_rows(engine, "clickstream_events", "event_id") == events
        assert _table_rows(engine, "clickstream_ingest_meta", "event_id") == metas
        with engine.connect() as conn:
            kinds = conn.execute(
                sa.text(
                    "SELECT relname, relkind FROM pg_class WHERE relname IN "
                    "('clickstream_events', 'clickstream_ingest_meta') ORDER BY 1"
                )
            ).all()
            assert kinds == [("clickstream_events", "r"), ("clickstream_ingest_meta", "r")]
            assert conn.execute(
                sa.text("SELECT has_table_privilege(:r, 'clickstream_events', 'SELECT')"),
                {"r": role},
            ).scalar_one()
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
        engine.dispose()


OLD_FILL = """
WITH new AS (
    INSERT INTO clickstream_events (event_id, event_name, event_timestamp, client_id)
    SELECT gen_random_uuid(), 'page_view', :at + i * interval '1 second', 'c-' || i
    FROM generate_series(1, :n) AS i
    RETURNING event_id, event_timestamp
)
INSERT INTO clickstream_ingest_meta (event_id, received_at, s3_bucket, s3_key, payload_sha256)
SELECT event_id, event_timestamp, 'raw',
       'events/2026/11/' || :day || '/13/event-' || event_id || '.json', '\\x00'::bytea
FROM new
"""


def test_an_event_stamped_years_ahead_is_quarantined_and_the_hour_completes(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN an hour with one event whose receive time is years ahead (no partition may hold it)
    objects = upload(s3, bucket, generate_hour(A_YEAR_AGO, 10, malformed_ratio=0))
    expected = sum(1 for o in objects if o.expect == "event")
    odd = f"{hour_prefix(A_YEAR_AGO)}event-{uuid.uuid4()}.json"
    s3.put_object(
        Bucket=bucket, Key=odd, Body=_event_object(str(uuid.uuid4()), "2031-01-01T00:00:00Z", "s")
    )

    # WHEN the hour loads, THEN the rest loads and that event is quarantined, not lost
    report = handler({"hour": "2025-12-06T10"}, None)
    assert (report["state"], report["inserted"]) == ("complete", expected)
    assert report["quarantined"]["keys"] == [odd]
    with dw_engine.connect() as conn:
        reason = conn.execute(
            sa.text("SELECT reason_code, sqlstate FROM clickstream_quarantine WHERE s3_key = :k"),
            {"k": odd},
        ).one()
    assert tuple(reason) == ("rejected", "23514")
