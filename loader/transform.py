"""Raw S3 object → warehouse rows. Pure: no I/O, no clock, no randomness.

One object usually holds one JSON event; newline-delimited JSON (several objects, one per line)
and a JSON array of objects are accepted too. What cannot be read as JSON objects is
*malformed* (skipped, counted, its key reported); an event without a usable `event_name` is
*invalid* (likewise). One bad value never rejects the rest of its event: it becomes NULL and its
original stays in `properties`.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from loader.coerce import (
    Repairs,
    anonymize_ip,
    clean_json,
    first_instant,
    to_bool,
    to_instant,
    to_ip,
    to_price,
    to_text,
)
from loader.schema import TEXT_CAPS

#: Namespace of every uuid5 the loader derives: changing it would re-key history.
EVENT_ID_NAMESPACE: Final = uuid.UUID("6b1f3c1e-8f5d-5a4e-9c37-2d0f6a1b7e42")
ID_FIELDS: Final = ("event_id", "eventId", "id")
_KEY_UUID = re.compile(
    r"event-([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\.json"
)
#: Integers beyond 64 bits: orjson would turn them into floats, the standard library keeps them.
_LONG_INTEGER = re.compile(rb"\d{19,}")
_BOM = b"\xef\xbb\xbf"

#: payload field → events column, for the plain text columns.
TEXT_FIELDS: Final = {
    "pageUrl": "page_url",
    "referrer": "referrer",
    "userId": "user_id",
    "userLoginState": "user_login_state",
    "identity_source": "identity_source",
    "clientId": "client_id",
    "sessionId": "session_id",
}
PRODUCT_TEXT_FIELDS: Final = {
    "id": "context_product_id",
    "name": "context_product_name",
    "category": "context_product_category",
    "brand": "context_product_brand",
    "urlPath": "context_product_url_path",
}
PRODUCT_PRICE_FIELDS: Final = {
    "price": "context_product_price",
    "discountPrice": "context_product_discount_price",
}
INGEST_TEXT_FIELDS: Final = {
    "userAgent": "user_agent",
    "path": "path",
    "requestId": "request_id",
    "apiId": "api_id",
    "stage": "stage",
    "traceId": "trace_id",
}
_MAPPED_TOP_LEVEL: Final = frozenset(
    {"event_name", "timestamp", "isFirstVisit", "element", "product", "_ingest", *TEXT_FIELDS}
)


@dataclass(frozen=True, slots=True)
class SourceObject:
    """What transform needs to know about an object besides its body."""

    bucket: str
    key: str
    last_modified: datetime | None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that was not loaded, and why (reason code + human detail, no row data)."""

    key: str
    position: int
    reason: str
    detail: str
    event_id: uuid.UUID | None = None
    sqlstate: str | None = None


@dataclass(slots=True)
class EventRecord:
    """One event as rows for both tables, plus where it came from."""

    event_id: uuid.UUID
    key: str
    position: int
    event: dict[str, Any]
    meta: dict[str, Any]
    #: False when the payload had no id and event_id was derived from the key: the original
    #: ETL stored such events under a random id, so only these can duplicate an adopted row.
    id_from_payload: bool = True


@dataclass(slots=True)
class ObjectResult:
    key: str
    events: list[EventRecord] = field(default_factory=list)
    malformed: list[Rejection] = field(default_factory=list)
    invalid: list[Rejection] = field(default_factory=list)
    sanitised: int = 0
    truncated: int = 0


def _parse_int(text: str) -> int | float:
    """Integers as Python ints, exactly; past the interpreter's int-from-text limit (4300 digits)
    as ±inf, which clean_json turns into null (counted as sanitised)."""
    try:
        return int(text)
    except ValueError:
        # Fix: int() refuses such digit strings, which made the whole object "not JSON".
        return float(text)


def _stdlib_loads(data: bytes) -> Any:
    # Fix: json.loads(bytes) guesses UTF-16/UTF-32 from NUL bytes, so a BOM-less UTF-16 body
    # (valid UTF-8 when ASCII-only) loaded while the same body with a BOM was malformed. The
    # caller has checked the body is UTF-8: decode it as that, never as anything else.
    return json.loads(data.decode("utf-8"), parse_int=_parse_int)


