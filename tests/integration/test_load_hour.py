"""The hourly load end to end: handler → S3 (moto over HTTP) → PostgreSQL, no mocks."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support.reconcile import fill, from_demo

import lambda_function
from loader.config import ConfigError
from loader.window import TriggerError
from tools.demo.traffic import generate_hour

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"
HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
PREFIX = "events/2026/11/24/13/"


@pytest.fixture
def handler(loader_env: dict[str, str]) -> Any:
    """The Lambda handler with a fresh warm-container state per test."""
    lambda_function._factory.close()
    yield lambda_function.lambda_handler
    lambda_function._factory.close()


def put_samples(s3: Any, bucket: str) -> list[str]:
    keys = []
    for path in sorted(SAMPLES.glob("*.json")):
        key = PREFIX + path.name
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        keys.append(key)
    return keys


def scheduled_event() -> dict[str, Any]:
    return json.loads((EVENTS_DIR / "eventbridge_scheduled.json").read_text())


def counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        events = conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one()
        meta = conn.execute(sa.text("SELECT count(*) FROM clickstream_ingest_meta")).scalar_one()
    return events, meta


def test_scheduled_run_loads_the_previous_hour_with_exact_mapping(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN the three sample objects under hour 13 and a schedule firing at 14:05Z
    put_samples(s3, bucket)
    # WHEN the handler runs
    report = handler(scheduled_event(), None)
    # THEN hour 13 is loaded, every event in both tables
    assert report["hour"] == "2026-11-24T13"
    assert report["prefix"] == PREFIX
    assert report["objects_listed"] == 3
    assert report["inserted"] == 3
    assert report["malformed"] == {"count": 0, "keys": [], "keys_truncated": False}
    assert report["state"] == "complete"
    assert counts(dw_engine) == (3, 3)
    with dw_engine.connect() as conn:
        click = (
            conn.execute(sa.text("SELECT * FROM clickstream_events WHERE event_name = 'click'"))
            .mappings()
            .one()
        )
        meta = (
            conn.execute(
                sa.text("SELECT * FROM clickstream_ingest_meta WHERE event_id = :id"),
                {"id": click["event_id"]},
            )
            .mappings()
            .one()
        )
    assert click["event_id"] == uuid.UUID("5e2c8a41-9d7b-4f3e-a6c1-2b8d4f6a9c30")
    assert click["event_timestamp"] == datetime(2026, 11, 24, 13, 5, 2, 301000, tzinfo=UTC)
    assert click["client_timestamp"] == datetime(2026, 11, 24, 13, 5, 2, 117000, tzinfo=UTC)
    assert click["user_id"] == "u-1029"
    assert click["identity_source"] == "cognito"
    assert click["is_first_visit"] is False
    assert str(click["context_product_price"]) == "129000"
    assert str(click["context_product_discount_price"]) == "99000"
    assert click["context_product_name"] == "Giày chạy bộ Aero"
    assert click["element"]["text"] == "Thêm vào giỏ"
    assert click["element"]["dataset"] == {"sku": "SKU-42", "position": "3"}
    assert click["properties"] is None
    assert str(meta["source_ip"]) == "2001:db8:4:1::23"
    assert meta["request_id"] == "0a9e7c5b-3d1f-4e2a-8b6c-9d7e5f3a1c2b"
    assert meta["s3_key"] == PREFIX + "event-5e2c8a41-9d7b-4f3e-a6c1-2b8d4f6a9c30.json"
    assert meta["s3_bucket"] == bucket
    assert meta["ingest_metadata"]["traceId"] == "Root=1-6743a1f0-4c2d8e1b9a7f3c5d2e1f0a9b"
    assert len(meta["payload_sha256"]) == 32


def test_rerun_inserts_nothing_and_keeps_loaded_at(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    put_samples(s3, bucket)
    handler({"hour": "2026-11-24T13"}, None)
    with dw_engine.connect() as conn:
        before = conn.execute(sa.text("SELECT event_id, loaded_at FROM clickstream_events")).all()
    report = handler({"hour": "2026-11-24T13"}, None)
    with dw_engine.connect() as conn:
        after = conn.execute(sa.text("SELECT event_id, loaded_at FROM clickstream_events")).all()
    assert report["inserted"] == 0
    assert report["duplicates"] == 3
    assert report["duplicate_exact"] == 3
    assert sorted(before) == sorted(after)


def test_deleted_rows_come_back_on_rerun(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    put_samples(s3, bucket)
    handler({"hour": "2026-11-24T13"}, None)
    with dw_engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM clickstream_events WHERE event_name = 'click'"))
    assert counts(dw_engine) == (2, 2)
    report = handler({"hour": "2026-11-24T13"}, None)
    assert report["inserted"] == 1
    assert counts(dw_engine) == (3, 3)


def test_malformed_objects_are_reported_by_key_while_good_ones_load(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    good = put_samples(s3, bucket)
    bad = {
        "empty.json": b"",
        "not-json.json": b"{oops",
        "invalid-utf8.json": b'{"event_name": "\xff\xfe"}',
        "scalar.json": b"42",
        "null.json": b"null",
        "scalars.json": b"[1, 2]",
    }
    for name, body in bad.items():
        s3.put_object(Bucket=bucket, Key=PREFIX + name, Body=body)
    s3.put_object(Bucket=bucket, Key=PREFIX + "no-name.json", Body=b'{"pageUrl": "/x"}')
    s3.put_object(Bucket=bucket, Key=PREFIX + "folder/", Body=b"")
    report = handler({"hour": "2026-11-24T13"}, None)
    assert report["objects_listed"] == len(good) + len(bad) + 1  # the folder marker is ignored
    assert report["inserted"] == 3
    assert report["malformed"]["count"] == len(bad)
    assert sorted(report["malformed"]["keys"]) == sorted(PREFIX + n for n in bad)
    assert report["invalid"] == {
        "count": 1,
        "keys": [PREFIX + "no-name.json"],
        "keys_truncated": False,
    }
    with dw_engine.connect() as conn:
        quarantined = conn.execute(
            sa.text("SELECT s3_key, reason_code FROM clickstream_quarantine")
        ).all()
    assert {k for k, _ in quarantined} == {PREFIX + n for n in bad} | {PREFIX + "no-name.json"}


@pytest.mark.parametrize("write_method", ["copy", "insert"])
def test_pagination_gzip_and_small_batches(
    handler: Any,
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    write_method: str,
) -> None:
    monkeypatch.setenv("WRITE_METHOD", write_method)
    monkeypatch.setenv("MAX_RECORDS_PER_BATCH", "97")
    # More than one ListObjectsV2 page (1,000 keys): put straight into moto's backend, as 1,150
    # PUTs over HTTP took longer than the load itself. The loader still reads them over HTTP.
    objects = list(generate_hour(HOUR, 1_150, malformed_ratio=0.01, gzip_ratio=0.2))
    fill(s3, bucket, from_demo(objects))
    expected = sum(1 for o in objects if o.expect == "event")
    report = handler({"hour": "2026-11-24T13"}, None)
    assert report["objects_listed"] == 1_150
    assert report["inserted"] == expected
    assert report["malformed"]["count"] == 1_150 - expected
    assert report["batches"] >= expected // 97
    assert counts(dw_engine) == (expected, expected)


def test_trigger_errors_name_what_was_expected(handler: Any) -> None:
    with pytest.raises(TriggerError, match="EventBridge scheduled event"):
        handler({"foo": "bar"}, None)
    with pytest.raises(TriggerError, match="2026-11-24T13"):
        handler({"hour": "yesterday"}, None)


def test_missing_bucket_variable_is_named(handler: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAW_BUCKET_NAME")
    with pytest.raises(ConfigError, match="RAW_BUCKET_NAME"):
        handler({"hour": "2026-11-24T13"}, None)
