"""Fan-out, exactly once: a retried finalize, a late object in a fanned-out hour, and a full-hour
run racing the shards of the same hour.

The steps of the state machine are invoked through the real handler, in the order Step Functions
invokes them; a race is made deterministic by a DBA's lock that holds the first run mid-hour
while the second one tries the hour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import lambda_function
from loader.app import open_loader
from loader.config import load_settings
from loader.operations import status
from loader.pipeline.runs import run_trigger
from loader.report import Report
from loader.window import Shard, Trigger
from tools.demo.traffic import generate_hour, upload

ROOT = Path(__file__).resolve().parents[2]
HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
NEXT_HOUR = datetime(2026, 11, 24, 14, tzinfo=UTC)
LABEL = "2026-11-24T13"


class OutOfTimeOnceLoaded:
    """A Lambda context with time to spare until the warehouse holds events, then inside the
    safety margin: the run commits its first batch, stops, and reports partial."""

    aws_request_id = "test-out-of-time"

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def get_remaining_time_in_millis(self) -> int:
        return 1_000 if event_rows(self.engine)[0] else 600_000


@pytest.fixture
def handler(loader_env: dict[str, str]) -> Iterator[Any]:
    lambda_function._factory.close()
    yield lambda_function.lambda_handler
    lambda_function._factory.close()


def fan_out(handler: Any, schedule_time: str, count: int) -> tuple[str, list[dict[str, Any]]]:
    """PlanHour, then every LoadShard of the Map (one after another: the order is not the point)."""
    plan = handler({"action": "plan", "time": schedule_time, "shard_count": count}, None)
    return plan["hour"], [handler(item, None) for item in plan["shards"]]


def event_rows(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one(),
            conn.execute(sa.text("SELECT count(*) FROM clickstream_ingest_meta")).scalar_one(),
        )


def hour_status(hour: datetime) -> dict[str, Any]:
    with open_loader(load_settings()) as loader:
        entry: dict[str, Any] = status(loader, start=hour, end=hour)["hours"][0]
    return entry


def full_hour_rows(engine: sa.Engine, hour: datetime) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT run_id, trigger, state, inserted FROM clickstream_load_runs "
                    "WHERE hour = :h AND shard IS NULL ORDER BY started_at"
                ),
                {"h": hour},
            )
        )


def test_a_retried_finalize_records_the_hour_once(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_RECORDS_PER_BATCH", "2")
    # seed 3 puts 4, 6 and 2 of the 12 keys in range shards 0, 1 and 2
    upload(s3, bucket, generate_hour(HOUR, 12, malformed_ratio=0, seed=3))
    # GIVEN shard 0 loaded in two passes (the first ran out of time), the others in one
    first_pass = handler(
        {"hour": LABEL, "shard": {"index": 0, "count": 3, "by": "range"}},
        OutOfTimeOnceLoaded(dw_engine),
    )
    assert (first_pass["state"], first_pass["inserted"]) == ("partial", 2)
    hour, reports = fan_out(handler, "2026-11-24T14:05:00Z", 3)
    assert [r["state"] for r in reports] == ["complete"] * 3
    assert first_pass["inserted"] + sum(r["inserted"] for r in reports) == 12
    # WHEN finalize runs three times, as Step Functions' retries of FinalizeHour may invoke it
    finals = [handler({"action": "finalize", "hour": hour, "shard_count": 3}, None) for _ in "abc"]
    # THEN each reports the hour complete with its 12 events, and the ledger holds it once
    assert [(f["state"], f["inserted"]) for f in finals] == [("complete", 12)] * 3
    assert len({f["run_id"] for f in finals}) == 1
    rows = full_hour_rows(dw_engine, HOUR)
    assert [(r.state, r.inserted) for r in rows] == [("complete", 12)]
    entry = hour_status(HOUR)
    assert (entry["state"], entry["inserted"], entry["objects_listed"]) == ("complete", 12, 12)
    assert event_rows(dw_engine) == (12, 12)


def test_a_late_object_in_a_fanned_out_hour_is_loaded_by_the_next_scheduled_run(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    upload(s3, bucket, generate_hour(HOUR, 12, malformed_ratio=0))
    hour, _ = fan_out(handler, "2026-11-24T14:05:00Z", 3)
    handler({"action": "finalize", "hour": hour, "shard_count": 3}, None)
    # GIVEN an object that lands in hour 13 after its fan-out finished
    late_key = "events/2026/11/24/13/event-0b7d5f0e-3c1a-4e9b-8f2d-6a1c9e4b7d21.json"
    s3.put_object(
        Bucket=bucket, Key=late_key, Body=json.dumps({"event_name": "late_click"}).encode()
    )
    upload(s3, bucket, generate_hour(NEXT_HOUR, 6, malformed_ratio=0, seed=99))
    # WHEN the next scheduled execution fans out hour 14 and finalizes it
    next_hour, shard_reports = fan_out(handler, "2026-11-24T15:05:00Z", 3)
    final = handler({"action": "finalize", "hour": next_hour, "shard_count": 3}, None)
    # THEN the previous hour was looked back once (by finalize, not by each shard): late key in
    assert all(r["lookback"] == [] for r in shard_reports)
    assert [entry["hour"] for entry in final["lookback"]] == [LABEL]
    assert final["lookback"][0]["inserted"] == 1
    assert final["lookback"][0]["objects_new"] == 1
    with dw_engine.connect() as conn:
        names = conn.execute(
            sa.text(
                "SELECT e.event_name FROM clickstream_events e "
                "JOIN clickstream_ingest_meta m USING (event_id) WHERE m.s3_key = :k"
            ),
            {"k": late_key},
        ).scalars()
        assert list(names) == ["late_click"]
    assert hour_status(HOUR)["inserted"] == 13
    assert hour_status(NEXT_HOUR)["inserted"] == 6
    assert event_rows(dw_engine) == (19, 19)


# --- one lock rule for an hour: full-hour runs exclusive, shards shared ---------------------------


class DbaLock:
    """A DBA's ACCESS EXCLUSIVE lock on the events table, taken once the first batch landed: the
    run holding the hour then waits mid-hour (its lock_timeout is long) for as long as we like."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.conn: sa.Connection | None = None

    def take_after_first_batch(self, deadline_s: float = 60) -> None:
        deadline = time.monotonic() + deadline_s
        while event_rows(self.engine)[0] == 0:
            assert time.monotonic() < deadline, "the first run never committed a batch"
            time.sleep(0.05)
        self.conn = self.engine.connect()
        self.conn.execute(sa.text("LOCK TABLE clickstream_events IN ACCESS EXCLUSIVE MODE"))

    def release(self) -> None:
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None


