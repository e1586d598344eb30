"""Fuzz the transform: whatever the bytes, it never raises and what it emits always loads.

Two properties (issue 8, "Hostile input corpus"):
1. `transform_object` never raises, and every record it emits satisfies the NOT NULL columns;
2. every EventRecord it emits inserts into the real PostgreSQL schema (`write_batch` inside a
   transaction that is rolled back): "transform output is always loadable". A value PostgreSQL
   refuses would cost a whole event in production (quarantined by bisection), so it is a bug.

Inputs: arbitrary JSON (recursive, huge integers, NaN/±Infinity written as JSON text, exotic
Unicode incl. lone surrogates and NUL, nesting far past 100 levels), events with every mapped
field given values of the wrong type; written as ASCII-escaped JSON, as UTF-8 JSON or with raw
surrogate bytes; as one object, NDJSON or an array; plus raw random bytes.

Why derandomized and database-less: CI must give the same verdict on the same commit. With
`derandomize=True` Hypothesis derives its examples from the test itself, so a failure reproduces
on every run and on every machine, and `database=None` keeps it from replaying examples saved by
an earlier run. The cost is that CI explores the same 300 inputs each time; to look further, run
with `FUZZ_EXPLORE=1` (random seed, more examples) and turn anything it finds into an `@example`.
"""

from __future__ import annotations

import json
import os
import string
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loader import schema
from loader.common import EventRecord, SourceObject
from loader.load.sink import write_batch
from loader.load.tables import Tables
from loader.transform.mapping import transform_object

_EXPLORE = os.environ.get("FUZZ_EXPLORE") == "1"
FUZZ = settings(
    max_examples=5_000 if _EXPLORE else 300,
    deadline=None,
    derandomize=not _EXPLORE,
    database=None,
    # `dw_engine` is one database for the whole test; each example rolls its writes back.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

TABLES = Tables(
    schema.clickstream_events,
    schema.clickstream_ingest_meta,
    schema.clickstream_load_runs,
    schema.clickstream_quarantine,
    schema.clickstream_adoptions,
    schema.clickstream_loaded_objects,
    schema.clickstream_rollup_events,
    schema.clickstream_rollup_products,
    schema.clickstream_rollup_clients,
    schema.clickstream_rollup_client_gaps,
)
KEY_UUID = "0b7d5f0e-3c1a-4e9b-8f2d-6a1c9e4b7d21"

# --- JSON values -------------------------------------------------------------------------------

EXOTIC_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",  # lone high surrogate
    "\udfff",  # lone low surrogate
    "x\ud83dy",  # half of an emoji pair
    "\ufeff",
    "\u202eevil",  # right-to-left override
    "\U0001f600",
    "\uffff",
    "e\u0301" * 50,  # combining marks
    "null",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e-20000",
    "1e400",
    "fe80::1%eth0",
    "::ffff:1.2.3.4",
    "999.1.1.1",
    "0000-00-00T00:00:00Z",
    "9999-12-31T23:59:59+14:00",
    "0001-01-01T00:00:00-14:00",
    "x" * 5_000,
]
any_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=40),  # surrogates and NUL included
    st.sampled_from(EXOTIC_STRINGS),
)
huge_int = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**60), max_value=10**60),
    st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400, -(10**4299)]),
)
any_float = st.floats(allow_nan=True, allow_infinity=True)  # json.dumps writes NaN / Infinity
json_scalar = st.one_of(st.none(), st.booleans(), huge_int, any_float, any_text)
json_value = st.recursive(
    json_scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(any_text, children, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def deeply_nested(draw: st.DrawFn) -> Any:
    """A value nested 60-1,500 levels deep: past MAX_JSON_DEPTH (64), and past what the JSON
    parsers accept (about 1,000 levels), where the object becomes malformed."""
    depth = draw(st.integers(min_value=60, max_value=1_500))
    value = draw(json_scalar)
    as_dict = draw(st.booleans())
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    return value


# Any JSON value. Deep values are kept out of it and put in one field (`nested`) and one body
# shape: anywhere else they would make most examples unparseable and test only that path.
anything = json_value

# --- events with every mapped field, right or wrong -------------------------------------------

SANE_EPOCH = (946_684_800, 4_102_444_799)  # 2000-01-01 .. 2099-12-31
instants = st.one_of(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
        lambda d: d.isoformat() + "Z"
    ),
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, None, timezone(timedelta(hours=14))]),
    ).map(lambda d: d.isoformat()),
    st.integers(*SANE_EPOCH),
    st.integers(*SANE_EPOCH).map(lambda s: s * 1000),
    st.floats(*SANE_EPOCH),
    st.integers(),
    st.floats(),
    st.sampled_from(["1795525573000", "1795525573", "2026-11-24T13:04:11.482Z", "yesterday"]),
)
ips = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["fe80::1%eth0", "999.1.1.1", "not-an-ip", "", " 10.0.0.1 ", "::1"]),
)
ids = st.one_of(st.uuids().map(str), any_text, huge_int, st.booleans())
prices = st.one_of(
    huge_int,
    any_float,
    any_text,
    st.decimals(allow_nan=True, allow_infinity=True).map(str),  # "1E-20000", "-sNaN", ...
)


