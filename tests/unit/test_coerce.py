"""Every coercion rule, case by case: what a tracker sends → what the column stores.

One parametrized table per column kind; docs/mapping.md's coercion table lists the same rows.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from loader.transform.coerce import (
    MAX_JSON_DEPTH,
    REPLACEMENT,
    TOO_DEEP_MARKER,
    Repairs,
    anonymize_ip,
    clean_json,
    clean_text,
    first_instant,
    to_bool,
    to_instant,
    to_ip,
    to_price,
    to_text,
)

NAN = float("nan")
INF = float("inf")
#: 2026-11-24T13:06:13Z, the custom sample's timestamp.
EPOCH_S = 1_795_525_573
SAMPLE_INSTANT = datetime(2026, 11, 24, 13, 6, 13, tzinfo=UTC)

# --- booleans ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("FALSE", False),
        (" true ", True),
        ("True", True),
        (1, None),  # numbers are not booleans
        (0, None),
        ("1", None),
        ("yes", None),
        ("", None),
        (None, None),
        ([True], None),
        ({"value": True}, None),
    ],
)
def test_to_bool(raw: Any, stored: bool | None) -> None:
    assert to_bool(raw) is stored


# --- prices ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        (129000, Decimal("129000")),
        (99.5, Decimal("99.5")),
        (0.1, Decimal("0.1")),  # the float's shortest text, not its binary expansion
        ("129000", Decimal("129000")),
        (" 99.5 ", Decimal("99.5")),
        ("1e3", Decimal("1000")),
        ("-12.50", Decimal("-12.50")),  # negative prices (refunds) are kept
        (-5, Decimal("-5")),
        (0, Decimal("0")),
        (999_999_999_999_999, Decimal("999999999999999")),  # just under the 1e15 limit
        ("1e-16383", Decimal("1e-16383")),  # the finest scale PostgreSQL numeric stores
    ],
)
def test_to_price_keeps_finite_numbers(raw: Any, stored: Decimal) -> None:
    price = to_price(raw)
    assert isinstance(price, Decimal)
    assert price == stored


def test_to_price_keeps_the_digits_as_sent() -> None:
    assert str(to_price(0.1)) == "0.1"
    assert str(to_price("-12.50")) == "-12.50"


@pytest.mark.parametrize(
    "raw",
    [
        NAN,
        INF,
        -INF,
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "inf",
        "sNaN",
        "abc",
        "12 EUR",
        "1,000",
        "",
        "   ",
        10**15,  # 1e15 and above: a unit error or junk, not a price
        1e15,
        "1e15",
        -(10**15),
        10**40,
        "1" * 65,  # strings longer than 64 characters are not read at all
        "1e-16384",  # finer than PostgreSQL numeric can store
        "1e-20000",
        True,  # a boolean is not 1
        False,
        None,
        {"amount": 1},
        [1],
    ],
    ids=repr,
)
def test_to_price_refuses(raw: Any) -> None:
    assert to_price(raw) is None


# --- text --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("Giày chạy bộ Aero", "Giày chạy bộ Aero"),
        ("", ""),
        (42, "42"),
        (-7, "-7"),
        (1.5, "1.5"),
        (True, "true"),
        (False, "false"),
        (123456789012345678901234567890, "123456789012345678901234567890"),
        (None, None),
        ({"href": "/x"}, None),  # objects and arrays: NULL (the caller keeps the original)
        ([1, 2], None),
        (NAN, None),
        (INF, None),
    ],
)
def test_to_text(raw: Any, stored: str | None) -> None:
    repairs = Repairs()
    assert to_text(raw, 256, repairs) == stored
    assert (repairs.sanitised, repairs.truncated) == (0, 0)


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("a\x00b", f"a{REPLACEMENT}b"),
        ("\x00", REPLACEMENT),
        ("\ud800", REPLACEMENT),  # lone high surrogate
        ("x\udfffy", f"x{REPLACEMENT}y"),  # lone low surrogate
        ("é\ud83d\x00", f"é{REPLACEMENT}{REPLACEMENT}"),  # several repairs count once
    ],
    ids=repr,
)
def test_to_text_replaces_nul_and_lone_surrogates(raw: str, stored: str) -> None:
    repairs = Repairs()
    assert to_text(raw, 256, repairs) == stored
    assert (repairs.sanitised, repairs.truncated) == (1, 0)
    stored.encode("utf-8")  # storable: no surrogate left


def test_to_text_keeps_real_astral_characters() -> None:
    repairs = Repairs()
    assert to_text("👟 \U0001f600", 256, repairs) == "👟 \U0001f600"
    assert repairs.sanitised == 0


@pytest.mark.parametrize(
    ("raw", "stored", "truncated"),
    [
        ("x" * 256, "x" * 256, 0),  # exactly the cap: kept whole
        ("x" * 257, "x" * 256, 1),
        ("é" * 300, "é" * 256, 1),  # the cap counts characters, not bytes
        (10**300, "1" + "0" * 255, 1),  # a number's text is capped too
    ],
)
def test_to_text_truncates_to_the_cap(raw: Any, stored: str, truncated: int) -> None:
    repairs = Repairs()
    assert to_text(raw, 256, repairs) == stored
    assert repairs.truncated == truncated


def test_clean_text_counts_only_real_changes() -> None:
    repairs = Repairs()
    assert clean_text("plain ascii", repairs) == "plain ascii"
    assert clean_text("Thêm vào giỏ", repairs) == "Thêm vào giỏ"
    assert repairs.sanitised == 0
    assert clean_text("a\x00", repairs) == f"a{REPLACEMENT}"
    assert repairs.sanitised == 1


# --- IP addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("203.0.113.17", "203.0.113.17"),
        (" 203.0.113.17 ", "203.0.113.17"),
        ("2001:db8:4:1::23", "2001:db8:4:1::23"),
        ("2001:DB8:4:1:0:0:0:23", "2001:db8:4:1::23"),  # canonical IPv6 form
        ("::1", "::1"),
        ("999.1.1.1", None),
        ("1.2.3", None),
        ("01.2.3.4", None),  # leading zeros are ambiguous (octal?)
        ("not-an-ip", None),
        ("", None),
        ("fe80::1%eth0", None),  # scoped: PostgreSQL inet cannot store the zone
        ("1" * 65, None),
        (3_405_803_776, None),  # an integer is not an address here
        (None, None),
        (["203.0.113.17"], None),
    ],
    ids=repr,
)
def test_to_ip(raw: Any, stored: str | None) -> None:
    assert to_ip(raw) == stored


def test_to_ip_keeps_ipv4_mapped_ipv6() -> None:
    # Python 3.11 spells it ::ffff:c000:201, 3.13 ::ffff:192.0.2.1: the same inet value.
    stored = to_ip("::ffff:192.0.2.1")
    assert stored is not None
    assert ipaddress.ip_address(stored) == ipaddress.ip_address("::ffff:192.0.2.1")


@pytest.mark.parametrize(
    ("address", "anonymized"),
    [
        ("203.0.113.17", "203.0.113.0"),  # IPv4 → /24
        ("198.51.100.200", "198.51.100.0"),
        ("2001:db8:4:1::23", "2001:db8:4::"),  # IPv6 → /48
        ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"),
    ],
)
def test_anonymize_ip(address: str, anonymized: str) -> None:
    assert anonymize_ip(address) == anonymized


# --- instants ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("2026-11-24T13:04:11.482Z", datetime(2026, 11, 24, 13, 4, 11, 482000, tzinfo=UTC)),
        ("2026-11-24T13:04:11.482z", datetime(2026, 11, 24, 13, 4, 11, 482000, tzinfo=UTC)),
        ("2026-11-24T15:04:11+02:00", datetime(2026, 11, 24, 13, 4, 11, tzinfo=UTC)),
        ("2026-11-24T08:04:11-05:00", datetime(2026, 11, 24, 13, 4, 11, tzinfo=UTC)),
        ("2026-11-24T13:04:11", datetime(2026, 11, 24, 13, 4, 11, tzinfo=UTC)),  # no offset: UTC
        ("2026-11-24 13:04:11", datetime(2026, 11, 24, 13, 4, 11, tzinfo=UTC)),
        (" 2026-11-24T13:04:11Z ", datetime(2026, 11, 24, 13, 4, 11, tzinfo=UTC)),
        (EPOCH_S, SAMPLE_INSTANT),  # epoch seconds
        (EPOCH_S + 0.25, SAMPLE_INSTANT + timedelta(milliseconds=250)),
        (EPOCH_S * 1000, SAMPLE_INSTANT),  # epoch milliseconds (>= 1e11)
        (EPOCH_S * 1000 + 482, SAMPLE_INSTANT + timedelta(milliseconds=482)),
        (str(EPOCH_S), SAMPLE_INSTANT),  # numeric strings
        (str(EPOCH_S * 1000), SAMPLE_INSTANT),
        (f"{EPOCH_S}.5", SAMPLE_INSTANT + timedelta(milliseconds=500)),
        ("2000-01-01T00:00:00Z", datetime(2000, 1, 1, tzinfo=UTC)),  # first sane instant
        ("2099-12-31T23:59:59Z", datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC)),
        (datetime(2026, 11, 24, 13), datetime(2026, 11, 24, 13, tzinfo=UTC)),
        (
            datetime(2026, 11, 24, 14, tzinfo=timezone(timedelta(hours=1))),
            datetime(2026, 11, 24, 13, tzinfo=UTC),
        ),
    ],
    ids=repr,
)
def test_to_instant_reads(raw: Any, stored: datetime) -> None:
    instant = to_instant(raw)
    assert instant == stored
    assert instant is not None and instant.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "raw",
    [
        0,  # 1970: a zeroed clock
        86_400,
        "1970-01-01T00:00:00Z",
        "1999-12-31T23:59:59Z",
        "2100-01-01T00:00:00Z",  # the upper bound is exclusive
        "2150-06-01T00:00:00Z",
        int(datetime(2150, 6, 1, tzinfo=UTC).timestamp()),
        int(datetime(2150, 6, 1, tzinfo=UTC).timestamp()) * 1000,
        -1,  # negative epochs
        -EPOCH_S,
        f"-{EPOCH_S}",
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
        10**20,  # too big even as milliseconds
        10**400,  # past float range
        NAN,
        INF,
        "yesterday",
        "2026-13-45T00:00:00Z",
        "",
        "   ",
        "2" * 65,
        "²",  # a "digit" float() refuses
        True,  # booleans are not epochs
        False,
        None,
        {"ts": EPOCH_S},
        [EPOCH_S],
    ],
    ids=repr,
)
def test_to_instant_refuses(raw: Any) -> None:
    assert to_instant(raw) is None


@pytest.mark.parametrize(
    ("candidates", "chosen"),
    [
        (("2026-11-24T13:00:00Z", EPOCH_S), datetime(2026, 11, 24, 13, tzinfo=UTC)),
        ((None, EPOCH_S, "2026-11-24T13:00:00Z"), SAMPLE_INSTANT),
        (("garbage", 0, 10**20, EPOCH_S * 1000), SAMPLE_INSTANT),  # bad ones are skipped
        (
            ("1970-01-01T00:00:00Z", datetime(2026, 11, 24, 13)),
            datetime(2026, 11, 24, 13, tzinfo=UTC),
        ),
        ((None, "garbage"), None),
        ((), None),
    ],
)
def test_first_instant_takes_the_first_sane_candidate(
    candidates: tuple[Any, ...], chosen: datetime | None
) -> None:
    assert first_instant(*candidates) == chosen


# --- JSON values (properties, element, ingest_metadata) ---------------------------------------


def nested_lists(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("raw", "stored", "sanitised"),
    [
        (NAN, None, 1),
        (INF, None, 1),
        ([1.5, -INF, None, True], [1.5, None, None, True], 1),
        (2**70, 2**70, 0),  # integers past 64 bits are kept exactly
        ({"a\x00": {"\ud800": "x\x00"}}, {f"a{REPLACEMENT}": {REPLACEMENT: f"x{REPLACEMENT}"}}, 3),
        ({"k": ("tuple", 1)}, {"k": ["tuple", 1]}, 0),
        ({"price": Decimal("1.5")}, {"price": "1.5"}, 0),  # not from a parser: kept as text
    ],
    ids=repr,
)
def test_clean_json(raw: Any, stored: Any, sanitised: int) -> None:
    repairs = Repairs()
    assert clean_json(raw, repairs) == stored
    assert (repairs.sanitised, repairs.truncated) == (sanitised, 0)


def test_clean_json_keeps_nesting_up_to_the_limit() -> None:
    repairs = Repairs()
    value = nested_lists(MAX_JSON_DEPTH)
    assert clean_json(value, repairs) == value
    assert repairs.truncated == 0


def test_clean_json_replaces_what_is_nested_too_deep_with_a_marker() -> None:
    repairs = Repairs()
    cleaned = clean_json({"deep": nested_lists(MAX_JSON_DEPTH + 50)}, repairs)
    inner = cleaned["deep"]
    for _ in range(MAX_JSON_DEPTH - 1):  # the object itself is level 0
        inner = inner[0]
    assert inner == TOO_DEEP_MARKER
    assert repairs.truncated == 1
