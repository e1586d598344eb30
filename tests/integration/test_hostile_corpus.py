"""The hostile corpus end to end: real-world-shaped bad objects in one hour, loaded by the handler.

`tests/data/hostile/` holds the objects; `EXPECTED.json` says what each must yield: `events` (how
many load), `malformed` / `invalid` (the record positions skipped as such; position 0 is reported
as the bare key, others as `key#position`). The run must not crash, must report exactly those
keys, and must load everything else into both tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import lambda_function

CORPUS = Path(__file__).resolve().parent.parent / "data" / "hostile"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS / "EXPECTED.json").read_text())
PREFIX = "events/2026/11/24/13/"


@pytest.fixture
def handler(loader_env: dict[str, str]) -> Iterator[Any]:
    """The Lambda handler with a fresh warm-container state (as in test_load_hour.py)."""
    lambda_function._factory.close()
    yield lambda_function.lambda_handler
    lambda_function._factory.close()


@pytest.fixture
def corpus(s3: Any, bucket: str) -> dict[str, str]:
    """Upload every corpus file under hour 13, as the ingest path would: no Content-Encoding."""
    keys = {}
    for name in EXPECTED:
        key = PREFIX + name
        s3.put_object(Bucket=bucket, Key=key, Body=(CORPUS / name).read_bytes())
        keys[name] = key
    return keys


def reported(name: str, positions: list[int]) -> list[str]:
    key = PREFIX + name
    return [key if position == 0 else f"{key}#{position}" for position in positions]


def expected_keys(kind: str) -> list[str]:
    return sorted(k for name, e in EXPECTED.items() for k in reported(name, e.get(kind, [])))


def test_corpus_files_all_have_an_expectation() -> None:
    on_disk = {p.name for p in CORPUS.iterdir() if p.name != "EXPECTED.json"}
    assert on_disk == set(EXPECTED)
    for name, expectation in EXPECTED.items():
        assert set(expectation) <= {"about", "events", "malformed", "invalid"}, name
        assert len(expectation) > 1, f"{name}: no outcome"


def test_hostile_hour_loads_what_can_load_and_reports_the_rest(
    handler: Any, corpus: dict[str, str], dw_engine: sa.Engine
) -> None:
    # GIVEN every corpus object under one hour
    expected_events = sum(e.get("events", 0) for e in EXPECTED.values())
    # WHEN the handler loads the hour
    report = handler({"hour": "2026-11-24T13"}, None)
    # THEN nothing crashed, the bad keys are reported exactly, the rest is in both tables
    assert report["state"] == "complete"
    assert report["objects_listed"] == len(EXPECTED)
    assert sorted(report["malformed"]["keys"]) == expected_keys("malformed")
    assert report["malformed"]["count"] == len(expected_keys("malformed"))
    assert sorted(report["invalid"]["keys"]) == expected_keys("invalid")
    assert report["invalid"]["count"] == len(expected_keys("invalid"))
    assert report["quarantined"]["count"] == 0  # the database refused nothing
    assert report["inserted"] == expected_events
    assert report["duplicates"] == 0
    assert report["sanitised"] > 0
    assert report["truncated"] >= 2  # deep-200.json and huge-string.json

    with dw_engine.connect() as conn:
        per_key = dict(
            conn.execute(
                sa.text(
                    "SELECT m.s3_key, count(*) FROM clickstream_ingest_meta m"
                    " JOIN clickstream_events e USING (event_id) GROUP BY m.s3_key"
                )
            ).all()
        )
        events = conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one()
        quarantined = conn.execute(
            sa.text("SELECT s3_key, position, reason_code FROM clickstream_quarantine")
        ).all()
    assert events == expected_events
    assert per_key == {corpus[name]: e["events"] for name, e in EXPECTED.items() if e.get("events")}
    assert sorted(
        key if position == 0 else f"{key}#{position}" for key, position, _ in quarantined
    ) == sorted(expected_keys("malformed") + expected_keys("invalid"))


def test_hostile_values_are_stored_repaired(
    handler: Any, corpus: dict[str, str], dw_engine: sa.Engine
) -> None:
    handler({"hour": "2026-11-24T13"}, None)

    def row(name: str) -> Any:
        with dw_engine.connect() as conn:
            return (
                conn.execute(
                    sa.text(
                        "SELECT e.*, m.source_ip, m.ingest_metadata, m.received_at"
                        " FROM clickstream_events e JOIN clickstream_ingest_meta m"
                        " USING (event_id) WHERE m.s3_key = :key"
                    ),
                    {"key": corpus[name]},
                )
                .mappings()
                .one()
            )

    huge = row("huge-string.json")
    assert len(huge["page_url"]) == 4096

    nul = row("nul-in-keys.json")
    assert nul["session_id"] == "s-nul\ufffd"
    assert nul["properties"] == {"we\ufffdird": {"k\ufffd": "v\ufffd"}}
    assert nul["source_ip"] is None  # "10.0.0.1\u0000" is no address; the raw text stays
    assert nul["ingest_metadata"] == {"sourceIp": "10.0.0.1\ufffd", "user\ufffdAgent": "x"}

    numbers = row("huge-numbers.json")
    assert numbers["user_id"] == "18446744073709551617"
    assert numbers["context_product_price"] is None  # 1e400
    assert numbers["context_product_discount_price"] is None  # past 1e15
    assert numbers["client_timestamp"] is None
    assert numbers["properties"]["big"] is None  # 5,000 digits
    assert numbers["properties"]["product"] == {
        "discountPrice": 123456789012345678901234567890,
    }

    wrong = row("wrong-types.json")
    for column in ("page_url", "referrer", "session_id", "is_first_visit", "element"):
        assert wrong[column] is None, column
    assert (wrong["user_id"], wrong["user_login_state"], wrong["identity_source"]) == (
        "1029",
        "true",
        "3.5",
    )
    assert wrong["properties"]["pageUrl"] == ["https://a", "https://b"]
    assert wrong["properties"]["_ingest"] == "203.0.113.17"
    assert wrong["properties"]["event_id"] == {"uuid": "nope"}
    assert wrong["ingest_metadata"] is None

    nested = row("wrong-types-nested.json")
    assert nested["source_ip"] is None
    assert nested["received_at"] is None  # epoch 0
    assert nested["element"] == {"tag": ["button"], "dataset": "sku=1"}
    assert nested["context_product_category"] == "7"
    assert nested["properties"]["product"]["price"] == "12 EUR"

    deep = row("deep-200.json")
    assert "nested too deep" in json.dumps(deep["properties"])


def test_hostile_hour_rerun_inserts_nothing_and_reports_the_same(
    handler: Any, corpus: dict[str, str], dw_engine: sa.Engine
) -> None:
    first = handler({"hour": "2026-11-24T13"}, None)
    second = handler({"hour": "2026-11-24T13"}, None)
    assert second["inserted"] == 0
    assert second["duplicates"] == first["inserted"]
    assert sorted(second["malformed"]["keys"]) == expected_keys("malformed")
    assert sorted(second["invalid"]["keys"]) == expected_keys("invalid")
