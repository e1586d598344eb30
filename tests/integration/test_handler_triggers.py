"""The original ETL's manual payloads end to end: the real handler, S3 (moto over HTTP) and
PostgreSQL, nothing patched but the handler's own clock, which `hoursBack` counts from.

The objects are shaped as the real tracker and ingest Lambda write them (one event per object,
camelCase), for two hours of 2026-11-24 and one of the next day.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import sqlalchemy as sa
from support.http_fault_proxy import LISTINGS, Fault, FaultProxy

import lambda_function
from loader.pipeline.runs import HoursFailed
from loader.window import TriggerError, day_hours, hour_label, hour_prefix

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"
DAY = datetime(2026, 11, 24, tzinfo=UTC)
T13, T14 = DAY + timedelta(hours=13), DAY + timedelta(hours=14)
NEXT_DAY = DAY + timedelta(days=1)
#: Objects per hour folder: two hours of the day, and the next day's first hour.
PLANTED = {T13: 3, T14: 2, NEXT_DAY: 1}
#: Two days later: every hour of 2026-11-24 has begun.
LATER = datetime(2026, 11, 26, 9, 20, tzinfo=UTC)


class FakeLambdaContext:
    """Plenty of time for `plenty_calls` readings of the clock, then less than any margin."""

    def __init__(self, plenty_calls: int) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.plenty_calls = plenty_calls
        self.calls = 0

    def get_remaining_time_in_millis(self) -> int:
        self.calls += 1
        return 600_000 if self.calls <= self.plenty_calls else 50


@pytest.fixture
def handler(loader_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The Lambda handler with a fresh warm-container state, its clock at LATER."""
    set_clock(monkeypatch, LATER)
    lambda_function._factory.close()
    yield lambda_function.lambda_handler
    lambda_function._factory.close()


def set_clock(monkeypatch: pytest.MonkeyPatch, now: datetime) -> None:
    monkeypatch.setattr(lambda_function, "_clock", lambda: now)


@pytest.fixture
def planted(s3: Any, bucket: str) -> dict[datetime, list[str]]:
    """Real-shaped objects under each hour of PLANTED; the keys, by hour."""
    keys: dict[datetime, list[str]] = {}
    for hour, count in PLANTED.items():
        for n in range(count):
            event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{hour.isoformat()}/{n}"))
            key = f"{hour_prefix(hour)}event-{event_id}.json"
            s3.put_object(Bucket=bucket, Key=key, Body=real_shaped(event_id, hour, n))
            keys.setdefault(hour, []).append(key)
    return keys


