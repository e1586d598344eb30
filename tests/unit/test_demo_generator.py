"""The generated hours are shaped as the real tracker and ingest Lambda write them.

The demo, the integration tests and the benchmark all load these hours, so a generator that
drifted from the real shapes (REAL-PLATFORM.md §a, §b; tests/data/real/) would make every one of
them test the wrong thing. Each check reads the stored bytes, not the generator's internals.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import re
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest

from tools.demo.shop import BRANDS, CATEGORIES, TRACKED_EVENTS
from tools.demo.traffic import MALFORMED_BODIES, ODD_CASES, RawObject, generate_hour, shop_documents

HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
PREFIX = "events/2026/11/24/13/"
BASE_KEYS = (
    "eventName",
    "eventId",
    "pageUrl",
    "referrer",
    "userId",
    "userLoginState",
    "clientId",
    "sessionId",
    "isFirstVisit",
)
#: What each event adds after the base keys, in order (lib/clickstreamEvents.ts).
EXTRA_KEYS = {
    "page_view": (),
    "home_view": (),
    "click": ("element",),
    "category_view": ("product",),
    "product_view": ("product",),
    "add_to_cart_click": ("product",),
    "remove_from_cart_click": ("product",),
    "wishlist_toggle": ("product", "element"),
    "checkout_start": ("element",),
    "checkout_complete": ("element",),
}
HTTP_INGEST_KEYS = (
    "receivedAt",
    "sourceIp",
    "userAgent",
    "method",
    "path",
    "requestId",
    "apiId",
    "stage",
    "traceId",
)
REST_INGEST_KEYS = ("receivedAt", "requestId", "apiId", "stage", "traceId")
PRODUCT_KEYS = ("id", "name", "category", "brand", "price", "discountPrice", "urlPath")
RECEIVED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
HTTP_REQUEST_ID = re.compile(r"[A-Za-z0-9+/]{15}=")
TRACE_ID = re.compile(r"Root=1-([0-9a-f]{8})-[0-9a-f]{24}")
FALLBACK_ID = re.compile(r"\d{13}-[0-9a-f]{8}")
CUID = re.compile(r"c[0-9a-z]{24}")


def received(document: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(document["_ingest"]["receivedAt"].replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def hour() -> list[RawObject]:
    return list(generate_hour(HOUR, 2_000, odd_cases=2, seed=11))


@pytest.fixture(scope="module")
def ordinary(hour: list[RawObject]) -> list[dict[str, Any]]:
    """The documents of the objects that are not odd cases."""
    return [obj.documents[0] for obj in hour if obj.odd is None]


def test_one_compact_event_per_object_under_its_own_key(hour: list[RawObject]) -> None:
    assert len(hour) == 2_000
    assert len({obj.key for obj in hour}) == 2_000
    for obj in hour:
        assert obj.key.startswith(PREFIX) and obj.key.endswith(".json")
        key_uuid = uuid.UUID(obj.key.removeprefix(PREFIX + "event-").removesuffix(".json"))
        assert key_uuid.version == 4
        [document] = obj.documents
        assert obj.key.removeprefix(PREFIX + "event-").removesuffix(".json") != document.get(
            "eventId"
        )
        assert obj.content_encoding is None
        # JSON.stringify: compact, UTF-8 with non-ASCII as is, no BOM, no trailing newline.
        assert (
            obj.body
            == json.dumps(json.loads(obj.body), ensure_ascii=False, separators=(",", ":")).encode()
        )
        assert json.loads(obj.body) == document
    assert any("à".encode() in obj.body for obj in hour)
    sizes = [len(obj.body) for obj in hour if obj.expect == "event"]
    assert 650 <= sum(sizes) / len(sizes) <= 950  # real objects are ~0.6-1.1 kB


def test_keys_come_in_the_trackers_order_then_ingest_in_the_lambdas(
    ordinary: list[dict[str, Any]],
) -> None:
    for document in ordinary:
        name = document["eventName"]
        keys = list(document)
        assert keys[-1] == "_ingest"
        expected = [k for k in BASE_KEYS if k in document] + list(EXTRA_KEYS[name])
        assert keys[:-1] == expected
        assert set(BASE_KEYS) - set(keys) <= {"userId"}
        assert tuple(document["_ingest"]) == HTTP_INGEST_KEYS


def test_the_ingest_block_is_the_http_apis(ordinary: list[dict[str, Any]]) -> None:
    for document in ordinary:
        ingest = document["_ingest"]
        assert RECEIVED_AT.fullmatch(ingest["receivedAt"])
        assert HOUR <= received(document) < HOUR + timedelta(hours=1)
        assert ipaddress.ip_address(ingest["sourceIp"]).version == 4
        assert ingest["userAgent"].startswith("Mozilla/5.0 (")
        assert (ingest["method"], ingest["path"]) == ("POST", "/clickstream")
        assert (ingest["apiId"], ingest["stage"]) == ("6m1g52rou7", "$default")
        assert HTTP_REQUEST_ID.fullmatch(ingest["requestId"])
        trace = TRACE_ID.fullmatch(ingest["traceId"])
        assert trace is not None
        # X-Ray's root id starts with the epoch second of the request.
        assert int(trace.group(1), 16) == int(received(document).timestamp())


def test_the_event_names_and_frequencies_look_like_a_shop(
    ordinary: list[dict[str, Any]],
) -> None:
    names = Counter(document["eventName"] for document in ordinary)
    assert set(names) == set(TRACKED_EVENTS)
    [(first, _), (second, _)] = names.most_common(2)
    assert {first, second} == {"page_view", "click"}
    assert names["product_view"] > names["add_to_cart_click"] > names["checkout_complete"]
    assert names["checkout_start"] == names["checkout_complete"]


def test_users_are_absent_or_null_as_the_tracker_sends_them(
    ordinary: list[dict[str, Any]],
) -> None:
    seen = Counter()
    for document in ordinary:
        builtin = document["eventName"] in ("page_view", "click")
        if document["userLoginState"] == "logged_in":
            assert uuid.UUID(document["userId"]).version == 4  # the Cognito sub
            seen["logged_in"] += 1
        else:
            assert document["userLoginState"] == "anonymous"
            if builtin:
                assert document["userId"] is None
                seen["null"] += 1
            else:
                assert "userId" not in document  # `withUser` sets it to undefined
                seen["absent"] += 1
    assert min(seen.values()) > 50


def test_ids_are_uuids_and_first_visit_marks_only_a_clients_first_event(
    ordinary: list[dict[str, Any]],
) -> None:
    by_client: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for document in ordinary:
        for field in ("eventId", "clientId", "sessionId"):
            assert uuid.UUID(document[field]).version == 4
        assert isinstance(document["isFirstVisit"], bool)
        by_client[document["clientId"]].append(document)
    firsts = 0
    for documents in by_client.values():
        flags = [d["isFirstVisit"] for d in sorted(documents, key=received)]
        assert True not in flags[1:]
        firsts += flags[0]
    assert 0 < firsts < len(by_client)
    assert len({d["eventId"] for d in ordinary}) == len(ordinary)


def test_products_are_the_catalogues(ordinary: list[dict[str, Any]]) -> None:
    bare = 0
    for document in ordinary:
        product = document.get("product")
        name = document["eventName"]
        if name == "category_view":
            slug = urlsplit(document["pageUrl"]).path.removeprefix("/category/")
            assert list(product.items()) == [("category", slug), ("id", slug)]
            continue
        if product is None:
            assert name in (
                "page_view",
                "click",
                "home_view",
                "checkout_start",
                "checkout_complete",
            )
            continue
        assert tuple(product) == PRODUCT_KEYS
        assert CUID.fullmatch(product["id"])
        assert product["category"] in CATEGORIES and product["brand"] in BRANDS
        assert type(product["price"]) is int and 190_000 <= product["price"] <= 57_990_000
        assert type(product["discountPrice"]) is int and product["discountPrice"] == 0  # a percent
        if product["urlPath"].startswith("/product/"):
            if name == "product_view":
                assert urlsplit(document["pageUrl"]).path == product["urlPath"]
        else:
            # Hot Deal cards spread the Prisma row: the slug comes bare.
            assert "/" not in product["urlPath"]
            assert (name, urlsplit(document["pageUrl"]).path) == ("add_to_cart_click", "/deal")
            bare += 1
    assert bare > 0


def test_elements_are_what_extract_element_reads(ordinary: list[dict[str, Any]]) -> None:
    svg = 0
    checkouts: dict[str, str] = {}
    for document in ordinary:
        element = document.get("element")
        name = document["eventName"]
        if name == "click":
            if element == {}:
                svg += 1
                continue
            keys = list(element)
            assert keys == [k for k in ("tag", "id", "role", "text", "dataset") if k in element]
            assert {"tag", "role", "dataset"} <= set(keys)
            assert element["tag"] == element["tag"].lower()
            assert element["role"] is None or isinstance(element["role"], str)
            text = element.get("text")
            assert text is None or (text == " ".join(text.split()) and 0 < len(text) <= 163)
            assert all(isinstance(v, str) and v for v in element["dataset"].values())
        elif name == "wishlist_toggle":
            assert element in (
                {"dataset": {"toggledOn": "true"}},
                {"dataset": {"toggledOn": "false"}},
            )
        elif name == "checkout_start":
            dataset = element["dataset"]
            assert list(dataset) == ["cartId", "total", "itemCount"] and dataset["cartId"] == ""
            assert dataset["total"].isdigit() and dataset["itemCount"].isdigit()
            checkouts[document["sessionId"]] = dataset["total"]
        elif name == "checkout_complete":
            dataset = element["dataset"]
            assert list(dataset) == ["orderId", "orderNumber", "total"]
            assert (dataset["orderId"], dataset["orderNumber"]) == ("", "")
            assert dataset["total"] == checkouts[document["sessionId"]]
        else:
            assert element is None
    assert svg > 0 and checkouts


def test_the_odd_cases_are_there_as_real_code_paths_make_them(hour: list[RawObject]) -> None:
    odd = Counter(obj.odd for obj in hour if obj.odd)
    assert set(odd) == set(ODD_CASES)
    for case in ("received_before_hour", "spread_array", "spread_string", "spread_null"):
        assert odd[case] == 2
    for case in ("legacy_no_event_id", "fallback_ids", "rest_v1_ingest"):
        assert 2 <= odd[case] <= 12  # two short sessions each
    for obj in hour:
        if obj.odd is None:
            continue
        [document] = obj.documents
        ingest = document["_ingest"]
        if obj.odd == "legacy_no_event_id":
            assert "eventId" not in document and obj.expect == "event"
        elif obj.odd == "fallback_ids":
            for field in ("eventId", "clientId", "sessionId"):
                assert FALLBACK_ID.fullmatch(document[field])
        elif obj.odd == "rest_v1_ingest":
            assert tuple(ingest) == REST_INGEST_KEYS
            assert ingest["stage"] == "prod" and uuid.UUID(ingest["requestId"])
        elif obj.odd == "received_before_hour":
            assert HOUR - timedelta(seconds=1) <= received(document) < HOUR
            assert obj.key.startswith(PREFIX)
        else:
            assert obj.expect == "invalid"
            assert "eventName" not in document and list(document)[-1] == "_ingest"
            spread = {k: v for k, v in document.items() if k != "_ingest"}
            if obj.odd == "spread_array":
                assert list(spread) == ["0", "1"]
                assert [spread["0"]["eventName"], spread["1"]["eventName"]] == [
                    "page_view",
                    "click",
                ]
            elif obj.odd == "spread_string":
                assert "".join(spread[str(i)] for i in range(len(spread))) == "ping"
            else:
                assert spread == {}
            assert tuple(ingest) == HTTP_INGEST_KEYS


def test_the_default_hour_is_only_what_the_real_platform_writes() -> None:
    objects = list(generate_hour(HOUR, 300, seed=3))
    assert {(obj.expect, obj.odd, obj.content_encoding, len(obj.documents)) for obj in objects} == {
        ("event", None, None, 1)
    }


def test_same_seed_same_bytes_and_the_documents_helper_agrees() -> None:
    first = list(generate_hour(HOUR, 200, odd_cases=1, malformed_ratio=0.05, seed=5))
    again = list(generate_hour(HOUR, 200, odd_cases=1, malformed_ratio=0.05, seed=5))
    other = list(generate_hour(HOUR, 200, odd_cases=1, malformed_ratio=0.05, seed=6))
    assert [(o.key, o.body) for o in first] == [(o.key, o.body) for o in again]
    assert [o.body for o in first] != [o.body for o in other]
    plain = [obj.documents[0] for obj in generate_hour(HOUR, 50, seed=5)]
    assert shop_documents(HOUR, 50, seed=5) == plain


def test_malformed_gzip_and_ndjson_are_explicit_options() -> None:
    objects = list(
        generate_hour(HOUR, 400, malformed_ratio=0.05, gzip_ratio=0.2, ndjson_ratio=0.1, seed=9)
    )
    kinds = Counter(
        "malformed"
        if obj.expect == "malformed"
        else ("gzip" if obj.content_encoding else "plain", len(obj.documents) > 1)
        for obj in objects
    )
    assert kinds["malformed"] and kinds[("gzip", False)] and kinds[("plain", True)]
    for obj in objects:
        if obj.expect == "malformed":
            assert obj.body in MALFORMED_BODIES and obj.documents == ()
            continue
        body = gzip.decompress(obj.body) if obj.content_encoding == "gzip" else obj.body
        lines = body.split(b"\n")
        assert [json.loads(line) for line in lines] == list(obj.documents)
        assert len(lines) == 1 or 5 <= len(lines) <= 40
