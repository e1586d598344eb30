"""ListObjectsV2 requests and listing CPU per shard: range shards against crc32 ones, on s3rver.

    .venv/bin/python bench/shard_listing.py [--keys 20000] [--counts 1,4,16]

Starts s3rver (indexed listing, `bench/s3rver_fastlist.js`; binary search for start-after, as S3
serves it), writes an hour of `--keys` uuid keys straight into its store, then lists the hour
once per shard for every shard count and both schemes, exactly as the hour job does
(`JobKeys.list_after` → `list_objects` → `JobKeys.select`; no GETs), with the lister `CrtSource`
uses (`S3Lister`: one request per page; boto3's paginator asks for the same pages). Requests are
counted at the lister's page fetcher, every attempt included (s3rver's log lines proved too
unreliable to attribute to one shard on a loaded machine); CPU is `time.process_time()` of this
process while a shard lists. Prints a markdown table and writes
bench/results/shard_listing.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "shard_listing.json"

os.environ.setdefault("AWS_ACCESS_KEY_ID", "S3RVER")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "S3RVER")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("BOTO_DISABLE_CRT", "true")
os.environ.pop("AWS_PROFILE", None)
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from servers import ensure_s3rver, s3rver_server, write_objects  # noqa: E402  (bench/servers.py)

from loader.config import DatabaseSettings, Settings  # noqa: E402
from loader.extract.crt_client import CrtSource  # noqa: E402
from loader.extract.listing import S3Lister  # noqa: E402
from loader.pipeline.job import HourJob, JobKeys  # noqa: E402
from loader.window import Shard, hour_prefix  # noqa: E402

HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
PREFIX = hour_prefix(HOUR)


def hour_keys(count: int, seed: int = 14) -> list[str]:
    rng = random.Random(seed)
    return [
        f"{PREFIX}event-{uuid.UUID(int=rng.getrandbits(128), version=4)}.json" for _ in range(count)
    ]


class CountingLister:
    """The sources' lister, counting the page requests it makes."""

    def __init__(self, lister: S3Lister) -> None:
        self.requests = 0
        fetch = lister.fetch

        def counted(path_and_query: str) -> bytes:
            self.requests += 1
            return fetch(path_and_query)

        self.lister = dataclasses.replace(lister, fetch=counted)


def list_shard(lister: S3Lister, shard: Shard) -> int:
    """The hour job's listing of one shard (loader/pipeline/hour.py `_produce`), without GETs."""
    keys = JobKeys(HourJob(HOUR, "manual", shard), set(), PREFIX)
    listed = lister.list_objects(PREFIX, start_after=keys.list_after(None))
    return sum(1 for _ in keys.select(listed, threading.Event()))


def measure(counting: CountingLister, shard: Shard) -> dict[str, Any]:
    before = counting.requests
    cpu, wall = time.process_time(), time.perf_counter()
    selected = list_shard(counting.lister, shard)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"keys": selected, "lists": counting.requests - before, "cpu_s": cpu, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--counts", default="1,4,16", help="range shard counts")
    parser.add_argument(
        "--crc32-counts",
        default="4",
        help="crc32 shard counts (each of their shards lists the whole hour: slow to measure)",
    )
    args = parser.parse_args()
    plan = [("range", int(c)) for c in args.counts.split(",")]
    plan += [("crc32", int(c)) for c in args.crc32_counts.split(",") if c]
    if not ensure_s3rver():
        sys.exit("s3rver is not available (npm and node are needed)")
    keys = hour_keys(args.keys)
    rows: list[dict[str, Any]] = []
    with s3rver_server(fast_listing=True) as server:
        os.environ["AWS_ENDPOINT_URL"] = server.endpoint
        bucket = "bench-shard-listing"
        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=bucket)
        write_objects(server.data_dir, bucket, ((key, b"{}", None) for key in keys))
        source = CrtSource(Settings(raw_bucket=bucket, db=DatabaseSettings()))
        counting = CountingLister(source.lister)
        list_shard(counting.lister, Shard(0, 1))  # warm-up: connections, imports
        for by, count in plan:
            shards = [measure(counting, Shard(i, count, by)) for i in range(count)]
            assert sum(s["keys"] for s in shards) == len(keys), (by, count)
            rows.append({"client": "CRT lister", "by": by, "count": count, "shards": shards})
            print(f"{by} {count}: done", file=sys.stderr)

    print(f"{args.keys:,} keys, s3rver (indexed listing), {platform.node()}\n")
    print(
        "| shards | by | LIST requests per shard (min–max) | all shards "
        "| keys per shard (min–max) | listing CPU ms per shard (median) | all shards CPU ms |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        shards = row["shards"]
        lists = [s["lists"] for s in shards]
        sizes = [s["keys"] for s in shards]
        cpu = sorted(s["cpu_s"] * 1000 for s in shards)
        print(
            f"| {row['count']} | {row['by']} | {min(lists)}–{max(lists)} | "
            f"{sum(lists)} | {min(sizes):,}–{max(sizes):,} | {cpu[len(cpu) // 2]:.0f} | "
            f"{sum(cpu):.0f} |"
        )
    RESULTS.write_text(
        json.dumps(
            {"keys": args.keys, "measured_at": datetime.now(UTC).isoformat(), "rows": rows},
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
