"""The producer side of an hour: fetch and transform on a thread of its own, ahead of the writer.

The writer and this stage overlap: while a batch commits, the next objects are already being
fetched and parsed. A bounded queue between them keeps memory flat, and an error on either side
stops the other. `Prefetch` owns the thread: it never outlives the `with` block, and a writer
waiting for the next object gives up when the Lambda's time runs out, however long S3 takes.
"""

from __future__ import annotations

import gc
import queue
import threading
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
#: sources stop within POLL_S; only a source that ignores the signal can use this up.
PRODUCER_JOIN_S = 30.0


# Hand-tuned, kept because measured: at CPython's default threshold (700) the collector took
# 6% of the default path's CPU (0.019-0.025 of ~0.37 ms per event, bench/results/gc_threshold.md).
#: Allocations between two young-generation collections while an hour streams. The queue and
#: the batch keep thousands of young rows alive, which every pass at the default walks and
#: promotes; the rows hold no reference cycles, so reference counting frees them either way.
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
    """The end marker: the producer's stream ended, with its error if it failed."""

    error: BaseException | None


class Prefetch(Generic[T]):
    """A producer thread, owned by a context manager, handing items over a bounded queue.

    `produce(stop)` is iterated on the thread. Its iterator is closed there too, whether it ran
    out, failed or was stopped, so its own clean-up (a source cancelling its in-flight GETs) runs
    on the thread it ran on. The stream ends with a `_Done` in the queue. On leaving the block
    the thread is told to stop and joined.
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
        self._queue: queue.Queue[T | _Done] = queue.Queue(maxsize=max(1, capacity))
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
        self._stop.set()  # a producer waiting for room sees it within POLL_S
        self._thread.join(timeout=PRODUCER_JOIN_S)
        if self._thread.is_alive():
            log.error(
                "the fetch thread ignored the stop signal and is still running",
                extra={"source": self._what},
            )

    def items(self, out_of_time: Callable[[], bool]) -> Iterator[T]:
        """The items in order; a producer's error is raised here. Stops early, with `finished`
        still False, when `out_of_time()` says so while the next item is awaited."""
        while True:
            try:
                item = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                if out_of_time():
                    return
                continue
            if isinstance(item, _Done):
                if item.error is not None:
                    raise item.error
                self.finished = True
                return
            yield item

    def _put(self, item: T | _Done) -> bool:
        """Hand one item over, waiting while the queue is full; False once told to stop."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=POLL_S)
            except queue.Full:
                continue
            return True
        return False

    def _run(self) -> None:
        items: Iterator[T] | None = None
        try:
            items = self._produce(self._stop)
            for item in items:
                if not self._put(item):
                    return
            self._put(_Done(None))
        except BaseException as exc:  # handed to the writer, which re-raises it
            self._put(_Done(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
