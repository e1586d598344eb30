"""The switch-over check must not slow the normal path: the DB stage timed, before and after.

The same 20,000 transformed events (`tools.demo.traffic.generate_hour`, no payload ids: every
event's id is derived, so every batch is one the check has to consider) go through the loader's
DB stage as the pipeline drives it: `HourLoader.check_schema()` once (it reads the adopted
range), then `HourLoader._commit` per batch of 500, one transaction each, into a database cloned
from a template for every run. Cases:

- `fresh`: a warehouse at head with nothing adopted. The only case the code before the change
  can run, so the one compared before/after.
- `outside`: a warehouse adopted from the original ETL (100,000 rows over the month before the
  hour), loading an hour after the adopted range: the normal path once switched over.
- `inside`: the same warehouse, where the original ETL had loaded half of this very hour
  (10,000 rows under random ids): the switch-over path, for reference.

Reported per case and write method: the median wall seconds and events/s over the runs, the
median CPU seconds of the loader's process (the machine is shared: wall time swings with other
sessions' load, the loader's own CPU much less), the statements sent (the match query is the
only statement the check adds), and the events matched.

    .venv/bin/python bench/adoption_normal_path.py --label after [--repeats 3] [--cases ...]
    PYTHONPATH=<tree of the commit before> .venv/bin/python bench/adoption_normal_path.py \
        --label before --cases fresh

The migrations and the loader come from whichever tree `loader` is imported from, so one script
measures both. Writes bench/results/adoption_normal_path_<label>.json.

    .venv/bin/python bench/adoption_normal_path.py --check-cost

times only the check itself, in-process (no database): `adoption_candidates` over one batch of
500 derived-id events, with nothing adopted and with an adopted range the batch is outside of.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: `tools` (the local servers, the demo's traffic) is importable from the checkout's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa

# The sibling benchmark's legacy table (this script's directory is first on sys.path).
from adoption import FILL, ORIGINAL_ETL_DDL
from alembic import command
from alembic.config import Config

import loader
from loader.common import SourceObject
from loader.config import DatabaseSettings, Settings
from loader.load.db import make_engine
from loader.pipeline.batching import Batch
from loader.pipeline.hour import HourLoader
from loader.pipeline.job import HourJob
from loader.transform.mapping import transform_object
from tools.demo.traffic import generate_hour
from tools.servers import start_embedded_postgres

TREE = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
EVENTS = 20_000
BATCH = 500
ADOPTED_ROWS = 100_000

ORIGINAL_ETL_COLUMNS = (
    "event_id, event_timestamp, event_name, user_id, user_login_state, identity_source, "
    "client_id, session_id, is_first_visit, context_product_id, context_product_name, "
    "context_product_category, context_product_brand, context_product_price, "
    "context_product_discount_price, context_product_url_path"
)


def _migrate(engine: sa.Engine) -> None:
    cfg = Config(str(TREE / "alembic.ini"))
    cfg.set_main_option("script_location", str(TREE / "migrations"))
    cfg.attributes["configure_logging"] = False
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _records() -> list[Any]:
    out = []
    for obj in generate_hour(HOUR, EVENTS, malformed_ratio=0):
        out.extend(transform_object(SourceObject("b", obj.key, HOUR), obj.body).events)
    assert not any(getattr(r, "id_from_payload", False) for r in out)
    return out


def _original_etl_rows(records: list[Any]) -> list[dict[str, Any]]:
    """What the original ETL stored for these events: their values under random ids."""
    rows = []
    for r in records:
        row = {c: r.event.get(c) for c in ORIGINAL_ETL_COLUMNS.split(", ")}
        row["event_id"] = uuid.uuid4()
        for price in ("context_product_price", "context_product_discount_price"):
            row[price] = None if row[price] is None else int(row[price])
        rows.append(row)
    return rows


def _templates(
    admin: sa.Engine, base: DatabaseSettings, records: list[Any], cases: set[str]
) -> None:
    def db(name: str) -> sa.Engine:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        settings = DatabaseSettings(host=base.host, port=base.port, user=base.user, database=name)
        return sa.create_engine(settings.url(), poolclass=sa.NullPool)

    if "fresh" in cases:
        engine = db("tpl_fresh")
        _migrate(engine)
        engine.dispose()
    for case in {"outside", "inside"} & cases:
        engine = db(f"tpl_{case}")
        with engine.begin() as conn:
            conn.execute(sa.text(ORIGINAL_ETL_DDL))
            # The month before the hour: the adopted range ends before any event of the hour.
            conn.execute(sa.text(FILL.replace("2026-10-01", "2026-10-24")), {"rows": ADOPTED_ROWS})
            if case == "inside":
                placeholders = ", ".join(f":{c}" for c in ORIGINAL_ETL_COLUMNS.split(", "))
                conn.execute(
                    sa.text(
                        f"INSERT INTO clickstream_events ({ORIGINAL_ETL_COLUMNS}) "
                        f"VALUES ({placeholders})"
                    ),
                    _original_etl_rows(records[: len(records) // 2]),
                )
        _migrate(engine)
        engine.dispose()


def _run(
    admin: sa.Engine, base: DatabaseSettings, case: str, method: str, records: list[Any], run: int
) -> dict[str, Any]:
    name = f"bench_np_{case}_{method}_{run}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "tpl_{case}"'))
    db = DatabaseSettings(
        host=base.host, port=base.port, user=base.user, database=name, sslmode="disable"
    )
    settings = Settings(raw_bucket="b", db=db, write_method=method)
    engine = make_engine(db)
    statements = [0]

    def count(*_: Any) -> None:
        statements[0] += 1

    try:
        hour_loader = HourLoader(settings, engine, source=None)  # type: ignore[arg-type]
        job = HourJob(HOUR, "manual")
        started = time.perf_counter()
        hour_loader.check_schema()
        check_s = time.perf_counter() - started
        sa.event.listen(engine, "before_cursor_execute", count)
        inserted = duplicates = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        for i in range(0, len(records), BATCH):
            batch = Batch(records=records[i : i + BATCH])
            outcome = hour_loader._commit(batch, [], job, uuid.uuid4())
            inserted += outcome.inserted
            duplicates += outcome.duplicate_exact
        seconds = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    expected_new = len(records) // 2 if case == "inside" else len(records)
    assert inserted == expected_new, (case, inserted)
    return {
        "seconds": seconds,
        "cpu_s": cpu_s,
        "check_schema_s": check_s,
        "inserted": inserted,
        "duplicates": duplicates,
        "statements": statements[0],
        "loadavg": os.getloadavg(),
    }


def check_cost() -> dict[str, float]:
    """Microseconds per batch of BATCH events spent deciding whether to look for matches."""
    import timeit

    from loader.load.adoption import AdoptedRange, adoption_candidates

    batch = _records()[:BATCH]
    outside = AdoptedRange(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 31, tzinfo=UTC))
    cost = {}
    for label, adopted in (("nothing adopted", None), ("batch outside the range", outside)):
        best = min(
            timeit.repeat(lambda a=adopted: adoption_candidates(batch, a), number=2000, repeat=5)
        )
        cost[label] = round(best / 2000 * 1e6, 1)
    return cost


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check-cost", action="store_true")
    parser.add_argument("--label")
    parser.add_argument("--cases", default="fresh,outside,inside")
    parser.add_argument("--methods", default="copy,insert")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.check_cost:
        print(json.dumps({"us_per_batch_of_500": check_cost()}))
        return
    if not args.label:
        parser.error("--label is required")
    cases = args.cases.split(",")
    methods = args.methods.split(",")
    print(f"loader from {Path(loader.__file__).parent}", flush=True)
    records = _records()
    pg = start_embedded_postgres()
    base = DatabaseSettings(
        host=pg.host, port=pg.port, user=pg.user, database="postgres", sslmode="disable"
    )
    admin = sa.create_engine(base.url(), isolation_level="AUTOCOMMIT")
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        _templates(admin, base, records, set(cases))
        for run in range(args.repeats):  # interleaved, so drift on the machine hits every case
            for case in cases:
                for method in methods:
                    result = _run(admin, base, case, method, records, run)
                    runs.setdefault(f"{case}/{method}", []).append(result)
                    print(case, method, json.dumps(result), flush=True)
    finally:
        admin.dispose()
        pg.server.cleanup()
    summary = {
        key: {
            "median_s": round(statistics.median(r["seconds"] for r in results), 3),
            "median_cpu_s": round(statistics.median(r["cpu_s"] for r in results), 3),
            "events_per_s": round(EVENTS / statistics.median(r["seconds"] for r in results)),
            "statements": sorted({r["statements"] for r in results}),
            "duplicates": results[0]["duplicates"],
            "check_schema_ms": round(
                1000 * statistics.median(r["check_schema_s"] for r in results), 1
            ),
            "runs_s": [round(r["seconds"], 3) for r in results],
        }
        for key, results in runs.items()
    }
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"adoption_normal_path_{args.label}.json"
    out.write_text(
        json.dumps(
            {
                "label": args.label,
                "tree": str(TREE),
                "events": EVENTS,
                "batch": BATCH,
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
    )
    for key, s in summary.items():
        print(
            f"| {args.label} | {key} | {s['median_s']} | {s['events_per_s']:,} | "
            f"{s['statements']} | {s['duplicates']} |"
        )


if __name__ == "__main__":
    main()
