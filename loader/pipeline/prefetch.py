"""The producer side of an hour: fetch and transform on a thread of its own, ahead of the writer.

The writer and this stage overlap: while a batch commits, the next objects are already being
fetched and parsed. A bounded buffer between them keeps memory flat, and an error on either side
stops the other. `Prefetch` owns the thread: it never outlives the `with` block, and a writer
waiting for the next object gives up when the Lambda's time runs out, however long S3 takes.
"""

from __future__ import annotations

import gc
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

from loader.common import FetchedObject, Rejection, SourceObject
from loader.observability import log
from loader.pipeline.batching import Prepared
from loader.transform.mapping import transform_object

T = TypeVar("T")

#: How often the writer, waiting for the next object, looks at the Lambda's clock, and how often
#: a producer waiting for room in the queue looks at the stop signal.
POLL_S = 0.1
#: How long an ending invocation waits for its producer thread to see the stop signal. The real
#: sources stop within STOP_POLL_S; only a source that ignores the signal can use this up.
PRODUCER_JOIN_S = 30.0
#: A writer waiting for objects is woken once this many are ready (or the stream ended), not for
#: every one: each wake-up is a thread switch, which cost more CPU than handing over an object.
#: Fewer are taken when POLL_S passes first, so a slow stream is never held back longer.
WAKE_WRITER_AT = 64


#: Allocations between two young-generation collections while an hour streams (CPython's
#: default is 700). The prefetch buffer and the batch being filled keep thousands of young
#: objects (rows, bodies) alive, so at the default every pass walks them again and moves them to
#: the older generations, which are walked again in turn: 0.03-0.04 ms per event of a 5k hour
#: (bench "Where the CPU goes"), about 5% of the loader's CPU. The rows hold no reference
#: cycles, so reference counting frees them either way; a pass every 50,000 allocations still
#: collects the cycles other code makes (a retried request's traceback) within the stream.
STREAM_GC_THRESHOLD = 50_000
_gc_lock = threading.Lock()
_gc_streams = 0
_gc_saved: tuple[int, int, int] | None = None


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Raise the young generation's threshold while at least one stream runs in this process
    (concurrent loads in one process share it), and restore the caller's afterwards."""
    global _gc_streams, _gc_saved
    with _gc_lock:
        if _gc_streams == 0:
            _gc_saved = gc.get_threshold()
            gc.set_threshold(max(STREAM_GC_THRESHOLD, _gc_saved[0]), *_gc_saved[1:])
        _gc_streams += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_streams -= 1
            if _gc_streams == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
                _gc_saved = None


def prepare(
    fetched: FetchedObject, bucket: str, *, anonymize: bool, pseudonymise: bool = False
) -> Prepared:
    """One fetched object → its events, its rejections and its counts (producer thread)."""
    ref = fetched.ref
    if fetched.body is None:
        reason = "malformed" if fetched.error in ("too_large", "bad_gzip") else "fetch_failed"
        detail = f"{fetched.error}: {fetched.detail or ''}".strip(": ")
        return Prepared(
            ref.key,
            [],
            [Rejection(ref.key, 0, reason, detail)],
            ref.last_modified,
            retries=fetched.retries,
        )
    source = SourceObject(bucket, ref.key, ref.last_modified)
    result = transform_object(source, fetched.body, anonymize=anonymize, pseudonymise=pseudonymise)
    return Prepared(
        ref.key,
        result.events,
        [*result.malformed, *result.invalid],
        ref.last_modified,
        events_read=len(result.events) + len(result.invalid),
        sanitised=result.sanitised,
        truncated=result.truncated,
        retries=fetched.retries,
    )


@dataclass(frozen=True)
class _Done:
    """End of the producer's stream, with its error if it failed."""

    error: BaseException | None


class Prefetch(Generic[T]):
    """A producer thread, owned by a context manager, handing items over a bounded buffer.

    `produce(stop)` is iterated on the thread. Its iterator is closed there too, whether it ran
    out, failed or was stopped, so its own clean-up (a source cancelling its in-flight GETs) runs
    on the thread it ran on. On leaving the block the thread is told to stop and joined.

    The buffer is a deque both sides use without a lock (append and popleft are atomic); the
    condition is only for sleeping. Each side sleeps only when it must (the writer on an empty
    buffer, the producer on a full one) and is woken in batches: the writer once WAKE_WRITER_AT
    items are ready or the stream ended, the producer once half the buffer is free. A wake-up
    that races past a side about to sleep is caught by the POLL_S timeout of every wait.
    """

    def __init__(
        self,
        produce: Callable[[threading.Event], Iterator[T]],
        *,
        capacity: int,
        name: str = "fetch-transform",
        what: str = "",
    ) -> None:
        self._produce = produce
        self._capacity = max(1, capacity)
        self._wake_writer_at = min(WAKE_WRITER_AT, self._capacity)
        self._ready: deque[T] = deque()
        self._done: _Done | None = None
        self._wakeup = threading.Condition(threading.Lock())
        self._writer_waiting = False
        self._producer_waiting = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._what = what
        #: True once every item was handed over: the stream ended, not the writer's time.
        self.finished = False

    def __enter__(self) -> Prefetch[T]:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        with self._wakeup:
            self._wakeup.notify_all()  # a producer waiting for room sees the stop at once
        self._thread.join(timeout=PRODUCER_JOIN_S)
        if self._thread.is_alive():
            log.error(
                "the fetch thread ignored the stop signal and is still running",
                extra={"source": self._what},
            )

    def items(self, out_of_time: Callable[[], bool]) -> Iterator[T]:
        """The items in order; a producer's error is raised here. Stops early, with `finished`
        still False, when `out_of_time()` says so while the next item is awaited."""
        ready = self._ready
        room_at = self._capacity // 2
        while True:
            while ready:
                item = ready.popleft()
                if self._producer_waiting and len(ready) <= room_at:
                    with self._wakeup:
                        self._wakeup.notify_all()
                yield item
            done = self._done
            if done is not None and not ready:
                if done.error is not None:
                    raise done.error
                self.finished = True
                return
            if not self._await_items() and out_of_time():
                return

    def _await_items(self) -> bool:
        """Sleep until enough items are ready, the stream ended, or POLL_S passed; True when
        there is something to take."""
        with self._wakeup:
            self._writer_waiting = True
            try:
                self._wakeup.wait_for(
                    lambda: len(self._ready) >= self._wake_writer_at or self._done is not None,
                    timeout=POLL_S,
                )
            finally:
                self._writer_waiting = False
        return bool(self._ready) or self._done is not None

    def _put(self, item: T) -> bool:
        """Hand one item over, waiting while the buffer is full; False once told to stop."""
        ready = self._ready
        if len(ready) >= self._capacity:
            with self._wakeup:
                self._producer_waiting = True
                try:
                    while len(ready) >= self._capacity and not self._stop.is_set():
                        self._wakeup.wait(POLL_S)
                finally:
                    self._producer_waiting = False
        if self._stop.is_set():
            return False
        ready.append(item)
        if self._writer_waiting and len(ready) >= self._wake_writer_at:
            with self._wakeup:
                self._wakeup.notify_all()
        return True

    def _finish(self, error: BaseException | None) -> None:
        with self._wakeup:
            self._done = _Done(error)
            self._wakeup.notify_all()

    def _run(self) -> None:
        items: Iterator[T] | None = None
        try:
            items = self._produce(self._stop)
            for item in items:
                if not self._put(item):
                    return
            if not self._stop.is_set():
                self._finish(None)
        except BaseException as exc:  # handed to the writer, which re-raises it
            self._finish(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
