"""Per-object completion: an object counts as loaded only once all of its events and its
quarantine rows are committed, and COPY and INSERT write the same row.

Every failure is real and lands in this test's own database: a DBA's trigger that refuses one
event with a plain `RAISE EXCEPTION` (SQLSTATE P0001, not a data error: the run fails), a column
a DBA adds with a default. Nothing is patched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from conftest import alembic_config, db_settings

from loader.app import open_loader
from loader.config import load_settings
from loader.operations import check, reprocess, status
from loader.pipeline.job import HourJob
from loader.pipeline.runs import run_trigger
from loader.report import Report
from loader.window import Trigger, hour_prefix
from tools.demo.traffic import generate_hour

ROOT = Path(__file__).resolve().parents[2]
T13 = datetime(2026, 11, 24, 13, tzinfo=UTC)
PREFIX13 = hour_prefix(T13)
#: The big object sorts after the five single-event objects, so they commit first.
BIG_KEY = f"{PREFIX13}event-ffffffff-0000-4000-8000-000000000000.json"
SINGLE_KEYS = [f"{PREFIX13}event-0000000{i}-0000-4000-8000-000000000000.json" for i in range(5)]


def tracker_events(count: int, *, seed: int) -> list[dict[str, Any]]:
    """Realistic events from the demo generator, each with an explicit, known eventId."""
    events = [json.loads(o.body) for o in generate_hour(T13, count, malformed_ratio=0, seed=seed)]
    for index, event in enumerate(events):
        event["eventId"] = str(uuid.UUID(int=(seed << 32) + index + 1))
    return events


def put_ndjson(s3: Any, bucket: str, key: str, events: list[dict[str, Any]]) -> None:
    body = "\n".join(json.dumps(e, ensure_ascii=False) for e in events)
    s3.put_object(Bucket=bucket, Key=key, Body=body.encode())


def count(engine: sa.Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())


def refuse_one_event(engine: sa.Engine, event_id: str) -> None:
    """A DBA's trigger that refuses one event with RAISE EXCEPTION: SQLSTATE P0001
    (raise_exception), which is not a data error, so the loader fails the run."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """
                CREATE FUNCTION test_refuse_one_event() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.event_id = '"""
                + str(uuid.UUID(event_id))
                + """'::uuid THEN
                        RAISE EXCEPTION 'embargoed client' USING ERRCODE = 'P0001';
                    END IF;
                    RETURN NEW;
                END $$
                """
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER test_refuse_one_event BEFORE INSERT ON clickstream_events "
                "FOR EACH ROW EXECUTE FUNCTION test_refuse_one_event()"
            )
        )


