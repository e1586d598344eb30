"""`clickstream-loader` end to end: every subcommand against the real PostgreSQL and S3 servers.

Most tests drive `loader.cli.app` in-process through typer's CliRunner (the same argument
parsing, the same rendering, stdout and stderr kept apart); the lock tests and one smoke test
run `python -m loader` as real child processes, because an advisory lock is only meaningful
between two sessions and the console entry point (`main`) only runs in a process of its own.
Nothing is patched: a failing S3 is a closed port, a busy hour is a lock the test really holds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
import sqlalchemy as sa
from click.testing import Result
from typer.testing import CliRunner

from loader.cli import app
from loader.common import S3TransientError
from loader.load.locks import lock_key
from loader.observability import log
from loader.window import hour_label, hour_prefix
from tools.demo.traffic import RawObject, generate_hour, upload

ROOT = Path(__file__).resolve().parents[2]
T10 = datetime(2026, 11, 24, 10, tzinfo=UTC)
T11 = T10 + timedelta(hours=1)
T12 = T10 + timedelta(hours=2)
T13 = T10 + timedelta(hours=3)
TABLES = (
    "clickstream_events",
    "clickstream_ingest_meta",
    "clickstream_load_runs",
    "clickstream_quarantine",
)
#: The report keys `run --json` documents (the Lambda returns the same summary).
REPORT_KEYS = {
    "hour",
    "prefix",
    "state",
    "run_id",
    "objects_listed",
    "events_read",
    "inserted",
    "duplicates",
    "duplicate_exact",
    "duplicate_conflicting",
    "malformed",
    "invalid",
    "quarantined",
    "conflicting",
    "sanitised",
    "truncated",
    "batches",
    "retries",
    "seconds",
}
KEY_LIST = {"count", "keys", "keys_truncated"}


class Cli(Protocol):
    def __call__(self, *args: str, code: int = 0) -> Result: ...


@pytest.fixture
def cli(loader_env: dict[str, str]) -> Cli:
    """Invoke the CLI in-process; asserts the exit code.

    The CLI points the shared logger at its stderr, which the runner closes when the command
    returns: a real process runs one command, a test runs many, so the logger's own stream is
    put back after each (by assignment: `setStream` would flush the closed one)."""
    runner = CliRunner()
    saved = [(h, h.stream) for h in log.handlers if isinstance(h, logging.StreamHandler)]

    def invoke(*args: str, code: int = 0) -> Result:
        try:
            result = runner.invoke(app, list(args))
        finally:
            for handler, stream in saved:
                handler.stream = stream
        assert result.exit_code == code, (
            f"exit {result.exit_code}, expected {code}\nstdout: {result.stdout}\n"
            f"stderr: {result.stderr}\nexception: {result.exception!r}"
        )
        return result

    return invoke


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def put_hour(
    s3: Any, bucket: str, hour: datetime, count: int, *, seed: int, malformed: int = 0
) -> list[RawObject]:
    """`count` good objects (each seed gives its own keys and event ids) plus `malformed`
    objects that are not JSON."""
    objects = list(generate_hour(hour, count, malformed_ratio=0, seed=seed))
    prefix = hour_prefix(hour)
    objects += [
        RawObject(f"{prefix}broken-{seed}-{i}.json", b"{not json", expect="malformed")
        for i in range(malformed)
    ]
    return upload(s3, bucket, objects)


def table_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in TABLES
        }


def ledger(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM clickstream_load_runs ORDER BY started_at"))
        return [dict(row) for row in rows.mappings()]


def closed_port_url() -> str:
    """An endpoint where nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def event_id_of(obj: RawObject) -> uuid.UUID:
    """The event id of a generated object: the tracker's `eventId`, a UUID used as is."""
    return uuid.UUID(obj.documents[0]["eventId"])


