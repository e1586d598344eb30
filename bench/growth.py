"""The loader against warehouses of growing size (issue 22): `make bench-growth`.

    .venv/bin/python bench/growth.py                       # 0, 2M, 8M, 16M rows already there
    .venv/bin/python bench/growth.py --quick               # 0, 1M
    .venv/bin/python bench/growth.py --sizes 0,4M --name trial
    .venv/bin/python bench/growth.py --ref main --tree .   # before/after, paired, one run
    .venv/bin/python bench/growth.py --render bench/results/growth_before.json

Every other benchmark loads into an empty warehouse. This one loads the same real-shaped
20,000-object hour (bench/workload.py's 20k hour, `tools.demo.traffic.generate_hour`, ~1%
malformed) into a warehouse that already holds 0, then 2M, 8M, 16M events of the 30 days before
that hour, grown in place, and reports per event loaded: WAL bytes and PostgreSQL's CPU, the
loader's events/s, and the dashboard's 7-day statement (rows, time, EXPLAIN) at each size.

Per tree under test (`--tree DIR`, `--ref REF`; default this checkout): its own embedded
PostgreSQL 18 with default settings (fsync, full_page_writes and data checksums on), migrated by
that tree's `alembic upgrade head`; s3rver on 127.0.0.1 holds the hour (written once, shared).
One size of one tree:

1. pre-fill up to the size (SQL on the server, see `prefill`), then VACUUM (ANALYZE) the tables,
   CHECKPOINT;
2. PostgreSQL's CPU (see `pg_cpu_seconds`), `pg_current_wal_lsn()` and `pg_stat_wal`, then
   `clickstream-loader run --hour H --json` of the tree, defaults only, as a subprocess; the
   same three again once its backend has gone; WAL bytes = `pg_wal_lsn_diff`;
3. the dashboard's 7-day statement (Q1 of queries.sql, window ending on H's date, login 'ALL'),
   3 times, and once under EXPLAIN (ANALYZE, BUFFERS); `clickstream_dashboard(...)` too when
   the warehouse has that function (issue 25);
4. delete what the run wrote (the hour's events, meta, completion, ledger and quarantine
   rows), so the next size loads the same hour into the same state and the table holds
   exactly the size stated.

With two or more trees, each size runs on every tree before the next size (order alternating
from size to size), so each pair sees the same machine. Writes bench/results/growth_<name>.json
and .md. See bench/README.md, "Growth".
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import psycopg2  # noqa: E402
import psycopg2.extensions  # noqa: E402
from run import (  # noqa: E402
    S3RVER_AWS_ENV,
    _loadavg,
    _versions,
    case_env,
    parse_size,
    verify_direct_write,
    verify_fast_listing,
)
from servers import WORK, S3rver, ensure_s3rver, s3rver_server, write_objects  # noqa: E402
from workload import BUCKET, MALFORMED_RATIO, HourSpec  # noqa: E402

from loader.window import hour_prefix  # noqa: E402
from tools.demo.dashboard import queries  # noqa: E402
from tools.demo.traffic import generate_hour  # noqa: E402
from tools.servers import LocalPostgres, start_embedded_postgres  # noqa: E402

#: bench/workload.py's 20k hour: the same objects `make bench` loads at 20k.
DEFAULT_HOUR = datetime(2026, 11, 24, 6, tzinfo=UTC)
OBJECTS = 20_000
#: The pre-filled events cover the DAYS * 24 hours right before the loaded hour.
DAYS = 30
DEFAULT_SIZES = "0,2M,8M,16M"
QUICK_SIZES = "0,1M"
#: Pre-fill statements of about this many rows each (one transaction per chunk).
CHUNK_ROWS = 250_000
#: A pre-filled shopper (client id, and its user id) comes back about this often in 30 days.
VISITS_PER_CLIENT = 10
DASHBOARD_REPEATS = 3
DATABASE = "growth"
TEMPLATE_DATABASE = "growth_template"
TEMPLATE_SCHEMA = "bench_growth"
EVENTS, META = "clickstream_events", "clickstream_ingest_meta"
#: Revision 0006's claims: filled when the table exists (empty column list otherwise).
CLAIMS = "clickstream_event_claims"
LOADED, RUNS, QUARANTINE = (
    "clickstream_loaded_objects",
    "clickstream_load_runs",
    "clickstream_quarantine",
)
TABLES = (EVENTS, META, LOADED, RUNS, QUARANTINE)
PREFILL_LOADER_VERSION = "bench-growth-prefill"

# Q1 of tools/demo/queries.sql (the real platform's, byte for byte): the one statement the
# dashboard sends, every 10 s per open session, its window bound as psycopg2 parameters.
Q1 = re.sub(
    r"(?<!:):(\w+)",
    r"%(\1)s",
    "".join(line for line in queries()["Q1"].splitlines(True) if not line.startswith("--")),
)


@dataclass(frozen=True)
class DashboardStatement:
    """A dashboard statement timed at every size; `requires` names a function it needs (the
    statement is skipped, and says so, on a warehouse without it)."""

    name: str
    label: str
    sql: str
    requires: str | None = None
    explain: bool = False


#: Add a case here: it is timed at every size, on every tree that has what it requires.
DASHBOARD = (
    DashboardStatement(
        "q1_raw", "7-day statement (Q1, every row to the client)", Q1.strip(), explain=True
    ),
    DashboardStatement(
        "rollups",
        "clickstream_dashboard() (issue 25: every KPI from rollups)",
        "SELECT * FROM clickstream_dashboard(%(start_date)s::date, %(end_date)s::date, "
        "%(login_state)s)",
        requires="clickstream_dashboard",
    ),
)


# ------------------------------------------------------------------------------ trees


@dataclass
class Tree:
    """A checkout whose loader and migrations are measured."""

    label: str
    path: Path
    code: str


def _git(cwd: Path, *argv: str) -> str:
    done = subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True)
    return done.stdout.strip()


def tree_from_dir(path: Path) -> Tree:
    path = path.resolve()
    for needed in ("loader/cli.py", "alembic.ini", "migrations"):
        if not (path / needed).exists():
            raise SystemExit(f"--tree {path}: no {needed} (not a clickstream-loader checkout)")
    head = _git(path, "rev-parse", "--short", "HEAD")
    if not head:
        return Tree(path.name, path, f"{path} (not a git checkout)")
    last = _git(path, "log", "-1", "--format=%h", "--", "loader", "migrations")
    dirty = _git(path, "status", "--porcelain", "--", "loader", "migrations")
    changed = ", ".join(line[3:] for line in dirty.splitlines())
    code = f"commit {head} (loader/ and migrations/ as of {last})"
    code += f" + uncommitted changes in {changed}" if changed else ""
    return Tree(f"{path.name}@{head}", path, code)


def tree_from_ref(ref: str) -> Tree:
    """`git archive REF` of this repository, unpacked under bench/.work (no worktree made)."""
    sha = _git(ROOT, "rev-parse", "--verify", f"{ref}^{{commit}}")
    if not sha:
        raise SystemExit(f"--ref {ref}: not a commit of {ROOT}")
    target = WORK / f"tree-{sha[:12]}"
    if not (target / "loader" / "cli.py").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", sha], cwd=ROOT, capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(target, filter="data")
    return Tree(ref, target, f"commit {sha[:7]} ({ref}, git archive)")


def tree_env(tree: Tree, base: dict[str, str]) -> dict[str, str]:
    """The tree's packages first on the path: its `loader` and its migrations' env.py."""
    return {**base, "PYTHONPATH": str(tree.path)}


def check_tree_import(tree: Tree, env: dict[str, str]) -> str:
    """Prove the subprocesses import the tree's loader, not this venv's editable install."""
    done = subprocess.run(
        [sys.executable, "-c", "import loader; print(loader.__file__)"],
        cwd=tree.path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    where = Path(done.stdout.strip()).resolve()
    if not where.is_relative_to(tree.path):
        raise SystemExit(f"{tree.label}: the loader imports from {where}, not from {tree.path}")
    return str(where)


# ------------------------------------------------------------------------------ PostgreSQL


@contextmanager
def embedded_postgres() -> Iterator[LocalPostgres]:
    data_dir = Path(tempfile.mkdtemp(prefix="pg-growth-", dir=WORK))
    pg = start_embedded_postgres(data_dir)
    try:
        yield pg
    finally:
        pg.server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


def connect(pg: LocalPostgres, database: str, *, autocommit: bool = True) -> Any:
    conn = psycopg2.connect(
        host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=database
    )
    conn.autocommit = autocommit
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
    if not autocommit:
        conn.commit()
    return conn


def scalar(conn: Any, sql: str, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
        return None if row is None else row[0]


def create_database(pg: LocalPostgres, name: str, *, create: bool = True) -> None:
    """(Re)create a database; with create=False only drop it."""
    conn = connect(pg, "postgres")
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if create:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def migrate(tree: Tree, pg: LocalPostgres, database: str) -> None:
    """`alembic upgrade head` of the tree, in its own process, as a DBA runs it."""
    env = tree_env(tree, {**os.environ, **pg.env(database)})
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(tree.path / "alembic.ini"), "upgrade", "head"],
        cwd=tree.path,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tree.label}: alembic upgrade head failed:\n{done.stderr[-3000:]}")


def postgres_settings(conn: Any) -> dict[str, str]:
    names = (
        "server_version",
        "data_checksums",
        "fsync",
        "full_page_writes",
        "synchronous_commit",
        "wal_level",
        "wal_compression",
        "shared_buffers",
        "max_wal_size",
        "checkpoint_timeout",
        "max_parallel_workers_per_gather",
        "autovacuum",
    )
    return {n: str(scalar(conn, f"SHOW {n}")) for n in names}


def pg_cpu_seconds(postmaster: int) -> float:
    """user+sys CPU of the whole server so far: the postmaster's own, what its children that
    have exited used (cutime+cstime: the postmaster reaps every backend, parallel worker and
    auxiliary process), and what its live children have used (utime+stime from
    /proc/<pid>/stat of every process whose parent is the postmaster). The difference of two
    readings is the CPU every PostgreSQL process spent in between, including backends that
    started and ended in between (the loader's)."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        pid, ppid = int(entry.name), int(fields[1])
        if pid == postmaster or ppid == postmaster:
            # fields[11:15]: utime, stime, cutime, cstime (stat(5) fields 14-17)
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def columns(conn: Any, table: str, schema: str = "public") -> list[str]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, table),
        )
        return [row[0] for row in cur.fetchall()]


