"""The S3 sources against a real S3 protocol server (moto over HTTP), for both clients.

Every behavioural test runs twice through the `source` / `make_source` fixtures: once with the
stock boto3 client, once with the CRT client. Faults (throttling, 5xx, bodies cut
short, stalls, refusals) come from `support.http_fault_proxy.FaultProxy` in front of moto.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from support.http_fault_proxy import LISTINGS, OBJECT_GETS, Fault, FaultProxy

from loader.common import ObjectRef, ObjectSource, S3AccessError, S3TransientError
from loader.config import DatabaseSettings, Settings
from loader.extract.address import resolve
from loader.extract.boto3_client import Boto3Source
from loader.extract.crt_client import CrtSource
from loader.extract.listing import parse_list_page

ROOT = Path(__file__).resolve().parents[2]

ODD_KEYS = [
    "events/odd/with space.json",
    "events/odd/two  spaces and tab\t.json",
    "events/odd/unicodé-ключ-鍵-😀.json",
    "events/odd/a+b.json",
    "events/odd/100%.json",
    "events/odd/%41%2F.json",
    "events/odd/a&b=c;d.json",
    "events/odd/../dots.json",
    "events/odd/./dot.json",
    "events/odd/<tag> & 'quotes\".json",
    "events/odd/tilde~star*(paren)!.json",
    "events/odd/#hash?query.json",
    "events/odd/trailing-dot.",
]
BIG_COUNT = 2_500

MakeSource = Callable[..., ObjectSource]


def _utf8_order(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def _put_many(s3: Any, bucket: str, items: dict[str, bytes]) -> None:
    def put(item: tuple[str, bytes]) -> None:
        s3.put_object(Bucket=bucket, Key=item[0], Body=item[1])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, items.items()))


def _fill_fast(s3: Any, bucket: str, items: dict[str, bytes]) -> None:
    """Thousands of objects in a second: straight into the backend of the in-process moto
    server (~20 s over HTTP); over HTTP when the endpoint is some other server."""
    try:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        backend.get_bucket(bucket)
    except Exception:
        _put_many(s3, bucket, items)
        return
    for key, body in items.items():
        backend.put_object(bucket, key, body)


@pytest.fixture(scope="module")
def big_bucket(s3_endpoint: str) -> tuple[str, list[str]]:
    """One bucket for the module: 2,500 events plus the odd key names (slow to fill, read-only)."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"big-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    items = {f"events/2024/05/01/10/{i:05d}.json": b'{"i": %d}' % i for i in range(BIG_COUNT)}
    items.update({key: key.encode() for key in ODD_KEYS})
    _fill_fast(s3, name, items)
    return name, _utf8_order(list(items))


@pytest.fixture(params=["boto3", "crt"])
def make_source(request: pytest.FixtureRequest, bucket: str) -> Iterator[MakeSource]:
    """Build a source of this test's client kind; Settings fields can be overridden."""
    kind = request.param
    made: list[ObjectSource] = []

    def make(**overrides: Any) -> ObjectSource:
        fields: dict[str, Any] = {
            "raw_bucket": bucket,
            "db": DatabaseSettings(),
            "fetch_concurrency": 8,
            "s3_client": kind,
            "s3_max_attempts": 4,
        }
        fields.update(overrides)
        settings = Settings(**fields)
        source: ObjectSource
        if kind == "crt":
            source = CrtSource(settings, backoff_base_s=0.02)
        else:
            source = Boto3Source(settings)
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()
        if isinstance(source, CrtSource):
            assert source.closed_cleanly


@pytest.fixture
def source(make_source: MakeSource) -> ObjectSource:
    return make_source()