# --- help -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (
            [],
            [
                *("run", "backfill", "reprocess", "status", "check"),
                *("erase", "erasures", "rollup", "demo"),
            ],
        ),
        (["run"], ["--hour", "--dry-run", "--json"]),
        (["backfill"], ["--start", "--end", "--force", "--dry-run", "--json"]),
        (["reprocess"], ["--hour", "--key", "--json"]),
        (["status"], ["--since", "--start", "--end", "--json"]),
        (["check"], ["--hour", "--start", "--end", "--json"]),
        (["rollup"], ["--start", "--end", "--dry-run", "--json"]),
        (["demo"], ["--events", "--serve", "--json"]),
        (
            ["erase"],
            [
                "--user-id",
                "--client-id",
                "--request-id",
                "--suppress-future",
                "--dry-run",
                "--json",
            ],
        ),
        (["erasures"], ["--open", "--overdue", "--json"]),
    ],
)
def test_every_subcommand_has_help(cli: Cli, command: list[str], options: list[str]) -> None:
    result = cli(*command, "--help")
    for option in options:
        assert option in result.stdout


# --- run ------------------------------------------------------------------------------------------


def test_run_json_is_the_report_and_the_ledger_row_matches_it(
    cli: Cli, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN an hour with 4 good objects, 1 that is not JSON and 1 event without a name
    objects = put_hour(s3, bucket, T13, 4, seed=1, malformed=1)
    invalid_key = hour_prefix(T13) + "no-name.json"
    s3.put_object(Bucket=bucket, Key=invalid_key, Body=b'{"pageUrl": "https://x.example/"}')
    # WHEN `run --hour --json`
    report = as_json(cli("run", "--hour", "2026-11-24T13", "--json"))
    # THEN stdout is the documented report
    assert report.keys() >= REPORT_KEYS
    for name in ("malformed", "invalid", "quarantined", "conflicting"):
        assert report[name].keys() == KEY_LIST
    assert report["hour"] == "2026-11-24T13"
    assert report["prefix"] == "events/2026/11/24/13/"
    assert report["state"] == "complete"
    assert report["objects_listed"] == 6
    assert report["events_read"] == 5
    assert report["inserted"] == 4
    assert report["duplicates"] == 0
    assert report["malformed"]["count"] == 1
    assert report["malformed"]["keys"] == [o.key for o in objects if o.expect == "malformed"]
    assert report["invalid"]["keys"] == [invalid_key]
    assert report["batches"] == 1
    assert report["retries"] == 0
    assert isinstance(report["seconds"], float)
    # AND the ledger holds one complete row with the same counts
    [row] = ledger(dw_engine)
    assert str(row["run_id"]) == report["run_id"]
    assert row["trigger"] == "manual"
    assert row["state"] == "complete"
    assert row["finished_at"] is not None
    assert row["error_summary"] is None
    assert row["db_revision"] == report["db_revision"]
    for name in (
        "objects_listed",
        "events_read",
        "inserted",
        "duplicate_exact",
        "duplicate_conflicting",
        "sanitised",
        "truncated",
        "retries",
    ):
        assert row[name] == report[name], name
    assert row["malformed"] == 1
    assert row["invalid"] == 1
    assert row["quarantined"] == 0
    assert table_counts(dw_engine) == {
        "clickstream_events": 4,
        "clickstream_ingest_meta": 4,
        "clickstream_load_runs": 1,
        "clickstream_quarantine": 2,
    }
    # AND a second run inserts nothing and counts exact duplicates
    again = as_json(cli("run", "--hour", "2026-11-24T13", "--json"))
    assert (again["inserted"], again["duplicate_exact"]) == (0, 4)


def test_run_renders_a_table_without_json(cli: Cli, s3: Any, bucket: str) -> None:
    put_hour(s3, bucket, T13, 2, seed=2, malformed=1)
    result = cli("run", "--hour", "2026-11-24T13")
    assert "2026-11-24T13" in result.stdout
    assert "complete" in result.stdout
    assert "malformed: events/2026/11/24/13/broken-2-0.json" in result.stdout


def test_run_rejects_a_bad_hour(cli: Cli) -> None:
    result = cli("run", "--hour", "yesterday", code=2)
    assert "2026-11-24T13" in result.stderr  # the message shows the expected shape


def test_run_dry_run_writes_nothing_and_counts_only_missing_events(
    cli: Cli, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN an hour with 5 good objects and 1 malformed, nothing loaded yet
    first = put_hour(s3, bucket, T13, 5, seed=3, malformed=1)
    empty = table_counts(dw_engine)
    assert set(empty.values()) == {0}
    # WHEN a dry run
    report = as_json(cli("run", "--hour", "2026-11-24T13", "--dry-run", "--json"))
    # THEN it reports what would load and writes nothing: no events, no ledger, no quarantine
    assert report["dry_run"] is True
    assert report["would_insert"] == 5
    assert report["inserted"] == 0
    assert report["malformed"]["count"] == 1
    assert table_counts(dw_engine) == empty
    # GIVEN the hour loaded for real, then 3 late objects and one loaded event deleted
    cli("run", "--hour", "2026-11-24T13", "--json")
    put_hour(s3, bucket, T13, 3, seed=4)
    gone = next(o for o in first if o.expect == "event")
    with dw_engine.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM clickstream_events WHERE event_id = :id"),
            {"id": event_id_of(gone)},
        )
    before = table_counts(dw_engine)
    # WHEN a dry run again THEN only the 4 missing events would load, and still nothing is written
    report = as_json(cli("run", "--hour", "2026-11-24T13", "--dry-run", "--json"))
    assert report["objects_listed"] == 9
    assert report["would_insert"] == 4
    assert table_counts(dw_engine) == before
    # AND the real run inserts exactly those
    assert as_json(cli("run", "--hour", "2026-11-24T13", "--json"))["inserted"] == 4


# --- backfill -------------------------------------------------------------------------------------


def test_backfill_loads_in_order_skips_complete_hours_and_force_reloads(
    cli: Cli, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN three hours of objects, none loaded
    sizes = {T10: 2, T11: 3, T12: 1}
    for seed, (hour, count) in enumerate(sizes.items(), start=10):
        put_hour(s3, bucket, hour, count, seed=seed)
    labels = [hour_label(h) for h in sizes]
    # WHEN backfill over the range
    result = as_json(cli("backfill", "--start", labels[0], "--end", labels[-1], "--json"))
    # THEN every hour loads, in order, with the backfill trigger in the ledger
    assert [h["hour"] for h in result["hours"]] == labels
    assert [h["inserted"] for h in result["hours"]] == list(sizes.values())
    assert result["inserted"] == 6
    assert result["skipped_complete"] == []
    rows = ledger(dw_engine)
    assert [(r["hour"], r["trigger"], r["state"]) for r in rows] == [
        (h, "backfill", "complete") for h in sizes
    ]
    # WHEN backfill again THEN every hour is skipped as complete, nothing is listed or written
    again = as_json(cli("backfill", "--start", labels[0], "--end", labels[-1], "--json"))
    assert again == {"hours": [], "skipped_complete": labels, "retired": [], "inserted": 0}
    assert len(ledger(dw_engine)) == 3
    # AND the plain output (not a TTY) is one line per hour on stderr
    plain = cli("backfill", "--start", labels[0], "--end", labels[-1])
    assert plain.stderr.count("skipped (complete)") == 3
    assert "skipped 3 complete hours" in plain.stdout
    # WHEN --force THEN every hour is read again and nothing is inserted twice
    forced = as_json(
        cli("backfill", "--start", labels[0], "--end", labels[-1], "--force", "--json")
    )
    assert [h["hour"] for h in forced["hours"]] == labels
    assert forced["inserted"] == 0
    assert [h["duplicate_exact"] for h in forced["hours"]] == list(sizes.values())
    assert len(ledger(dw_engine)) == 6
    assert table_counts(dw_engine)["clickstream_events"] == 6


def test_backfill_retries_an_hour_whose_run_failed(
    cli: Cli,
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    loader_env: dict[str, str],
) -> None:
    put_hour(s3, bucket, T10, 2, seed=20)
    put_hour(s3, bucket, T11, 3, seed=21)
    cli("run", "--hour", hour_label(T10), "--json")
    # GIVEN a run of T11 that failed: S3 unreachable while listing
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_port_url())
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "1")
    failed = cli("run", "--hour", hour_label(T11), "--json", code=1)
    assert isinstance(failed.exception, S3TransientError)
    assert [r["state"] for r in ledger(dw_engine)] == ["complete", "failed"]
    # WHEN backfill over both hours with S3 back
    monkeypatch.setenv("AWS_ENDPOINT_URL", loader_env["AWS_ENDPOINT_URL"])
    result = as_json(
        cli("backfill", "--start", hour_label(T10), "--end", hour_label(T11), "--json")
    )
    # THEN the complete hour is skipped and the failed one is loaded
    assert result["skipped_complete"] == [hour_label(T10)]
    assert [(h["hour"], h["state"], h["inserted"]) for h in result["hours"]] == [
        (hour_label(T11), "complete", 3)
    ]
    assert table_counts(dw_engine)["clickstream_events"] == 5


