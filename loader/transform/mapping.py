"""Raw S3 object → warehouse rows: which payload field lands in which column. Pure: no I/O, no
clock, no randomness.

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

from loader.common import EventRecord, Rejection, SourceObject
from loader.transform.caps import TEXT_CAPS
from loader.transform.coerce import (
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
from loader.transform.parse import parse_body
from loader.transform.pseudonymise import pseudonymised_ingest

#: Namespace of every uuid5 the loader derives: changing it would re-key history.
EVENT_ID_NAMESPACE: Final = uuid.UUID("6b1f3c1e-8f5d-5a4e-9c37-2d0f6a1b7e42")
_KEY_UUID = re.compile(
    r"event-([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\.json"
)

# Spellings. The real tracker sends camelCase (`eventName`, `userId`, ...); the original ETL also
# read snake_case, so older or hand-made payloads use it. One precedence rule for every field:
# the spellings are tried in the order listed and the first one present with a non-null value
# wins. The tracker's own name is always listed first.
Spellings = tuple[str, ...]

#: The payload's event id (its own usability rule: see `payload_event_id`).
ID_FIELDS: Final[Spellings] = ("eventId", "event_id", "id")
EVENT_NAME_FIELDS: Final[Spellings] = ("eventName", "event_name")
#: The client clock. The real tracker sends none; the original ETL read the two long forms.
TIMESTAMP_FIELDS: Final[Spellings] = ("timestamp", "eventTimestamp", "event_timestamp")
FIRST_VISIT_FIELDS: Final[Spellings] = ("isFirstVisit", "is_first_visit")
PRODUCT_FIELDS: Final[Spellings] = ("product", "context_product")
ELEMENT_FIELDS: Final[Spellings] = ("element",)

#: events column → payload spellings, for the plain text columns.
TEXT_FIELDS: Final[dict[str, Spellings]] = {
    "page_url": ("pageUrl", "page_url"),
    "referrer": ("referrer",),
    "user_id": ("userId", "user_id"),
    "user_login_state": ("userLoginState", "user_login_state"),
    "identity_source": ("identitySource", "identity_source"),
    "client_id": ("clientId", "client_id"),
    "session_id": ("sessionId", "session_id"),
}
#: events column → spellings inside the product object.
PRODUCT_TEXT_FIELDS: Final[dict[str, Spellings]] = {
    "context_product_id": ("id", "product_id"),
    "context_product_name": ("name", "product_name"),
    "context_product_category": ("category", "product_category"),
    "context_product_brand": ("brand", "brandName", "product_brand"),
    "context_product_url_path": ("urlPath", "product_url_path"),
}
PRODUCT_PRICE_FIELDS: Final[dict[str, Spellings]] = {
    "context_product_price": ("price", "product_price"),
    "context_product_discount_price": ("discountPrice", "product_discount_price"),
}
_PRODUCT_SPELLINGS: Final = frozenset(
    name
    for names in (*PRODUCT_TEXT_FIELDS.values(), *PRODUCT_PRICE_FIELDS.values())
    for name in names
)
#: _ingest field → ingest_meta column (the ingest Lambda's own names; no other spelling exists).
INGEST_TEXT_FIELDS: Final = {
    "userAgent": "user_agent",
    "path": "path",
    "requestId": "request_id",
    "apiId": "api_id",
    "stage": "stage",
    "traceId": "trace_id",
}
#: (_ingest field, column, the column's cap), for `_meta_columns`.
_INGEST_TEXT_COLUMNS: Final = tuple(
    (name, column, TEXT_CAPS[column]) for name, column in INGEST_TEXT_FIELDS.items()
)
_NO_INGEST_TEXT: Final = dict.fromkeys(INGEST_TEXT_FIELDS.values())
#: The spellings after the tracker's own: a record holding none of them (every record the real
#: tracker sends) has one candidate per text column, and `_text_columns` reads it directly.
_LATER_TEXT_SPELLINGS: Final = frozenset(
    name for names in TEXT_FIELDS.values() for name in names[1:]
)
#: (column, the tracker's spelling, the column's cap) for that direct reading.
_TEXT_FIRST_SPELLINGS: Final = tuple(
    (column, names[0], TEXT_CAPS[column]) for column, names in TEXT_FIELDS.items()
)
#: Top-level fields consumed by a column, whichever spelling carried them. The id spellings are
#: not here: only the one used for event_id is consumed.
_MAPPED_TOP_LEVEL: Final = frozenset(
    {
        *EVENT_NAME_FIELDS,
        *TIMESTAMP_FIELDS,
        *FIRST_VISIT_FIELDS,
        *PRODUCT_FIELDS,
        *ELEMENT_FIELDS,
        "_ingest",
        *(name for names in TEXT_FIELDS.values() for name in names),
    }
)
#: Values no id is read from (a tuple: a `dict | list | bool` union is built on every call).
_NOT_AN_ID: Final = (dict, list, bool)
#: What the ingest Lambda stores for a POSTed array or string: its elements spread as "0", "1"...
_SPREAD_KEY = re.compile(r"\d+")


def pick(record: Mapping[str, Any], spellings: Spellings) -> tuple[str | None, Any]:
    """The first spelling present with a non-null value, and that value; (None, None) if none."""
    for name in spellings:
        value = record.get(name)
        if value is not None:
            return name, value
    return None, None


def _shadowed(
    record: Mapping[str, Any], spellings: Spellings, winner: str | None, leftovers: dict[str, Any]
) -> None:
    """Keep a losing spelling whose value differs from the winner's: nothing sent is lost, and a
    repeat of the same value under both names is not noise in `properties`."""
    if winner is None:
        return
    chosen = record[winner]
    for name in spellings:
        if name != winner and record.get(name) is not None and record[name] != chosen:
            leftovers[name] = record[name]


def _pick_keeping_losers(
    record: Mapping[str, Any], spellings: Spellings, leftovers: dict[str, Any]
) -> tuple[str | None, Any]:
    """`pick`, then `_shadowed` into `leftovers`, in one pass over the spellings (the transform
    does this for every field of every event)."""
    winner: str | None = None
    chosen: Any = None
    for name in spellings:
        value = record.get(name)
        if value is None:
            continue
        if winner is None:
            winner, chosen = name, value
        elif value != chosen:
            leftovers[name] = value
    return winner, chosen


@dataclass(slots=True)
class ObjectResult:
    key: str
    events: list[EventRecord] = field(default_factory=list)
    malformed: list[Rejection] = field(default_factory=list)
    invalid: list[Rejection] = field(default_factory=list)
    sanitised: int = 0
    truncated: int = 0


def payload_event_id(record: Mapping[str, Any]) -> tuple[str, uuid.UUID] | None:
    """The first usable id field of the payload and its UUID (uuid5 of any non-UUID string)."""
    for name in ID_FIELDS:
        raw = record.get(name)
        if raw is None or isinstance(raw, _NOT_AN_ID):
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
    """The payload's id (a UUID as is, other ids via uuid5), else the key's id. Never random."""
    from_payload = payload_event_id(record)
    return from_payload[1] if from_payload is not None else key_event_id(key, position)


def key_event_id(key: str, position: int) -> uuid.UUID:
    """The UUID in the key (uuid5 of it and the position for later NDJSON records), else uuid5 of
    key and position: an event without an id of its own gets the same id on every rerun."""
    match = _KEY_UUID.search(key.rsplit("/", 1)[-1])
    if match:
        key_uuid = uuid.UUID(match.group(1))
        return key_uuid if position == 0 else uuid.uuid5(key_uuid, str(position))
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"key:{key}#{position}")


def payload_digest(record: Mapping[str, Any]) -> bytes:
    """SHA-256 of the tracker's payload without `_ingest` (which differs per delivery), keys
    sorted: the same event sent twice hashes the same."""
    payload = dict(record)  # a C-level copy: ~4x a comprehension that skips the key
    payload.pop("_ingest", None)
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
    storable: bool = False,
    pseudonymise: bool = False,
) -> EventRecord | Rejection:
    """One JSON object → an EventRecord, or a Rejection when it has no usable event name.

    Values changed on the way (sanitised, truncated) are counted in `repairs`. `storable`: the
    parser vouches that `clean_json` would change nothing in `record` (`ParsedBody.storable`).
    `pseudonymise`: the user agent reduced to its families first (loader/transform/pseudonymise)."""
    if pseudonymise and isinstance(record.get("_ingest"), dict):
        record = {**record, "_ingest": pseudonymised_ingest(record["_ingest"])}
    record, ingest, odd_ingest = _cleaned(record, repairs, anonymize=anonymize, storable=storable)
    id_source = payload_event_id(record)
    event_id = id_source[1] if id_source else key_event_id(source.key, position)

    name_field, name = pick(record, EVENT_NAME_FIELDS)
    if not isinstance(name, str) or not name.strip():
        return Rejection(source.key, position, "invalid", _invalid_name_detail(record), event_id)

    # Every field not mapped to a column stays in properties, ids not used for event_id too.
    used_id_field = id_source[0] if id_source else None
    leftovers: dict[str, Any] = {
        k: v for k, v in record.items() if k not in _MAPPED_TOP_LEVEL and k != used_id_field
    }
    if odd_ingest:
        # The repaired value: the raw one may hold NUL, a lone surrogate or NaN, which jsonb
        # refuses.
        leftovers["_ingest"] = record.get("_ingest")
    _shadowed(record, EVENT_NAME_FIELDS, name_field, leftovers)
    received_at = to_instant(ingest.get("receivedAt")) if ingest else None
    event = _event_columns(record, event_id, name, source, received_at, leftovers, repairs)
    meta = _meta_columns(record, event_id, source, ingest, received_at, repairs)
    return EventRecord(
        event_id, source.key, position, event, meta, id_from_payload=id_source is not None
    )


def _cleaned(
    record: dict[str, Any], repairs: Repairs, *, anonymize: bool, storable: bool
) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
    """The record as stored: repaired (`clean_json`, unless already `storable`), its addresses
    truncated first when ANONYMIZE_IP is on. Returns it, its `_ingest` block when that is an
    object, and whether it holds an `_ingest` that is not one (kept in `properties`)."""
    raw_ingest = record.get("_ingest")
    ingest = raw_ingest if isinstance(raw_ingest, dict) else None
    if ingest is not None and anonymize:
        ingest = _anonymize_ingest(ingest)
        record = {**record, "_ingest": ingest}
    elif raw_ingest is not None and anonymize:
        # An `_ingest` that is not an object may still hold an address we cannot truncate.
        raw_ingest = None
        record = {k: v for k, v in record.items() if k != "_ingest"}
    if not storable:
        record = clean_json(record, repairs)
    ingest = record.get("_ingest") if ingest is not None else None
    return record, ingest, raw_ingest is not None and ingest is None


def _column_text(value: Any, cap: int, repairs: Repairs) -> str | None:
    """`to_text` for a value of the record `_cleaned` returned. Its strings are storable already
    (`clean_json` ran, or the parser vouched it would change nothing), so a string within its
    cap is the column's text as it is; anything else (too long, not a string) takes `to_text`'s
    rules, which cleaning an already clean string does not change."""
    if type(value) is str and len(value) <= cap:
        return value
    return to_text(value, cap, repairs)


def _event_columns(
    record: dict[str, Any],
    event_id: uuid.UUID,
    name: str,
    source: SourceObject,
    received_at: datetime | None,
    leftovers: dict[str, Any],
    repairs: Repairs,
) -> dict[str, Any]:
    """The clickstream_events row. What a column does not take goes to `leftovers`, which
    becomes `properties`: a losing spelling with another value, an original a coercion
    dropped."""
    event: dict[str, Any] = {
        "event_id": event_id,
        "event_name": _column_text(name.strip(), TEXT_CAPS["event_name"], repairs),
    }
    _text_columns(record, event, leftovers, repairs)
    field_name, raw = _pick_keeping_losers(record, FIRST_VISIT_FIELDS, leftovers)
    event["is_first_visit"] = first_visit = to_bool(raw)
    if first_visit is None and field_name is not None:
        leftovers[field_name] = raw
    _map_product(record, event, leftovers, repairs)

    element_field, element = pick(record, ELEMENT_FIELDS)
    event["element"] = element if isinstance(element, dict) else None
    if element_field is not None and not isinstance(element, dict):
        leftovers[element_field] = element

    field_name, raw = _pick_keeping_losers(record, TIMESTAMP_FIELDS, leftovers)
    event["client_timestamp"] = client_timestamp = to_instant(raw)
    if client_timestamp is None and field_name is not None:
        leftovers[field_name] = raw
    # Never NULL: LastModified is always sane for a real object; the epoch floor is the
    # last resort of a caller that passes none. `received_at` is sane already (to_instant's).
    event["event_timestamp"] = received_at or (
        first_instant(client_timestamp, source.last_modified) or _FALLBACK_INSTANT
    )
    event["properties"] = leftovers or None
    return event


def _text_columns(
    record: dict[str, Any], event: dict[str, Any], leftovers: dict[str, Any], repairs: Repairs
) -> None:
    """The plain text columns: the winning spelling's value as text; the original into
    `leftovers` when it is no text (an object, an array), and so is a losing spelling with
    another value. With no later spelling in the record, the tracker's is the only candidate:
    the same result, without trying every spelling of every column."""
    if _LATER_TEXT_SPELLINGS.isdisjoint(record):
        for column, name, cap in _TEXT_FIRST_SPELLINGS:
            raw = record.get(name)
            text = None if raw is None else _column_text(raw, cap, repairs)
            if text is None and raw is not None:
                leftovers[name] = raw
            event[column] = text
        return
    for column, spellings in TEXT_FIELDS.items():
        field_name, raw = _pick_keeping_losers(record, spellings, leftovers)
        text = _column_text(raw, TEXT_CAPS[column], repairs)
        if text is None and field_name is not None:
            leftovers[field_name] = raw
        event[column] = text


def _meta_columns(
    record: dict[str, Any],
    event_id: uuid.UUID,
    source: SourceObject,
    ingest: dict[str, Any] | None,
    received_at: datetime | None,
    repairs: Repairs,
) -> dict[str, Any]:
    """The clickstream_ingest_meta row: the `_ingest` block's fields, lineage, the digest."""
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
    if ingest:
        for ingest_field, column, cap in _INGEST_TEXT_COLUMNS:
            meta[column] = _column_text(ingest.get(ingest_field), cap, repairs)
    else:
        meta.update(_NO_INGEST_TEXT)
    return meta


