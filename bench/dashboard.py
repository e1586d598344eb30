"""The dashboard at growing warehouse sizes: the real app's raw statement against the rollups,
and what keeping the rollups costs the load (issue 25).

Growth (`--sizes`, default 2M, 8M, 16M rows): one warehouse, grown in steps. The rows are the
demo's traffic (one generated hour of `--template` events, run through the loader's own
transform), copied by SQL across 35 UTC days ending on END_DAY with new event, session and
client ids per copy; each client comes back on three consecutive days (copies 3g, 3g+1, 3g+2
share their clients). After each step the rollups are recounted with revision 0008's own fill,
then at that size:
- `raw_statement`: the app's one statement (queries.sql Q1) for its default range, the last 7
  days and today (8 UTC days), every row fetched by psycopg2 (as the app fetches it), median of
  `--raw-repeats`; and the same rows as COPY text only (no Python objects: the transfer floor);
- `raw_kpis_sql`: queries.sql Q2-Q9 and Q11 run on the raw rows server-side (no transfer);
- `function`: `SELECT * FROM clickstream_dashboard(...)` for the same range, each filter,
  median and max of `--repeats`;
- `raw_sample_page`: Q10 (20 product rows newest first), pages 1 and 50;
- `recount_day`: one whole day recounted from the raw rows (`rebuild_day(apply=False)`): the
  cost of "recompute when an hour completes" at the day's grain;
- the rollups' sizes, and the client table's bytes and rows per day.

Load cost (`--load-events`, default 20,000 events of the demo's traffic, batches of 500): the
loader's own batching and writer (`HourLoader._stream`) over objects already fetched, once
with the events transformed beforehand (the DB stage alone: the strictest ratio) and once
transforming on its producer thread (the load minus S3), each with the rollups on and off
(off: `loader.load.batch.apply_inserted` replaced by a no-op in this process), alternating,
`--load-repeats` times each, each run into a fresh warehouse cloned from a template. Then
`--writers` concurrent writers (threads, one engine each) load shards of one hour, rollups on
and off: contention on the same day's rollup rows.

Migration (`--migration-rows`, default 1M): a warehouse at 0005 holding that many rows, then
`alembic upgrade head` timed (the revision holds a SHARE lock on clickstream_events throughout).

    .venv/bin/python bench/dashboard.py [--sizes 2000000,8000000,16000000] [--quick]

Writes bench/results/dashboard.json and prints the markdown tables of bench/results/dashboard.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

#: `tools` (the local servers, the demo's traffic) is importable from the checkout's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import loader.load.batch as batch_module
from loader.common import FetchedObject, ObjectRef, SourceObject
from loader.config import DatabaseSettings, load_settings
from loader.load.copy import _copy_rows
from loader.load.db import make_engine
from loader.load.rollups import rebuild_day
from loader.load.tables import EVENT_COLUMNS, tables_for
from loader.pipeline.hour import HourLoader
from loader.pipeline.job import HourJob
from loader.report import Report
from loader.transform.mapping import transform_object
from loader.window import Shard, hour_label, hour_prefix
from tools.demo.dashboard import queries
from tools.demo.traffic import generate_hour
from tools.servers import start_embedded_postgres

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TEMPLATE_HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
END_DAY = date(2026, 12, 7)
DAYS = 35
FIRST_DAY = END_DAY - timedelta(days=DAYS - 1)
#: The app's default range: Sys.Date() - 7 .. Sys.Date(), both included.
RANGE = (END_DAY - timedelta(days=7), END_DAY)
FILTERS = ("ALL", "logged_in", "anonymous")
BUCKET = "bench-dashboard"
_REAL_APPLY = batch_module.apply_inserted

# Revision 0008's fill, as it runs in the migration (a bench step, not an import of it).
REFILL = [
    "TRUNCATE clickstream_rollup_events, clickstream_rollup_products, "
    "clickstream_rollup_clients, clickstream_rollup_client_gaps",
]


def _alembic(conn: sa.Connection) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["connection"] = conn
    cfg.attributes["configure_logging"] = False
    return cfg


def _fill_statements() -> list[str]:
    """The FILL statements of revision 0008, read from its file (the bench runs them as is)."""
    namespace: dict[str, Any] = {}
    path = next((ROOT / "migrations" / "versions").glob("*_0008_dashboard_rollups.py"))
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # our own revision file
    statements: list[str] = namespace["FILL"]
    return [s for s in statements if "LOCK TABLE" not in s]


def _proc_cpu(pid: int) -> tuple[float, float, int]:
    """(own CPU s, reaped children's CPU s, parent pid) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / tick
    reaped = (int(fields[13]) + int(fields[14])) / tick
    return own, reaped, int(fields[1])


def server_cpu(postmaster: int) -> float:
    """CPU seconds the whole PostgreSQL server has used: the postmaster, its live children
    (backends, WAL writer, checkpointer, autovacuum) and the children it has reaped. A
    difference of two readings is what the server spent meanwhile, however busy the machine
    (other work waits; it does not count here)."""
    own, reaped, _ = _proc_cpu(postmaster)
    total = own + reaped
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child_own, _, parent = _proc_cpu(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == postmaster:
            total += child_own
    return total


class Warehouse:
    """One embedded PostgreSQL, databases made and dropped on it."""

    def __init__(self) -> None:
        self.pg = start_embedded_postgres()
        self.base = DatabaseSettings(
            host=self.pg.host,
            port=self.pg.port,
            user=self.pg.user,
            database="postgres",
            sslmode="disable",
        )
        self.admin = sa.create_engine(self.base.url(), isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            backend = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        self.postmaster = _proc_cpu(backend)[2]

    def settings(self, name: str) -> DatabaseSettings:
        return DatabaseSettings(
            host=self.base.host,
            port=self.base.port,
            user=self.base.user,
            database=name,
            sslmode="disable",
        )

    def create(
        self, name: str, *, template: str | None = None, revision: str = "head"
    ) -> DatabaseSettings:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            suffix = f' TEMPLATE "{template}"' if template else ""
            conn.execute(sa.text(f'CREATE DATABASE "{name}"{suffix}'))
        db = self.settings(name)
        if template is None:
            engine = sa.create_engine(db.url(), poolclass=sa.NullPool)
            with engine.begin() as conn:
                command.upgrade(_alembic(conn), revision)
            engine.dispose()
        return db

    def settled_cpu(self, name: str) -> float:
        """The server's CPU once the backends of database `name` have exited and been reaped
        (a backend that exits between the two halves of a reading would be missed)."""
        for _ in range(200):
            with self.admin.connect() as conn:
                left = conn.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"), {"d": name}
                ).scalar_one()
            if not left:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        return server_cpu(self.postmaster)

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))

    def close(self) -> None:
        self.admin.dispose()
        self.pg.server.cleanup()