def test_backfill_dry_run_writes_nothing(
    cli: Cli, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    put_hour(s3, bucket, T10, 2, seed=30, malformed=1)
    put_hour(s3, bucket, T11, 3, seed=31)
    result = as_json(
        cli("backfill", "--start", hour_label(T10), "--end", hour_label(T11), "--dry-run", "--json")
    )
    assert [(h["hour"], h["dry_run"], h["would_insert"]) for h in result["hours"]] == [
        (hour_label(T10), True, 2),
        (hour_label(T11), True, 3),
    ]
    assert result["inserted"] == 0
    assert set(table_counts(dw_engine).values()) == {0}


def test_backfill_refuses_an_end_before_its_start(cli: Cli) -> None:
    result = cli("backfill", "--start", hour_label(T11), "--end", hour_label(T10), code=2)
    assert "--end is before --start" in result.stderr


# --- status ---------------------------------------------------------------------------------------


def test_status_shows_complete_missing_failed_and_empty_hours_with_quarantine_counts(
    cli: Cli,
    s3: Any,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    loader_env: dict[str, str],
) -> None:
    # GIVEN T10 loaded (2 good, 1 malformed), T11 with objects never loaded,
    # T12 whose only run failed, and T13 with nothing at all
    put_hour(s3, bucket, T10, 2, seed=40, malformed=1)
    put_hour(s3, bucket, T11, 2, seed=41)
    put_hour(s3, bucket, T12, 2, seed=42)
    cli("run", "--hour", hour_label(T10), "--json")
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_port_url())
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "1")
    cli("run", "--hour", hour_label(T12), "--json", code=1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", loader_env["AWS_ENDPOINT_URL"])
    # WHEN status over the fixed range
    data = as_json(cli("status", "--start", hour_label(T10), "--end", hour_label(T13), "--json"))
    # THEN one entry per hour, in order, with its state and counts
    hours = {h["hour"]: h for h in data["hours"]}
    assert list(hours) == [hour_label(h) for h in (T10, T11, T12, T13)]
    assert [h["state"] for h in data["hours"]] == ["complete", "missing", "failed", "empty"]
    loaded = hours[hour_label(T10)]
    assert loaded["objects_listed"] == 3
    assert loaded["inserted"] == 2
    assert loaded["duplicates"] == 0
    assert loaded["skipped"] == 1
    assert loaded["quarantined"] == 1
    assert loaded["trigger"] == "manual"
    assert loaded["lag_seconds"] is not None
    assert "S3TransientError" in hours[hour_label(T12)]["error"]
    assert hours[hour_label(T11)]["quarantined"] == 0
    # AND the table names the states too
    table = cli("status", "--start", hour_label(T10), "--end", hour_label(T13)).stdout
    for state in ("complete", "missing", "failed", "empty"):
        assert state in table


def test_status_since_and_argument_errors(cli: Cli) -> None:
    # --since counts back from now: 3h is the three complete hours before this one
    data = as_json(cli("status", "--since", "3h", "--json"))
    assert len(data["hours"]) == 3
    assert all({"hour", "state", "quarantined"} <= h.keys() for h in data["hours"])
    # --start alone runs to the last complete hour
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    data = as_json(cli("status", "--start", hour_label(start), "--json"))
    assert data["hours"][0]["hour"] == hour_label(start)
    assert 1 <= len(data["hours"]) <= 3  # 2, unless the clock crossed an hour meanwhile
    cli("status", "--since", "48h", "--start", hour_label(T10), code=2)
    cli("status", "--end", hour_label(T10), code=2)
    cli("status", "--start", hour_label(T11), "--end", hour_label(T10), code=2)
    assert "48h" in cli("status", "--since", "two days", code=2).stderr


# --- check ----------------------------------------------------------------------------------------


def test_check_exits_1_listing_unloaded_keys_and_0_when_all_is_there(
    cli: Cli, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN a loaded hour: 3 good objects and 1 malformed (quarantined, so accounted for)
    objects = put_hour(s3, bucket, T13, 3, seed=50, malformed=1)
    cli("run", "--hour", hour_label(T13), "--json")
    # WHEN check THEN exit 0 and nothing unloaded
    data = as_json(cli("check", "--hour", hour_label(T13), "--json"))
    assert data == {
        "hours": [
            {
                "hour": "2026-11-24T13",
                "objects": 4,
                "loaded": 3,
                "quarantined": 1,
                "unloaded": 0,
                "state": "reconciled",
            }
        ],
        "unloaded_keys": [],
    }
    # GIVEN the rows of one key deleted from the warehouse
    victim_object = next(o for o in objects if o.expect == "event")
    victim = victim_object.key
    with dw_engine.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM clickstream_events WHERE event_id = :id"),
            {"id": event_id_of(victim_object)},
        )
    # WHEN check THEN exit 1 and that key is listed, by --hour and by range
    data = as_json(cli("check", "--hour", hour_label(T13), "--json", code=1))
    assert data["unloaded_keys"] == [victim]
    assert (data["hours"][0]["unloaded"], data["hours"][0]["state"]) == (1, "unloaded")
    ranged = as_json(
        cli("check", "--start", hour_label(T12), "--end", hour_label(T13), "--json", code=1)
    )
    assert [h["hour"] for h in ranged["hours"]] == [hour_label(T12), hour_label(T13)]
    assert ranged["unloaded_keys"] == [victim]
    assert f"unloaded: {victim}" in cli("check", "--hour", hour_label(T13), code=1).stdout
    # AND after a rerun all is there again
    cli("run", "--hour", hour_label(T13), "--json")
    cli("check", "--hour", hour_label(T13), "--json")
    # AND check without an hour is a usage error
    cli("check", code=2)


# --- reprocess (the rest of its behaviour is in test_operations.py) -------------------------------


def test_reprocess_with_nothing_quarantined(cli: Cli) -> None:
    assert as_json(cli("reprocess", "--json")) == {"hours": []}
    assert "nothing quarantined" in cli("reprocess").stdout


def test_reprocess_loads_a_fixed_object_through_the_cli(
    cli: Cli, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    objects = put_hour(s3, bucket, T13, 2, seed=60, malformed=1)
    cli("run", "--hour", hour_label(T13), "--json")
    broken = next(o for o in objects if o.expect == "malformed")
    good = generate_hour(T13, 1, malformed_ratio=0, seed=61)
    s3.put_object(Bucket=bucket, Key=broken.key, Body=next(good).body)
    result = as_json(cli("reprocess", "--key", broken.key, "--json"))
    assert [(h["hour"], h["trigger"], h["inserted"]) for h in result["hours"]] == [
        (hour_label(T13), "reprocess", 1)
    ]
    with dw_engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM clickstream_quarantine WHERE resolved_at IS NULL")
            ).scalar_one()
            == 0
        )
    assert table_counts(dw_engine)["clickstream_events"] == 3