def function_exists(conn: Any, name: str) -> bool:
    return bool(scalar(conn, "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = %s)", (name,)))


def rebuild_rollups(run: TreeRun, first: datetime, last: datetime) -> dict[str, Any] | None:
    """`clickstream-loader rollup` of the tree over the days from `first` to `last`, when the
    warehouse has the dashboard's rollups (issue 25): rows written or deleted here with SQL are
    then counted in them as the loader would have counted them, so `clickstream_dashboard()`
    answers for the rows the table holds and the load maintains rollups of their real size."""
    if not function_exists(run.admin, "clickstream_dashboard"):
        return None
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from loader.cli import main; main()",
            "rollup",
            "--start",
            first.strftime("%Y-%m-%dT%H"),
            "--end",
            last.strftime("%Y-%m-%dT%H"),
            "--json",
        ],
        cwd=run.tree.path,
        env=run.env,
        capture_output=True,
        text=True,
        timeout=7200,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{run.tree.label}: rollup failed ({done.returncode}):\n{done.stderr}")
    return {"seconds": round(time.perf_counter() - started, 1), "first": str(first.date())}


def client_pids(conn: Any) -> list[int]:
    with conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'")
        return [row[0] for row in cur.fetchall()]


def wait_for_sessions_to_end(conn: Any, ours: list[int], timeout_s: float = 15.0) -> None:
    """Until no client session but `ours` is connected: a backend flushes its statistics (and
    its CPU becomes the postmaster's cutime) when it exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        others = scalar(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> ALL(%s)",
            (ours,),
        )
        if not others:
            break
        time.sleep(0.1)
    time.sleep(0.3)


def wal_stats(conn: Any) -> dict[str, int]:
    scalar(conn, "SELECT pg_stat_clear_snapshot()")
    with conn.cursor() as cur:
        cur.execute("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")
        records, fpi, wal = cur.fetchone()
    return {"records": int(records), "fpi": int(fpi), "bytes": int(wal)}


def wal_by_relation(conn: Any, start: str, end: str) -> list[dict[str, Any]]:
    """Where the load's WAL went: bytes and full-page images per relation between two LSNs
    (pg_walinspect, contrib; empty where the server lacks it). A partition or index partition
    counts under its partitioned parent, so the table says which table or index grows."""
    with conn.cursor() as cur:
        try:
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        except psycopg2.Error:
            return []  # not installed with this server
        cur.execute(
            "WITH b AS (SELECT relfilenode, CASE WHEN reltablespace = (SELECT dattablespace "
            "FROM pg_database WHERE datname = current_database()) THEN 0 ELSE reltablespace END "
            "AS tablespace, block_data_length + block_fpi_length AS bytes, "
            "block_fpi_length > 0 AS fpi "
            "FROM pg_get_wal_block_info(%s::pg_lsn, %s::pg_lsn, false) "
            "WHERE reldatabase = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())), "
            "r AS (SELECT pg_filenode_relation(tablespace, relfilenode) AS rel, bytes, fpi FROM b) "
            "SELECT coalesce(pg_partition_root(rel)::regclass::text, rel::regclass::text, "
            "'(other)') AS relation, sum(bytes)::bigint, count(*) FILTER (WHERE fpi) "
            "FROM r GROUP BY 1 ORDER BY 2 DESC",
            (start, end),
        )
        return [
            {"relation": name, "bytes": int(size), "fpi": int(fpi)}
            for name, size, fpi in cur.fetchall()
        ]


def table_activity(conn: Any) -> dict[str, dict[str, int]]:
    """Autovacuum/autoanalyze counts of the tables: a pass during the load is in its numbers."""
    scalar(conn, "SELECT pg_stat_clear_snapshot()")
    with conn.cursor() as cur:
        cur.execute(
            "SELECT relname, autovacuum_count, autoanalyze_count FROM pg_stat_user_tables "
            "WHERE schemaname = 'public'"
        )
        return {name: {"autovacuum": av, "autoanalyze": aa} for name, av, aa in cur.fetchall()}


def checkpoints(conn: Any) -> int:
    """Checkpoints started so far (timed and requested): one during the load would make it
    write the pages it touches again whole."""
    scalar(conn, "SELECT pg_stat_clear_snapshot()")
    return int(scalar(conn, "SELECT num_timed + num_requested FROM pg_stat_checkpointer"))


def relation_sizes_mb(conn: Any) -> dict[str, float]:
    """pg_total_relation_size (heap, TOAST, indexes) of each table, partitions included."""
    out = {}
    for table in TABLES:
        size = scalar(
            conn,
            "SELECT coalesce(sum(pg_total_relation_size(r)), 0) FROM ("
            "SELECT to_regclass(%(t)s) AS r "
            "UNION SELECT relid FROM pg_partition_tree(to_regclass(%(t)s))) x",
            {"t": table},
        )
        out[table] = round(int(size or 0) / 2**20, 1)
    return out


# ------------------------------------------------------------------------------ the template


def build_template(tree: Tree, pg: LocalPostgres, s3: S3rver, hour: datetime) -> dict[str, Any]:
    """Load the hour with the tree's own loader into a scratch database, and copy what it wrote
    into unlogged tables of the measured database (schema bench_growth): the rows the pre-fill
    repeats. So every pre-filled column has the loader's real shapes and widths (event-name mix,
    product columns, element and properties JSON, URLs, user agents, the login mix). Also the
    warm-up: s3rver, the page cache and the loader's imports."""
    create_database(pg, TEMPLATE_DATABASE)
    migrate(tree, pg, TEMPLATE_DATABASE)
    env = tree_env(tree, case_env(s3, pg, TEMPLATE_DATABASE, {}))
    run = run_loader(tree, env, hour)
    source = connect(pg, TEMPLATE_DATABASE)
    target = connect(pg, DATABASE)
    try:
        event_cols, meta_cols = columns(source, EVENTS), columns(source, META)
        with source.cursor() as cur:
            cur.execute(
                "CREATE TABLE growth_idx AS SELECT e.event_id, "
                "row_number() OVER (ORDER BY e.event_timestamp, e.event_id)::int AS t_idx, "
                "least(greatest(extract(epoch FROM e.event_timestamp - %s) / 3600.0, 0), "
                "0.999999)::float8 AS t_frac "
                "FROM clickstream_events e "
                "WHERE EXISTS (SELECT 1 FROM clickstream_ingest_meta m "
                "WHERE m.event_id = e.event_id)",
                (hour,),
            )
        with target.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {TEMPLATE_SCHEMA} CASCADE")
            cur.execute(f"CREATE SCHEMA {TEMPLATE_SCHEMA}")
            cur.execute(
                f"CREATE UNLOGGED TABLE {TEMPLATE_SCHEMA}.t_events "
                f"(t_idx int PRIMARY KEY, t_frac float8 NOT NULL, LIKE public.{EVENTS})"
            )
            cur.execute(
                f"CREATE UNLOGGED TABLE {TEMPLATE_SCHEMA}.t_meta "
                f"(t_idx int PRIMARY KEY, LIKE public.{META})"
            )
        for table, cols, short in ((EVENTS, event_cols, "t_events"), (META, meta_cols, "t_meta")):
            extra = ["t_idx", "t_frac"] if short == "t_events" else ["t_idx"]
            select = ", ".join([*(f"i.{c}" for c in extra), *(f'x."{c}"' for c in cols)])
            buffer = io.BytesIO()
            with source.cursor() as cur:
                cur.copy_expert(
                    f"COPY (SELECT {select} FROM {table} x JOIN growth_idx i USING (event_id)) "
                    "TO STDOUT",
                    buffer,
                )
            buffer.seek(0)
            names = ", ".join([*extra, *(f'"{c}"' for c in cols)])
            with target.cursor() as cur:
                cur.copy_expert(f"COPY {TEMPLATE_SCHEMA}.{short} ({names}) FROM STDIN", buffer)
        with target.cursor() as cur:
            cur.execute(f"ANALYZE {TEMPLATE_SCHEMA}.t_events, {TEMPLATE_SCHEMA}.t_meta")
            cur.execute(
                f"SELECT count(*), count(*) FILTER (WHERE user_login_state = 'logged_in'), "
                f"count(*) FILTER (WHERE context_product_id IS NOT NULL), "
                f"count(DISTINCT session_id), count(DISTINCT client_id) "
                f"FROM {TEMPLATE_SCHEMA}.t_events"
            )
            rows, logged_in, product, sessions, clients = cur.fetchone()
            cur.execute(
                f"SELECT event_name, count(*) FROM {TEMPLATE_SCHEMA}.t_events "
                "GROUP BY 1 ORDER BY 2 DESC, 1"
            )
            mix = {name: n for name, n in cur.fetchall()}
            meta_rows = scalar(target, f"SELECT count(*) FROM {TEMPLATE_SCHEMA}.t_meta")
    finally:
        source.close()
        target.close()
    create_database(pg, TEMPLATE_DATABASE, create=False)  # only the copies are needed now
    if meta_rows != rows or rows != run["report"]["inserted"]:
        raise RuntimeError(
            f"template: {rows} events, {meta_rows} meta rows, loader inserted "
            f"{run['report']['inserted']}"
        )
    return {
        "rows": rows,
        "event_names": mix,
        "logged_in_share": round(logged_in / rows, 3),
        "product_rows_share": round(product / rows, 3),
        "events_per_session": round(rows / sessions, 2),
        "events_per_client": round(rows / clients, 2),
        "load": {k: run[k] for k in ("wall_s", "loader_cpu_s")},
    }


