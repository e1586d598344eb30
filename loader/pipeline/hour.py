"""Load one UTC hour: list, fetch, transform, write, report.

Data flows one way and never accumulates: keys stream from the listing into a bounded fetch
window, bodies are transformed as they arrive (on the producer thread, loader/pipeline/prefetch),
and events are written in batches that end on object boundaries (loader/pipeline/batching),
except that an object larger than a batch is written in slices. Rows in the warehouse therefore
do not prove an object loaded: its completion record does, written in the transaction of its
last rows and quarantine entries. Memory is flat in the size of the hour.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from tenacity import Retrying

from loader import __version__
from loader.common import FetchedObject, ObjectSource, Rejection
from loader.config import Settings
from loader.identity import IdentityHasher
from loader.load.adoption import AdoptedRange, read_adopted_range
from loader.load.batch import BatchTarget, batch_writer, commit_batch, count_new
from loader.load.completion import completed_objects
from loader.load.db import error_summary
from loader.load.ledger import finish_run, hour_records, start_run
from loader.load.locks import hour_lock
from loader.load.quarantine import rejection_row
from loader.load.retention import Retention, read_retention, retired
from loader.load.revision import check_revision, code_revisions
from loader.load.sink import BatchOutcome
from loader.load.suppression import SuppressingWriter, SuppressionList
from loader.load.tables import Tables, tables_for
from loader.observability import log
from loader.pipeline.batching import Batch, Batcher, Prepared, with_slice_refusals
from loader.pipeline.job import HourJob, JobKeys, RemainingMs
from loader.pipeline.prefetch import Prefetch, fewer_collections, prepare
from loader.pipeline.retries import RetryPolicy
from loader.report import Report
from loader.schema import RunState
from loader.window import hour_label, hour_prefix


class HourLoader:
    """Everything one invocation needs, created once and reused across the hours it loads."""

    def __init__(self, settings: Settings, engine: sa.Engine, source: ObjectSource) -> None:
        self.settings = settings
        self.engine = engine
        self.source = source
        self.tables: Tables = tables_for(settings)
        key = settings.erasure_hmac_key
        #: Every batch of every load path goes through it: the suppressed events never land.
        self.suppression = SuppressionList(IdentityHasher(key) if key else None)
        self.writer = SuppressingWriter(batch_writer(settings.write_method), self.suppression)
        self._policy = RetryPolicy(settings)
        self._db_revision: str | None = None
        self._adopted: AdoptedRange | None = None
        self._retention: Retention | None = None

    # ------------------------------------------------------------- per invocation

    def check_schema(self) -> str:
        """Fail fast, before any S3 work, if the DW is not at a revision this loader may load
        into. One read per invocation: see `expire_schema_check`.

        The same read fetches what was adopted from the original ETL (nothing on a warehouse
        that started empty, and then no batch ever looks for adopted duplicates) and the
        retention `maintain` recorded (`retired`), and checks that this loader holds the
        erasure key the suppression list was made with."""
        if self._db_revision is None:
            code = code_revisions()

            def read() -> tuple[str, AdoptedRange | None, Retention | None]:
                with self.engine.connect() as conn:
                    revision = check_revision(conn, code)
                    self.suppression.check_key(conn, self.tables)
                    adopted = read_adopted_range(conn, self.tables.adoptions)
                    return revision, adopted, read_retention(conn, self.tables.retention)

            self._db_revision, self._adopted, self._retention = self.retrying("connect")(read)
        return self._db_revision

    @property
    def retention(self) -> Retention | None:
        """The retention `maintain` recorded, as the last `check_schema` read it."""
        return self._retention

    def retired(self, hour: datetime, now: datetime | None = None) -> bool:
        """Whether `hour` lies wholly before the recorded retention's horizon: its rows are
        dropped (or about to be), so no command loads it or reports its objects unloaded."""
        self.check_schema()
        return retired(self._retention, hour, now or datetime.now(UTC))

    def expire_schema_check(self) -> None:
        """Called between invocations of a warm container: a DBA may have migrated (or
        downgraded) the warehouse since, so the next invocation reads the revision again."""
        self._db_revision = None

    def lambda_clock(self, remaining_ms: RemainingMs | None) -> AbstractContextManager[None]:
        """Within the block, retries end before the Lambda's safety margin (see `retrying`)."""
        return self._policy.lambda_clock(remaining_ms)

    def retrying(self, what: str, report: Report | None = None) -> Retrying:
        """The transient-error retry policy, counting retries into `report`. Its budget is
        DB_RETRY_BUDGET_SECONDS, cut to the Lambda's time left before SAFETY_MARGIN_MS."""
        return self._policy.retrying(what, report)

    # ------------------------------------------------------------- one hour

    def load(self, job: HourJob, remaining_ms: RemainingMs | None = None) -> Report:
        with self.lambda_clock(remaining_ms):
            return self._load(job, remaining_ms)

    def _load(self, job: HourJob, remaining_ms: RemainingMs | None) -> Report:
        label = hour_label(job.hour)
        prefix = hour_prefix(job.hour, self.settings.events_prefix)
        report = Report.new(
            label,
            prefix,
            job.trigger,
            str(uuid.uuid4()),
            self.settings.key_list_cap,
            job.shard.label() if job.shard else None,
        )
        report.dry_run = job.dry_run
        log.append_keys(hour=label, run_id=report.run_id, trigger=job.trigger, shard=report.shard)
        started = time.monotonic()
        try:
            report.db_revision = self.check_schema()
            if self.retired(job.hour):
                self._report_retired(report)
                return report
            if job.dry_run:
                self._stream(job, report, remaining_ms, start_after=None)
                return report
            lock = (
                hour_lock(self.engine, label, report.shard, self.settings.lock_wait_s)
                if job.locks_hour
                else nullcontext(True)
            )
            with lock as held:
                if not held:
                    report.state = RunState.ALREADY_RUNNING
                    log.info("another run holds this hour's lock; exiting without work")
                    return report
                self._load_locked(job, report, remaining_ms)
            return report
        finally:
            report.seconds = time.monotonic() - started
            log.remove_keys(["hour", "run_id", "trigger", "shard"])

    def _report_retired(self, report: Report) -> None:
        """A retired hour's answer: nothing listed, loaded or written (no ledger row either)."""
        report.state = RunState.RETIRED
        retention = self._retention.describe(datetime.now(UTC)) if self._retention else None
        log.info(
            "hour past retention: nothing listed, loaded or recorded",
            extra={"retention": retention},
        )

    def _load_locked(self, job: HourJob, report: Report, remaining_ms: RemainingMs | None) -> None:
        start_after = self.retrying("ledger", report)(self._resume_point, job, report)
        self.retrying("ledger", report)(
            start_run, self.engine, self.tables, report, job.hour, datetime.now(UTC), __version__
        )
        try:
            self._stream(job, report, remaining_ms, start_after)
        except BaseException as exc:
            report.state = RunState.FAILED
            report.error = error_summary(exc)
            try:
                finish_run(self.engine, self.tables, report, datetime.now(UTC))
            except Exception as ledger_exc:  # the DW is down: the original error matters more
                log.warning(
                    "could not record the failed run", extra={"error": error_summary(ledger_exc)}
                )
            raise
        self.retrying("ledger", report)(
            finish_run, self.engine, self.tables, report, datetime.now(UTC)
        )

    def _resume_point(self, job: HourJob, report: Report) -> str | None:
        """Continue after the last committed key of this hour's previous run if it stopped
        early (Lambda time ran out); otherwise list the hour in full."""
        if job.only_keys is not None or job.skip_loaded_keys:
            return None
        with self.engine.connect() as conn:
            records = hour_records(conn, self.tables, job.hour, job.hour, report.shard)
        record = records.get(job.hour)
        if record and record.state == RunState.PARTIAL and record.last_run.get("resume_after"):
            resume: str = record.last_run["resume_after"]
            log.info("resuming a partial run", extra={"resume_after": resume})
            return resume
        return None

    # ------------------------------------------------------------- the stream

    def _stream(
        self,
        job: HourJob,
        report: Report,
        remaining_ms: RemainingMs | None,
        start_after: str | None,
    ) -> None:
        """Fetch and transform on the producer thread, write batches here, as they fill."""
        loaded: set[str] = set()
        if job.skip_loaded_keys:
            with self.engine.connect() as conn:
                loaded = set(completed_objects(conn, self.tables, report.prefix, job.hour))
        keys = JobKeys(job, loaded, report.prefix)

        def produce(stop: threading.Event) -> Iterator[Prepared]:
            return self._produce(report.prefix, start_after, keys, stop)

        prefetch = Prefetch(
            produce,
            capacity=max(2 * self.settings.max_records_per_batch, 64),
            what=type(self.source).__name__,
        )
        with prefetch, fewer_collections():
            items = prefetch.items(lambda: self._out_of_time(report, remaining_ms))
            if not self._write_all(job, report, remaining_ms, items):
                return
        if not prefetch.finished:
            return
        report.objects_listed += keys.skipped_after
        report.objects_skipped_loaded += keys.skipped_after
        report.state = RunState.COMPLETE

    def _produce(
        self, prefix: str, start_after: str | None, keys: JobKeys, stop: threading.Event
    ) -> Iterator[Prepared]:
        """The producer thread's work: list, select, fetch, transform, in listing order."""
        listed = self.source.list_objects(prefix, start_after=keys.list_after(start_after))
        fetched_objects = self.source.fetch_many(keys.select(listed, stop), stop)
        try:
            for fetched in fetched_objects:
                prepared = self._transform(fetched)
                prepared.skipped_before = keys.skipped_before(prepared.key)
                yield prepared
        finally:
            close = getattr(fetched_objects, "close", None)
            if close is not None:
                close()  # cancels the fetches still in flight

    def _transform(self, fetched: FetchedObject) -> Prepared:
        return prepare(
            fetched,
            self.settings.raw_bucket,
            anonymize=self.settings.anonymize_ip,
            pseudonymise=self.settings.pseudonymise_user_agent,
        )

    def _write_all(
        self,
        job: HourJob,
        report: Report,
        remaining_ms: RemainingMs | None,
        items: Iterator[Prepared],
    ) -> bool:
        """Batch and commit every object; False when the Lambda's time ran out after a batch."""
        batcher = Batcher(
            self.settings.max_records_per_batch, resolve_quarantine=job.resolve_quarantine
        )
        refused_in_slices: Counter[str] = Counter()
        for item in items:
            report.retries += item.retries
            report.events_read += item.events_read
            report.sanitised += item.sanitised
            report.truncated += item.truncated
            for batch in batcher.add(item):
                if batch.slice_of is not None:
                    refused_in_slices[batch.slice_of] += self._flush(job, report, batch)
                    continue
                self._flush_counted(job, report, with_slice_refusals(batch, refused_in_slices))
                if self._out_of_time(report, remaining_ms):
                    return False
        self._flush_counted(job, report, with_slice_refusals(batcher.finish(), refused_in_slices))
        return True

    def _out_of_time(self, report: Report, remaining_ms: RemainingMs | None) -> bool:
        """Stop after a committed batch when the Lambda's remaining time falls below the margin;
        the ledger records where to resume."""
        if remaining_ms is None or remaining_ms() >= self.settings.safety_margin_ms:
            return False
        report.state = RunState.PARTIAL
        log.warning(
            "time is running out: stopping after a committed batch",
            extra={"resume_after": report.resume_after},
        )
        return True

    # ------------------------------------------------------------- one batch

    def _flush_counted(self, job: HourJob, report: Report, batch: Batch) -> None:
        """Write the batch, then count its objects as processed: `objects_listed` is what this
        run got through, never what the producer had listed ahead of the writer."""
        self._flush(job, report, batch)
        report.objects_listed += batch.objects
        report.objects_skipped_loaded += batch.skipped_loaded

    def _flush(self, job: HourJob, report: Report, batch: Batch) -> int:
        """Commit one batch; returns how many of its events the database refused (quarantined
        by bisection), which an object written in slices adds to its completion record."""
        if batch.empty:
            report.resume_after = batch.last_key or report.resume_after
            return 0
        for rejection in batch.rejections:
            self._report_rejection(report, rejection)
        if job.dry_run:
            with self.engine.connect() as conn:
                records, suppressed = self.suppression.split(
                    conn, self.tables, batch.records, lock=False
                )
            report.suppressed += suppressed
            report.would_insert += count_new(self.engine, self.tables, records, self._adopted)
            report.resume_after = batch.last_key or report.resume_after
            return 0

        now = datetime.now(UTC)
        rows = [rejection_row(r, self.settings.raw_bucket, job.hour, now) for r in batch.rejections]
        outcome: BatchOutcome = self.retrying("batch write", report)(
            self._commit, batch, rows, job, uuid.UUID(report.run_id)
        )
        self._count_outcome(report, outcome)
        report.resume_after = batch.last_key or report.resume_after
        return len(outcome.rejected)

    def _commit(
        self, batch: Batch, rows: list[dict[str, Any]], job: HourJob, run_id: uuid.UUID
    ) -> BatchOutcome:
        """One transaction per batch (loader/load/batch.py), bisected if a row is refused."""
        return commit_batch(
            self.engine,
            self.tables,
            self.writer,
            batch.records,
            quarantine_rows=rows,
            resolved_keys=batch.resolved_keys,
            completed=batch.completed,
            target=BatchTarget(
                self.settings.raw_bucket, job.hour, run_id, refresh=job.resolve_quarantine
            ),
            adopted=self._adopted,
        )

    def _count_outcome(self, report: Report, outcome: BatchOutcome) -> None:
        """A committed batch's counts into the report, its conflicts and refusals logged."""
        report.batches += 1
        report.inserted += outcome.inserted
        report.duplicate_exact += outcome.duplicate_exact
        report.duplicate_conflicting += outcome.duplicate_conflicting
        report.duplicate_adopted += outcome.duplicate_adopted
        report.suppressed += outcome.suppressed
        report.duplicates = report.duplicate_exact + report.duplicate_conflicting
        for key, event_id in outcome.conflicting:
            report.conflicting.add(key)
            log.warning(
                "conflicting duplicate: same event_id, different payload",
                extra={"key": key, "event_id": str(event_id)},
            )
        for rejection in outcome.rejected:
            self._report_rejection(report, rejection)
        if outcome.newest_event_at and (
            report.newest_event_at is None
            or outcome.newest_event_at.isoformat() > report.newest_event_at
        ):
            report.newest_event_at = outcome.newest_event_at.astimezone(UTC).isoformat()

    def _report_rejection(self, report: Report, rejection: Rejection) -> None:
        where = (
            rejection.key if rejection.position == 0 else f"{rejection.key}#{rejection.position}"
        )
        target = {
            "malformed": report.malformed,
            "invalid": report.invalid,
        }.get(rejection.reason, report.quarantined)
        target.add(where)
        log.info(
            "skipped",
            extra={
                "key": rejection.key,
                "position": rejection.position,
                "reason": rejection.reason,
                "detail": rejection.detail,
            },
        )
