"""Object → rows: exact mapping of the samples, id and timestamp rules, malformed and invalid
objects, and the repairs that keep one bad value from costing its event."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from loader.common import EventRecord, Rejection, SourceObject
from loader.schema import clickstream_events, clickstream_ingest_meta
from loader.transform.coerce import REPLACEMENT, TOO_DEEP_MARKER
from loader.transform.fields import FIELDS, INDEXED_TEXT_CAP, URL_CAP
from loader.transform.mapping import (
    EVENT_ID_NAMESPACE,
    ObjectResult,
    payload_digest,
    transform_object,
)
from loader.transform.parse import parse_body

#: The columns the transform fills: every column but the one the database stamps.
EVENT_COLUMNS = {c.name for c in clickstream_events.c} - {"loaded_at"}
# event_timestamp, the partition key, is the event's: the load stage copies it into the meta row.
META_COLUMNS = {c.name for c in clickstream_ingest_meta.c} - {"loaded_at", "event_timestamp"}
SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
PREFIX = "events/2026/11/24/13/"
BUCKET = "raw-clickstream"
LAST_MODIFIED = datetime(2026, 11, 24, 13, 59, 58, tzinfo=UTC)
PAGE_VIEW_ID = uuid.UUID("0b7d5f0e-3c1a-4e9b-8f2d-6a1c9e4b7d21")
CLICK_ID = uuid.UUID("5e2c8a41-9d7b-4f3e-a6c1-2b8d4f6a9c30")
CUSTOM_ID = uuid.UUID("c4a1e7d3-6b2f-4a8e-9c5d-1f3b7a9e2d64")
PLAIN_KEY = PREFIX + "batch-0001.ndjson"


def sample(event_id: uuid.UUID) -> tuple[SourceObject, bytes]:
    name = f"event-{event_id}.json"
    return SourceObject(BUCKET, PREFIX + name, LAST_MODIFIED), (SAMPLES / name).read_bytes()


def source(key: str = PLAIN_KEY, last_modified: datetime | None = LAST_MODIFIED) -> SourceObject:
    return SourceObject(BUCKET, key, last_modified)


def body(*records: Any) -> bytes:
    """NDJSON of the records (one record: a plain JSON object)."""
    return b"\n".join(json.dumps(r).encode() for r in records)


def transform(data: bytes | dict[str, Any], key: str = PLAIN_KEY, **kwargs: Any) -> ObjectResult:
    raw = body(data) if isinstance(data, dict) else data
    return transform_object(source(key), raw, **kwargs)


def only_event(data: bytes | dict[str, Any], key: str = PLAIN_KEY, **kwargs: Any) -> EventRecord:
    result = transform(data, key, **kwargs)
    assert not result.malformed and not result.invalid
    assert len(result.events) == 1
    return result.events[0]


def canonical_sha256(payload: dict[str, Any]) -> bytes:
    """The documented digest, computed independently: compact, key-sorted UTF-8 JSON."""
    rest = {k: v for k, v in payload.items() if k != "_ingest"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).digest()


# --- exact mapping of the samples --------------------------------------------------------------


def test_page_view_maps_every_column() -> None:
    src, raw = sample(PAGE_VIEW_ID)
    result = transform_object(src, raw)
    assert (result.malformed, result.invalid, result.sanitised, result.truncated) == ([], [], 0, 0)
    [record] = result.events
    payload = json.loads(raw)
    assert (record.event_id, record.key, record.position) == (PAGE_VIEW_ID, src.key, 0)
    assert set(record.event) == EVENT_COLUMNS
    assert record.event == {
        "event_id": PAGE_VIEW_ID,  # no id in the payload: the key's UUID
        "event_name": "page_view",
        "event_timestamp": datetime(2026, 11, 24, 13, 4, 11, 790000, tzinfo=UTC),  # receivedAt
        "client_timestamp": datetime(2026, 11, 24, 13, 4, 11, 482000, tzinfo=UTC),
        "page_url": "https://shop.example.com/p/running-shoe-42?utm_source=newsletter",
        "referrer": "https://www.google.com/",
        "user_id": None,
        "user_login_state": "anonymous",
        "identity_source": None,
        "client_id": "c-7f3a9d2e",
        "session_id": "s-20261124-1304-8b1c",
        "is_first_visit": True,
        "context_product_id": "SKU-42",
        "context_product_name": "Giày chạy bộ Aero",
        "context_product_category": "shoes",
        "context_product_brand": "Acme",
        "context_product_price": Decimal("129000"),
        "context_product_discount_price": Decimal("99000"),
        "context_product_url_path": "/p/running-shoe-42",
        "element": None,
        "properties": None,  # every field is mapped: nothing left over
    }
    assert set(record.meta) == META_COLUMNS
    assert record.meta == {
        "event_id": PAGE_VIEW_ID,
        "received_at": datetime(2026, 11, 24, 13, 4, 11, 790000, tzinfo=UTC),
        "source_ip": "203.0.113.17",
        "user_agent": payload["_ingest"]["userAgent"],
        "path": "/events",
        "request_id": "6f1c2b9e-2d4a-4b7e-9a1f-3c5d7e9f1a2b",
        "api_id": "k3x9q2",
        "stage": "prod",
        "trace_id": "Root=1-6743a1f0-4c2d8e1b9a7f3c5d2e1f0a9b",
        "s3_bucket": BUCKET,
        "s3_key": src.key,
        "s3_last_modified": LAST_MODIFIED,
        "ingest_metadata": payload["_ingest"],
        "payload_sha256": canonical_sha256(payload),
    }
    assert len(record.meta["payload_sha256"]) == 32


def test_click_maps_every_column() -> None:
    src, raw = sample(CLICK_ID)
    [record] = transform_object(src, raw).events
    payload = json.loads(raw)
    assert record.event == {
        "event_id": CLICK_ID,
        "event_name": "click",
        "event_timestamp": datetime(2026, 11, 24, 13, 5, 2, 301000, tzinfo=UTC),
        "client_timestamp": datetime(2026, 11, 24, 13, 5, 2, 117000, tzinfo=UTC),
        "page_url": "https://shop.example.com/p/running-shoe-42",
        "referrer": "https://shop.example.com/",
        "user_id": "u-1029",
        "user_login_state": "logged_in",
        "identity_source": "cognito",
        "client_id": "c-7f3a9d2e",
        "session_id": "s-20261124-1304-8b1c",
        "is_first_visit": False,
        "context_product_id": "SKU-42",
        "context_product_name": "Giày chạy bộ Aero",
        "context_product_category": "shoes",
        "context_product_brand": "Acme",
        "context_product_price": Decimal("129000"),  # sent as the string "129000"
        "context_product_discount_price": Decimal("99000"),
        "context_product_url_path": "/p/running-shoe-42",
        "element": {
            "tag": "button",
            "id": "add-to-cart",
            "role": "button",
            "text": "Thêm vào giỏ",
            "dataset": {"sku": "SKU-42", "position": "3"},
        },
        "properties": None,
    }
    assert record.meta == {
        "event_id": CLICK_ID,
        "received_at": datetime(2026, 11, 24, 13, 5, 2, 301000, tzinfo=UTC),
        "source_ip": "2001:db8:4:1::23",
        "user_agent": payload["_ingest"]["userAgent"],
        "path": "/events",
        "request_id": "0a9e7c5b-3d1f-4e2a-8b6c-9d7e5f3a1c2b",
        "api_id": "k3x9q2",
        "stage": "prod",
        "trace_id": "Root=1-6743a1f0-4c2d8e1b9a7f3c5d2e1f0a9b",
        "s3_bucket": BUCKET,
        "s3_key": src.key,
        "s3_last_modified": LAST_MODIFIED,
        "ingest_metadata": payload["_ingest"],
        "payload_sha256": canonical_sha256(payload),
    }


def test_custom_event_keeps_unmapped_fields_in_properties() -> None:
    src, raw = sample(CUSTOM_ID)
    [record] = transform_object(src, raw).events
    assert record.event_id == CUSTOM_ID
    assert record.event["event_name"] == "custom"
    # epoch milliseconds 1795525573000 → the client timestamp; receivedAt wins the event time
    assert record.event["client_timestamp"] == datetime(2026, 11, 24, 13, 6, 13, tzinfo=UTC)
    assert record.event["event_timestamp"] == datetime(2026, 11, 24, 13, 6, 13, 4000, tzinfo=UTC)
    assert record.event["is_first_visit"] is True  # the string "true"
    assert record.event["referrer"] is None
    assert record.event["properties"] == {
        "custom_event": "newsletter_signup",
        "properties": {"form": "footer", "variant": "B"},
    }
    assert record.event["element"] is None
    assert record.event["context_product_id"] is None
    assert record.event["context_product_price"] is None
    assert record.meta["source_ip"] == "198.51.100.200"


# --- event_id ----------------------------------------------------------------------------------

SOME_UUID = uuid.UUID("3f2504e0-4f89-41d3-9a0c-0305e82c3301")


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ({"event_id": str(SOME_UUID)}, SOME_UUID),  # a UUID is used as is
        ({"event_id": str(SOME_UUID).upper()}, SOME_UUID),
        ({"eventId": str(SOME_UUID)}, SOME_UUID),
        ({"id": str(SOME_UUID)}, SOME_UUID),
        ({"event_id": "evt-42"}, uuid.uuid5(EVENT_ID_NAMESPACE, "id:evt-42")),
        ({"id": 12345}, uuid.uuid5(EVENT_ID_NAMESPACE, "id:12345")),  # number → its text
        ({"event_id": " evt-42 "}, uuid.uuid5(EVENT_ID_NAMESPACE, "id:evt-42")),
        # precedence: the tracker's eventId, then event_id, then id; empty, blank, boolean and
        # object ids are skipped
        ({"event_id": "a", "eventId": "b", "id": "c"}, uuid.uuid5(EVENT_ID_NAMESPACE, "id:b")),
        ({"event_id": "a", "id": "c"}, uuid.uuid5(EVENT_ID_NAMESPACE, "id:a")),
        ({"eventId": "b", "id": "c"}, uuid.uuid5(EVENT_ID_NAMESPACE, "id:b")),
        ({"event_id": "", "eventId": "  ", "id": "c"}, uuid.uuid5(EVENT_ID_NAMESPACE, "id:c")),
        (
            {"event_id": True, "eventId": {"v": 1}, "id": "c"},
            uuid.uuid5(EVENT_ID_NAMESPACE, "id:c"),
        ),
    ],
    ids=repr,
)
def test_payload_id_is_the_event_id(ids: dict[str, Any], expected: uuid.UUID) -> None:
    key = f"{PREFIX}event-{PAGE_VIEW_ID}.json"  # the payload id beats the key's UUID
    assert only_event({"event_name": "click", **ids}, key).event_id == expected


def test_non_uuid_ids_map_deterministically() -> None:
    first = only_event({"event_name": "a", "event_id": "order-1"}).event_id
    other_key = only_event({"event_name": "a", "event_id": "order-1"}, PREFIX + "other.json")
    assert other_key.event_id == first
    assert only_event({"event_name": "a", "event_id": "order-2"}).event_id != first
    assert first.version == 5


def test_key_uuid_is_the_first_record_and_seeds_the_others() -> None:
    key = f"{PREFIX}event-{PAGE_VIEW_ID}.json"
    result = transform(body({"event_name": "a"}, {"event_name": "b"}, {"event_name": "c"}), key)
    assert [r.event_id for r in result.events] == [
        PAGE_VIEW_ID,
        uuid.uuid5(PAGE_VIEW_ID, "1"),
        uuid.uuid5(PAGE_VIEW_ID, "2"),
    ]


def test_without_any_uuid_the_key_and_position_make_the_id() -> None:
    data = body({"event_name": "a"}, {"event_name": "b"})
    first = [r.event_id for r in transform(data).events]
    again = [r.event_id for r in transform(data).events]
    assert first == again  # never random: a rerun dedupes
    assert first == [
        uuid.uuid5(EVENT_ID_NAMESPACE, f"key:{PLAIN_KEY}#0"),
        uuid.uuid5(EVENT_ID_NAMESPACE, f"key:{PLAIN_KEY}#1"),
    ]
    other_key = [r.event_id for r in transform(data, PREFIX + "batch-0002.ndjson").events]
    assert set(first).isdisjoint(other_key)


def test_same_payload_id_in_two_objects_is_one_event() -> None:
    event = {"event_name": "click", "event_id": "retry-me"}
    one = only_event(event, f"{PREFIX}event-{PAGE_VIEW_ID}.json")
    two = only_event(event, f"{PREFIX}event-{CLICK_ID}.json")
    assert one.event_id == two.event_id == uuid.uuid5(EVENT_ID_NAMESPACE, "id:retry-me")


def test_only_the_id_field_used_leaves_properties() -> None:
    record = only_event(
        {"event_name": "click", "eventId": str(SOME_UUID), "event_id": "x", "id": "legacy-7"}
    )
    assert record.event_id == SOME_UUID
    assert record.id_from_payload
    assert record.event["properties"] == {"event_id": "x", "id": "legacy-7"}


# --- timestamps --------------------------------------------------------------------------------

RECEIVED = "2026-11-24T13:30:00Z"
CLIENT = "2026-11-24T13:29:58Z"


@pytest.mark.parametrize(
    ("received_at", "timestamp", "event_timestamp"),
    [
        (RECEIVED, CLIENT, datetime(2026, 11, 24, 13, 30, tzinfo=UTC)),  # receivedAt first
        (None, CLIENT, datetime(2026, 11, 24, 13, 29, 58, tzinfo=UTC)),  # then the payload's
        ("garbage", CLIENT, datetime(2026, 11, 24, 13, 29, 58, tzinfo=UTC)),
        (0, CLIENT, datetime(2026, 11, 24, 13, 29, 58, tzinfo=UTC)),  # epoch 0 is 1970: skipped
        ("2150-01-01T00:00:00Z", CLIENT, datetime(2026, 11, 24, 13, 29, 58, tzinfo=UTC)),
        (None, None, LAST_MODIFIED),  # then the object's LastModified
        ("garbage", "1970-01-01T00:00:00Z", LAST_MODIFIED),
        (10**20, 10**400, LAST_MODIFIED),  # huge epochs: skipped, never an error
        (None, 1_795_525_573_000, datetime(2026, 11, 24, 13, 6, 13, tzinfo=UTC)),  # epoch ms
        (1_795_525_573, None, datetime(2026, 11, 24, 13, 6, 13, tzinfo=UTC)),  # epoch seconds
    ],
    ids=repr,
)
def test_event_timestamp_falls_back_in_order(
    received_at: Any, timestamp: Any, event_timestamp: datetime
) -> None:
    event: dict[str, Any] = {"event_name": "click", "_ingest": {"receivedAt": received_at}}
    if timestamp is not None:
        event["timestamp"] = timestamp
    record = only_event(event)
    assert record.event["event_timestamp"] == event_timestamp


def test_unreadable_client_timestamp_is_null_and_kept_in_properties() -> None:
    record = only_event({"event_name": "click", "timestamp": "last tuesday"})
    assert record.event["client_timestamp"] is None
    assert record.event["event_timestamp"] == LAST_MODIFIED
    assert record.event["properties"] == {"timestamp": "last tuesday"}


def test_unreadable_received_at_is_null_and_kept_in_ingest_metadata() -> None:
    record = only_event({"event_name": "click", "_ingest": {"receivedAt": "soon"}})
    assert record.meta["received_at"] is None
    assert record.meta["ingest_metadata"] == {"receivedAt": "soon"}


def test_without_any_sane_instant_the_floor_is_2000() -> None:
    result = transform_object(source(last_modified=None), body({"event_name": "click"}))
    assert result.events[0].event["event_timestamp"] == datetime(2000, 1, 1, tzinfo=UTC)


# --- shapes of an object: NDJSON, arrays, malformed --------------------------------------------


def test_ndjson_bad_lines_are_malformed_and_good_lines_load() -> None:
    data = b"\n".join(
        [
            b'{"event_name": "a"}',
            b"{oops",
            b'{"event_name": "b"}',
            b"",
            b"42",
            b'{"event_name": "c"}\r',
        ]
    )
    result = transform(data)
    assert [r.position for r in result.events] == [0, 2, 5]
    assert [r.event["event_name"] for r in result.events] == ["a", "b", "c"]
    assert [(m.position, m.reason, m.detail) for m in result.malformed] == [
        (1, "malformed", "line is not valid JSON"),
        (4, "malformed", "line is JSON number, not an object"),
    ]
    assert all(m.key == PLAIN_KEY for m in result.malformed)


def test_an_over_deep_ndjson_line_does_not_cost_the_other_lines() -> None:
    deep = b'{"a": ' + b"[" * 3_000 + b"]" * 3_000 + b"}"
    result = transform(deep + b'\n{"event_name": "ok"}')
    assert [r.event["event_name"] for r in result.events] == ["ok"]
    assert [(m.position, m.detail) for m in result.malformed] == [
        (0, "line is JSON nested too deep to parse")
    ]


def test_json_array_of_objects() -> None:
    key = f"{PREFIX}event-{PAGE_VIEW_ID}.json"
    result = transform(json.dumps([{"event_name": "a"}, {"event_name": "b"}]).encode(), key)
    assert [(r.position, r.event_id) for r in result.events] == [
        (0, PAGE_VIEW_ID),
        (1, uuid.uuid5(PAGE_VIEW_ID, "1")),
    ]


def test_pretty_printed_json_is_one_object() -> None:
    record = only_event(json.dumps({"event_name": "click", "pageUrl": "/x"}, indent=2).encode())
    assert record.event["page_url"] == "/x"


def test_utf8_bom_is_accepted() -> None:
    src, raw = sample(CLICK_ID)
    [record] = transform_object(src, b"\xef\xbb\xbf" + raw).events
    assert record.event["event_name"] == "click"


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"", "empty body"),
        (b" \n\t\r\n ", "empty body"),
        (b"\xef\xbb\xbf", "empty body"),
        (b'{"event_name": "\xff\xfe"}', "invalid UTF-8 at byte 16"),
        ('{"event_name": "x"}'.encode("utf-16"), "invalid UTF-8 at byte 0"),  # with its BOM
        ('{"event_name": "x"}'.encode("utf-16-le"), "not JSON: no line parses as a JSON object"),
        (b"42", "JSON number, not an object"),
        (b'"event"', "JSON string, not an object"),
        (b"true", "JSON boolean, not an object"),
        (b"null", "JSON null, not an object"),
        (b"[1, 2]", "JSON array that is not a list of objects"),
        (b'[{"event_name": "a"}, 3]', "JSON array that is not a list of objects"),
        (b"[]", "JSON array that is not a list of objects"),
        (b'{"event_name": "cut', "not JSON: no line parses as a JSON object"),
        (b"<html><body>502 Bad Gateway</body></html>", "not JSON: no line parses as a JSON object"),
        (b"[" * 5_000 + b"]" * 5_000, "JSON nested too deep to parse"),
    ],
    ids=repr,
)
def test_malformed_objects(data: bytes, detail: str) -> None:
    result = transform(data)
    assert result.events == []
    assert result.invalid == []
    assert result.malformed == [Rejection(PLAIN_KEY, 0, "malformed", detail)]


def test_record_positions_are_line_numbers() -> None:
    parsed = parse_body(b'{"event_name": "a"}\n\n[1]\n{"event_name": "b"}')
    assert parsed.records == [(0, {"event_name": "a"}), (3, {"event_name": "b"})]
    assert parsed.bad == [(2, "line is JSON array, not an object")]


# --- invalid events ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        {"pageUrl": "/x"},
        {"event_name": ""},
        {"event_name": "   "},
        {"event_name": "\u3000\n"},  # Unicode whitespace is blank too
        {"event_name": None},
        {"event_name": 42},
        {"event_name": True},
        {"event_name": ["click"]},
        {"event_name": {"name": "click"}},
    ],
    ids=repr,
)
def test_no_usable_event_name_is_invalid(event: dict[str, Any]) -> None:
    key = f"{PREFIX}event-{PAGE_VIEW_ID}.json"
    result = transform(event, key)
    assert result.events == []
    assert result.malformed == []
    [rejection] = result.invalid
    assert (rejection.key, rejection.position, rejection.reason) == (key, 0, "invalid")
    assert rejection.event_id == PAGE_VIEW_ID  # so a DBA can find it


def test_one_invalid_line_does_not_reject_its_neighbours() -> None:
    result = transform(body({"event_name": "a"}, {"event_name": ""}, {"event_name": "c"}))
    assert [r.position for r in result.events] == [0, 2]
    assert [r.position for r in result.invalid] == [1]


def test_event_name_is_trimmed_and_capped() -> None:
    assert only_event({"event_name": "  click \n"}).event["event_name"] == "click"
    result = transform({"event_name": "n" * 1000})
    assert result.events[0].event["event_name"] == "n" * INDEXED_TEXT_CAP
    assert result.truncated == 1


# --- one bad value never rejects its event -----------------------------------------------------


@pytest.mark.parametrize(
    ("field_values", "column", "properties"),
    [
        (
            {"product": {"id": "SKU-1", "price": "abc"}},
            "context_product_price",
            {"product": {"price": "abc"}},
        ),
        (
            {"product": {"id": "SKU-1", "discountPrice": float("nan")}},
            "context_product_discount_price",
            None,  # NaN is no value at all: nothing to keep
        ),
        (
            {"product": {"id": "SKU-1", "price": "NaN"}},  # the string is a value: kept
            "context_product_price",
            {"product": {"price": "NaN"}},
        ),
        (
            {"product": {"id": "SKU-1", "name": {"en": "Shoe"}}},
            "context_product_name",
            {"product": {"name": {"en": "Shoe"}}},
        ),
        ({"pageUrl": {"href": "/x"}}, "page_url", {"pageUrl": {"href": "/x"}}),
        ({"userId": ["u-1", "u-2"]}, "user_id", {"userId": ["u-1", "u-2"]}),
        ({"isFirstVisit": "yes"}, "is_first_visit", {"isFirstVisit": "yes"}),
        ({"isFirstVisit": 1}, "is_first_visit", {"isFirstVisit": 1}),
        ({"element": "button#buy"}, "element", {"element": "button#buy"}),
        ({"element": ["button"]}, "element", {"element": ["button"]}),
        ({"product": "SKU-42"}, "context_product_id", {"product": "SKU-42"}),
    ],
    ids=repr,
)
def test_a_bad_value_is_null_and_its_original_stays_in_properties(
    field_values: dict[str, Any], column: str, properties: dict[str, Any] | None
) -> None:
    record = only_event({"event_name": "click", "sessionId": "s-1", **field_values})
    assert record.event[column] is None
    assert record.event["properties"] == properties
    assert record.event["session_id"] == "s-1"  # the rest of the event is intact


def test_unknown_product_fields_stay_in_properties() -> None:
    record = only_event({"event_name": "click", "product": {"id": "SKU-1", "color": "red"}})
    assert record.event["context_product_id"] == "SKU-1"
    assert record.event["properties"] == {"product": {"color": "red"}}


def test_scalars_in_text_columns_become_their_text() -> None:
    record = only_event(
        {"event_name": "click", "userId": 1029, "clientId": True, "product": {"id": 42}}
    )
    assert (record.event["user_id"], record.event["client_id"]) == ("1029", "true")
    assert record.event["context_product_id"] == "42"
    assert record.event["properties"] is None


def test_ingest_of_the_wrong_type_stays_in_properties_cleaned() -> None:
    record = only_event(
        json.dumps({"event_name": "click", "_ingest": ["a\x00b", float("nan")]}).encode()
    )
    assert record.meta["ingest_metadata"] is None
    assert record.meta["received_at"] is None
    assert record.meta["user_agent"] is None
    assert record.event["properties"] == {"_ingest": [f"a{REPLACEMENT}b", None]}


def test_a_huge_string_is_truncated_to_the_cap() -> None:
    huge = "https://shop.example.com/?q=" + "x" * 200_000
    result = transform({"event_name": "page_view", "pageUrl": huge})
    [record] = result.events
    assert record.event["page_url"] == huge[:URL_CAP]
    assert len(record.event["page_url"]) == URL_CAP == 4096
    assert result.truncated == 1
    assert record.event["properties"] is None  # truncation is not a failure: no copy kept


def test_nul_in_keys_and_values_becomes_the_replacement_character() -> None:
    data = json.dumps({"event_name": "click", "we\x00ird": "a\x00b", "pageUrl": "/p\x00"})
    result = transform(data.encode())
    [record] = result.events
    assert record.event["page_url"] == f"/p{REPLACEMENT}"
    assert record.event["properties"] == {f"we{REPLACEMENT}ird": f"a{REPLACEMENT}b"}
    assert result.sanitised == 3  # the key, its value and pageUrl


def test_lone_surrogate_escapes_become_the_replacement_character() -> None:
    data = b'{"event_name": "click", "userId": "\\ud800x", "note": "\\udfff", "\\udbff": 1}'
    result = transform(data)
    [record] = result.events
    assert record.event["user_id"] == f"{REPLACEMENT}x"
    assert record.event["properties"] == {"note": REPLACEMENT, REPLACEMENT: 1}
    assert result.sanitised == 3


def test_a_valid_surrogate_pair_escape_is_the_real_character() -> None:
    record = only_event(b'{"event_name": "click", "userId": "\\ud83d\\udc5f"}')
    assert record.event["user_id"] == "👟"


def test_integers_past_64_bits_are_kept_exactly() -> None:
    data = (
        b'{"event_name": "x", "big": 123456789012345678901234567890,'
        b' "neg": -18446744073709551617, "small": 7}'
    )
    record = only_event(data)
    assert record.event["properties"] == {
        "big": 123456789012345678901234567890,
        "neg": -18446744073709551617,
        "small": 7,
    }


def test_an_integer_past_the_text_limit_becomes_null_not_a_malformed_object() -> None:
    result = transform(b'{"event_name": "x", "n": ' + b"9" * 5_000 + b"}")
    [record] = result.events
    assert record.event["properties"] == {"n": None}
    assert result.sanitised == 1


def test_nan_and_infinity_in_json_become_null() -> None:
    record = only_event(b'{"event_name": "x", "a": NaN, "b": [Infinity, -Infinity], "c": 1e999}')
    assert record.event["properties"] == {"a": None, "b": [None, None], "c": None}


def test_nesting_past_the_depth_limit_is_replaced_by_a_marker() -> None:
    deep: Any = "leaf"
    for _ in range(500):
        deep = {"k": deep}
    result = transform({"event_name": "x", "deep": deep})
    [record] = result.events
    assert result.truncated == 1
    assert TOO_DEEP_MARKER in json.dumps(record.event["properties"])


# --- payload digest ----------------------------------------------------------------------------


def test_payload_sha256_ignores_the_ingest_block() -> None:
    event = {"event_name": "click", "pageUrl": "/x", "b": 1, "a": [1, 2]}
    first = only_event({**event, "_ingest": {"receivedAt": RECEIVED, "requestId": "r1"}})
    again = only_event({"_ingest": {"requestId": "r2"}, **dict(reversed(event.items()))})
    assert first.meta["payload_sha256"] == again.meta["payload_sha256"]
    assert first.meta["payload_sha256"] == payload_digest(event) == canonical_sha256(event)


@pytest.mark.parametrize(
    "changed",
    [
        {"pageUrl": "/y"},
        {"b": 2},
        {"b": "1"},  # the type counts
        {"a": [2, 1]},  # array order counts
        {"extra": None},
    ],
    ids=repr,
)
def test_payload_sha256_differs_for_different_payloads(changed: dict[str, Any]) -> None:
    event = {"event_name": "click", "pageUrl": "/x", "b": 1, "a": [1, 2]}
    assert payload_digest(event) != payload_digest({**event, **changed})


def test_payload_sha256_of_integers_past_64_bits() -> None:
    digest = payload_digest({"event_name": "x", "big": 2**70})
    assert digest == canonical_sha256({"event_name": "x", "big": 2**70})


# --- IP addresses and anonymization ------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample_id", "anonymized"),
    [(PAGE_VIEW_ID, "203.0.113.0"), (CLICK_ID, "2001:db8:4::")],
)
def test_anonymize_truncates_the_column_and_the_ingest_block(
    sample_id: uuid.UUID, anonymized: str
) -> None:
    src, raw = sample(sample_id)
    [record] = transform_object(src, raw, anonymize=True).events
    assert record.meta["source_ip"] == anonymized
    assert record.meta["ingest_metadata"]["sourceIp"] == anonymized
    assert record.meta["ingest_metadata"]["requestId"] == json.loads(raw)["_ingest"]["requestId"]
    [plain] = transform_object(src, raw).events
    assert record.meta["payload_sha256"] == plain.meta["payload_sha256"]


@pytest.mark.parametrize("bad_ip", ["not-an-ip", "999.1.1.1", "fe80::1%eth0", 42, ["1.2.3.4"]])
def test_an_invalid_ip_is_null_and_kept_raw_unless_anonymizing(bad_ip: Any) -> None:
    event = {"event_name": "click", "_ingest": {"sourceIp": bad_ip, "stage": "prod"}}
    plain = only_event(event)
    assert plain.meta["source_ip"] is None
    assert plain.meta["ingest_metadata"] == {"sourceIp": bad_ip, "stage": "prod"}
    anonymized = only_event(event, anonymize=True)
    assert anonymized.meta["source_ip"] is None
    # an address that cannot be parsed cannot be truncated either: it is dropped
    assert anonymized.meta["ingest_metadata"] == {"sourceIp": None, "stage": "prod"}


def test_anonymize_without_an_ip_changes_nothing() -> None:
    event = {"event_name": "click", "_ingest": {"stage": "prod"}}
    assert only_event(event, anonymize=True).meta == only_event(event).meta


# --- repairs are counted per object ------------------------------------------------------------


def test_repairs_are_counted_across_the_records_of_an_object() -> None:
    data = body(
        {"event_name": "a", "pageUrl": "x" * 5_000},
        {"event_name": "b", "note": "\x00"},
        {"event_name": "c", "referrer": "y" * 5_000, "other": "\x00"},
    )
    result = transform(data)
    assert len(result.events) == 3
    assert (result.sanitised, result.truncated) == (2, 2)


def test_the_transform_reads_no_clock() -> None:
    # Same input, same output, whatever the time: no loaded_at or "now" in the rows.
    src, raw = sample(CUSTOM_ID)
    first = transform_object(src, raw).events[0]
    second = transform_object(src, raw).events[0]
    assert (first.event, first.meta) == (second.event, second.meta)
    assert "loaded_at" not in first.event and "loaded_at" not in first.meta


def test_anonymize_drops_an_ingest_block_that_is_not_an_object() -> None:
    body = json.dumps({"event_name": "page_view", "_ingest": "sourceIp=203.0.113.77"}).encode()
    plain = transform_object(SourceObject("b", "k", None), body).events[0]
    assert plain.event["properties"] == {"_ingest": "sourceIp=203.0.113.77"}
    anonymized = transform_object(SourceObject("b", "k", None), body, anonymize=True).events[0]
    assert "203.0.113.77" not in json.dumps(anonymized.event, default=str)
    assert "203.0.113.77" not in json.dumps(anonymized.meta, default=str)


# --- docs/mapping.md describes the table the mapping follows -------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "mapping.md"


def _documented_fields() -> dict[str, tuple[tuple[str, ...], int]]:
    """docs/mapping.md's column tables: column → (spellings in order, cap or 0)."""
    rows: dict[str, tuple[tuple[str, ...], int]] = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        spellings = tuple(
            name.removeprefix("_ingest.") for name in re.findall(r"`([^`]+)`", cells[2])
        )
        cap = re.search(r"cap(?:ped at)? ([\d,]+)", cells[3])
        rows[cells[0].strip("`")] = (spellings, int(cap.group(1).replace(",", "")) if cap else 0)
    return rows


def test_the_docs_list_every_field_with_its_spellings_and_cap() -> None:
    documented = _documented_fields()
    for spec in FIELDS:
        assert documented.get(spec.column) == (spec.spellings, spec.cap), spec.column
