"""What one hour's run loads: the job, and which of the listed keys it takes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from loader.common import ObjectRef
from loader.schema import TriggerKind
from loader.window import Shard

#: The Lambda's `context.get_remaining_time_in_millis`; None outside Lambda.
RemainingMs = Callable[[], int]


def in_shard(key: str, shard: Shard | None, prefix: str) -> bool:
    """Every key listed under `prefix` belongs to exactly one of `count` shards, whatever its
    name (loader/window.py `Shard`)."""
    return shard is None or shard.owns(key, prefix)


@dataclass
class HourJob:
    """One hour to load and how."""

    hour: datetime
    trigger: TriggerKind
    shard: Shard | None = None
    dry_run: bool = False
    #: Skip keys recorded as loaded in full (lookback).
    skip_loaded_keys: bool = False
    #: Only these keys (reprocess of quarantined keys).
    only_keys: frozenset[str] | None = None
    #: Mark open quarantine entries of keys that now load as resolved (reprocess).
    resolve_quarantine: bool = False
    #: Take the hour's advisory lock. Event-driven loads of a few named keys do not: they must
    #: never wait behind the hour's run, and ON CONFLICT keeps a race harmless
    #: (loader/pipeline/notified.py).
    locks_hour: bool = True


class JobKeys:
    """The keys of a job, in listing order: its shard's, only the named ones if it names some,
    and none of `loaded` (keys recorded as loaded in full).

    A range shard's listing starts after its range (`list_after`) and is no longer read once a
    key past the range comes up: the listing is a lazy iterator of pages, so no page after that
    one is ever requested.

    The keys left out as loaded are counted, but not here: the listing runs ahead of the writer,
    which counts them as processed only once it has committed the object listed after them
    (`skipped_before`), or, for those after the last object, once the stream has ended
    (`skipped_after`)."""

    def __init__(self, job: HourJob, loaded: set[str], prefix: str) -> None:
        self._job = job
        self._loaded = loaded
        self._prefix = prefix
        self._after, self._last = job.shard.bounds(prefix) if job.shard else (None, None)
        self._skipped_before: dict[str, int] = {}
        self.skipped_after = 0

    def list_after(self, resume_after: str | None) -> str | None:
        """The listing's StartAfter: the later of the shard's range start and where a partial
        run stopped (a key of the shard's own range, so normally that one)."""
        return max((k for k in (self._after, resume_after) if k is not None), default=None)

    def select(self, listed: Iterable[ObjectRef], stop: threading.Event) -> Iterator[ObjectRef]:
        """The job's keys out of `listed`, until `stop` is set or the shard's range ends."""
        skipped = 0
        for ref in listed:
            if stop.is_set():
                return
            if self._last is not None and ref.key > self._last:
                break
            if not in_shard(ref.key, self._job.shard, self._prefix):
                continue
            if self._job.only_keys is not None and ref.key not in self._job.only_keys:
                continue
            if ref.key in self._loaded:
                skipped += 1
                continue
            self._skipped_before[ref.key] = skipped
            skipped = 0
            yield ref
        self.skipped_after = skipped

    def skipped_before(self, key: str) -> int:
        """How many loaded keys were listed just before `key` (and left out); asked once."""
        return self._skipped_before.pop(key, 0)