def drop_refusal(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER test_refuse_one_event ON clickstream_events"))
        conn.execute(sa.text("DROP FUNCTION test_refuse_one_event()"))


def scheduled_run(fired_at: datetime) -> Report:
    """What EventBridge's hourly invocation does: the previous hour, then the lookback."""
    with open_loader(load_settings()) as loader:
        return run_trigger(
            loader, Trigger(fired_at.replace(minute=0) - timedelta(hours=1), "schedule")
        )


def fail_the_hour_mid_object(s3: Any, bucket: str, dw_engine: sa.Engine) -> None:
    """Five single-event objects and one NDJSON object of 50 events (five slices of 10), a
    DBA's trigger refusing one event of the third slice: the scheduled run of 14:05 fails after
    the singles and two slices committed. Then the DBA drops the trigger."""
    for key, event in zip(SINGLE_KEYS, tracker_events(5, seed=1), strict=True):
        put_ndjson(s3, bucket, key, [event])
    big = tracker_events(50, seed=2)
    put_ndjson(s3, bucket, BIG_KEY, big)
    refuse_one_event(dw_engine, big[25]["eventId"])
    with pytest.raises(sa.exc.DBAPIError) as failure:
        scheduled_run(datetime(2026, 11, 24, 14, 5, tzinfo=UTC))
    assert failure.value.orig.pgcode == "P0001"  # type: ignore[union-attr]
    assert count(dw_engine, "SELECT count(*) FROM clickstream_events") == 25
    assert count(dw_engine, "SELECT count(*) FROM clickstream_load_runs WHERE state = 'failed'")
    drop_refusal(dw_engine)


def assert_all_55_loaded_once(dw_engine: sa.Engine) -> None:
    assert count(dw_engine, "SELECT count(*) FROM clickstream_events") == 55
    assert count(dw_engine, "SELECT count(*) FROM clickstream_ingest_meta") == 55
    with dw_engine.connect() as conn:
        big = (
            conn.execute(
                sa.text("SELECT * FROM clickstream_loaded_objects WHERE s3_key = :k"),
                {"k": BIG_KEY},
            )
            .mappings()
            .one()
        )
    assert (big["events"], big["meta_rows"], big["quarantined"]) == (50, 50, 0)
    with open_loader(load_settings()) as loader:
        assert check(loader, T13, T13)["unloaded_keys"] == []


@pytest.mark.parametrize("write_method", ["copy", "insert"])
def test_a_run_failing_between_the_slices_of_an_object_leaves_it_to_the_next_lookback(
    write_method: str,
    loader_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAX_RECORDS_PER_BATCH", "10")
    monkeypatch.setenv("WRITE_METHOD", write_method)
    # GIVEN the scheduled run failed non-transiently on the third slice of a 50-event object
    fail_the_hour_mid_object(s3, bucket, dw_engine)
    # THEN `check` and `status` do not count the half-loaded object as loaded
    with open_loader(load_settings()) as loader:
        reconciled = check(loader, T13, T13)
        [hour] = status(loader, start=T13, end=T13)["hours"]
    assert reconciled["unloaded_keys"] == [BIG_KEY]
    assert (reconciled["hours"][0]["loaded"], reconciled["hours"][0]["unloaded"]) == (5, 1)
    assert (hour["state"], hour["objects_loaded"]) == ("failed", 5)
    # WHEN the next hourly run's lookback re-checks hour 13
    report = scheduled_run(datetime(2026, 11, 24, 15, 5, tzinfo=UTC))
    # THEN it re-reads the big object (not "loaded" just because it has rows), completes the
    # hour, and every one of the 55 events is in both tables exactly once
    [lookback] = [h for h in report.lookback if h["hour"] == "2026-11-24T13"]
    assert lookback["state"] == "complete"
    assert lookback["objects_skipped_loaded"] == 5
    assert lookback["inserted"] == 30
    assert_all_55_loaded_once(dw_engine)
    with open_loader(load_settings()) as loader:
        [hour] = status(loader, start=T13, end=T13)["hours"]
    assert (hour["state"], hour["objects_loaded"], hour["inserted"]) == ("complete", 6, 55)


@pytest.mark.parametrize("by", ["hour", "key"])
def test_reprocess_completes_an_object_a_failed_run_left_part_way(
    by: str,
    loader_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAX_RECORDS_PER_BATCH", "10")
    fail_the_hour_mid_object(s3, bucket, dw_engine)
    # WHEN an operator reprocesses the hour (or the key) instead of waiting for the lookback
    with open_loader(load_settings()) as loader:
        if by == "hour":
            [report] = reprocess(loader, hour=T13)
        else:
            [report] = reprocess(loader, key=BIG_KEY)
        # a key that is loaded in full is left alone
        assert reprocess(loader, key=SINGLE_KEYS[0]) == []
    # THEN only the part-way object is read again, and the rest of it loads
    assert (report.trigger, report.objects_listed, report.inserted) == ("reprocess", 1, 30)
    assert report.duplicate_exact == 20
    assert_all_55_loaded_once(dw_engine)


def test_a_rerun_rewrites_no_completion_record_and_reprocess_refreshes_one(
    loader_env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    good = f"{PREFIX13}event-20000000-0000-4000-8000-000000000000.json"
    broken = f"{PREFIX13}event-30000000-0000-4000-8000-000000000000.json"
    put_ndjson(s3, bucket, good, tracker_events(3, seed=4))
    s3.put_object(Bucket=bucket, Key=broken, Body=b"{oops")
    completion = "SELECT s3_key, xmin::text AS xmin, * FROM clickstream_loaded_objects"
    with open_loader(load_settings()) as loader:
        first = loader.load(HourJob(T13, "manual"))
        with dw_engine.connect() as conn:
            before = {r["s3_key"]: dict(r) for r in conn.execute(sa.text(completion)).mappings()}
        # WHEN the hour is run again THEN no completion record is written again
        loader.load(HourJob(T13, "manual"))
        with dw_engine.connect() as conn:
            after = {r["s3_key"]: dict(r) for r in conn.execute(sa.text(completion)).mappings()}
        assert after == before
        assert (before[good]["events"], before[good]["quarantined"]) == (3, 0)
        assert (before[broken]["events"], before[broken]["quarantined"]) == (0, 1)
        assert str(before[broken]["run_id"]) == first.run_id
        # WHEN the broken object is fixed in S3 and reprocessed THEN its record says so
        put_ndjson(s3, bucket, broken, tracker_events(2, seed=5))
        [again] = reprocess(loader)
    with dw_engine.connect() as conn:
        fixed = (
            conn.execute(
                sa.text("SELECT * FROM clickstream_loaded_objects WHERE s3_key = :k"), {"k": broken}
            )
            .mappings()
            .one()
        )
    assert (fixed["events"], fixed["meta_rows"], fixed["quarantined"]) == (2, 2, 0)
    assert str(fixed["run_id"]) == again.run_id


def _load_in_subprocess_with_a_model_column(write_method: str) -> dict[str, Any]:
    """`clickstream-loader run` in a fresh process whose model (loader/schema.py) declares the
    DBA's new column before anything imports it: what the loader looks like once a revision
    adding `source text NOT NULL DEFAULT 'tracker'` and its model change have shipped."""
    code = (
        "import sqlalchemy as sa\n"
        "from loader import schema\n"
        "schema.clickstream_events.append_column(sa.Column('source', sa.Text, nullable=False,"
        " server_default=sa.text(\"'tracker'\"), comment='Which client sent the event.'))\n"
        "from loader.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "WRITE_METHOD": write_method}
    result = subprocess.run(
        [sys.executable, "-c", code, "run", "--hour", "2026-11-24T13", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_copy_and_insert_write_the_same_row_when_a_dba_adds_a_not_null_default_column(
    loader_env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN a DBA's migration adding a NOT NULL column with a default the transform never sets
    with dw_engine.begin() as conn:
        conn.execute(
            sa.text(
                "ALTER TABLE clickstream_events ADD COLUMN source text NOT NULL DEFAULT 'tracker'"
            )
        )
    events = tracker_events(6, seed=3)
    put_ndjson(s3, bucket, f"{PREFIX13}event-10000000-0000-4000-8000-000000000000.json", events)
    stored: dict[str, list[dict[str, Any]]] = {}
    for write_method in ("copy", "insert"):
        # WHEN the hour loads through each write method (from an empty warehouse each time)
        report = _load_in_subprocess_with_a_model_column(write_method)
        # THEN nothing is quarantined: every event loads, with the column's default
        assert report["state"] == "complete", report
        assert (report["inserted"], report["quarantined"]["count"]) == (6, 0), report
        with dw_engine.connect() as conn:
            stored[write_method] = [
                dict(r)
                for r in conn.execute(
                    sa.text("SELECT * FROM clickstream_events ORDER BY event_id")
                ).mappings()
            ]
        with dw_engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE clickstream_events CASCADE"))
            conn.execute(sa.text("TRUNCATE clickstream_load_runs, clickstream_quarantine"))
    # AND both methods stored the very same rows (loaded_at aside)
    for rows in stored.values():
        assert [r["source"] for r in rows] == ["tracker"] * 6
        for r in rows:
            r.pop("loaded_at")
    assert stored["copy"] == stored["insert"]


# --- revision 0003's backfill -----------------------------------------------------------------

H = datetime(2026, 11, 24, 0, tzinfo=UTC)


def at(hour: int, minute: int = 0) -> datetime:
    return H + timedelta(hours=hour, minutes=minute)


def _run(
    conn: sa.Connection,
    hour: int,
    trigger: str,
    state: str,
    started: datetime,
    finished: datetime | None,
    shard: str | None = None,
) -> uuid.UUID:
    run_id = uuid.uuid4()
    conn.execute(
        sa.text(
            "INSERT INTO clickstream_load_runs (run_id, hour, trigger, shard, started_at, "
            "finished_at, state, loader_version) "
            "VALUES (:id, :hour, :trigger, :shard, :started, :finished, :state, 'test')"
        ),
        {
            "id": run_id,
            "hour": at(hour),
            "trigger": trigger,
            "shard": shard,
            "started": started,
            "finished": finished,
            "state": state,
        },
    )
    return run_id


def _rows(conn: sa.Connection, key: str, count: int, loaded_at: datetime) -> None:
    for _ in range(count):
        event_id = uuid.uuid4()
        conn.execute(
            sa.text(
                "INSERT INTO clickstream_events (event_id, event_name, event_timestamp, loaded_at) "
                "VALUES (:id, 'page_view', :at, :at)"
            ),
            {"id": event_id, "at": loaded_at},
        )
        conn.execute(
            sa.text(
                "INSERT INTO clickstream_ingest_meta (event_id, s3_bucket, s3_key, "
                "s3_last_modified, loaded_at) VALUES (:id, 'raw', :key, :at, :at)"
            ),
            {"id": event_id, "key": key, "at": loaded_at},
        )


def _quarantined(conn: sa.Connection, key: str, hour: int, first_seen: datetime) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO clickstream_quarantine (s3_bucket, s3_key, position, hour, reason_code, "
            "first_seen_at, last_seen_at) VALUES ('raw', :key, 0, :hour, 'malformed', :at, :at)"
        ),
        {"key": key, "hour": at(hour), "at": first_seen},
    )


def test_revision_0003_backfills_exactly_the_objects_the_ledger_proves_complete(
    postgresql: Any,
) -> None:
    engine = sa.create_engine(db_settings(postgresql.info).url(), poolclass=sa.NullPool)
    key = "events/2026/11/24/{:02d}/event-{}.json".format
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0002_load_ledger")
        with engine.begin() as conn:
            # 13: a scheduled run completed the hour; a lookback later loaded a late object
            r13 = _run(conn, 13, "schedule", "complete", at(14, 5), at(14, 10))
            _run(conn, 13, "lookback", "complete", at(15, 5), at(15, 7))
            _rows(conn, key(13, "a"), 3, at(14, 6))
            _quarantined(conn, key(13, "b"), 13, at(14, 7))
            _rows(conn, "other-prefix/2026/11/24/13/event-d.json", 1, at(14, 8))
            _rows(conn, key(13, "late"), 1, at(15, 6))
            # 14: the run failed mid-object; only a lookback (which skipped keys) completed it
            _run(conn, 14, "schedule", "failed", at(15, 5), at(15, 6))
            _run(conn, 14, "lookback", "complete", at(16, 5), at(16, 6))
            _rows(conn, key(14, "half"), 2, at(15, 5))
            # 15: completed only by a run resumed after a partial one (listed half the hour)
            _run(conn, 15, "schedule", "partial", at(16, 5), at(16, 20))
            _run(conn, 15, "manual", "complete", at(16, 30), at(16, 40))
            _rows(conn, key(15, "c"), 1, at(16, 10))
            # 16: partial, failed, then a run that listed the whole hour again and completed it
            _run(conn, 16, "schedule", "partial", at(17, 5), at(17, 20))
            _run(conn, 16, "manual", "failed", at(17, 25), at(17, 26))
            r16 = _run(conn, 16, "manual", "complete", at(17, 30), at(17, 40))
            _rows(conn, key(16, "e"), 1, at(17, 10))
            # 17: only shards (no finalize row yet) and a reprocess
            _run(conn, 17, "manual", "complete", at(18, 5), at(18, 6), shard="0/2")
            _run(conn, 17, "reprocess", "complete", at(18, 7), at(18, 8))
            _rows(conn, key(17, "f"), 1, at(18, 5))
        # WHEN the DBA upgrades
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0004_object_completion")
        with engine.connect() as conn:
            recorded = {
                r["s3_key"]: r
                for r in conn.execute(
                    sa.text("SELECT * FROM clickstream_loaded_objects")
                ).mappings()
            }
    finally:
        engine.dispose()
    # THEN exactly the objects a whole-hour complete run covered are recorded, with its id
    assert set(recorded) == {
        key(13, "a"),
        key(13, "b"),
        "other-prefix/2026/11/24/13/event-d.json",
        key(16, "e"),
    }
    a = recorded[key(13, "a")]
    assert (a["hour"], a["s3_bucket"], a["events"], a["meta_rows"], a["quarantined"]) == (
        at(13),
        "raw",
        3,
        3,
        0,
    )
    assert (a["run_id"], a["completed_at"], a["s3_last_modified"]) == (r13, at(14, 10), at(14, 6))
    b = recorded[key(13, "b")]
    assert (b["events"], b["meta_rows"], b["quarantined"], b["s3_last_modified"]) == (0, 0, 1, None)
    assert (recorded[key(16, "e")]["run_id"], recorded[key(16, "e")]["hour"]) == (r16, at(16))