# --- real processes -------------------------------------------------------------------------------


def python_m_loader(
    *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loader", *args],
        env={**os.environ, **(extra_env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def spawn_loader(*args: str, extra_env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loader", *args],
        env={**os.environ, **extra_env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_python_m_loader_runs_an_hour_with_json_on_stdout_and_json_logs_on_stderr(
    loader_env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    put_hour(s3, bucket, T13, 3, seed=70, malformed=1)
    done = python_m_loader("run", "--hour", "2026-11-24T13", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report.keys() >= REPORT_KEYS
    assert (report["state"], report["inserted"], report["malformed"]["count"]) == (
        "complete",
        3,
        1,
    )
    # Logs are JSON lines on stderr, correlated by hour and run id.
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    skipped = [entry for entry in logs if entry.get("message") == "skipped"]
    assert skipped and skipped[0]["hour"] == "2026-11-24T13"
    assert skipped[0]["run_id"] == report["run_id"]
    assert table_counts(dw_engine)["clickstream_events"] == 3
    # The console entry point turns configuration errors into exit 2 with the variable named.
    env_without_bucket = {k: v for k, v in os.environ.items() if k != "RAW_BUCKET_NAME"}
    done = subprocess.run(
        [sys.executable, "-m", "loader", "status", "--json"],
        env=env_without_bucket,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "RAW_BUCKET_NAME" in done.stderr


def test_a_second_process_exits_3_already_running_while_the_hour_is_locked(
    loader_env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    put_hour(s3, bucket, T13, 3, seed=80)
    # GIVEN another session holding hour 13's advisory lock
    with dw_engine.connect() as holder:
        holder.execute(
            sa.select(sa.func.pg_advisory_lock(lock_key("2026-11-24T13", None)))
        ).scalar()
        holder.commit()
        # WHEN a loader process runs that hour, waiting at most a second
        done = python_m_loader(
            "run", "--hour", "2026-11-24T13", "--json", extra_env={"LOCK_WAIT_SECONDS": "1"}
        )
        # THEN it exits cleanly with 3, reports already_running, and writes nothing at all
        assert done.returncode == 3, done.stderr
        report = json.loads(done.stdout)
        assert report["state"] == "already_running"
        assert report["objects_listed"] == 0
        assert set(table_counts(dw_engine).values()) == {0}
        # AND another hour is not blocked by it
        other = python_m_loader(
            "run", "--hour", "2026-11-24T12", "--json", extra_env={"LOCK_WAIT_SECONDS": "1"}
        )
        assert other.returncode == 0, other.stderr
        assert json.loads(other.stdout)["state"] == "complete"
        holder.execute(sa.select(sa.func.pg_advisory_unlock_all()))
        holder.commit()


def test_two_concurrent_processes_load_each_event_once(
    loader_env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    objects = put_hour(s3, bucket, T13, 60, seed=90, malformed=2)
    env = {"MAX_RECORDS_PER_BATCH": "10", "LOCK_WAIT_SECONDS": "1"}
    procs = [spawn_loader("run", "--hour", "2026-11-24T13", "--json", extra_env=env) for _ in "ab"]
    outputs = [p.communicate(timeout=120) for p in procs]
    results = [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]
    for code, _, stderr in results:
        assert code in (0, 3), stderr
    reports = [json.loads(stdout) for _, stdout, _ in results]
    assert {r["state"] for r in reports} <= {"complete", "already_running"}
    assert "complete" in {r["state"] for r in reports}
    assert sum(r["inserted"] for r in reports) == 60
    counts = table_counts(dw_engine)
    assert counts["clickstream_events"] == counts["clickstream_ingest_meta"] == 60
    assert counts["clickstream_quarantine"] == sum(1 for o in objects if o.expect == "malformed")
    assert all(r["state"] == "complete" for r in ledger(dw_engine))
