"""Range shards against a real S3 server (moto), every ListObjectsV2 request counted by the
fault proxy: each shard lists only its slice of the hour, the slices together are the hour, and
a fan-out planned before range shards (crc32, whole-hour listings) still finishes as planned."""

from __future__ import annotations

import math
import random
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from support.http_fault_proxy import LISTINGS, FaultProxy

import lambda_function
from loader.config import DatabaseSettings, Settings
from loader.extract.crt_client import CrtSource
from loader.pipeline.job import HourJob, JobKeys
from loader.pipeline.runs import HourNotFinalized
from loader.window import Shard, hour_prefix
from tools.demo.traffic import generate_hour, upload

HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
LABEL = "2026-11-24T13"
PREFIX = hour_prefix(HOUR)
PAGE = 50  # keys per ListObjectsV2 page in the listing test (the sources ask for 1,000)
ODD_NAMES = [
    "a b.json",  # sorts before "event-": the first shard's
    "EVENT-UPPER.json",
    "event-not-a-uuid.json",
    "event-FFFFFFFF-UPPER.json",  # uppercase hex sorts between '9' and 'a'
    "event-0.json",
    "foo.json",  # after the hex range: the last shard's
    "ünïcødé-事件.json",  # non-ASCII: after every ASCII boundary in UTF-8 byte order
    "emoji-🙂.json",
    "nested/deeper/key.json",
    "~tilde.json",
]


