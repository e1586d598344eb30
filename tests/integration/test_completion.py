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

from loader.app import open_loader
from loader.config import load_settings
from loader.demo import generate_hour
from loader.operations import check
from loader.pipeline import run_trigger
from loader.report import Report
from loader.window import Trigger, hour_prefix

ROOT = Path(__file__).resolve().parents[2]
T13 = datetime(2026, 11, 24, 13, tzinfo=UTC)
PREFIX13 = hour_prefix(T13)
#: The big object sorts after the five single-event objects, so they commit first.
BIG_KEY = f"{PREFIX13}event-ffffffff-0000-4000-8000-000000000000.json"
SINGLE_KEYS = [f"{PREFIX13}event-0000000{i}-0000-4000-8000-000000000000.json" for i in range(5)]


def tracker_events(count: int, *, seed: int) -> list[dict[str, Any]]:
    """Realistic events from the demo generator, each with an explicit, known event_id."""
    events = [json.loads(o.body) for o in generate_hour(T13, count, malformed_ratio=0, seed=seed)]
    for index, event in enumerate(events):
        event["event_id"] = str(uuid.UUID(int=(seed << 32) + index + 1))
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
    # GIVEN five single-event objects and one NDJSON object of 50 events (five slices of 10)
    for key, event in zip(SINGLE_KEYS, tracker_events(5, seed=1), strict=True):
        put_ndjson(s3, bucket, key, [event])
    big = tracker_events(50, seed=2)
    put_ndjson(s3, bucket, BIG_KEY, big)
    # AND a DBA's trigger refusing one event of the third slice, non-transiently
    refuse_one_event(dw_engine, big[25]["event_id"])
    # WHEN the scheduled run of 14:05 loads hour 13
    with pytest.raises(sa.exc.DBAPIError) as failure:
        scheduled_run(datetime(2026, 11, 24, 14, 5, tzinfo=UTC))
    # THEN it fails loudly, after the singles and the first two slices committed
    assert failure.value.orig.pgcode == "P0001"  # type: ignore[union-attr]
    assert count(dw_engine, "SELECT count(*) FROM clickstream_events") == 25
    assert count(dw_engine, "SELECT state = 'failed' FROM clickstream_load_runs")
    # AND `check` does not count the half-loaded object as loaded
    with open_loader(load_settings()) as loader:
        reconciled = check(loader, T13, T13)
    assert reconciled["unloaded_keys"] == [BIG_KEY]
    assert reconciled["hours"][0]["loaded"] == 5
    # WHEN the DBA drops the trigger and the next hourly run's lookback re-checks hour 13
    drop_refusal(dw_engine)
    report = scheduled_run(datetime(2026, 11, 24, 15, 5, tzinfo=UTC))
    # THEN it re-reads the big object (not "loaded" just because it has rows), completes the
    # hour, and every one of the 55 events is in both tables exactly once
    [lookback] = [h for h in report.lookback if h["hour"] == "2026-11-24T13"]
    assert lookback["state"] == "complete"
    assert lookback["objects_skipped_loaded"] == 5
    assert lookback["inserted"] == 30
    assert count(dw_engine, "SELECT count(*) FROM clickstream_events") == 55
    assert count(dw_engine, "SELECT count(*) FROM clickstream_ingest_meta") == 55
    assert (
        count(
            dw_engine, "SELECT count(*) FROM clickstream_ingest_meta WHERE s3_key = :k", k=BIG_KEY
        )
        == 50
    )
    with open_loader(load_settings()) as loader:
        assert check(loader, T13, T13)["unloaded_keys"] == []


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
