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
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from tenacity import RetryCallState, Retrying

from loader import __version__
from loader.common import (
    EventRecord,
    FetchedObject,
    ObjectRef,
    ObjectSource,
    Rejection,
    SourceObject,
)
from loader.config import Settings
from loader.load.adoption import AdoptedRange, adopted_duplicates, read_adopted_range
from loader.load.batch import batch_writer, write_isolating_poison
from loader.load.completion import Completion, completed_objects, record_completed
from loader.load.db import describe_error, is_data_error, log_retry, retrying, sqlstate
from loader.load.ledger import (
    finalize_run_id,
    finalize_sharded_hour,
    finish_run,
    hour_records,
    start_run,
)
from loader.load.locks import hour_lock
from loader.load.quarantine import quarantine, rejection_row, resolve_quarantined
from loader.load.revision import check_revision, code_revisions
from loader.load.sink import BatchOutcome
from loader.load.tables import Tables, tables_for
from loader.observability import log
from loader.report import KeyList, Report
from loader.transform.mapping import transform_object
from loader.window import HOUR, Shard, Trigger, hour_label, hour_prefix

RemainingMs = Callable[[], int]

#: How often the writer, waiting for the next object, looks at the Lambda's clock, and how often
#: a source waiting on S3 looks at the stop signal.
_POLL_S = 0.1
#: How long an ending invocation waits for its producer thread to see the stop signal. The real
#: sources stop within _POLL_S; only a source that ignores the signal can use this up.
_PRODUCER_JOIN_S = 30.0


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
    #: Keys listed just before this one and skipped as already loaded.
    skipped_before: int = 0
    events_read: int = 0
    sanitised: int = 0
    truncated: int = 0
    retries: int = 0


@dataclass(frozen=True)
class _Done:
    """End of the producer's stream, with its error if it failed."""

    error: BaseException | None
    #: Keys after the last object that were skipped as already loaded.
    skipped_after: int = 0


@dataclass
class _StreamEnd:
    """How the producer's stream ended, for the writer."""

    skipped_after: int = 0
    #: Lambda time ran out while the writer waited for the next object.
    out_of_time: bool = False


class _Listing:
    """The keys to fetch, in order, and how many already-loaded keys were skipped before each:
    the writer counts those as processed only once it has committed the object after them."""

    def __init__(self) -> None:
        self.skipped_before: dict[str, int] = {}
        self.skipped_after = 0


