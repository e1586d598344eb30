"""SQS batches of S3 object-created notifications → the objects they name (pure).

Foundation, like loader/window.py (which turns the other triggers into hours): it reads the
shapes a trigger arrives in and knows no stage; loader/pipeline/notified.py loads what it names.

The near-real-time path's input. Lambda's SQS event source mapping delivers a batch of
messages; each body is one of two shapes, depending on how the bucket was wired to the queue:
- an S3 event notification (bucket notification → SQS): `Records[].s3.bucket.name` and
  `.object.key`, the key URL-encoded as in a form (`+` for a space, `%2F` for `/` on some
  servers); S3 first sends an `s3:TestEvent` when the configuration is saved;
- an EventBridge "Object Created" event (EventBridge rule → SQS target): `detail.bucket.name`
  and `detail.object.key`, the key as it is (EventBridge does not encode it, so decoding it would
  turn a real `+` into a space).

Everything a message says is either an object to load or a reason to ignore it, and each
message keeps its id, because the partial-batch response answers per message. Nothing here
raises on a bad body: an unreadable message is ignored and reported like any other, since
redelivering it can never make it readable (and the hourly sweep loads whatever it named).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import unquote_plus

from loader.window import hour_of_key

#: Why a notification was not loaded. All are terminal: redelivery would not change them.
IGNORE_REASONS: Final = (
    "test_event",  # S3's s3:TestEvent, sent when a notification configuration is saved
    "not_object_created",  # a removal, restore, tagging ... event
    "unrecognised",  # not JSON, or neither shape, or a field missing
    "other_bucket",  # not RAW_BUCKET_NAME
    "outside_prefix",  # not under EVENTS_PREFIX
    "not_an_hour_folder",  # under EVENTS_PREFIX but not in a YYYY/MM/DD/HH/ folder
    "directory_marker",  # a zero-byte `…/` folder object, never an event
)


#: S3 names its records `ObjectCreated:Put`, `…:Post`, `…:Copy`, `…:CompleteMultipartUpload`.
_CREATED: Final = ("ObjectCreated:", "s3:ObjectCreated:")


@dataclass(frozen=True, slots=True)
class ObjectNotice:
    """One object a notification says was created."""

    bucket: str
    key: str
    size: int
    #: When S3 says it created the object (S3's eventTime, EventBridge's time).
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Ignored:
    """A notification (or one record of it) that names nothing to load, and why."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Message:
    """One SQS message of the batch: what it names and what it said that is not loaded."""

    message_id: str
    objects: tuple[ObjectNotice, ...] = ()
    ignored: tuple[Ignored, ...] = ()


@dataclass(frozen=True, slots=True)
class Wanted:
    """An object to load, with the UTC hour its key's folder names."""

    notice: ObjectNotice
    hour: datetime


@dataclass(frozen=True)
class BatchPlan:
    """The batch reduced to what to load: per message the keys it waits for, per key the newest
    notice, per hour its keys; and everything ignored, with its message."""

    message_keys: dict[str, frozenset[str]]
    wanted: dict[str, Wanted]
    ignored: list[tuple[str, Ignored]] = field(default_factory=list)

    def hours(self) -> dict[datetime, list[Wanted]]:
        """The wanted objects by hour, each hour's in key order (the order a listing has)."""
        by_hour: dict[datetime, list[Wanted]] = {}
        for key in sorted(self.wanted):
            wanted = self.wanted[key]
            by_hour.setdefault(wanted.hour, []).append(wanted)
        return dict(sorted(by_hour.items()))


def is_sqs_event(event: Any) -> bool:
    """A Lambda SQS event source mapping batch: `Records` whose records come from `aws:sqs`."""
    if not isinstance(event, Mapping):
        return False
    records = event.get("Records")
    return (
        isinstance(records, list)
        and bool(records)
        and all(isinstance(r, Mapping) and r.get("eventSource") == "aws:sqs" for r in records)
    )


def parse_sqs_event(event: Mapping[str, Any]) -> list[Message]:
    """Every message of the batch, in order; a record without a message id cannot be answered
    for, so Lambda never sends one and it is an error here."""
    messages = []
    for record in event["Records"]:
        message_id = record.get("messageId")
        if not isinstance(message_id, str) or not message_id:
            raise ValueError("an SQS record has no messageId: not a Lambda SQS batch")
        objects, ignored = parse_body(record.get("body"))
        messages.append(Message(message_id, tuple(objects), tuple(ignored)))
    return messages


def parse_body(body: Any) -> tuple[list[ObjectNotice], list[Ignored]]:
    """One message body: an S3 event notification or an EventBridge S3 event."""
    if not isinstance(body, str):
        return [], [Ignored("unrecognised", "message body is not a string")]
    try:
        document = json.loads(body)
    except ValueError:
        return [], [Ignored("unrecognised", "message body is not JSON")]
    if not isinstance(document, dict):
        return [], [Ignored("unrecognised", "message body is not a JSON object")]
    if document.get("Event") == "s3:TestEvent":
        return [], [Ignored("test_event", f"s3:TestEvent for {document.get('Bucket')!s:.200}")]
    if isinstance(document.get("Records"), list):
        return _s3_records(document["Records"])
    if document.get("source") == "aws.s3" and "detail" in document:
        return _eventbridge(document)
    keys = ", ".join(sorted(str(k) for k in document)[:8])
    return [], [Ignored("unrecognised", f"neither an S3 nor an EventBridge event (keys: {keys})")]


