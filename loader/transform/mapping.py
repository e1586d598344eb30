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
from loader.transform.coerce import Repairs, anonymize_ip, clean_json, first_instant, to_ip
from loader.transform.fields import FIELDS, ID_FIELDS, INGEST, PRODUCT, PRODUCT_FIELDS, TOP, Field
from loader.transform.parse import parse_body
from loader.transform.pseudonymise import pseudonymised_ingest

#: Namespace of every uuid5 the loader derives: changing it would re-key history.
EVENT_ID_NAMESPACE: Final = uuid.UUID("6b1f3c1e-8f5d-5a4e-9c37-2d0f6a1b7e42")
_KEY_UUID = re.compile(
    r"event-([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\.json"
)

_EVENT_FIELDS: Final = tuple(f for f in FIELDS if f.within == TOP)
_PRODUCT_COLUMNS: Final = tuple(f for f in FIELDS if f.within == PRODUCT)
_INGEST_COLUMNS: Final = tuple(f for f in FIELDS if f.within == INGEST)
_PRODUCT_SPELLINGS: Final = frozenset(name for f in _PRODUCT_COLUMNS for name in f.spellings)
#: Top-level fields consumed by a column, whichever spelling carried them. The id spellings are
#: not here: only the one used for event_id is consumed.
_MAPPED_TOP_LEVEL: Final = frozenset(
    {INGEST, *PRODUCT_FIELDS, *(name for f in _EVENT_FIELDS for name in f.spellings)}
)
#: What the ingest Lambda stores for a POSTed array or string: its elements spread as "0", "1"...
_SPREAD_KEY = re.compile(r"\d+")


def pick(
    record: Mapping[str, Any], spellings: tuple[str, ...], leftovers: dict[str, Any]
) -> tuple[str | None, Any]:
    """The first spelling present with a non-null value, and that value ((None, None) if none).
    A losing spelling whose value differs from the winner's goes to `leftovers`: nothing sent
    is lost, and a repeat of the same value under both names is not noise in `properties`."""
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


def _map_field(
    spec: Field,
    record: Mapping[str, Any],
    row: dict[str, Any],
    leftovers: dict[str, Any],
    repairs: Repairs,
) -> None:
    """The field's column from `record`; what the column does not take goes to `leftovers`."""
    name, raw = pick(record, spec.spellings, leftovers)
    value = spec.convert(raw, spec.cap, repairs)
    if value is None and name is not None and not spec.required:
        leftovers[name] = raw
    row[spec.column] = value


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
    pseudonymise: bool = False,
) -> EventRecord | Rejection:
    """One JSON object → an EventRecord, or a Rejection when it has no usable event name.

    Values changed on the way (sanitised, truncated) are counted in `repairs`. `pseudonymise`:
    the user agent reduced to its families first (loader/transform/pseudonymise)."""
    if pseudonymise and isinstance(record.get("_ingest"), dict):
        record = {**record, "_ingest": pseudonymised_ingest(record["_ingest"])}
    record, ingest, odd_ingest = _cleaned(record, repairs, anonymize=anonymize)
    id_source = payload_event_id(record)
    event_id = id_source[1] if id_source else key_event_id(source.key, position)
    # Every field not mapped to a column stays in properties, ids not used for event_id too.
    used_id_field = id_source[0] if id_source else None
    leftovers: dict[str, Any] = {
        k: v for k, v in record.items() if k not in _MAPPED_TOP_LEVEL and k != used_id_field
    }
    if odd_ingest:
        # The repaired value: the raw one may hold NUL, a lone surrogate or NaN, which jsonb
        # refuses.
        leftovers[INGEST] = record.get(INGEST)
    event: dict[str, Any] = {"event_id": event_id}
    for spec in _EVENT_FIELDS:
        _map_field(spec, record, event, leftovers, repairs)
        if spec.required and event[spec.column] is None:
            detail = _invalid_name_detail(record, spec)
            return Rejection(source.key, position, "invalid", detail, event_id)
    _map_product(record, event, leftovers, repairs)
    meta = _meta_columns(record, event_id, source, ingest, repairs)
    # Never NULL: LastModified is always sane for a real object; the epoch floor is the last
    # resort of a caller that passes none. `received_at` is sane already (to_instant's).
    event["event_timestamp"] = meta["received_at"] or (
        first_instant(event["client_timestamp"], source.last_modified) or _FALLBACK_INSTANT
    )
    event["properties"] = leftovers or None
    return EventRecord(
        event_id, source.key, position, event, meta, id_from_payload=id_source is not None
    )


def _cleaned(
    record: dict[str, Any], repairs: Repairs, *, anonymize: bool
) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
    """The record as stored: repaired (`clean_json`), its addresses truncated first when
    ANONYMIZE_IP is on. Returns it, its `_ingest` block when that is an object, and whether it
    holds an `_ingest` that is not one (kept in `properties`)."""
    raw_ingest = record.get(INGEST)
    ingest = raw_ingest if isinstance(raw_ingest, dict) else None
    if ingest is not None and anonymize:
        ingest = _anonymize_ingest(ingest)
        record = {**record, INGEST: ingest}
    elif raw_ingest is not None and anonymize:
        # An `_ingest` that is not an object may still hold an address we cannot truncate.
        raw_ingest = None
        record = {k: v for k, v in record.items() if k != INGEST}
    record = clean_json(record, repairs)
    ingest = record.get(INGEST) if ingest is not None else None
    return record, ingest, raw_ingest is not None and ingest is None


def _meta_columns(
    record: dict[str, Any],
    event_id: uuid.UUID,
    source: SourceObject,
    ingest: dict[str, Any] | None,
    repairs: Repairs,
) -> dict[str, Any]:
    """The clickstream_ingest_meta row: the `_ingest` block's fields, lineage, the digest. The
    block is kept whole in `ingest_metadata`, so nothing of it goes to `properties`."""
    meta: dict[str, Any] = {
        "event_id": event_id,
        "s3_bucket": source.bucket,
        "s3_key": source.key,
        "s3_last_modified": source.last_modified,
        "ingest_metadata": ingest,
        "payload_sha256": payload_digest(record),
    }
    for spec in _INGEST_COLUMNS:
        _map_field(spec, ingest or {}, meta, {}, repairs)
    return meta


def _map_product(
    record: dict[str, Any], event: dict[str, Any], leftovers: dict[str, Any], repairs: Repairs
) -> None:
    """The product columns, from `product` (or `context_product`) and its sub-field spellings.

    What the columns do not take stays in `properties` under the spelling it came with: unmapped
    sub-fields, originals a coercion dropped, and a losing spelling with a different value."""
    product_field, product = pick(record, PRODUCT_FIELDS, leftovers)
    if not isinstance(product, dict):
        for spec in _PRODUCT_COLUMNS:
            event[spec.column] = None
        if product_field is not None:
            leftovers[product_field] = product
        return
    extra: dict[str, Any] = {k: v for k, v in product.items() if k not in _PRODUCT_SPELLINGS}
    for spec in _PRODUCT_COLUMNS:
        _map_field(spec, product, event, extra, repairs)
    if extra:
        assert product_field is not None
        leftovers[product_field] = extra


def _invalid_name_detail(record: Mapping[str, Any], field: Field) -> str:
    names = "/".join(field.spellings)
    keys = [k for k in record if k != INGEST]
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
            record, source, position, repairs, anonymize=anonymize, pseudonymise=pseudonymise
        )
        if isinstance(outcome, Rejection):
            result.invalid.append(outcome)
        else:
            result.events.append(outcome)
    result.sanitised = repairs.sanitised
    result.truncated = repairs.truncated
    return result