@dataclass
class _Batch:
    records: list[EventRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    #: Objects whose last rows are in this batch: its transaction records them loaded.
    completed: list[Completion] = field(default_factory=list)
    last_key: str | None = None
    resolved_keys: list[str] = field(default_factory=list)
    #: Objects whose last events are in this batch, and already-loaded keys skipped before them.
    objects: int = 0
    skipped_loaded: int = 0


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
        self._db_revision: str | None = None
        self._remaining_ms: RemainingMs | None = None
        self._adopted: AdoptedRange | None = None

    def check_schema(self) -> str:
        """Fail fast, before any S3 work, if the DW is not at a revision this loader may load
        into. One read per invocation: see `expire_schema_check`.

        The same read fetches what was adopted from the original ETL: nothing on a warehouse
        that started empty, and then no batch ever looks for adopted duplicates."""
        if self._db_revision is None:
            code = code_revisions()

            def read() -> tuple[str, AdoptedRange | None]:
                with self.engine.connect() as conn:
                    revision = check_revision(conn, code)
                    return revision, read_adopted_range(conn, self.tables.adoptions)

            self._db_revision, self._adopted = self.retrying("connect")(read)
        return self._db_revision

    def expire_schema_check(self) -> None:
        """Called between invocations of a warm container: a DBA may have migrated (or
        downgraded) the warehouse since, so the next invocation reads the revision again."""
        self._db_revision = None

    @contextmanager
    def lambda_clock(self, remaining_ms: RemainingMs | None) -> Iterator[None]:
        """Within the block, retries end before the Lambda's safety margin (see `retrying`)."""
        outer = self._remaining_ms
        self._remaining_ms = remaining_ms if remaining_ms is not None else outer
        try:
            yield
        finally:
            self._remaining_ms = outer

    def retrying(self, what: str, report: Report | None = None) -> Retrying:
        """The transient-error retry policy, counting retries into `report`. Its budget is
        DB_RETRY_BUDGET_SECONDS, cut to the Lambda's time left before SAFETY_MARGIN_MS."""

        def on_retry(state: RetryCallState) -> None:
            if report is not None:
                report.retries += 1
            log_retry(log, what)(state)

        deadline_s = None
        if self._remaining_ms is not None:
            deadline_s = (self._remaining_ms() - self.settings.safety_margin_ms) / 1000
        return retrying(
            self.settings.db_retry_budget_s,
            self.settings.db_max_attempts,
            on_retry,
            deadline_s=deadline_s,
        )

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
        self,
        job: HourJob,
        prefix: str,
        start_after: str | None,
        skip: set[str],
        listing: _Listing,
        stop: threading.Event,
    ) -> Iterator[ObjectRef]:
        """The keys of this job, in order; already-loaded ones are left out and counted into
        `listing` (the writer counts them, not this producer-side generator, which runs ahead)."""
        skipped = 0
        for ref in self.source.list_objects(prefix, start_after=start_after):
            if stop.is_set():
                return
            if not in_shard(ref.key, job.shard):
                continue
            if job.only_keys is not None and ref.key not in job.only_keys:
                continue
            if ref.key in skip:
                skipped += 1
                continue
            listing.skipped_before[ref.key] = skipped
            skipped = 0
            yield ref
        listing.skipped_after = skipped

    def _prepared(
        self,
        job: HourJob,
        report: Report,
        start_after: str | None,
        remaining_ms: RemainingMs | None,
        end: _StreamEnd,
    ) -> Generator[_Prepared, None, None]:
        """Fetch and transform on a producer thread, handing objects over a bounded queue.

        The writer (the caller) and the fetch/transform stage overlap: while a batch commits,
        the next objects are already being fetched and parsed. The queue bound keeps memory
        flat; an error on either side stops the other. The producer never outlives this
        generator: on the way out it is told to stop (the source gives up its in-flight GETs)
        and joined. A writer waiting for the next object gives up when the Lambda's time runs
        out (`end.out_of_time`), however long S3 takes to answer.
        """
        skip: set[str] = set()
        if job.skip_loaded_keys:
            with self.engine.connect() as conn:
                skip = set(completed_objects(conn, self.tables, report.prefix))
        handoff: queue.Queue[_Prepared | _Done] = queue.Queue(
            maxsize=max(2 * self.settings.max_records_per_batch, 64)
        )
        stop = threading.Event()
        listing = _Listing()

        def put(item: _Prepared | _Done) -> bool:
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=_POLL_S)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            refs = self._refs(job, report.prefix, start_after, skip, listing, stop)
            fetched_objects = self.source.fetch_many(refs, stop)
            try:
                for fetched in fetched_objects:
                    prepared = self._transform(fetched)
                    prepared.skipped_before = listing.skipped_before.pop(prepared.key, 0)
                    if not put(prepared):
                        return
                if not stop.is_set():
                    put(_Done(None, listing.skipped_after))
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
                try:
                    item = handoff.get(timeout=_POLL_S)
                except queue.Empty:
                    if self._out_of_time(report, remaining_ms):
                        end.out_of_time = True
                        return
                    continue
                if isinstance(item, _Done):
                    if item.error is not None:
                        raise item.error
                    end.skipped_after = item.skipped_after
                    return
                yield item
        finally:
            stop.set()
            producer.join(timeout=_PRODUCER_JOIN_S)
            if producer.is_alive():
                log.error(
                    "the fetch thread ignored the stop signal and is still running",
                    extra={"source": type(self.source).__name__},
                )

    def _stream(
        self,
        job: HourJob,
        report: Report,
        remaining_ms: RemainingMs | None,
        start_after: str | None,
    ) -> None:
        end = _StreamEnd()
        # closing(): an error here must stop the producer now, not when the traceback holding
        # this frame (and so the generator) is freed.
        with closing(self._prepared(job, report, start_after, remaining_ms, end)) as prepared:
            self._write_all(job, report, remaining_ms, prepared, end)

    def _write_all(
        self,
        job: HourJob,
        report: Report,
        remaining_ms: RemainingMs | None,
        prepared: Iterator[_Prepared],
        end: _StreamEnd,
    ) -> None:
        limit = self.settings.max_records_per_batch
        batch = _Batch()
        for item in prepared:
            report.retries += item.retries
            report.events_read += item.events_read
            report.sanitised += item.sanitised
            report.truncated += item.truncated
            events = item.events
            if batch.records and len(batch.records) + len(events) > limit:
                self._flush_counted(job, report, batch)
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
            batch.objects += 1 + item.skipped_before
            batch.skipped_loaded += item.skipped_before
            if job.resolve_quarantine and not item.rejections:
                batch.resolved_keys.append(item.key)
            if len(batch.records) >= limit:
                self._flush_counted(job, report, batch)
                batch = _Batch()
                if self._out_of_time(report, remaining_ms):
                    return
        self._flush_counted(job, report, batch)
        if end.out_of_time:
            return
        report.objects_listed += end.skipped_after
        report.objects_skipped_loaded += end.skipped_after
        report.state = "complete"

    def _flush_counted(self, job: HourJob, report: Report, batch: _Batch) -> None:
        """Write the batch, then count its objects as processed: `objects_listed` is what this
        run got through, never what the producer had listed ahead of the writer."""
        self._flush(job, report, batch)
        report.objects_listed += batch.objects
        report.objects_skipped_loaded += batch.skipped_loaded

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
        report.duplicate_adopted += outcome.duplicate_adopted
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
                outcome = self.writer(conn, self.tables, batch.records, self._adopted)
                quarantine(conn, self.tables, rows)
                resolve_quarantined(conn, self.tables, batch.resolved_keys, now)
                self._record_completed(conn, job, run_id, batch.completed)
                return outcome
        except sa.exc.DBAPIError as exc:
            if not is_data_error(exc):
                raise
            log.warning("batch refused by the database: isolating the offending events")
        outcome = write_isolating_poison(
            self.engine, self.tables, batch.records, self.writer, self._adopted
        )
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
        """Dry run: how many of these events the warehouse does not hold yet (reads only),
        neither under their id nor as a row adopted from the original ETL."""
        first_copies = list({r.event_id: r for r in records}.values())
        if not first_copies:
            return 0
        events = self.tables.events
        with self.engine.connect() as conn:
            adopted = adopted_duplicates(
                conn, events, self.tables.meta, first_copies, self._adopted
            )
            ids = [r.event_id for r in first_copies if r.event_id not in adopted]
            if not ids:
                return 0
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