@pytest.fixture
def proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A fault proxy in front of moto; sources built after this fixture go through it."""
    with FaultProxy(s3_endpoint) as fault_proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
        yield fault_proxy


def _refs(source: ObjectSource, prefix: str = "") -> list[ObjectRef]:
    return list(source.list_objects(prefix))


# ------------------------------------------------------------------------------------- listing


def test_listing_paginates_exactly_over_odd_keys(
    make_source: MakeSource, big_bucket: tuple[str, list[str]]
) -> None:
    name, expected = big_bucket
    source = make_source(raw_bucket=name)
    keys = [ref.key for ref in source.list_objects("events/")]
    assert len(keys) == len(set(keys)) == BIG_COUNT + len(ODD_KEYS)
    assert keys == expected  # none missing, none doubled, S3's (UTF-8 byte) key order

    odd = {ref.key: ref for ref in source.list_objects("events/odd/")}
    assert sorted(odd) == sorted(ODD_KEYS)
    assert all(ref.size == len(key.encode()) for key, ref in odd.items())
    assert all(ref.last_modified.tzinfo is not None for ref in odd.values())


def test_listing_start_after(make_source: MakeSource, big_bucket: tuple[str, list[str]]) -> None:
    name, expected = big_bucket
    source = make_source(raw_bucket=name)
    for start in (expected[999], expected[1000], expected[1777], "events/odd/a+b.json"):
        keys = [ref.key for ref in source.list_objects("events/", start_after=start)]
        assert keys == [k for k in expected if k.encode() > start.encode()], start
    assert list(source.list_objects("events/", start_after=expected[-1])) == []
    assert list(source.list_objects("nothing-here/")) == []


def test_the_crt_clients_lean_listing_matches_the_paginator(
    s3: Any, big_bucket: tuple[str, list[str]]
) -> None:
    name, expected = big_bucket
    with CrtSource(Settings(raw_bucket=name, db=DatabaseSettings())) as lean:
        refs = list(lean.list_objects("events/"))
    assert [ref.key for ref in refs] == expected
    paged = [
        (item["Key"], item["Size"], item["LastModified"])
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix="events/")
        for item in page["Contents"]
    ]
    assert [(r.key, r.size, r.last_modified) for r in refs] == paged


def test_directory_markers_are_skipped_and_empty_objects_listed(
    source: ObjectSource, s3: Any, bucket: str
) -> None:
    for key, body in {
        "events/": b"",
        "events/2024/": b"",
        "events/2024/a.json": b"{}",
        "events/2024/empty.json": b"",
        "events/2024/not-a-marker/": b"x",
    }.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    refs = _refs(source, "events/")
    assert [(r.key, r.size) for r in refs] == [
        ("events/2024/a.json", 2),
        ("events/2024/empty.json", 0),
        ("events/2024/not-a-marker/", 1),
    ]
    fetched = list(source.fetch_many(refs))
    assert [f.body for f in fetched] == [b"{}", b"", b"x"]


def test_listing_page_parser_ignores_the_namespace() -> None:
    for ns in (
        "http://s3.amazonaws.com/doc/2006-03-01/",
        "http://doc.s3.amazonaws.com/2006-03-01",
        "",
    ):
        xmlns = f' xmlns="{ns}"' if ns else ""
        page = parse_list_page(
            (
                f"<ListBucketResult{xmlns}><Name>b</Name><EncodingType>url</EncodingType>"
                "<IsTruncated>true</IsTruncated><NextContinuationToken>t/+=</NextContinuationToken>"
                "<Contents><Key>a+b%2Bc%25</Key><Size>3</Size>"
                "<LastModified>2024-05-01T10:00:00.000Z</LastModified></Contents>"
                "<Contents><Key>dir/</Key><Size>0</Size>"
                "<LastModified>2024-05-01T10:00:00.000Z</LastModified></Contents>"
                "</ListBucketResult>"
            ).encode()
        )
        assert [(r.key, r.size) for r in page.refs] == [("a b+c%", 3)]
        assert page.refs[0].last_modified == datetime(2024, 5, 1, 10, tzinfo=UTC)
        assert (page.is_truncated, page.next_token, page.key_count) == (True, "t/+=", 2)


# ------------------------------------------------------------------------------------- fetching


def test_fetch_yields_in_input_order(source: ObjectSource, s3: Any, bucket: str) -> None:
    rng = random.Random(7)
    items = {f"events/{i:03d}.json": os.urandom(rng.choice((10, 900, 20_000))) for i in range(80)}
    items.update({key: key.encode() for key in ODD_KEYS})
    _put_many(s3, bucket, items)
    refs = _refs(source, "events/")
    assert len(refs) == len(items)
    rng.shuffle(refs)
    fetched = list(source.fetch_many(refs))
    assert [f.ref for f in fetched] == refs
    assert all(f.error is None and f.body == items[f.ref.key] for f in fetched)
    assert sum(f.retries for f in fetched) == 0


def test_boto3_gets_share_one_pool_of_kept_alive_connections(
    proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    # GIVEN more objects than GET threads, behind a proxy that counts connections
    items = {f"events/{i:03d}.json": b'{"n": %d}' % i for i in range(120)}
    _put_many(s3, bucket, items)
    settings = Settings(raw_bucket=bucket, db=DatabaseSettings(), fetch_concurrency=4)
    source = Boto3Source(settings)
    try:
        # WHEN the source lists and fetches them twice
        refs = _refs(source, "events/")
        for _ in range(2):
            assert [f.body for f in source.fetch_many(refs)] == [items[r.key] for r in refs]
    finally:
        source.close()
    # THEN the listing and the 4 threads reused their connections: at most one each
    assert proxy.requests == 1 + 2 * len(refs)
    assert 1 <= proxy.connections <= settings.fetch_concurrency + 1


def test_a_get_checks_the_checksum_s3_sends(
    make_source: MakeSource, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    # GIVEN an object stored with its CRC32 (boto3 sends one on PutObject), which S3 returns
    # on a GET that asks for it, as botocore's get_object asks by default
    body = os.urandom(5000)
    s3.put_object(Bucket=bucket, Key="events/a.json", Body=body, ChecksumAlgorithm="CRC32")
    stored = s3.get_object(Bucket=bucket, Key="events/a.json", ChecksumMode="ENABLED")
    assert stored.get("ChecksumCRC32")
    source = make_source(s3_max_attempts=3)
    # botocore's checker (boto3 client) and the CRT's own (CRT client) say it their way
    mismatch = (
        "CHECKSUM_MISMATCH"
        if isinstance(source, CrtSource)
        else "did not match calculated checksum"
    )
    (ref,) = _refs(source, "events/")
    requests_before = proxy.requests
    # WHEN the first body arrives whole in length but corrupt
    proxy.set_faults(Fault.corrupt(first=1, match=OBJECT_GETS))
    fetched = source.fetch_one(ref)  # type: ignore[attr-defined]
    # THEN the checksum caught it and the retry brought the real body, with no HeadObject on
    # the way: two GETs, nothing else
    assert (fetched.body, fetched.error, fetched.retries) == (body, None, 1)
    assert proxy.stats["corrupt"] == 1
    assert proxy.requests - requests_before == 2
    # AND a body corrupt on every attempt fails the run instead of loading garbage
    proxy.set_faults(Fault.corrupt(match=OBJECT_GETS))
    with pytest.raises(S3TransientError, match=mismatch):
        source.fetch_one(ref)  # type: ignore[attr-defined]


def test_when_required_turns_the_checksum_check_off(
    make_source: MakeSource,
    proxy: FaultProxy,
    s3: Any,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN an object stored with its CRC32, and AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
    # (botocore's setting, for a store that refuses x-amz-checksum-mode)
    body = os.urandom(2000)
    s3.put_object(Bucket=bucket, Key="events/a.json", Body=body, ChecksumAlgorithm="CRC32")
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    source = make_source()
    (ref,) = _refs(source, "events/")
    # WHEN its body arrives corrupt
    proxy.set_faults(Fault.corrupt(first=1, match=OBJECT_GETS))
    fetched = source.fetch_one(ref)  # type: ignore[attr-defined]
    # THEN no checksum was asked for or checked: the body is taken as it came, as botocore
    # takes it with that setting (the default checks it: the two tests above)
    assert proxy.stats["corrupt"] == 1
    assert fetched.error is None and fetched.retries == 0
    assert fetched.body != body and len(fetched.body) == len(body)


def test_an_object_without_a_full_object_checksum_loads(
    make_source: MakeSource, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    # GIVEN an object stored with no checksum, and one from a multipart upload, whose checksum
    # is a composite of its parts' ("<base64>-2") that no read of the whole body can check
    plain = b'{"eventName": "click"}'
    s3.put_object(Bucket=bucket, Key="events/plain.json", Body=plain)
    key, parts = "events/multipart.json", [os.urandom(5 * 1024 * 1024), b"\n"]
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32")
    done = []
    for number, data in enumerate(parts, 1):
        part = s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data,
            ChecksumAlgorithm="CRC32",
        )
        done.append(
            {"PartNumber": number, "ETag": part["ETag"], "ChecksumCRC32": part["ChecksumCRC32"]}
        )
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
    )
    stored = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")["ChecksumCRC32"]
    assert stored.endswith("-2")
    # WHEN both are fetched by a source that checks checksums (through the proxy, which hands
    # moto the CRT's `x-amz-checksum-mode: enabled` in the case moto reads)
    source = make_source(max_object_bytes=8 * 1024 * 1024)
    fetched = {f.ref.key: f for f in source.fetch_many(_refs(source, "events/"))}
    # THEN both load whole, on the first attempt: nothing to check is no reason to refuse
    assert fetched["events/plain.json"].body == plain
    assert fetched[key].body == b"".join(parts)
    assert all(f.error is None and f.retries == 0 for f in fetched.values())


# test_boto3_waits_as_long_as_retry_after_asks is gone: botocore now retries throttling for the
# boto3 client, and its standard mode reads only x-amz-retry-after. The CRT client cannot either:
# it reports a throttled response as AWS_ERROR_S3_SLOW_DOWN, without its headers
# (bench/crt_library.py). test_slow_down_with_retry_after_is_retried below holds for both.


def test_boto3_reads_no_further_than_the_cap_of_a_grown_object(
    proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    # GIVEN an object listed at 10 bytes that has grown to 5 MB since
    s3.put_object(Bucket=bucket, Key="events/grew.json", Body=b"x" * 10)
    settings = Settings(raw_bucket=bucket, db=DatabaseSettings(), max_object_bytes=1_000)
    source = Boto3Source(settings)
    try:
        (ref,) = _refs(source, "events/")
        s3.put_object(Bucket=bucket, Key="events/grew.json", Body=b"x" * 5_000_000)
        # WHEN it is fetched THEN it is too large, and the next GET gets a connection that is
        # not stuck in the middle of the big body
        assert source.fetch_one(ref).error == "too_large"
        s3.put_object(Bucket=bucket, Key="events/grew.json", Body=b"y" * 10)
        assert source.fetch_one(ref).body == b"y" * 10
    finally:
        source.close()


def test_fetch_is_lazy_and_can_be_abandoned(source: ObjectSource, s3: Any, bucket: str) -> None:
    _put_many(s3, bucket, {f"events/{i:03d}.json": b"x" * 100 for i in range(100)})
    refs = _refs(source, "events/")
    results = iter(source.fetch_many(refs))
    first = [next(results) for _ in range(3)]
    assert [f.ref for f in first] == refs[:3]
    results.close()  # type: ignore[attr-defined]
    assert [f.ref for f in source.fetch_many(refs[50:53])] == refs[50:53]  # still usable


def test_fetch_gives_up_soon_after_stop_while_s3_does_not_answer(
    proxy: FaultProxy, make_source: MakeSource, s3: Any, bucket: str
) -> None:
    """The loader's producer thread must not outlive its invocation: when the caller sets
    `stop`, fetch_many returns even though its GETs never got an answer."""
    _put_many(s3, bucket, {f"events/{i}.json": b"{}" for i in range(4)})
    source = make_source()
    refs = _refs(source, "events/")
    proxy.set_faults(Fault.delay(30.0, match=OBJECT_GETS))  # an S3 that does not answer
    stop = threading.Event()
    got: list[Any] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            got.extend(source.fetch_many(refs, stop))
        except BaseException as exc:
            errors.append(exc)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    deadline = time.monotonic() + 30
    while not proxy.stats["delay"]:
        assert time.monotonic() < deadline, "no GET reached the proxy"
        time.sleep(0.02)
    stop.set()
    consumer.join(timeout=10)
    still_waiting = consumer.is_alive()
    proxy.stop()  # ends the hung GETs, so the source closes cleanly afterwards
    assert not still_waiting
    assert (got, errors) == ([], [])


def test_gzip_by_content_encoding_and_by_magic_bytes(
    source: ObjectSource, s3: Any, bucket: str
) -> None:
    payload = b'{"event": "page_view"}\n' * 50
    s3.put_object(
        Bucket=bucket, Key="events/a.json", Body=gzip.compress(payload), ContentEncoding="gzip"
    )
    s3.put_object(Bucket=bucket, Key="events/b.json.gz", Body=gzip.compress(payload))
    s3.put_object(Bucket=bucket, Key="events/c.json", Body=payload)
    fetched = list(source.fetch_many(_refs(source, "events/")))
    assert [(f.error, f.body) for f in fetched] == [(None, payload)] * 3


def test_gzip_bomb_and_corrupt_gzip(make_source: MakeSource, s3: Any, bucket: str) -> None:
    source = make_source(max_decompressed_bytes=100_000)
    s3.put_object(
        Bucket=bucket,
        Key="events/bomb.json",
        Body=gzip.compress(b"\0" * 5_000_000),
        ContentEncoding="gzip",
    )
    s3.put_object(
        Bucket=bucket, Key="events/corrupt.json", Body=b"\x1f\x8b\x08\x00garbage-not-deflate" * 3
    )
    s3.put_object(
        Bucket=bucket, Key="events/truncated.json", Body=gzip.compress(b"{}" * 1000)[:-12]
    )
    fetched = {f.ref.key: f for f in source.fetch_many(_refs(source, "events/"))}
    assert fetched["events/bomb.json"].error == "too_large"
    assert fetched["events/corrupt.json"].error == "bad_gzip"
    assert fetched["events/truncated.json"].error == "bad_gzip"
    assert all(f.body is None and f.detail for f in fetched.values())


def test_object_over_max_object_bytes(make_source: MakeSource, s3: Any, bucket: str) -> None:
    source = make_source(max_object_bytes=1_000)
    s3.put_object(Bucket=bucket, Key="events/big.json", Body=b"x" * 1_001)
    s3.put_object(Bucket=bucket, Key="events/ok.json", Body=b"x" * 1_000)
    fetched = list(source.fetch_many(_refs(source, "events/")))
    assert [(f.ref.key, f.error) for f in fetched] == [
        ("events/big.json", "too_large"),
        ("events/ok.json", None),
    ]


def test_object_that_grew_after_listing_is_capped_while_reading(
    make_source: MakeSource, s3: Any, bucket: str
) -> None:
    source = make_source(max_object_bytes=1_000)
    s3.put_object(Bucket=bucket, Key="events/grew.json", Body=b"x" * 10)
    (ref,) = _refs(source, "events/")
    s3.put_object(Bucket=bucket, Key="events/grew.json", Body=b"x" * 50_000)
    (fetched,) = source.fetch_many([ref])
    assert (fetched.error, fetched.body) == ("too_large", None)


def test_key_deleted_between_list_and_fetch(source: ObjectSource, s3: Any, bucket: str) -> None:
    _put_many(s3, bucket, {f"events/{i}.json": b"{}" for i in range(3)})
    refs = _refs(source, "events/")
    s3.delete_object(Bucket=bucket, Key="events/1.json")
    fetched = list(source.fetch_many(refs))
    assert [(f.body, f.error) for f in fetched] == [
        (b"{}", None),
        (None, "not_found"),
        (b"{}", None),
    ]


def test_missing_bucket_is_an_access_error(make_source: MakeSource) -> None:
    source = make_source(raw_bucket=f"missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(S3AccessError):
        list(source.list_objects("events/"))
    ref = ObjectRef("events/a.json", 10, datetime.now(UTC))
    with pytest.raises(S3AccessError):
        list(source.fetch_many([ref]))


# ------------------------------------------------------------------------------------- faults


def test_throttled_gets_are_retried_and_counted(
    proxy: FaultProxy, make_source: MakeSource, s3: Any, bucket: str
) -> None:
    items = {f"events/{i:02d}.json": b'{"n": %d}' % i for i in range(5)}
    _put_many(s3, bucket, items)
    source = make_source()
    refs = _refs(source, "events/")
    proxy.set_faults(Fault.slow_down(first=3, match=OBJECT_GETS))
    fetched = list(source.fetch_many(refs))
    assert [f.body for f in fetched] == [items[r.key] for r in refs]
    assert proxy.stats["slow_down"] == 3
    assert sum(f.retries for f in fetched) == 3


def test_body_cut_short_is_retried_and_arrives_whole(
    proxy: FaultProxy, make_source: MakeSource, s3: Any, bucket: str
) -> None:
    body = os.urandom(64 * 1024)
    s3.put_object(Bucket=bucket, Key="events/big.bin", Body=body)
    source = make_source()
    refs = _refs(source, "events/")
    proxy.set_faults(Fault.cut(after_bytes=1000, first=2, match=OBJECT_GETS))
    (fetched,) = source.fetch_many(refs)
    assert proxy.stats["cut"] == 2
    assert fetched.error is None and fetched.body == body
    assert fetched.retries == 2


def test_listing_retries_throttling_and_5xx(
    proxy: FaultProxy, make_source: MakeSource, s3: Any, bucket: str
) -> None:
    _put_many(s3, bucket, {f"events/{i}.json": b"{}" for i in range(5)})
    source = make_source()
    proxy.set_faults(
        Fault.slow_down(first=1, match=LISTINGS), Fault.internal_error(first=1, match=LISTINGS)
    )
    assert len(_refs(source, "events/")) == 5
    assert proxy.stats == {"slow_down": 1, "internal_error": 1}


def test_permanent_failure_raises_transient_error_in_bounded_time(
    proxy: FaultProxy, make_source: MakeSource, s3: Any, bucket: str
) -> None:
    _put_many(s3, bucket, {f"events/{i}.json": b"{}" for i in range(4)})
    source = make_source(s3_max_attempts=3)
    refs = _refs(source, "events/")
    proxy.set_faults(Fault.internal_error(match=OBJECT_GETS))
    started = time.monotonic()
    with pytest.raises(S3TransientError):
        list(source.fetch_many(refs))
    assert time.monotonic() - started < 20
    proxy.set_faults(Fault.internal_error(match=LISTINGS))
    with pytest.raises(S3TransientError):
        _refs(source, "events/")


def test_refusal_is_an_access_error(
    proxy: FaultProxy, make_source: MakeSource, s3: Any, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="events/a.json", Body=b"{}")
    source = make_source()
    refs = _refs(source, "events/")
    proxy.set_faults(Fault.error(403, "AccessDenied"))
    with pytest.raises(S3AccessError):
        list(source.fetch_many(refs))
    with pytest.raises(S3AccessError):
        _refs(source, "events/")
    assert proxy.stats["error_403"] == 2


@pytest.mark.parametrize(
    ("status", "code"), [(301, "PermanentRedirect"), (400, "AuthorizationHeaderMalformed")]
)
def test_bucket_in_another_region_is_an_access_error(
    proxy: FaultProxy, make_source: MakeSource, s3: Any, bucket: str, status: int, code: str
) -> None:
    # GIVEN a listed object, and then S3 answering that the bucket lives in another region, as
    # it does for a client addressing the wrong one (the region in a header, as S3 sends it)
    s3.put_object(Bucket=bucket, Key="events/a.json", Body=b"{}")
    source = make_source()
    refs = _refs(source, "events/")
    proxy.set_faults(Fault.error(status, code, headers={"x-amz-bucket-region": "eu-west-1"}))
    # WHEN the source fetches it or lists again THEN it is a configuration error, raised at once
    # (the same request would reach the same wrong endpoint), whichever client
    with pytest.raises(S3AccessError, match=code):
        list(source.fetch_many(refs))
    with pytest.raises(S3AccessError, match=code):
        _refs(source, "events/")


# ------------------------------------------------------------------------------------- CRT only


def test_crt_stalled_get_times_out_and_is_retried(proxy: FaultProxy, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="events/a.json", Body=b"{}")
    settings = Settings(
        raw_bucket=bucket, db=DatabaseSettings(), fetch_concurrency=2, s3_client="crt"
    )
    with CrtSource(settings, request_timeout_s=0.5, backoff_base_s=0.01) as source:
        refs = _refs(source, "events/")
        proxy.set_faults(Fault.delay(3.0, first=1, match=OBJECT_GETS))
        started = time.monotonic()
        (fetched,) = source.fetch_many(refs)
        assert time.monotonic() - started < 2.5
        assert (fetched.body, fetched.retries) == (b"{}", 1)


def test_crt_addressing_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(raw_bucket="my-bucket", db=DatabaseSettings(), s3_client="crt")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    with CrtSource(settings) as aws:
        assert (aws.address.scheme, aws.address.host) == (
            "https",
            "my-bucket.s3.eu-west-1.amazonaws.com",
        )
        assert aws.address.object_path("a b/c+d.json") == "/a%20b/c%2Bd.json"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:4568")
    with CrtSource(settings) as local:
        assert (local.address.scheme, local.address.host) == ("http", "127.0.0.1:4568")
        assert local.address.object_path("k.json") == "/my-bucket/k.json"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(S3AccessError, match="no AWS credentials"):
        CrtSource(settings)


def test_crt_process_exits_promptly_with_or_without_close(
    s3: Any, bucket: str, s3_endpoint: str
) -> None:
    s3.put_object(Bucket=bucket, Key="events/a.json", Body=b"{}")
    script = textwrap.dedent(
        f"""
        import sys
        from loader.config import DatabaseSettings, Settings
        from loader.extract.crt_client import CrtSource
        source = CrtSource(Settings(raw_bucket={bucket!r}, db=DatabaseSettings()))
        fetched = list(source.fetch_many(source.list_objects("events/")))
        assert [f.body for f in fetched] == [b"{{}}"], fetched
        if sys.argv[1] == "close":
            source.close()
        print("done")
        """
    )
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint, "PYTHONPATH": str(ROOT)}
    for mode in ("close", "leak"):
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", script, mode],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "done"
        assert time.monotonic() - started < 15


def test_the_crt_client_addresses_buckets_as_botocore_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN no endpoint override, and botocore's own switches for FIPS and dual-stack endpoints
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    aws = resolve("raw-events")
    # THEN each address is the one botocore's get_object would send to
    assert (aws.scheme, aws.host, aws.region) == (
        "https",
        "raw-events.s3.ap-south-1.amazonaws.com",
        "ap-south-1",
    )
    assert aws.object_path("a b/ü+.json") == "/a%20b/%C3%BC%2B.json"
    dotted = resolve("raw.events")  # a dotted name breaks the wildcard certificate: path-style
    assert (dotted.host, dotted.bucket_path()) == ("s3.ap-south-1.amazonaws.com", "/raw.events")
    assert resolve("b-1", region="cn-north-1").host == "b-1.s3.cn-north-1.amazonaws.com.cn"
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    assert resolve("b-1", region="us-gov-west-1").host == "b-1.s3-fips.us-gov-west-1.amazonaws.com"
    monkeypatch.delenv("AWS_USE_FIPS_ENDPOINT")
    monkeypatch.setenv("AWS_USE_DUALSTACK_ENDPOINT", "true")
    assert resolve("b-1").host == "b-1.s3.dualstack.ap-south-1.amazonaws.com"
    monkeypatch.delenv("AWS_USE_DUALSTACK_ENDPOINT")
    # AND an endpoint override: path-style under its own path, TLS only for https
    local = resolve("b-1", endpoint_url="http://localhost:4566/base/")
    assert (local.scheme, local.host, local.bucket_path()) == (
        "http",
        "localhost:4566",
        "/base/b-1",
    )
    assert not local.tls
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://a:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://b:2")
    assert resolve("b-1").host == "b:2"
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert resolve("b-1").host == "b-1.s3.ap-south-1.amazonaws.com"


# ------------------------------------------------------------------- what real S3 does differently
# moto and s3rver never throttle with Retry-After, never die mid-error, never redirect, never
# expire a session token, serve path-style plain HTTP only. These tests make S3 do each.


def test_slow_down_with_retry_after_is_retried(
    proxy: FaultProxy, make_source: MakeSource, s3: Any, bucket: str
) -> None:
    items = {f"events/{i}.json": b'{"n": %d}' % i for i in range(4)}
    _put_many(s3, bucket, items)
    source = make_source()
    refs = _refs(source, "events/")
    # GIVEN S3 throttling the first GETs and the next listing, asking for a second's pause
    slow = {"Retry-After": "1"}
    proxy.set_faults(
        Fault.error(503, "SlowDown", first=2, match=OBJECT_GETS, headers=slow, name="gets"),
        Fault.error(503, "SlowDown", first=1, match=LISTINGS, headers=slow, name="lists"),
    )
    # WHEN the source fetches and lists THEN every object arrives, the throttles counted
    fetched = list(source.fetch_many(refs))
    assert [f.body for f in fetched] == [items[r.key] for r in refs]
    assert sum(f.retries for f in fetched) == proxy.stats["gets"] == 2
    assert [r.key for r in _refs(source, "events/")] == [r.key for r in refs]
    assert proxy.stats["lists"] == 1


def test_internal_error_dying_mid_body_is_retried(
    proxy: FaultProxy, make_source: MakeSource, s3: Any, bucket: str
) -> None:
    # GIVEN a 500 InternalError whose error document is cut off after 20 bytes
    s3.put_object(Bucket=bucket, Key="events/a.json", Body=b'{"a": 1}')
    source = make_source()
    refs = _refs(source, "events/")
    proxy.set_faults(
        Fault.error(500, "InternalError", first=2, match=OBJECT_GETS, cut_after=20),
        Fault.error(500, "InternalError", first=1, match=LISTINGS, cut_after=20, name="list"),
    )
    # WHEN the source fetches and lists THEN both are retried and succeed
    (fetched,) = source.fetch_many(refs)
    assert (fetched.body, fetched.retries) == (b'{"a": 1}', 2)
    assert proxy.stats["error_500"] == 2
    assert len(_refs(source, "events/")) == 1
    assert proxy.stats["list"] == 1


def test_a_redirect_names_the_region_the_bucket_is_in(
    proxy: FaultProxy, make_source: MakeSource, s3: Any, bucket: str
) -> None:
    # GIVEN S3 redirecting to the bucket's region, with its Location, as S3 does for a bucket
    # created moments ago in another region
    s3.put_object(Bucket=bucket, Key="events/a.json", Body=b"{}")
    source = make_source()
    refs = _refs(source, "events/")
    headers = {
        "x-amz-bucket-region": "ap-southeast-1",
        "Location": f"https://{bucket}.s3.ap-southeast-1.amazonaws.com/events/a.json",
    }
    proxy.set_faults(Fault.error(307, "TemporaryRedirect", headers=headers))
    # WHEN it fetches or lists THEN the configuration error says which region to set
    with pytest.raises(S3AccessError, match="AWS_REGION=ap-southeast-1"):
        list(source.fetch_many(refs))
    with pytest.raises(S3AccessError, match="AWS_REGION=ap-southeast-1"):
        _refs(source, "events/")


class CredentialsEndpoint:
    """A loopback container-credentials endpoint (what ECS, EKS Pod Identity and Lambda's
    SnapStart serve at AWS_CONTAINER_CREDENTIALS_FULL_URI): a new session token each time it is
    asked, expiring soon, so both chains ask again before signing."""

    def __init__(self, *, rotate: bool = True) -> None:
        self.rotate = rotate
        self.issued: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    token = f"token-{len(endpoint.issued) if endpoint.rotate else 0}"
                    endpoint.issued.append(token)
                expires = datetime.now(UTC) + timedelta(seconds=30)
                body = json.dumps(
                    {
                        "AccessKeyId": "AKIDCONTAINER",
                        "SecretAccessKey": "container-secret",
                        "Token": token,
                        "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v2/credentials"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def container_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[CredentialsEndpoint]:
    """Credentials from a loopback container endpoint only: environment and files emptied."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    endpoint = CredentialsEndpoint()
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url)
    yield endpoint
    endpoint.close()