def _parse_json(data: bytes) -> Any:
    if _LONG_INTEGER.search(data):
        return _stdlib_loads(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson refuses what the standard library reads and we can repair: lone surrogate
        # escapes, NaN/Infinity literals, numbers past double range. Same JSON grammar otherwise.
        return _stdlib_loads(data)


def split_records(data: bytes) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str]]]:
    """Body → ([(position, record)], [(position, why malformed)]).

    A body that is one JSON object (or an array of objects) is that; otherwise each non-blank
    line must be a JSON object (NDJSON). Positions are 0-based record/line numbers.
    """
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    if not data.strip():
        return [], [(0, "empty body")]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [(0, f"invalid UTF-8 at byte {exc.start}")]
    too_deep = False
    try:
        whole = _parse_json(data)
    except RecursionError:
        # Fix: this used to reject the whole object, so one over-deep NDJSON line lost the good
        # lines after it. Parse line by line instead; a single-document body still ends below.
        whole, too_deep = _NOT_JSON, True
    except ValueError:
        whole = _NOT_JSON
    if isinstance(whole, dict):
        return [(0, whole)], []
    if isinstance(whole, list):
        if whole and all(isinstance(item, dict) for item in whole):
            return list(enumerate(whole)), []
        return [], [(0, "JSON array that is not a list of objects")]
    if whole is not _NOT_JSON:
        return [], [(0, f"JSON {_json_kind(whole)}, not an object")]
    records: list[tuple[int, dict[str, Any]]] = []
    bad: list[tuple[int, str]] = []
    for position, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            value = _parse_json(line)
        except RecursionError:
            bad.append((position, "line is JSON nested too deep to parse"))
            continue
        except ValueError:
            bad.append((position, "line is not valid JSON"))
            continue
        if isinstance(value, dict):
            records.append((position, value))
        else:
            bad.append((position, f"line is JSON {_json_kind(value)}, not an object"))
    if not records:
        if too_deep:
            return [], [(0, "JSON nested too deep to parse")]
        return [], [(0, "not JSON: no line parses as a JSON object")]
    return records, bad


_NOT_JSON: Final = object()


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def payload_event_id(record: Mapping[str, Any]) -> tuple[str, uuid.UUID] | None:
    """The first usable id field of the payload and its UUID (uuid5 of any non-UUID string)."""
    for name in ID_FIELDS:
        raw = record.get(name)
        if raw is None or isinstance(raw, dict | list | bool):
            continue
        text = str(raw).strip()
        if not text:
            continue
        try:
            return name, uuid.UUID(text)
        except ValueError:
            return name, uuid.uuid5(EVENT_ID_NAMESPACE, f"id:{text}")
    return None


def derive_event_id(record: Mapping[str, Any], key: str, position: int) -> uuid.UUID:
    """The payload's id (a UUID as is, other ids via uuid5), else the key's UUID (uuid5 of it and
    the position for later NDJSON records), else uuid5 of key and position. Never random."""
    from_payload = payload_event_id(record)
    if from_payload is not None:
        return from_payload[1]
    match = _KEY_UUID.search(key.rsplit("/", 1)[-1])
    if match:
        key_uuid = uuid.UUID(match.group(1))
        return key_uuid if position == 0 else uuid.uuid5(key_uuid, str(position))
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"key:{key}#{position}")


def payload_digest(record: Mapping[str, Any]) -> bytes:
    """SHA-256 of the tracker's payload without `_ingest` (which differs per delivery), keys
    sorted: the same event sent twice hashes the same."""
    payload = {k: v for k, v in record.items() if k != "_ingest"}
    try:
        canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # integers past 64 bits
        canonical = json.dumps(
            payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")
        ).encode()
    return hashlib.sha256(canonical).digest()


def _anonymize_ingest(ingest: dict[str, Any]) -> dict[str, Any]:
    raw = ingest.get("sourceIp")
    if raw is None:
        return ingest
    valid = to_ip(raw)
    # An address we cannot parse cannot be truncated either: drop it rather than keep it whole.
    return {**ingest, "sourceIp": anonymize_ip(valid) if valid else None}