class HourNotFinalized(RuntimeError):
    """A fanned-out hour cannot be recorded complete (yet): a shard has no complete run, or a
    run of the hour still holds it. Step Functions retries FinalizeHour on this."""


def run_trigger(
    loader: HourLoader,
    trigger: Trigger,
    remaining_ms: RemainingMs | None = None,
    *,
    dry_run: bool = False,
) -> Report:
    """What the Lambda and `run` do: load the trigger's hour in full; scheduled runs also
    re-check the previous LOOKBACK_HOURS hours for late objects and report hours never loaded.

    A shard never looks back: that would repeat the lookback once per shard. The fan-out's
    lookback is done once per hour, by `finalize_fanned_out_hour`."""
    job = HourJob(trigger.hour, trigger.kind, trigger.shard, dry_run=dry_run)
    report = loader.load(job, remaining_ms)
    if trigger.kind != "schedule" or trigger.shard is not None or dry_run:
        return report
    if report.state not in ("complete", "already_running"):
        return report
    look_back(loader, trigger.hour, report, remaining_ms)
    return report


def finalize_fanned_out_hour(
    loader: HourLoader,
    hour: datetime,
    shard_count: int,
    remaining_ms: RemainingMs | None = None,
) -> Report:
    """The state machine's last step: record the hour complete once every shard is (one ledger
    row however often it is retried), then give the previous hours the scheduled lookback a
    single run would have given them.

    It holds the hour's lock exclusively while it sums the shards' runs, so no shard of the hour
    is writing meanwhile; a run that holds the hour makes it raise `HourNotFinalized`."""
    label = hour_label(hour)
    report = Report.new(
        label,
        hour_prefix(hour, loader.settings.events_prefix),
        "schedule",
        str(finalize_run_id(label, shard_count)),
        loader.settings.key_list_cap,
    )
    with loader.lambda_clock(remaining_ms):
        report.db_revision = loader.check_schema()
        with hour_lock(loader.engine, label, None, loader.settings.lock_wait_s) as held:
            if not held:
                raise HourNotFinalized(f"hour {label} is held by another run: finalize it later")
            missing = loader.retrying("ledger", report)(
                finalize_sharded_hour,
                loader.engine,
                loader.tables,
                hour,
                shard_count,
                report,
                __version__,
            )
        if missing:
            raise HourNotFinalized(
                f"hour {label} is not complete: shards {missing} have no complete run"
            )
        look_back(loader, hour, report, remaining_ms)
    return report


def look_back(
    loader: HourLoader, hour: datetime, report: Report, remaining_ms: RemainingMs | None
) -> None:
    """Re-check the LOOKBACK_HOURS before `hour` for objects that landed after their hour was
    loaded (full-hour runs that skip loaded keys), into `report.lookback`; hours with objects
    but no run at all go to `report.missing_hours`."""
    previous = lookback_hours(hour, loader.settings.lookback_hours)
    if not previous:
        return

    def read_records() -> dict[datetime, Any]:
        with loader.engine.connect() as conn:
            return hour_records(conn, loader.tables, min(previous), max(previous))

    with loader.lambda_clock(remaining_ms):
        records = loader.retrying("ledger", report)(read_records)
    for each_hour in sorted(previous):
        if remaining_ms is not None and remaining_ms() < 2 * loader.settings.safety_margin_ms:
            break
        if each_hour not in records:
            if _has_objects(loader, each_hour):
                report.missing_hours.append(hour_label(each_hour))
            continue
        late = loader.load(HourJob(each_hour, "lookback", skip_loaded_keys=True), remaining_ms)
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