def real_shaped(event_id: str, hour: datetime, n: int) -> bytes:
    """One event as the tracker sends it and the ingest Lambda stores it. `event_name` rides
    along with `eventName` until the transform reads the tracker's spelling."""
    received = hour + timedelta(minutes=7 + n, seconds=12)
    body = {
        "eventName": "page_view",
        "event_name": "page_view",
        "eventId": event_id,
        "pageUrl": "https://main.d1sbwclickstrm.amplifyapp.com/",
        "referrer": "https://www.google.com/",
        "userId": None,
        "userLoginState": "anonymous",
        "clientId": "45f5180a-1ddf-4a4d-8ef3-461658498d4e",
        "sessionId": f"4e8b51f7-e055-4092-855f-05621a3b61a{n}",
        "isFirstVisit": n == 0,
        "_ingest": {
            "receivedAt": received.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "sourceIp": "171.226.112.69",
            "userAgent": "Mozilla/5.0 (Linux; Android 10; K) Chrome/142.0.0.0 Mobile Safari",
            "method": "POST",
            "path": "/clickstream",
            "requestId": f"slTAgt1lWAyOg{n:02d}=",
            "apiId": "6m1g52rou7",
            "stage": "$default",
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


def stored(name: str) -> Any:
    return json.loads((EVENTS_DIR / name).read_text())


def rows_per_hour(engine: sa.Engine) -> dict[str, int]:
    """Warehouse rows by the hour folder of the object they came from."""
    with engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT s3_key FROM clickstream_ingest_meta")).scalars().all()
        events = conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one()
    assert events == len(keys)
    return dict(Counter(key[: len("events/2026/11/24/13/")] for key in keys))


def ledger(engine: sa.Engine) -> list[tuple[str, str, str, int]]:
    """(hour, trigger, state, inserted) of every run, in hour order."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT hour, trigger, state, inserted FROM clickstream_load_runs "
                "ORDER BY hour, started_at"
            )
        ).all()
    return [(hour_label(r.hour), r.trigger, r.state, r.inserted) for r in rows]


def day_ledger(inserted: dict[datetime, int], hours: list[datetime] | None = None) -> list[Any]:
    """The ledger of a complete manual run over `hours` (default: all of DAY)."""
    return [
        (hour_label(h), "manual", "complete", inserted.get(h, 0))
        for h in (hours if hours is not None else day_hours(DAY.date()))
    ]


# --- one hour ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        stored("etl_target_utc_hour.json"),
        stored("etl_target_utc_hour_epoch_ms.json"),
        {"targetUtcHour": int(T13.timestamp())},  # epoch seconds
        {"targetUtcHour": str(int(T13.timestamp() * 1000) + 59_999)},  # ms, as a string
        stored("etl_override_prefix.json"),
        {"overridePrefix": "events/2026/11/24/13"},  # no trailing slash
    ],
)
def test_an_hour_payload_loads_that_hour_as_one_manual_run(
    payload: dict[str, Any], handler: Any, planted: Any, dw_engine: sa.Engine
) -> None:
    # GIVEN objects under hours 13 and 14 and the next day WHEN hour 13 is asked for
    report = handler(payload, None)
    # THEN only hour 13 is loaded, in one manual run, and the response is the usual report
    assert (report["hour"], report["prefix"], report["trigger"]) == (
        "2026-11-24T13",
        "events/2026/11/24/13/",
        "manual",
    )
    assert (report["state"], report["objects_listed"], report["inserted"]) == ("complete", 3, 3)
    assert rows_per_hour(dw_engine) == {"events/2026/11/24/13/": 3}
    assert ledger(dw_engine) == [("2026-11-24T13", "manual", "complete", 3)]


def test_hours_back_counts_from_the_handlers_clock(
    handler: Any, planted: Any, dw_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 16:20Z on the day WHEN the stored payload asks for 3 hours back THEN hour 13 loads
    set_clock(monkeypatch, DAY + timedelta(hours=16, minutes=20))
    report = handler(stored("etl_hours_back.json"), None)
    assert (report["hour"], report["inserted"]) == ("2026-11-24T13", 3)
    # WHEN the clock moves on an hour THEN the same payload loads hour 14
    set_clock(monkeypatch, DAY + timedelta(hours=17, minutes=20))
    report = handler(stored("etl_hours_back.json"), None)
    assert (report["hour"], report["inserted"]) == ("2026-11-24T14", 2)
    assert rows_per_hour(dw_engine) == {"events/2026/11/24/13/": 3, "events/2026/11/24/14/": 2}
    assert ledger(dw_engine) == [
        ("2026-11-24T13", "manual", "complete", 3),
        ("2026-11-24T14", "manual", "complete", 2),
    ]


# --- a whole day -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload", [stored("etl_target_utc_date.json"), stored("etl_override_prefix_day.json")]
)
def test_a_day_payload_loads_each_hour_as_its_own_run_and_sums_them(
    payload: dict[str, Any], handler: Any, planted: Any, dw_engine: sa.Engine
) -> None:
    # GIVEN objects under hours 13 and 14 of the day and under the next day's first hour
    # WHEN the day is asked for
    summary = handler(payload, None)
    # THEN its 24 hours are loaded, each its own manual run, and nothing of the next day
    assert (summary["day"], summary["prefix"], summary["trigger"], summary["state"]) == (
        "2026-11-24",
        "events/2026/11/24/",
        "manual",
        "complete",
    )
    assert [h["hour"] for h in summary["hours"]] == [hour_label(h) for h in day_hours(DAY.date())]
    by_hour = {
        h["hour"]: (h["state"], h["objects_listed"], h["inserted"]) for h in summary["hours"]
    }
    assert by_hour["2026-11-24T13"] == ("complete", 3, 3)
    assert by_hour["2026-11-24T14"] == ("complete", 2, 2)
    assert {v for k, v in by_hour.items() if k[-2:] not in ("13", "14")} == {("complete", 0, 0)}
    assert len({h["run_id"] for h in summary["hours"]}) == 24
    # AND the response sums the hours
    assert (summary["objects_listed"], summary["events_read"], summary["inserted"]) == (5, 5, 5)
    assert summary["duplicates"] == 0
    assert summary["malformed"] == {"count": 0, "keys": [], "keys_truncated": False}
    assert (summary["hours_not_started"], summary["hours_in_future"]) == ([], [])
    assert rows_per_hour(dw_engine) == {"events/2026/11/24/13/": 3, "events/2026/11/24/14/": 2}
    assert ledger(dw_engine) == day_ledger({T13: 3, T14: 2})
    # WHEN it is run again THEN every hour runs again and inserts nothing
    again = handler(payload, None)
    assert (again["state"], again["inserted"], again["duplicates"]) == ("complete", 0, 5)
    assert rows_per_hour(dw_engine) == {"events/2026/11/24/13/": 3, "events/2026/11/24/14/": 2}
    assert len(ledger(dw_engine)) == 48


def test_hours_back_with_scope_day_loads_today_up_to_the_current_hour(
    handler: Any, planted: Any, dw_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 16:20Z on the day WHEN the stored payload asks for the previous hour's whole day
    set_clock(monkeypatch, DAY + timedelta(hours=16, minutes=20))
    summary = handler(stored("etl_hours_back_day.json"), None)
    # THEN hours 00-16 are loaded and 17-23, not begun yet, are listed but left alone
    begun = [DAY + timedelta(hours=h) for h in range(17)]
    assert [h["hour"] for h in summary["hours"]] == [hour_label(h) for h in begun]
    assert summary["hours_in_future"] == [f"2026-11-24T{h:02d}" for h in range(17, 24)]
    assert (summary["state"], summary["inserted"]) == ("complete", 5)
    assert ledger(dw_engine) == day_ledger({T13: 3, T14: 2}, begun)


def test_a_day_stops_before_an_hour_when_time_is_short_and_says_which_hours_are_left(
    handler: Any, planted: Any, dw_engine: sa.Engine
) -> None:
    # GIVEN a Lambda whose time runs short a few hours into the day
    summary = handler(stored("etl_target_utc_date.json"), FakeLambdaContext(plenty_calls=5))
    # THEN the hours started are loaded and ledgered, the rest are named and not touched
    loaded = [h["hour"] for h in summary["hours"]]
    every = [hour_label(h) for h in day_hours(DAY.date())]
    assert summary["state"] == "partial"
    assert loaded and summary["hours_not_started"]
    assert loaded + summary["hours_not_started"] == every
    assert [run[0] for run in ledger(dw_engine)] == loaded
    # WHEN the operator reruns the payload with time enough THEN the day completes, once
    summary = handler(stored("etl_target_utc_date.json"), FakeLambdaContext(plenty_calls=10**6))
    assert (summary["state"], summary["hours_not_started"]) == ("complete", [])
    assert rows_per_hour(dw_engine) == {"events/2026/11/24/13/": 3, "events/2026/11/24/14/": 2}


def test_a_day_with_no_time_at_all_starts_nothing(
    handler: Any, planted: Any, dw_engine: sa.Engine
) -> None:
    summary = handler(stored("etl_target_utc_date.json"), FakeLambdaContext(plenty_calls=0))
    assert (summary["state"], summary["hours"], summary["inserted"]) == ("partial", [], 0)
    assert len(summary["hours_not_started"]) == 24
    assert ledger(dw_engine) == []


def test_a_failing_hour_stops_the_day_and_names_what_was_and_was_not_loaded(
    loader_env: dict[str, str],
    s3_endpoint: str,
    planted: Any,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN S3 refusing to list hour 13 of the day (and nothing else)
    def lists_hour_13(method: str, path: str) -> bool:
        return LISTINGS(method, path) and "prefix=events/2026/11/24/13/" in unquote(path)

    denied = Fault.error(403, "AccessDenied", match=lists_hour_13)
    set_clock(monkeypatch, LATER)
    with FaultProxy(s3_endpoint, [denied]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        lambda_function._factory.close()
        try:
            # WHEN the day is asked for
            with pytest.raises(HoursFailed) as failed:
                lambda_function.lambda_handler(stored("etl_target_utc_date.json"), None)
        finally:
            lambda_function._factory.close()
    # THEN the error names the failing hour, the hours loaded before it and those not started
    message = str(failed.value)
    assert "hour 2026-11-24T13 failed" in message
    assert "loaded before it: ['2026-11-24T00'," in message and "'2026-11-24T12']" in message
    assert "not started: ['2026-11-24T14'," in message and "'2026-11-24T23']" in message
    assert failed.value.result.not_started == [f"2026-11-24T{h:02d}" for h in range(14, 24)]
    assert proxy.stats["error_403"] >= 1
    # AND the ledger holds hours 00-12 complete and hour 13 failed; nothing after it ran
    runs = ledger(dw_engine)
    assert runs[:13] == day_ledger({}, [DAY + timedelta(hours=h) for h in range(13)])
    assert runs[13:] == [("2026-11-24T13", "manual", "failed", 0)]
    assert rows_per_hour(dw_engine) == {}
    # WHEN S3 is back and the operator reruns THEN the day completes
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    lambda_function._factory.close()
    try:
        summary = lambda_function.lambda_handler(stored("etl_target_utc_date.json"), None)
    finally:
        lambda_function._factory.close()
    assert (summary["state"], summary["inserted"]) == ("complete", 5)


# --- refusals ----------------------------------------------------------------------------------

#: Prefixes the original ETL would have listed as given; all but the first two hold objects here.
REFUSED_PREFIXES = [
    "",
    "events/",
    "events/2026/11/",
    "events/2026/11/2",
    "events/2026/11/24/1",
    "events/2026/11/24/13/event-",
    "other/2026/11/24/13/",
]


def test_a_refused_prefix_lists_nothing_and_loads_nothing(
    loader_env: dict[str, str],
    s3_endpoint: str,
    planted: Any,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN every S3 request counted on its way to the bucket
    set_clock(monkeypatch, LATER)
    with FaultProxy(s3_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        lambda_function._factory.close()
        try:
            # WHEN the handler is given prefixes that are not an hour or a day folder
            for prefix in REFUSED_PREFIXES:
                with pytest.raises(TriggerError, match="overridePrefix must name an hour folder"):
                    lambda_function.lambda_handler({"overridePrefix": prefix}, None)
            # THEN not one request reached S3, and nothing reached the warehouse
            assert proxy.requests == 0
            assert (rows_per_hour(dw_engine), ledger(dw_engine)) == ({}, [])
            # (the counter does count: an accepted prefix goes through the same proxy)
            lambda_function.lambda_handler({"overridePrefix": "events/2026/11/24/14/"}, None)
            assert proxy.requests > 0
        finally:
            lambda_function._factory.close()
    assert rows_per_hour(dw_engine) == {"events/2026/11/24/14/": 2}


REFUSED_PAYLOADS = [
    ({"targetUtcHour": "2026-11-24T13:00Z", "hoursBack": 1}, "give only one of"),
    ({"hour": "2026-11-24T13", "overridePrefix": "events/2026/11/24/13/"}, "give only one of"),
    ({"targetUtcDate": "2026-11-24", "scope": "day"}, "scope applies only to hoursBack"),
    ({"hoursBack": -1}, "hoursBack must be a whole number"),
    ({"hoursBack": 1, "scope": "week"}, "scope must be 'hour' or 'day'"),
    ({"targetUtcDate": "24/11/2026"}, "targetUtcDate must be a UTC date"),
    ({"targetUtcHour": "soon"}, "targetUtcHour must be an ISO-8601 timestamp"),
    ({"targetUtcDate": "2026-11-27"}, "2026-11-27, which has not begun yet"),
    ({"key1": "value1"}, "targetUtcDate"),  # the Lambda console's default test event
]


def test_a_refused_payload_names_the_problem_and_loads_nothing(
    handler: Any, planted: Any, dw_engine: sa.Engine
) -> None:
    for payload, message in REFUSED_PAYLOADS:
        with pytest.raises(TriggerError, match=message):
            handler(payload, None)
    assert (rows_per_hour(dw_engine), ledger(dw_engine)) == ({}, [])
