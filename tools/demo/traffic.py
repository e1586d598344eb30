"""Generated hours of raw objects, byte for byte as the real ingest Lambda writes them.

`tools.demo.shop` simulates what the tracker sends; this module is the ingest Lambda's side
(SBW-Cloudworks/ClickStream.Lambda `Lambda-Ingest.mjs`, REAL-PLATFORM.md §a): one object per
POST under `events/YYYY/MM/DD/HH/event-<uuid4>.json` (a uuid of its own, not the event's id),
the body re-serialised compact with the payload's keys in the order sent and `_ingest` last, in
its own key order. Shared by the demo, the tests and the benchmark, so all three load the same
shapes. Deterministic: the same seed and options give the same bytes.

By default an hour holds only what the real platform writes. The odd shapes real code paths
also produce are opt-in (`odd_cases`), and so are the shapes the real platform never writes but
the loader must survive (malformed bodies, gzip, NDJSON batches), for the fault, soak and
benchmark suites.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from loader.window import hour_prefix
from tools.demo.shop import Browse, Sent, http_request_id, new_visitor, sessions, uuid4

HTTP_API_ID: Final = "6m1g52rou7"
#: The REST v1 stack of the Terraform scaffold (`POST /click`, stage `prod`).
REST_API_ID: Final = "k3x9q2m7ab"
MALFORMED_BODIES = [
    b"",
    b"{not json",
    b"null",
    b"[1, 2, 3]",
    b"\xff\xfe\x00garbage",
    b'"just a string"',
]
#: What the ingest Lambda stores for a body that is not a JSON object: spread into
#: `{"0": …, "1": …, "_ingest": …}`, or just `{"_ingest": …}` for null, numbers and booleans.
SPREAD_CASES: Final = ("spread_array", "spread_string", "spread_null")
#: The odd objects `odd_cases` plants, each that many times (sessions for the first three).
ODD_CASES: Final = (
    "legacy_no_event_id",
    "fallback_ids",
    "rest_v1_ingest",
    "received_before_hour",
    *SPREAD_CASES,
)
_ODD_VISITOR: Final = {
    "legacy_tracker": "legacy_no_event_id",
    "insecure": "fallback_ids",
    "rest_endpoint": "rest_v1_ingest",
}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RawObject:
    key: str
    body: bytes
    content_encoding: str | None = None
    #: What the object should yield: "event" (events to load), "malformed" or "invalid".
    expect: str = "event"
    #: The documents in the body as the ingest Lambda wrote them (one per NDJSON line); empty
    #: for a malformed body.
    documents: tuple[dict[str, Any], ...] = ()
    #: Which of `ODD_CASES` this object is, if any.
    odd: str | None = None


def iso_ms(epoch_ms: int) -> str:
    """`new Date().toISOString()`: `YYYY-MM-DDTHH:MM:SS.mmmZ`."""
    at = _EPOCH + timedelta(milliseconds=epoch_ms)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ingest_block(sent: Sent) -> dict[str, Any]:
    """The `_ingest` block, keys in the Lambda's order. Behind the REST v1 stack
    `requestContext.http` is undefined, so sourceIp, userAgent, method and path drop out."""
    trace_id = f"Root=1-{sent.received_ms // 1000:08x}-{sent.trace_tail}"
    if sent.visitor.rest_endpoint:
        return {
            "receivedAt": iso_ms(sent.received_ms),
            "requestId": sent.request_id,
            "apiId": REST_API_ID,
            "stage": "prod",
            "traceId": trace_id,
        }
    return {
        "receivedAt": iso_ms(sent.received_ms),
        "sourceIp": sent.visitor.source_ip,
        "userAgent": sent.visitor.user_agent,
        "method": "POST",
        "path": "/clickstream",
        "requestId": sent.request_id,
        "apiId": HTTP_API_ID,
        "stage": "$default",
        "traceId": trace_id,
    }


def stored_document(sent: Sent) -> dict[str, Any]:
    """`{...payload, _ingest: {...}}`: the payload's keys in the order sent, then `_ingest`."""
    return {**sent.payload, "_ingest": ingest_block(sent)}


