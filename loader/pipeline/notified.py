"""Load the objects an SQS batch of notifications named, through the hourly path's own loader.

The near-real-time path. Each hour the batch touches becomes one `HourJob(hour, "event",
only_keys=...)` run by `HourLoader.load`, so an event-driven load is the hourly load restricted
to the named keys: the same fetch, transform and batches (both tables in one transaction per
batch, rows in event_id order), poison-row bisection, quarantine, revision guard, ledger (one
`event` run per hour per invocation) and the per-object completion records. Nothing here
writes to the warehouse itself.

What differs, and why:
- No listing. `NamedObjects` hands the pipeline the notified objects as if listed, so an
  invocation costs one GET per object, whatever the size of the hour.
- No hour lock. Invocations of the current hour run side by side (the event source mapping's
  concurrency) and beside the hour's scheduled run; waiting LOCK_WAIT_SECONDS per message and
  then failing would turn one slow run into a redelivery storm. Nothing needs the lock:
  `INSERT ... ON CONFLICT DO NOTHING` makes a race insert nothing twice, batches take row locks
  in event_id order (and a deadlock would be retried like any transient error), and event runs
  never count as a complete hour, so they cannot hide anything from the sweep.
- A key that no longer exists (deleted, or a notification replayed after a lifecycle rule) is
  skipped and reported, not quarantined: it is terminal, and the hourly sweep will not list it
  either, so there is nothing to reprocess.
- A notification for an hour past retention (`maintain --keep-days`; a replay, a DLQ redrive)
  is acknowledged without loading: the hour's partitions are dropped, so loading would fail
  forever and redeliver for nothing. Its keys are counted (`objects_retired`, metric
  ObjectsRetired) and logged.
- The scheduled run of the hour is its reconciliation sweep (`run_trigger`,
  loader/pipeline/runs.py): it loads whatever no message delivered (the objects with no
  completion record), and only its `complete` marks the hour complete.

The answer is per message (Lambda's partial batch response): a message is reported failed when
one of its objects did not commit for a reason that may pass (the warehouse or S3 down past the
retries, the invocation running out of time); loaded, quarantined, gone, retired and ignored
objects are settled. When nothing at all could be loaded the error is raised instead, so Lambda
counts an error (and the handler can drop a rotated password); every message then returns to the
queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from loader.common import FetchedObject, ObjectRef, ObjectSource
from loader.load.db import error_summary
from loader.notifications import BatchPlan, Ignored, Wanted, percentile
from loader.observability import log
from loader.pipeline.hour import HourLoader
from loader.pipeline.job import HourJob, RemainingMs
from loader.report import COUNTERS, KeyList, Report
from loader.schema import RunState, TriggerKind
from loader.window import hour_label

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


class NamedObjects:
    """An `ObjectSource` over the objects a batch named: `list_objects` yields them (no S3
    listing), `fetch_many` fetches through the real source and sets aside keys that are gone."""

    def __init__(self, source: ObjectSource, refs: Iterable[ObjectRef] = ()) -> None:
        self.bucket = source.bucket
        self._source = source
        self._refs: list[ObjectRef] = []
        #: Keys S3 no longer has. Appended on the pipeline's producer thread, read after
        #: `HourLoader.load` has returned (and joined it).
        self.gone: list[str] = []
        self.name(refs)

    def name(self, refs: Iterable[ObjectRef]) -> None:
        """The objects of the next batch (a warm container reuses this source)."""
        self._refs = sorted(refs, key=attrgetter("key"))
        self.gone = []

    def list_objects(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectRef]:
        """The named objects under `prefix`, in key order, as a listing would give them."""
        return iter(
            [
                ref
                for ref in self._refs
                if ref.key.startswith(prefix) and (start_after is None or ref.key > start_after)
            ]
        )

    def fetch_many(
        self, refs: Iterable[ObjectRef], stop: threading.Event | None = None
    ) -> Iterator[FetchedObject]:
        fetched = self._source.fetch_many(refs, stop)
        try:
            for item in fetched:
                if item.body is None and item.error == "not_found":
                    self.gone.append(item.ref.key)
                    log.info("skipped", extra={"key": item.ref.key, "reason": "gone"})
                    continue
                yield item
        finally:
            close = getattr(fetched, "close", None)
            if close is not None:
                close()  # cancels the fetches still in flight

    def close(self) -> None:
        """Nothing of its own to close: the wrapped source belongs to the invocation's loader."""