# ------------------------------------------------------------------------------ pre-fill


def _remap(column: str, key: str) -> str:
    """A new identity per (value, key): same-shaped text (a UUID), NULL stays NULL."""
    return (
        f"CASE WHEN t.{column} IS NULL THEN NULL "
        f"ELSE md5(t.{column} || ':' || %(salt)s || ':' || ({key})::text)::uuid::text END"
    )


#: Pre-fill expressions of the columns that must differ per row (`c` is the chunk: new ids,
#: timestamps, keys; `t` the template row). Every other column is the template's value.
EVENT_COLUMNS = {
    "event_id": "c.event_id",
    "event_timestamp": "c.ts",
    "client_timestamp": "CASE WHEN t.client_timestamp IS NULL THEN NULL ELSE c.ts END",
    "session_id": _remap("session_id", "c.k"),
    "client_id": _remap("client_id", "c.k %% %(clients)s"),
    "user_id": _remap("user_id", "c.k %% %(clients)s"),
    "loaded_at": "c.loaded_at",
}
META_COLUMNS = {
    "event_id": "c.event_id",
    "event_timestamp": "c.ts",
    "received_at": "c.ts",
    "s3_key": "c.s3_key",
    "s3_bucket": "%(bucket)s",
    "s3_last_modified": "c.ts",
    "payload_sha256": "sha256(convert_to(c.event_id::text, 'UTF8'))",
    "ingest_metadata": (
        "CASE WHEN t.ingest_metadata ? 'receivedAt' THEN jsonb_set(t.ingest_metadata, "
        "'{receivedAt}', to_jsonb(to_char(c.ts, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))) "
        "ELSE t.ingest_metadata END"
    ),
    "loaded_at": "c.loaded_at",
}
LOADED_COLUMNS = {
    "s3_key": "c.s3_key",
    "s3_bucket": "%(bucket)s",
    "hour": "c.hour",
    "events": "1",
    "meta_rows": "1",
    "quarantined": "0",
    "s3_last_modified": "c.ts",
    "run_id": "c.run_id",
    "completed_at": "c.loaded_at",
}
RUN_ID_SQL = "md5('bench-growth-run:' || to_char({hour}, 'YYYY-MM-DD\"T\"HH24'))::uuid"


