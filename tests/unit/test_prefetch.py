"""The producer thread (loader/pipeline/prefetch.py): order, errors, stopping, and that it never
outlives its `with` block. Plain Python producers, no S3: what a source does on the thread is
tested against the S3 server in tests/integration/test_source.py and test_invocation_limits.py."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from loader.common import FetchedObject, ObjectRef
from loader.pipeline.prefetch import STREAM_GC_THRESHOLD, Prefetch, fewer_collections, prepare

NEVER = lambda: False  # noqa: E731 - the writer's clock never runs out


class Produced:
    """A producer that records where and whether its iterator was closed."""

    def __init__(self, count: int, *, fail_at: int | None = None, block: bool = False) -> None:
        self.count, self.fail_at, self.block = count, fail_at, block
        self.closed_on: str | None = None
        self.stopped = False

    def __call__(self, stop: threading.Event) -> Iterator[int]:
        try:
            for i in range(self.count):
                if i == self.fail_at:
                    raise ValueError(f"item {i} broke")
                yield i
            if self.block:
                stop.wait()  # S3 not answering, until the writer gives up
                self.stopped = stop.is_set()
        finally:
            self.closed_on = threading.current_thread().name


def test_items_arrive_in_order_and_the_stream_ends() -> None:
    producer = Produced(200)
    with Prefetch(producer, capacity=4) as prefetch:
        assert list(prefetch.items(NEVER)) == list(range(200))
    assert prefetch.finished
    assert producer.closed_on == "fetch-transform"


def test_a_producer_error_is_raised_on_the_writer_side() -> None:
    producer = Produced(10, fail_at=3)
    with Prefetch(producer, capacity=2) as prefetch:
        received = []
        with pytest.raises(ValueError, match="item 3 broke"):
            for item in prefetch.items(NEVER):
                received.append(item)
    assert received == [0, 1, 2]
    assert not prefetch.finished


def test_the_writer_gives_up_when_its_time_runs_out_and_the_thread_ends_with_the_block() -> None:
    producer = Produced(2, block=True)
    prefetch = Prefetch(producer, capacity=2)
    received: list[int] = []
    with prefetch:
        # WHEN the producer stalls after two items, and the clock runs out meanwhile
        for item in prefetch.items(lambda: len(received) == 2):
            received.append(item)
    # THEN the writer got what was ready, the stream did not finish, and the producer was told
    # to stop and closed on its own thread before the block ended
    assert received == [0, 1]
    assert not prefetch.finished
    assert producer.stopped
    assert producer.closed_on == "fetch-transform"
    assert not any(t.name == "fetch-transform" and t.is_alive() for t in threading.enumerate())


def test_leaving_early_stops_a_producer_blocked_on_a_full_queue() -> None:
    producer = Produced(10_000)
    with Prefetch(producer, capacity=1) as prefetch:
        items = prefetch.items(NEVER)
        assert next(items) == 0
    # the producer was waiting for room in the queue: it stopped, and was closed
    assert producer.closed_on == "fetch-transform"
    assert not prefetch.finished


def test_prepare_turns_a_fetch_failure_into_a_rejection() -> None:
    ref = ObjectRef("events/a.json", 10, datetime(2026, 11, 24, 13, tzinfo=UTC))
    item = prepare(FetchedObject(ref, None, "bad_gzip", "truncated", 2), "b", anonymize=False)
    assert (item.key, item.events, item.retries) == ("events/a.json", [], 2)
    [rejection] = item.rejections
    assert (rejection.reason, rejection.detail) == ("malformed", "bad_gzip: truncated")
    gone = prepare(FetchedObject(ref, None, "not_found", "NoSuchKey"), "b", anonymize=False)
    assert gone.rejections[0].reason == "fetch_failed"
    ok = prepare(FetchedObject(ref, b'{"eventName": "click"}'), "b", anonymize=False)
    assert [e.event["event_name"] for e in ok.events] == ["click"]
    assert (ok.events_read, ok.rejections) == (1, [])


def test_the_producer_never_runs_more_than_capacity_ahead_of_a_slow_writer() -> None:
    consumed: list[int] = []
    ahead: list[int] = []

    def produce(stop: threading.Event) -> Iterator[int]:
        for i in range(300):
            # items made but not yet taken by the writer: at most the buffer, plus this one
            ahead.append(i - len(consumed))
            yield i

    with Prefetch(produce, capacity=8) as prefetch:
        for item in prefetch.items(NEVER):
            consumed.append(item)
            if item % 50 == 0:
                threading.Event().wait(0.02)  # a batch commit: the producer fills the buffer
    assert consumed == list(range(300))
    assert max(ahead) <= 8 + 1
    assert max(ahead) >= 8  # it did fill the buffer while the writer was busy


def test_fewer_collections_while_streams_run_then_the_callers_thresholds_again() -> None:
    saved = gc.get_threshold()
    gc.set_threshold(700, 7, 9)
    try:
        first, second = fewer_collections(), fewer_collections()
        first.__enter__()
        assert gc.get_threshold() == (STREAM_GC_THRESHOLD, 7, 9)
        second.__enter__()  # a concurrent load in the same process
        first.__exit__(None, None, None)
        # The other stream still runs: its threshold stays until it ends too.
        assert gc.get_threshold() == (STREAM_GC_THRESHOLD, 7, 9)
        second.__exit__(None, None, None)
        assert gc.get_threshold() == (700, 7, 9)
        # A caller who asked for fewer collections already keeps its own threshold.
        gc.set_threshold(STREAM_GC_THRESHOLD * 2, 7, 9)
        with fewer_collections():
            assert gc.get_threshold() == (STREAM_GC_THRESHOLD * 2, 7, 9)
        assert gc.get_threshold() == (STREAM_GC_THRESHOLD * 2, 7, 9)
    finally:
        gc.set_threshold(*saved)


def test_fewer_collections_restores_the_thresholds_when_the_stream_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("the hour failed")
    assert gc.get_threshold() == before
