"""Adopting the original ETL's table, measured: what `alembic upgrade head` locks, and how long.

Builds the original ETL's `clickstream_events` (its exact DDL, no alembic_version) in an embedded
PostgreSQL, fills it with N rows shaped as the original ETL writes them (random UUID ids, receive
times in append order over 30 days, the tracker's event names, BIGINT prices, NULLs where the
tracker sends nothing), then runs the migrations one revision at a time, as `alembic upgrade head`
does (one transaction per revision, the project's env.py and its lock_timeout), and reports:

- wall seconds per revision, and per statement of 0003 (the type change's rewrite, each index
  build, the adoption record);
- how long a reader was blocked: a probe session runs `SELECT ... LIMIT 1` on the table every
  20 ms throughout (the dashboard's query needs the same ACCESS SHARE lock); its longest wait
  is the time the table was closed to readers;
- the table's size before and after (the rewrite needs room for a second copy).

    .venv/bin/python bench/adoption.py [--rows 1000000] [--rows 250000 ...] [--repeats 1]

Writes bench/results/adoption.json and prints a markdown table (bench/results/adoption.md is
written from it by hand, with the machine's context).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: `tools` (the local servers, the demo's traffic) is importable from the checkout's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from loader.config import DatabaseSettings
from tools.servers import start_embedded_postgres

ROOT = Path(__file__).resolve().parent.parent

ORIGINAL_ETL_DDL = """
CREATE TABLE IF NOT EXISTS clickstream_events (
  event_id UUID PRIMARY KEY, event_timestamp TIMESTAMPTZ NOT NULL, event_name TEXT NOT NULL,
  user_id TEXT, user_login_state TEXT, identity_source TEXT, client_id TEXT, session_id TEXT,
  is_first_visit BOOLEAN, context_product_id TEXT, context_product_name TEXT,
  context_product_category TEXT, context_product_brand TEXT, context_product_price BIGINT,
  context_product_discount_price BIGINT, context_product_url_path TEXT)
"""

# One row per generated event, the way parseEvent maps the real tracker's events. Ids are
# random (gen_random_uuid), as the original ETL's randomUUID() or the tracker's UUID v4.
FILL = """
INSERT INTO clickstream_events (
  event_id, event_timestamp, event_name, user_id, user_login_state, identity_source, client_id,
  session_id, is_first_visit, context_product_id, context_product_name, context_product_category,
  context_product_brand, context_product_price, context_product_discount_price,
  context_product_url_path)
SELECT
  gen_random_uuid(),
  timestamptz '2026-10-01 00:00:00+00' + g * (interval '30 days' / :rows),
  name,
  CASE WHEN g % 3 = 0 THEN md5('u' || (g % 5000))::uuid::text END,
  CASE WHEN g % 3 = 0 THEN 'logged_in' ELSE 'anonymous' END,
  NULL,
  md5('c' || (g / 40))::uuid::text,
  md5('s' || (g / 12))::uuid::text,
  g % 40 = 0,
  CASE WHEN product THEN 'cm' || substr(md5('p' || (g % 64)), 1, 23)
       WHEN name = 'category_view' THEN 'mobiles' END,
  CASE WHEN product THEN 'Bàn phím cơ AULA M75 TM ' || (g % 64) END,
  CASE WHEN product THEN (ARRAY['laptop','keyboard','monitor','mouse','headphone',
                                'accessory'])[1 + g % 6]
       WHEN name = 'category_view' THEN 'mobiles' END,
  CASE WHEN product THEN (ARRAY['Dell','ASUS','MSI','Samsung','LG','Logitech'])[1 + g % 6] END,
  CASE WHEN product THEN 190000 + (g % 64) * 900000 END,
  CASE WHEN product THEN 0 END,
  CASE WHEN product THEN '/product/aula-m75-' || (g % 64) END
FROM (
  SELECT g, name, name IN ('product_view', 'add_to_cart_click', 'remove_from_cart_click',
                           'wishlist_toggle') AS product
  FROM (
    SELECT g, (ARRAY['page_view','click','home_view','category_view','product_view',
                     'add_to_cart_click','remove_from_cart_click','wishlist_toggle',
                     'checkout_start','checkout_complete'])[1 + (g * 7) % 10] AS name
    FROM generate_series(1, :rows) AS g
  ) named
) shaped
"""

REVISIONS = ["0001_clickstream_tables", "0002_load_ledger", "0003_adopt_original_etl_table"]


def _alembic_config(engine: sa.Engine) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["connection"] = engine  # env.py connects and sets its lock_timeout
    cfg.attributes["configure_logging"] = False
    return cfg


class StatementTimer:
    """Wall time of every statement a migration sends, by its first line."""

    def __init__(self, engine: sa.Engine) -> None:
        self.timings: list[tuple[str, float]] = []
        self._started: float = 0.0
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, *_: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.timings.append((statement.strip(), time.perf_counter() - self._started))


class ReaderProbe(threading.Thread):
    """A dashboard stand-in: a tiny read every 20 ms; records how long each one took."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.stop = threading.Event()
        self.waits: list[float] = []

    def run(self) -> None:
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while not self.stop.is_set():
                started = time.perf_counter()
                conn.execute(sa.text("SELECT event_timestamp FROM clickstream_events LIMIT 1"))
                self.waits.append(time.perf_counter() - started)
                time.sleep(0.02)


