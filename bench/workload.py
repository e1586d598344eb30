"""The benchmark's hours: realistic events from `loader.demo.generate_hour`, ~850 B, ~1% malformed.

`generate_hour` makes the shapes the tests and the demo use (page views with products, clicks
with elements and string prices, custom events with epoch timestamps, 1% malformed bodies); its
events average ~730 B. Real tracker events carry a little more client context, so each valid
event gets a deterministic `context` block (locale, screen, UTM tags: unmapped fields,
which the loader keeps in `properties`) that brings the mean to ~850 B. Deterministic: the
parent process writes these bytes into s3rver and the case processes regenerate the very same
bytes when they need pre-fetched bodies.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from loader.demo import generate_hour
from loader.window import hour_prefix

BUCKET = "clickstream-bench"
MALFORMED_RATIO = 0.01
#: One hour per size, so every size lists its own prefix in the same bucket.
HOURS = {5_000: 5, 20_000: 6, 100_000: 7}

_LOCALES = ["vi-VN", "en-US", "en-GB", "fr-FR", "de-DE", "ja-JP"]
_SCREENS = [(1440, 900, 2), (1920, 1080, 1), (390, 844, 3), (412, 915, 2.625), (1536, 864, 1.25)]
_CAMPAIGNS = [
    {"source": "google", "medium": "cpc", "campaign": "spring-sale"},
    {"source": "newsletter", "medium": "email", "campaign": "weekly-2026-47"},
    {"source": "facebook", "medium": "social", "campaign": "trail-collection"},
    None,
]


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


def _context(rng: random.Random) -> dict[str, object]:
    w, h, dpr = rng.choice(_SCREENS)
    context: dict[str, object] = {
        "locale": rng.choice(_LOCALES),
        "screen": f"{w}x{h}@{dpr}",
    }
    campaign = rng.choice(_CAMPAIGNS)
    if campaign is not None:
        context["utm"] = campaign
    return context


def objects(size: int) -> Iterator[tuple[str, bytes, str | None, str]]:
    """(key, body, content_encoding, expect) for every object of the size's hour, in key order
    of generation (not sorted). `expect` is "event" or "malformed"."""
    spec = hour_for(size)
    rng = random.Random(size)
    for obj in generate_hour(spec.hour, size, malformed_ratio=MALFORMED_RATIO, seed=size):
        if obj.expect != "event":
            yield obj.key, obj.body, obj.content_encoding, obj.expect
            continue
        event = json.loads(obj.body)
        event["context"] = _context(rng)
        body = json.dumps(event, ensure_ascii=False).encode()
        yield obj.key, body, obj.content_encoding, obj.expect


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
