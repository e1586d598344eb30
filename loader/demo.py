"""A realistic hour of tracker events, and the local demo that loads one end to end.

The generator is deterministic (seeded) and shared by the demo, the tests and the benchmark, so
all three exercise the same shapes: page views with products, clicks with elements and string
prices, custom events with epoch timestamps, and a sprinkling of what real trackers get wrong.
"""

from __future__ import annotations

import gzip
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from loader.window import hour_prefix

PAGES = ["/", "/p/running-shoe-42", "/p/trail-jacket-7", "/c/shoes", "/cart", "/checkout"]
PRODUCTS = [
    {
        "id": "SKU-42",
        "name": "Giày chạy bộ Aero",
        "category": "shoes",
        "brand": "Acme",
        "price": 129000,
        "discountPrice": 99000,
        "urlPath": "/p/running-shoe-42",
    },
    {
        "id": "SKU-7",
        "name": "Trail jacket",
        "category": "outerwear",
        "brand": "Nord",
        "price": 249.9,
        "discountPrice": None,
        "urlPath": "/p/trail-jacket-7",
    },
]
MALFORMED_BODIES = [
    b"",
    b"{not json",
    b"null",
    b"[1, 2, 3]",
    b"\xff\xfe\x00garbage",
    b'"just a string"',
]


@dataclass(frozen=True)
class RawObject:
    key: str
    body: bytes
    content_encoding: str | None = None
    #: What the object should yield: events to load, or why it is skipped.
    expect: str = "event"


def _event(rng: random.Random, hour: datetime, index: int) -> dict[str, Any]:
    at = hour + timedelta(seconds=rng.uniform(0, 3599))
    kind = rng.choices(["page_view", "click", "custom"], weights=[6, 3, 1])[0]
    session = f"s-{rng.randrange(400):04d}"
    event: dict[str, Any] = {
        "event_name": kind,
        "timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "pageUrl": f"https://shop.example.com{rng.choice(PAGES)}",
        "referrer": rng.choice([None, "https://www.google.com/", "https://shop.example.com/"]),
        "userId": rng.choice([None, f"u-{rng.randrange(1000)}"]),
        "userLoginState": rng.choice(["anonymous", "logged_in"]),
        "clientId": f"c-{rng.randrange(16**8):08x}",
        "sessionId": session,
        "isFirstVisit": rng.choice([True, False, "true", "false"]),
    }
    if kind != "custom" and rng.random() < 0.6:
        product = dict(rng.choice(PRODUCTS))
        if kind == "click":
            product["price"] = str(product["price"])
        event["product"] = product
    if kind == "click":
        event["element"] = {
            "tag": "button",
            "id": "add-to-cart",
            "role": "button",
            "text": "Thêm vào giỏ",
            "dataset": {"position": str(index % 12)},
        }
    if kind == "custom":
        event["timestamp"] = int(at.timestamp() * 1000)
        event["custom_event"] = "newsletter_signup"
        event["properties"] = {"form": "footer", "variant": rng.choice("AB")}
    event["_ingest"] = {
        "receivedAt": (at + timedelta(milliseconds=rng.randrange(50, 900)))
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "sourceIp": f"203.0.113.{rng.randrange(1, 255)}",
        "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15",
        "path": "/events",
        "requestId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "apiId": "k3x9q2",
        "stage": "prod",
        "traceId": f"Root=1-{rng.getrandbits(32):08x}-{rng.getrandbits(96):024x}",
    }
    return event


def generate_hour(
    hour: datetime,
    count: int,
    *,
    malformed_ratio: float = 0.01,
    invalid_ratio: float = 0.0,
    gzip_ratio: float = 0.0,
    seed: int = 7,
    events_prefix: str = "events/",
) -> Iterator[RawObject]:
    """`count` objects under the hour's prefix, named `event-<uuid>.json` like the ingest Lambda."""
    rng = random.Random(seed)  # test data: reproducible, not secret
    prefix = hour_prefix(hour, events_prefix)
    for index in range(count):
        key = f"{prefix}event-{uuid.UUID(int=rng.getrandbits(128), version=4)}.json"
        roll = rng.random()
        if roll < malformed_ratio:
            yield RawObject(key, rng.choice(MALFORMED_BODIES), expect="malformed")
            continue
        event = _event(rng, hour, index)
        if roll < malformed_ratio + invalid_ratio:
            event.pop("event_name")
            yield RawObject(key, json.dumps(event).encode(), expect="invalid")
            continue
        body = json.dumps(event, ensure_ascii=False).encode()
        if rng.random() < gzip_ratio:
            yield RawObject(key, gzip.compress(body), content_encoding="gzip")
        else:
            yield RawObject(key, body)


def upload(
    s3: Any, bucket: str, objects: Iterator[RawObject] | list[RawObject], threads: int = 16
) -> list[RawObject]:
    """PUT objects concurrently; returns them (for reconciliation)."""
    from concurrent.futures import ThreadPoolExecutor

    items = list(objects)

    def put(obj: RawObject) -> None:
        extra = {"ContentEncoding": obj.content_encoding} if obj.content_encoding else {}
        s3.put_object(Bucket=bucket, Key=obj.key, Body=obj.body, **extra)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, items))
    return items
