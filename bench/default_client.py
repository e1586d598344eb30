"""The default S3 client against the alternatives, side by side on one workload.

    .venv/bin/python bench/default_client.py [--size 5k] [--repeats 2]

Why: `S3_CLIENT` defaults to `auto` (the CRT client when awscrt imports) because of these
numbers, and the boto3 path that stays reachable must keep up with the naive loop a user could
write in 50 lines. Same machinery as `make bench` (bench/run.py's s3rver, embedded PostgreSQL,
workload, pinning and per-case processes), only these cases, interleaved per repeat:

  s3_crt, s3_boto3     fetch-only ceilings through the loader's own sources (bench/cases.py)
  naive_fetch          fetch-only naive loop: boto3 paginator + ThreadPoolExecutor(32) get_object
                       + json.loads (what the boto3 ceiling must match)
  loader_default       the loader end to end with S3_CLIENT unset, as users deploy it; records
                       which client `auto` chose and whether boto3/botocore were imported
  loader_boto3         the loader end to end with S3_CLIENT=boto3
  naive                bench/cases.py's naive Lambda: 32 boto3 threads + executemany

Writes bench/results/default_client.{json,md}. Numbers are medians over --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

#: (name, how to run it, environment, database policy)
CASES: list[tuple[str, list[str], dict[str, str], bool]] = [
    ("s3_crt", ["cases.py", "s3_crt"], {"S3_CLIENT": "crt"}, False),
    ("s3_boto3", ["cases.py", "s3_boto3"], {"S3_CLIENT": "boto3"}, False),
    ("naive_fetch", ["default_client.py", "--child", "naive_fetch"], {}, False),
    ("loader_default", ["default_client.py", "--child", "loader"], {"WRITE_METHOD": "copy"}, True),
    (
        "loader_boto3",
        ["default_client.py", "--child", "loader"],
        {"S3_CLIENT": "boto3", "WRITE_METHOD": "copy"},
        True,
    ),
    ("naive", ["cases.py", "naive"], {}, True),
]


# ------------------------------------------------------------------------------ child cases


def child_loader(size: int) -> dict[str, Any]:
    from cases import _report_details, measure
    from workload import hour_for

    from loader.app import make_source
    from loader.config import load_settings
    from loader.load.db import make_engine
    from loader.pipeline.hour import HourLoader
    from loader.pipeline.job import HourJob

    settings = load_settings()
    engine = make_engine(settings.db)
    source = make_source(settings)
    loader = HourLoader(settings, engine, source)
    try:
        result = measure(
            lambda: _report_details(loader.load(HourJob(hour_for(size).hour, "manual")))
        )
    finally:
        engine.dispose()
        source.close()
    result["client"] = type(source).__name__
    result["s3_client_setting"] = settings.s3_client
    result["imported"] = sorted(
        {m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("boto3", "botocore")}
    )
    result["botocore_modules"] = sum(1 for m in sys.modules if m.startswith("botocore"))
    return result


def child_naive_fetch(size: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.config import Config
    from cases import measure
    from workload import hour_for

    bucket, prefix = os.environ["RAW_BUCKET_NAME"], hour_for(size).prefix
    s3 = boto3.client("s3", config=Config(max_pool_connections=32))

    def run() -> dict[str, Any]:
        keys = [
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])
        ]

        def fetch(key: str) -> bytes:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

        parsed = unparsable = 0
        with ThreadPoolExecutor(32) as pool:
            for body in pool.map(fetch, keys):
                try:
                    json.loads(body)
                    parsed += 1
                except ValueError:
                    unparsable += 1
        return {"objects": len(keys), "parsed": parsed, "unparsable": unparsable}

    return measure(run)


def child(case: str, size: int, out: Path) -> None:
    import resource

    from cases import _cpu, _peak_rss_mb

    result = {"loader": child_loader, "naive_fetch": child_naive_fetch}[case](size)
    result["peak_rss_mb"] = _peak_rss_mb()
    result["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["process_cpu_s"] = sum(_cpu())
    out.write_text(json.dumps(result, default=str, indent=2))


# ------------------------------------------------------------------------------ the parent


def run_one(
    name: str, argv: list[str], size: int, env: dict[str, str], s3: Any, cpus: set[int] | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, str(BENCH / argv[0]), *argv[1:]]
        command += ["--size", str(size), "--out", str(out)]
        before = s3.settle()
        s3_cpu0 = s3.cpu_seconds()
        done = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        after = s3.settle()
        result: dict[str, Any] = json.loads(out.read_text())
        result["log"] = (done.stdout + done.stderr)[-2000:]
    result["s3_requests"] = {k: after.get(k, 0) - before.get(k, 0) for k in ("list", "get")}
    result["s3rver_cpu_s"] = s3.cpu_seconds() - s3_cpu0
    return result


def render(doc: dict[str, Any]) -> str:
    n = doc["objects"]
    lines = [
        f"# Default S3 client, side by side — {doc['finished_at'][:16]} UTC",
        "",
        f"`{doc['command']}`; {doc['objects']:,} objects (mean {doc['mean_object_bytes']:.0f} B) "
        f"on s3rver, embedded PostgreSQL; {doc['pinning']}; load average {doc['loadavg_before']}"
        f" before / {doc['loadavg_after']} after (a shared machine: compare within the run). "
        f"Median of {doc['repeats']} interleaved runs; CPU = user+sys of the case's process.",
        "",
        "| case | events/s | CPU ms/event | peak RSS MB | S3 LIST / GET | client chosen |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, row in doc["cases"].items():
        chosen = row.get("client", "")
        imported = row.get("imported")
        if imported is not None and "boto3" not in imported and row["botocore_modules"] <= 1:
            # aws_lambda_powertools' `import botocore` probe: the bare package, one module
            chosen += " (no boto3; of botocore only Powertools' bare probe)"
        elif imported is not None:
            chosen += f" ({', '.join(imported)}: {row['botocore_modules']} botocore modules)"
        lines.append(
            f"| {name} | {row['events_per_s']:,.0f} | {row['cpu_ms_per_event']:.3f} | "
            f"{row['peak_rss_mb']:.0f} | {row['s3_list']} / {row['s3_get']} | {chosen} |"
        )
    c = doc["cases"]
    lines += [
        "",
        "| ratio | value |",
        "|---|---:|",
        f"| loader_default ÷ naive (events/s) | "
        f"{c['loader_default']['events_per_s'] / c['naive']['events_per_s']:.2f} |",
        f"| loader_default ÷ s3_crt ceiling (events/s) | "
        f"{c['loader_default']['events_per_s'] / c['s3_crt']['events_per_s']:.2f} |",
        f"| loader_boto3 ÷ naive (events/s) | "
        f"{c['loader_boto3']['events_per_s'] / c['naive']['events_per_s']:.2f} |",
        f"| s3_boto3 ÷ naive_fetch (events/s) | "
        f"{c['s3_boto3']['events_per_s'] / c['naive_fetch']['events_per_s']:.2f} |",
        f"| s3_boto3 CPU ÷ s3_crt CPU (per event) | "
        f"{c['s3_boto3']['cpu_ms_per_event'] / c['s3_crt']['cpu_ms_per_event']:.2f} |",
        "",
        f"Per event = per object of the hour ({n:,}).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("loader", "naive_fetch"))
    parser.add_argument("--size", default="5k")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--name", default="default_client")
    args = parser.parse_args()
    if args.child:
        child(args.child, int(args.size), args.out)
        return

    import run as bench_run  # bench/run.py: its servers, warehouse and workload helpers

    size = bench_run.parse_size(args.size)
    started = time.perf_counter()
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(bench_run.S3RVER_AWS_ENV)
    os.environ["BOTO_DISABLE_CRT"] = "true"
    if not bench_run.ensure_s3rver():
        raise SystemExit("s3rver needs node and npm")
    cores = sorted(os.sched_getaffinity(0))
    s3_cpu = cores[-1] if len(cores) >= 2 else None
    client_cpus = set(cores[:-1]) if len(cores) >= 2 else None
    pinning = (
        f"s3rver alone on CPU {s3_cpu}, each case and PostgreSQL on CPU "
        f"{', '.join(map(str, sorted(client_cpus)))}"
        if client_cpus
        else "nothing pinned"
    )
    loadavg_before = bench_run._loadavg()
    with (
        bench_run.s3rver_server(s3_cpu, fast_listing=True) as s3,
        bench_run.embedded_postgres(client_cpus) as pg,
    ):
        dw = bench_run.Warehouse(pg)
        try:
            spec = bench_run.hour_for(size)
            hour = bench_run.write_hour(s3, spec)
            bench_run.warm_listing(s3, spec)
            bench_run.warm_gets(s3, spec)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in CASES}
            for rep in range(args.repeats):
                for name, argv, extra, needs_db in CASES:
                    db = dw.fresh(f"dc_{name}_{rep}") if needs_db else None
                    env = bench_run.case_env(s3, pg, db, extra)
                    result = run_one(name, argv, size, env, s3, client_cpus)
                    runs[name].append(result)
                    print(
                        f"{name:15s} {hour['objects'] / result['wall_s']:8,.0f} events/s "
                        f"{1000 * result['cpu_s'] / hour['objects']:.3f} ms CPU/event",
                        flush=True,
                    )
                dw.drop_all()
        finally:
            dw.close()
    n = hour["objects"]
    cases: dict[str, dict[str, Any]] = {}
    for name, results in runs.items():
        row: dict[str, Any] = {
            "events_per_s": statistics.median(n / r["wall_s"] for r in results),
            "cpu_ms_per_event": statistics.median(1000 * r["cpu_s"] / n for r in results),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            "s3_list": results[0]["s3_requests"]["list"],
            "s3_get": results[0]["s3_requests"]["get"],
            "runs": [
                {"events_per_s": n / r["wall_s"], "cpu_ms_per_event": 1000 * r["cpu_s"] / n}
                for r in results
            ],
        }
        for key in ("client", "s3_client_setting", "imported", "botocore_modules"):
            if key in results[0]:
                row[key] = results[0][key]
        if "details" in results[0]:
            row["details"] = results[0]["details"]
        cases[name] = row
    doc = {
        "finished_at": datetime.now(UTC).isoformat(),
        "command": "bench/default_client.py " + " ".join(sys.argv[1:]),
        "total_s": time.perf_counter() - started,
        "objects": n,
        "mean_object_bytes": hour["mean_object_bytes"],
        "repeats": args.repeats,
        "pinning": pinning,
        "loadavg_before": loadavg_before,
        "loadavg_after": bench_run._loadavg(),
        "code": bench_run._code_state(),
        "cases": cases,
    }
    results_dir = BENCH / "results"
    (results_dir / f"{args.name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (results_dir / f"{args.name}.md").write_text(render(doc))
    print(render(doc))


if __name__ == "__main__":
    main()
