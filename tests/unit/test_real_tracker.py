"""The real tracker's objects, field by field, and the spellings the original ETL also read.

Expected values are read from each object's JSON here, independently of the transform's own
tables, so a mapping that forgets a spelling or leaks a consumed field into `properties` fails.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from loader.common import EventRecord, SourceObject
from loader.transform.mapping import EVENT_ID_NAMESPACE, ObjectResult, transform_object

REAL = Path(__file__).resolve().parent.parent / "data" / "real"
PREFIX = "events/2026/11/24/13/"
BUCKET = "clickstream-s3-ingest"
LAST_MODIFIED = datetime(2026, 11, 24, 13, 59, 0, tzinfo=UTC)
#: The real taxonomy (REAL-PLATFORM.md §b); event names are free text, nothing validates them.
TAXONOMY = {
    "page_view",
    "click",
    "home_view",
    "category_view",
    "product_view",
    "add_to_cart_click",
    "remove_from_cart_click",
    "wishlist_toggle",
    "checkout_start",
    "checkout_complete",
}
EVENT_OBJECTS = sorted(
    p.name
    for p in REAL.glob("event-*.json")
    if "75f38072" not in p.name  # the spread array
)
SPREAD_ARRAY = "event-75f38072-b6b2-403f-9b2d-c0e85953f3a1.json"
LEGACY_NO_ID = "event-dd802f87-c3b7-44ad-9f6a-3095d9a7aa43.json"
FALLBACK_IDS = "event-43a0aec1-0be6-4fc0-87b2-78769f1acf1e.json"
REST_V1 = "event-f561f206-6120-4bd4-a95c-f94a3809908d.json"
BEFORE_HOUR = "event-a703a4ec-dc35-4738-858d-2e4870c923cf.json"
CATEGORY_VIEW = "event-c2113a98-22d4-466f-a8a1-a207c0833ffc.json"


def load(name: str) -> tuple[dict[str, Any], ObjectResult]:
    raw = (REAL / name).read_bytes()
    return json.loads(raw), transform_object(
        SourceObject(BUCKET, PREFIX + name, LAST_MODIFIED), raw
    )


def only(result: ObjectResult) -> EventRecord:
    assert (result.malformed, result.invalid) == ([], [])
    [record] = result.events
    return record


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("name", EVENT_OBJECTS)
def test_every_real_object_maps_field_by_field(name: str) -> None:
    payload, result = load(name)
    record = only(result)
    event, meta = record.event, record.meta
    product = payload.get("product") or {}
    ingest = payload["_ingest"]

    assert event["event_name"] == payload["eventName"]
    assert event["page_url"] == payload["pageUrl"]
    assert event["referrer"] == payload["referrer"]
    assert event["user_id"] == payload.get("userId")
    assert event["user_login_state"] == payload["userLoginState"]
    assert event["client_id"] == payload["clientId"]
    assert event["session_id"] == payload["sessionId"]
    assert event["is_first_visit"] is payload["isFirstVisit"]
    assert event["identity_source"] is None  # the tracker never sends one
    assert event["client_timestamp"] is None  # nor a client clock
    assert event["event_timestamp"] == instant(ingest["receivedAt"])
    assert event["context_product_id"] == product.get("id")
    assert event["context_product_name"] == product.get("name")
    assert event["context_product_category"] == product.get("category")
    assert event["context_product_brand"] == product.get("brand")
    assert event["context_product_url_path"] == product.get("urlPath")
    for column, field in (
        ("context_product_price", "price"),
        ("context_product_discount_price", "discountPrice"),
    ):
        expected = product.get(field)
        assert event[column] == (None if expected is None else Decimal(expected))
    assert event["element"] == payload.get("element")
    # Every field the tracker sends has a column: nothing is left over, under any spelling.
    assert event["properties"] is None

    assert meta["received_at"] == instant(ingest["receivedAt"])
    assert meta["source_ip"] == ingest.get("sourceIp")
    for column, field in (
        ("user_agent", "userAgent"),
        ("path", "path"),
        ("request_id", "requestId"),
        ("api_id", "apiId"),
        ("stage", "stage"),
        ("trace_id", "traceId"),
    ):
        assert meta[column] == ingest.get(field)
    assert meta["ingest_metadata"] == ingest  # `method` has no column: it lives here
    assert (meta["s3_bucket"], meta["s3_key"]) == (BUCKET, PREFIX + name)


def test_the_samples_cover_the_real_taxonomy_they_hold() -> None:
    names = {only(load(name)[1]).event["event_name"] for name in EVENT_OBJECTS}
    assert names <= TAXONOMY
    assert {"page_view", "click", "home_view", "category_view", "product_view"} <= names


def test_a_tracker_uuid_is_the_event_id_as_is() -> None:
    payload, result = load("event-ba2ac843-fc97-4f82-994f-c8a1400c8281.json")
    record = only(result)
    assert record.event_id == uuid.UUID(payload["eventId"])
    assert record.id_from_payload


def test_a_fallback_id_maps_deterministically() -> None:
    payload, result = load(FALLBACK_IDS)
    record = only(result)
    assert payload["eventId"] == "1795527522902-adc332b5"
    assert record.event_id == uuid.uuid5(EVENT_ID_NAMESPACE, "id:1795527522902-adc332b5")
    assert record.event_id == only(load(FALLBACK_IDS)[1]).event_id
    assert record.event["client_id"] == payload["clientId"]  # non-UUID ids are fine as text


def test_without_an_event_id_the_key_uuid_is_the_id() -> None:
    _, result = load(LEGACY_NO_ID)
    record = only(result)
    assert record.event_id == uuid.UUID("dd802f87-c3b7-44ad-9f6a-3095d9a7aa43")
    assert not record.id_from_payload


def test_rest_v1_ingest_block_without_ip_agent_method_path_is_not_an_error() -> None:
    payload, result = load(REST_V1)
    record = only(result)
    assert record.meta["source_ip"] is None
    assert record.meta["user_agent"] is None and record.meta["path"] is None
    assert record.meta["stage"] == "prod"
    assert record.meta["ingest_metadata"] == payload["_ingest"]


def test_receipt_before_the_hour_folder_keeps_its_own_instant() -> None:
    record = only(load(BEFORE_HOUR)[1])
    assert record.event["event_timestamp"] == datetime(2026, 11, 24, 12, 59, 59, 999000, UTC)


def test_category_view_stores_the_slug_as_sent() -> None:
    record = only(load(CATEGORY_VIEW)[1])
    assert record.event["context_product_id"] == record.event["context_product_category"]
    assert record.event["context_product_id"] == "mobiles"
    assert record.event["context_product_price"] is None


def test_an_array_spread_by_the_ingest_lambda_is_invalid_by_key() -> None:
    _, result = load(SPREAD_ARRAY)
    assert result.events == [] and result.malformed == []
    [rejection] = result.invalid
    assert (rejection.key, rejection.position, rejection.reason) == (
        PREFIX + SPREAD_ARRAY,
        0,
        "invalid",
    )
    assert "not a JSON object" in rejection.detail


@pytest.mark.parametrize(
    "body",
    [
        {"0": "h", "1": "i", "_ingest": {"receivedAt": "2026-11-24T13:00:00Z"}},  # "hi"
        {"_ingest": {"receivedAt": "2026-11-24T13:00:00Z"}},  # null, a number, a boolean
    ],
    ids=["string", "null"],
)
def test_string_and_null_bodies_spread_by_the_ingest_lambda_are_invalid(
    body: dict[str, Any],
) -> None:
    key = PREFIX + "event-00000000-0000-4000-8000-000000000001.json"
    result = transform_object(SourceObject(BUCKET, key, LAST_MODIFIED), json.dumps(body).encode())
    [rejection] = result.invalid
    assert (rejection.key, rejection.reason) == (key, "invalid")
    assert "not a JSON object" in rejection.detail


# --- snake_case spellings and the one precedence rule ---------------------------------------

SNAKE_KEY = PREFIX + "event-11111111-2222-4333-8444-555555555555.json"


def map_one(payload: dict[str, Any]) -> EventRecord:
    return only(
        transform_object(
            SourceObject(BUCKET, SNAKE_KEY, LAST_MODIFIED), json.dumps(payload).encode()
        )
    )


SNAKE_PAYLOAD: dict[str, Any] = {
    "event_name": "view_product",
    "event_id": "7b2c4f7e-59a6-4c7e-9a0e-2f6d6c1b1a10",
    "page_url": "https://shop.example/p/1",
    "user_id": "u-123",
    "user_login_state": "guest",
    "identity_source": "cognito",
    "client_id": "c-1",
    "session_id": "s-abc",
    "is_first_visit": "true",
    "event_timestamp": "2026-11-24T13:01:02Z",
    "context_product": {
        "product_id": "p-1",
        "product_name": "Bàn phím cơ AULA M75 TM ",
        "product_category": "keyboard",
        "product_brand": "AULA",
        "product_price": 1200,
        "product_discount_price": 999,
        "product_url_path": "/product/aula-m75",
    },
}


def test_every_snake_case_spelling_maps_like_its_camel_case_twin() -> None:
    record = map_one(SNAKE_PAYLOAD)
    assert record.event_id == uuid.UUID(SNAKE_PAYLOAD["event_id"]) and record.id_from_payload
    expected = {
        "event_name": "view_product",
        "page_url": "https://shop.example/p/1",
        "user_id": "u-123",
        "user_login_state": "guest",
        "identity_source": "cognito",
        "client_id": "c-1",
        "session_id": "s-abc",
        "is_first_visit": True,
        "client_timestamp": datetime(2026, 11, 24, 13, 1, 2, tzinfo=UTC),
        "context_product_id": "p-1",
        "context_product_name": "Bàn phím cơ AULA M75 TM ",
        "context_product_category": "keyboard",
        "context_product_brand": "AULA",
        "context_product_price": Decimal(1200),
        "context_product_discount_price": Decimal(999),
        "context_product_url_path": "/product/aula-m75",
        "properties": None,  # consumed under their snake_case names: nothing left over
    }
    assert {column: record.event[column] for column in expected} == expected


@pytest.mark.parametrize(
    ("payload", "column", "value"),
    [
        ({"identitySource": "cognito"}, "identity_source", "cognito"),
        (
            {"eventTimestamp": "2026-11-24T13:05:00Z"},
            "client_timestamp",
            datetime(2026, 11, 24, 13, 5, tzinfo=UTC),
        ),
        ({"product": {"brandName": "Keychron"}}, "context_product_brand", "Keychron"),
    ],
    ids=["identitySource", "eventTimestamp", "brandName"],
)
def test_other_spellings_the_original_etl_read(
    payload: dict[str, Any], column: str, value: Any
) -> None:
    record = map_one({"eventName": "click", **payload})
    assert record.event[column] == value
    assert record.event["properties"] is None


@pytest.mark.parametrize(
    ("first", "second", "column", "expected"),
    [
        (("eventName", "click"), ("event_name", "page_view"), "event_name", "click"),
        (("userId", "u-camel"), ("user_id", "u-snake"), "user_id", "u-camel"),
        (("sessionId", "s-camel"), ("session_id", "s-snake"), "session_id", "s-camel"),
        (("isFirstVisit", False), ("is_first_visit", True), "is_first_visit", False),
        (("identitySource", "a"), ("identity_source", "b"), "identity_source", "a"),
        (
            ("timestamp", "2026-11-24T13:00:01Z"),
            ("event_timestamp", "2026-11-24T13:00:02Z"),
            "client_timestamp",
            datetime(2026, 11, 24, 13, 0, 1, tzinfo=UTC),
        ),
    ],
    ids=lambda v: v[0] if isinstance(v, tuple) else None,
)
def test_the_first_listed_spelling_wins_and_a_different_loser_is_kept(
    first: tuple[str, Any], second: tuple[str, Any], column: str, expected: Any
) -> None:
    payload = {"eventName": "click", first[0]: first[1], second[0]: second[1]}
    if first[0] == "eventName":
        payload = {first[0]: first[1], second[0]: second[1]}
    record = map_one(payload)
    assert record.event[column] == expected
    # The losing spelling carried another value: kept under its own name, never lost.
    assert record.event["properties"] == {second[0]: second[1]}


def test_an_equal_loser_is_consumed_too() -> None:
    record = map_one({"eventName": "click", "event_name": "click", "userId": "u", "user_id": "u"})
    assert record.event["event_name"] == "click" and record.event["user_id"] == "u"
    assert record.event["properties"] is None


def test_a_null_first_spelling_gives_way_to_the_next() -> None:
    record = map_one({"eventName": None, "event_name": "click", "userId": None, "user_id": "u"})
    assert (record.event["event_name"], record.event["user_id"]) == ("click", "u")
    assert record.event["properties"] is None


def test_product_precedence_inside_and_between_the_objects() -> None:
    record = map_one(
        {
            "eventName": "add_to_cart_click",
            "product": {"id": "p-1", "product_id": "p-1", "brand": "Dell", "brandName": "ASUS"},
            "context_product": {"id": "p-2"},
        }
    )
    assert record.event["context_product_id"] == "p-1"
    assert record.event["context_product_brand"] == "Dell"
    assert record.event["properties"] == {
        "product": {"brandName": "ASUS"},  # a different loser inside the product
        "context_product": {"id": "p-2"},  # the losing product object
    }


def test_payload_id_precedence_puts_the_trackers_spelling_first() -> None:
    record = map_one({"eventName": "click", "eventId": "a", "event_id": "b"})
    assert record.event_id == uuid.uuid5(EVENT_ID_NAMESPACE, "id:a")
    assert record.event["properties"] == {"event_id": "b"}  # an unused id is not a column


def test_a_mapped_value_dropped_by_coercion_is_kept_under_its_spelling() -> None:
    record = map_one({"event_name": "click", "is_first_visit": "yes", "client_id": {"x": 1}})
    assert record.event["is_first_visit"] is None and record.event["client_id"] is None
    assert record.event["properties"] == {"is_first_visit": "yes", "client_id": {"x": 1}}


def test_event_names_are_free_text() -> None:
    for name in ("curl_test", "share_click", "Nonsense Name"):
        assert map_one({"eventName": name}).event["event_name"] == name
