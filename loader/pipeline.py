"""Load one UTC hour: list, fetch, transform, write, report.

Data flows one way and never accumulates: keys stream from the listing into a bounded fetch
window, bodies are transformed as they arrive, and events are written in batches that end on
object boundaries, except that an object larger than a batch is written in slices. Rows in the
warehouse therefore do not prove an object loaded: its completion record does, written in the
transaction of its last rows and quarantine entries. Memory is flat in the size of the hour.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from tenacity import RetryCallState, Retrying

from loader import __version__
from loader.config import Settings
from loader.db import (
    check_revision,
    code_head_revision,
    describe_error,
    is_data_error,
    log_retry,
    retrying,
    sqlstate,
)
from loader.ledger import completed_objects, finish_run, hour_lock, hour_records, start_run
from loader.observability import log
from loader.report import Report
from loader.sink import (
    BatchOutcome,
    Completion,
    Tables,
    batch_writer,
    quarantine,
    record_completed,
    rejection_row,
    resolve_quarantined,
    tables_for,
    write_isolating_poison,
)
from loader.source import FetchedObject, ObjectRef, ObjectSource
from loader.transform import EventRecord, Rejection, SourceObject, transform_object
from loader.window import HOUR, Shard, Trigger, hour_label, hour_prefix

RemainingMs = Callable[[], int]


def in_shard(key: str, shard: Shard | None) -> bool:
    """Hash partitioning: every key belongs to exactly one of `count` shards, whatever its name."""
    return (
        shard is None
        or zlib.crc32(key.encode("utf-8", "surrogatepass")) % shard.count == shard.index
    )


@dataclass
class _Prepared:
    """One object, fetched and transformed, on its way to the writer."""

    key: str
    events: list[EventRecord]
    rejections: list[Rejection]
    last_modified: datetime | None = None
    events_read: int = 0
    sanitised: int = 0
    truncated: int = 0
    retries: int = 0


@dataclass(frozen=True)
class _Done:
    """End of the producer's stream, with its error if it failed."""

    error: BaseException | None