def map_record(
    record: dict[str, Any],
    source: SourceObject,
    position: int,
    repairs: Repairs,
    *,
    anonymize: bool = False,
) -> EventRecord | Rejection:
    """One JSON object → an EventRecord, or a Rejection when it has no usable event_name.

    Values changed on the way (sanitised, truncated) are counted in `repairs`."""
    raw_ingest = record.get("_ingest")
    ingest = raw_ingest if isinstance(raw_ingest, dict) else None
    if ingest is not None and anonymize:
        ingest = _anonymize_ingest(ingest)
        record = {**record, "_ingest": ingest}
    elif raw_ingest is not None and anonymize:
        # An `_ingest` that is not an object may still hold an address we cannot truncate.
        raw_ingest = None
        record = {k: v for k, v in record.items() if k != "_ingest"}
    record = clean_json(record, repairs)
    ingest = record.get("_ingest") if ingest is not None else None
    event_id = derive_event_id(record, source.key, position)

    name = record.get("event_name")
    if not isinstance(name, str) or not name.strip():
        return Rejection(
            source.key,
            position,
            "invalid",
            "no usable event_name (missing, empty or not a string)",
            event_id,
        )

    # Every field not mapped to a column stays in properties, ids not used for event_id too.
    id_source = payload_event_id(record)
    used_id_field = id_source[0] if id_source else None
    leftovers: dict[str, Any] = {
        k: v for k, v in record.items() if k not in _MAPPED_TOP_LEVEL and k != used_id_field
    }
    if raw_ingest is not None and ingest is None:
        # Fix: this kept `raw_ingest`, the value from before clean_json, so a non-object _ingest
        # holding NUL, a lone surrogate or NaN reached jsonb unrepaired and failed the batch.
        leftovers["_ingest"] = record.get("_ingest")

    def keep_original(field_name: str, raw: Any, coerced: Any) -> Any:
        if coerced is None and raw is not None:
            leftovers[field_name] = raw
        return coerced

    event: dict[str, Any] = {
        "event_id": event_id,
        "event_name": to_text(name.strip(), TEXT_CAPS["event_name"], repairs),
    }
    for payload_field, column in TEXT_FIELDS.items():
        raw = record.get(payload_field)
        event[column] = keep_original(payload_field, raw, to_text(raw, TEXT_CAPS[column], repairs))
    raw_first = record.get("isFirstVisit")
    event["is_first_visit"] = keep_original("isFirstVisit", raw_first, to_bool(raw_first))

    product = record.get("product")
    product_extra: dict[str, Any] = {}
    if isinstance(product, dict):
        for payload_field, column in PRODUCT_TEXT_FIELDS.items():
            raw = product.get(payload_field)
            event[column] = to_text(raw, TEXT_CAPS[column], repairs)
            if event[column] is None and raw is not None:
                product_extra[payload_field] = raw
        for payload_field, column in PRODUCT_PRICE_FIELDS.items():
            raw = product.get(payload_field)
            event[column] = to_price(raw)
            if event[column] is None and raw is not None:
                product_extra[payload_field] = raw
        mapped = PRODUCT_TEXT_FIELDS.keys() | PRODUCT_PRICE_FIELDS.keys()
        product_extra.update({k: v for k, v in product.items() if k not in mapped})
        if product_extra:
            leftovers["product"] = product_extra
    else:
        for column in (*PRODUCT_TEXT_FIELDS.values(), *PRODUCT_PRICE_FIELDS.values()):
            event[column] = None
        if product is not None:
            leftovers["product"] = product

    element = record.get("element")
    event["element"] = element if isinstance(element, dict) else None
    if element is not None and not isinstance(element, dict):
        leftovers["element"] = element

    raw_timestamp = record.get("timestamp")
    client_timestamp = to_instant(raw_timestamp)
    if client_timestamp is None and raw_timestamp is not None:
        leftovers["timestamp"] = raw_timestamp
    received_at = to_instant(ingest.get("receivedAt")) if ingest else None
    event["client_timestamp"] = client_timestamp
    # Never NULL: LastModified is always sane for a real object; the epoch floor is the
    # last resort of a caller that passes none.
    event["event_timestamp"] = (
        first_instant(received_at, client_timestamp, source.last_modified) or _FALLBACK_INSTANT
    )
    event["properties"] = leftovers or None

    meta: dict[str, Any] = {
        "event_id": event_id,
        "received_at": received_at,
        "source_ip": to_ip(ingest.get("sourceIp")) if ingest else None,
        "s3_bucket": source.bucket,
        "s3_key": source.key,
        "s3_last_modified": source.last_modified,
        "ingest_metadata": ingest,
        "payload_sha256": payload_digest(record),
    }
    for ingest_field, column in INGEST_TEXT_FIELDS.items():
        meta[column] = (
            to_text(ingest.get(ingest_field), TEXT_CAPS[column], repairs) if ingest else None
        )

    return EventRecord(
        event_id, source.key, position, event, meta, id_from_payload=id_source is not None
    )


_FALLBACK_INSTANT: Final = datetime(2000, 1, 1, tzinfo=UTC)


def transform_object(source: SourceObject, body: bytes, *, anonymize: bool = False) -> ObjectResult:
    """Everything one object yields: its events, and what was skipped and why."""
    result = ObjectResult(source.key)
    records, bad = split_records(body)
    for position, reason in bad:
        result.malformed.append(Rejection(source.key, position, "malformed", reason))
    repairs = Repairs()
    for position, record in records:
        outcome = map_record(record, source, position, repairs, anonymize=anonymize)
        if isinstance(outcome, Rejection):
            result.invalid.append(outcome)
        else:
            result.events.append(outcome)
    result.sanitised = repairs.sanitised
    result.truncated = repairs.truncated
    return result
