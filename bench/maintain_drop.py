"""Retiring a day partition, measured: how long `maintain` takes, what it locks, who waits.

Starts an embedded PostgreSQL at Alembic head, makes the day partitions from today - 3 to today,
fills today - 3 and today - 2 with N events each (and their meta rows and claims), then, while
a writer inserts batches of 500 events into today through the parent (one transaction each,
as the loader's batches) and a reader counts today's events every 20 ms:

1. `maintain --keep-days 1` retires today - 3 and today - 2 (DETACH ... CONCURRENTLY, DROP),
   while a third session holds ACCESS SHARE on today - 2's events partition for 1 s (a query
   that reads the partition directly): the detach's second transaction waits for it, and a
   sampler records the locks maintain holds and waits for meanwhile;
2. for comparison, the same day dropped the way pg_partman's retention does it
   (`DROP TABLE <partition>` while attached), under the same 1 s holder.

Reports maintain's wall time, the locks seen, and the writer's and the reader's longest wait
in each case.

    .venv/bin/python bench/maintain_drop.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

#: `tools` (the local servers) is importable from the checkout's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from loader.config import DatabaseSettings
from loader.maintenance import MaintainOptions, maintain
from tools.servers import start_embedded_postgres

ROOT = Path(__file__).resolve().parent.parent
PARENTS = (
    "clickstream_events",
    "clickstream_ingest_meta",
    "clickstream_event_claims",
    "clickstream_loaded_objects",
)

FILL_EVENTS = """
INSERT INTO clickstream_events (event_id, event_name, event_timestamp, user_id, session_id,
  client_id, page_url, context_product_id)
SELECT gen_random_uuid(), 'page_view',
       CAST(:day AS timestamptz) + (g * interval '86399 seconds' / :rows),
       'u' || (g % 5000), 's' || (g % 20000), 'c' || (g % 30000),
       'https://shop.example/p/' || (g % 900), 'p' || (g % 900)
FROM generate_series(1, :rows) AS g
"""
FILL_META = """
INSERT INTO clickstream_ingest_meta (event_id, event_timestamp, s3_bucket, s3_key,
  payload_sha256, received_at)
SELECT event_id, event_timestamp, 'raw', 'events/x/' || event_id || '.json',
       sha256(event_id::text::bytea), event_timestamp