def _token(headers: Mapping[str, str]) -> str:
    return headers.get("X-Amz-Security-Token") or ""


def test_an_expired_session_token_is_retried_with_the_refreshed_credentials(
    proxy: FaultProxy,
    make_source: MakeSource,
    s3: Any,
    bucket: str,
    container_credentials: CredentialsEndpoint,
) -> None:
    items = {f"events/{i}.json": b'{"n": %d}' % i for i in range(3)}
    _put_many(s3, bucket, items)
    source = make_source()
    refs = _refs(source, "events/")
    # GIVEN S3 refusing, as expired, the session token the first object GET was signed with
    expired: set[str] = set()

    def signed_with_expired_token(headers: Mapping[str, str]) -> bool:
        if not expired:
            expired.add(_token(headers))
        return _token(headers) in expired

    proxy.set_faults(
        Fault.error(403, "ExpiredToken", match=OBJECT_GETS, match_headers=signed_with_expired_token)
    )
    # WHEN the source fetches the hour
    fetched = list(source.fetch_many(refs))
    # THEN the refused GETs were signed again with the endpoint's newer credentials
    assert [f.body for f in fetched] == [items[r.key] for r in refs]
    assert proxy.stats["error_403"] >= 1
    assert sum(f.retries for f in fetched) >= 1
    assert expired and not expired & {""}
    assert len(set(container_credentials.issued)) >= 2


