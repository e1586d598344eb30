"""Fan-out: shards of one hour cover every key exactly once, and concurrent shard invocations
(the Step Functions Map, simulated with one process per shard like separate Lambda containers)
load exactly the rows a single run loads."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import lambda_function
from loader.pipeline.job import in_shard
from loader.pipeline.runs import HourNotFinalized
from loader.window import Shard
from tools.demo.traffic import generate_hour, upload

ROOT = Path(__file__).resolve().parents[2]
HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
PREFIX = "events/2026/11/24/13/"
ODD_NAMES = [
    "a b.json",
    "ünïcødé-事件.json",
    "plus+sign.json",
    "percent%20.json",
    "amp&er.json",
    "dots..json",
    "no-extension",
    "UPPER.JSON",
    "x" * 200,
    "nested/deeper/key.json",
    "event-not-a-uuid.json",
    "tab\tname.json",
    "quote'\"name.json",
    "emoji-🙂.json",
]


@pytest.mark.parametrize("by", ["range", "crc32"])
@pytest.mark.parametrize("count", [1, 2, 3, 8, 16])
def test_shards_partition_any_key_set_exactly(count: int, by: str) -> None:
    keys = [PREFIX + name for name in ODD_NAMES]
    keys += [obj.key for obj in generate_hour(HOUR, 500, malformed_ratio=0)]
    owners = {
        key: [i for i in range(count) if in_shard(key, Shard(i, count, by), PREFIX)] for key in keys
    }
    assert all(len(shards) == 1 for shards in owners.values())
    if count > 1:  # and the split is not degenerate
        sizes = [sum(1 for s in owners.values() if s == [i]) for i in range(count)]
        assert min(sizes) > 0


def invoke_in_process(event: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """The handler in a fresh Python process: its own engine and clients, like a container."""
    code = (
        "import json, sys, lambda_function; "
        "print(json.dumps(lambda_function.lambda_handler(json.loads(sys.argv[1]), None)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(event)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def stored(engine: sa.Engine) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        return {
            (str(row.event_id), row.s3_key)
            for row in conn.execute(
                sa.text(
                    "SELECT e.event_id, m.s3_key FROM clickstream_events e "
                    "JOIN clickstream_ingest_meta m USING (event_id)"
                )
            )
        }


def test_concurrent_shard_invocations_equal_a_single_run(
    loader_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
) -> None:
    import os

    objects = upload(s3, bucket, generate_hour(HOUR, 160, malformed_ratio=0.02))
    for name in ODD_NAMES:
        s3.put_object(
            Bucket=bucket,
            Key=PREFIX + name,
            Body=json.dumps({"event_name": "odd", "pageUrl": name}).encode(),
        )
    expected = sum(1 for o in objects if o.expect == "event") + len(ODD_NAMES)
    env = {**os.environ, **loader_env, "MAX_RECORDS_PER_BATCH": "20"}

    # GIVEN the plan the state machine's first step gets for the 14:05Z schedule
    lambda_function._factory.close()
    plan = lambda_function.lambda_handler(
        {"action": "plan", "time": "2026-11-24T14:05:00Z", "shard_count": 4}, None
    )
    assert plan["hour"] == "2026-11-24T13" and len(plan["shards"]) == 4
    # WHEN every shard runs at once, each in its own process (the Map)
    with ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda item: invoke_in_process(item, env), plan["shards"]))
    # THEN together they listed each key once and loaded each event once
    assert sorted(r["shard"] for r in reports) == [
        "0/4 range",
        "1/4 range",
        "2/4 range",
        "3/4 range",
    ]
    assert all(r["state"] == "complete" for r in reports)
    assert sum(r["objects_listed"] for r in reports) == len(objects) + len(ODD_NAMES)
    assert sum(r["inserted"] for r in reports) == expected
    fanned_out = stored(dw_engine)
    assert len(fanned_out) == expected
    # AND the final step records the hour complete in the ledger
    try:
        final = lambda_function.lambda_handler(
            {"action": "finalize", "hour": plan["hour"], "shard_count": 4}, None
        )
    finally:
        lambda_function._factory.close()
    assert final["state"] == "complete" and final["inserted"] == expected
    with dw_engine.connect() as conn:
        full_hour = conn.execute(
            sa.text(
                "SELECT state, inserted FROM clickstream_load_runs "
                "WHERE shard IS NULL AND hour = :h"
            ),
            {"h": HOUR},
        ).one()
    assert tuple(full_hour) == ("complete", expected)

    # AND a single unsharded run over an emptied warehouse stores exactly the same rows
    with dw_engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM clickstream_events"))
    single = invoke_in_process({"hour": "2026-11-24T13"}, env)
    assert single["inserted"] == expected
    assert stored(dw_engine) == fanned_out


def test_finalize_refuses_an_hour_with_a_missing_shard(
    loader_env: dict[str, str],
    s3: Any,
    bucket: str,
) -> None:
    upload(s3, bucket, generate_hour(HOUR, 20, malformed_ratio=0))
    lambda_function._factory.close()
    try:
        lambda_function.lambda_handler(
            {"hour": "2026-11-24T13", "shard": {"index": 0, "count": 2}}, None
        )
        with pytest.raises(HourNotFinalized, match=r"shards \['1/2'\]"):
            lambda_function.lambda_handler(
                {"action": "finalize", "hour": "2026-11-24T13", "shard_count": 2}, None
            )
    finally:
        lambda_function._factory.close()
