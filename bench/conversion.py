"""How long `alembic upgrade head` holds ACCESS EXCLUSIVE on the event tables while it converts
a populated warehouse to day partitions (revision 0006).

A fresh embedded PostgreSQL, migrated to 0005, filled with N events (and their meta rows and
completion records) over the last 30 days; then `alembic upgrade head` runs as a DBA would, while
a probe on another connection reads clickstream_events every 5 ms (an ACCESS SHARE lock, as the
dashboard takes). The longest a probe waited is the time readers were locked out.

    python bench/conversion.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.servers import start_embedded_postgres  # noqa: E402

FILL = """
INSERT INTO clickstream_events (event_id, event_name, event_timestamp, client_id, session_id,
                                user_id, user_login_state, page_url)
SELECT gen_random_uuid(),
       (ARRAY['page_view','click','product_view','add_to_cart_click'])[1 + i % 4],
       now() - (i::double precision / :rows) * interval '30 days',
       'c-' || (i % 50000), 's-' || (i % 200000),
       CASE WHEN i % 3 = 0 THEN 'u-' || (i % 20000) END,
       CASE WHEN i % 3 = 0 THEN 'logged_in' ELSE 'anonymous' END,
       'https://shop.example/p/' || (i % 1000)
FROM generate_series(1, :rows) AS i;
INSERT INTO clickstream_ingest_meta (event_id, received_at, s3_bucket, s3_key, payload_sha256)
SELECT event_id, event_timestamp, 'raw',
       'events/' || to_char(event_timestamp AT TIME ZONE 'UTC', 'YYYY/MM/DD/HH24')
       || '/event-' || gen_random_uuid() || '.json', sha256(event_id::text::bytea)
FROM clickstream_events;
INSERT INTO clickstream_loaded_objects (s3_key, s3_bucket, hour, events, meta_rows, quarantined,
                                        run_id)
SELECT s3_key, 'raw', date_trunc('hour', received_at), 1, 1, 0, gen_random_uuid()
FROM clickstream_ingest_meta;
"""


def _alembic(env: dict[str, str], *args: str) -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.monotonic() - started


def _probe(url: sa.URL, stop: threading.Event, waits: list[float]) -> None:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        while not stop.is_set():
            started = time.monotonic()
            conn.execute(sa.text("SELECT 1 FROM clickstream_events LIMIT 1")).all()
            conn.commit()
            waits.append(time.monotonic() - started)
            time.sleep(0.005)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        pg = start_embedded_postgres(Path(data) / "pg")
        try:
            url = sa.URL.create(
                "postgresql+psycopg2",
                username=pg.user,
                host="",
                database="postgres",
                query={"host": pg.host, "port": str(pg.port)},
            )
            admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text("CREATE DATABASE conversion"))
            admin.dispose()
            env = {**os.environ, **pg.env("conversion")}
            _alembic(env, "upgrade", "0005_event_trigger")
            db = url.set(database="conversion")
            engine = sa.create_engine(db)
            started = time.monotonic()
            with engine.begin() as conn:
                for statement in FILL.split(";\n"):
                    if statement.strip():
                        conn.execute(sa.text(statement), {"rows": args.rows})
            fill_s = time.monotonic() - started
            stop, waits = threading.Event(), []
            probe = threading.Thread(target=_probe, args=(db, stop, waits))
            probe.start()
            upgrade_s = _alembic(env, "upgrade", "head")
            stop.set()
            probe.join()
            with engine.connect() as conn:
                kept = conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar()
            engine.dispose()
        finally:
            if pg.server is not None:
                pg.server.cleanup()
    result = {
        "rows": args.rows,
        "rows_after": kept,
        "fill_s": round(fill_s, 1),
        "upgrade_s": round(upgrade_s, 1),
        "probes": len(waits),
        "longest_probe_wait_s": round(max(waits), 3),
        "median_probe_s": round(sorted(waits)[len(waits) // 2], 4),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
