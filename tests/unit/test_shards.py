"""Key-range shards: any key set, split any number of ways, is partitioned exactly, and a shard's
listing (StartAfter, then stop at the range end) yields exactly the keys it owns, in S3's order
and in a JavaScript server's, requesting no page past its range."""

from __future__ import annotations

import math
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lambda_function
from loader.common import ObjectRef
from loader.pipeline.job import HourJob, JobKeys, in_shard
from loader.window import Shard, TriggerError, hour_prefix, parse_shard

HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
PREFIX = hour_prefix(HOUR)
COUNTS = [1, 2, 3, 4, 7, 16, 64]

#: S3 lists in UTF-8 byte order; s3rver (node) compares JavaScript strings: UTF-16 code units.
S3_ORDER: Callable[[str], bytes] = lambda key: key.encode("utf-8")  # noqa: E731
UTF16_ORDER: Callable[[str], bytes] = lambda key: key.encode("utf-16-be", "surrogatepass")  # noqa: E731


def boundary_keys(count: int) -> list[str]:
    """The boundaries themselves and their neighbours: where an off-by-one would show."""
    keys = []
    for index in range(count):
        for bound in Shard(index, count, "range").bounds(PREFIX):
            if bound is not None:
                keys += [bound, bound + "\x00", bound + "-", bound[:-1], bound + ".json"]
    return sorted(set(keys))


uuid_keys = st.uuids(version=4).map(lambda u: f"{PREFIX}event-{u}.json")
odd_names = st.one_of(
    st.uuids().map(lambda u: f"{PREFIX}event-{str(u).upper()}.json"),  # uppercase hex
    st.text().map(lambda name: PREFIX + name),  # anything: non-ASCII, controls, NUL, emoji
    st.text(alphabet="0123456789abcdefABCDEF-.", max_size=12).map(
        lambda tail: f"{PREFIX}event-{tail}"  # near the boundaries
    ),
    st.sampled_from(["foo.json", "a b.json", "ünïcødé-事件.json", "emoji-🙂.json", "~", ""]).map(
        lambda name: PREFIX + name
    ),
    st.sampled_from(["event", "event-", "event.json", "EVENT-0.json", "event-g.json"]).map(
        lambda name: PREFIX + name
    ),
)
hour_keys = st.lists(st.one_of(uuid_keys, odd_names), max_size=60, unique=True)


def owners(key: str, count: int, by: str = "range") -> list[int]:
    return [i for i in range(count) if Shard(i, count, by).owns(key, PREFIX)]


@settings(max_examples=150, deadline=None)
@given(
    keys=st.lists(st.one_of(uuid_keys, odd_names, st.text()), max_size=40),
    count=st.sampled_from(COUNTS),
    by=st.sampled_from(["range", "crc32"]),
)
@example(keys=boundary_keys(16), count=16, by="range")
@example(keys=boundary_keys(7), count=7, by="range")
def test_every_key_belongs_to_exactly_one_shard(keys: list[str], count: int, by: str) -> None:
    # Also keys outside the hour's prefix (st.text()): ownership is total over all strings.
    for key in keys:
        assert len(owners(key, count, by)) == 1, key


def s3_listing(
    keys: list[str], order: Callable[[str], bytes], page_size: int, pages: list[int]
) -> Callable[[str | None], Iterator[ObjectRef]]:
    """ListObjectsV2 as the sources present it: a lazy iterator of pages in the server's key
    order, StartAfter compared in that order; each page requested is counted in `pages`."""
    ordered = sorted(keys, key=order)

    def list_objects(start_after: str | None) -> Iterator[ObjectRef]:
        rest = [k for k in ordered if start_after is None or order(k) > order(start_after)]
        for offset in range(0, max(len(rest), 1), page_size):
            pages.append(1)
            for key in rest[offset : offset + page_size]:
                yield ObjectRef(key, 10, HOUR)

    return list_objects


def shard_listing(
    shard: Shard, keys: list[str], order: Callable[[str], bytes], page_size: int
) -> tuple[list[str], int]:
    """What the hour job does with a shard: list after the range start, select; and the pages."""
    pages: list[int] = []
    job_keys = JobKeys(HourJob(HOUR, "manual", shard), set(), PREFIX)
    listed = s3_listing(keys, order, page_size, pages)(job_keys.list_after(None))
    selected = [ref.key for ref in job_keys.select(listed, threading.Event())]
    return selected, len(pages)


@settings(max_examples=150, deadline=None)
@given(
    keys=hour_keys,
    count=st.sampled_from(COUNTS),
    page_size=st.integers(1, 7),
    order=st.sampled_from([S3_ORDER, UTF16_ORDER]),
)
@example(keys=boundary_keys(4), count=4, page_size=1, order=S3_ORDER)
def test_each_shard_lists_exactly_its_own_keys_and_no_page_past_its_range(
    keys: list[str], count: int, page_size: int, order: Callable[[str], bytes]
) -> None:
    listed_by_shard = []
    for index in range(count):
        shard = Shard(index, count, "range")
        selected, pages = shard_listing(shard, keys, order, page_size)
        owned = [k for k in sorted(keys, key=order) if in_shard(k, shard, PREFIX)]
        # GIVEN S3's order (or a JavaScript server's): the listing yields the shard's keys
        assert selected == owned
        # AND it stops at the first key past the range: at most one page more than its keys fill
        after = shard.bounds(PREFIX)[0]
        reachable = sum(1 for k in keys if after is None or order(k) > order(after))
        needed = min(len(owned) + 1, reachable)
        assert pages <= max(1, math.ceil(needed / page_size))
        listed_by_shard += selected
    # THEN together the shards list every key exactly once
    assert sorted(listed_by_shard) == sorted(keys)