def _has_objects(loader: HourLoader, hour: datetime) -> bool:
    prefix = hour_prefix(hour, loader.settings.events_prefix)
    return next(iter(loader.source.list_objects(prefix)), None) is not None


@dataclass
class HoursResult:
    """A manual run over the hours of one UTC day: one report (and one ledger run) per hour."""

    trigger: Trigger
    prefix: str
    key_cap: int
    reports: list[Report] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        """`complete` once every hour that has begun is; `partial` means rerun the payload."""
        done = all(r.state == "complete" for r in self.reports)
        return "complete" if done and not self.not_started else "partial"

    def to_dict(self) -> dict[str, Any]:
        totals = (
            "objects_listed",
            "objects_skipped_loaded",
            "events_read",
            "inserted",
            "duplicates",
            "duplicate_exact",
            "duplicate_conflicting",
            "sanitised",
            "truncated",
            "batches",
            "retries",
        )
        out: dict[str, Any] = {
            "day": self.trigger.day.isoformat() if self.trigger.day else None,
            "prefix": self.prefix,
            "trigger": self.trigger.kind,
            "state": self.state,
        }
        out.update({name: sum(getattr(r, name) for r in self.reports) for name in totals})
        for name in ("conflicting", "malformed", "invalid", "quarantined"):
            out[name] = _merged_keys([getattr(r, name) for r in self.reports], self.key_cap)
        out["seconds"] = round(sum(r.seconds for r in self.reports), 3)
        out["hours_not_started"] = list(self.not_started)
        out["hours_in_future"] = [hour_label(h) for h in self.trigger.future_hours()]
        out["hours"] = [r.to_dict() for r in self.reports]
        return out


class HoursFailed(RuntimeError):
    """An hour of a day run raised; its message says what was loaded and what was not."""

    def __init__(self, message: str, result: HoursResult) -> None:
        super().__init__(message)
        self.result = result


def run_hours(
    loader: HourLoader,
    trigger: Trigger,
    remaining_ms: RemainingMs | None = None,
    on_report: Callable[[Report], None] | None = None,
) -> HoursResult:
    """Load `trigger.hours` in order, each as its own run, as `backfill` does.

    Stops before starting an hour when less than twice the safety margin remains, or after an
    hour that ran out of time; the hours left are reported as not started. Stops at the first
    hour that raises, because what raises (warehouse or S3 down, schema behind) would fail the
    following hours the same way, each after a full retry budget; bad data never raises. The
    error then names the hours loaded and the hours not started. Rerunning the payload is safe:
    hours already loaded insert nothing again.
    """
    result = HoursResult(
        trigger,
        f"{loader.settings.events_prefix}{trigger.hour:%Y/%m/%d}/",
        loader.settings.key_list_cap,
    )
    margin = 2 * loader.settings.safety_margin_ms
    for index, hour in enumerate(trigger.hours):
        if remaining_ms is not None and remaining_ms() < margin:
            result.not_started = [hour_label(h) for h in trigger.hours[index:]]
            log.warning(
                "time is running out: hours not started",
                extra={"hours_not_started": result.not_started},
            )
            break
        try:
            report = loader.load(HourJob(hour, trigger.kind, trigger.shard), remaining_ms)
        except Exception as exc:
            result.not_started = [hour_label(h) for h in trigger.hours[index + 1 :]]
            loaded = [r.hour for r in result.reports]
            raise HoursFailed(
                f"hour {hour_label(hour)} failed ({_summary(exc)}); loaded before it: "
                f"{loaded or 'none'}; not started: {result.not_started or 'none'}. "
                "Rerun the same payload: loaded hours insert nothing again.",
                result,
            ) from exc
        result.reports.append(report)
        if on_report is not None:
            on_report(report)
        if report.state == "partial":
            result.not_started = [hour_label(h) for h in trigger.hours[index + 1 :]]
            break
    return result


def _merged_keys(lists: list[KeyList], cap: int) -> dict[str, Any]:
    """The hours' key lists as one, in the shape and within the cap of each."""
    count = sum(k.count for k in lists)
    keys = [key for k in lists for key in k.keys][:cap]
    return {"count": count, "keys": keys, "keys_truncated": count > len(keys)}