# --------------------------------------------------------------------------------- the rows


def template_records(events: int) -> list[Any]:
    """One generated hour of the demo's traffic, through the loader's own transform."""
    records = []
    for obj in generate_hour(TEMPLATE_HOUR, events, malformed_ratio=0, odd_cases=2):
        source = SourceObject(BUCKET, obj.key, TEMPLATE_HOUR + timedelta(minutes=59))
        records.extend(transform_object(source, obj.body).events)
    return records


def load_template(engine: sa.Engine, records: list[Any]) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE UNLOGGED TABLE IF NOT EXISTS bench_template "
            "(LIKE clickstream_events INCLUDING DEFAULTS)"
        )
        conn.exec_driver_sql("TRUNCATE bench_template")
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.copy_expert(
            f"COPY bench_template ({', '.join(EVENT_COLUMNS)}) FROM STDIN",
            _copy_rows([r.event for r in records], EVENT_COLUMNS),
        )
        cursor.close()
        conn.exec_driver_sql("ANALYZE bench_template")


# Copy k of the template lands on day FIRST_DAY + k % 35, hour (k / 35) % 24; new ids per copy;
# clients shared by copies 3g..3g+2 (three consecutive days).
COPY_ROWS = """
INSERT INTO clickstream_events ({columns})
SELECT {values}
FROM bench_template t CROSS JOIN generate_series(:first, :last) AS k
"""
_REPLACED = {
    "event_id": "md5(t.event_id::text || ':' || k)::uuid",
    "event_timestamp": (
        "t.event_timestamp - timestamptz '2026-11-24 13:00:00+00' "
        "+ (timestamptz '{first_day} 00:00:00+00' + (k % {days}) * interval '1 day' "
        "+ ((k / {days}) % 24) * interval '1 hour')"
    ),
    "client_id": "md5(t.client_id || ':' || (k / 3))::uuid::text",
    "session_id": "md5(t.session_id || ':' || k)::uuid::text",
    "user_id": "md5(t.user_id || ':' || (k / 3))::uuid::text",
}


