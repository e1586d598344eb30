"""The dashboard's rollups (issue 25): every KPI from `clickstream_dashboard()` equals the real
dashboard's own SQL (queries.sql Q2-Q9, Q11) on the raw rows, for several day ranges and each
login filter, after every way rows come and go.

Real-shaped hours (the demo's traffic) over four UTC days and both login states, with clients
that come back on later days (the hard part: distinct clients over a range), a few events
without a client id, with an empty login state or without a category or brand. Loaded by the
loader's own code paths (hourly run, rerun, a late object, reprocess, concurrent shards with
small batches), then rows deleted by hand (and `clickstream-loader rollup`), rows erased
through `subtract_deleted`, and a whole day dropped (retention) and rebuilt. After each step
the KPIs are compared, and the gaps table is compared with the links computed from the client
table by SQL (the revision's own fill).
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from conftest import alembic_config
from typer.testing import CliRunner

from loader.app import make_source
from loader.cli import app
from loader.config import load_settings
from loader.load.db import make_engine
from loader.load.rollups import (
    ROLLUP_COLUMNS,
    RollupOutOfStep,
    day_bounds,
    rebuild_day,
    subtract_deleted,
)
from loader.load.tables import tables_for
from loader.maintenance import MaintainOptions, maintain
from loader.observability import log
from loader.operations import reprocess
from loader.pipeline.hour import HourLoader
from loader.pipeline.runs import run_trigger
from loader.window import Shard, Trigger, hour_prefix
from tools.demo.dashboard import LOGIN_FILTERS, raw_kpis, rollup_kpis
from tools.demo.traffic import RawObject, generate_hour, serialize, upload

D0 = date(2026, 11, 20)
DAYS = [D0 + timedelta(days=n) for n in range(4)]
#: Two hours on each side of a midnight, and two more days: several days, both states.
HOURS = [
    datetime(2026, 11, 20, 9, tzinfo=UTC),
    datetime(2026, 11, 21, 23, tzinfo=UTC),
    datetime(2026, 11, 22, 0, tzinfo=UTC),
    datetime(2026, 11, 23, 14, tzinfo=UTC),
]
#: (start, end) day ranges asked for: one day, all, a middle, past the data, before it.
RANGES = [
    (D0, D0),
    (D0, DAYS[-1]),
    (DAYS[1], DAYS[2]),
    (DAYS[2], DAYS[-1] + timedelta(days=5)),
    (D0 - timedelta(days=3), D0 - timedelta(days=1)),
]

# The links the rollup's gaps table must hold, computed from the client table by SQL (what
# revision 0008's fill does): a second implementation to hold the Python one to.
GAPS_FROM_CLIENTS = """
SELECT login_filter, day, previous_day, count(*) AS clients
FROM (
    SELECT f.login_filter, c.day,
           coalesce(lag(c.day) OVER (PARTITION BY f.login_filter, c.client_id ORDER BY c.day),
                    '-infinity') AS previous_day
    FROM clickstream_rollup_clients c
    JOIN (VALUES ('ALL'), ('logged_in'), ('anonymous')) AS f (login_filter)
      ON f.login_filter = 'ALL'
      OR (f.login_filter = 'logged_in' AND c.logged_in)
      OR (f.login_filter = 'anonymous' AND c.anonymous)
) links
GROUP BY 1, 2, 3
"""

ROLLUP_TABLES = (
    "clickstream_rollup_events",
    "clickstream_rollup_products",
    "clickstream_rollup_clients",
    "clickstream_rollup_client_gaps",
)


def hour_objects(hour: datetime, count: int, seed: int, returning: list[str]) -> list[RawObject]:
    """`count` real-shaped objects; a third of the hour's clients are clients of earlier hours
    (`returning`), and a few events are odd the ways the dashboard's rules care about."""
    objects = [o for o in generate_hour(hour, count, seed=seed) if o.expect == "event"]
    documents = [dict(o.documents[0]) for o in objects]
    clients = sorted({d["clientId"] for d in documents})
    rng = random.Random(seed)
    again = dict(
        zip(
            clients[::3],
            rng.sample(returning, min(len(returning), len(clients[::3]))),
            strict=False,
        )
    )
    for n, document in enumerate(documents):
        document["clientId"] = again.get(document["clientId"], document["clientId"])
        if n % 37 == 5:
            del document["clientId"]  # NULL: counted as one more client
        elif n % 37 == 11:
            document["userLoginState"] = ""  # shown as UNKNOWN, in no filter but ALL
        elif n % 37 == 17 and "product" in document:
            document["product"] = {k: v for k, v in document["product"].items() if k != "brand"}
            document["product"]["category"] = ""
    return [
        RawObject(o.key, serialize(d), documents=(d,))
        for o, d in zip(objects, documents, strict=True)
    ]


