"""Objects → batches: at most MAX_RECORDS_PER_BATCH events each, ending on object boundaries.

Pure: no I/O, no clock. A batch is one transaction, and it records complete the objects whose
last events it holds (their completion records), so an object's rows and its completion commit
together. An object larger than a batch is cut into slices of `limit` events that commit on
their own, ahead of the batch that takes its last events and its completion record: a run that
dies between them leaves the object unrecorded, and the next rerun or lookback reads it again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime

from loader.common import EventRecord, Rejection
from loader.load.completion import Completion


@dataclass
class Prepared:
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


@dataclass
class Batch:
    """One transaction's worth: events, quarantine entries and completion records."""

    records: list[EventRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    #: Objects whose last rows are in this batch: its transaction records them loaded.
    completed: list[Completion] = field(default_factory=list)
    last_key: str | None = None
    resolved_keys: list[str] = field(default_factory=list)
    #: Objects whose last events are in this batch, and already-loaded keys skipped before them.
    objects: int = 0
    skipped_loaded: int = 0
    #: The object this batch is a slice of: a slice records nothing complete.
    slice_of: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.records or self.rejections or self.resolved_keys or self.completed)


class Batcher:
    """Takes objects in listing order and hands back the batches they fill, in commit order."""

    def __init__(self, limit: int, *, resolve_quarantine: bool = False) -> None:
        self._limit = limit
        self._resolve_quarantine = resolve_quarantine
        self._batch = Batch()

    def add(self, item: Prepared) -> list[Batch]:
        """Take one object; return the batches that are now full (possibly none): the open
        batch if this object does not fit in it, this object's slices if it is larger than a
        batch, and the batch that takes its last events once that one is full."""
        ready: list[Batch] = []
        limit = self._limit
        batch = self._batch
        events = item.events
        if batch.records and len(batch.records) + len(events) > limit:
            ready.append(batch)
            batch = self._batch = Batch()
        while len(events) > limit:
            ready.append(Batch(records=events[:limit], slice_of=item.key))
            events = events[limit:]
        batch.records.extend(events)
        batch.rejections.extend(item.rejections)
        stamps = [r.event["event_timestamp"] for r in item.events if r.event.get("event_timestamp")]
        batch.completed.append(
            Completion(
                item.key,
                len(item.events),
                len(item.rejections),
                item.last_modified,
                min(stamps, default=None),
                max(stamps, default=None),
            )
        )
        batch.last_key = item.key
        batch.objects += 1 + item.skipped_before
        batch.skipped_loaded += item.skipped_before
        if self._resolve_quarantine and not item.rejections:
            batch.resolved_keys.append(item.key)
        if len(batch.records) >= limit:
            ready.append(batch)
            self._batch = Batch()
        return ready

    def finish(self) -> Batch:
        """The open batch, possibly empty: the last one of the stream."""
        batch, self._batch = self._batch, Batch()
        return batch


def with_slice_refusals(batch: Batch, refused: Counter[str]) -> Batch:
    """`batch`, its completion records counting as quarantined the events the database refused
    in their objects' slices (taken out of `refused`): known only once the slices committed."""
    if refused:
        batch.completed = [
            replace(c, quarantined=c.quarantined + refused.pop(c.key, 0)) for c in batch.completed
        ]
    return batch
