"""Reconciliation for the fault and soak suites: what the generator planted against what the
warehouse holds, independently of the loader's own counters.

Expected event ids are derived from the planted documents with the documented rule
(docs/mapping.md, event_id: the payload's `eventId` as is when it is a UUID, uuid5 of any other
id; without one, the uuid in `event-<uuid>.json` for the first record and uuid5(that uuid,
position) for later NDJSON lines), not by running the loader's transform, so a bug there cannot
hide behind its own arithmetic.
"""

from __future__ import annotations

import gzip
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from loader.transform.mapping import EVENT_ID_NAMESPACE
from loader.window import hour_prefix
from tools.demo.traffic import MALFORMED_BODIES, RawObject, serialize, shop_documents


@dataclass(frozen=True)
class Planted:
    """One object put into the bucket and what must come of it."""

    key: str
    body: bytes
    content_encoding: str | None = None
    #: Event ids that must be in both tables, exactly once.
    event_ids: tuple[uuid.UUID, ...] = ()
    #: Whether the object (or some of its lines) must show up in the quarantine.
    rejected: bool = False


def key_uuid(key: str) -> uuid.UUID:
    return uuid.UUID(key.rsplit("event-", 1)[1].removesuffix(".json"))


def expected_event_id(document: dict[str, Any], key: str, position: int = 0) -> uuid.UUID:
    """The id the documented rule gives a tracker event (the tracker's only id field is
    `eventId`): a UUID as is, any other string (the `<epoch ms>-<8 hex>` fallback) uuid5 in the
    loader's namespace, none at all (trackers before eventId) the key's uuid."""
    event_id = document.get("eventId")
    if isinstance(event_id, str) and event_id.strip():
        try:
            return uuid.UUID(event_id.strip())
        except ValueError:
            return uuid.uuid5(EVENT_ID_NAMESPACE, f"id:{event_id.strip()}")
    own = key_uuid(key)
    return own if position == 0 else uuid.uuid5(own, str(position))


def from_demo(objects: Iterable[RawObject]) -> list[Planted]:
    """`tools.demo.traffic.generate_hour` objects as Planted."""
    out = []
    for obj in objects:
        ids: tuple[uuid.UUID, ...] = ()
        if obj.expect == "event":
            ids = tuple(expected_event_id(d, obj.key, i) for i, d in enumerate(obj.documents))
        out.append(Planted(obj.key, obj.body, obj.content_encoding, ids, obj.expect != "event"))
    return out


def mixed_hour(
    hour: datetime, objects: int, *, seed: int, malformed_ratio: float = 0.01
) -> list[Planted]:
    """An hour of mixed shapes: mostly single events, some NDJSON batches (5-40 lines), some
    gzip-compressed NDJSON (20-120 lines), ~`malformed_ratio` of the events malformed (whole
    objects or single lines of an NDJSON object: the object's good lines still load)."""
    rng = random.Random(seed)
    prefix = hour_prefix(hour)
    # Objects first (what each is, how many lines), then as many real-shaped events as needed.
    plan: list[tuple[str, int]] = []
    for _ in range(objects):
        key = f"{prefix}event-{uuid.UUID(int=rng.getrandbits(128), version=4)}.json"
        roll = rng.random()
        if roll < malformed_ratio:
            plan.append((key, 0))
        elif roll < 0.80:
            plan.append((key, 1))
        elif roll < 0.95:
            plan.append((key, rng.randint(5, 40)))
        else:
            plan.append((key, rng.randint(20, 120)))
    documents = iter(shop_documents(hour, sum(lines for _, lines in plan), seed=seed))
    out: list[Planted] = []
    for key, lines in plan:
        if lines == 0:
            out.append(Planted(key, rng.choice(MALFORMED_BODIES), rejected=True))
            continue
        ids: list[uuid.UUID] = []
        rows: list[bytes] = []
        rejected = False
        for position in range(lines):
            document = next(documents)
            if lines > 1 and rng.random() < malformed_ratio:
                rows.append(b'{"eventName": "page_view", "broken": ')
                rejected = True
                continue
            rows.append(serialize(document))
            ids.append(expected_event_id(document, key, position))
        body = b"\n".join(rows)
        encoding = None
        if lines >= 20:
            body, encoding = gzip.compress(body, mtime=0), "gzip"
        out.append(Planted(key, body, encoding, tuple(ids), rejected))
    return out