def assert_kpis_match(engine: sa.Engine, ranges: list[tuple[date, date]] = RANGES) -> None:
    """The function's KPIs equal queries.sql's on the raw rows, for every range and filter;
    the gaps table holds exactly the links of the client table."""
    with engine.connect() as conn:
        for start, end in ranges:
            for login_state in LOGIN_FILTERS:
                expected = raw_kpis(conn, start, end, login_state)
                assert rollup_kpis(conn, start, end, login_state) == expected, (
                    start,
                    end,
                    login_state,
                )
        gaps = conn.execute(
            sa.text(
                "SELECT login_filter, day, previous_day, clients "
                "FROM clickstream_rollup_client_gaps"
            )
        ).all()
        assert sorted(gaps) == sorted(conn.execute(sa.text(GAPS_FROM_CLIENTS)).all())


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one()


@pytest.fixture
def loader(loader_env: dict[str, str]) -> Iterator[HourLoader]:
    settings = load_settings()
    engine = make_engine(settings.db)
    hour_loader = HourLoader(settings, engine, make_source(settings))
    yield hour_loader
    engine.dispose()
    hour_loader.source.close()


def run_cli(*args: str) -> Any:
    """`clickstream-loader ARGS --json` in-process: (exit code, parsed output). The CLI points
    the shared logger at the runner's stderr; it is put back afterwards."""
    saved = [(h, h.stream) for h in log.handlers if isinstance(h, logging.StreamHandler)]
    try:
        result = CliRunner().invoke(app, [*args, "--json"])
    finally:
        for handler, stream in saved:
            handler.stream = stream
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, json.loads(result.stdout)


