"""DB write path, measured: executemany INSERT ... RETURNING (insertmanyvalues) vs COPY staging.

Pre-transformed events (no S3 in the loop) are written in batches into an empty warehouse at
Alembic head, then written again (every row a duplicate), for each method, plus the ceiling: a
plain COPY of the same rows into empty copies of both tables. Prints a markdown table and writes
bench/results/db_write_methods.json.

    .venv/bin/python bench/db_write_methods.py [--events 20000] [--batch 500]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

#: `tools` (the local servers, the demo's traffic) is importable from the checkout's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from loader.common import SourceObject
from loader.config import DatabaseSettings, Settings
from loader.load.copy import _copy_rows, write_batch_copy
from loader.load.db import make_engine
from loader.load.sink import write_batch
from loader.load.tables import tables_for
from loader.schema import clickstream_events, clickstream_ingest_meta
from loader.transform.mapping import transform_object
from tools.demo.traffic import generate_hour
from tools.servers import start_embedded_postgres

ROOT = Path(__file__).resolve().parent.parent
#: The columns the transform fills: all but the one PostgreSQL stamps.
EVENT_COLUMNS = tuple(c.name for c in clickstream_events.c if c.name != "loaded_at")
META_COLUMNS = tuple(c.name for c in clickstream_ingest_meta.c if c.name != "loaded_at")
HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)


def events(n: int) -> list:
    out = []
    for obj in generate_hour(HOUR, n, malformed_ratio=0):
        out.extend(transform_object(SourceObject("b", obj.key, HOUR), obj.body).events)
    return out


def fresh_db(admin: sa.Engine, name: str, settings: DatabaseSettings) -> DatabaseSettings:
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db = DatabaseSettings(
        host=settings.host, port=settings.port, user=settings.user, database=name, sslmode="disable"
    )
    engine = sa.create_engine(db.url(), poolclass=sa.NullPool)
    with engine.begin() as conn:
        cfg = Config(str(ROOT / "alembic.ini"))
        cfg.set_main_option("script_location", str(ROOT / "migrations"))
        cfg.attributes["connection"] = conn
        cfg.attributes["configure_logging"] = False
        command.upgrade(cfg, "head")
    engine.dispose()
    return db


def run(method, engine, tables, records, batch) -> tuple[float, int]:
    started = time.perf_counter()
    inserted = 0
    for i in range(0, len(records), batch):
        with engine.begin() as conn:
            inserted += method(conn, tables, records[i : i + batch]).inserted
    return time.perf_counter() - started, inserted


def copy_ceiling(engine, records) -> float:
    with engine.begin() as conn:
        for name in ("clickstream_events", "clickstream_ingest_meta"):
            conn.exec_driver_sql(f"CREATE TABLE ceiling_{name} (LIKE {name} INCLUDING DEFAULTS)")
    started = time.perf_counter()
    with engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.copy_expert(
            f"COPY ceiling_clickstream_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN",
            _copy_rows([r.event for r in records], EVENT_COLUMNS),
        )
        cursor.copy_expert(
            f"COPY ceiling_clickstream_ingest_meta ({', '.join(META_COLUMNS)}) FROM STDIN",
            _copy_rows([r.meta for r in records], META_COLUMNS),
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    pg = start_embedded_postgres()
    base = DatabaseSettings(
        host=pg.host, port=pg.port, user=pg.user, database="postgres", sslmode="disable"
    )
    admin = sa.create_engine(base.url(), isolation_level="AUTOCOMMIT")
    records = events(args.events)
    tables = tables_for(Settings(raw_bucket="b", db=base))
    results = {}
    try:
        for label, method in (
            ("insert_returning", write_batch),
            ("copy_staging", write_batch_copy),
        ):
            db = fresh_db(admin, f"bench_{label}", base)
            engine = make_engine(db)
            first, inserted = run(method, engine, tables, records, args.batch)
            again, reinserted = run(method, engine, tables, records, args.batch)
            results[label] = {
                "events_per_s": round(len(records) / first),
                "rerun_events_per_s": round(len(records) / again),
                "inserted": inserted,
                "rerun_inserted": reinserted,
            }
            engine.dispose()
        db = fresh_db(admin, "bench_ceiling", base)
        engine = make_engine(db)
        results["copy_ceiling"] = {
            "events_per_s": round(len(records) / copy_ceiling(engine, records))
        }
        engine.dispose()
    finally:
        admin.dispose()
        pg.server.cleanup()
    print(
        f"| method ({len(records)} events, batch {args.batch}) | events/s | rerun events/s "
        "| x of COPY ceiling |"
    )
    print("|---|---|---|---|")
    ceiling = results["copy_ceiling"]["events_per_s"]
    for label, r in results.items():
        print(
            f"| {label} | {r['events_per_s']:,} | {r.get('rerun_events_per_s', '')} | "
            f"{r['events_per_s'] / ceiling:.2f} |"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "db_write_methods.json").write_text(
        json.dumps({"events": len(records), "batch": args.batch, "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