def wait_until_running(engine: sa.Engine, shard: str | None, deadline_s: float = 60) -> None:
    """The ledger row a run writes once it holds the hour's lock(s)."""
    deadline = time.monotonic() + deadline_s
    while True:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text(
                    "SELECT count(*) FROM clickstream_load_runs WHERE hour = :h "
                    "AND state = 'running' AND shard IS NOT DISTINCT FROM :s"
                ),
                {"h": HOUR, "s": shard},
            ).scalar_one()
        if found:
            return
        assert time.monotonic() < deadline, f"no running ledger row for shard {shard}"
        time.sleep(0.05)


def assert_full_hour_runs_never_overlapped_a_shard(engine: sa.Engine) -> None:
    """Every run records started_at once it holds its locks and finished_at before releasing
    them: a manual full-hour run and a shard run of the hour must not overlap in time."""
    with engine.connect() as conn:
        rows = list(
            conn.execute(
                sa.text(
                    "SELECT shard, trigger, started_at, finished_at FROM clickstream_load_runs "
                    "WHERE hour = :h"
                ),
                {"h": HOUR},
            )
        )
    full = [r for r in rows if r.shard is None and r.trigger == "manual"]
    shards = [r for r in rows if r.shard is not None]
    assert full and shards
    for f in full:
        for s in shards:
            assert f.finished_at is not None and s.finished_at is not None
            assert f.finished_at <= s.started_at or s.finished_at <= f.started_at, (f, s)


def cli_run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loader", "run", "--hour", LABEL, "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def contender_env(loader_env: dict[str, str]) -> dict[str, str]:
    """A second run that gives up at once on the hour's lock, and (were it to get in anyway)
    gives up quickly on the DBA's table lock instead of waiting behind it."""
    return {
        **os.environ,
        **loader_env,
        "LOCK_WAIT_SECONDS": "0",
        "DW_PG_LOCK_TIMEOUT_MS": "300",
        "DB_RETRY_BUDGET_SECONDS": "1",
    }


