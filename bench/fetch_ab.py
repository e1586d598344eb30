"""The S3 fetch path alone, this tree against another, interleaved: client CPU per GET.

    .venv/bin/python bench/fetch_ab.py --before /tmp/extract-before [--client crt] [--pairs 8]

End-to-end runs on a shared machine swing by ±30% from one run to the next; this isolates the
one stage a change to `loader/extract/` touches. s3rver (on the last CPU) serves `--objects`
objects of ~800 B written straight into its store; then, `--pairs` times, a fresh process of
each tree (its `loader` first on sys.path, the client pinned to the first CPU) lists and fetches
them all through the tree's own source (`CrtSource` or `Boto3Source`, FETCH_CONCURRENCY=32),
after one unmeasured warm-up pass, and reports `time.process_time()` (every thread, the CRT's
included), wall time and the cyclic garbage collector's share. Prints the medians and the
median of the paired ratios, and writes bench/results/fetch_ab_<client>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
os.environ.update(
    AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER", AWS_DEFAULT_REGION="us-east-1"
)
os.environ["BOTO_DISABLE_CRT"] = "true"
os.environ.pop("AWS_PROFILE", None)

from servers import ensure_s3rver, s3rver_server, write_objects  # noqa: E402

BUCKET = "bench-fetch-ab"

#: Run in a fresh interpreter with the tree under test first on sys.path.
CHILD = """
import gc, json, os, sys, time
sys.path.insert(0, sys.argv[1])
from loader.config import DatabaseSettings, Settings
settings = Settings(raw_bucket=sys.argv[2], db=DatabaseSettings(), fetch_concurrency=32)
if sys.argv[3] == "crt":
    from loader.extract.crt_client import CrtSource as Source
else:
    from loader.extract.boto3_client import Boto3Source as Source
source = Source(settings)
def run():
    return sum(f.body is not None for f in source.fetch_many(source.list_objects("events/")))
run()
collector = {"gc_s": 0.0, "full_collections": 0, "started": 0.0}
def count(phase, info):
    if phase == "start":
        collector["started"] = time.thread_time()
        return
    collector["gc_s"] += time.thread_time() - collector["started"]
    collector["full_collections"] += info["generation"] == 2
gc.callbacks.append(count)
cpu, wall = time.process_time(), time.perf_counter()
fetched = run()
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
gc.callbacks.remove(count)
source.close()
del collector["started"]
print(json.dumps({"fetched": fetched, "cpu_s": cpu, "wall_s": wall, **collector}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other tree's checkout")
    parser.add_argument("--client", choices=("crt", "boto3"), default="crt")
    parser.add_argument("--objects", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    if not ensure_s3rver():
        raise SystemExit("s3rver needs node and npm")
    cores = sorted(os.sched_getaffinity(0))
    trees = {"after": str(BENCH.parent), "before": str(args.before.resolve())}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    with s3rver_server(cores[-1] if len(cores) > 1 else None) as server:
        import boto3

        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=BUCKET)
        pad = b"x" * 760
        items = (
            (f"events/{i:06d}.json", b'{"n": %d, "pad": "%s"}' % (i, pad), None)
            for i in range(args.objects)
        )
        write_objects(server.data_dir, BUCKET, items)
        env = {**os.environ, "AWS_ENDPOINT_URL": server.endpoint}
        for _ in range(args.pairs):
            for name, tree in trees.items():
                done = subprocess.run(
                    [
                        "taskset",
                        "-c",
                        str(cores[0]),
                        sys.executable,
                        "-c",
                        CHILD,
                        tree,
                        BUCKET,
                        args.client,
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=600,
                )
                result = json.loads(done.stdout.splitlines()[-1])
                assert result["fetched"] == args.objects, result
                runs[name].append(result)
    per_get = {n: [1000 * r["cpu_s"] / args.objects for r in rs] for n, rs in runs.items()}
    gets_s = {n: [args.objects / r["wall_s"] for r in rs] for n, rs in runs.items()}
    summary = {
        "client": args.client,
        "objects": args.objects,
        "pairs": args.pairs,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cpu_ms_per_get": {n: round(statistics.median(v), 4) for n, v in per_get.items()},
        "gets_per_s": {n: round(statistics.median(v)) for n, v in gets_s.items()},
        "paired_ratio_after_over_before": {
            "cpu": round(
                statistics.median(
                    a / b for a, b in zip(per_get["after"], per_get["before"], strict=True)
                ),
                3,
            ),
            "gets_per_s": round(
                statistics.median(
                    a / b for a, b in zip(gets_s["after"], gets_s["before"], strict=True)
                ),
                3,
            ),
        },
        "runs": runs,
    }
    out = BENCH / "results" / f"fetch_ab_{args.client}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
