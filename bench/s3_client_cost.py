"""Client CPU per S3 GET and per 1,000 listed keys: boto3 vs the CRT path, on s3rver.

    .venv/bin/python bench/s3_client_cost.py [--objects 5000] [--repeats 5]

Starts s3rver (npm; installed under bench/.work/ on first use, run with node's --openssl-legacy-
provider so listings past 1,000 keys work), uploads N objects of ~850 B, then fetches them all
through the loader's real sources (`Boto3Source`, `CrtSource`) and lists them through each:
boto3's paginator, and the CRT client's lean ListObjectsV2 (`loader.extract.listing`). This
process is pinned to one core (like a 1-vCPU Lambda) and s3rver to the other, so
`time.process_time()` - every thread of this process, the CRT's event loops included - is the
client's own CPU. Each number is the median of --repeats runs after a warm-up. Prints a markdown
table and writes bench/results/s3_client_cost.json. Falls back to moto (numbers then only
comparable as ratios) when s3rver cannot be installed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "s3_client_cost.json"

os.environ.setdefault("AWS_ACCESS_KEY_ID", "S3RVER")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "S3RVER")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("BOTO_DISABLE_CRT", "true")  # boto3 with its own signer, as measured
os.environ.pop("AWS_PROFILE", None)
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from servers import ensure_s3rver, s3rver  # noqa: E402  (bench/servers.py)

from loader.common import ObjectRef  # noqa: E402
from loader.config import DatabaseSettings, Settings  # noqa: E402
from loader.extract.boto3_client import Boto3Source  # noqa: E402
from loader.extract.crt_client import CrtSource  # noqa: E402

CLIENT_CPU = 0
SERVER_CPU = 1


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


@contextmanager
def moto_server() -> Iterator[str]:
    from tools.servers import moto_s3_server

    with moto_s3_server() as endpoint:
        yield endpoint


def upload(endpoint: str, bucket: str, count: int, size: int) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)

    def put(i: int) -> None:
        head = b'{"event_id": "%08d", "type": "page_view", "pad": "' % i
        body = head + b"x" * max(0, size - len(head) - 2) + b'"}'
        s3.put_object(Bucket=bucket, Key=f"events/2024/05/01/10/{i:07d}.json", Body=body)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(count)))


def measure(run: Callable[[], int]) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, items) of one run, from the same collected-heap state."""
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    items = run()
    return time.process_time() - cpu0, time.perf_counter() - wall0, items


def fetch_all(source: Any, refs: list[ObjectRef]) -> Callable[[], int]:
    def run() -> int:
        n = 0
        for fetched in source.fetch_many(refs):
            if fetched.body is None:
                raise RuntimeError(f"{fetched.ref.key}: {fetched.error}")
            n += 1
        return n

    return run