@pytest.fixture
def proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A fault proxy without faults: it forwards and logs every request the loader makes."""
    with FaultProxy(s3_endpoint) as running:
        monkeypatch.setenv("AWS_ENDPOINT_URL", running.url)
        yield running


def listings(proxy: FaultProxy, since: int = 0) -> list[dict[str, str]]:
    """The ListObjectsV2 requests logged since `since`, as their query parameters."""
    found = []
    for method, path, _ in proxy.log[since:]:
        if LISTINGS(method, path):
            query = parse_qs(urlsplit(path).query, keep_blank_values=True)
            found.append({name: values[0] for name, values in query.items()})
    return found


def put_keys(s3: Any, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=b"{}"), keys))


def uuid_keys(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"{PREFIX}event-{uuid.UUID(int=rng.getrandbits(128), version=4)}.json" for _ in range(count)
    ]


def expected_pages(shard: Shard, hour_keys: list[str]) -> int:
    """Pages up to and including the first key past the shard's range (or to the hour's end)."""
    after, _ = shard.bounds(PREFIX)
    reachable = sorted(k for k in hour_keys if after is None or k.encode() > after.encode())
    owned = sum(1 for k in reachable if shard.owns(k, PREFIX))
    return max(1, math.ceil(min(owned + 1, len(reachable)) / PAGE))


def test_each_range_shard_lists_only_its_range(
    loader_env: dict[str, str], s3: Any, bucket: str, proxy: FaultProxy
) -> None:
    # GIVEN an hour of 250 uuid keys and odd ones (6 pages of 50), and keys of the hours around
    hour_keys = uuid_keys(250, seed=14) + [PREFIX + name for name in ODD_NAMES]
    put_keys(
        s3, bucket, [*hour_keys, "events/2026/11/24/12/event-x.json", "events/2026/11/24/14/a"]
    )
    # AND the default source's own lister, with pages of 50 keys instead of 1,000 (a small hour,
    # many pages)
    lister = CrtSource(Settings(raw_bucket=bucket, db=DatabaseSettings()), page_size=PAGE)
    per_count: dict[tuple[str, int], list[int]] = {}
    for by, count in [("range", 1), ("range", 2), ("range", 4), ("range", 16), ("crc32", 4)]:
        selected: list[str] = []
        per_count[by, count] = []
        for index in range(count):
            shard = Shard(index, count, by)
            since = len(proxy.log)
            # WHEN the shard lists the hour as the hour job does (loader/pipeline/hour.py)
            keys = JobKeys(HourJob(HOUR, "manual", shard), set(), PREFIX)
            listed = lister.list_objects(PREFIX, start_after=keys.list_after(None))
            mine = [ref.key for ref in keys.select(listed, threading.Event())]
            requests = listings(proxy, since)
            # THEN it asked S3 for its range only: StartAfter at its start, no page past its end
            assert requests[0].get("start-after") == shard.bounds(PREFIX)[0], requests[0]
            assert all(r["prefix"] == PREFIX and r["max-keys"] == str(PAGE) for r in requests)
            assert len(requests) == (expected_pages(shard, hour_keys) if by == "range" else 6)
            assert all(shard.owns(key, PREFIX) for key in mine)
            per_count[by, count].append(len(requests))
            selected += mine
        # AND the shards of each count list every key of the hour exactly once
        assert sorted(selected) == sorted(hour_keys), (by, count)
    assert per_count["range", 1] == [6]
    assert sum(per_count["range", 2]) <= 6  # ~130 keys each: three pages each, not six
    assert max(per_count["range", 4]) <= 2 and per_count["range", 16] == [1] * 16
    assert per_count["crc32", 4] == [6] * 4  # what every shard paid before: the whole hour


def test_a_planned_fan_out_lists_each_range_once_and_loads_the_hour(
    loader_env: dict[str, str], s3: Any, bucket: str, proxy: FaultProxy, dw_engine: sa.Engine
) -> None:
    objects = upload(s3, bucket, generate_hour(HOUR, 120, malformed_ratio=0))
    put_keys(s3, bucket, [PREFIX + name for name in ODD_NAMES])
    lambda_function._factory.close()
    try:
        plan = lambda_function.lambda_handler(
            {"action": "plan", "time": "2026-11-24T14:05:00Z", "shard_count": 4}, None
        )
        reports = []
        for item in plan["shards"]:
            since = len(proxy.log)
            reports.append(lambda_function.lambda_handler(item, None))
            shard = Shard(item["shard"]["index"], 4, "range")
            # each shard: one listing request, starting after its range's start
            assert [r.get("start-after") for r in listings(proxy, since)] == [
                shard.bounds(PREFIX)[0]
            ]
        final = lambda_function.lambda_handler(
            {"action": "finalize", "hour": LABEL, "shard_count": 4}, None
        )
    finally:
        lambda_function._factory.close()
    total = len(objects) + len(ODD_NAMES)
    assert [r["shard"] for r in reports] == [f"{i}/4 range" for i in range(4)]
    assert all(r["state"] == "complete" for r in reports)
    assert sum(r["objects_listed"] for r in reports) == total
    assert (final["state"], final["objects_listed"]) == ("complete", total)
    with dw_engine.connect() as conn:
        loaded = conn.execute(sa.text("SELECT count(DISTINCT s3_key) FROM clickstream_ingest_meta"))
        # the odd keys hold `{}`: invalid events, quarantined, no rows
        assert loaded.scalar_one() == sum(1 for o in objects if o.expect == "event")


def test_a_fan_out_planned_before_range_shards_finishes_as_crc32(
    loader_env: dict[str, str], s3: Any, bucket: str, proxy: FaultProxy, dw_engine: sa.Engine
) -> None:
    """A deploy during a fan-out: the old plan's items name no scheme, so every shard of that
    execution, before and after the deploy, is a crc32 one, and its finalize succeeds. A set
    mixing the two kinds proves nothing and is refused, naming the shards still missing."""
    objects = upload(s3, bucket, generate_hour(HOUR, 60, malformed_ratio=0))
    events = sum(1 for o in objects if o.expect == "event")
    old_items = [{"hour": LABEL, "shard": {"index": i, "count": 3}} for i in range(3)]
    lambda_function._factory.close()
    try:
        # GIVEN two shards of the old plan done, each listing the whole hour
        for index, item in enumerate(old_items[:2]):
            since = len(proxy.log)
            assert lambda_function.lambda_handler(item, None)["shard"] == f"{index}/3"
            assert [r.get("start-after") for r in listings(proxy, since)] == [None]
        # AND range shard 2 of a new plan
        lambda_function.lambda_handler(
            {"hour": LABEL, "shard": Shard(2, 3, "range").as_payload()}, None
        )
        # THEN no set is complete: finalize names what the closest one lacks
        with pytest.raises(HourNotFinalized, match=r"shards \['2/3'\] have no complete run"):
            lambda_function.lambda_handler(
                {"action": "finalize", "hour": LABEL, "shard_count": 3}, None
            )
        # WHEN the old execution's last shard runs on the new code
        last = lambda_function.lambda_handler(old_items[2], None)
        final = lambda_function.lambda_handler(
            {"action": "finalize", "hour": LABEL, "shard_count": 3}, None
        )
    finally:
        lambda_function._factory.close()
    # THEN it is a crc32 shard too, and the hour is recorded complete from the crc32 set
    assert last["shard"] == "2/3"
    assert final["state"] == "complete"
    assert final["objects_listed"] == len(objects)  # the crc32 passes listed each key once
    assert final["inserted"] == events  # every event inserted once, by either kind
    with dw_engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one()
    assert stored == events
