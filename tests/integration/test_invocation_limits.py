"""One invocation's limits: what a statement timeout costs, a retry budget inside Lambda's time,
a source that stops answering, and what a run that stopped early says it did.

Everything is real: PostgreSQL's own statement_timeout against a trigger that sleeps, a socket
directory nobody listens on, moto's S3. The only stand-ins are our own interfaces: the Lambda
context (its clock) and an `ObjectSource` whose fetches stop answering.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

import lambda_function
from loader.app import make_source, open_loader
from loader.common import FetchedObject, ObjectRef, ObjectSource
from loader.config import load_settings
from loader.errors import sqlstate
from loader.load.db import make_engine
from loader.pipeline.hour import HourLoader
from loader.pipeline.job import HourJob
from loader.pipeline.runs import run_trigger
from loader.window import Trigger
from tools.demo.traffic import generate_hour, upload

HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
MARGIN_MS = 60_000  # SAFETY_MARGIN_MS's default


def event_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one())


def ledger_rows(engine: sa.Engine) -> list[sa.RowMapping]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT * FROM clickstream_load_runs ORDER BY started_at")
            ).mappings()
        )


# --- statement timeout (57014) -----------------------------------------------------------------


def make_inserts_slow(engine: sa.Engine, *, only_the_first: bool) -> None:
    """A statement-level trigger that sleeps far past the loader's statement_timeout, on every
    INSERT into the events table or only on the first (nextval is not rolled back)."""
    condition = "nextval('slow_inserts') = 1" if only_the_first else "true"
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SEQUENCE slow_inserts"))
        conn.execute(
            sa.text(
                "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF {condition} THEN PERFORM pg_sleep(30); END IF; RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER slow_insert BEFORE INSERT ON clickstream_events "
                "FOR EACH STATEMENT EXECUTE FUNCTION slow_insert()"
            )
        )


@pytest.fixture
def short_statement_timeout(loader_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DW_PG_STATEMENT_TIMEOUT_MS", "1000")
    monkeypatch.setenv("DB_MAX_ATTEMPTS", "6")
    monkeypatch.setenv("DB_RETRY_BUDGET_SECONDS", "30")


def test_a_statement_that_keeps_timing_out_is_retried_once_then_fails(
    short_statement_timeout: None, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    upload(s3, bucket, generate_hour(HOUR, 20, malformed_ratio=0))
    make_inserts_slow(dw_engine, only_the_first=False)
    # WHEN every batch write runs into statement_timeout
    with pytest.raises(sa.exc.DBAPIError) as failure, open_loader(load_settings()) as loader:
        loader.load(HourJob(HOUR, "manual"))
    # THEN the loader tried it twice (one retry), not until the budget ran out, and says why
    assert sqlstate(failure.value) == "57014"
    [run] = ledger_rows(dw_engine)
    assert run["state"] == "failed"
    assert run["retries"] == 1
    assert run["error_summary"].startswith("SQLSTATE 57014 (query_canceled)")
    assert event_count(dw_engine) == 0


def test_a_single_statement_timeout_is_retried_and_the_hour_completes(
    short_statement_timeout: None, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    upload(s3, bucket, generate_hour(HOUR, 20, malformed_ratio=0))
    # GIVEN one INSERT cancelled by statement_timeout (as one pg_cancel_backend would be)
    make_inserts_slow(dw_engine, only_the_first=True)
    with open_loader(load_settings()) as loader:
        report = loader.load(HourJob(HOUR, "manual"))
    assert (report.state, report.retries, report.inserted) == ("complete", 1, 20)
    assert event_count(dw_engine) == 20


# --- the retry budget inside Lambda's remaining time ---------------------------------------------


class FixedClock:
    """A Lambda context whose remaining time is what the test says."""

    aws_request_id = "test-fixed-clock"

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def retry_sleeps(output: str) -> list[float]:
    sleeps = []
    for line in output.splitlines():
        if line.startswith("{") and "transient failure, retrying" in line:
            sleeps.append(float(json.loads(line)["sleep_s"]))
    return sleeps


@pytest.mark.parametrize(("left_past_margin_ms", "most_sleep_s"), [(1_500, 1.5), (-1, 0.0)])
def test_the_retry_budget_never_outlasts_the_lambda_time_left(
    loader_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    left_past_margin_ms: int,
    most_sleep_s: float,
) -> None:
    # GIVEN an unreachable warehouse, a generous retry budget, and little Lambda time left
    monkeypatch.setenv("DW_PG_HOST", "/nonexistent-socket-dir")
    monkeypatch.setenv("DB_RETRY_BUDGET_SECONDS", "8")
    monkeypatch.setenv("DB_MAX_ATTEMPTS", "50")
    lambda_function._factory.close()
    try:
        with pytest.raises(sa.exc.OperationalError):
            lambda_function.lambda_handler(
                {"hour": "2026-11-24T13"}, FixedClock(MARGIN_MS + left_past_margin_ms)
            )
    finally:
        lambda_function._factory.close()
    # THEN its retries slept no longer than the time left before the safety margin
    output = capfd.readouterr().out
    assert '"run failed"' in output
    sleeps = retry_sleeps(output)
    assert sum(sleeps) <= most_sleep_s
    if most_sleep_s > 0:
        assert sleeps, "with time left, a refused connection is still retried"


# --- a source that stops answering ---------------------------------------------------------------


class HangingSource:
    """Our `ObjectSource` over the real one, whose fetches stop answering after `answered`
    objects while `hanging` (an S3 GET that never returns). Like the real sources it gives up
    when the caller sets `stop`; `released` ends the hang whatever the caller does."""

    def __init__(self, inner: ObjectSource, answered: int) -> None:
        self.inner = inner
        self.bucket = inner.bucket
        self.answered = answered
        self.hanging = True
        self.hung = threading.Event()
        self.released = threading.Event()

    def list_objects(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectRef]:
        return self.inner.list_objects(prefix, start_after)

    def fetch_many(
        self, refs: Iterable[ObjectRef], stop: threading.Event | None = None
    ) -> Iterator[FetchedObject]:
        fetched = self.inner.fetch_many(refs)
        try:
            for count, item in enumerate(fetched):
                if self.hanging and count >= self.answered:
                    self.hung.set()
                    while not self.released.wait(0.05):
                        if stop is not None and stop.is_set():
                            break
                    return
                yield item
        finally:
            close = getattr(fetched, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        self.released.set()
        self.inner.close()


class ClockFromHang:
    """Plenty of Lambda time until the source hangs; from then on, half a second to the margin."""

    def __init__(self, source: HangingSource) -> None:
        self.source = source
        self.hung_at: float | None = None

    def __call__(self) -> int:
        if not self.source.hung.is_set():
            return 600_000
        if self.hung_at is None:
            self.hung_at = time.monotonic()
        return MARGIN_MS + 500 - int((time.monotonic() - self.hung_at) * 1000)


def producer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "fetch-transform" and t.is_alive()}


def test_a_hanging_source_neither_holds_the_invocation_nor_outlives_it(
    loader_env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    upload(s3, bucket, generate_hour(HOUR, 25, malformed_ratio=0))
    settings = load_settings()
    source = HangingSource(make_source(settings), answered=5)
    loader = HourLoader(settings, make_engine(settings.db), source)
    before = producer_threads()
    result: dict[str, Any] = {}

    def invoke() -> None:
        result["report"] = run_trigger(loader, Trigger(HOUR, "manual"), ClockFromHang(source))

    invocation = threading.Thread(target=invoke, daemon=True)
    try:
        # WHEN the source stops answering after 5 objects, with the Lambda's time running out
        invocation.start()
        invocation.join(timeout=30)
        # THEN the invocation returns: what it had is committed, the rest is left for later
        assert not invocation.is_alive(), "the invocation waited on the hung source"
        report = result["report"]
        assert (report.state, report.inserted, report.objects_listed) == ("partial", 5, 5)
        # AND its producer thread stopped before it returned
        assert producer_threads() - before == set()
        # AND the next invocation, with S3 answering again, resumes and completes the hour
        source.hanging = False
        again = run_trigger(loader, Trigger(HOUR, "manual"))
        assert (again.state, again.inserted, again.objects_listed) == ("complete", 20, 20)
        assert event_count(dw_engine) == 25
    finally:
        source.close()
        loader.engine.dispose()


# --- objects_listed: what the run processed, not what the producer read ahead ------------------


class OutOfTimeOnceLoaded:
    """Time to spare until the warehouse holds events, then inside the safety margin."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def __call__(self) -> int:
        return 1_000 if event_count(self.engine) else 600_000


def test_a_run_that_stops_early_counts_only_the_objects_it_processed(
    loader_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAX_RECORDS_PER_BATCH", "10")
    objects = upload(s3, bucket, generate_hour(HOUR, 200, malformed_ratio=0))
    with open_loader(load_settings()) as loader:
        # WHEN the run stops after its first batch (Lambda time running out)
        first = loader.load(HourJob(HOUR, "manual"), OutOfTimeOnceLoaded(dw_engine))
        assert first.state == "partial" and first.resume_after is not None
        done = sorted(o.key for o in objects if o.key <= first.resume_after)
        # THEN it counts the objects it committed, however far ahead the producer had listed
        assert first.objects_listed == len(done) == first.inserted == 10
        # AND the run that resumes counts the rest: the hour's objects, each once
        second = loader.load(HourJob(HOUR, "manual"))
    assert second.state == "complete"
    assert first.objects_listed + second.objects_listed == len(objects)
    assert [r["objects_listed"] for r in ledger_rows(dw_engine)] == [10, 190]