def test_a_token_that_stays_expired_is_an_access_error(
    proxy: FaultProxy,
    make_source: MakeSource,
    s3: Any,
    bucket: str,
    container_credentials: CredentialsEndpoint,
) -> None:
    # GIVEN a provider that keeps handing out the one token S3 says has expired
    container_credentials.rotate = False
    s3.put_object(Bucket=bucket, Key="events/a.json", Body=b"{}")
    source = make_source(s3_max_attempts=2)
    refs = _refs(source, "events/")
    proxy.set_faults(Fault.error(403, "ExpiredToken", match_headers=lambda h: bool(_token(h))))
    # WHEN the source fetches or lists THEN, its attempts spent, it is a configuration error
    with pytest.raises(S3AccessError, match="ExpiredToken on all"):
        list(source.fetch_many(refs))
    with pytest.raises(S3AccessError, match="ExpiredToken on all"):
        _refs(source, "events/")


AWS_S3_HOST = "s3.us-east-1.amazonaws.com"


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """A CA of our own and a server certificate it signed for 127.0.0.1: (the CA bundle a
    client is told to trust, the server's TLS context)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = tmp_path_factory.mktemp("tls")
    now = datetime.now(UTC)

    def certificate(
        subject: str, key: Any, issuer: x509.Name | None, signer: Any, ca: bool
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            import ipaddress

            san = [
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.DNSName("localhost"),
                x509.DNSName(f"*.{AWS_S3_HOST}"),  # as AWS's own certificate names it
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("clickstream-loader test CA", ca_key, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = certificate("127.0.0.1", server_key, ca_cert.subject, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / "server.pem").write_bytes(
        server_cert.public_bytes(pem)
        + server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem")
    return directory / "ca.pem", context


@pytest.fixture
def tls_proxy(
    s3_endpoint: str, private_ca: tuple[Path, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultProxy]:
    """S3 over HTTPS on 127.0.0.1 with a certificate only AWS_CA_BUNDLE's CA vouches for."""
    ca_bundle, context = private_ca
    with FaultProxy(s3_endpoint, tls=context) as fault_proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_bundle))
        yield fault_proxy


