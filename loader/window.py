"""Which UTC hour a run loads, and the S3 prefix that hour lives under.

The hour comes from the trigger, never from the wall clock: an EventBridge event delivered late
or retried an hour later still loads the hour it was scheduled for. The one exception is the
original ETL's `hoursBack`, which operators' runbooks define relative to "now"; the clock is a
parameter here, so parsing stays a pure function.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from loader.errors import TerminalError
from loader.schema import TriggerKind

HOUR = timedelta(hours=1)
_HOUR_FORMAT = "%Y-%m-%dT%H"
_HOUR_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}$")
_DATE_ONLY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DIGITS = re.compile(r"[0-9]+")
#: Epoch values from here up are milliseconds: 1e11 s is the year 5138, 1e11 ms is March 1973.
_EPOCH_MS_FROM = 10**11
#: hoursBack beyond a year is a typo (or an epoch in the wrong field); backfill is for that.
MAX_HOURS_BACK = 24 * 366
#: The payload keys that choose the hour; a payload names at most one of them.
HOUR_KEYS = ("hour", "targetUtcHour", "targetUtcDate", "hoursBack", "overridePrefix")
_ACCEPTED = (
    "an EventBridge scheduled event (detail-type 'Scheduled Event' with 'time'), "
    "a manual {'hour': 'YYYY-MM-DDTHH'}, or one of the original ETL's "
    "{'targetUtcHour': ISO-8601 or epoch s/ms}, {'targetUtcDate': 'YYYY-MM-DD'}, "
    "{'hoursBack': N, 'scope': 'hour'|'day'}, {'overridePrefix': '<EVENTS_PREFIX>YYYY/MM/DD[/HH]/'}"
)


class TriggerError(TerminalError):
    """The invocation event is not one the loader understands."""


#: How a shard's keys are chosen (the payload's `by`). `range`, what `plan` hands out: shard i of
#: n owns one slice of the hour's key order and lists only that slice. `crc32`: every shard lists
#: the whole hour and keeps the keys with crc32(key) % n == i; what a shard payload without `by`
#: means, because the plans and ledger rows written before range shards mean that.
SHARD_SCHEMES = ("range", "crc32")
#: The ingest Lambda's keys are `event-<uuid4>.json` with a lowercase uuid: after this stem the
#: next 8 hex digits are uniform, and lowercase hex sorts as it counts ('0' < '9' < 'a' < 'f').
_RANGE_STEM = "event-"
_RANGE_DIGITS = 8


@dataclass(frozen=True, slots=True)
class Shard:
    """One of `count` disjoint slices of an hour's keys (fan-out across invocations).

    A range shard owns the keys k with `after < k <= last` (see `bounds`): n - 1 ascending
    boundaries cut the whole string order into n intervals, so any key, a UUID or not, falls in
    exactly one. The boundaries are ASCII, and against an ASCII string Python's code-point order,
    S3's UTF-8 byte order and UTF-16 order (JavaScript servers) all agree, so the slice a shard
    lists is the slice it owns whatever the server's order for non-ASCII keys."""

    index: int
    count: int
    #: A shard that names no scheme is a crc32 one, as in a payload (see `parse_shard`).
    by: str = "crc32"

    def __post_init__(self) -> None:
        if not (1 <= self.count <= 4096) or not (0 <= self.index < self.count):
            raise TriggerError(
                f"shard must be {{'index': i, 'count': n}} with 0 <= i < n <= 4096, "
                f"got index={self.index} count={self.count}"
            )
        if self.by not in SHARD_SCHEMES:
            raise TriggerError(f"shard 'by' must be one of {SHARD_SCHEMES}, got {self.by!r}")

    def label(self) -> str:
        """The ledger's and the hour lock's name for the shard. crc32 shards keep the `i/n` of
        the rows written before range shards existed; a range shard is `i/n range`, so a
        finalize never mixes runs of the two kinds (they own different keys)."""
        plain = f"{self.index}/{self.count}"
        return plain if self.by == "crc32" else f"{plain} range"

    def as_payload(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "by": self.by}

    def bounds(self, prefix: str) -> tuple[str | None, str | None]:
        """`(after, last)`: a range shard of the hour under `prefix` owns the keys strictly after
        `after` (S3's StartAfter) up to and including `last` (None: unbounded). A crc32 shard
        lists everything: (None, None)."""
        if self.by == "crc32":
            return None, None
        return _range_boundary(prefix, self.index, self.count), _range_boundary(
            prefix, self.index + 1, self.count
        )

    def owns(self, key: str, prefix: str) -> bool:
        """Whether `key` (listed under `prefix`) is this shard's."""
        if self.by == "crc32":
            return zlib.crc32(key.encode("utf-8", "surrogatepass")) % self.count == self.index
        after, last = self.bounds(prefix)
        return (after is None or key > after) and (last is None or key <= last)