@dataclass
class _Batch:
    records: list[EventRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    #: Objects whose last rows are in this batch: its transaction records them loaded.
    completed: list[Completion] = field(default_factory=list)
    last_key: str | None = None
    resolved_keys: list[str] = field(default_factory=list)


@dataclass
class HourJob:
    """One hour to load and how."""

    hour: datetime
    trigger: str
    shard: Shard | None = None
    dry_run: bool = False
    #: Skip keys recorded as loaded in full (lookback).
    skip_loaded_keys: bool = False
    #: Only these keys (reprocess of quarantined keys).
    only_keys: frozenset[str] | None = None
    #: Mark open quarantine entries of keys that now load as resolved (reprocess).
    resolve_quarantine: bool = False


class HourLoader:
    """Everything one invocation needs, created once and reused across the hours it loads."""

    def __init__(self, settings: Settings, engine: sa.Engine, source: ObjectSource) -> None:
        self.settings = settings
        self.engine = engine
        self.source = source
        self.tables: Tables = tables_for(settings)
        self.writer = batch_writer(settings.write_method)
        self._expected_revision: str | None = None
        self._db_revision: str | None = None

    def check_schema(self) -> str:
        """Fail fast, before any S3 work, if the DW is not at the code's Alembic head."""
        if self._db_revision is None:
            expected = code_head_revision()

            def read() -> str:
                with self.engine.connect() as conn:
                    return check_revision(conn, expected)

            self._db_revision = self.retrying("connect")(read)
        return self._db_revision

    def retrying(self, what: str, report: Report | None = None) -> Retrying:
        """The transient-error retry policy, counting retries into `report`."""

        def on_retry(state: RetryCallState) -> None:
            if report is not None:
                report.retries += 1
            log_retry(log, what)(state)

        return retrying(self.settings.db_retry_budget_s, self.settings.db_max_attempts, on_retry)

    def load(self, job: HourJob, remaining_ms: RemainingMs | None = None) -> Report:
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
            if job.dry_run:
                self._stream(job, report, remaining_ms, start_after=None)
                return report
            with hour_lock(self.engine, label, report.shard, self.settings.lock_wait_s) as held:
                if not held:
                    report.state = "already_running"
                    log.info("another run holds this hour's lock; exiting without work")
                    return report
                self._load_locked(job, report, remaining_ms)
            return report
        finally:
            report.seconds = time.monotonic() - started
            log.remove_keys(["hour", "run_id", "trigger", "shard"])

    def _load_locked(self, job: HourJob, report: Report, remaining_ms: RemainingMs | None) -> None:
        start_after = self.retrying("ledger", report)(self._resume_point, job, report)
        self.retrying("ledger", report)(
            start_run, self.engine, self.tables, report, job.hour, datetime.now(UTC), __version__
        )
        try:
            self._stream(job, report, remaining_ms, start_after)
        except BaseException as exc:
            report.state = "failed"
            report.error = _summary(exc)
            try:
                finish_run(self.engine, self.tables, report, datetime.now(UTC))
            except Exception as ledger_exc:  # the DW is down: the original error matters more
                log.warning(
                    "could not record the failed run", extra={"error": _summary(ledger_exc)}
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
        if record and record.state == "partial" and record.last_run.get("resume_after"):
            resume: str = record.last_run["resume_after"]
            log.info("resuming a partial run", extra={"resume_after": resume})
            return resume
        return None

    def _refs(
        self, job: HourJob, report: Report, start_after: str | None, skip: set[str]
    ) -> Iterator[ObjectRef]:
        for ref in self.source.list_objects(report.prefix, start_after=start_after):
            if not in_shard(ref.key, job.shard):
                continue
            if job.only_keys is not None and ref.key not in job.only_keys:
                continue
            report.objects_listed += 1
            if ref.key in skip:
                report.objects_skipped_loaded += 1
                continue
            yield ref

    def _prepared(
        self, job: HourJob, report: Report, start_after: str | None
    ) -> Iterator[_Prepared]:
        """Fetch and transform on a producer thread, handing objects over a bounded queue.

        The writer (the caller) and the fetch/transform stage overlap: while a batch commits,
        the next objects are already being fetched and parsed. The queue bound keeps memory
        flat; an error on either side stops the other.
        """
        skip: set[str] = set()
        if job.skip_loaded_keys:
            with self.engine.connect() as conn:
                skip = set(completed_objects(conn, self.tables, report.prefix))
        handoff: queue.Queue[_Prepared | _Done] = queue.Queue(
            maxsize=max(2 * self.settings.max_records_per_batch, 64)
        )
        stop = threading.Event()

        def put(item: _Prepared | _Done) -> bool:
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            refs = self._refs(job, report, start_after, skip)
            fetched_objects = self.source.fetch_many(refs)
            try:
                for fetched in fetched_objects:
                    if not put(self._transform(fetched)):
                        return
                put(_Done(None))
            except BaseException as exc:  # handed to the writer, which re-raises it
                put(_Done(exc))
            finally:
                close = getattr(fetched_objects, "close", None)
                if close is not None:
                    close()  # cancels the fetches still in flight

        producer = threading.Thread(target=produce, name="fetch-transform", daemon=True)
        producer.start()
        try:
            while True:
                item = handoff.get()
                if isinstance(item, _Done):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            stop.set()
            producer.join(timeout=60)

    def _stream(
        self,
        job: HourJob,
        report: Report,
        remaining_ms: RemainingMs | None,
        start_after: str | None,
    ) -> None:
        limit = self.settings.max_records_per_batch
        batch = _Batch()
        for item in self._prepared(job, report, start_after):
            report.retries += item.retries
            report.events_read += item.events_read
            report.sanitised += item.sanitised
            report.truncated += item.truncated
            events = item.events
            if batch.records and len(batch.records) + len(events) > limit:
                self._flush(job, report, batch)
                batch = _Batch()
                if self._out_of_time(report, remaining_ms):
                    return
            # An object larger than a batch: its slices commit on their own, and only the
            # batch holding its last events records it complete (with what they quarantined).
            rejected_in_slices = 0
            while len(events) > limit:
                rejected_in_slices += self._flush(job, report, _Batch(records=events[:limit]))
                events = events[limit:]
            batch.records.extend(events)
            batch.rejections.extend(item.rejections)
            batch.completed.append(
                Completion(
                    item.key,
                    len(item.events),
                    len(item.rejections) + rejected_in_slices,
                    item.last_modified,
                )
            )
            batch.last_key = item.key
            if job.resolve_quarantine and not item.rejections:
                batch.resolved_keys.append(item.key)
            if len(batch.records) >= limit:
                self._flush(job, report, batch)
                batch = _Batch()
                if self._out_of_time(report, remaining_ms):
                    return
        self._flush(job, report, batch)
        report.state = "complete"

    def _transform(self, fetched: FetchedObject) -> _Prepared:
        """One fetched object → its events, its rejections and its counts (producer thread)."""
        ref = fetched.ref
        if fetched.body is None:
            reason = "malformed" if fetched.error in ("too_large", "bad_gzip") else "fetch_failed"
            detail = f"{fetched.error}: {fetched.detail or ''}".strip(": ")
            return _Prepared(
                ref.key,
                [],
                [Rejection(ref.key, 0, reason, detail)],
                ref.last_modified,
                retries=fetched.retries,
            )
        source = SourceObject(self.settings.raw_bucket, ref.key, ref.last_modified)
        result = transform_object(source, fetched.body, anonymize=self.settings.anonymize_ip)
        return _Prepared(
            ref.key,
            result.events,
            [*result.malformed, *result.invalid],
            ref.last_modified,
            events_read=len(result.events) + len(result.invalid),
            sanitised=result.sanitised,
            truncated=result.truncated,
            retries=fetched.retries,
        )

    def _out_of_time(self, report: Report, remaining_ms: RemainingMs | None) -> bool:
        """Stop after a committed batch when the Lambda's remaining time falls below the margin;
        the ledger records where to resume."""
        if remaining_ms is None or remaining_ms() >= self.settings.safety_margin_ms:
            return False
        report.state = "partial"
        log.warning(
            "time is running out: stopping after a committed batch",
            extra={"resume_after": report.resume_after},
        )
        return True

    def _flush(self, job: HourJob, report: Report, batch: _Batch) -> int:
        """Commit one batch; returns how many of its events the database refused (quarantined
        by bisection), which an object written in slices adds to its completion record."""
        if not (batch.records or batch.rejections or batch.resolved_keys or batch.completed):
            report.resume_after = batch.last_key or report.resume_after
            return 0
        for rejection in batch.rejections:
            self._report_rejection(report, rejection)
        if job.dry_run:
            report.would_insert += self._count_new(batch.records)
            report.resume_after = batch.last_key or report.resume_after
            return 0

        now = datetime.now(UTC)
        rows = [rejection_row(r, self.settings.raw_bucket, job.hour, now) for r in batch.rejections]
        outcome: BatchOutcome = self.retrying("batch write", report)(
            self._commit, batch, rows, job, uuid.UUID(report.run_id)
        )
        report.batches += 1
        report.inserted += outcome.inserted
        report.duplicate_exact += outcome.duplicate_exact
        report.duplicate_conflicting += outcome.duplicate_conflicting
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
        report.resume_after = batch.last_key or report.resume_after
        return len(outcome.rejected)

    def _commit(
        self, batch: _Batch, rows: list[dict[str, Any]], job: HourJob, run_id: uuid.UUID
    ) -> BatchOutcome:
        """One transaction: the batch into both tables, its rejections into the quarantine and
        its completed objects into clickstream_loaded_objects. If PostgreSQL refuses a row the
        transform let through, isolate it by bisection."""
        now = datetime.now(UTC)
        try:
            with self.engine.begin() as conn:
                outcome = self.writer(conn, self.tables, batch.records)
                quarantine(conn, self.tables, rows)
                resolve_quarantined(conn, self.tables, batch.resolved_keys, now)
                self._record_completed(conn, job, run_id, batch.completed)
                return outcome
        except sa.exc.DBAPIError as exc:
            if not is_data_error(exc):
                raise
            log.warning("batch refused by the database: isolating the offending events")
        outcome = write_isolating_poison(self.engine, self.tables, batch.records, self.writer)
        # The good halves are committed, each on its own. The refused events' quarantine rows
        # and the objects' completion commit together after them: a run that dies in between
        # leaves the objects unrecorded, and the next lookback or rerun reads them again.
        refused = Counter(r.key for r in outcome.rejected)
        extra = [
            rejection_row(r, self.settings.raw_bucket, job.hour, now) for r in outcome.rejected
        ]
        completed = [
            replace(c, quarantined=c.quarantined + refused[c.key]) for c in batch.completed
        ]
        with self.engine.begin() as conn:
            quarantine(conn, self.tables, rows + extra)
            resolve_quarantined(
                conn, self.tables, [k for k in batch.resolved_keys if k not in refused], now
            )
            self._record_completed(conn, job, run_id, completed)
        return outcome

    def _record_completed(
        self, conn: sa.Connection, job: HourJob, run_id: uuid.UUID, completed: list[Completion]
    ) -> None:
        record_completed(
            conn,
            self.tables,
            completed,
            bucket=self.settings.raw_bucket,
            hour=job.hour,
            run_id=run_id,
            refresh=job.resolve_quarantine,
        )

    def _count_new(self, records: list[EventRecord]) -> int:
        """Dry run: how many of these events the warehouse does not hold yet (reads only)."""
        ids = list({r.event_id for r in records})
        if not ids:
            return 0
        events = self.tables.events
        with self.engine.connect() as conn:
            present = conn.execute(
                sa.select(sa.func.count()).where(events.c.event_id.in_(ids))
            ).scalar_one()
        return len(ids) - int(present)

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


def _summary(exc: BaseException) -> str:
    """An error for the ledger: SQLSTATE-based for database errors (no row data)."""
    if sqlstate(exc) is not None or isinstance(exc, sa.exc.DBAPIError):
        return describe_error(exc)
    return f"{type(exc).__name__}: {str(exc)[:500]}"


def lookback_hours(hour: datetime, count: int) -> list[datetime]:
    return [hour - HOUR * i for i in range(1, count + 1)]


def run_trigger(
    loader: HourLoader,
    trigger: Trigger,
    remaining_ms: RemainingMs | None = None,
    *,
    dry_run: bool = False,
) -> Report:
    """What the Lambda and `run` do: load the trigger's hour in full; scheduled runs also
    re-check the previous LOOKBACK_HOURS hours for late objects and report hours never loaded."""
    job = HourJob(trigger.hour, trigger.kind, trigger.shard, dry_run=dry_run)
    report = loader.load(job, remaining_ms)
    if trigger.kind != "schedule" or trigger.shard is not None or dry_run:
        return report
    if report.state not in ("complete", "already_running"):
        return report
    previous = lookback_hours(trigger.hour, loader.settings.lookback_hours)
    if not previous:
        return report
    with loader.engine.connect() as conn:
        records = hour_records(conn, loader.tables, min(previous), max(previous))
    for hour in sorted(previous):
        if remaining_ms is not None and remaining_ms() < 2 * loader.settings.safety_margin_ms:
            break
        if hour not in records:
            if _has_objects(loader, hour):
                report.missing_hours.append(hour_label(hour))
            continue
        late = loader.load(HourJob(hour, "lookback", skip_loaded_keys=True), remaining_ms)
        report.lookback.append(
            {
                "hour": late.hour,
                "state": late.state,
                "objects_new": late.objects_listed - late.objects_skipped_loaded,
                "objects_skipped_loaded": late.objects_skipped_loaded,
                "inserted": late.inserted,
            }
        )
    if report.missing_hours:
        log.warning(
            "hours with objects but no run in the ledger: run `clickstream-loader "
            "backfill` for them",
            extra={"missing_hours": report.missing_hours},
        )
    return report


def _has_objects(loader: HourLoader, hour: datetime) -> bool:
    prefix = hour_prefix(hour, loader.settings.events_prefix)
    return next(iter(loader.source.list_objects(prefix)), None) is not None