def _map_product(
    record: dict[str, Any], event: dict[str, Any], leftovers: dict[str, Any], repairs: Repairs
) -> None:
    """The product columns, from `product` (or `context_product`) and its sub-field spellings.

    What the columns do not take stays in `properties` under the spelling it came with: unmapped
    sub-fields, originals a coercion dropped, and a losing spelling with a different value."""
    product_field, product = _pick_keeping_losers(record, PRODUCT_FIELDS, leftovers)
    if not isinstance(product, dict):
        for column in (*PRODUCT_TEXT_FIELDS, *PRODUCT_PRICE_FIELDS):
            event[column] = None
        if product_field is not None:
            leftovers[product_field] = product
        return
    extra: dict[str, Any] = {k: v for k, v in product.items() if k not in _PRODUCT_SPELLINGS}
    for column, spellings in PRODUCT_TEXT_FIELDS.items():
        field_name, raw = _pick_keeping_losers(product, spellings, extra)
        event[column] = _column_text(raw, TEXT_CAPS[column], repairs)
        if event[column] is None and field_name is not None:
            extra[field_name] = raw
    for column, spellings in PRODUCT_PRICE_FIELDS.items():
        field_name, raw = _pick_keeping_losers(product, spellings, extra)
        event[column] = to_price(raw)
        if event[column] is None and field_name is not None:
            extra[field_name] = raw
    if extra:
        assert product_field is not None
        leftovers[product_field] = extra


