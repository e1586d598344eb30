"""The boto3 path's GETs against a naive 32-thread boto3 loop, client pinned to one core.

    .venv/bin/python bench/boto3_path.py [--objects 5000] [--repeats 3]

Why: S3_CLIENT=boto3 (and `auto` without awscrt) must at least keep up with the loop anyone
writes first: `ThreadPoolExecutor(32).map(s3.get_object)`. This isolates the fetch: the same
refs, the same s3rver (on the other core), interleaved runs, median CPU and wall per GET.
Cases: the naive loop, and `Boto3Source` as shipped (stock `get_object` on FETCH_CONCURRENCY=32
threads, botocore's retries and checksum validation, in listing order).
Writes bench/results/boto3_path.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("AWS_ACCESS_KEY_ID", "S3RVER")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "S3RVER")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("BOTO_DISABLE_CRT", "true")
os.environ.pop("AWS_PROFILE", None)
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from s3_client_cost import upload  # noqa: E402  (bench/s3_client_cost.py)
from servers import ensure_s3rver, s3rver  # noqa: E402

from loader.config import DatabaseSettings, Settings  # noqa: E402
from loader.extract.boto3_client import Boto3Source  # noqa: E402


def _measure(run: Callable[[], int]) -> tuple[float, float, int]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    items = run()
    return time.process_time() - cpu0, time.perf_counter() - wall0, items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not ensure_s3rver():
        raise SystemExit("s3rver needs node and npm")
    cores = sorted(os.sched_getaffinity(0))
    with s3rver(cores[-1] if len(cores) > 1 else None) as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        bucket = "bench-boto3-path"
        upload(endpoint, bucket, args.objects, 850)
        os.sched_setaffinity(0, {cores[0]})
        settings = Settings(raw_bucket=bucket, db=DatabaseSettings())
        shipped = Boto3Source(settings)
        refs = list(shipped.list_objects("events/"))
        naive_client = boto3.client("s3", config=Config(max_pool_connections=32))
        pool = ThreadPoolExecutor(32)

        def naive() -> int:
            def get(key: str) -> bytes:
                return naive_client.get_object(Bucket=bucket, Key=key)["Body"].read()

            return sum(1 for _ in pool.map(get, [r.key for r in refs]))

        cases = {
            "naive: ThreadPoolExecutor(32) get_object": naive,
            "Boto3Source (shipped)": lambda: sum(
                1 for f in shipped.fetch_many(refs) if f.body is not None
            ),
        }
        for run in cases.values():
            run()  # warm-up
        samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, run in cases.items():
                samples[name].append(_measure(run))
        shipped.close()
        pool.shutdown()
    rows: list[dict[str, Any]] = []
    for name, runs in samples.items():
        items = runs[0][2]
        rows.append(
            {
                "case": name,
                "gets": items,
                "gets_per_s": round(statistics.median(items / r[1] for r in runs)),
                "cpu_ms_per_get": round(statistics.median(1000 * r[0] / items for r in runs), 3),
                "runs": [(round(r[0], 3), round(r[1], 3)) for r in runs],
            }
        )
    doc = {
        "command": "bench/boto3_path.py " + " ".join(sys.argv[1:]),
        "objects": args.objects,
        "repeats": args.repeats,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rows": rows,
    }
    (ROOT / "bench" / "results" / "boto3_path.json").write_text(json.dumps(doc, indent=2) + "\n")
    for row in rows:
        print(f"{row['case']:45s} {row['gets_per_s']:6,} GET/s  {row['cpu_ms_per_get']:.3f} ms CPU")


if __name__ == "__main__":
    main()
