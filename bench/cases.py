"""One measured benchmark case, run in its own process by `bench/run.py`.

    python bench/cases.py CASE --size N --out result.json

The parent sets the environment exactly as a Lambda would see it (RAW_BUCKET_NAME, DW_PG_*,
AWS_ENDPOINT_URL, S3_CLIENT, WRITE_METHOD, ...). Setup (imports, clients, engine, and for the DB
cases generating and transforming the pre-fetched events) happens before the measured section;
the measured section is timed with `time.perf_counter()` (wall) and `getrusage(RUSAGE_SELF)`
(user+sys CPU of every thread of this process, the CRT's native threads included; never the
servers'). Peak RSS is the process's VmHWM at exit
(see `_peak_rss_mb`). The result is written as JSON to --out.

Cases:
  s3_boto3, s3_crt   S3 ceiling: list + concurrent GET + orjson.loads, no database, through the
                     loader's real sources (Boto3Source / CrtSource).
  s3_crt_transform   the CRT ceiling with the loader's own producer step instead of orjson.loads
                     (`loader.pipeline.prefetch.prepare`: parse and map every object, as the
                     loader's fetch-transform thread does), still no database: with s3_crt and
                     loader it splits the loader's CPU above the ceiling into transform and DB.
  naive              a hand-rolled Lambda: boto3 paginator, ThreadPoolExecutor(32) get_object,
                     json.loads, psycopg2 executemany INSERT ... ON CONFLICT DO NOTHING into both
                     tables per 500-event batch.
  loader             the real loader end to end: HourLoader.load(HourJob(hour, "manual")) with
                     the settings from the environment (S3_CLIENT, WRITE_METHOD).
  db_stage           the loader's DB stage alone: its batching and writer (HourLoader._stream)
                     over pre-fetched bodies whose transform was done beforehand (no S3, no
                     transform, no per-run lock/ledger in the measured section).
  db_ceiling         plain COPY of the same transformed rows into empty copies of both tables
                     (LIKE ... INCLUDING ALL plus the meta -> events foreign key: same columns,
                     defaults, keys, indexes), one COPY per table in one transaction; also into
                     bare copies (columns and defaults only: no keys, no indexes).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
#: BENCH_LOADER_TREE measures another checkout's loader (e.g. the commit before a change) with
#: this benchmark: its directory goes first on sys.path.
sys.path.insert(0, os.environ.get("BENCH_LOADER_TREE") or str(BENCH.parent))

from workload import BUCKET, hour_for, objects  # noqa: E402

_CASES = (
    "s3_boto3",
    "s3_crt",
    "s3_crt_transform",
    "naive",
    "merge",
    "loader",
    "db_stage",
    "db_ceiling",
)


# ------------------------------------------------------------------------------ measuring


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    """This process image's peak RSS (VmHWM). Not `ru_maxrss`: Linux carries the parent's RSS
    high-water mark into an exec'd child's ru_maxrss, so it would report the benchmark runner's
    memory, not the loader's."""
    return _status_mb("VmHWM")


class _RssSampler(threading.Thread):
    """RSS every 0.25 s during the measured section: shows whether memory is flat or grows."""

    def __init__(self) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.samples: list[tuple[float, float]] = []
        self._stop_event = threading.Event()
        self._start = time.perf_counter()

    def run(self) -> None:
        while not self._stop_event.wait(0.25):
            self.samples.append((time.perf_counter() - self._start, _rss_mb()))

    def stop(self) -> list[tuple[float, float]]:
        self._stop_event.set()
        self.join()
        return self.samples


def _timeline(samples: list[tuple[float, float]], points: int = 11) -> list[list[float]]:
    """RSS at evenly spaced moments of the run (a handful of points, for the JSON)."""
    if not samples:
        return []
    picks = sorted({round(i * (len(samples) - 1) / (points - 1)) for i in range(points)})
    return [[round(samples[i][0], 2), round(samples[i][1], 1)] for i in picks]


# ------------------------------------------------------------------------------ where the CPU goes