def grow(engine: sa.Engine, template_rows: int, copies_done: int, rows: int) -> int:
    """Add template copies until the warehouse holds about `rows` events; the copies made."""
    copies = max(rows // template_rows, copies_done)
    values = ", ".join(
        _REPLACED.get(c, f"t.{c}").format(first_day=FIRST_DAY.isoformat(), days=DAYS)
        for c in EVENT_COLUMNS
    )
    statement = sa.text(COPY_ROWS.format(columns=", ".join(EVENT_COLUMNS), values=values))
    step = 25
    for first in range(copies_done, copies, step):
        with engine.begin() as conn:
            conn.execute(statement, {"first": first, "last": min(first + step, copies) - 1})
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("VACUUM ANALYZE clickstream_events")
    return copies


def refill_rollups(engine: sa.Engine) -> float:
    started = time.perf_counter()
    with engine.begin() as conn:
        for statement in [*REFILL, *_fill_statements()]:
            conn.execute(sa.text(statement))
    return time.perf_counter() - started


# --------------------------------------------------------------------------------- timings


def _timed(run: Callable[[], Any], repeats: int) -> dict[str, float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return {
        "median_ms": round(1000 * statistics.median(seconds), 2),
        "max_ms": round(1000 * max(seconds), 2),
        "runs": repeats,
    }


# The app's one statement as it sends it (REAL-PLATFORM.md §e; login filter ALL: no third
# predicate), bound by the driver like RPostgres binds $1 and $2.
APP_STATEMENT = (
    "SELECT event_timestamp, event_name, user_login_state, client_id, session_id, "
    "is_first_visit, context_product_id AS product_id, context_product_name AS product_name, "
    "context_product_category AS product_category, context_product_brand AS product_brand, "
    "context_product_price::numeric AS product_price, "
    "context_product_discount_price AS product_discount_price, "
    "context_product_url_path AS product_url_path "
    "FROM clickstream_events WHERE event_timestamp >= %s AND event_timestamp < %s"
)


def raw_statement(engine: sa.Engine, repeats: int) -> dict[str, Any]:
    """Q1 as the app sends it, every row fetched by psycopg2; and the same rows as COPY text
    only (the server's work and the transfer, without building Python objects)."""
    start = datetime.combine(RANGE[0], datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(RANGE[1] + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    rows = 0

    def fetch() -> None:
        nonlocal rows
        with engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            cursor.execute(APP_STATEMENT, (start, end))
            rows = 0
            # Every row becomes Python objects, as in R, but in chunks: 3.7M rows held at
            # once would take ~4 GB here for nothing the timing needs.
            while chunk := cursor.fetchmany(50_000):
                rows += len(chunk)
            cursor.close()

    def copy() -> None:
        with engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            statement = cursor.mogrify(APP_STATEMENT, (start, end)).decode()
            cursor.copy_expert(f"COPY ({statement}) TO STDOUT", io.StringIO())
            cursor.close()

    fetched = _timed(fetch, repeats)
    return {"rows": rows, "fetch": fetched, "copy_text": _timed(copy, repeats)}


def raw_kpis_sql(engine: sa.Engine) -> dict[str, Any]:
    q = queries()
    params = {"start_date": RANGE[0], "end_date": RANGE[1], "login_state": "ALL", "page_no": 1}

    def run() -> None:
        with engine.connect() as conn:
            for label in ("Q2-Q4", "Q5", "Q6", "Q7", "Q8", "Q9", "Q11"):
                conn.execute(sa.text(q[label]), params).all()

    return _timed(run, 1)


def function_times(engine: sa.Engine, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    statement = sa.text("SELECT * FROM clickstream_dashboard(:s, :e, :f)")
    with engine.connect() as conn:
        for login_state in FILTERS:
            params = {"s": RANGE[0], "e": RANGE[1], "f": login_state}
            conn.execute(statement, params).all()  # the session's first call plans it
            out[login_state] = _timed(
                lambda params=params: conn.execute(statement, params).all(),  # type: ignore[misc]
                repeats,
            )
            out[login_state]["rows"] = len(conn.execute(statement, params).all())
    return out


def raw_sample_page(engine: sa.Engine, repeats: int) -> dict[str, Any]:
    sql = sa.text(queries()["Q10"])
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        for page in (1, 50):
            params = {
                "start_date": RANGE[0],
                "end_date": RANGE[1],
                "login_state": "ALL",
                "page_no": page,
            }
            out[f"page_{page}"] = _timed(
                lambda params=params: conn.execute(sql, params).all(),  # type: ignore[misc]
                repeats,
            )
        plan = (
            conn.execute(sa.text("EXPLAIN " + queries()["Q10"]), {**params, "page_no": 1})
            .scalars()
            .all()
        )
    out["plan_uses_product_index"] = any("product_rows" in line for line in plan)
    return out


def recount_day(engine: sa.Engine, db: DatabaseSettings) -> dict[str, Any]:
    tables = tables_for(_settings_for(db))
    day = END_DAY - timedelta(days=1)

    def run() -> None:
        with engine.connect() as conn, conn.begin():
            difference = rebuild_day(conn, tables, day, apply=False)
            assert difference.is_empty(), "rollups out of step with the rows"

    return _timed(run, 1)


def sizes(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        out: dict[str, Any] = {}
        for table in (
            "clickstream_events",
            "clickstream_rollup_events",
            "clickstream_rollup_products",
            "clickstream_rollup_clients",
            "clickstream_rollup_client_gaps",
        ):
            rows, total = conn.execute(
                sa.text(f"SELECT count(*), pg_total_relation_size('{table}') FROM {table}")
            ).one()
            out[table] = {"rows": rows, "bytes": total}
        days = conn.execute(
            sa.text("SELECT count(DISTINCT day) FROM clickstream_rollup_clients")
        ).scalar_one()
    clients = out["clickstream_rollup_clients"]
    out["clients_per_day"] = {
        "days": days,
        "rows": round(clients["rows"] / days),
        "bytes": round(clients["bytes"] / days),
        "bytes_per_row": round(clients["bytes"] / clients["rows"], 1),
    }
    return out


def _settings_for(db: DatabaseSettings) -> Any:
    os.environ.setdefault("RAW_BUCKET_NAME", BUCKET)
    for name, value in {
        "DW_PG_HOST": db.host or "",
        "DW_PG_PORT": str(db.port),
        "DW_PG_USER": db.user or "",
        "DW_PG_DATABASE": db.database or "",
        "DW_PG_SSL": "disable",
    }.items():
        os.environ[name] = value
    return load_settings()


def growth(wh: Warehouse, args: argparse.Namespace, records: list[Any]) -> list[dict[str, Any]]:
    db = wh.create("bench_growth")
    engine = sa.create_engine(db.url(), poolclass=sa.NullPool)
    load_template(engine, records)
    results = []
    copies = 0
    try:
        for rows in args.sizes:
            started = time.perf_counter()
            copies = grow(engine, len(records), copies, rows)
            filled_s = time.perf_counter() - started
            refill_s = refill_rollups(engine)
            entry = {
                "rows": copies * len(records),
                "fill_s": round(filled_s, 1),
                "rollup_fill_s": round(refill_s, 1),
                "raw_statement": raw_statement(engine, args.raw_repeats),
                "raw_kpis_sql": raw_kpis_sql(engine),
                "function": function_times(engine, args.repeats),
                "raw_sample_page": raw_sample_page(engine, args.repeats),
                "recount_day": recount_day(engine, db),
                "sizes": sizes(engine),
            }
            print(json.dumps(entry), file=sys.stderr)
            results.append(entry)
    finally:
        engine.dispose()
        wh.drop("bench_growth")
    return results


# --------------------------------------------------------------------------------- load cost


class _Prefetched:
    """An ObjectSource over bodies already in memory (no S3 in the loop)."""

    def __init__(self, items: list[tuple[ObjectRef, bytes]]) -> None:
        self._items = items

    def list_objects(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectRef]:
        return (
            ref
            for ref, _ in self._items
            if ref.key.startswith(prefix) and (start_after is None or ref.key > start_after)
        )

    def fetch_many(self, refs: Any, stop: Any = None) -> Iterator[FetchedObject]:
        bodies = dict(self._items)
        return (FetchedObject(ref, bodies[ref]) for ref in refs)

    def close(self) -> None:
        pass


def _items(events: int, hour: datetime) -> list[tuple[ObjectRef, bytes]]:
    modified = hour + timedelta(minutes=59)
    objects = sorted(generate_hour(hour, events, malformed_ratio=0, seed=11), key=lambda o: o.key)
    return [(ObjectRef(o.key, len(o.body), modified), o.body) for o in objects]


@contextmanager
def rollups(on: bool) -> Iterator[None]:
    batch_module.apply_inserted = _REAL_APPLY if on else (lambda conn, tables, rows: None)  # type: ignore[assignment]
    try:
        yield
    finally:
        batch_module.apply_inserted = _REAL_APPLY


def _one_load(
    db: DatabaseSettings,
    items: list[tuple[ObjectRef, bytes]],
    hour: datetime,
    pretransform: bool,
    shard: Shard | None = None,
) -> tuple[float, float, int]:
    """(wall s, this process's CPU s, events inserted) of HourLoader._stream over these
    objects."""
    settings = _settings_for(db)
    engine = make_engine(settings.db)
    loader = HourLoader(settings, engine, _Prefetched(items))
    if pretransform:
        prepared = {
            ref.key: HourLoader._transform(loader, FetchedObject(ref, body)) for ref, body in items
        }
        loader._transform = lambda fetched: prepared.pop(fetched.ref.key)  # type: ignore[method-assign]
    job = HourJob(hour, "manual", shard)
    report = Report.new(
        hour_label(hour),
        hour_prefix(hour),
        "manual",
        str(uuid.uuid4()),
        100,
        shard.label() if shard else None,
    )
    with engine.connect():
        pass
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        loader._stream(job, report, None, None)
    finally:
        engine.dispose()
    return time.perf_counter() - wall0, time.process_time() - cpu0, report.inserted


def load_cost(wh: Warehouse, args: argparse.Namespace) -> dict[str, Any]:
    template = "bench_load_template"
    wh.create(template)
    hour = datetime(2026, 12, 7, 13, tzinfo=UTC)
    items = _items(args.load_events, hour)
    out: dict[str, Any] = {"events": None, "batch": 500}
    for stage, pretransform in (("db_stage", True), ("transform_and_db", False)):
        runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
        for n in range(args.load_repeats):
            for mode in ("on", "off") if n % 2 == 0 else ("off", "on"):
                db = wh.create(f"bench_load_{mode}", template=template)
                server0 = server_cpu(wh.postmaster)
                with rollups(mode == "on"):
                    wall, cpu, inserted = _one_load(db, items, hour, pretransform)
                server = wh.settled_cpu(f"bench_load_{mode}") - server0
                out["events"] = inserted
                runs[mode].append({"wall": wall, "cpu": cpu, "server_cpu": server})
                wh.drop(f"bench_load_{mode}")
        out[stage] = _on_off(runs)
        print(json.dumps({stage: out[stage]}), file=sys.stderr)
    out["concurrent"] = concurrent_writers(wh, args, template, items, hour)
    wh.drop(template)
    return out


def _on_off(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians of each measure, rollups on and off, and how much more `on` took."""
    out: dict[str, Any] = {
        "runs": {m: [{k: round(v, 3) for k, v in r.items()} for r in rs] for m, rs in runs.items()}
    }
    for measure in ("wall", "cpu", "server_cpu"):
        on = statistics.median(r[measure] for r in runs["on"])
        off = statistics.median(r[measure] for r in runs["off"])
        out[measure] = {
            "off_s": round(off, 3),
            "on_s": round(on, 3),
            "more_pct": round(100 * (on / off - 1), 1),
        }
    both_on = statistics.median(r["cpu"] + r["server_cpu"] for r in runs["on"])
    both_off = statistics.median(r["cpu"] + r["server_cpu"] for r in runs["off"])
    out["cpu_loader_and_server"] = {
        "off_s": round(both_off, 3),
        "on_s": round(both_on, 3),
        "more_pct": round(100 * (both_on / both_off - 1), 1),
    }
    return out


def concurrent_writers(
    wh: Warehouse,
    args: argparse.Namespace,
    template: str,
    items: list[tuple[ObjectRef, bytes]],
    hour: datetime,
) -> dict[str, Any]:
    """`--writers` threads, one shard of the same hour each (same day: the same rollup rows)."""
    out: dict[str, Any] = {"writers": args.writers}
    for mode in ("on", "off", "on", "off"):
        db = wh.create(f"bench_concurrent_{mode}", template=template)
        engine = sa.create_engine(db.url(), poolclass=sa.NullPool)
        with engine.connect() as conn:
            deadlocks0 = conn.execute(
                sa.text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        results: list[tuple[float, float, int]] = []

        def work(
            index: int,
            db: DatabaseSettings = db,
            results: list[tuple[float, float, int]] = results,
        ) -> None:
            results.append(_one_load(db, items, hour, True, Shard(index, args.writers)))

        server0, cpu0 = server_cpu(wh.postmaster), time.process_time()
        with rollups(mode == "on"):
            started = time.perf_counter()
            threads = [threading.Thread(target=work, args=(i,)) for i in range(args.writers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - started
        loader_cpu = time.process_time() - cpu0
        server = wh.settled_cpu(f"bench_concurrent_{mode}") - server0
        with engine.connect() as conn:
            deadlocks = (
                conn.execute(
                    sa.text(
                        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
                    )
                ).scalar_one()
                - deadlocks0
            )
            rows = conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one()
            counted = int(
                conn.execute(
                    sa.text("SELECT coalesce(sum(events), 0) FROM clickstream_rollup_events")
                ).scalar_one()
            )
        engine.dispose()
        wh.drop(f"bench_concurrent_{mode}")
        out.setdefault(mode, []).append(
            {
                "wall_s": round(wall, 3),
                "loader_cpu_s": round(loader_cpu, 3),
                "server_cpu_s": round(server, 3),
                "events": rows,
                "counted": counted,
                "deadlocks": deadlocks,
            }
        )
        print(json.dumps({"concurrent": mode, **out[mode][-1]}), file=sys.stderr)
    return out


# --------------------------------------------------------------------------------- migration


def migration(wh: Warehouse, args: argparse.Namespace, records: list[Any]) -> dict[str, Any]:
    db = wh.create("bench_migration", revision="0005_event_trigger")
    engine = sa.create_engine(db.url(), poolclass=sa.NullPool)
    try:
        load_template(engine, records)
        grow(engine, len(records), 0, args.migration_rows)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one()
        started = time.perf_counter()
        with engine.begin() as conn:
            command.upgrade(_alembic(conn), "head")
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
        wh.drop("bench_migration")
    return {"rows": rows, "upgrade_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000000,8000000,16000000")
    parser.add_argument("--template", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--raw-repeats", type=int, default=3)
    parser.add_argument("--load-events", type=int, default=20_000)
    parser.add_argument("--load-repeats", type=int, default=5)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--migration-rows", type=int, default=1_000_000)
    parser.add_argument("--skip", default="", help="comma-separated: growth, load, migration")
    parser.add_argument("--out", type=Path, default=RESULTS / "dashboard.json")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    skip = set(args.skip.split(",")) - {""}
    wh = Warehouse()
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "range": [RANGE[0].isoformat(), RANGE[1].isoformat()],
        "template_events": args.template,
    }
    try:
        records = template_records(args.template)
        if "migration" not in skip:
            results["migration"] = migration(wh, args, records)
            print(json.dumps(results["migration"]), file=sys.stderr)
        if "load" not in skip:
            results["load_cost"] = load_cost(wh, args)
        if "growth" not in skip:
            results["growth"] = growth(wh, args, records)
    finally:
        wh.close()
    results["loadavg_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(render(results))


def render(results: dict[str, Any]) -> str:
    lines = []
    if "growth" in results:
        lines += [
            "| rows in the table | raw statement: rows, fetched (psycopg2) | same rows as COPY "
            "text | queries.sql Q2-Q9, Q11 on the raw rows | clickstream_dashboard() ALL / "
            "logged_in / anonymous: median (max) | Q10 page 1 / 50 | recount one day | client "
            "rollup per day |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for g in results["growth"]:
            raw, f, page = g["raw_statement"], g["function"], g["raw_sample_page"]
            per_day = g["sizes"]["clients_per_day"]
            function = " / ".join(
                f"{f[x]['median_ms']:.1f} ({f[x]['max_ms']:.1f})" for x in FILTERS
            )
            lines.append(
                f"| {g['rows']:,} | {raw['rows']:,}, {raw['fetch']['median_ms'] / 1000:.1f} s "
                f"| {raw['copy_text']['median_ms'] / 1000:.1f} s "
                f"| {g['raw_kpis_sql']['median_ms'] / 1000:.1f} s | {function} ms "
                f"| {page['page_1']['median_ms']:.1f} / {page['page_50']['median_ms']:.1f} ms "
                f"| {g['recount_day']['median_ms'] / 1000:.1f} s "
                f"| {per_day['rows']:,} rows, {per_day['bytes'] / 1e6:.1f} MB |"
            )
    if "load_cost" in results:
        lc = results["load_cost"]
        lines += [
            "",
            f"| {lc['events']:,} events, batches of 500, median of runs | rollups off | rollups on "
            "| more |",
            "|---|---|---|---|",
        ]
        for stage in ("db_stage", "transform_and_db"):
            for measure in ("wall", "cpu", "server_cpu", "cpu_loader_and_server"):
                m = lc[stage][measure]
                lines.append(
                    f"| {stage}: {measure} s | {m['off_s']} | {m['on_s']} | {m['more_pct']:+.1f}% |"
                )
    if "migration" in results:
        m = results["migration"]
        lines += ["", f"alembic upgrade 0005 -> head on {m['rows']:,} rows: {m['upgrade_s']} s"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