def _invalid_name_detail(record: Mapping[str, Any]) -> str:
    names = "/".join(EVENT_NAME_FIELDS)
    keys = [k for k in record if k != "_ingest"]
    if (keys and all(isinstance(k, str) and _SPREAD_KEY.fullmatch(k) for k in keys)) or not keys:
        return (
            f"no {names}: the body POSTed to the ingest API was not a JSON object (an array, "
            'string or null, which the ingest Lambda stores spread as {"0": ..., "_ingest": ...})'
        )
    return f"no usable {names} (missing, empty or not a string)"


_FALLBACK_INSTANT: Final = datetime(2000, 1, 1, tzinfo=UTC)


def transform_object(
    source: SourceObject, body: bytes, *, anonymize: bool = False, pseudonymise: bool = False
) -> ObjectResult:
    """Everything one object yields: its events, and what was skipped and why."""
    result = ObjectResult(source.key)
    parsed = parse_body(body)
    for position, reason in parsed.bad:
        result.malformed.append(Rejection(source.key, position, "malformed", reason))
    repairs = Repairs()
    for position, record in parsed.records:
        outcome = map_record(
            record,
            source,
            position,
            repairs,
            anonymize=anonymize,
            storable=parsed.storable,
            pseudonymise=pseudonymise,
        )
        if isinstance(outcome, Rejection):
            result.invalid.append(outcome)
        else:
            result.events.append(outcome)
    result.sanitised = repairs.sanitised
    result.truncated = repairs.truncated
    return result
