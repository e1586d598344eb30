"""Retention on real PostgreSQL: `maintain` premakes and retires day partitions, and every command
answers `retired` for an hour past the recorded retention.

"Today" is the server's UTC date, so the days below are relative to it: old days (today - 5,
today - 4) fall before a three-day retention, the others stay.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from support.notifications import s3_notification, sqs_event
from typer.testing import CliRunner

import lambda_function
from loader.cli import app
from loader.load.retention import day_start
from loader.maintenance import (
    MAINTAIN_LOCK_KEY,
    MaintainOptions,
    MaintenanceError,
    MaintenanceRefused,
    maintain,
)
from loader.observability import log
from loader.schema import DAY_PARTITIONED
from loader.window import hour_label
from tools.demo.traffic import generate_hour, upload

EVENTS = "clickstream_events"


# --- helpers ------------------------------------------------------------------------------------


def server_today(engine: sa.Engine) -> date:
    with engine.connect() as conn:
        today: date = conn.execute(sa.text("SELECT (now() AT TIME ZONE 'UTC')::date")).scalar_one()
        return today


def ensure(engine: sa.Engine, first: date, last: date) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("SELECT clickstream_ensure_partitions(:f, :l)"), {"f": first, "l": last}
        )


def partition_names(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = ANY (CAST(:p AS regclass[]))"
                ),
                {"p": list(DAY_PARTITIONED)},
            ).scalars()
        )


def day_names(day: date, parents: tuple[str, ...] = tuple(DAY_PARTITIONED)) -> set[str]:
    return {f"{parent}_p{day:%Y%m%d}" for parent in parents}


def insert_events(conn: sa.Connection, at: datetime, count: int) -> None:
    """`count` minimal events (and their meta rows) at `at`, through the parents."""
    ids = [uuid.uuid4() for _ in range(count)]
    conn.execute(
        sa.text(
            "INSERT INTO clickstream_events (event_id, event_name, event_timestamp) "
            "VALUES (:id, 'page_view', :at)"
        ),
        [{"id": i, "at": at} for i in ids],
    )
    conn.execute(
        sa.text(
            "INSERT INTO clickstream_ingest_meta "
            "(event_id, event_timestamp, s3_bucket, s3_key, payload_sha256) "
            "VALUES (:id, :at, 'raw', 'events/x.json', :sha)"
        ),
        [{"id": i, "at": at, "sha": b"\x00" * 32} for i in ids],
    )


def count_between(
    engine: sa.Engine, table: str, column: str, start: datetime, end: datetime
) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE {column} >= :s AND {column} < :e"),
                {"s": start, "e": end},
            ).scalar_one()
        )


def add_quarantine(conn: sa.Connection, hour: datetime, key: str) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO clickstream_quarantine "
            "(s3_bucket, s3_key, position, hour, reason_code, first_seen_at, last_seen_at) "
            "VALUES ('raw', :key, 0, :hour, 'malformed', now(), now())"
        ),
        {"key": key, "hour": hour},
    )


def add_run(conn: sa.Connection, hour: datetime) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO clickstream_load_runs "
            "(run_id, hour, trigger, started_at, finished_at, state, loader_version) "
            "VALUES (:id, :hour, 'schedule', :hour, :hour, 'complete', 'test')"
        ),
        {"id": uuid.uuid4(), "hour": hour},
    )


@pytest.fixture
def today(dw_engine: sa.Engine) -> date:
    return server_today(dw_engine)


@pytest.fixture
def old_and_kept_days(dw_engine: sa.Engine, today: date) -> dict[str, date]:
    """Partitions from today - 5 to today, events in two old days and one kept day, quarantine
    rows and ledger rows in an old and a kept hour."""
    old1, old2, kept = today - timedelta(days=5), today - timedelta(days=4), today - timedelta(1)
    ensure(dw_engine, old1, today)
    with dw_engine.begin() as conn:
        for day in (old1, old2, kept):
            insert_events(conn, day_start(day) + timedelta(hours=10), 20)
        add_quarantine(conn, day_start(old1) + timedelta(hours=10), "events/old.json")
        add_quarantine(conn, day_start(kept) + timedelta(hours=10), "events/kept.json")
        add_run(conn, day_start(old1) + timedelta(hours=10))
    return {"old1": old1, "old2": old2, "kept": kept}


# --- maintain -----------------------------------------------------------------------------------


def test_maintain_makes_partitions_ahead_and_retires_old_days_with_their_rows(
    dw_engine: sa.Engine, today: date, old_and_kept_days: dict[str, date]
) -> None:
    old1, old2, kept = (
        old_and_kept_days["old1"],
        old_and_kept_days["old2"],
        old_and_kept_days["kept"],
    )

    result = maintain(dw_engine, MaintainOptions(keep_days=3, ahead_days=2))

    # Made: the two days ahead, for every parent.
    ahead = day_names(today + timedelta(1)) | day_names(today + timedelta(2))
    assert set(result.made) == ahead
    # Dropped: both old days of events, meta and loaded objects; the claims keep one more day
    # (an event at 00:30 of today - 3 claims the window from 23:00 of today - 4), and lose the
    # day before today - 5 that clickstream_ensure_partitions made for today - 5's claims.
    claims = ("clickstream_event_claims",)
    no_claims = tuple(p for p in DAY_PARTITIONED if p not in claims)
    assert set(result.dropped) == (
        day_names(old1 - timedelta(1), claims) | day_names(old1) | day_names(old2, no_claims)
    )
    names = partition_names(dw_engine)
    assert not names & set(result.dropped)
    assert f"clickstream_event_claims_p{old2:%Y%m%d}" in names
    assert ahead | day_names(kept) | day_names(today) <= names
    # The kept day's rows are all there; the retired days' rows are gone with their partitions.
    for table in (EVENTS, "clickstream_ingest_meta"):
        assert (
            count_between(dw_engine, table, "event_timestamp", day_start(kept), day_start(today))
            == 20
        )
        assert (
            count_between(dw_engine, table, "event_timestamp", day_start(old1), day_start(kept))
            == 0
        )
    # Quarantine rows of retired hours deleted, the kept hour's left; the ledger untouched.
    assert result.rows_deleted == {"clickstream_quarantine": 1}
    with dw_engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT s3_key FROM clickstream_quarantine")).scalars().all()
        runs = conn.execute(sa.text("SELECT count(*) FROM clickstream_load_runs")).scalar_one()
        recorded = conn.execute(
            sa.text(
                "SELECT keep_days, ahead_days, updated_by = current_user FROM clickstream_retention"
            )
        ).one()
    assert keys == ["events/kept.json"]
    assert runs == 1
    assert tuple(recorded) == (3, 2, True)

    again = maintain(dw_engine, MaintainOptions(keep_days=3, ahead_days=2))

    assert (again.made, again.dropped, again.finalized, again.retries) == ([], [], [], 0)
    assert again.rows_deleted == {"clickstream_quarantine": 0}
    assert partition_names(dw_engine) == names


def test_dry_run_lists_what_would_change_and_changes_nothing(
    dw_engine: sa.Engine, today: date, old_and_kept_days: dict[str, date]
) -> None:
    before = partition_names(dw_engine)

    planned = maintain(dw_engine, MaintainOptions(keep_days=3, ahead_days=2, dry_run=True))
    real = maintain(dw_engine, MaintainOptions(keep_days=3, ahead_days=2))

    assert planned.made and planned.dropped
    assert (sorted(planned.made), sorted(planned.dropped)) == (
        sorted(real.made),
        sorted(real.dropped),
    )
    assert planned.rows_deleted == real.rows_deleted == {"clickstream_quarantine": 1}
    # ... and the dry run itself had changed nothing: the real run found everything in place.
    assert set(real.dropped) <= before
    assert not set(real.made) & before


def test_dry_run_records_no_retention(dw_engine: sa.Engine, old_and_kept_days: Any) -> None:
    before = partition_names(dw_engine)

    maintain(dw_engine, MaintainOptions(keep_days=3, ahead_days=2, dry_run=True))

    with dw_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM clickstream_retention")).scalar_one() == 0
    assert partition_names(dw_engine) == before


def test_a_shorter_retention_needs_allow_shorter(dw_engine: sa.Engine, today: date) -> None:
    maintain(dw_engine, MaintainOptions(keep_days=10, ahead_days=1))

    with pytest.raises(MaintenanceRefused, match=r"keeps 10 days.*--allow-shorter"):
        maintain(dw_engine, MaintainOptions(keep_days=4, ahead_days=1))
    shorter = maintain(dw_engine, MaintainOptions(keep_days=4, ahead_days=1, allow_shorter=True))

    with dw_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT keep_days FROM clickstream_retention")).scalar() == 4
    assert shorter.dropped  # the days between 10 and 4 ago went at once
    assert all(p.split("_p")[-1] < f"{today - timedelta(4):%Y%m%d}" for p in shorter.dropped)


def test_the_legacy_partition_retires_once_its_upper_bound_is_past_the_horizon(
    dw_engine: sa.Engine, today: date
) -> None:
    # GIVEN a converted warehouse: a legacy partition of the events up to today - 4, holding rows
    bound = day_start(today - timedelta(days=4))
    with dw_engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {EVENTS}_legacy (LIKE {EVENTS} INCLUDING DEFAULTS)"))
        conn.execute(
            sa.text(
                f"ALTER TABLE {EVENTS} ATTACH PARTITION {EVENTS}_legacy "
                f"FOR VALUES FROM (MINVALUE) TO ('{bound.isoformat()}')"
            )
        )
        conn.execute(
            sa.text(
                f"INSERT INTO {EVENTS} (event_id, event_name, event_timestamp) "
                "VALUES (gen_random_uuid(), 'old', :at)"
            ),
            {"at": bound - timedelta(days=30)},
        )

    # WHEN the horizon is still inside its range (today - 5), THEN it stays
    kept = maintain(dw_engine, MaintainOptions(keep_days=5, ahead_days=0))
    assert f"{EVENTS}_legacy" not in kept.dropped
    assert f"{EVENTS}_legacy" in partition_names(dw_engine)
    # (the daily partitions start where it ends)
    assert f"{EVENTS}_p{today - timedelta(5):%Y%m%d}" not in partition_names(dw_engine)

    # WHEN the horizon reaches its upper bound (today - 4), THEN it goes with its rows
    retired = maintain(dw_engine, MaintainOptions(keep_days=4, ahead_days=0, allow_shorter=True))
    assert f"{EVENTS}_legacy" in retired.dropped
    with dw_engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT to_regclass('{EVENTS}_legacy')")).scalar() is None
        assert conn.execute(sa.text(f"SELECT count(*) FROM {EVENTS}")).scalar_one() == 0


def test_a_detach_left_pending_is_finished_by_the_next_run(
    dw_engine: sa.Engine, today: date, old_and_kept_days: dict[str, date]
) -> None:
    old1 = f"{EVENTS}_p{old_and_kept_days['old1']:%Y%m%d}"
    # GIVEN a transaction whose snapshot still sees the events (a long report, say)
    reader = dw_engine.connect().execution_options(isolation_level="REPEATABLE READ")
    reader.begin()
    reader.execute(sa.text(f"SELECT count(*) FROM {EVENTS}")).scalar_one()
    try:
        # WHEN maintain's detach waits for it past lock_timeout, with no retry left
        with pytest.raises(MaintenanceError, match="Rerun") as failed:
            maintain(dw_engine, MaintainOptions(3, 0, lock_timeout_s=0.3, attempts=1))
        with dw_engine.connect() as conn:
            pending = (
                conn.execute(
                    sa.text(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhdetachpending"
                    )
                )
                .scalars()
                .all()
            )
    finally:
        reader.rollback()
        reader.close()
    # THEN the partition is left "detach pending" (the other tables' old days went)
    assert old1 in str(failed.value)
    assert pending == [old1]

    # WHEN the next run comes, THEN it finalizes the detach and drops the partition
    result = maintain(dw_engine, MaintainOptions(3, 0))

    assert result.finalized == [old1]
    assert old1 in result.dropped
    assert old1 not in partition_names(dw_engine)
    with dw_engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT to_regclass('{old1}')")).scalar() is None


def test_maintain_while_a_load_writes_loses_no_row_of_a_kept_day(
    dw_engine: sa.Engine, today: date, old_and_kept_days: dict[str, date]
) -> None:
    """A writer inserting through the parent the whole time, each transaction held open a
    moment (as a batch is): the detaches wait for it, no insert fails, no row is lost."""
    stop = threading.Event()
    inserted: list[int] = []
    errors: list[BaseException] = []
    at = day_start(today) + timedelta(hours=1)

    def write() -> None:
        try:
            while not stop.is_set():
                with dw_engine.begin() as conn:
                    insert_events(conn, at, 10)
                    time.sleep(0.05)
                inserted.append(10)
        except BaseException as exc:  # the assertion below shows it
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while not inserted:
            time.sleep(0.01)
        result = maintain(dw_engine, MaintainOptions(keep_days=3, ahead_days=1))
        time.sleep(0.1)
    finally:
        stop.set()
        writer.join(timeout=30)

    assert errors == []
    assert result.dropped and not set(result.dropped) & partition_names(dw_engine)
    assert len(inserted) > 1
    end = day_start(today + timedelta(days=1))
    assert count_between(dw_engine, EVENTS, "event_timestamp", day_start(today), end) == sum(
        inserted
    )


def test_the_first_hour_of_the_first_kept_day_loads_after_maintain(
    dw_engine: sa.Engine, today: date, s3: Any, bucket: str, loader_env: dict[str, str]
) -> None:
    """Its events claim windows that start at 23:00 of the day before, which is retired: that
    day's claims partition stays, and asking for the hour's partitions must not be refused."""
    result = maintain(dw_engine, MaintainOptions(keep_days=3, ahead_days=1))
    hour = result.horizon
    objects = upload(s3, bucket, list(generate_hour(hour, 5, malformed_ratio=0, seed=7)))
    lambda_function._factory.close()
    try:
        report = lambda_function.lambda_handler({"hour": hour_label(hour)}, None)
    finally:
        lambda_function._factory.close()

    assert (report["state"], report["inserted"]) == ("complete", len(objects))
    with dw_engine.connect() as conn:
        claims = conn.execute(
            sa.text("SELECT count(*) FROM clickstream_event_claims WHERE window_start < :h"),
            {"h": hour},
        ).scalar_one()
    assert claims == len(objects)  # one odd-grid claim each, in the retired day's partition


def test_the_maintain_command_renders_dry_runs_and_exits_2_refused_3_busy(
    dw_engine: sa.Engine, old_and_kept_days: dict[str, date], loader_env: dict[str, str]
) -> None:
    help_text = run_cli("maintain", "--help").stdout
    dry = run_cli("maintain", "--keep-days", "3", "--ahead-days", "1", "--dry-run")
    done = json.loads(run_cli("maintain", "--keep-days", "3", "--ahead-days", "1", "--json").stdout)
    refused = run_cli("maintain", "--keep-days", "2", code=2)
    with dw_engine.connect() as holder:
        holder.execute(sa.select(sa.func.pg_advisory_lock(MAINTAIN_LOCK_KEY)))
        busy = run_cli("maintain", "--keep-days", "3", code=3)
        holder.execute(sa.select(sa.func.pg_advisory_unlock(MAINTAIN_LOCK_KEY)))

    for option in ("--keep-days", "--ahead-days", "--dry-run", "--json", "--allow-shorter"):
        assert option in help_text
    assert "would keep 3 days" in dry.stdout
    assert f"p{old_and_kept_days['old1']:%Y%m%d}" in dry.stdout  # the first partition to go
    assert done["dry_run"] is False and done["keep_days"] == 3 and done["dropped"]
    assert "--allow-shorter" in refused.stderr
    assert "another `clickstream-loader maintain` is running" in busy.stderr


# --- every command's answer for a retired hour ----------------------------------------------------


def run_cli(*args: str, code: int = 0) -> Any:
    runner = CliRunner()
    saved = [(h, h.stream) for h in log.handlers if hasattr(h, "stream")]
    try:
        result = runner.invoke(app, list(args))
    finally:
        for handler, stream in saved:
            handler.stream = stream
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


@pytest.fixture
def retired(
    dw_engine: sa.Engine, today: date, s3: Any, bucket: str, loader_env: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """A three-day retention recorded; objects in S3 for an hour of today - 5 (retired) and for
    the last hour before the horizon; a ledger row from when that hour was loaded."""
    hour = day_start(today - timedelta(days=5)) + timedelta(hours=10)
    horizon = day_start(today - timedelta(days=3))
    objects = upload(s3, bucket, list(generate_hour(hour, 4, malformed_ratio=0, seed=5)))
    upload(s3, bucket, list(generate_hour(horizon - timedelta(hours=1), 3, seed=6)))
    with dw_engine.begin() as conn:
        add_run(conn, hour)
    maintain(dw_engine, MaintainOptions(keep_days=3, ahead_days=1))
    lambda_function._factory.close()
    yield {"hour": hour, "horizon": horizon, "keys": [o.key for o in objects]}
    lambda_function._factory.close()


def ledger_hours(engine: sa.Engine) -> list[datetime]:
    with engine.connect() as conn:
        return list(
            conn.execute(sa.text("SELECT hour FROM clickstream_load_runs ORDER BY hour")).scalars()
        )


def test_run_and_backfill_say_retired_and_touch_nothing(
    dw_engine: sa.Engine, retired: dict[str, Any]
) -> None:
    label = hour_label(retired["hour"])
    before = ledger_hours(dw_engine)

    run = run_cli("run", "--hour", label, "--json")
    dry = run_cli("run", "--hour", label, "--dry-run", "--json")
    backfill = run_cli(
        "backfill",
        "--start",
        label,
        "--end",
        hour_label(retired["hour"] + timedelta(hours=1)),
        "--json",
    )
    table = run_cli("backfill", "--start", label, "--end", label)

    assert json.loads(run.stdout)["state"] == "retired"
    assert "retention keeps 3 days" in run.stderr
    assert json.loads(dry.stdout)["state"] == "retired"
    summary = json.loads(backfill.stdout)
    assert summary["retired"] == [label, hour_label(retired["hour"] + timedelta(hours=1))]
    assert summary["skipped_complete"] == []  # retired wins over the old complete run
    assert summary["inserted"] == 0
    assert "1 hours retired (past retention): not loaded" in table.stdout
    assert ledger_hours(dw_engine) == before  # no run recorded for a retired hour
    with dw_engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {EVENTS}")).scalar_one() == 0


def test_check_exits_0_and_status_shows_retired(
    dw_engine: sa.Engine, retired: dict[str, Any]
) -> None:
    label = hour_label(retired["hour"])

    check = run_cli("check", "--hour", label, "--json")
    check_table = run_cli("check", "--hour", label)
    status = run_cli("status", "--start", label, "--end", label, "--json")

    (entry,) = json.loads(check.stdout)["hours"]
    assert entry["state"] == "retired"
    assert entry["unloaded"] is None
    assert json.loads(check.stdout)["unloaded_keys"] == []
    assert "retired" in check_table.stdout
    (hour,) = json.loads(status.stdout)["hours"]
    assert hour["state"] == "retired"
    assert hour["ledger"] == "complete"  # the ledger row is kept


def test_the_schedule_looks_back_past_retired_hours_and_finalize_says_retired(
    dw_engine: sa.Engine, retired: dict[str, Any]
) -> None:
    horizon = retired["horizon"]
    schedule = {
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "time": (horizon + timedelta(hours=1, minutes=5)).isoformat().replace("+00:00", "Z"),
    }

    summary = lambda_function.lambda_handler(schedule, None)
    finalize = lambda_function.lambda_handler(
        {"action": "finalize", "hour": hour_label(retired["hour"]), "shard_count": 2}, None
    )

    # The scheduled hour (the first kept one) ran; the two hours before it are retired: skipped,
    # never reported missing although S3 holds objects for one of them.
    assert summary["hour"] == hour_label(horizon)
    assert summary["state"] == "complete"
    assert summary["lookback"] == [
        {"hour": hour_label(horizon - timedelta(hours=2)), "state": "retired"},
        {"hour": hour_label(horizon - timedelta(hours=1)), "state": "retired"},
    ]
    assert summary["missing_hours"] == []
    assert finalize["state"] == "retired"
    assert horizon - timedelta(hours=1) not in ledger_hours(dw_engine)


def test_notifications_for_a_retired_hour_are_acknowledged_and_counted(
    dw_engine: sa.Engine, retired: dict[str, Any], bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    event = sqs_event([s3_notification(bucket, key) for key in retired["keys"]])
    before = ledger_hours(dw_engine)

    response = lambda_function.lambda_handler(event, None)

    assert response == {"batchItemFailures": []}  # nothing comes back to the queue
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line[:1] == "{"]
    (batch,) = [line["batch"] for line in lines if line.get("message") == "batch finished"]
    assert batch["objects_retired"]["count"] == len(retired["keys"])
    assert batch["objects_committed"] == 0
    metrics = [line for line in lines if "ObjectsRetired" in line]
    assert metrics and metrics[0]["ObjectsRetired"] == [float(len(retired["keys"]))]
    assert ledger_hours(dw_engine) == before
