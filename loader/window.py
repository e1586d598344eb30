"""Which UTC hour a run loads, and the S3 prefix that hour lives under.

The hour comes from the trigger, never from the wall clock: an EventBridge event delivered late
or retried an hour later still loads the hour it was scheduled for.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

HOUR = timedelta(hours=1)
_HOUR_FORMAT = "%Y-%m-%dT%H"
_HOUR_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}$")


class TriggerError(ValueError):
    """The invocation event is not one the loader understands."""


@dataclass(frozen=True, slots=True)
class Shard:
    """One of `count` disjoint slices of an hour's keys (fan-out across invocations)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (1 <= self.count <= 4096) or not (0 <= self.index < self.count):
            raise TriggerError(
                f"shard must be {{'index': i, 'count': n}} with 0 <= i < n <= 4096, "
                f"got index={self.index} count={self.count}"
            )

    def label(self) -> str:
        return f"{self.index}/{self.count}"


def floor_hour(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def previous_hour(instant: datetime) -> datetime:
    """The last complete UTC hour at `instant`: a run at 14:05Z loads 13:00-14:00."""
    return floor_hour(instant) - HOUR


def hour_label(hour: datetime) -> str:
    return hour.astimezone(UTC).strftime(_HOUR_FORMAT)


def hour_prefix(hour: datetime, events_prefix: str = "events/") -> str:
    """`events/YYYY/MM/DD/HH/`: where the ingest Lambda writes that hour's objects."""
    return f"{events_prefix}{hour.astimezone(UTC):%Y/%m/%d/%H}/"


def hour_of_key(key: str, events_prefix: str = "events/") -> datetime | None:
    """The hour whose prefix (`hour_prefix`) holds `key`; None for a key outside that layout."""
    rest = key[len(events_prefix) :] if key.startswith(events_prefix) else ""
    if len(rest) < 14 or rest[13] != "/":
        return None
    try:
        return datetime.strptime(rest[:13], "%Y/%m/%d/%H").replace(tzinfo=UTC)
    except ValueError:
        return None


def parse_hour(value: str) -> datetime:
    """`YYYY-MM-DDTHH`, or any ISO-8601 instant (floored to its hour; no offset means UTC)."""
    text = value.strip()
    try:
        if _HOUR_ONLY.match(text):
            return datetime.strptime(text, _HOUR_FORMAT).replace(tzinfo=UTC)
        instant = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TriggerError(
            f"hour must look like 2026-11-24T13 or an ISO-8601 timestamp, got {value!r}"
        ) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return floor_hour(instant)


def hours_between(start: datetime, end: datetime) -> Iterator[datetime]:
    """Every hour from `start` to `end`, both included, in order."""
    hour = floor_hour(start)
    last = floor_hour(end)
    while hour <= last:
        yield hour
        hour += HOUR


def is_scheduled_event(event: Mapping[str, Any]) -> bool:
    return event.get("detail-type") == "Scheduled Event" or event.get("source") == "aws.events"


def parse_shard(raw: Any) -> Shard | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise TriggerError(f"shard must be an object {{'index': i, 'count': n}}, got {raw!r}")
    try:
        index, count = int(raw["index"]), int(raw["count"])
    except (KeyError, TypeError, ValueError):
        raise TriggerError(f"shard must be {{'index': i, 'count': n}}, got {raw!r}") from None
    return Shard(index=index, count=count)


@dataclass(frozen=True, slots=True)
class Trigger:
    """What an invocation asks for: the hour, why it runs, and optionally one shard of it."""

    hour: datetime
    kind: str
    shard: Shard | None = None


def parse_trigger(event: Any) -> Trigger:
    """EventBridge scheduled event → previous hour of its `time`; `{"hour": ...}` → that hour."""
    if not isinstance(event, Mapping):
        raise TriggerError(
            "expected an EventBridge scheduled event or {'hour': 'YYYY-MM-DDTHH'}, "
            f"got {type(event).__name__}"
        )
    shard = parse_shard(event.get("shard"))
    if "hour" in event:
        if not isinstance(event["hour"], str):
            raise TriggerError(f"hour must be a string like 2026-11-24T13, got {event['hour']!r}")
        return Trigger(parse_hour(event["hour"]), "manual", shard)
    if is_scheduled_event(event):
        time = event.get("time")
        if not isinstance(time, str):
            raise TriggerError("scheduled event has no 'time' field (ISO-8601 expected)")
        try:
            instant = datetime.fromisoformat(time.replace("Z", "+00:00"))
        except ValueError:
            raise TriggerError(f"scheduled event 'time' is not ISO-8601: {time!r}") from None
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        return Trigger(previous_hour(instant), "schedule", shard)
    raise TriggerError(
        "expected an EventBridge scheduled event (detail-type 'Scheduled Event' with 'time') "
        "or a manual {'hour': 'YYYY-MM-DDTHH'}; got keys "
        f"{sorted(str(k) for k in event)[:10]}"
    )