def _select_list(target_columns: list[str], overrides: dict[str, str], *, template: bool) -> str:
    out = []
    for column in target_columns:
        if column in overrides:
            out.append(overrides[column])
        elif template:
            out.append(f't."{column}"')
        else:
            raise RuntimeError(f"pre-fill: no value for {column}; teach bench/growth.py")
    return ", ".join(out)


def _quoted(cols: list[str]) -> str:
    return ", ".join(f'"{c}"' for c in cols)


@dataclass
class Prefill:
    """One growth step: `added` rows over the DAYS before `hour`, as `copies` copies of the
    template (the last one `last_copy_rows` of its rows, evenly picked), each stretched over
    its share of the DAYS (so the rows are spread evenly up to the hour)."""

    hour: datetime
    added: int
    template_rows: int
    salt: str
    copies: int = field(init=False)
    last_copy_rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.copies = math.ceil(self.added / self.template_rows)
        self.last_copy_rows = self.added - (self.copies - 1) * self.template_rows

    @property
    def start(self) -> datetime:
        return self.hour - timedelta(days=DAYS)

    def params(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "seconds_per_row": DAYS * 86400 / self.added,
            "template_rows": self.template_rows,
            "copies": self.copies,
            "last_rows": self.last_copy_rows,
            "clients": max(1, round(self.copies / VISITS_PER_CLIENT)),
            "salt": self.salt,
            "bucket": BUCKET,
            "version": PREFILL_LOADER_VERSION,
        }


