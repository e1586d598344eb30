"""The benchmark's hours: real-shaped events from `tools.demo.traffic.generate_hour`, ~1% malformed.

`generate_hour` makes what the real tracker and ingest Lambda write (one event per object,
compact JSON, the `_ingest` block), the same shapes the tests and the demo load; objects
average ~790 B, within the 0.6-1.1 kB real objects have. Deterministic: the parent process
writes these bytes into s3rver and the case processes regenerate the very same bytes when they
need pre-fetched bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from loader.window import hour_prefix
from tools.demo.traffic import generate_hour

BUCKET = "clickstream-bench"
MALFORMED_RATIO = 0.01
#: One hour per size, so every size lists its own prefix in the same bucket.
HOURS = {5_000: 5, 20_000: 6, 100_000: 7}


@dataclass(frozen=True, slots=True)
class HourSpec:
    size: int
    hour: datetime
    prefix: str

    @property
    def label(self) -> str:
        return f"{self.size // 1000}k" if self.size % 1000 == 0 else str(self.size)


def hour_for(size: int) -> HourSpec:
    """The hour a size is generated into (sizes outside HOURS get an hour of their own)."""
    hour_of_day = HOURS.get(size, 8 + (size % 13))
    hour = datetime(2026, 11, 24, hour_of_day, tzinfo=UTC)
    return HourSpec(size, hour, hour_prefix(hour))


def objects(size: int) -> Iterator[tuple[str, bytes, str | None, str]]:
    """(key, body, content_encoding, expect) for every object of the size's hour, in key order
    of generation (not sorted). `expect` is "event" or "malformed"."""
    spec = hour_for(size)
    for obj in generate_hour(spec.hour, size, malformed_ratio=MALFORMED_RATIO, seed=size):
        yield obj.key, obj.body, obj.content_encoding, obj.expect


@dataclass(frozen=True, slots=True)
class HourSummary:
    objects: int
    events: int
    malformed: int
    bytes_total: int

    @property
    def mean_bytes(self) -> float:
        return self.bytes_total / self.objects if self.objects else 0.0


def summarize(items: list[tuple[str, bytes, str | None, str]]) -> HourSummary:
    events = sum(1 for item in items if item[3] == "event")
    return HourSummary(
        objects=len(items),
        events=events,
        malformed=len(items) - events,
        bytes_total=sum(len(item[1]) for item in items),
    )