def test_uuid_keys_spread_evenly_and_a_shard_lists_about_1_over_n_of_the_pages() -> None:
    rng = random.Random(14)
    keys = [
        f"{PREFIX}event-{uuid.UUID(int=rng.getrandbits(128), version=4)}.json"
        for _ in range(16_000)
    ]
    for count in (4, 16):
        sizes = [
            len(shard_listing(Shard(i, count, "range"), keys, S3_ORDER, 1000)[0])
            for i in range(count)
        ]
        mean = len(keys) / count
        assert sum(sizes) == len(keys)
        assert max(abs(size - mean) for size in sizes) < 0.1 * mean, sizes
    pages = [shard_listing(Shard(i, 16, "range"), keys, S3_ORDER, 1000)[1] for i in range(16)]
    crc32_pages = [shard_listing(Shard(i, 16), keys, S3_ORDER, 1000)[1] for i in range(16)]
    # ~1,000 keys each: one page, or two when the range end falls past the first 1,000 keys
    assert all(p in (1, 2) for p in pages) and sum(pages) < 2 * 16, pages
    assert crc32_pages == [16] * 16  # each crc32 shard pages through the whole hour


def test_the_boundaries_cut_the_uuid_space_evenly_and_chain() -> None:
    bounds = [Shard(i, 4, "range").bounds(PREFIX) for i in range(4)]
    assert bounds == [
        (None, PREFIX + "event-40000000"),
        (PREFIX + "event-40000000", PREFIX + "event-80000000"),
        (PREFIX + "event-80000000", PREFIX + "event-c0000000"),
        (PREFIX + "event-c0000000", None),
    ]
    assert Shard(0, 1, "range").bounds(PREFIX) == (None, None)
    assert Shard(0, 4).bounds(PREFIX) == (None, None)  # crc32: the whole hour
    for count in (3, 7, 4096):
        cuts = [Shard(i, count, "range").bounds(PREFIX) for i in range(count)]
        assert all(cuts[i][1] == cuts[i + 1][0] for i in range(count - 1))
        inner = [after for after, _ in cuts[1:]]
        assert inner == sorted(set(inner)) and len(inner) == count - 1


def test_a_uuid_starting_at_a_boundary_begins_the_next_shard() -> None:
    first_of_shard_1 = f"{PREFIX}event-40000000-0000-4000-8000-000000000000.json"
    last_of_shard_0 = f"{PREFIX}event-3fffffff-ffff-4fff-bfff-ffffffffffff.json"
    assert owners(first_of_shard_1, 4) == [1]
    assert owners(last_of_shard_0, 4) == [0]
    # Keys before "event-" go to the first shard, after the hex range ("foo", uppercase
    # hex, non-ASCII) to the shard whose range holds them in byte order: always one.
    assert owners(PREFIX + "a b.json", 4) == [0]
    assert owners(PREFIX + "foo.json", 4) == [3]
    assert owners(PREFIX + "ünïcødé.json", 4) == [3]
    assert owners(f"{PREFIX}event-{'A' * 8}.json", 4) == [2]  # 'A' sorts between '9' and 'a'


def test_a_resumed_range_shard_lists_after_its_resume_point() -> None:
    shard = Shard(1, 4, "range")
    job_keys = JobKeys(HourJob(HOUR, "manual", shard), set(), PREFIX)
    resume = f"{PREFIX}event-5abc0000-0000-4000-8000-000000000000.json"
    assert job_keys.list_after(None) == PREFIX + "event-40000000"
    assert job_keys.list_after(resume) == resume
    # a resume point before the range (never written by this shard) cannot widen it
    assert job_keys.list_after(PREFIX + "a") == PREFIX + "event-40000000"
    assert JobKeys(HourJob(HOUR, "manual"), set(), PREFIX).list_after(resume) == resume


@pytest.mark.parametrize(
    ("raw", "shard", "label"),
    [
        ({"index": 1, "count": 4, "by": "range"}, Shard(1, 4, "range"), "1/4 range"),
        ({"index": 1, "count": 4, "by": "crc32"}, Shard(1, 4, "crc32"), "1/4"),
        # a plan written before range shards, or a runbook: the ledger's `i/n` rows mean crc32
        ({"index": 1, "count": 4}, Shard(1, 4, "crc32"), "1/4"),
    ],
)
def test_a_shard_payload_names_its_scheme(raw: dict[str, object], shard: Shard, label: str) -> None:
    parsed = parse_shard(raw)
    assert parsed == shard and parsed is not None
    assert parsed.label() == label
    assert parse_shard(parsed.as_payload()) == parsed


@pytest.mark.parametrize("by", ["md5", "", None, 3])
def test_an_unknown_scheme_is_refused(by: object) -> None:
    with pytest.raises(TriggerError, match="shard 'by' must be one of"):
        parse_shard({"index": 0, "count": 2, "by": by})


def test_plan_hands_out_range_shards() -> None:
    plan = lambda_function._plan({"time": "2026-11-24T14:05:00Z", "shard_count": 3})
    assert [item["shard"] for item in plan["shards"]] == [
        {"index": i, "count": 3, "by": "range"} for i in range(3)
    ]