def prefill(conn: Any, step: Prefill) -> dict[str, Any]:
    """Add `step.added` events (and their meta and completion rows) with SQL on the server.

    Rows: the template's rows again with new random v4 event ids (gen_random_uuid()), times
    spread evenly over the DAYS before the hour (each copy of the template covers its share of
    them, its events in their order and relative spacing; the last copy ends right before the
    hour, so the hour's own day holds rows up to it), new session ids per copy, client and user
    ids that come back about VISITS_PER_CLIENT times in the month, new S3 keys in the hour
    folder of the event's time, received_at = event_timestamp, loaded_at one hour later; every
    other column as the loader wrote it for the template. Inserted in time order, chunk by
    chunk, through every index, like hourly loads. Each pre-filled hour gets a `complete`
    scheduled run in the ledger and each object its clickstream_loaded_objects row, as the
    loader leaves them. Columns come from information_schema, so a schema with more columns
    (issue 22's meta.event_timestamp) fills too; clickstream_ensure_partitions(first, last)
    is called first when it exists."""
    started = time.perf_counter()
    params = step.params()
    with conn.cursor() as cur:
        if function_exists(conn, "clickstream_ensure_partitions"):
            cur.execute(
                "SELECT clickstream_ensure_partitions(%s::date, %s::date)",
                (step.start.date(), step.hour.date()),
            )
        _ledger_rows(cur, conn, step)
    conn.commit()
    event_cols, meta_cols = columns(conn, EVENTS), columns(conn, META)
    loaded_cols = columns(conn, LOADED)
    per_chunk = max(1, CHUNK_ROWS // step.template_rows)
    seconds: dict[str, float] = {}
    for first in range(0, step.copies, per_chunk):
        last = min(step.copies, first + per_chunk) - 1
        with conn.cursor() as cur:

            def timed(what: str, sql: str, args: dict[str, Any], cur: Any = cur) -> None:
                began = time.perf_counter()
                cur.execute(sql, args)
                seconds[what] = seconds.get(what, 0.0) + time.perf_counter() - began

            timed(
                "rows",
                "CREATE TEMP TABLE growth_chunk ON COMMIT DROP AS "
                "SELECT z.*, "
                "'events/' || to_char(z.ts, 'YYYY/MM/DD/HH24') || '/event-' "
                "|| gen_random_uuid() || '.json' AS s3_key, "
                "date_trunc('hour', z.ts) AS hour, "
                "date_trunc('hour', z.ts) + interval '1 hour 4 minutes' AS loaded_at, "
                + RUN_ID_SQL.format(hour="date_trunc('hour', z.ts)")
                + " AS run_id FROM ("
                "SELECT gen_random_uuid() AS event_id, t.t_idx, g.k, "
                # milliseconds, as the ingest Lambda's receivedAt
                "date_trunc('milliseconds', %(start)s::timestamptz + make_interval(secs => "
                "(g.k * %(template_rows)s + t.t_frac * CASE WHEN g.k < %(copies)s - 1 "
                "THEN %(template_rows)s ELSE %(last_rows)s END) * %(seconds_per_row)s)) AS ts "
                "FROM generate_series(%(first)s, %(last)s) g(k) "
                f"JOIN {TEMPLATE_SCHEMA}.t_events t ON g.k < %(copies)s - 1 "
                # the last copy: last_rows of the template's rows, evenly picked
                "OR t.t_idx::bigint * %(last_rows)s / %(template_rows)s "
                "> (t.t_idx - 1)::bigint * %(last_rows)s / %(template_rows)s) z",
                {**params, "first": first, "last": last},
            )
            timed(
                EVENTS,
                f"INSERT INTO {EVENTS} ({_quoted(event_cols)}) "
                f"SELECT {_select_list(event_cols, EVENT_COLUMNS, template=True)} "
                f"FROM growth_chunk c JOIN {TEMPLATE_SCHEMA}.t_events t USING (t_idx) "
                "ORDER BY c.ts",
                params,
            )
            timed(
                META,
                f"INSERT INTO {META} ({_quoted(meta_cols)}) "
                f"SELECT {_select_list(meta_cols, META_COLUMNS, template=True)} "
                f"FROM growth_chunk c JOIN {TEMPLATE_SCHEMA}.t_meta t USING (t_idx) "
                "ORDER BY c.ts",
                params,
            )
            if columns(conn, CLAIMS):
                # Both claims of every event (revision 0006), as the loader leaves them.
                timed(
                    CLAIMS,
                    f"INSERT INTO {CLAIMS} (window_start, event_id, event_timestamp) "
                    "SELECT date_bin('2 hours', c.ts, g.origin), c.event_id, c.ts "
                    "FROM growth_chunk c CROSS JOIN (VALUES "
                    "(TIMESTAMPTZ '2000-01-01 00:00:00+00'), "
                    "(TIMESTAMPTZ '2000-01-01 01:00:00+00')) g(origin) ORDER BY 1, 2",
                    params,
                )
            if loaded_cols:
                timed(
                    LOADED,
                    f"INSERT INTO {LOADED} ({_quoted(loaded_cols)}) "
                    f"SELECT {_select_list(loaded_cols, LOADED_COLUMNS, template=False)} "
                    "FROM growth_chunk c ORDER BY c.ts",
                    params,
                )
            timed(
                RUNS,
                f"UPDATE {RUNS} r SET objects_listed = r.objects_listed + x.n, "
                "events_read = r.events_read + x.n, inserted = r.inserted + x.n, "
                "newest_event_at = greatest(r.newest_event_at, x.newest) "
                "FROM (SELECT run_id, count(*)::int AS n, max(ts) AS newest "
                "FROM growth_chunk GROUP BY run_id) x WHERE r.run_id = x.run_id",
                {},
            )
        began = time.perf_counter()
        conn.commit()
        seconds["commit"] = seconds.get("commit", 0.0) + time.perf_counter() - began
        done = min((last + 1) * step.template_rows, step.added)
        rate = done / (time.perf_counter() - started)
        print(f"     pre-fill {done:,}/{step.added:,} rows ({rate:,.0f}/s)", flush=True)
    return {
        "added": step.added,
        "copies_of_template": step.copies,
        "seconds_by_statement": {k: round(v, 1) for k, v in seconds.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _ledger_rows(cur: Any, conn: Any, step: Prefill) -> None:
    """One complete scheduled run per pre-filled hour (once; later steps add to its counts)."""
    revision = scalar(conn, "SELECT version_num FROM alembic_version")
    have = set(columns(conn, RUNS))
    values = {
        "run_id": RUN_ID_SQL.format(hour="h"),
        "hour": "h",
        "trigger": "'schedule'",
        "started_at": "h + interval '1 hour 1 minute'",
        "finished_at": "h + interval '1 hour 4 minutes'",
        "state": "'complete'",
        "loader_version": "%(version)s",
        "db_revision": "%(revision)s",
    }
    names = [n for n in values if n in have]
    cur.execute(
        f"INSERT INTO {RUNS} ({_quoted(names)}) "
        f"SELECT {', '.join(values[n] for n in names)} "
        "FROM generate_series(%(start)s::timestamptz, %(hour)s::timestamptz - interval '1 hour', "
        "interval '1 hour') g(h) ON CONFLICT DO NOTHING",
        {**step.params(), "hour": step.hour, "revision": revision},
    )


def delete_hour(conn: Any, hour: datetime) -> dict[str, int]:
    """Remove what the measured run wrote: the hour's events and meta rows, its completion,
    quarantine and ledger rows. The pre-fill never writes into the hour itself."""
    prefix = hour_prefix(hour) + "%"
    end = hour + timedelta(hours=1)
    deleted = {}
    with conn.cursor() as cur:
        statements = [
            (LOADED, f"DELETE FROM {LOADED} WHERE s3_key LIKE %(prefix)s"),
            (QUARANTINE, f"DELETE FROM {QUARANTINE} WHERE hour = %(hour)s"),
            (META, f"DELETE FROM {META} WHERE s3_key LIKE %(prefix)s"),
            (
                EVENTS,
                f"DELETE FROM {EVENTS} WHERE event_timestamp >= %(hour)s "
                "AND event_timestamp < %(end)s",
            ),
            (RUNS, f"DELETE FROM {RUNS} WHERE hour = %(hour)s"),
        ]
        for table, sql in statements:
            cur.execute(sql, {"prefix": prefix, "hour": hour, "end": end})
            deleted[table] = cur.rowcount
    conn.commit()
    return deleted


def vacuum_and_checkpoint(conn: Any) -> float:
    """VACUUM (ANALYZE) every table, then CHECKPOINT: the state a warehouse grown by hourly
    loads is in (autovacuum has passed; statistics are current), and without which an
    insert-triggered autovacuum and the first readers' hint-bit writes (WAL-logged: data
    checksums are on) would land in the measured load."""
    started = time.perf_counter()
    with conn.cursor() as cur:
        # Every table of the schema the tree made (the claims and the rollups included; a
        # partitioned table's VACUUM covers its partitions), not only the five every tree has.
        cur.execute(
            "SELECT string_agg(quote_ident(relname), ', ' ORDER BY relname) FROM pg_class "
            "WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') "
            "AND NOT relispartition"
        )
        cur.execute(f"VACUUM (ANALYZE) {cur.fetchone()[0]}")
        cur.execute("CHECKPOINT")
    return round(time.perf_counter() - started, 1)


def counts(conn: Any) -> dict[str, int]:
    return {t: int(scalar(conn, f"SELECT count(*) FROM {t}")) for t in (EVENTS, META, LOADED)}


# ------------------------------------------------------------------------------ measuring


def run_loader(tree: Tree, env: dict[str, str], hour: datetime) -> dict[str, Any]:
    """`clickstream-loader run --hour H --json` of the tree, defaults only."""
    command = [
        sys.executable,
        "-c",
        "from loader.cli import main; main()",
        "run",
        "--hour",
        hour.strftime("%Y-%m-%dT%H"),
        "--json",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=tree.path, env=env, capture_output=True, text=True, timeout=3600
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(
            f"{tree.label}: loader failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"report": report, "wall_s": round(wall, 2), "loader_cpu_s": round(cpu, 2)}


class _Sink:
    """COPY's output, counted and dropped."""

    def __init__(self) -> None:
        self.rows = 0
        self.bytes = 0

    def write(self, data: bytes | str) -> int:
        chunk = data.encode() if isinstance(data, str) else bytes(data)
        self.rows += chunk.count(b"\n")
        self.bytes += len(chunk)
        return len(chunk)


def time_statement(conn: Any, statement: DashboardStatement, params: dict[str, Any]) -> Any:
    """Median of DASHBOARD_REPEATS runs: `COPY (statement) TO STDOUT`, every row produced by
    the server and sent to this client, which counts and drops them (what the dashboard
    fetches, without the client's own conversion cost)."""
    if statement.requires and not function_exists(conn, statement.requires):
        return {"skipped": f"no function {statement.requires} in this warehouse"}
    with conn.cursor() as cur:
        sql = cur.mogrify(statement.sql, params).decode()
        times, rows = [], set()
        for _ in range(DASHBOARD_REPEATS):
            sink = _Sink()
            started = time.perf_counter()
            cur.copy_expert(f"COPY ({sql}) TO STDOUT", sink)
            times.append(time.perf_counter() - started)
            rows.add(sink.rows)
        out: dict[str, Any] = {
            "rows": rows.pop() if len(rows) == 1 else sorted(rows),
            "times_s": [round(t, 3) for t in times],
            "median_s": round(statistics.median(times), 3),
        }
        if statement.explain:
            cur.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
            out["explain"] = explain_summary([row[0] for row in cur.fetchall()])
    return out


_SCAN = re.compile(
    r"(?P<kind>(?:Parallel )?(?:Seq|Index Only|Index|Bitmap Heap|Tid Range) Scan)"
    r"(?: Backward)?(?: using \S+)? on (?P<rel>\S+)"
)


def explain_summary(lines: list[str]) -> dict[str, Any]:
    """What the 7-day statement read: the relations (partitions) scanned and how, the pruned
    subplans, the execution time and the top node's buffers."""
    scans: dict[str, str] = {}
    removed = 0
    for line in lines:
        found = None if "Bitmap Index Scan" in line else _SCAN.search(line)  # an index's scan
        if found:
            scans.setdefault(found.group("rel"), found.group("kind"))
        sub = re.search(r"Subplans Removed: (\d+)", line)
        if sub:
            removed += int(sub.group(1))
    execution = next((line for line in lines if line.startswith("Execution Time")), "")
    buffers = next((line.strip() for line in lines if line.strip().startswith("Buffers:")), "")
    kinds = sorted(set(scans.values()))
    return {
        "relations_scanned": len(scans),
        "scan_kinds": kinds,
        "relations": sorted(scans),
        "subplans_removed": removed,
        "execution_ms": float(execution.split(":")[1].split()[0]) if execution else None,
        "top_buffers": buffers,
        "plan": lines,
    }


@dataclass
class TreeRun:
    """One tree's server, database and results across the sizes."""

    tree: Tree
    pg: LocalPostgres
    env: dict[str, str]
    #: Autocommit: VACUUM, CHECKPOINT, the measurements, the dashboard statements.
    admin: Any = None
    #: Transactions: the pre-fill's chunks and the deletes.
    fill: Any = None
    rows: int = 0
    template: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    loader_module: str = ""


def measure_size(run: TreeRun, size: int, label: str, hour_info: dict[str, Any]) -> None:
    conn, hour = run.admin, hour_info["hour_dt"]
    result: dict[str, Any] = {"rows_already": size}
    if size < run.rows:
        raise SystemExit("--sizes must grow: the warehouse is only ever added to")
    if size > run.rows:
        print(f"  {run.tree.label}: pre-filling {run.rows:,} -> {size:,} rows", flush=True)
        step = Prefill(hour, size - run.rows, run.template["rows"], salt=label)
        result["prefill"] = prefill(run.fill, step)
        run.rows = size
        # The pre-fill wrote rows behind the loader's back: recount their days' rollups.
        result["rollup_rebuild"] = rebuild_rollups(run, step.start, hour)
    found = counts(conn)
    if found[EVENTS] != size or found[META] != size:
        raise RuntimeError(f"{run.tree.label}: {found} rows before the load, expected {size:,}")
    # Last before the load: the run starts a whole checkpoint_timeout away from the next one.
    result["vacuum_checkpoint_s"] = vacuum_and_checkpoint(conn)
    result["relation_sizes_mb"] = relation_sizes_mb(conn)
    ours = client_pids(conn)
    checkpoints0 = checkpoints(conn)
    activity0 = table_activity(conn)
    wal0 = wal_stats(conn)
    cpu0 = pg_cpu_seconds(run.pg.server.get_pid())
    lsn0 = scalar(conn, "SELECT pg_current_wal_lsn()")
    print(f"  {run.tree.label} {label}: loading the hour ...", flush=True)
    load = run_loader(run.tree, run.env, hour)
    wait_for_sessions_to_end(conn, ours)
    lsn1 = scalar(conn, "SELECT pg_current_wal_lsn()")
    cpu1 = pg_cpu_seconds(run.pg.server.get_pid())
    wal1 = wal_stats(conn)
    activity1 = table_activity(conn)
    checkpoints1 = checkpoints(conn)
    report = load["report"]
    expected = (hour_info["events"], hour_info["malformed"], "complete")
    got = (report["inserted"], report["malformed"]["count"], report["state"])
    if got != expected:
        raise RuntimeError(f"{run.tree.label} {label}: loader (inserted, malformed, state) {got}")
    events = report["inserted"]
    wal = int(scalar(conn, "SELECT pg_wal_lsn_diff(%s, %s)", (lsn1, lsn0)))
    result["wal_by_relation"] = wal_by_relation(conn, lsn0, lsn1)
    pg_cpu = cpu1 - cpu0
    result.update(
        {
            "events": events,
            "wal_bytes": wal,
            "wal_bytes_per_event": round(wal / events, 1),
            "wal_fpi_per_event": round((wal1["fpi"] - wal0["fpi"]) / events, 3),
            "wal_records_per_event": round((wal1["records"] - wal0["records"]) / events, 2),
            "pg_cpu_s": round(pg_cpu, 2),
            "pg_cpu_ms_per_event": round(1000 * pg_cpu / events, 4),
            "loader_events_per_s": round(events / report["seconds"], 1),
            "loader_cpu_ms_per_event": round(1000 * load["loader_cpu_s"] / events, 4),
            "loader_wall_s": load["wall_s"],
            "loader_report": {
                k: report.get(k)
                for k in ("state", "objects_listed", "inserted", "duplicates", "seconds", "batches")
            },
            "autovacuum_during_load": {
                t: {k: v - activity0.get(t, {}).get(k, 0) for k, v in a.items()}
                for t, a in activity1.items()
                if a != activity0.get(t)
            },
            "checkpoints_during_load": checkpoints1 - checkpoints0,
            "loadavg": _loadavg(),
        }
    )
    params = {
        "start_date": hour_info["dashboard_end"] - timedelta(days=7),
        "end_date": hour_info["dashboard_end"],
        "login_state": "ALL",
    }
    result["dashboard"] = {s.name: time_statement(conn, s, params) for s in DASHBOARD}
    result["deleted_after"] = delete_hour(run.fill, hour)
    rebuild_rollups(run, hour, hour)  # the hour's day as it was before the load
    run.sizes[label] = result
    q1 = result["dashboard"]["q1_raw"]
    print(
        f"  {run.tree.label} {label}: WAL {result['wal_bytes_per_event']:,.0f} B/event, "
        f"PG CPU {result['pg_cpu_ms_per_event']:.3f} ms/event, "
        f"{result['loader_events_per_s']:,.0f} events/s; 7-day statement {q1['rows']:,} rows "
        f"{q1['median_s']:.2f} s",
        flush=True,
    )


# ------------------------------------------------------------------------------ report


def size_label(size: int) -> str:
    if size == 0:
        return "0"
    if size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    if size % 1000 == 0:
        return f"{size // 1000}k"
    return str(size)


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}×" if base else "—"


def render(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# Growth: the loader against warehouses of growing size (issue 22)",
        "",
        f"`{meta['command']}` — finished {meta['finished_at']}, {meta['total_s'] / 60:.0f} min; "
        f"load average {meta['loadavg_before']} before, {meta['loadavg_after']} after; "
        f"{meta['cpus']} CPUs, shared (CPU figures are noisy, WAL bytes are not).",
        "",
        f"Hour loaded: {meta['hour']} ({meta['objects']:,} objects, {meta['events']:,} events, "
        f"{meta['malformed']} malformed), by `clickstream-loader run --hour` with defaults. "
        f"Pre-filled events: the {DAYS} days before it. Dashboard window: "
        f"{meta['dashboard_window']}, login 'ALL'.",
        "",
    ]
    trees = result["trees"]
    for label, block in trees.items():
        lines += _tree_table(label, block)
    if len(trees) > 1:
        lines += _side_by_side(trees)
    lines += _notes(result)
    return "\n".join(lines) + "\n"


def _tree_table(label: str, block: dict[str, Any]) -> list[str]:
    sizes = block["sizes"]
    base_label = "0" if "0" in sizes else next(iter(sizes), None)
    base = sizes.get(base_label) if base_label else None
    vs = "× empty" if base_label == "0" else f"× {base_label}"
    lines = [
        f"## {label}",
        "",
        f"Code: {block['code']}; PostgreSQL {block['postgres']['server_version']}, "
        f"data_checksums={block['postgres']['data_checksums']}, "
        f"shared_buffers={block['postgres']['shared_buffers']}, "
        f"max_wal_size={block['postgres']['max_wal_size']} (defaults).",
        "",
        f"| rows already | WAL B/event | {vs} | full-page images/event | PG CPU ms/event | {vs} "
        "| loader events/s | 7-day statement rows | 7-day statement s (median of 3) | "
        "7-day statement reads |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size_key, row in sizes.items():
        q1 = row["dashboard"]["q1_raw"]
        # from the plan as saved, so a results file renders with this script's reading of it
        explain = explain_summary(q1["explain"]["plan"]) if "explain" in q1 else {}
        reads = (
            f"{explain.get('relations_scanned', '?')} relation(s), "
            f"{'/'.join(explain.get('scan_kinds', []))}"
        )
        if explain.get("subplans_removed"):
            reads += f", {explain['subplans_removed']} pruned"
        lines.append(
            f"| {size_key} | {row['wal_bytes_per_event']:,.0f} "
            f"| {_ratio(row['wal_bytes_per_event'], base and base['wal_bytes_per_event'])} "
            f"| {row['wal_fpi_per_event']:.2f} | {row['pg_cpu_ms_per_event']:.3f} "
            f"| {_ratio(row['pg_cpu_ms_per_event'], base and base['pg_cpu_ms_per_event'])} "
            f"| {row['loader_events_per_s']:,.0f} | {q1['rows']:,} | {q1['median_s']:.2f} "
            f"| {reads} |"
        )
    lines.append("")
    extra = [
        (name, size_key, row["dashboard"][name])
        for size_key, row in sizes.items()
        for name in row["dashboard"]
        if name != "q1_raw"
    ]
    for name, size_key, entry in extra:
        what = (
            entry["skipped"]
            if "skipped" in entry
            else f"{entry['rows']:,} rows, {entry['median_s']:.3f} s (median of 3)"
        )
        lines.append(f"- {size_key}: `{name}`: {what}")
    if extra:
        lines.append("")
    lines += [
        "| rows already | pre-fill s | rollup rebuild s | VACUUM+CHECKPOINT s | loader wall s | "
        "loader CPU ms/event | WAL records/event | events+indexes MB | meta MB | "
        "loaded_objects MB | autovacuum or checkpoints during the load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size_key, row in sizes.items():
        mb = row["relation_sizes_mb"]
        autovac = ", ".join(
            f"{t}: {'/'.join(f'{k} {v}' for k, v in a.items() if v)}"
            for t, a in row["autovacuum_during_load"].items()
            if any(a.values())
        )
        if row.get("checkpoints_during_load"):
            autovac = f"{autovac}; " if autovac else ""
            autovac += f"{row['checkpoints_during_load']} checkpoint(s) started"
        lines.append(
            f"| {size_key} | {row.get('prefill', {}).get('seconds', 0):,.0f} "
            f"| {(row.get('rollup_rebuild') or {}).get('seconds', 0):,.0f} "
            f"| {row['vacuum_checkpoint_s']:,.0f} | {row['loader_wall_s']:.1f} "
            f"| {row['loader_cpu_ms_per_event']:.3f} | {row['wal_records_per_event']:.1f} "
            f"| {mb[EVENTS]:,.0f} | {mb[META]:,.0f} | {mb[LOADED]:,.0f} | {autovac or 'none'} |"
        )
    lines.append("")
    relations = {
        k: {r["relation"]: r for r in row.get("wal_by_relation", [])} for k, row in sizes.items()
    }
    if any(relations.values()):
        events = {k: row["events"] for k, row in sizes.items()}
        largest = list(sizes)[-1]
        names = sorted(relations[largest], key=lambda n: -relations[largest][n]["bytes"])[:14]
        lines += [
            "WAL of the load by relation (pg_walinspect; partitions under their parent): "
            "block bytes per event / full-page images per event.",
            "",
            "| relation | " + " | ".join(sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        for name in names:
            cells = []
            for k in sizes:
                r = relations[k].get(name)
                cells.append(
                    f"{r['bytes'] / events[k]:,.0f} / {r['fpi'] / events[k]:.3f}" if r else "—"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if sizes:
        largest_key = list(sizes)[-1]
        plan = sizes[largest_key]["dashboard"]["q1_raw"].get("explain", {}).get("plan", [])
        lines += [
            f"<details><summary>EXPLAIN (ANALYZE, BUFFERS) of the 7-day statement at "
            f"{largest_key}</summary>",
            "",
            "```",
            *plan,
            "```",
            "",
            "</details>",
            "",
        ]
    return lines


def _side_by_side(trees: dict[str, Any]) -> list[str]:
    labels = list(trees)
    first, others = labels[0], labels[1:]
    lines = [f"## Side by side (ratios to {first}, same size, paired)", ""]
    header = "| rows already | metric | " + " | ".join(labels) + " | "
    header += " | ".join(f"{o} ÷ {first}" for o in others) + " |"
    lines += [header, "|---|---|" + "---:|" * (len(labels) + len(others))]
    metrics = (
        ("WAL B/event", ("wal_bytes_per_event",)),
        ("PG CPU ms/event", ("pg_cpu_ms_per_event",)),
        ("7-day statement s", ("dashboard", "q1_raw", "median_s")),
    )

    def get(row: dict[str, Any], path: tuple[str, ...]) -> float:
        value: Any = row
        for key in path:
            value = value[key]
        return float(value)

    for size_key in trees[first]["sizes"]:
        for name, path in metrics:
            values = [
                get(trees[t]["sizes"][size_key], path) if size_key in trees[t]["sizes"] else None
                for t in labels
            ]
            cells = [f"{v:,.3f}" if v is not None else "—" for v in values]
            ratios = [
                f"{v / values[0]:.2f}" if v is not None and values[0] else "—" for v in values[1:]
            ]
            lines.append(f"| {size_key} | {name} | " + " | ".join(cells + ratios) + " |")
    return [*lines, ""]


def _notes(result: dict[str, Any]) -> list[str]:
    template = next(iter(result["trees"].values()))["template"]
    mix = ", ".join(f"{k} {v / template['rows']:.1%}" for k, v in template["event_names"].items())
    return [
        "## How it was measured",
        "",
        "- **WAL B/event**: `pg_wal_lsn_diff` of `pg_current_wal_lsn()` around the loader's run, "
        "÷ events inserted; **full-page images** and records from `pg_stat_wal` around it. The "
        "run starts right after a CHECKPOINT, so the first change to every page it touches "
        "writes that page whole (full_page_writes), which is what grows with the table: the "
        "random v4 keys spread the run's index inserts over ever more pages.",
        "- **PG CPU**: user+sys of every PostgreSQL process around the run, from `/proc`: the "
        "postmaster's own, its live children's (backends, checkpointer, WAL writer, "
        "autovacuum...) and the exited children's it reaped (cutime/cstime), so the loader's "
        "backend counts once it has gone. Other sessions share the 2 CPUs: noisy.",
        "- **loader events/s**: events inserted ÷ the run's own `seconds`; loader CPU from "
        "`getrusage(RUSAGE_CHILDREN)` around its process.",
        "- **7-day statement**: Q1 of queries.sql (the dashboard's only statement), window of "
        f"{result['meta']['dashboard_window']}, login 'ALL', as `COPY (…) TO STDOUT`: the "
        "server runs it and sends every row, this client counts and drops them; median of 3. "
        "Its plan from one `EXPLAIN (ANALYZE, BUFFERS)` (the relations it scanned; `pruned` = "
        "partitions removed by pruning).",
        f"- **Pre-fill**: SQL on the server, copies of the template (the hour as this tree's "
        f"loader wrote it into a scratch database: {template['rows']:,} events; "
        f"{template['logged_in_share']:.0%} logged in, {template['product_rows_share']:.0%} with "
        f"a product, {template['events_per_session']} events per session; {mix}) with new "
        "random v4 event ids, new S3 keys, session ids per copy, client and user ids that come "
        f"back ~{VISITS_PER_CLIENT} times in the month, times spread evenly over the "
        f"{DAYS} days before the hour, inserted in time order through every index; meta, "
        "completion (clickstream_loaded_objects) and ledger rows (one complete run per hour) "
        "as the loader writes them. No quarantine rows. Then VACUUM (ANALYZE) and CHECKPOINT.",
        "- Between sizes the hour's rows (events, meta, completion, ledger, quarantine) are "
        "deleted, so every size loads the same hour into a table of exactly the size stated.",
        "",
    ]


# ------------------------------------------------------------------------------ main


def write_the_hour(s3: S3rver, hour: datetime) -> dict[str, Any]:
    items = list(generate_hour(hour, OBJECTS, malformed_ratio=MALFORMED_RATIO, seed=OBJECTS))
    write_objects(s3.data_dir, BUCKET, ((o.key, o.body, o.content_encoding) for o in items))
    events = sum(1 for o in items if o.expect == "event")
    return {
        "hour": hour.isoformat(),
        "hour_dt": hour,
        "objects": len(items),
        "events": events,
        "malformed": len(items) - events,
        "mean_object_bytes": round(sum(len(o.body) for o in items) / len(items), 1),
        "dashboard_end": hour.date(),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        help=f"rows already in the warehouse, growing, in place (default {DEFAULT_SIZES}; "
        f"{QUICK_SIZES} with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help=f"--sizes {QUICK_SIZES}")
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        default=[],
        help="a checkout whose loader and migrations are measured (repeat for before/after; "
        "default: this checkout)",
    )
    parser.add_argument(
        "--ref",
        action="append",
        default=[],
        help="a commit of this repository, measured from a `git archive` of it under "
        "bench/.work (repeatable; measured before the --tree ones)",
    )
    parser.add_argument(
        "--hour",
        default=DEFAULT_HOUR.strftime("%Y-%m-%dT%H"),
        help="the hour loaded, YYYY-MM-DDTHH (default: bench/workload.py's 20k hour)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--name", default="latest", help="writes <out>/growth_<name>.md, .json")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only rewrite the markdown")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        for block in saved["trees"].values():  # the plans' summaries, read again
            for row in block["sizes"].values():
                for entry in row["dashboard"].values():
                    if "explain" in entry:
                        entry["explain"] = explain_summary(entry["explain"]["plan"])
        args.render.write_text(json.dumps(saved, indent=2, default=str) + "\n")
        args.render.with_suffix(".md").write_text(render(saved))
        print(f"wrote {args.render.with_suffix('.md')}")
        return
    sizes = [
        parse_size(x)
        for x in (args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)).split(",")
    ]
    if sizes != sorted(sizes) or len(set(sizes)) != len(sizes):
        raise SystemExit("--sizes must grow: the warehouse is only ever added to")
    hour = datetime.strptime(args.hour, "%Y-%m-%dT%H").replace(tzinfo=UTC)
    trees = [tree_from_ref(ref) for ref in args.ref] + [tree_from_dir(p) for p in args.tree]
    if not trees:
        trees = [tree_from_dir(ROOT)]
    if len({t.label for t in trees}) != len(trees):
        raise SystemExit(f"two trees share a label: {[t.label for t in trees]}")

    started, started_at = time.perf_counter(), datetime.now(UTC)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(S3RVER_AWS_ENV)
    os.environ["BOTO_DISABLE_CRT"] = "true"
    if not ensure_s3rver():
        raise SystemExit("s3rver needs node and npm (npm install --prefix bench/.work s3rver@3)")
    loadavg_before = _loadavg()
    with s3rver_server(fast_listing=True) as s3, _servers(len(trees)) as pgs:
        probe = verify_direct_write(s3)
        print(f"writing the hour {args.hour} ({OBJECTS:,} objects) into s3rver ...", flush=True)
        hour_info = write_the_hour(s3, hour)
        listing = verify_fast_listing(s3, HourSpec(OBJECTS, hour, hour_prefix(hour)))
        runs = []
        for tree, pg in zip(trees, pgs, strict=True):
            create_database(pg, DATABASE)
            migrate(tree, pg, DATABASE)
            env = tree_env(tree, case_env(s3, pg, DATABASE, {}))
            run = TreeRun(tree, pg, env, loader_module=check_tree_import(tree, env))
            print(f"{tree.label}: template (the hour, loaded by its loader) ...", flush=True)
            run.template = build_template(tree, pg, s3, hour)
            run.admin = connect(pg, DATABASE)
            run.fill = connect(pg, DATABASE, autocommit=False)
            run.settings = postgres_settings(run.admin)
            runs.append(run)
        try:
            for index, size in enumerate(sizes):
                label = size_label(size)
                print(f"== {label} rows already", flush=True)
                for run in runs if index % 2 == 0 else runs[::-1]:
                    measure_size(run, size, label, hour_info)
        finally:
            for run in runs:
                for conn in (run.admin, run.fill):
                    if conn is not None:
                        conn.close()
    finished = datetime.now(UTC)
    end = hour_info["dashboard_end"]
    result = {
        "meta": {
            "command": "bench/growth.py " + " ".join(sys.argv[1:]),
            "started_at": started_at.isoformat(),
            "finished_at": finished.isoformat(),
            "total_s": round(time.perf_counter() - started, 1),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": loadavg_before,
            "loadavg_after": _loadavg(),
            "versions": _versions(),
            "hour": hour_info["hour"],
            "objects": hour_info["objects"],
            "events": hour_info["events"],
            "malformed": hour_info["malformed"],
            "mean_object_bytes": hour_info["mean_object_bytes"],
            "dashboard_window": f"{end - timedelta(days=7)} .. {end} (whole UTC days)",
            "direct_write_verified": probe,
            "s3rver_listing": {"mode": "indexed (bench/s3rver_fastlist.js)", "verified": listing},
        },
        "trees": {
            run.tree.label: {
                "path": str(run.tree.path),
                "code": run.tree.code,
                "loader_module": run.loader_module,
                "postgres": run.settings,
                "template": run.template,
                "sizes": run.sizes,
            }
            for run in runs
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"growth_{args.name}.json"
    target.write_text(json.dumps(result, indent=2, default=str) + "\n")
    markdown = render(result)
    target.with_suffix(".md").write_text(markdown)
    print()
    print(markdown)
    print(f"wrote {target.with_suffix('.md')} and .json")


@contextmanager
def _servers(count: int) -> Iterator[list[LocalPostgres]]:
    """One fresh embedded PostgreSQL per tree, all up for the whole run."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield [stack.enter_context(embedded_postgres()) for _ in range(count)]


if __name__ == "__main__":
    main()
