"""The transform's fast paths give exactly what the general paths give (issue 14, less CPU).

Each shortcut skips work only where the work could not change the result: `clean_json` on a body
orjson read that holds no NUL escape and too few brackets to reach the depth cap, the regular
expression that looked for integers past 64 bits, `ipaddress` for an IPv4 address already in
canonical form, every spelling of a text column when the record holds only the tracker's. Here
each is compared with the general path on generated input (derandomized, so CI sees the same
examples every run) and on the edge cases it was built around. bench/dump_hour.py checks the
whole loader the same way, row by row, against the commit before.
"""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from loader.common import SourceObject
from loader.transform.coerce import MAX_JSON_DEPTH, Repairs, clean_json, to_ip
from loader.transform.mapping import map_record
from loader.transform.parse import _has_long_integer, parse_body

SAME_EXAMPLES = settings(max_examples=200, deadline=None, derandomize=True, database=None)
KEY = "events/2026/11/24/13/event-0b7d5f0e-3c1a-4e9b-8f2d-6a1c9e4b7d21.json"
SOURCE = SourceObject("b", KEY, datetime(2026, 11, 24, 13, 59, tzinfo=UTC))

TEXT = st.sampled_from(
    ["", "a", "\x00", "a\x00b", "\ud800", "\udfff", "é", "\U0001f600", "x" * 300]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(TEXT | st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "eventName",
        "event_name",
        "userId",
        "user_id",
        "pageUrl",
        "page_url",
        "sessionId",
        "x",
        "_ingest",
    ]
)
RECORDS = st.dictionaries(FIELDS, JSON_VALUES, max_size=6).map(
    lambda r: {"eventName": "click", **r}
)


def _body(record: dict[str, Any], ascii_only: bool) -> bytes:
    return json.dumps(record, ensure_ascii=ascii_only).encode("utf-8", errors="surrogatepass")


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"d": value}
    return value


@SAME_EXAMPLES
@given(record=RECORDS, ascii_only=st.booleans())
@example(record={"eventName": "click", "n": "a\x00b"}, ascii_only=True)
@example(record={"eventName": "click", "n": "\ud800"}, ascii_only=True)
@example(record={"eventName": "click", "n": float("nan")}, ascii_only=True)
@example(record={"eventName": "click", "n": 2**70}, ascii_only=True)
@example(record={"eventName": "click", "deep": _nested(MAX_JSON_DEPTH)}, ascii_only=True)
@example(record={"eventName": "click", "deep": _nested(MAX_JSON_DEPTH - 2)}, ascii_only=True)
def test_records_the_parser_calls_storable_are_what_clean_json_makes_of_them(
    record: dict[str, Any], ascii_only: bool
) -> None:
    parsed = parse_body(_body(record, ascii_only))
    for position, parsed_record in parsed.records:
        repairs = Repairs()
        cleaned = clean_json(parsed_record, repairs)
        if parsed.storable:
            # repr, not ==: 1 == 1.0 == True, but the warehouse would tell them apart.
            assert repr(cleaned) == repr(parsed_record)
            assert (repairs.sanitised, repairs.truncated) == (0, 0)
        # And the row the shortcut maps is the row the general path maps.
        fast, slow = Repairs(), Repairs()
        mapped_fast = map_record(parsed_record, SOURCE, position, fast, storable=parsed.storable)
        mapped_slow = map_record(parsed_record, SOURCE, position, slow, storable=False)
        assert repr(mapped_fast) == repr(mapped_slow)
        assert (fast.sanitised, fast.truncated) == (slow.sanitised, slow.truncated)


@pytest.mark.parametrize(
    ("body", "storable"),
    [
        (b'{"eventName":"click","a":[1,{"b":2.5}]}', True),
        (b'{"eventName":"click"}\n{"eventName":"view"}', True),
        (b'[{"eventName":"click"},{"eventName":"view"}]', True),
        (b'{"eventName":"click","a":"\\u0000"}', False),  # NUL: clean_json replaces it
        (b'{"eventName":"click","a":"\\ud800"}', False),  # lone surrogate: orjson refuses
        (b'{"eventName":"click","a":NaN}', False),  # NaN: orjson refuses, json reads it
        (b'{"eventName":"click","a":1e400}', False),  # infinity: likewise
        (b'{"eventName":"click","a":1234567890123456789012}', False),  # past 64 bits
        (b'{"eventName":"click"}\n{"eventName":"view","a":NaN}', False),  # one line needs repair
        (b'{"eventName":"click","d":' + b"[" * 64 + b"]" * 64 + b"}", False),  # depth cap
    ],
)
def test_storable_only_where_clean_json_has_nothing_to_do(body: bytes, storable: bool) -> None:
    parsed = parse_body(body)
    assert parsed.records
    assert parsed.storable is storable


@SAME_EXAMPLES
@given(data=st.binary(max_size=60) | st.text("0123456789 -.e", max_size=60).map(str.encode))
@example(data=b"1" * 19)
@example(data=b"1" * 18 + b" " + b"1" * 18)
@example(data="١".encode() * 20)  # Arabic-Indic digits: not ASCII, not a long integer
def test_the_long_integer_scan_is_the_regular_expression(data: bytes) -> None:
    assert _has_long_integer(data) is bool(re.search(rb"\d{19,}", data))


def _reference_ip(value: str) -> str | None:
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    return str(address)


OCTETS = st.integers(0, 300).map(str) | st.sampled_from(["00", "01", "007", "", "+1", "١", "1e2"])


@SAME_EXAMPLES
@given(
    octets=st.lists(OCTETS, min_size=3, max_size=5),
    before=st.sampled_from(["", " ", "\n"]),
    after=st.sampled_from(["", " ", "\n", "%eth0", "."]),
)
def test_canonical_ipv4_without_ipaddress_is_what_ipaddress_says(
    octets: list[str], before: str, after: str
) -> None:
    value = before + ".".join(octets) + after
    assert to_ip(value) == _reference_ip(value)