def list_all(lister: Callable[[], Iterator[ObjectRef]]) -> Callable[[], int]:
    return lambda: sum(1 for _ in lister())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=5000)
    parser.add_argument("--size", type=int, default=850)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--concurrency", type=int, default=Settings("", DatabaseSettings()).fetch_concurrency
    )
    parser.add_argument("--server", choices=("s3rver", "moto"), default="s3rver")
    args = parser.parse_args()

    cores = _cores()
    pinned = len(cores) >= 2
    server_kind = args.server
    if server_kind == "s3rver" and not ensure_s3rver():
        print("s3rver unavailable: falling back to moto (compare ratios only)", file=sys.stderr)
        server_kind = "moto"
    server = (
        s3rver(cores[SERVER_CPU] if pinned else None) if server_kind == "s3rver" else moto_server()
    )

    with server as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        bucket = "bench-client-cost"
        started = time.perf_counter()
        upload(endpoint, bucket, args.objects, args.size)
        upload_s = time.perf_counter() - started
        os.sched_setaffinity(0, {cores[CLIENT_CPU]})  # the client: one core, like a Lambda

        settings = Settings(
            raw_bucket=bucket, db=DatabaseSettings(), fetch_concurrency=args.concurrency
        )
        boto_source = Boto3Source(settings)
        crt_source = CrtSource(settings)
        prefix = "events/"
        refs = list(crt_source.list_objects(prefix))
        assert len(refs) == args.objects, (len(refs), args.objects)
        assert [r.key for r in boto_source.list_objects(prefix)] == [r.key for r in refs]

        cases: dict[str, tuple[str, Callable[[], int]]] = {
            "GET boto3 (Boto3Source)": ("get", fetch_all(boto_source, refs)),
            "GET crt (CrtSource)": ("get", fetch_all(crt_source, refs)),
            "LIST boto3 paginator (Boto3Source)": (
                "list",
                list_all(lambda: boto_source.list_objects(prefix)),
            ),
            "LIST lean, CRT transport (CrtSource)": (
                "list",
                list_all(lambda: crt_source.list_objects(prefix)),
            ),
        }
        samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in cases}
        for _, run in cases.values():  # warm-up: connections, imports, caches
            run()
        for _ in range(args.repeats):  # interleaved, so drift hits every case alike
            for name, (_, run) in cases.items():
                samples[name].append(measure(run))
        boto_source.close()
        crt_source.close()

    rows = []
    for name, (kind, _) in cases.items():
        runs = samples[name]
        items = runs[0][2]
        cpu = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        row: dict[str, Any] = {"case": name, "kind": kind, "items": items, "runs": len(runs)}
        if kind == "get":
            row["cpu_ms_per_get"] = round(1000 * cpu / items, 4)
            row["gets_per_s"] = round(items / wall)
        else:
            row["cpu_ms_per_1000_keys"] = round(1000 * cpu / items * 1000, 2)
            row["keys_per_s"] = round(items / wall)
        row["cpu_samples_s"] = [round(r[0], 4) for r in runs]
        row["wall_samples_s"] = [round(r[1], 4) for r in runs]
        rows.append(row)

    by = {r["case"]: r for r in rows}
    get_ratio = (
        by["GET boto3 (Boto3Source)"]["cpu_ms_per_get"]
        / by["GET crt (CrtSource)"]["cpu_ms_per_get"]
    )
    list_ratio = (
        by["LIST boto3 paginator (Boto3Source)"]["cpu_ms_per_1000_keys"]
        / by["LIST lean, CRT transport (CrtSource)"]["cpu_ms_per_1000_keys"]
    )
    import awscrt
    import botocore

    result = {
        "server": server_kind,
        "objects": args.objects,
        "object_bytes": args.size,
        "fetch_concurrency": args.concurrency,
        "crt_in_flight_window": args.concurrency * 4,
        "client_pinned_to_one_core": pinned,
        "upload_s": round(upload_s, 2),
        "versions": {
            "python": platform.python_version(),
            "boto3": boto3.__version__,
            "botocore": botocore.__version__,
            "awscrt": awscrt.__version__,
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "cases": rows,
        "ratios": {
            "get_cpu_boto3_over_crt": round(get_ratio, 2),
            "list_cpu_paginator_over_lean": round(list_ratio, 2),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\nS3 client cost on {server_kind}: {args.objects} objects of ~{args.size} B, "
        f"fetch_concurrency={args.concurrency}, client pinned to 1 core: {pinned}, "
        f"median of {args.repeats}\n"
    )
    print("| case | client CPU | throughput |")
    print("|---|---:|---:|")
    for row in rows:
        if row["kind"] == "get":
            print(
                f"| {row['case']} | {row['cpu_ms_per_get']:.3f} ms / GET | "
                f"{row['gets_per_s']:,} GETs/s |"
            )
        else:
            print(
                f"| {row['case']} | {row['cpu_ms_per_1000_keys']:.1f} ms / 1,000 keys | "
                f"{row['keys_per_s']:,} keys/s |"
            )
    print(f"\nGET CPU boto3/crt: {get_ratio:.2f}x; LIST CPU paginator/lean: {list_ratio:.2f}x")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
