"""Batching (loader/pipeline/batching.py) and the job's key selection (loader/pipeline/job.py):
pure functions over plain data, checked without a database or S3."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import UTC, datetime

from loader.common import EventRecord, ObjectRef, Rejection
from loader.pipeline.batching import Batcher, Prepared, with_slice_refusals
from loader.pipeline.job import HourJob, JobKeys, in_shard
from loader.window import Shard

HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)


def obj(key: str, events: int, rejections: int = 0, skipped_before: int = 0) -> Prepared:
    records = [
        EventRecord(uuid.uuid4(), key, i, {"event_name": "e"}, {"s3_key": key})
        for i in range(events)
    ]
    bad = [Rejection(key, events + i, "invalid", "no name") for i in range(rejections)]
    return Prepared(key, records, bad, HOUR, skipped_before=skipped_before)


def test_batches_end_on_object_boundaries() -> None:
    batcher = Batcher(5)
    # GIVEN objects of 2, 2 and 2 events and batches of 5
    assert batcher.add(obj("a", 2)) == []
    assert batcher.add(obj("b", 2)) == []
    # WHEN the third does not fit THEN the open batch goes out whole, with a and b complete
    [full] = batcher.add(obj("c", 2))
    assert [r.key for r in full.records] == ["a", "a", "b", "b"]
    assert [(c.key, c.events) for c in full.completed] == [("a", 2), ("b", 2)]
    assert (full.last_key, full.objects, full.slice_of) == ("b", 2, None)
    # AND the last object stays in the batch the stream ends with
    last = batcher.finish()
    assert [c.key for c in last.completed] == ["c"]
    assert batcher.finish().empty


def test_a_batch_that_fills_up_goes_at_once() -> None:
    batcher = Batcher(4)
    assert batcher.add(obj("a", 1)) == []
    [full] = batcher.add(obj("b", 3))
    assert len(full.records) == 4
    assert [c.key for c in full.completed] == ["a", "b"]
    assert batcher.finish().empty


def test_an_object_larger_than_a_batch_is_written_in_slices() -> None:
    batcher = Batcher(5)
    assert batcher.add(obj("a", 1)) == []
    # WHEN an object of 12 events arrives
    batches = batcher.add(obj("big", 12, rejections=1))
    # THEN the open batch goes first, then two slices of 5 that record nothing complete
    open_batch, slice_1, slice_2 = batches
    assert [c.key for c in open_batch.completed] == ["a"]
    for part in (slice_1, slice_2):
        assert (len(part.records), part.slice_of, part.completed, part.objects) == (
            5,
            "big",
            [],
            0,
        )
        assert part.last_key is None
    # AND its last 2 events, its rejection and its completion travel together
    rest = batcher.finish()
    assert len(rest.records) == 2
    assert [(c.key, c.events, c.quarantined) for c in rest.completed] == [("big", 12, 1)]
    assert [r.key for r in rest.rejections] == ["big"]


def test_refusals_in_slices_count_in_the_completion_record() -> None:
    batcher = Batcher(3)
    slices = batcher.add(obj("big", 7))
    assert [b.slice_of for b in slices] == ["big", "big"]
    refused = Counter({"big": 2})
    # WHEN the slices' refused events are known THEN the object's completion counts them once
    last = with_slice_refusals(batcher.finish(), refused)
    assert [(c.key, c.events, c.quarantined) for c in last.completed] == [("big", 7, 2)]
    assert refused == Counter()


def test_skipped_keys_and_resolved_keys_are_counted_with_the_object_after_them() -> None:
    batcher = Batcher(10, resolve_quarantine=True)
    batcher.add(obj("a", 1, skipped_before=3))
    batcher.add(obj("b", 0, rejections=1))
    batch = batcher.finish()
    assert (batch.objects, batch.skipped_loaded) == (5, 3)
    # a loaded cleanly and its quarantine entries resolve; b was rejected again
    assert batch.resolved_keys == ["a"]
    assert not batch.empty


def test_an_object_with_only_rejections_is_still_recorded_complete() -> None:
    batcher = Batcher(5)
    batcher.add(obj("broken", 0, rejections=1))
    batch = batcher.finish()
    assert batch.records == []
    assert [(c.key, c.events, c.quarantined) for c in batch.completed] == [("broken", 0, 1)]


def refs(*keys: str) -> list[ObjectRef]:
    return [ObjectRef(key, 10, HOUR) for key in keys]


def test_job_keys_leave_out_loaded_keys_and_count_them_with_the_next() -> None:
    keys = JobKeys(HourJob(HOUR, "lookback", skip_loaded_keys=True), {"a", "b", "d", "f"}, "")
    selected = [r.key for r in keys.select(refs("a", "b", "c", "d", "e", "f"), threading.Event())]
    assert selected == ["c", "e"]
    assert (keys.skipped_before("c"), keys.skipped_before("e"), keys.skipped_after) == (2, 1, 1)
    assert keys.skipped_before("c") == 0  # asked once


def test_job_keys_of_a_shard_and_of_named_keys() -> None:
    shard = Shard(1, 3)
    listed = refs(*(f"events/{i}.json" for i in range(30)))
    keys = JobKeys(HourJob(HOUR, "schedule", shard), set(), "events/")
    mine = [r.key for r in keys.select(listed, threading.Event())]
    assert mine == [r.key for r in listed if in_shard(r.key, shard, "events/")]
    assert 0 < len(mine) < 30
    named = HourJob(HOUR, "reprocess", only_keys=frozenset({"events/3.json", "events/9.json"}))
    assert [r.key for r in JobKeys(named, set(), "events/").select(listed, threading.Event())] == [
        "events/3.json",
        "events/9.json",
    ]


def test_job_keys_stop_when_told() -> None:
    stop = threading.Event()
    keys = JobKeys(HourJob(HOUR, "manual"), set(), "")
    selected = keys.select(refs("a", "b", "c"), stop)
    assert next(selected).key == "a"
    stop.set()
    assert list(selected) == []