#: CPU seconds of the Python threads that ended during the measured section, by thread name
#: (their /proc entry is gone by the time it ends).
_ENDED_THREADS: dict[str, float] = {}
_thread_run = threading.Thread.run


def _run_counting_cpu(self: threading.Thread) -> None:
    try:
        _thread_run(self)
    finally:
        _ENDED_THREADS[self.name] = _ENDED_THREADS.get(self.name, 0.0) + time.thread_time()


threading.Thread.run = _run_counting_cpu  # type: ignore[method-assign]


def _live_threads_cpu() -> dict[int, tuple[str, float]]:
    """(name, user+sys seconds) of every thread of this process alive now, by thread id: the
    CRT's native threads included, which Python's own thread clocks cannot see."""
    tick = os.sysconf("SC_CLK_TCK")
    threads: dict[int, tuple[str, float]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # ended while we looked
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        threads[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return threads


def _thread_group(name: str, tid: int) -> str:
    if tid == os.getpid():
        return "main thread"
    if name.startswith("AwsEventLoop"):
        return "CRT event loop"
    return name


class _GcClock:
    """CPU spent in the cyclic garbage collector, and how many collections of each generation:
    a pipeline that keeps many young objects alive pays for them here."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._started
            self.collections[info["generation"]] += 1


def _cpu_by_thread(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    groups: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        if name == "rss-sampler":
            continue
        group = _thread_group(name, tid)
        groups[group] = groups.get(group, 0.0) + cpu - before.get(tid, (name, 0.0))[1]
    for name, cpu in _ENDED_THREADS.items():
        groups[name] = groups.get(name, 0.0) + cpu
    return {name: round(cpu, 3) for name, cpu in sorted(groups.items()) if cpu > 0.0}


def measure(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run the measured section; its wall and CPU time, and the RSS around and during it."""
    gc.collect()
    rss_before = _rss_mb()
    sampler = _RssSampler()
    sampler.start()
    gc_clock = _GcClock()
    gc.callbacks.append(gc_clock)
    _ENDED_THREADS.clear()
    threads_before = _live_threads_cpu()
    user0, sys0 = _cpu()
    wall0 = time.perf_counter()
    details = run()
    wall = time.perf_counter() - wall0
    user1, sys1 = _cpu()
    threads_after = _live_threads_cpu()
    gc.callbacks.remove(gc_clock)
    samples = sampler.stop()
    return {
        "cpu_by_thread_s": _cpu_by_thread(threads_before, threads_after),
        "gc_s": round(gc_clock.seconds, 3),
        "gc_collections": gc_clock.collections,
        "wall_s": wall,
        "cpu_user_s": user1 - user0,
        "cpu_sys_s": sys1 - sys0,
        "cpu_s": (user1 - user0) + (sys1 - sys0),
        "rss_before_mb": rss_before,
        "rss_after_mb": _rss_mb(),
        "rss_timeline_mb": _timeline(samples),
        "details": details,
    }


# ------------------------------------------------------------------------------ S3 ceiling


def case_s3(size: int, client: str, *, transform: bool = False) -> dict[str, Any]:
    import orjson

    from loader.config import load_settings
    from loader.extract.boto3_client import Boto3Source
    from loader.extract.crt_client import CrtSource
    from loader.pipeline.prefetch import prepare

    settings = load_settings()
    source = Boto3Source(settings) if client == "boto3" else CrtSource(settings)
    prefix = hour_for(size).prefix

    def run() -> dict[str, Any]:
        listed = parsed = unparsable = fetch_errors = retries = 0
        for fetched in source.fetch_many(source.list_objects(prefix)):
            listed += 1
            retries += fetched.retries
            if fetched.body is None:
                fetch_errors += 1
                continue
            if transform:
                # Events read: every JSON object, mapped or invalid (what `parsed` counts).
                read = prepare(fetched, settings.raw_bucket, anonymize=False).events_read
                parsed += read
                unparsable += read == 0
                continue
            try:
                value = orjson.loads(fetched.body)
            except orjson.JSONDecodeError:
                unparsable += 1
                continue
            if isinstance(value, dict):
                parsed += 1
            else:
                unparsable += 1
        return {
            "objects": listed,
            "parsed": parsed,
            "unparsable": unparsable,
            "fetch_errors": fetch_errors,
            "retries": retries,
        }

    try:
        return measure(run)
    finally:
        source.close()


# ------------------------------------------------------------------------------ naive baseline

NAIVE_EVENT_COLUMNS = (
    "event_id, event_name, event_timestamp, client_timestamp, page_url, referrer, user_id, "
    "user_login_state, client_id, session_id, is_first_visit, context_product_id, "
    "context_product_name, context_product_category, context_product_brand, "
    "context_product_price, context_product_discount_price, context_product_url_path, "
    "element, properties"
)
NAIVE_META_COLUMNS = (
    "event_id, received_at, source_ip, user_agent, path, request_id, api_id, stage, trace_id, "
    "s3_bucket, s3_key, s3_last_modified, ingest_metadata, payload_sha256"
)
NAIVE_EVENTS_SQL = (
    f"INSERT INTO clickstream_events ({NAIVE_EVENT_COLUMNS}) VALUES ({', '.join(['%s'] * 20)}) "
    "ON CONFLICT (event_id) DO NOTHING"
)
NAIVE_META_SQL = (
    f"INSERT INTO clickstream_ingest_meta ({NAIVE_META_COLUMNS}) "
    f"VALUES ({', '.join(['%s'] * 14)}) ON CONFLICT (event_id) DO NOTHING"
)
_NAIVE_MAPPED = {
    "eventName",
    "eventId",
    "timestamp",
    "pageUrl",
    "referrer",
    "userId",
    "userLoginState",
    "clientId",
    "sessionId",
    "isFirstVisit",
    "product",
    "element",
    "_ingest",
}


def naive_rows(bucket: str, key: str, modified: Any, body: bytes) -> tuple[tuple, tuple] | None:
    """One object → (events row, meta row) as a hand-rolled loader maps it, or None to skip."""
    from psycopg2.extras import Json

    try:
        e = json.loads(body)
    except ValueError:
        return None
    # What the real tracker sends: `eventName`, and `eventId` (a UUID) unless the tracker
    # predates it.
    if not isinstance(e, dict) or not isinstance(e.get("eventName"), str):
        return None
    ingest = e.get("_ingest") if isinstance(e.get("_ingest"), dict) else {}
    product = e.get("product") if isinstance(e.get("product"), dict) else {}
    event_id = e.get("eventId") or key.rsplit("event-", 1)[-1].removesuffix(".json")
    ts = e.get("timestamp")
    first = e.get("isFirstVisit")
    event = (
        event_id,
        e["eventName"],
        ingest.get("receivedAt") or modified,
        ts if isinstance(ts, str) else None,
        e.get("pageUrl"),
        e.get("referrer"),
        e.get("userId"),
        e.get("userLoginState"),
        e.get("clientId"),
        e.get("sessionId"),
        first if isinstance(first, bool) else None,
        product.get("id"),
        product.get("name"),
        product.get("category"),
        product.get("brand"),
        product.get("price"),
        product.get("discountPrice"),
        product.get("urlPath"),
        Json(e.get("element")),
        Json({k: v for k, v in e.items() if k not in _NAIVE_MAPPED}),
    )
    meta = (
        event_id,
        ingest.get("receivedAt"),
        ingest.get("sourceIp"),
        ingest.get("userAgent"),
        ingest.get("path"),
        ingest.get("requestId"),
        ingest.get("apiId"),
        ingest.get("stage"),
        ingest.get("traceId"),
        bucket,
        key,
        modified,
        Json(ingest),
        hashlib.sha256(body).digest(),
    )
    return event, meta


def _naive_fetcher(bucket: str, prefix: str) -> tuple[list[tuple[str, Any]], Callable[..., Any]]:
    """Every key of the hour (boto3's paginator), and a GET for one of them."""
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", config=Config(max_pool_connections=32))
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [(o["Key"], o["LastModified"]) for o in page.get("Contents", [])]

    def fetch(item: tuple[str, Any]) -> tuple[str, Any, bytes]:
        key, modified = item
        return key, modified, s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    return keys, fetch


def naive_handler(bucket: str, prefix: str, dsn: str) -> dict[str, int]:
    """What a hand-rolled loader Lambda looks like: list everything, then per 500 keys fetch them
    with 32 threads and insert them row by row with executemany."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg2

    keys, fetch = _naive_fetcher(bucket, prefix)
    conn = psycopg2.connect(dsn)
    loaded = skipped = 0
    with ThreadPoolExecutor(32) as pool:
        for start in range(0, len(keys), 500):
            events, metas = [], []
            for key, modified, body in pool.map(fetch, keys[start : start + 500]):
                rows = naive_rows(bucket, key, modified, body)
                if rows is None:
                    skipped += 1
                    continue
                events.append(rows[0])
                metas.append(rows[1])
            with conn.cursor() as cur:
                cur.executemany(NAIVE_EVENTS_SQL, events)
                cur.executemany(NAIVE_META_SQL, metas)
            conn.commit()
            loaded += len(events)
    conn.close()
    return {"objects": len(keys), "loaded": loaded, "skipped": skipped}


def merge_handler(bucket: str, prefix: str, dsn: str) -> dict[str, int]:
    """A dlt-style merge load (dlt's `write_disposition="merge"` with its default delete-insert
    strategy on PostgreSQL): extract and normalise the whole hour first, then in one transaction
    load the rows into staging tables with multi-row INSERT ... VALUES (dlt's default file
    format for PostgreSQL, `insert_values`), delete the destination rows whose key is staged and
    insert the staged rows, one per key. Rows are held in memory until the load (dlt writes them
    to load files on disk). Same extract and field mapping as the naive loop."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg2
    from psycopg2.extras import execute_values

    keys, fetch = _naive_fetcher(bucket, prefix)
    events, metas = [], []
    skipped = 0
    with ThreadPoolExecutor(32) as pool:
        for key, modified, body in pool.map(fetch, keys):
            rows = naive_rows(bucket, key, modified, body)
            if rows is None:
                skipped += 1
                continue
            events.append(rows[0])
            metas.append(rows[1])
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        for stage, table in (
            ("stage_events", "clickstream_events"),
            ("stage_meta", "clickstream_ingest_meta"),
        ):
            cur.execute(
                f"CREATE TEMP TABLE {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
            )
        execute_values(
            cur,
            f"INSERT INTO stage_events ({NAIVE_EVENT_COLUMNS}) VALUES %s",
            events,
            page_size=1000,
        )
        execute_values(
            cur, f"INSERT INTO stage_meta ({NAIVE_META_COLUMNS}) VALUES %s", metas, page_size=1000
        )
        # Deleting an event deletes its meta row too (ON DELETE CASCADE).
        cur.execute(
            "DELETE FROM clickstream_events d USING stage_events s WHERE d.event_id = s.event_id"
        )
        cur.execute(
            f"INSERT INTO clickstream_events ({NAIVE_EVENT_COLUMNS}) SELECT DISTINCT ON (event_id) "
            f"{NAIVE_EVENT_COLUMNS} FROM stage_events ORDER BY event_id"
        )
        cur.execute(
            f"INSERT INTO clickstream_ingest_meta ({NAIVE_META_COLUMNS}) SELECT DISTINCT ON "
            f"(event_id) {NAIVE_META_COLUMNS} FROM stage_meta ORDER BY event_id"
        )
    conn.close()
    return {"objects": len(keys), "loaded": len(events), "skipped": skipped}


def case_naive(size: int, handler: Callable[[str, str, str], dict[str, int]]) -> dict[str, Any]:
    env = os.environ
    dsn = (
        f"host={env['DW_PG_HOST']} port={env['DW_PG_PORT']} user={env['DW_PG_USER']} "
        f"dbname={env['DW_PG_DATABASE']}"
    )
    import boto3  # noqa: F401 - imported before the measured section, as a warm Lambda has it
    import psycopg2  # noqa: F401

    prefix = hour_for(size).prefix
    return measure(lambda: handler(env["RAW_BUCKET_NAME"], prefix, dsn))


# ------------------------------------------------------------------------------ the loader


def _report_details(report: Any) -> dict[str, Any]:
    data = report.to_dict()
    keep = (
        "state",
        "objects_listed",
        "events_read",
        "inserted",
        "duplicates",
        "duplicate_exact",
        "duplicate_conflicting",
        "sanitised",
        "truncated",
        "batches",
        "retries",
        "seconds",
        "error",
    )
    out = {k: data.get(k) for k in keep}
    for name in ("malformed", "invalid", "quarantined"):
        value = data.get(name)
        out[name] = value.get("count") if isinstance(value, dict) else value
    out["objects"] = data.get("objects_listed")
    return out


def case_loader(size: int) -> dict[str, Any]:
    from loader.app import LoaderFactory
    from loader.config import load_settings
    from loader.pipeline.job import HourJob

    settings = load_settings()
    # Built as the Lambda handler and the CLI build it (engine, S3 client, start-up steps).
    loader = LoaderFactory().get(settings)
    engine, source = loader.engine, loader.source
    hour = hour_for(size).hour
    try:
        result = measure(lambda: _report_details(loader.load(HourJob(hour, "manual"))))
    finally:
        engine.dispose()
        source.close()
    # What this configuration is, as the loader resolved it (S3_CLIENT may default to either).
    result["details"]["source"] = type(source).__name__
    result["details"]["s3_client"] = settings.s3_client
    result["details"]["write_method"] = settings.write_method
    return result


# ------------------------------------------------------------------------------ DB stage / ceiling


def _prefetched(size: int) -> list[tuple[Any, bytes]]:
    """(ObjectRef, body) of every object of the hour, in key order (as S3 lists them)."""
    from loader.common import ObjectRef

    spec = hour_for(size)
    modified = spec.hour + timedelta(minutes=59)
    items = sorted(objects(size))
    return [(ObjectRef(key, len(body), modified), body) for key, body, _, _ in items]


class _Prefetched:
    """An ObjectSource over bodies already in memory."""

    def __init__(self, bucket: str, items: list[tuple[Any, bytes]]) -> None:
        self.bucket = bucket
        self._items = items

    def list_objects(self, prefix: str, start_after: str | None = None) -> Iterator[Any]:
        return (ref for ref, _ in self._items if ref.key.startswith(prefix))

    def fetch_many(self, refs: Iterable[Any], stop: Any = None) -> Iterator[Any]:
        from loader.common import FetchedObject

        return (FetchedObject(ref, b"") for ref in refs)

    def close(self) -> None:
        pass


def case_db_stage(size: int) -> dict[str, Any]:
    """The loader's own batching and writer over events fetched and transformed beforehand:
    `HourLoader._stream` (the producer thread handing objects over the bounded queue, batches of
    MAX_RECORDS_PER_BATCH ending on object boundaries, `_flush` -> `_commit` -> the COPY-staging
    writer, one transaction per batch), without the per-run steps around it (schema check, hour
    lock, ledger rows), which `loader` measures."""
    import uuid

    from loader.common import FetchedObject
    from loader.config import load_settings
    from loader.load.db import make_engine
    from loader.pipeline.hour import HourLoader
    from loader.pipeline.job import HourJob
    from loader.report import Report
    from loader.window import hour_label

    settings = load_settings()
    items = _prefetched(size)
    engine = make_engine(settings.db)

    class PreTransformed(HourLoader):
        """The real loader, handed objects already fetched and transformed."""

        prepared: dict[str, Any]

        def _transform(self, fetched: Any) -> Any:
            return self.prepared.pop(fetched.ref.key)

    loader = PreTransformed(settings, engine, _Prefetched(settings.raw_bucket, items))
    # Setup, not measured: the loader's own transform of every pre-fetched body. Its CPU per
    # object is reported as the transform's cost.
    cpu0 = sum(_cpu())
    loader.prepared = {
        ref.key: HourLoader._transform(loader, FetchedObject(ref, body)) for ref, body in items
    }
    transform_cpu_s = sum(_cpu()) - cpu0
    spec = hour_for(size)
    job = HourJob(spec.hour, "manual")
    report = Report.new(hour_label(spec.hour), spec.prefix, "manual", str(uuid.uuid4()), 100)
    with engine.connect():
        pass  # the pool's connection, as the schema check would have opened it

    def run() -> dict[str, Any]:
        loader._stream(job, report, None, None)
        return _report_details(report)

    try:
        result = measure(run)
    finally:
        engine.dispose()
    result["details"]["transform_cpu_ms_per_object"] = 1000 * transform_cpu_s / len(items)
    return result


def case_db_ceiling(size: int) -> dict[str, Any]:
    import sqlalchemy as sa

    from loader.common import SourceObject
    from loader.config import load_settings
    from loader.load.copy import _copy_rows
    from loader.load.db import make_engine
    from loader.schema import clickstream_events, clickstream_ingest_meta

    # The columns the transform fills: all but the one PostgreSQL stamps.
    EVENT_COLUMNS = tuple(c.name for c in clickstream_events.c if c.name != "loaded_at")
    META_COLUMNS = tuple(c.name for c in clickstream_ingest_meta.c if c.name != "loaded_at")
    from loader.transform.mapping import transform_object

    settings = load_settings()
    records = []
    for ref, body in _prefetched(size):
        source = SourceObject(settings.raw_bucket, ref.key, ref.last_modified)
        records.extend(transform_object(source, body).events)
    engine = make_engine(settings.db)
    tables = {"events": "clickstream_events", "meta": "clickstream_ingest_meta"}
    with engine.begin() as conn:
        for variant, including in (("copy", "INCLUDING ALL"), ("bare", "INCLUDING DEFAULTS")):
            for short, table in tables.items():
                conn.exec_driver_sql(
                    f"CREATE TABLE ceiling_{variant}_{short} (LIKE {table} {including})"
                )
        # LIKE copies keys, indexes and defaults but never foreign keys: add the real one.
        conn.exec_driver_sql(
            "ALTER TABLE ceiling_copy_meta ADD FOREIGN KEY (event_id) "
            "REFERENCES ceiling_copy_events (event_id) ON DELETE CASCADE"
        )

    def copy(variant: str) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            with engine.begin() as conn:
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                for short, rows, columns in (
                    ("events", [r.event for r in records], EVENT_COLUMNS),
                    ("meta", [r.meta for r in records], META_COLUMNS),
                ):
                    cursor.copy_expert(
                        f"COPY ceiling_{variant}_{short} ({', '.join(columns)}) FROM STDIN",
                        _copy_rows(rows, columns),
                    )
                cursor.close()
            with engine.connect() as conn:
                copied = conn.execute(
                    sa.text(f"SELECT count(*) FROM ceiling_{variant}_events")
                ).scalar_one()
            return {"rows": copied}

        return run

    try:
        result = measure(copy("copy"))
        bare = measure(copy("bare"))
    finally:
        engine.dispose()
    result["details"]["objects"] = size
    result["details"]["events"] = len(records)
    result["details"]["bare"] = {k: v for k, v in bare.items() if k != "details"}
    return result


# ------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=_CASES)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("RAW_BUCKET_NAME", BUCKET)
    runners: dict[str, Callable[[int], dict[str, Any]]] = {
        "s3_boto3": lambda n: case_s3(n, "boto3"),
        "s3_crt": lambda n: case_s3(n, "crt"),
        "s3_crt_transform": lambda n: case_s3(n, "crt", transform=True),
        "naive": lambda n: case_naive(n, naive_handler),
        "merge": lambda n: case_naive(n, merge_handler),
        "loader": case_loader,
        "db_stage": case_db_stage,
        "db_ceiling": case_db_ceiling,
    }
    result = runners[args.case](args.size)
    result["peak_rss_mb"] = _peak_rss_mb()
    result["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["process_cpu_s"] = sum(_cpu())
    result["pid"] = os.getpid()
    args.out.write_text(json.dumps(result, default=str, indent=2))


if __name__ == "__main__":
    main()