def _s3_records(records: list[Any]) -> tuple[list[ObjectNotice], list[Ignored]]:
    objects: list[ObjectNotice] = []
    ignored: list[Ignored] = []
    for record in records:
        if not isinstance(record, dict):
            ignored.append(Ignored("unrecognised", "an S3 record is not an object"))
            continue
        name = record.get("eventName")
        if not isinstance(name, str) or not name.startswith(_CREATED):
            ignored.append(Ignored("not_object_created", f"S3 event {name!s:.100}"))
            continue
        s3 = record.get("s3") if isinstance(record.get("s3"), dict) else {}
        notice = _notice(
            _get(s3, "bucket", "name"),
            _get(s3, "object", "key"),
            _get(s3, "object", "size"),
            record.get("eventTime"),
            decode=True,
        )
        if isinstance(notice, Ignored):
            ignored.append(notice)
        else:
            objects.append(notice)
    return objects, ignored


def _eventbridge(event: dict[str, Any]) -> tuple[list[ObjectNotice], list[Ignored]]:
    kind = event.get("detail-type")
    if kind != "Object Created":
        return [], [Ignored("not_object_created", f"EventBridge {kind!s:.100}")]
    detail = event["detail"] if isinstance(event["detail"], dict) else {}
    notice = _notice(
        _get(detail, "bucket", "name"),
        _get(detail, "object", "key"),
        _get(detail, "object", "size"),
        event.get("time"),
        decode=False,
    )
    return ([], [notice]) if isinstance(notice, Ignored) else ([notice], [])


def _get(document: Any, *path: str) -> Any:
    value: Any = document
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    return value


def _notice(bucket: Any, key: Any, size: Any, when: Any, *, decode: bool) -> ObjectNotice | Ignored:
    if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
        return Ignored("unrecognised", "no bucket name or object key")
    if decode:
        key = unquote_plus(key)
    created_at = parse_event_time(when)
    if created_at is None:
        return Ignored("unrecognised", f"no usable event time for s3://{bucket}/{key:.300}")
    if isinstance(size, bool) or not isinstance(size, int | float) or not math.isfinite(size):
        size = 0  # a removal has none; the GET checks the real length against the cap anyway
    return ObjectNotice(bucket, key, max(int(size), 0), created_at)


def parse_event_time(value: Any) -> datetime | None:
    """An ISO-8601 instant (S3's `2026-11-24T13:07:12.345Z`, EventBridge's `…:12Z`), in UTC."""
    if not isinstance(value, str):
        return None
    try:
        instant = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)


def classify(notice: ObjectNotice, bucket: str, events_prefix: str) -> Wanted | Ignored:
    """Load only objects of RAW_BUCKET_NAME under EVENTS_PREFIX, in an hour folder."""
    where = f"s3://{notice.bucket}/{notice.key}"[:500]
    if notice.bucket != bucket:
        return Ignored("other_bucket", where)
    if not notice.key.startswith(events_prefix):
        return Ignored("outside_prefix", where)
    if notice.key.endswith("/") and notice.size == 0:
        return Ignored("directory_marker", where)
    # The hourly run lists exactly these folders, so no other key is ever loaded by it either.
    hour = hour_of_key(notice.key, events_prefix)
    if hour is None:
        return Ignored("not_an_hour_folder", where)
    return Wanted(notice, hour)


def plan_batch(messages: Sequence[Message], bucket: str, events_prefix: str) -> BatchPlan:
    """What to load for the batch. A key named by several messages (S3 delivers at least once,
    and an overwritten key is notified again) is loaded once, with its newest notice."""
    message_keys: dict[str, frozenset[str]] = {}
    wanted: dict[str, Wanted] = {}
    ignored: list[tuple[str, Ignored]] = []
    for message in messages:
        keys: set[str] = set()
        ignored.extend((message.message_id, item) for item in message.ignored)
        for notice in message.objects:
            choice = classify(notice, bucket, events_prefix)
            if isinstance(choice, Ignored):
                ignored.append((message.message_id, choice))
                continue
            keys.add(notice.key)
            seen = wanted.get(notice.key)
            if seen is None or notice.created_at >= seen.notice.created_at:
                wanted[notice.key] = choice
        message_keys[message.message_id] = frozenset(keys)
    return BatchPlan(message_keys, wanted, ignored)


def percentile(values: Iterable[float], fraction: float) -> float | None:
    """Nearest-rank percentile (`fraction` 0.5 for p50): a value that occurred, never one
    interpolated between two, and defined for a single value."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[min(rank, len(ordered)) - 1]
