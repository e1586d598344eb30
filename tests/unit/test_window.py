"""Which hour a run loads: from the trigger's own time, never from the wall clock."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from loader.window import (
    HOUR_KEYS,
    MAX_HOURS_BACK,
    Shard,
    Trigger,
    TriggerError,
    day_hours,
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
    for form in ("targetUtcHour", "targetUtcDate", "'hoursBack': N", "overridePrefix"):
        assert form in str(excinfo.value)


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


# --- the original ETL's manual payloads --------------------------------------------------------

#: "Now" for the ETL payloads below: 2026-11-24 16:20Z, so hours up to 16 have begun.
NOW = datetime(2026, 11, 24, 16, 20, 7, tzinfo=UTC)


def etl(event: Any, now: datetime = NOW, events_prefix: str = "events/") -> Trigger:
    return parse_trigger(event, events_prefix=events_prefix, now=now)


def stored(name: str) -> Any:
    return json.loads((EVENTS_DIR / name).read_text())


@pytest.mark.parametrize(
    ("value", "hour"),
    [
        ("2026-11-24T13:00:00Z", utc(2026, 11, 24, 13)),
        ("2026-11-24T13:47:12.345Z", utc(2026, 11, 24, 13)),  # floored to its hour
        ("2026-11-24T15:30:00+02:00", utc(2026, 11, 24, 13)),  # converted to UTC
        ("2026-11-24T13:30:00", utc(2026, 11, 24, 13)),  # no offset: UTC, as on Lambda
        ("2026-11-24T13", utc(2026, 11, 24, 13)),
        ("2026-11-24", utc(2026, 11, 24, 0)),  # a date alone is its midnight, as in JavaScript
        (1795526825, utc(2026, 11, 24, 13)),  # epoch seconds
        (1795526825000, utc(2026, 11, 24, 13)),  # epoch milliseconds
        (1795526825.75, utc(2026, 11, 24, 13)),
        ("1795526825", utc(2026, 11, 24, 13)),  # numeric strings, either unit
        (" 1795526825000 ", utc(2026, 11, 24, 13)),
        (99_999_999_999, datetime(5138, 11, 16, 9, tzinfo=UTC)),  # the largest seconds value
        (100_000_000_000, datetime(1973, 3, 3, 9, tzinfo=UTC)),  # the smallest milliseconds
    ],
)
def test_target_utc_hour_is_that_hour(value: Any, hour: datetime) -> None:
    # GIVEN a clock late enough for every hour above
    trigger = etl({"targetUtcHour": value}, now=datetime(9999, 1, 1, tzinfo=UTC))
    assert trigger == Trigger(hour, "manual", None)
    assert (trigger.hours, trigger.day, trigger.future_hours()) == ((hour,), None, [])


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "yesterday",
        "2026-11-24T25",
        "-1795526825",
        True,
        False,
        [1795526825],
        {},
        0,
        -5,
        float("nan"),
        float("inf"),
        10**20,
        "1" * 30,
    ],
)
def test_a_bad_target_utc_hour_names_the_expected_forms(value: Any) -> None:
    with pytest.raises(TriggerError, match="targetUtcHour must be an ISO-8601 timestamp") as exc:
        etl({"targetUtcHour": value})
    assert "epoch seconds or milliseconds" in str(exc.value)


def test_an_hour_that_has_not_begun_is_refused() -> None:
    # GIVEN 16:20Z WHEN hour 16 is asked for THEN it loads (so far); hour 17 is refused
    assert etl({"targetUtcHour": "2026-11-24T16:00Z"}).hour == utc(2026, 11, 24, 16)
    with pytest.raises(TriggerError, match="2026-11-24T17, which has not begun yet"):
        etl({"targetUtcHour": "2026-11-24T17:00Z"})
    with pytest.raises(TriggerError, match="overridePrefix names 2026-11-24T17"):
        etl({"overridePrefix": "events/2026/11/24/17/"})


def test_target_utc_date_is_each_hour_of_that_day() -> None:
    trigger = etl({"targetUtcDate": "2026-11-23"})
    assert trigger.day == date(2026, 11, 23)
    assert trigger.kind == "manual"
    assert trigger.hours == tuple(utc(2026, 11, 23, h) for h in range(24))
    assert trigger.hour == utc(2026, 11, 23, 0)
    assert trigger.future_hours() == []


def test_today_is_loaded_up_to_the_current_hour() -> None:
    # GIVEN 16:20Z WHEN today is asked for THEN hours 00-16 load and 17-23 are left out
    trigger = etl({"targetUtcDate": "2026-11-24"})
    assert trigger.hours == tuple(utc(2026, 11, 24, h) for h in range(17))
    assert trigger.future_hours() == [utc(2026, 11, 24, h) for h in range(17, 24)]


def test_a_day_that_has_not_begun_is_refused() -> None:
    with pytest.raises(TriggerError, match="2026-11-25, which has not begun yet"):
        etl({"targetUtcDate": "2026-11-25"})


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-24T13",
        "2026-11-24T00:00:00Z",
        "2026/11/24",
        "24-11-2026",
        "2026-02-30",
        "2026-11-24x",
        "",
        None,
        20261124,
        1795526825,
        True,
    ],
)
def test_a_bad_target_utc_date_names_the_expected_form(value: Any) -> None:
    with pytest.raises(TriggerError, match="targetUtcDate must be a UTC date like 2026-11-24"):
        etl({"targetUtcDate": value})


@pytest.mark.parametrize(
    ("value", "hour"),
    [
        (0, utc(2026, 11, 24, 16)),  # the current hour, as far as it has got
        (1, utc(2026, 11, 24, 15)),
        (3, utc(2026, 11, 24, 13)),
        ("3", utc(2026, 11, 24, 13)),
        (17, utc(2026, 11, 23, 23)),  # across midnight
        (24 * 365, utc(2025, 11, 24, 16)),
        (MAX_HOURS_BACK, utc(2025, 11, 23, 16)),
    ],
)
def test_hours_back_counts_from_the_current_hour(value: Any, hour: datetime) -> None:
    assert etl({"hoursBack": value}) == Trigger(hour, "manual", None)


def test_hours_back_reads_the_clock_it_is_given() -> None:
    # The same payload an hour later names the next hour: nothing else feeds the clock.
    assert etl({"hoursBack": 1}, now=NOW + timedelta(hours=1)).hour == utc(2026, 11, 24, 16)


def test_hours_back_without_a_clock_uses_the_wall_clock() -> None:
    before = floor_hour(datetime.now(UTC))
    hour = parse_trigger({"hoursBack": 2}).hour
    after = floor_hour(datetime.now(UTC))
    assert before - timedelta(hours=2) <= hour <= after - timedelta(hours=2)


@pytest.mark.parametrize(
    ("event", "day"),
    [
        ({"hoursBack": 1, "scope": "day"}, date(2026, 11, 24)),
        ({"hoursBack": 17, "scope": "day"}, date(2026, 11, 23)),
        ({"scope": "day"}, date(2026, 11, 24)),  # hoursBack defaults to 1, as in the ETL
    ],
)
def test_scope_day_widens_hours_back_to_its_day(event: dict[str, Any], day: date) -> None:
    trigger = etl(event)
    assert trigger.day == day
    assert trigger.hours == tuple(h for h in day_hours(day) if h <= utc(2026, 11, 24, 16))


def test_scope_hour_is_the_default() -> None:
    assert etl({"hoursBack": 2, "scope": "hour"}) == etl({"hoursBack": 2})
    assert etl({"scope": "hour"}).hour == utc(2026, 11, 24, 15)


@pytest.mark.parametrize(
    "value", [-1, MAX_HOURS_BACK + 1, 1.5, 3.0, "x", "-1", "", None, True, [1], 1795526825000]
)
def test_a_bad_hours_back_is_refused(value: Any) -> None:
    with pytest.raises(TriggerError, match=r"hoursBack must be a whole number of hours from 0"):
        etl({"hoursBack": value})


@pytest.mark.parametrize("scope", ["week", "Day", "", None, 1])
def test_a_bad_scope_is_refused(scope: Any) -> None:
    with pytest.raises(TriggerError, match="scope must be 'hour' or 'day'"):
        etl({"hoursBack": 1, "scope": scope})


@pytest.mark.parametrize(
    ("prefix", "hour"),
    [
        ("events/2026/11/24/13/", utc(2026, 11, 24, 13)),
        ("events/2026/11/24/13", utc(2026, 11, 24, 13)),  # the trailing slash is optional
        ("events/2026/01/02/00/", utc(2026, 1, 2, 0)),
    ],
)
def test_override_prefix_of_an_hour_folder_is_that_hour(prefix: str, hour: datetime) -> None:
    assert etl({"overridePrefix": prefix}) == Trigger(hour, "manual", None)


@pytest.mark.parametrize("prefix", ["events/2026/11/23/", "events/2026/11/23"])
def test_override_prefix_of_a_day_folder_is_that_day(prefix: str) -> None:
    trigger = etl({"overridePrefix": prefix})
    assert trigger.day == date(2026, 11, 23)
    assert trigger.hours == tuple(day_hours(date(2026, 11, 23)))


def test_override_prefix_follows_events_prefix() -> None:
    trigger = etl({"overridePrefix": "raw/clicks/2026/11/24/13/"}, events_prefix="raw/clicks/")
    assert trigger.hour == utc(2026, 11, 24, 13)
    with pytest.raises(TriggerError, match=r"'raw/clicks/YYYY/MM/DD/HH/'"):
        etl({"overridePrefix": "events/2026/11/24/13/"}, events_prefix="raw/clicks/")


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "events/",  # the whole bucket's events
        "events/2026/",  # a year
        "events/2026/11/",  # a month
        "events/2026/11/2",  # a partial day: would list 20-29
        "events/2026/11/24/1",  # a partial hour: would list 10-19
        "events/2026/11/24/13/event-5e2c8a41.json",  # an object
        "events/2026/11/24/13/event-",
        "events/2026/11/24/13//",
        "/events/2026/11/24/13/",
        " events/2026/11/24/13/",
        "events/2026/11/24/13/\n",
        "s3://raw/events/2026/11/24/13/",
        "other/2026/11/24/13/",  # outside EVENTS_PREFIX
        "quarantine/events/2026/11/24/13/",
        "events/2026/13/01/00/",  # no month 13
        "events/2026/02/30/",  # no 30 February
        "events/2026/11/24/24/",  # no hour 24
        "events/2026/11/24/../../../secret/",
        "events/２０２６/11/24/13/",  # non-ASCII digits
        None,
        13,
        ["events/2026/11/24/13/"],
    ],
)
def test_any_other_override_prefix_is_refused_naming_the_forms(prefix: Any) -> None:
    with pytest.raises(TriggerError, match="overridePrefix must name an hour folder") as exc:
        etl({"overridePrefix": prefix})
    assert "'events/YYYY/MM/DD/HH/' or a day folder 'events/YYYY/MM/DD/'" in str(exc.value)


@pytest.mark.parametrize(
    ("name", "hours"),
    [
        ("etl_target_utc_hour.json", [utc(2026, 11, 24, 13)]),
        ("etl_target_utc_hour_epoch_ms.json", [utc(2026, 11, 24, 13)]),
        ("etl_hours_back.json", [utc(2026, 11, 24, 13)]),
        ("etl_override_prefix.json", [utc(2026, 11, 24, 13)]),
        ("etl_target_utc_date.json", [utc(2026, 11, 24, h) for h in range(17)]),
        ("etl_hours_back_day.json", [utc(2026, 11, 24, h) for h in range(17)]),
        ("etl_override_prefix_day.json", [utc(2026, 11, 24, h) for h in range(17)]),
    ],
)
def test_the_stored_etl_payloads(name: str, hours: list[datetime]) -> None:
    trigger = etl(stored(name))
    assert (list(trigger.hours), trigger.kind) == (hours, "manual")


@pytest.mark.parametrize(
    "event",
    [
        {"targetUtcHour": "2026-11-24T13:00:00Z", "targetUtcDate": "2026-11-24"},
        {"overridePrefix": "events/2026/11/24/13/", "targetUtcHour": "2026-11-24T13:00:00Z"},
        {"hoursBack": 3, "targetUtcDate": "2026-11-24"},
        {"hour": "2026-11-24T13", "targetUtcHour": "2026-11-24T13:00:00Z"},
        {"hour": "2026-11-24T13", "hoursBack": 3},
        {"overridePrefix": None, "targetUtcHour": "2026-11-24T13:00:00Z"},  # null still counts
    ],
)
def test_a_payload_naming_two_hours_is_refused(event: dict[str, Any]) -> None:
    """The original ETL takes the first key in its order and ignores the rest; an operator who
    wrote both meant something, and loading one while silently dropping the other is worse."""
    with pytest.raises(TriggerError, match=f"give only one of {', '.join(HOUR_KEYS)}") as exc:
        etl(event)
    assert ", ".join(k for k in HOUR_KEYS if k in event) in str(exc.value)


@pytest.mark.parametrize(
    "event",
    [
        {"targetUtcHour": "2026-11-24T13:00:00Z", "scope": "day"},
        {"targetUtcDate": "2026-11-24", "scope": "hour"},
        {"overridePrefix": "events/2026/11/24/13/", "scope": "day"},
        {"hour": "2026-11-24T13", "scope": "day"},
    ],
)
def test_scope_with_anything_but_hours_back_is_refused(event: dict[str, Any]) -> None:
    with pytest.raises(TriggerError, match="scope applies only to hoursBack"):
        etl(event)


def test_an_etl_payload_wins_over_schedule_fields_as_hour_does() -> None:
    event = {**scheduled("2026-11-24T14:05:00Z"), "targetUtcHour": "2026-11-20T08:00:00Z"}
    assert etl(event) == Trigger(utc(2026, 11, 20, 8), "manual", None)


def test_a_shard_travels_with_an_etl_payload() -> None:
    shard = {"index": 1, "count": 4}
    assert etl({"targetUtcHour": "2026-11-24T13:00Z", "shard": shard}).shard == Shard(1, 4)
    assert etl({"targetUtcDate": "2026-11-23", "shard": shard}).shard == Shard(1, 4)


def test_the_original_triggers_ignore_the_clock() -> None:
    # A clock years off changes nothing for the schedule and {"hour": ...}.
    far = datetime(1999, 1, 1, tzinfo=UTC)
    assert etl(scheduled("2026-11-24T14:05:00Z"), now=far).hour == utc(2026, 11, 24, 13)
    assert etl({"hour": "2026-11-24T13"}, now=far).hour == utc(2026, 11, 24, 13)