def _statement_kind(statement: str) -> str:
    if "TYPE numeric" in statement:
        return "rewrite (BIGINT -> numeric)"
    if statement.startswith("CREATE INDEX"):
        return "index " + statement.split()[5]
    if statement.startswith("INSERT INTO clickstream_adoptions"):
        return "adoption record"
    if statement.startswith("CREATE TABLE"):
        return "create table " + statement.split()[2]
    return "other (catalog only)"


def measure(admin: sa.Engine, base: DatabaseSettings, rows: int, run: int) -> dict[str, Any]:
    name = f"bench_adoption_{rows}_{run}"
    loadavg_before = os.getloadavg()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db = DatabaseSettings(host=base.host, port=base.port, user=base.user, database=name)
    engine = sa.create_engine(db.url(), poolclass=sa.NullPool)
    try:
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(sa.text(ORIGINAL_ETL_DDL))
            conn.execute(sa.text(FILL), {"rows": rows})
        fill_s = time.perf_counter() - started
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE clickstream_events"))
            size_before = conn.execute(
                sa.text("SELECT pg_total_relation_size('clickstream_events')")
            ).scalar_one()

        timer = StatementTimer(engine)
        probe = ReaderProbe(sa.create_engine(db.url(), poolclass=sa.NullPool))
        probe.start()
        time.sleep(0.2)
        per_revision = {}
        for revision in REVISIONS:
            timer.timings.clear()
            started = time.perf_counter()
            command.upgrade(_alembic_config(engine), revision)
            per_revision[revision] = time.perf_counter() - started
            if revision.startswith("0003"):
                statements = list(timer.timings)
        time.sleep(0.2)
        probe.stop.set()
        probe.join()
        probe.engine.dispose()

        with engine.connect() as conn:
            size_after = conn.execute(
                sa.text("SELECT pg_total_relation_size('clickstream_events')")
            ).scalar_one()
            adopted = conn.execute(sa.text("SELECT adopted_rows FROM clickstream_adoptions"))
            adopted_rows = adopted.scalar_one()
            settings = dict(
                conn.execute(
                    sa.text(
                        "SELECT name, setting FROM pg_settings WHERE name IN "
                        "('maintenance_work_mem', 'shared_buffers', 'max_parallel_maintenance_"
                        "workers', 'server_version')"
                    )
                ).all()
            )
        assert adopted_rows == rows, (adopted_rows, rows)
        by_kind: dict[str, float] = {}
        for statement, seconds in statements:
            kind = _statement_kind(statement)
            by_kind[kind] = by_kind.get(kind, 0.0) + seconds
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    return {
        "rows": rows,
        "run": run,
        "fill_s": round(fill_s, 2),
        "revision_s": {k: round(v, 3) for k, v in per_revision.items()},
        "statements_0003_s": {k: round(v, 3) for k, v in by_kind.items()},
        "reader_longest_wait_s": round(max(probe.waits), 3),
        "reader_probes": len(probe.waits),
        "table_bytes_before": size_before,
        "table_bytes_after": size_after,
        "server": settings,
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, action="append")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "adoption.json")
    args = parser.parse_args()
    sizes = args.rows or [1_000_000]
    pg = start_embedded_postgres()
    base = DatabaseSettings(
        host=pg.host, port=pg.port, user=pg.user, database="postgres", sslmode="disable"
    )
    admin = sa.create_engine(base.url(), isolation_level="AUTOCOMMIT")
    results = []
    try:
        for run in range(args.repeats):
            for rows in sizes:
                result = measure(admin, base, rows, run)
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        admin.dispose()
        pg.server.cleanup()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results}, indent=2))
    print("| rows | 0003 s | rewrite s | 4 indexes s | record s | reader blocked s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        kinds = r["statements_0003_s"]
        indexes = sum(v for k, v in kinds.items() if k.startswith("index"))
        print(
            f"| {r['rows']:,} | {r['revision_s'][REVISIONS[2]]:.2f} | "
            f"{kinds.get('rewrite (BIGINT -> numeric)', 0):.2f} | {indexes:.2f} | "
            f"{kinds.get('adoption record', 0):.2f} | {r['reader_longest_wait_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
