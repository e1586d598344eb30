"""Pseudonymisation of the user agent (loader/transform/pseudonymise.py), through the transform."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from loader.common import SourceObject
from loader.transform.mapping import transform_object
from loader.transform.pseudonymise import user_agent_family

WINDOWS_COC_COC = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "coc_coc_browser/141.0.254 Chrome/135.0.7049.254 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
ANDROID_CHROME = (
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.6778.135 Mobile Safari/537.36"
)


@pytest.mark.parametrize(
    ("user_agent", "family"),
    [
        (WINDOWS_COC_COC, "Coc Coc / Windows"),
        (IPHONE, "Mobile Safari / iOS"),
        (ANDROID_CHROME, "Chrome Mobile / Android"),
        ("curl/8.5.0", "curl / Other"),
        ("", "Other / Other"),
    ],
)
def test_a_user_agent_becomes_its_browser_and_os_family(user_agent: str, family: str) -> None:
    assert user_agent_family(user_agent) == family


def test_the_full_string_is_stored_nowhere_when_pseudonymising() -> None:
    body = json.dumps(
        {
            "eventName": "page_view",
            "eventId": "0b7d5f0e-3c1a-4e9b-8f2d-6a1c9e4b7d21",
            "_ingest": {"receivedAt": "2026-11-24T13:05:00.000Z", "userAgent": ANDROID_CHROME},
        }
    ).encode()
    source = SourceObject("raw", "events/2026/11/24/13/event-x.json", datetime.now(UTC))

    plain = transform_object(source, body).events[0]
    private = transform_object(source, body, pseudonymise=True).events[0]

    assert plain.meta["user_agent"] == ANDROID_CHROME
    assert private.meta["user_agent"] == "Chrome Mobile / Android"
    assert private.meta["ingest_metadata"]["userAgent"] == "Chrome Mobile / Android"
    assert "SM-S918B" not in repr(private) and "131.0" not in repr(private)
    # The event itself is the same event: same id, same payload digest.
    assert (private.event_id, private.meta["payload_sha256"]) == (
        plain.event_id,
        plain.meta["payload_sha256"],
    )