def fill(s3: Any, bucket: str, planted: Sequence[Planted]) -> None:
    """Put the objects: straight into the in-process moto backend when the endpoint is the
    session's ThreadedMotoServer (thousands per second), over HTTP otherwise."""
    try:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        backend.get_bucket(bucket)
    except Exception:
        backend = None
    if backend is None:
        from concurrent.futures import ThreadPoolExecutor

        def put(p: Planted) -> None:
            extra = {"ContentEncoding": p.content_encoding} if p.content_encoding else {}
            s3.put_object(Bucket=bucket, Key=p.key, Body=p.body, **extra)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, planted))
        return
    for p in planted:
        key = backend.put_object(bucket, p.key, p.body)
        if p.content_encoding:
            key.set_metadata({"Content-Encoding": p.content_encoding})


@dataclass
class Reconciliation:
    expected: int = 0
    loaded_events: int = 0
    loaded_meta: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    wrong_key: int = 0
    rejected_missing_from_quarantine: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.unexpected == 0
            and self.wrong_key == 0
            and not self.rejected_missing_from_quarantine
            and self.loaded_events == self.expected == self.loaded_meta
        )


def reconcile(engine: sa.Engine, planted: Sequence[Planted]) -> Reconciliation:
    """Both tables against the planted objects: one row per valid event, nothing else."""
    expected = {event_id: p.key for p in planted for event_id in p.event_ids}
    rejected = {p.key for p in planted if p.rejected}
    with engine.connect() as conn:
        events = list(conn.execute(sa.text("SELECT event_id FROM clickstream_events")).scalars())
        meta = conn.execute(sa.text("SELECT event_id, s3_key FROM clickstream_ingest_meta")).all()
        quarantined = set(
            conn.execute(sa.text("SELECT DISTINCT s3_key FROM clickstream_quarantine")).scalars()
        )
    event_counts = Counter(events)
    meta_counts = Counter(row.event_id for row in meta)
    result = Reconciliation(
        expected=len(expected), loaded_events=len(events), loaded_meta=len(meta)
    )
    result.lost = sum(1 for e in expected if event_counts[e] == 0 or meta_counts[e] == 0)
    result.duplicated = sum(c - 1 for c in event_counts.values() if c > 1) + sum(
        c - 1 for c in meta_counts.values() if c > 1
    )
    result.unexpected = sum(1 for e in event_counts if e not in expected) + sum(
        1 for e in meta_counts if e not in expected
    )
    result.wrong_key = sum(
        1 for row in meta if expected.get(row.event_id, row.s3_key) != row.s3_key
    )
    result.rejected_missing_from_quarantine = sorted(rejected - quarantined)[:10]
    return result


def completion_lies(engine: sa.Engine, planted: Sequence[Planted]) -> list[str]:
    """Keys recorded as loaded (clickstream_loaded_objects) although some of their events are
    missing from either table, or their rejected records are missing from the quarantine:
    exactly what the completion record promises never to say."""
    with engine.connect() as conn:
        completed = set(
            conn.execute(sa.text("SELECT s3_key FROM clickstream_loaded_objects")).scalars()
        )
        events = set(conn.execute(sa.text("SELECT event_id FROM clickstream_events")).scalars())
        meta = set(conn.execute(sa.text("SELECT event_id FROM clickstream_ingest_meta")).scalars())
        quarantined = set(
            conn.execute(sa.text("SELECT DISTINCT s3_key FROM clickstream_quarantine")).scalars()
        )
    return sorted(
        p.key
        for p in planted
        if p.key in completed
        and (
            any(e not in events or e not in meta for e in p.event_ids)
            or (p.rejected and p.key not in quarantined)
        )
    )


def events_in(engine: sa.Engine) -> int:
    """Rows in clickstream_events, whatever loaded them."""
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one())


def completed_keys(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT s3_key FROM clickstream_loaded_objects")).scalars())


def ledger(engine: sa.Engine, hour: datetime | None = None) -> list[dict[str, Any]]:
    """Ledger rows (of one hour, or all), oldest first."""
    stmt = "SELECT * FROM clickstream_load_runs"
    params: dict[str, Any] = {}
    if hour is not None:
        stmt += " WHERE hour = :hour"
        params["hour"] = hour
    with engine.connect() as conn:
        return [
            dict(r) for r in conn.execute(sa.text(stmt + " ORDER BY started_at"), params).mappings()
        ]


def hours(start: datetime, count: int) -> list[datetime]:
    return [start + timedelta(hours=i) for i in range(count)]