def _range_boundary(prefix: str, cut: int, count: int) -> str | None:
    """The key between slice `cut - 1` and slice `cut`; None at either end of the order.

    `prefix + "event-" + 8 hex digits`, with no uuid after it: a key whose uuid starts with
    those digits sorts after it and so begins the next slice. Splitting the first 32 bits of
    the uuid evenly gives each shard 1/n of the uuid keys (give or take one 2^-32)."""
    if cut <= 0 or cut >= count:
        return None
    digits = cut * 16**_RANGE_DIGITS // count
    return f"{prefix}{_RANGE_STEM}{digits:0{_RANGE_DIGITS}x}"


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
    """`{"index": i, "count": n, "by": "range"}` (what `plan` hands out). Without `by` the
    shard is a crc32 one: the plan of a fan-out started before range shards, still running
    while the new code deploys, hands out such items, and so may an operator's runbook."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise TriggerError(f"shard must be an object {{'index': i, 'count': n}}, got {raw!r}")
    try:
        index, count = int(raw["index"]), int(raw["count"])
    except (KeyError, TypeError, ValueError):
        raise TriggerError(f"shard must be {{'index': i, 'count': n}}, got {raw!r}") from None
    return Shard(index=index, count=count, by=raw.get("by", "crc32"))


@dataclass(frozen=True, slots=True)
class Trigger:
    """What an invocation asks for: the hour, why it runs, and optionally one shard of it.

    A payload naming a whole UTC day sets `day`; `hours` then holds its hours that have begun,
    each loaded and ledgered as its own run, and `hour` is the first of them.
    """

    hour: datetime
    kind: TriggerKind
    shard: Shard | None = None
    day: date | None = None
    hours: tuple[datetime, ...] = ()

    def __post_init__(self) -> None:
        if not self.hours:
            object.__setattr__(self, "hours", (self.hour,))

    def future_hours(self) -> list[datetime]:
        """The hours of `day` left out because they had not begun when the run was asked for."""
        if self.day is None:
            return []
        return [h for h in day_hours(self.day) if h > self.hours[-1]]


def day_hours(day: date) -> list[datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return [start + HOUR * i for i in range(24)]


def parse_trigger(
    event: Any, *, events_prefix: str = "events/", now: datetime | None = None
) -> Trigger:
    """EventBridge scheduled event → previous hour of its `time`; `{"hour": ...}` → that hour;
    the original ETL's manual payloads → the hour or day they name (see `_parse_etl_payload`).

    `now` (default: the wall clock) is read only by the ETL payloads: `hoursBack` counts from it,
    and hours that have not begun yet are never loaded.
    """
    if not isinstance(event, Mapping):
        raise TriggerError(
            "expected an EventBridge scheduled event or {'hour': 'YYYY-MM-DDTHH'} "
            f"(or an original ETL payload), got {type(event).__name__}"
        )
    shard = parse_shard(event.get("shard"))
    chosen = [key for key in HOUR_KEYS if key in event]
    if len(chosen) > 1:
        # The original ETL silently takes the first in its own order; a runbook that names two
        # hours gets one of them loaded and the other silently not, so refuse instead.
        raise TriggerError(
            f"give only one of {', '.join(HOUR_KEYS)}; this payload has {', '.join(chosen)}"
        )
    if "scope" in event and chosen not in ([], ["hoursBack"]):
        raise TriggerError(
            f"scope applies only to hoursBack, not to {chosen[0]}: for a whole day use "
            "{'targetUtcDate': 'YYYY-MM-DD'}"
        )
    if "hour" in event:
        if not isinstance(event["hour"], str):
            raise TriggerError(f"hour must be a string like 2026-11-24T13, got {event['hour']!r}")
        return Trigger(parse_hour(event["hour"]), TriggerKind.MANUAL, shard)
    if chosen or "scope" in event:
        key = chosen[0] if chosen else "hoursBack"
        current = floor_hour(now if now is not None else datetime.now(UTC))
        return _parse_etl_payload(event, key, shard, events_prefix, current)
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
        return Trigger(previous_hour(instant), TriggerKind.SCHEDULE, shard)
    raise TriggerError(f"expected {_ACCEPTED}; got keys {sorted(str(k) for k in event)[:10]}")


def _parse_etl_payload(
    event: Mapping[str, Any], key: str, shard: Shard | None, events_prefix: str, current: datetime
) -> Trigger:
    """The original ETL's manual payloads, with its semantics where they are sound: an ISO or
    epoch `targetUtcHour`, a `targetUtcDate` day, `hoursBack` from the current hour (default 1
    when only `scope` is given, as there) with `scope` "day" widening to that hour's day, and an
    `overridePrefix` that must name an hour or day folder. Unlike there, a day is loaded hour by
    hour (each its own ledger run), and hours after `current` are never loaded."""
    if key == "targetUtcHour":
        return _single_hour(key, parse_instant(event[key], key), current, shard)
    if key == "targetUtcDate":
        return _whole_day(key, parse_date(event[key]), current, shard)
    if key == "overridePrefix":
        hour, is_day = parse_override_prefix(event[key], events_prefix)
        if is_day:
            return _whole_day(key, hour.date(), current, shard)
        return _single_hour(key, hour, current, shard)
    back = parse_hours_back(event.get("hoursBack", 1))
    hour = current - HOUR * back
    scope = event.get("scope", "hour")
    if scope == "day":
        return _whole_day("hoursBack", hour.date(), current, shard)
    if scope != "hour":
        raise TriggerError(f"scope must be 'hour' or 'day', got {scope!r}")
    return Trigger(hour, TriggerKind.MANUAL, shard)


def _single_hour(key: str, hour: datetime, current: datetime, shard: Shard | None) -> Trigger:
    if hour > current:
        raise TriggerError(
            f"{key} names {hour_label(hour)}, which has not begun yet (now {hour_label(current)})"
        )
    return Trigger(hour, TriggerKind.MANUAL, shard)


def _whole_day(key: str, day: date, current: datetime, shard: Shard | None) -> Trigger:
    hours = tuple(h for h in day_hours(day) if h <= current)
    if not hours:
        raise TriggerError(
            f"{key} names {day.isoformat()}, which has not begun yet (now {hour_label(current)})"
        )
    return Trigger(hours[0], TriggerKind.MANUAL, shard, day=day, hours=hours)


def parse_instant(value: Any, key: str = "targetUtcHour") -> datetime:
    """An ISO-8601 string, or epoch seconds or milliseconds (a number or a string of digits;
    the unit is told by magnitude), floored to its UTC hour."""
    expected = (
        f"{key} must be an ISO-8601 timestamp like 2026-11-24T13:00:00Z, or epoch seconds or "
        f"milliseconds, got {value!r}"
    )
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TriggerError(expected)
    if isinstance(value, str):
        try:
            return parse_hour(value)
        except TriggerError:
            raise TriggerError(expected) from None
    if not math.isfinite(value) or value <= 0:
        raise TriggerError(expected)
    seconds = value / 1000 if value >= _EPOCH_MS_FROM else value
    try:
        return floor_hour(datetime.fromtimestamp(seconds, UTC))
    except (OverflowError, OSError, ValueError):
        raise TriggerError(expected) from None


def parse_date(value: Any) -> date:
    """`YYYY-MM-DD`, read as a UTC day. Nothing else: a timestamp with an offset would leave
    the operator guessing which UTC day it meant."""
    if isinstance(value, str) and _DATE_ONLY.fullmatch(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise TriggerError(f"targetUtcDate must be a UTC date like 2026-11-24, got {value!r}")


def parse_hours_back(value: Any) -> int:
    """A whole number of hours, 0 (the current hour) to MAX_HOURS_BACK; digits in a string are
    accepted too, as the original ETL's `Number()` does."""
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_HOURS_BACK:
        raise TriggerError(
            f"hoursBack must be a whole number of hours from 0 (the current hour) to "
            f"{MAX_HOURS_BACK} (366 days), got {value!r}"
        )
    return value


def parse_override_prefix(value: Any, events_prefix: str = "events/") -> tuple[datetime, bool]:
    """`<events_prefix>YYYY/MM/DD/HH/` (an hour) or `<events_prefix>YYYY/MM/DD/` (a day), the
    trailing slash optional; returns the hour (or the day's first hour) and whether it is a day.
    Anything else is refused before a single S3 call: the ETL listed whatever it was given."""
    expected = (
        f"overridePrefix must name an hour folder '{events_prefix}YYYY/MM/DD/HH/' or a day "
        f"folder '{events_prefix}YYYY/MM/DD/' under EVENTS_PREFIX, got {value!r}"
    )
    pattern = re.escape(events_prefix) + r"([0-9]{4})/([0-9]{2})/([0-9]{2})(?:/([0-9]{2}))?/?"
    match = re.fullmatch(pattern, value) if isinstance(value, str) else None
    if match is None:
        raise TriggerError(expected)
    year, month, day, hour = match.groups()
    try:
        start = datetime(int(year), int(month), int(day), int(hour or 0), tzinfo=UTC)
    except ValueError:
        raise TriggerError(expected) from None
    return start, hour is None