@dataclass
class BatchResult:
    """What one SQS batch came to, per message and per object."""

    messages: int
    message_keys: dict[str, frozenset[str]]
    key_cap: int = 100
    reports: list[Report] = field(default_factory=list)
    committed: set[str] = field(default_factory=set)
    failed_keys: set[str] = field(default_factory=set)
    gone: list[str] = field(default_factory=list)
    #: Keys of hours past retention: acknowledged, never loaded.
    retired: list[str] = field(default_factory=list)
    ignored: list[tuple[str, Ignored]] = field(default_factory=list)
    lag_seconds: list[float] = field(default_factory=list)
    hours_not_started: list[str] = field(default_factory=list)
    error: BaseException | None = None
    seconds: float = 0.0

    @property
    def failed_messages(self) -> list[str]:
        """Messages waiting for an object that did not commit: SQS must deliver them again."""
        return [mid for mid, keys in self.message_keys.items() if keys & self.failed_keys]

    def response(self) -> dict[str, Any]:
        """Lambda's partial batch response (the mapping needs ReportBatchItemFailures)."""
        return {"batchItemFailures": [{"itemIdentifier": mid} for mid in self.failed_messages]}

    def raise_if_nothing_loaded(self) -> None:
        """An error that let no hour load is the invocation's error: raise it."""
        if self.error is not None and not self.reports:
            raise self.error

    def lag(self) -> dict[str, float | None]:
        """End-to-end lag of the committed objects: S3's creation time to the commit."""
        return {
            "p50": _round(percentile(self.lag_seconds, 0.50)),
            "p95": _round(percentile(self.lag_seconds, 0.95)),
            "max": _round(max(self.lag_seconds, default=None)),
        }

    def metric_counts(self) -> dict[str, int]:
        """The batch's own counts for its EMF document (loader/observability.py)."""
        return {
            "MessagesReceived": self.messages,
            "MessagesFailed": len(self.failed_messages),
            "NotificationsIgnored": len(self.ignored),
            "ObjectsCommitted": len(self.committed),
            "ObjectsGone": len(self.gone),
            "ObjectsRetired": len(self.retired),
        }

    def to_dict(self) -> dict[str, Any]:
        failed = KeyList(self.key_cap)
        for mid in self.failed_messages:
            failed.add(mid)
        gone = KeyList(self.key_cap)
        for key in self.gone:
            gone.add(key)
        retired = KeyList(self.key_cap)
        for key in self.retired:
            retired.add(key)
        ignored = KeyList(self.key_cap)
        by_reason: dict[str, int] = {}
        for _, item in self.ignored:
            ignored.add(f"{item.reason}: {item.detail}")
            by_reason[item.reason] = by_reason.get(item.reason, 0) + 1
        return {
            "trigger": TriggerKind.EVENT,
            "messages": self.messages,
            "messages_failed": failed.to_dict(),
            "objects_named": len(self.committed) + len(self.failed_keys) + len(self.retired),
            "objects_committed": len(self.committed),
            "objects_gone": gone.to_dict(),
            "objects_retired": retired.to_dict(),
            "ignored": {**ignored.to_dict(), "by_reason": by_reason},
            "inserted": sum(r.inserted for r in self.reports),
            "duplicates": sum(r.duplicates for r in self.reports),
            "suppressed": sum(r.suppressed for r in self.reports),
            "lag_seconds": self.lag(),
            "hours": [_hour_summary(r) for r in self.reports],
            "hours_not_started": list(self.hours_not_started),
            "error": _error(self.error),
            "seconds": round(self.seconds, 3),
        }