def serialize(document: dict[str, Any]) -> bytes:
    """`JSON.stringify`: compact, UTF-8, non-ASCII unescaped, no trailing newline."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def _take(stream: Iterator[list[Sent]], count: int) -> list[list[Sent]]:
    """Whole sessions until `count` events; the last one cut short (the visitor left)."""
    taken: list[list[Sent]] = []
    total = 0
    while total < count:
        session = next(stream)[: count - total]
        taken.append(session)
        total += len(session)
    return taken


def shop_documents(hour: datetime, count: int, *, seed: int = 7) -> list[dict[str, Any]]:
    """`count` stored documents of ordinary traffic received within `hour`, in the order
    sent per session (for callers that pack their own objects, e.g. NDJSON soak hours)."""
    rng = random.Random(f"traffic-{seed}")  # test data: reproducible, not secret
    return [stored_document(s) for session in _take(sessions(rng, hour), count) for s in session]


def _spread_document(rng: random.Random, case: str, hour: datetime) -> dict[str, Any]:
    """A non-object body POSTed to the HTTP API, as the ingest Lambda stores it."""
    start = int(hour.astimezone(UTC).timestamp() * 1000)
    received = start + rng.randrange(3_600_000)
    visitor = new_visitor(rng, now_ms=received)
    body: dict[str, Any]
    if case == "spread_array":
        # A client batching two tracker events into one array.
        browse = Browse(rng, visitor, start_ms=received - 2_000, number=-1)
        browse.land("/shop")
        browse.click({})
        pair = (browse.sent[0], browse.sent[-1])  # the page load's page_view and the click
        body = {str(i): sent.payload for i, sent in enumerate(pair)}
    elif case == "spread_string":
        visitor.user_agent = "curl/8.5.0"
        body = {str(i): char for i, char in enumerate("ping")}
    else:
        visitor.user_agent = "PostmanRuntime/7.43.0"
        body = {}
    trace_tail = f"{rng.getrandbits(96):024x}"
    return stored_document(
        Sent(body, received, received, visitor, -1, http_request_id(rng), trace_tail)
    )


def generate_hour(
    hour: datetime,
    count: int,
    *,
    malformed_ratio: float = 0.0,
    invalid_ratio: float = 0.0,
    gzip_ratio: float = 0.0,
    ndjson_ratio: float = 0.0,
    odd_cases: int = 0,
    seed: int = 7,
    events_prefix: str = "events/",
) -> Iterator[RawObject]:
    """`count` objects under the hour's prefix, one real-shaped event each by default.

    - `odd_cases`: plant each of `ODD_CASES` that many times (a whole session for the legacy,
      fallback-id and REST-v1 visitors; single objects for the rest).
    - `malformed_ratio`: bodies that are not JSON objects at all (`MALFORMED_BODIES`).
    - `invalid_ratio`: spread bodies (no event name), like the odd spread objects.
    - `gzip_ratio`: event objects stored gzip-compressed with `ContentEncoding: gzip`.
    - `ndjson_ratio`: event objects holding 5-40 events, one per line.
    """
    rng = random.Random(seed)  # test data: reproducible, not secret
    traffic = random.Random(f"traffic-{seed}")
    prefix = hour_prefix(hour, events_prefix)
    # (what, lines, gzip) per object, decided first so the traffic is generated to fit.
    slots: list[tuple[str, int, bool]] = []
    for _ in range(count):
        roll = rng.random()
        if roll < malformed_ratio:
            slots.append(("malformed", 0, False))
        elif roll < malformed_ratio + invalid_ratio:
            slots.append((rng.choice(SPREAD_CASES), 0, False))
        else:
            lines = rng.randint(5, 40) if rng.random() < ndjson_ratio else 1
            slots.append(("event", lines, rng.random() < gzip_ratio))
    singles = [i for i, (what, lines, _) in enumerate(slots) if what == "event" and lines == 1]
    spread_slots = rng.sample(singles, min(len(singles), odd_cases * len(SPREAD_CASES)))
    for n, index in enumerate(spread_slots):
        slots[index] = (SPREAD_CASES[n % len(SPREAD_CASES)], 0, False)

    needed = sum(lines for what, lines, _ in slots if what == "event")
    odd_visitors = [kind for _ in range(odd_cases) for kind in _ODD_VISITOR]
    taken = _take(sessions(traffic, hour, odd=odd_visitors), needed)
    odd_of: dict[int, str] = {}
    for session in taken:
        for kind, case in _ODD_VISITOR.items():
            if getattr(session[0].visitor, kind):
                odd_of.update((id(s), case) for s in session)
    _received_before_the_hour(traffic, hour, taken, odd_cases, odd_of)
    flat = iter([s for session in taken for s in session])

    for what, lines, compress in slots:
        key = f"{prefix}event-{uuid4(rng)}.json"
        if what == "malformed":
            yield RawObject(key, rng.choice(MALFORMED_BODIES), expect="malformed")
        elif what != "event":
            document = _spread_document(traffic, what, hour)
            yield RawObject(
                key, serialize(document), expect="invalid", documents=(document,), odd=what
            )
        else:
            batch = [next(flat) for _ in range(lines)]
            documents = tuple(stored_document(s) for s in batch)
            body = b"\n".join(serialize(d) for d in documents)
            odd = odd_of.get(id(batch[0])) if lines == 1 else None
            if compress:
                yield RawObject(
                    key, gzip.compress(body, mtime=0), "gzip", documents=documents, odd=odd
                )
            else:
                yield RawObject(key, body, documents=documents, odd=odd)


def _received_before_the_hour(
    rng: random.Random, hour: datetime, taken: list[list[Sent]], count: int, odd_of: dict[int, str]
) -> None:
    """The ingest Lambda reads the clock twice: `receivedAt` can fall a few ms before the hour
    of the folder it is stored in. Moves the first event of the `count` earliest ordinary
    sessions there."""
    start = int(hour.astimezone(UTC).timestamp() * 1000)
    visits = Counter(id(session[0].visitor) for session in taken)
    # Not a visitor's second session: its moved event would precede the first one.
    ordinary = [
        session
        for session in taken
        if id(session[0]) not in odd_of and visits[id(session[0].visitor)] == 1
    ]
    for session in sorted(ordinary, key=lambda s: s[0].received_ms)[:count]:
        first = session[0]
        first.received_ms = start - rng.randint(1, 999)
        odd_of[id(first)] = "received_before_hour"


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