FROM clickstream_events WHERE event_timestamp >= :day AND event_timestamp < :next
"""
FILL_CLAIMS = """
INSERT INTO clickstream_event_claims (window_start, event_id, event_timestamp)
SELECT date_bin('2 hours', event_timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00'), event_id,
       event_timestamp
FROM clickstream_events WHERE event_timestamp >= :day AND event_timestamp < :next
"""
WRITE = """
INSERT INTO clickstream_events (event_id, event_name, event_timestamp)
SELECT gen_random_uuid(), 'page_view', now() FROM generate_series(1, 500)
"""
LOCKS = """
SELECT coalesce(l.relation::regclass::text, l.locktype) AS what, l.mode, l.granted
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE a.application_name = 'bench-maintain' AND l.locktype IN ('relation', 'virtualxid')
"""


class Probe(threading.Thread):
    """Runs `statement` in a loop (its own transaction each time); records the longest one."""

    def __init__(self, engine: sa.Engine, statement: str, pause_s: float) -> None:
        super().__init__(daemon=True)
        self.engine, self.statement, self.pause_s = engine, statement, pause_s
        self.stop = threading.Event()
        self.window: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    conn.execute(sa.text(self.statement))
                    conn.commit()
                except sa.exc.DBAPIError as exc:
                    conn.rollback()
                    self.errors.append(str(exc.orig).splitlines()[0])
                self.window.append(time.monotonic() - started)
                time.sleep(self.pause_s)

    def longest_since(self, mark: int) -> float:
        return max(self.window[mark:], default=0.0)


def hold_access_share(engine: sa.Engine, table: str, seconds: float) -> threading.Thread:
    """A session that reads `table` directly and keeps its transaction open `seconds`."""

    def hold() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text(f"SELECT count(*) FROM {table}"))
            time.sleep(seconds)
            conn.rollback()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    time.sleep(0.2)
    return thread


def sample_locks(
    engine: sa.Engine, stop: threading.Event, seen: set[tuple[str, str, bool]]
) -> None:
    with engine.connect() as conn:
        while not stop.is_set():
            for row in conn.execute(sa.text(LOCKS)):
                seen.add((row.what, row.mode, row.granted))
            conn.rollback()
            time.sleep(0.005)


def fill(engine: sa.Engine, day: date, rows: int) -> float:
    started = time.monotonic()
    params = {"day": str(day), "next": str(day + timedelta(days=1)), "rows": rows}
    with engine.begin() as conn:
        conn.execute(sa.text(FILL_EVENTS), params)
        conn.execute(sa.text(FILL_META), params)
        conn.execute(sa.text(FILL_CLAIMS), params)
    with engine.connect() as conn:
        conn.execute(sa.text("CHECKPOINT"))
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    pg = start_embedded_postgres()
    settings = DatabaseSettings(
        host=pg.host, port=pg.port, user=pg.user, database="postgres", sslmode="disable"
    )
    engine = sa.create_engine(settings.url(), pool_size=8)
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["connection"] = engine
    command.upgrade(cfg, "head")
    with engine.begin() as conn:
        today = conn.execute(sa.text("SELECT (now() AT TIME ZONE 'UTC')::date")).scalar_one()
        conn.execute(
            sa.text("SELECT clickstream_ensure_partitions(:f, :l)"),
            {"f": today - timedelta(days=3), "l": today},
        )
    report: dict[str, Any] = {"rows_per_day": args.rows}
    for offset in (3, 2):
        report[f"fill_s_day_minus_{offset}"] = round(
            fill(engine, today - timedelta(offset), args.rows), 1
        )
    report.update(measure(engine, today))
    for key, value in report.items():
        print(f"{key}: {value}")
    pg.server.cleanup()


def measure(engine: sa.Engine, today: date) -> dict[str, Any]:
    writer = Probe(engine, WRITE, 0.02)
    reader = Probe(
        engine,
        f"SELECT count(*) FROM clickstream_events WHERE event_timestamp >= '{today}'",
        0.02,
    )
    writer.start()
    reader.start()
    time.sleep(1.0)
    out: dict[str, Any] = {
        "writer_longest_s_before": round(writer.longest_since(0), 3),
        "reader_longest_s_before": round(reader.longest_since(0), 3),
    }
    # 1. maintain, with the 1 s holder on today - 2's partition.
    maintain_engine = sa.create_engine(
        engine.url.update_query_dict({"application_name": "bench-maintain"}), poolclass=sa.NullPool
    )
    marks = len(writer.window), len(reader.window)
    seen: set[tuple[str, str, bool]] = set()
    stop = threading.Event()
    sampler = threading.Thread(target=sample_locks, args=(engine, stop, seen), daemon=True)
    sampler.start()
    holder = hold_access_share(engine, f"clickstream_events_p{today - timedelta(2):%Y%m%d}", 1.0)
    result = maintain(maintain_engine, MaintainOptions(keep_days=1, ahead_days=1))
    stop.set()
    holder.join()
    out["maintain_s"] = round(result.seconds, 3)
    out["maintain_dropped"] = len(result.dropped)
    out["maintain_retries"] = result.retries
    out["writer_longest_s_during_maintain"] = round(writer.longest_since(marks[0]), 3)
    out["reader_longest_s_during_maintain"] = round(reader.longest_since(marks[1]), 3)
    out["locks_on_parents"] = sorted(
        {f"{what} {mode}" for what, mode, _ in seen if what in PARENTS}
    )
    held = f"clickstream_events_p{today - timedelta(2):%Y%m%d}"
    out[f"locks_on_{held}"] = sorted(
        {f"{mode}{'' if granted else ' (waited)'}" for what, mode, granted in seen if what == held}
    )
    # 2. pg_partman's way: DROP TABLE on an attached partition, under the same holder.
    with engine.begin() as conn:
        conn.execute(
            sa.text("SELECT clickstream_ensure_partitions(:d, :d)"), {"d": today - timedelta(1)}
        )
    fill(engine, today - timedelta(1), 100_000)
    time.sleep(0.5)
    marks = len(writer.window), len(reader.window)
    part = f"clickstream_events_p{today - timedelta(1):%Y%m%d}"
    holder = hold_access_share(engine, part, 1.0)
    started = time.monotonic()
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {part}"))
    holder.join()
    out["plain_drop_s"] = round(time.monotonic() - started, 3)
    out["writer_longest_s_during_plain_drop"] = round(writer.longest_since(marks[0]), 3)
    out["reader_longest_s_during_plain_drop"] = round(reader.longest_since(marks[1]), 3)
    writer.stop.set()
    reader.stop.set()
    writer.join()
    reader.join()
    out["probe_errors"] = writer.errors + reader.errors
    return out


if __name__ == "__main__":
    main()
