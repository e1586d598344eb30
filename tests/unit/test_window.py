"""Which hour a run loads: from the trigger's own time, never from the wall clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from loader.window import (
    Shard,
    Trigger,
    TriggerError,
    floor_hour,
    hour_label,
    hour_prefix,
    hours_between,
    parse_hour,
    parse_shard,
    parse_trigger,
    previous_hour,
)

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"


def scheduled(time: Any) -> dict[str, Any]:
    """An EventBridge scheduled event as AWS delivers it, fired at `time`."""
    event = json.loads((EVENTS_DIR / "eventbridge_scheduled.json").read_text())
    event["time"] = time
    return event


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- EventBridge schedule ----------------------------------------------------------------------


def test_the_stored_eventbridge_event_loads_the_previous_hour() -> None:
    event = json.loads((EVENTS_DIR / "eventbridge_scheduled.json").read_text())
    assert parse_trigger(event) == Trigger(utc(2026, 11, 24, 13), "schedule", None)


@pytest.mark.parametrize(
    ("time", "hour"),
    [
        ("2026-11-24T14:05:00Z", utc(2026, 11, 24, 13)),  # a run at 14:05Z loads hour 13
        ("2026-11-24T14:00:00Z", utc(2026, 11, 24, 13)),  # exactly on the hour
        ("2026-11-24T14:59:59Z", utc(2026, 11, 24, 13)),  # delivered late: still hour 13
        ("2026-11-25T00:05:00Z", utc(2026, 11, 24, 23)),  # midnight: the previous day's 23
        ("2027-01-01T00:05:00Z", utc(2026, 12, 31, 23)),  # new year: the previous year's
        ("2028-03-01T00:05:00Z", utc(2028, 2, 29, 23)),  # leap day
        ("2026-11-24T15:05:00+01:00", utc(2026, 11, 24, 13)),  # offsets are honoured
        ("2026-11-24T14:05:00", utc(2026, 11, 24, 13)),  # no offset: UTC
    ],
)
def test_schedule_time_minus_one_hour(time: str, hour: datetime) -> None:
    trigger = parse_trigger(scheduled(time))
    assert (trigger.hour, trigger.kind, trigger.shard) == (hour, "schedule", None)


def test_a_schedule_is_recognised_by_its_source_alone() -> None:
    event = {"source": "aws.events", "time": "2026-11-24T14:05:00Z"}
    assert parse_trigger(event).hour == utc(2026, 11, 24, 13)


@pytest.mark.parametrize(
    ("time", "message"),
    [
        (None, "no 'time' field"),
        (1795525573, "no 'time' field"),
        ("14:05", "not ISO-8601"),
        ("yesterday", "not ISO-8601"),
    ],
)
def test_a_schedule_without_a_usable_time_is_refused(time: Any, message: str) -> None:
    event = scheduled(time)
    if time is None:
        del event["time"]
    with pytest.raises(TriggerError, match=message):
        parse_trigger(event)


# --- manual hour -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "hour"),
    [
        ("2026-11-24T13", utc(2026, 11, 24, 13)),
        (" 2026-11-24T13 ", utc(2026, 11, 24, 13)),
        ("2026-11-24T00", utc(2026, 11, 24, 0)),
        ("2026-11-24T13:00:00Z", utc(2026, 11, 24, 13)),
        ("2026-11-24T13:59:59.999Z", utc(2026, 11, 24, 13)),  # floored to its hour
        ("2026-11-24T13:30:00", utc(2026, 11, 24, 13)),  # no offset: UTC
        ("2026-11-24T15:30:00+02:00", utc(2026, 11, 24, 13)),  # converted to UTC
        ("2026-11-24T08:30:00-05:00", utc(2026, 11, 24, 13)),
        ("2026-11-25T01:30:00+12:00", utc(2026, 11, 24, 13)),  # across the date line
        ("2026-11-24T13:30:00z", utc(2026, 11, 24, 13)),
    ],
)
def test_manual_hour(value: str, hour: datetime) -> None:
    trigger = parse_trigger({"hour": value})
    assert (trigger.hour, trigger.kind, trigger.shard) == (hour, "manual", None)


def test_a_manual_hour_wins_over_schedule_fields() -> None:
    event = {**scheduled("2026-11-24T14:05:00Z"), "hour": "2026-11-20T08"}
    assert parse_trigger(event) == Trigger(utc(2026, 11, 20, 8), "manual", None)


@pytest.mark.parametrize(
    "value", ["yesterday", "2026-11-24T25", "2026-13-01T00", "2026/11/24 13", "", "13"]
)
def test_a_bad_manual_hour_names_the_expected_form(value: str) -> None:
    with pytest.raises(TriggerError, match=r"2026-11-24T13 or an ISO-8601 timestamp"):
        parse_trigger({"hour": value})


@pytest.mark.parametrize("value", [13, None, ["2026-11-24T13"], {"h": 13}])
def test_a_manual_hour_must_be_a_string(value: Any) -> None:
    with pytest.raises(TriggerError, match="hour must be a string like 2026-11-24T13"):
        parse_trigger({"hour": value})


@pytest.mark.parametrize("event", [None, "2026-11-24T13", ["2026-11-24T13"], 13])
def test_a_trigger_that_is_not_an_object_names_both_forms(event: Any) -> None:
    with pytest.raises(TriggerError, match=r"EventBridge scheduled event or \{'hour'"):
        parse_trigger(event)


@pytest.mark.parametrize("event", [{}, {"foo": "bar"}, {"time": "2026-11-24T14:05:00Z"}])
def test_an_unknown_object_names_both_forms_and_its_keys(event: dict[str, Any]) -> None:
    with pytest.raises(TriggerError, match="detail-type 'Scheduled Event'") as excinfo:
        parse_trigger(event)
    assert "YYYY-MM-DDTHH" in str(excinfo.value)
    assert str(sorted(event)) in str(excinfo.value)


def test_trigger_errors_are_value_errors() -> None:
    assert issubclass(TriggerError, ValueError)


# --- shards ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shard"),
    [
        ({"index": 0, "count": 1}, Shard(0, 1)),
        ({"index": 3, "count": 4}, Shard(3, 4)),
        ({"index": "1", "count": "2"}, Shard(1, 2)),  # Step Functions may pass strings
        ({"index": 4095, "count": 4096}, Shard(4095, 4096)),
        (None, None),
    ],
)
def test_parse_shard(raw: Any, shard: Shard | None) -> None:
    assert parse_shard(raw) == shard


def test_a_shard_travels_with_the_trigger() -> None:
    trigger = parse_trigger({"hour": "2026-11-24T13", "shard": {"index": 2, "count": 8}})
    assert trigger.shard == Shard(2, 8)
    assert trigger.shard.label() == "2/8"
    scheduled_shard = parse_trigger(
        {**scheduled("2026-11-24T14:05:00Z"), "shard": {"index": 0, "count": 2}}
    )
    assert scheduled_shard.shard == Shard(0, 2)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # Out of range: the message names the range and the values given.
        ({"index": 4, "count": 4}, r"0 <= i < n <= 4096, got index=4 count=4"),
        ({"index": -1, "count": 4}, r"0 <= i < n <= 4096, got index=-1 count=4"),
        ({"index": 0, "count": 0}, r"0 <= i < n <= 4096, got index=0 count=0"),
        ({"index": 0, "count": 4097}, r"0 <= i < n <= 4096, got index=0 count=4097"),
        ({"index": 0}, r"\{'index': i, 'count': n\}"),
        ({"index": "x", "count": 2}, r"\{'index': i, 'count': n\}"),
        ({"index": None, "count": 2}, r"\{'index': i, 'count': n\}"),
        ("0/4", r"shard must be an object"),
        ([0, 4], r"shard must be an object"),
    ],
)
def test_a_bad_shard_is_refused(raw: Any, message: str) -> None:
    with pytest.raises(TriggerError, match=message):
        parse_trigger({"hour": "2026-11-24T13", "shard": raw})


@pytest.mark.parametrize(("index", "count"), [(4, 4), (-1, 4), (0, 0), (0, 4097)])
def test_a_shard_out_of_range_names_the_range(index: int, count: int) -> None:
    with pytest.raises(TriggerError, match=rf"0 <= i < n <= 4096, got index={index} count={count}"):
        Shard(index, count)


# --- hours and prefixes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hour", "prefix"),
    [
        (utc(2026, 11, 24, 13), "events/2026/11/24/13/"),
        (utc(2026, 1, 2, 3), "events/2026/01/02/03/"),  # zero-padded
        (datetime(2026, 11, 24, 15, tzinfo=timezone(timedelta(hours=2))), "events/2026/11/24/13/"),
    ],
)
def test_hour_prefix(hour: datetime, prefix: str) -> None:
    assert hour_prefix(hour) == prefix


def test_hour_prefix_under_another_events_prefix() -> None:
    assert hour_prefix(utc(2026, 11, 24, 13), "raw/clicks/") == "raw/clicks/2026/11/24/13/"


def test_hour_label_round_trips_through_parse_hour() -> None:
    hour = utc(2026, 11, 24, 13)
    assert hour_label(hour) == "2026-11-24T13"
    assert parse_hour(hour_label(hour)) == hour


def test_floor_and_previous_hour() -> None:
    instant = datetime(2026, 11, 24, 14, 5, 33, 123456, tzinfo=UTC)
    assert floor_hour(instant) == utc(2026, 11, 24, 14)
    assert previous_hour(instant) == utc(2026, 11, 24, 13)


def test_hours_between_includes_both_ends() -> None:
    hours = list(hours_between(utc(2026, 11, 24, 22, 30), utc(2026, 11, 25, 1)))
    assert hours == [
        utc(2026, 11, 24, 22),
        utc(2026, 11, 24, 23),
        utc(2026, 11, 25, 0),
        utc(2026, 11, 25, 1),
    ]
    assert list(hours_between(utc(2026, 11, 25, 1), utc(2026, 11, 24, 1))) == []
