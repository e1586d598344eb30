"""Load one fixed hour and dump everything it wrote, sorted: proof that a change kept the output.

    .venv/bin/python bench/dump_hour.py --out after.txt                   # this tree's loader
    PYTHONPATH=/path/to/other/tree .venv/bin/python bench/dump_hour.py --out before.txt
    sha256sum before.txt after.txt                                        # must be equal

A performance change to the transform, the batching or the writer must not change one byte of
what lands in the warehouse. This script is the check: it starts the embedded PostgreSQL, builds
one deterministic hour (`tools.demo.traffic.generate_hour` with a fixed seed: its odd cases,
malformed, invalid, gzip and NDJSON objects; plus hand-made bodies for every repair path of the
transform: NUL and lone-surrogate escapes, NaN, numbers past double range or 64 bits, nesting
past the cap, text past its cap, shadowed spellings, odd ids, prices, instants and addresses),
loads it with the real `HourLoader` in three configurations (COPY, INSERT, COPY with
ANONYMIZE_IP), reruns each once, and prints every row of every table the loader writes, sorted,
without the columns that hold clocks or random run ids.

The objects come from memory, not from an S3 server, through the same `decode_body` and size cap
the S3 clients apply: a server would stamp LastModified with its clock, which lands in
`s3_last_modified` (and in `event_timestamp` when nothing better exists), so two runs would
differ by the time of day. Everything after the fetch (the producer thread, transform, batching,
both writers, quarantine, completion records, ledger) is the loader's own code. Which `loader`
package runs is whatever `import loader` finds first, so PYTHONPATH selects the tree.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: another tree's `loader` wins if given

import sqlalchemy as sa  # noqa: E402

from tools.demo.traffic import generate_hour  # noqa: E402
from tools.servers import start_embedded_postgres  # noqa: E402

BUCKET = "clickstream-dump"
HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
#: Every object's LastModified: fixed, so the dump holds no clock.
LAST_MODIFIED = datetime(2026, 11, 24, 13, 59, 30, tzinfo=UTC)
PREFIX = "events/2026/11/24/13/"
SEED = 20261124
#: Columns that hold a clock reading or a random run id: they differ on every run by design.
VOLATILE = (
    "loaded_at",
    "run_id",
    "started_at",
    "finished_at",
    "first_seen_at",
    "last_seen_at",
    "completed_at",
    "adopted_at",
    "quarantine_id",
)
TABLES = (
    "clickstream_events",
    "clickstream_ingest_meta",
    "clickstream_quarantine",
    "clickstream_loaded_objects",
    "clickstream_load_runs",
)
VARIANTS = {
    "copy": {"WRITE_METHOD": "copy"},
    "insert": {"WRITE_METHOD": "insert"},
    "copy_anonymized": {"WRITE_METHOD": "copy", "ANONYMIZE_IP": "true"},
}


def _key(n: int) -> str:
    return f"{PREFIX}event-{uuid.UUID(int=0xD0 << 120 | n)}.json"


def _doc(first: dict[str, Any] | None = None, **fields: Any) -> bytes:
    ingest = {
        "receivedAt": "2026-11-24T13:30:00.123Z",
        "sourceIp": "203.0.113.7",
        "userAgent": "Mozilla/5.0",
        "path": "/click",
        "requestId": "req-1",
        "apiId": "abc",
        "stage": "$default",
    }
    document = {**(first or {}), **fields, "_ingest": ingest}
    return json.dumps(document, separators=(",", ":")).encode()


def edge_bodies() -> list[tuple[str, bytes, str | None]]:
    """Bodies for every repair path of the transform (key, body, content encoding)."""
    base = {"eventName": "click", "sessionId": "s-1", "clientId": "c-1"}
    deep: Any = {"leaf": 1}
    for _ in range(70):
        deep = {"d": deep}
    raw = [
        b'{"eventName":"click","note":"a\\u0000b","k\\u0000ey":1,"_ingest":{"userAgent":"x\\u0000"}}',
        b'{"eventName":"click","lone":"\\ud800x","pair":"\\ud83d\\ude00"}',
        b'{"eventName":"click","v":NaN,"w":Infinity,"x":-Infinity}',
        b'{"eventName":"click","big":1e400,"neg":-1e400,"tiny":1e-400}',
        b'{"eventName":"click","long":123456789012345678901234567890,"eventId":12345678901234567890}',
        b'{"eventName":"click","huge":' + b"9" * 5000 + b"}",
        b'{"eventName":"click","t":"caf\xc3\xa9 \xf0\x9f\x98\x80","userId":"\xc3\xa9"}',
        b"\xef\xbb\xbf" + _doc(base, pageUrl="https://shop.example.com/bom"),
        b'{"eventName":"a","eventName":"b","userId":"u"}',
        b'{"eventName":"click","ctl":"a\x01b"}',
        b'{"eventName":"click","f":-0.0,"g":1.0,"h":1e308,"i":0.1,"j":5e-324}',
        b'{"eventName":"click"}\n{"eventName":"view","x":1}\nnot json\n[1]\n\n{"eventName":""}',
        b'[{"eventName":"click","n":1},{"eventName":"view","n":2}]',
        b'[{"eventName":"click"},3]',
        b"[" * 3000 + b"]" * 3000,
        b'{"eventName":"click","a":' + b"[" * 2000 + b"]" * 2000 + b"}",
        b'{"eventName":"\\u0000","x":1}',
        b"\xff\xfe{}",
        b"   \n  ",
        b'{"eventName":"click","_ingest":"not an object","sessionId":"s"}',
        b'{"eventName":"click","_ingest":{"sourceIp":"fe80::1%eth0","receivedAt":1764000000000}}',
        b'{"eventName":"click","_ingest":{"sourceIp":"2001:db8::1","receivedAt":"junk"}}',
        b'{"eventName":"click","_ingest":{"sourceIp":"999.1.1.1","receivedAt":null}}',
        b'{"eventName":"click","_ingest":{"sourceIp":" 10.0.0.1 ","userAgent":123}}',
        b'{"eventName":"click","_ingest":[1,2]}',
        b'{"eventName":"click","_ingest":null,"timestamp":"2026-11-24T13:00:00"}',
    ]
    docs = [
        _doc(base, pageUrl="https://x/" + "p" * 5000, userId="u" * 300, referrer="r" * 4097),
        _doc(base, eventName=" padded ", event_name="other", userId="u", user_id="u"),
        _doc(event_name="snake", page_url="/p", user_id="snake-user", is_first_visit="TRUE"),
        _doc(base, isFirstVisit="yes", is_first_visit=True),
        _doc(base, isFirstVisit=" false "),
        _doc(base, eventId="not-a-uuid"),
        _doc(base, eventId="  "),
        _doc(base, eventId=True, event_id="E-2"),
        _doc(base, eventId={"x": 1}, id=42),
        _doc(base, eventId="A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
        _doc(eventName=12, sessionId="s"),
        _doc(eventName="   "),
        _doc(**{"0": "a", "1": "b"}),
        _doc(),
        _doc(base, timestamp=1764000000123),
        _doc(base, timestamp=1764000000),
        _doc(base, timestamp="1764000000.5"),
        _doc(base, timestamp="2026-11-24T13:05:00+02:00"),
        _doc(base, timestamp="yesterday", eventTimestamp="2026-11-24T13:06:00Z"),
        _doc(base, timestamp=1e300),
        _doc(base, timestamp=True),
        _doc(base, element="not a dict"),
        _doc(base, element={"tag": "a", "text": "Buy"}),
        _doc(base, element=None, sessionId=["list"]),
        _doc(base, product="not a dict"),
        _doc(base, product=None, context_product={"id": "p2", "price": "19.99"}),
        _doc(
            **base,
            product={
                "id": 17,
                "name": "n" * 1100,
                "category": True,
                "brandName": "B",
                "brand": "A",
                "price": "1e-20000",
                "discountPrice": "abc",
                "urlPath": {"x": 1},
                "extra": [1, 2],
                "product_id": "other",
            },
            context_product={"id": "p3"},
        ),
        _doc(base, product={"id": "p", "price": 19.9, "discountPrice": 1e15}),
        _doc(base, product={"id": "p", "price": " 12.50 ", "discountPrice": -0.0}),
        _doc(base, product={"id": "p", "price": "x" * 70, "discountPrice": 2**70}),
        _doc(base, product={"id": "p", "price": True, "discountPrice": "NaN"}),
        _doc(base, userId=123, clientId=1.5, identitySource=False, userLoginState=None),
        _doc(base, deep=deep),
        _doc(base, pageUrl="https://shop.example.com/é?q=ü", referrer=""),
    ]
    bodies = [(_key(n), body, None) for n, body in enumerate(raw + docs)]
    n = len(bodies)
    bodies += [
        (_key(n), gzip.compress(_doc(base, gz=True), mtime=0), "gzip"),
        (_key(n + 1), b"\x1f\x8b\x08 broken gzip", None),
        (_key(n + 2), b"x" * (1024 * 1024 + 1), None),
        (f"{PREFIX}not-a-uuid-key.json", _doc(base, odd="key"), None),
        (f"{PREFIX}nested/event-{uuid.UUID(int=7)}.json", _doc(base, odd="nested"), None),
        (f"{PREFIX}event-{uuid.UUID(int=8)}.json.bak", _doc(base, odd="suffix"), None),
    ]
    return bodies


def hour_objects() -> list[tuple[str, bytes, str | None]]:
    generated = generate_hour(
        HOUR,
        1500,
        malformed_ratio=0.02,
        invalid_ratio=0.01,
        gzip_ratio=0.03,
        ndjson_ratio=0.02,
        odd_cases=2,
        seed=SEED,
    )
    return [(o.key, o.body, o.content_encoding) for o in generated] + edge_bodies()


def _migrate(engine: sa.Engine) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["connection"] = engine
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, "head")


def _report(report: Any) -> str:
    data = report.to_dict()
    for volatile in ("run_id", "seconds", "started_at", "finished_at"):
        data.pop(volatile, None)
    return json.dumps(data, sort_keys=True, default=str)


def dump_tables(engine: sa.Engine) -> list[str]:
    lines = []
    with engine.connect() as conn:
        conn.execute(sa.text("SET TimeZone = 'UTC'"))
        for table in TABLES:
            rows = conn.execute(
                sa.text(
                    f"SELECT (to_jsonb(t) - CAST(:drop AS text[]))::text FROM {table} t ORDER BY 1"
                ),
                {"drop": list(VOLATILE)},
            ).scalars()
            lines += [f"{table}\t{row}" for row in rows]
    return lines


class MemorySource:
    """An `ObjectSource` over objects in memory, in key order, decoded as the S3 clients do."""

    def __init__(self, bucket: str, objects: list[tuple[str, bytes, str | None]], settings: Any):
        self.bucket = bucket
        self._objects = sorted(objects)
        self._settings = settings

    def list_objects(self, prefix: str, start_after: str | None = None) -> Any:
        from loader.common import ObjectRef

        for key, body, _ in self._objects:
            if key.startswith(prefix) and (start_after is None or key > start_after):
                yield ObjectRef(key, len(body), LAST_MODIFIED)

    def fetch_many(self, refs: Any, stop: Any = None) -> Any:
        from loader.common import FetchedObject
        from loader.extract.body import BodyError, decode_body

        stored = {key: (body, encoding) for key, body, encoding in self._objects}
        cap = self._settings.max_object_bytes
        for ref in refs:
            body, encoding = stored[ref.key]
            if ref.size > cap:
                yield FetchedObject(ref, None, "too_large", f"object is {ref.size} bytes")
                continue
            try:
                decoded = decode_body(body, encoding, self._settings.max_decompressed_bytes)
            except BodyError as exc:
                yield FetchedObject(ref, None, exc.reason, str(exc))
            else:
                yield FetchedObject(ref, decoded)

    def close(self) -> None:
        pass


def load_variant(
    name: str, extra: dict[str, str], pg: Any, objects: list[tuple[str, bytes, str | None]]
) -> list[str]:
    from loader.config import load_settings
    from loader.load.db import make_engine
    from loader.pipeline.hour import HourLoader
    from loader.pipeline.job import HourJob

    database = f"dump_{name}"
    env = {**pg.env(database), "RAW_BUCKET_NAME": BUCKET, "LOG_LEVEL": "ERROR", **extra}
    settings = load_settings(env)
    admin = sa.create_engine(
        settings.db.url().set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    engine = make_engine(settings.db)
    _migrate(engine)
    source = MemorySource(BUCKET, objects, settings)
    lines = [f"== {name}"]
    try:
        loader = HourLoader(settings, engine, source)
        for attempt in ("load", "rerun"):
            lines.append(f"report\t{attempt}\t{_report(loader.load(HourJob(HOUR, 'manual')))}")
        lines += dump_tables(engine)
    finally:
        engine.dispose()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    import loader

    objects = hour_objects()
    pg = start_embedded_postgres()
    lines: list[str] = []
    try:
        for name in args.variants.split(","):
            lines += load_variant(name, VARIANTS[name], pg, objects)
    finally:
        pg.server.cleanup()
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    print(f"loader from {Path(loader.__file__).parent}")
    print(f"{len(objects)} objects; {len(lines)} lines; sha256 {digest}  {args.out}")


if __name__ == "__main__":
    main()