class EventLoader:
    """The hourly path's loader over the objects a batch named: an `HourLoader` sharing the
    warm one's settings, engine and S3 client, reading through `NamedObjects`. One per warm
    container (loader/app.py), its revision check made once per invocation like the hourly
    path's."""

    def __init__(self, loader: HourLoader) -> None:
        self.named = NamedObjects(loader.source)
        self.loader = HourLoader(loader.settings, loader.engine, self.named)

    def load_batch(
        self, plan: BatchPlan, remaining_ms: RemainingMs | None = None, clock: Clock = _now
    ) -> BatchResult:
        """Load what `plan` names, hour by hour, and settle each message.

        Hours go in order, each one `HourLoader.load` of its keys. The first hour that raises
        stops the batch: what raises (warehouse or S3 down past the retries, schema behind)
        would fail the next hours the same way, each after a full retry budget. An hour is not
        started when less than twice the safety margin remains."""
        started = time.monotonic()
        settings = self.loader.settings
        result = BatchResult(
            len(plan.message_keys),
            plan.message_keys,
            settings.key_list_cap,
            ignored=list(plan.ignored),
        )
        for message_id, item in plan.ignored:
            log.info(
                "ignored notification",
                extra={"message_id": message_id, "reason": item.reason, "detail": item.detail},
            )
        hours = plan.hours()
        created = self._name(hours)
        margin = 2 * settings.safety_margin_ms
        for hour, wanted in hours.items():
            keys = [w.notice.key for w in wanted]
            if result.error is not None or (remaining_ms is not None and remaining_ms() < margin):
                result.failed_keys.update(keys)
                result.hours_not_started.append(hour_label(hour))
                continue
            self._load_hour(result, hour, keys, created, remaining_ms, clock)
        result.seconds = time.monotonic() - started
        return result

    def _name(self, hours: dict[datetime, list[Wanted]]) -> dict[str, datetime]:
        """Hand the batch's objects to `NamedObjects`; returns each key's creation instant.

        S3's LastModified has whole seconds: the notice's time, so truncated, is that second
        whenever the PUT did not straddle one, and never later than S3's own."""
        refs = [
            ObjectRef(w.notice.key, w.notice.size, w.notice.created_at.replace(microsecond=0))
            for wanted in hours.values()
            for w in wanted
        ]
        self.named.name(refs)
        return {ref.key: ref.last_modified for ref in refs}

    def _load_hour(
        self,
        result: BatchResult,
        hour: datetime,
        keys: list[str],
        created: dict[str, datetime],
        remaining_ms: RemainingMs | None,
        clock: Clock,
    ) -> None:
        """One hour's named keys as one `event` run, settled into `result`."""
        job = HourJob(hour, TriggerKind.EVENT, only_keys=frozenset(keys), locks_hour=False)
        gone_before = len(self.named.gone)
        try:
            report = self.loader.load(job, remaining_ms)
        except Exception as exc:
            result.error = exc
            result.failed_keys.update(keys)
            log.warning(
                "notified objects of an hour failed to load; their messages will be redelivered",
                extra={"hour": hour_label(hour), "objects": len(keys), "error": _error(exc)},
            )
            return
        committed_at = clock()
        result.reports.append(report)
        if report.state == RunState.RETIRED:
            result.retired.extend(sorted(keys))
            log.warning(
                "notifications for an hour past retention: acknowledged, not loaded",
                extra={"hour": hour_label(hour), "objects": len(keys)},
            )
            return
        gone = set(self.named.gone[gone_before:])
        done = _settled(report, keys)
        result.failed_keys.update(k for k in keys if k not in done)
        result.committed.update(k for k in done if k not in gone)
        result.gone.extend(sorted(gone & done))
        result.lag_seconds.extend(
            (committed_at - created[k]).total_seconds() for k in done if k not in gone
        )


def _settled(report: Report, keys: list[str]) -> set[str]:
    """The keys this run settled: all of them when it completed; when it stopped early (time
    running out), those up to the last one it committed, in the order it read them."""
    if report.state == RunState.COMPLETE:
        return set(keys)
    if report.state == RunState.PARTIAL and report.resume_after is not None:
        return {k for k in keys if k <= report.resume_after}
    return set()


def _hour_summary(report: Report) -> dict[str, Any]:
    """An hour of the batch's response: its run and the counts loader/report.py marks so."""
    summary: dict[str, Any] = {"hour": report.hour, "run_id": report.run_id, "state": report.state}
    summary.update({c.summary: report.count_of(c) for c in COUNTERS if c.summary})
    return summary


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _error(exc: BaseException | None) -> str | None:
    """As the ledger describes errors: SQLSTATE-based for the database, never row data."""
    return None if exc is None else error_summary(exc)