@pytest.fixture
def racing_hour(
    loader_env: dict[str, str], s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> int:
    """An hour of many small batches, and runs that wait as long as the DBA holds the table."""
    monkeypatch.setenv("MAX_RECORDS_PER_BATCH", "10")
    monkeypatch.setenv("DW_PG_LOCK_TIMEOUT_MS", "60000")
    objects = upload(s3, bucket, generate_hour(HOUR, 90, malformed_ratio=0.02))
    return sum(1 for o in objects if o.expect == "event")


def test_shards_of_an_hour_a_full_hour_run_holds_report_already_running(
    racing_hour: int, loader_env: dict[str, str], dw_engine: sa.Engine, monkeypatch: Any
) -> None:
    expected = racing_hour
    holder_env = {**os.environ, **loader_env}
    dba = DbaLock(dw_engine)
    # GIVEN `run --hour` (a CLI process) holding the hour, stopped mid-hour by a DBA's lock
    holder = subprocess.Popen(
        [sys.executable, "-m", "loader", "run", "--hour", LABEL, "--json"],
        env=holder_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        dba.take_after_first_batch()
        # WHEN the fan-out of the same hour starts (each shard as the handler runs it)
        for name, value in contender_env(loader_env).items():
            monkeypatch.setenv(name, value)
        lambda_function._factory.close()
        try:
            contenders = [
                lambda_function.lambda_handler(
                    {"hour": LABEL, "shard": {"index": i, "count": 3}}, None
                )
                for i in range(3)
            ]
        finally:
            lambda_function._factory.close()
        # THEN every shard reports already_running and did nothing
        assert [c["state"] for c in contenders] == ["already_running"] * 3
        assert sum(c["inserted"] for c in contenders) == 0
    finally:
        dba.release()
        out, err = holder.communicate(timeout=120)
    assert holder.returncode == 0, err[-2000:]
    held = json.loads(out)
    assert (held["state"], held["inserted"]) == ("complete", expected)
    # AND once the full-hour run is done the shards run, insert nothing, and finalize agrees
    monkeypatch.setenv("LOCK_WAIT_SECONDS", "5")
    lambda_function._factory.close()
    try:
        shards = [
            lambda_function.lambda_handler({"hour": LABEL, "shard": {"index": i, "count": 3}}, None)
            for i in range(3)
        ]
        final = lambda_function.lambda_handler(
            {"action": "finalize", "hour": LABEL, "shard_count": 3}, None
        )
    finally:
        lambda_function._factory.close()
    assert [s["state"] for s in shards] == ["complete"] * 3
    assert sum(s["inserted"] for s in shards) == 0
    assert (final["state"], final["inserted"]) == ("complete", 0)
    assert event_rows(dw_engine) == (expected, expected)
    assert hour_status(HOUR)["inserted"] == expected
    assert_full_hour_runs_never_overlapped_a_shard(dw_engine)


def test_run_hour_reports_already_running_while_shards_of_the_hour_run_in_parallel(
    racing_hour: int, loader_env: dict[str, str], dw_engine: sa.Engine
) -> None:
    expected = racing_hour
    results: dict[int, Report | BaseException] = {}

    def shard(index: int) -> None:
        try:
            with open_loader(load_settings()) as loader:
                results[index] = run_trigger(loader, Trigger(HOUR, "manual", Shard(index, 3)))
        except BaseException as exc:
            results[index] = exc

    dba = DbaLock(dw_engine)
    threads = [threading.Thread(target=shard, args=(0,), daemon=True)]
    threads[0].start()
    try:
        # GIVEN shard 0 holding the hour, stopped mid-shard by a DBA's lock
        dba.take_after_first_batch()
        # AND shard 1 of the same hour getting in beside it: shards run in parallel
        threads.append(threading.Thread(target=shard, args=(1,), daemon=True))
        threads[1].start()
        wait_until_running(dw_engine, "1/3")
        # WHEN `run --hour` starts for the same hour
        contender = cli_run(contender_env(loader_env))
    finally:
        dba.release()
        for thread in threads:
            thread.join(timeout=120)
    # THEN it exits 3 (already_running) having done nothing
    assert contender.returncode == 3, contender.stderr[-2000:]
    assert json.loads(contender.stdout)["state"] == "already_running"
    assert all(isinstance(results[i], Report) for i in (0, 1)), results
    # AND the shards complete; with the last shard and finalize the hour is whole, once
    with open_loader(load_settings()) as loader:
        results[2] = run_trigger(loader, Trigger(HOUR, "manual", Shard(2, 3)))
    reports = [results[i] for i in range(3)]
    assert all(isinstance(r, Report) and r.state == "complete" for r in reports)
    assert sum(r.inserted for r in reports if isinstance(r, Report)) == expected
    lambda_function._factory.close()
    try:
        final = lambda_function.lambda_handler(
            {"action": "finalize", "hour": LABEL, "shard_count": 3}, None
        )
    finally:
        lambda_function._factory.close()
    assert (final["state"], final["inserted"]) == ("complete", expected)
    # AND `run --hour` now gets the hour and finds nothing to add
    again = cli_run({**os.environ, **loader_env})
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["inserted"] == 0
    assert event_rows(dw_engine) == (expected, expected)
    assert hour_status(HOUR)["inserted"] == expected
    assert_full_hour_runs_never_overlapped_a_shard(dw_engine)