def test_every_kpi_matches_the_raw_rows_through_loads_deletes_and_erasure(
    loader: HourLoader, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN four real-shaped hours over four days, clients coming back on later days
    returning: list[str] = []
    for n, hour in enumerate(HOURS):
        objects = hour_objects(hour, 60, seed=100 + n, returning=returning)
        upload(s3, bucket, objects)
        returning += sorted(
            {d["clientId"] for o in objects for d in o.documents if "clientId" in d}
        )
    invalid_key = f"{hour_prefix(HOURS[1])}event-00000000-0000-4000-8000-000000000001.json"
    s3.put_object(Bucket=bucket, Key=invalid_key, Body=b'{"0":"h","1":"i"}')

    # WHEN the hourly runs load them
    for hour in HOURS:
        assert run_trigger(loader, Trigger(hour, "manual")).state == "complete"
    # THEN every KPI matches the raw rows, and `rollup --dry-run` finds every day in step
    total = scalar(dw_engine, "SELECT count(*) FROM clickstream_events")
    assert total > 200
    assert scalar(dw_engine, "SELECT count(*) FROM clickstream_events WHERE client_id IS NULL")
    assert_kpis_match(dw_engine)
    code, checked = run_cli(
        "rollup", "--start", "2026-11-19T00", "--end", "2026-11-24T00", "--dry-run"
    )
    assert (code, checked["in_step"], len(checked["days"])) == (0, True, 6)

    # WHEN an hour runs again: nothing is counted twice
    assert run_trigger(loader, Trigger(HOURS[0], "manual")).inserted == 0
    assert_kpis_match(dw_engine)

    # WHEN a late object lands in a loaded hour (a returning client) and the hour runs again
    late = hour_objects(HOURS[1], 3, seed=999, returning=returning[:5])
    upload(s3, bucket, late)
    assert run_trigger(loader, Trigger(HOURS[1], "manual")).inserted == 3
    assert_kpis_match(dw_engine)

    # WHEN the quarantined object is fixed and reprocessed
    fixed = hour_objects(HOURS[1], 1, seed=555, returning=returning[:1])[0]
    s3.put_object(Bucket=bucket, Key=invalid_key, Body=fixed.body)
    assert sum(r.inserted for r in reprocess(loader, HOURS[1])) == 1
    assert scalar(dw_engine, "SELECT count(*) FROM clickstream_events") == total + 4
    assert_kpis_match(dw_engine)

    # WHEN a DBA deletes rows by hand (a whole client-day and some product rows)
    with dw_engine.begin() as conn:
        victim = conn.execute(
            sa.text(
                "SELECT client_id FROM clickstream_rollup_clients WHERE day = :d "
                "ORDER BY client_id LIMIT 1"
            ),
            {"d": DAYS[2]},
        ).scalar_one()
        deleted = conn.execute(
            sa.text(
                "DELETE FROM clickstream_events WHERE client_id = :c "
                "OR event_id IN (SELECT event_id FROM clickstream_events "
                "WHERE context_product_brand IS NOT NULL ORDER BY event_id LIMIT 7)"
            ),
            {"c": victim},
        ).rowcount
    assert deleted > 7
    # THEN the rollups are out of step, the dry run says so and changes nothing
    code, checked = run_cli(
        "rollup", "--start", "2026-11-20T00", "--end", "2026-11-23T23", "--dry-run"
    )
    assert code == 1 and not checked["in_step"]
    assert -sum(d["events"] for d in checked["days"]) == deleted
    assert sum(d["client_days"] for d in checked["days"]) >= 1  # the victim's day is gone
    code, _ = run_cli("rollup", "--start", "2026-11-20T00", "--end", "2026-11-23T23", "--dry-run")
    assert code == 1
    # AND `rollup` over the range puts them back in step
    code, rebuilt = run_cli("rollup", "--start", "2026-11-20T00", "--end", "2026-11-23T23")
    assert code == 0 and -sum(d["events"] for d in rebuilt["days"]) == deleted
    assert {d["state"] for d in rebuilt["days"]} <= {"rebuilt", "in step"}
    assert_kpis_match(dw_engine)

    # WHEN a person's events are erased: deleted with RETURNING, subtracted in the same
    # transaction (the entry point erasure calls)
    tables = tables_for(load_settings())
    columns = ", ".join(ROLLUP_COLUMNS)
    with dw_engine.begin() as conn:
        person = conn.execute(
            sa.text(
                "SELECT client_id FROM clickstream_rollup_clients GROUP BY client_id "
                "HAVING count(*) > 1 ORDER BY client_id LIMIT 1"
            )
        ).scalar_one()  # a client seen on several days: its links change on each
        rows = (
            conn.execute(
                sa.text(f"DELETE FROM clickstream_events WHERE client_id = :c RETURNING {columns}"),
                {"c": person},
            )
            .mappings()
            .all()
        )
        subtract_deleted(conn, tables, rows)
    assert len(rows) > 1
    assert_kpis_match(dw_engine)
    code, checked = run_cli(
        "rollup", "--start", "2026-11-20T00", "--end", "2026-11-23T23", "--dry-run"
    )
    assert (code, checked["in_step"]) == (0, True)

    # AND subtracting rows the rollups never counted is refused, in a clear error
    # (and the transaction that tried rolls back: the caller's error, the caller's rollback)
    with (
        pytest.raises(RollupOutOfStep, match="rebuild those days first"),
        dw_engine.begin() as conn,
    ):
        subtract_deleted(conn, tables, rows)
    assert_kpis_match(dw_engine, [(D0, DAYS[-1])])

    # WHEN retention drops the oldest day (its rows gone, the day rebuilt in the same
    # transaction: what `maintain` does after dropping a day's partition)
    with dw_engine.begin() as conn:
        start, end = day_bounds(D0)
        conn.execute(
            sa.text(
                "DELETE FROM clickstream_events "
                "WHERE event_timestamp >= :s AND event_timestamp < :e"
            ),
            {"s": start, "e": end},
        )
        rebuild_day(conn, tables, D0)
    # THEN the day is gone from the rollups too, and every other number still matches
    assert not scalar(
        dw_engine, "SELECT count(*) FROM clickstream_rollup_clients WHERE day = :d", d=D0
    )
    assert_kpis_match(dw_engine)


def test_concurrent_shards_and_hours_count_every_row_once_without_deadlocks(
    loader_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN two hours of the same day sharing clients, small batches, the INSERT writer
    monkeypatch.setenv("MAX_RECORDS_PER_BATCH", "7")
    monkeypatch.setenv("WRITE_METHOD", "insert")
    first = hour_objects(HOURS[1], 80, seed=7, returning=[])
    clients = sorted({d["clientId"] for o in first for d in o.documents if "clientId" in d})
    upload(s3, bucket, first)
    upload(s3, bucket, hour_objects(HOURS[2], 80, seed=8, returning=clients))
    upload(s3, bucket, hour_objects(HOURS[1] - timedelta(hours=1), 80, seed=9, returning=clients))
    deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    before = scalar(dw_engine, deadlocks)

    # WHEN four loaders commit at once: three shards of one hour, and another hour of the
    # same clients on the next day (each its own engine, like separate Lambda containers)
    settings = load_settings()
    jobs = [Trigger(HOURS[1], "manual", Shard(i, 3)) for i in range(3)]
    jobs += [Trigger(HOURS[2], "manual"), Trigger(HOURS[1] - timedelta(hours=1), "manual")]
    failures: list[BaseException] = []

    def load(trigger: Trigger) -> None:
        engine = make_engine(settings.db)
        try:
            run_trigger(HourLoader(settings, engine, make_source(settings)), trigger)
        except BaseException as exc:  # reported below
            failures.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=load, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    # THEN every row is counted once, and no transaction deadlocked
    assert not failures
    assert scalar(dw_engine, "SELECT count(*) FROM clickstream_events") == 240
    assert scalar(dw_engine, deadlocks) == before
    assert_kpis_match(dw_engine, [(DAYS[1], DAYS[2]), (DAYS[2], DAYS[2])])


def test_the_revision_fills_the_rollups_from_rows_already_loaded(
    loader: HourLoader, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN a warehouse holding events loaded over three days
    returning: list[str] = []
    for n, hour in enumerate(HOURS[:3]):
        objects = hour_objects(hour, 40, seed=300 + n, returning=returning)
        upload(s3, bucket, objects)
        returning += sorted(
            {d["clientId"] for o in objects for d in o.documents if "clientId" in d}
        )
        run_trigger(loader, Trigger(hour, "manual"))
    expected = {}
    with dw_engine.connect() as conn:
        for start, end in RANGES:
            for login_state in LOGIN_FILTERS:
                expected[start, end, login_state] = raw_kpis(conn, start, end, login_state)
    # WHEN the rollups' revision is undone and applied again (as on a warehouse that predates it)
    with dw_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0005_event_trigger")
        assert not sa.inspect(conn).has_table("clickstream_rollup_events")
        command.upgrade(alembic_config(conn), "head")
    # THEN its fill gives exactly the KPIs of the rows, and rows the loader would keep
    assert_kpis_match(dw_engine)
    with dw_engine.connect() as conn:
        for (start, end, login_state), rows in expected.items():
            assert rollup_kpis(conn, start, end, login_state) == rows
    code, checked = run_cli(
        "rollup", "--start", "2026-11-20T00", "--end", "2026-11-22T23", "--dry-run"
    )
    assert (code, checked["in_step"]) == (0, True)


def test_the_function_refuses_bad_arguments_clearly(dw: psycopg.Connection) -> None:
    cases = [
        (("2026-11-24", "2026-11-23", "ALL"), "22023", "end_date 2026-11-23 is before start_date"),
        (("2026-11-23", "2026-11-24", "guest"), "22023", "unknown login_state 'guest'"),
        (("2026-11-23", "2026-11-24", None), "22023", "unknown login_state NULL"),
        ((None, "2026-11-24", "ALL"), "22004", "must not be NULL"),
    ]
    for args, code, message in cases:
        with pytest.raises(psycopg.Error) as excinfo:
            dw.execute("SELECT * FROM clickstream_dashboard(%s, %s, %s)", args)
        dw.rollback()
        assert excinfo.value.sqlstate == code
        assert message in str(excinfo.value)
    # AND the default filter is ALL; an empty range answers zeros, as the app shows them
    rows = dw.execute("SELECT * FROM clickstream_dashboard('2026-11-23', '2026-11-23')").fetchall()
    assert [(kpi, value) for kpi, _rank, _label, value in rows] == [
        ("total_events", 0),
        ("unique_clients", 0),
        ("add_to_cart", 0),
        ("checkout_complete", 0),
        ("checkout_rate_pct", 0),
        ("product_rows", 0),
    ]


def test_maintain_takes_retired_days_out_of_the_rollups(
    loader: HourLoader, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN four loaded days, clients of the first two coming back on the last two
    returning: list[str] = []
    for n, hour in enumerate(HOURS):
        objects = hour_objects(hour, 30, seed=300 + n, returning=returning)
        upload(s3, bucket, objects)
        returning += sorted(
            {d["clientId"] for o in objects for d in o.documents if "clientId" in d}
        )
        assert run_trigger(loader, Trigger(hour, "manual")).state == "complete"
    kept = DAYS[2]
    linked_back = (
        "SELECT count(*) FROM clickstream_rollup_client_gaps "
        "WHERE day >= :k AND previous_day < :k AND previous_day > '-infinity'"
    )
    assert scalar(dw_engine, linked_back, k=kept)  # later client-days link to retired ones
    today = scalar(dw_engine, "SELECT (now() AT TIME ZONE 'UTC')::date")
    options = MaintainOptions(keep_days=(today - kept).days, ahead_days=1)
    old_rows = "SELECT count(*) FROM clickstream_rollup_events WHERE day < :k"
    before = scalar(dw_engine, old_rows, k=kept)

    # WHEN a dry run looks: it counts the rollup rows that would go, and changes nothing
    planned = maintain(dw_engine, replace(options, dry_run=True))
    assert planned.rows_deleted["clickstream_rollup_events"] == before > 0
    assert planned.rows_deleted["clickstream_rollup_clients"] > 0
    assert scalar(dw_engine, old_rows, k=kept) == before

    # WHEN maintain retires the first two days (their partitions dropped)
    result = maintain(dw_engine, options)

    # THEN their rows are gone from the events and from every rollup, later client-days no
    # longer link to them, and every KPI of every range (retired days included) matches the rows
    assert f"clickstream_events_p{D0:%Y%m%d}" in result.dropped
    assert result.rows_deleted["clickstream_rollup_events"] == before
    assert not scalar(
        dw_engine, "SELECT count(*) FROM clickstream_events WHERE event_timestamp < :k", k=kept
    )
    for table in ROLLUP_TABLES:
        assert not scalar(dw_engine, f"SELECT count(*) FROM {table} WHERE day < :k", k=kept)
    assert not scalar(dw_engine, linked_back, k=kept)
    assert scalar(dw_engine, "SELECT count(*) FROM clickstream_rollup_events")
    assert_kpis_match(dw_engine)
    code, checked = run_cli(
        "rollup", "--start", "2026-11-19T00", "--end", "2026-11-24T00", "--dry-run"
    )
    assert (code, checked["in_step"]) == (0, True)

    # WHEN it runs again: nothing more to take out
    again = maintain(dw_engine, options)
    assert not any(n for t, n in again.rows_deleted.items() if t in ROLLUP_TABLES)
    assert_kpis_match(dw_engine)