def test_tls_with_the_ca_bundle_the_client_is_told_to_trust(
    tls_proxy: FaultProxy, make_source: MakeSource, s3: Any, bucket: str
) -> None:
    # GIVEN S3 behind TLS, and AWS_CA_BUNDLE naming the CA that signed its certificate
    items = {f"events/{i}.json": b'{"n": %d}' % i for i in range(3)}
    _put_many(s3, bucket, items)
    assert tls_proxy.url.startswith("https://127.0.0.1:")
    source = make_source()
    # WHEN the source lists and fetches over it THEN every object arrives, verified
    refs = _refs(source, "events/")
    assert [f.body for f in source.fetch_many(refs)] == [items[r.key] for r in refs]
    assert tls_proxy.requests >= 2


def test_tls_with_a_certificate_nobody_vouches_for_is_refused(
    tls_proxy: FaultProxy, make_source: MakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the same server, and a client left to the system's CAs
    monkeypatch.delenv("AWS_CA_BUNDLE")
    source = make_source(s3_max_attempts=1)
    # WHEN it lists THEN the handshake fails and nothing was served
    with pytest.raises(S3TransientError):
        _refs(source, "events/")
    assert tls_proxy.log == []


def _can_override_the_resolver() -> bool:
    """`unshare -rm` (a user and mount namespace of the child's own, no privileges needed) lets
    one child process see its own /etc/hosts; some CI sandboxes forbid user namespaces."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


_VIRTUAL_HOSTED = textwrap.dedent(
    """
    import json, sys
    from loader.config import DatabaseSettings, Settings
    bucket, kind = sys.argv[1], sys.argv[2]
    settings = Settings(raw_bucket=bucket, db=DatabaseSettings(), s3_client=kind)
    if kind == "crt":
        from loader.extract.crt_client import CrtSource as Source
    else:
        from loader.extract.boto3_client import Boto3Source as Source
    source = Source(settings)
    refs = list(source.list_objects("events/"))
    bodies = [f.body.decode() for f in source.fetch_many(refs)]
    source.close()
    print(json.dumps({"keys": [r.key for r in refs], "bodies": bodies}))
    """
)


@pytest.mark.skipif(not _can_override_the_resolver(), reason="unshare -rm is not permitted here")
@pytest.mark.parametrize("kind", ["boto3", "crt"])
def test_virtual_hosted_addressing_over_tls_as_on_aws(
    kind: str,
    s3_endpoint: str,
    s3: Any,
    bucket: str,
    private_ca: tuple[Path, ssl.SSLContext],
    tmp_path: Path,
) -> None:
    # GIVEN S3 answering for <bucket>.s3.us-east-1.amazonaws.com over TLS - the name a client
    # addresses on AWS, resolved to 127.0.0.1 for one child process only (its own /etc/hosts)
    items = {"events/a b+c.json": b'{"n": 1}', "events/2.json": b'{"n": 2}'}
    _put_many(s3, bucket, items)
    ca_bundle, context = private_ca
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {bucket}.{AWS_S3_HOST}\n")
    # botocore sends path-style to an explicit endpoint unless told otherwise, and the CRT
    # client addresses buckets as botocore does (loader.extract.address)
    config = tmp_path / "config"
    config.write_text("[default]\ns3 =\n    addressing_style = virtual\n")
    with FaultProxy(s3_endpoint, tls=context, virtual_host_suffix=AWS_S3_HOST) as proxy:
        port = proxy.url.rsplit(":", 1)[1]
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AWS_ENDPOINT_URL": f"https://{AWS_S3_HOST}:{port}",  # AWS's name, our port
            "AWS_CA_BUNDLE": str(ca_bundle),
            "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(config),
        }
        unshare = ["unshare", "-rm", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"']
        # WHEN each client lists and fetches from it
        done = subprocess.run(
            [*unshare, str(hosts), sys.executable, "-c", _VIRTUAL_HOSTED, bucket, kind],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    # THEN every request was virtual-hosted (the bucket in the Host, not in the path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["keys"] == sorted(items)
    assert out["bodies"] == [items[k].decode() for k in sorted(items)]
    assert len(proxy.hosts) >= 3
    assert set(proxy.hosts) == {f"{bucket}.{AWS_S3_HOST}:{port}"}
    assert not any(path.startswith(f"/{bucket}") for _, path, _ in proxy.log)


@pytest.mark.parametrize("prefix", ["events/2024/05/01/10/0000", "events/odd/"])
def test_every_request_is_signed_as_s3_verifies_it(
    make_source: MakeSource,
    big_bucket: tuple[str, list[str]],
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    prefix: str,
) -> None:
    # GIVEN an S3 that checks SigV4 signatures, as AWS does and moto does not; odd key names
    # (spaces, '+', '%', unicode, '~*()!', '#?') test the path and query canonicalisation
    name, expected = big_bucket
    with FaultProxy(s3_endpoint, verify_sigv4=os.environ["AWS_SECRET_ACCESS_KEY"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        source = make_source(raw_bucket=name)
        # WHEN the source lists and fetches THEN every signature verifies
        refs = _refs(source, prefix)
        fetched = list(source.fetch_many(refs))
    assert [r.key for r in refs] == [k for k in expected if k.startswith(prefix)]
    assert all(f.error is None for f in fetched)
    assert proxy.signature_problems == []
    assert proxy.stats["signature_checked"] == len(refs) + 1


def test_a_request_signed_with_another_secret_is_refused(
    make_source: MakeSource, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the verifying S3 holding another secret key than the client signs with
    with FaultProxy(s3_endpoint, verify_sigv4="not-the-client-secret") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        source = make_source()
        # WHEN the client lists THEN S3 refuses it, as a configuration error
        with pytest.raises(S3AccessError, match="SignatureDoesNotMatch"):
            _refs(source, "events/")
    assert len(proxy.signature_problems) == 1
    assert "signature mismatch" in proxy.signature_problems[0]