def sometimes(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually the field's plausible type, else any JSON value at all (the wrong type)."""
    return st.one_of(strategy, strategy, anything)


def mostly(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually `strategy`, else anything (a string, a list, null... in place of an object)."""
    return st.one_of(strategy, strategy, strategy, anything)


product_object = mostly(
    st.fixed_dictionaries(
        {name: sometimes(any_text) for name in ("id", "name", "category", "brand", "urlPath")}
        | {"price": sometimes(prices), "discountPrice": sometimes(prices)},
        optional={"extra": anything},
    )
)
ingest_object = mostly(
    st.fixed_dictionaries(
        {"receivedAt": sometimes(instants), "sourceIp": sometimes(ips)}
        | {
            name: sometimes(any_text)
            for name in ("userAgent", "path", "requestId", "apiId", "stage", "traceId")
        },
        optional={"extra": anything},
    )
)
TEXT_FIELD_NAMES = (
    "pageUrl",
    "referrer",
    "userId",
    "userLoginState",
    "identity_source",
    "clientId",
    "sessionId",
)

# event_name is usually usable so most examples reach the mapping and the database; events
# without one come from `anything` lines and from the unit tests. Optional keys are each
# present half of the time, so absent fields are covered too.
event = st.fixed_dictionaries(
    {
        "event_name": mostly(st.sampled_from(["page_view", "click", "custom", "x" * 300])),
        "timestamp": sometimes(instants),
        "product": product_object,
        "_ingest": ingest_object,
    },
    optional={
        "isFirstVisit": sometimes(st.sampled_from([True, False, "true", "FALSE", 1, "yes"])),
        "element": mostly(st.dictionaries(any_text, anything, max_size=5)),
        "event_id": sometimes(ids),
        "eventId": sometimes(ids),
        "id": sometimes(ids),
        "custom_event": anything,
        "properties": anything,
        "nested": deeply_nested(),
    }
    | {name: sometimes(any_text) for name in TEXT_FIELD_NAMES},
)


def dumps(value: Any, encoding: str) -> bytes:
    """JSON text of `value` as bytes. Lone surrogates cannot be UTF-8, so each encoding treats
    them differently: `ascii` escapes everything (`\\ud800`), `utf8` writes real UTF-8 and
    escapes only the lone surrogates, `cesu` writes them as (invalid) UTF-8 bytes, a body the
    transform must call malformed."""
    if encoding == "ascii":
        return json.dumps(value, ensure_ascii=True).encode("ascii")
    text = json.dumps(value, ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace" if encoding == "utf8" else "surrogatepass")


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    encoding = draw(st.sampled_from(["ascii", "utf8", "utf8", "cesu"]))
    shape = draw(st.sampled_from(["object", "object", "ndjson", "array", "any_json", "bytes"]))
    if shape == "bytes":
        return draw(st.binary(max_size=200))
    if shape == "any_json":
        return dumps(draw(st.one_of(anything, deeply_nested())), encoding)
    if shape == "object":
        body = dumps(draw(event), encoding)
    else:
        if shape == "array":
            body = dumps(draw(st.lists(event, min_size=1, max_size=5)), encoding)
        else:
            lines = draw(st.lists(st.one_of(event, event, event, anything), min_size=1, max_size=5))
            body = b"\n".join(dumps(line, encoding) for line in lines)
    prefix = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf", b"\n", b"  "]))
    return prefix + body


keys = st.one_of(
    st.just(f"events/2026/11/24/13/event-{KEY_UUID}.json"),
    st.uuids().map(lambda u: f"events/2026/11/24/13/event-{u}.json"),
    st.text(string.ascii_letters + string.digits + "-_./", min_size=1, max_size=60).map(
        lambda s: f"events/2026/11/24/13/{s}"
    ),
)
sources = st.builds(
    SourceObject,
    bucket=st.just("raw-bucket"),
    key=keys,
    last_modified=st.one_of(st.none(), st.just(datetime(2026, 11, 24, 13, 59, tzinfo=UTC))),
)

# Regression inputs: each broke a property once (loader/transform/coerce.py and
# loader/transform/mapping.py say why each case is handled); kept so that CI checks them on every
# run.
REGRESSIONS = [
    b'{"event_name": "x", "timestamp": ' + b"9" * 400 + b"}",  # OverflowError in to_instant
    b'{"event_name": "x", "product": {"price": "1e-20000"}}',  # numeric overflow in PostgreSQL
    b'{"event_name": "x", "_ingest": {"sourceIp": "fe80::1%eth0"}}',  # scoped IPv6 not inet
    b'{"event_name": "x", "_ingest": "a\\u0000b"}',  # uncleaned non-object _ingest
    b'{"event_name": "x", "_ingest": [NaN]}',
    b'{"event_name": "x", "n": ' + b"9" * 5_000 + b"}",  # past int's 4300-digit text limit
    b'{"a": ' + b"[" * 3_000 + b"]" * 3_000 + b'}\n{"event_name": "x"}',  # deep line in NDJSON
]


def check_record(record: EventRecord) -> None:
    assert isinstance(record.event_id, uuid.UUID)
    assert record.event["event_id"] == record.meta["event_id"] == record.event_id
    assert isinstance(record.event["event_name"], str) and record.event["event_name"].strip()
    assert isinstance(record.event["event_timestamp"], datetime)
    assert record.event["event_timestamp"].tzinfo is not None
    assert len(record.meta["payload_sha256"]) == 32


@FUZZ
@given(source=sources, body=bodies(), anonymize=st.booleans())
@example(
    source=SourceObject("raw-bucket", f"events/event-{KEY_UUID}.json", None),
    body=REGRESSIONS[0],
    anonymize=True,
)
def test_transform_never_raises(source: SourceObject, body: bytes, anonymize: bool) -> None:
    result = transform_object(source, body, anonymize=anonymize)
    for record in result.events:
        check_record(record)
    for rejection in [*result.malformed, *result.invalid]:
        assert rejection.key == source.key
    if not body.strip():
        assert [r.reason for r in result.malformed] == ["malformed"]


@pytest.fixture
def rolled_back(dw_engine: sa.Engine) -> Iterator[sa.Connection]:
    with dw_engine.connect() as conn:
        yield conn


@pytest.mark.parametrize("anonymize", [False, True])
@pytest.mark.parametrize("body", REGRESSIONS, ids=lambda b: b[:40].decode(errors="replace"))
def test_regressions_load(body: bytes, anonymize: bool, rolled_back: sa.Connection) -> None:
    source = SourceObject("raw-bucket", "events/2026/11/24/13/regression.json", None)
    result = transform_object(source, body, anonymize=anonymize)
    assert len(result.events) == 1
    assert_loads(rolled_back, result.events)


def assert_loads(conn: sa.Connection, records: list[EventRecord]) -> None:
    transaction = conn.begin()
    try:
        outcome = write_batch(conn, TABLES, records)
        assert outcome.inserted == outcome.meta_inserted == len({r.event_id for r in records})
    finally:
        transaction.rollback()


@FUZZ
@given(source=sources, body=bodies(), anonymize=st.booleans())
def test_transform_output_always_loads(
    rolled_back: sa.Connection, source: SourceObject, body: bytes, anonymize: bool
) -> None:
    result = transform_object(source, body, anonymize=anonymize)
    if result.events:
        assert_loads(rolled_back, result.events)
