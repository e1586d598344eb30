"""SQS batches of S3 and EventBridge notifications → the objects to load (pure functions).

The stored batches under tests/events/ are shaped as Lambda delivers them: an S3 bucket
notification batch (a test event, a plain key, an encoded key with spaces, a `+` and
parentheses) and an EventBridge batch (a plain key, a raw key with a space and a `+`, a
deletion).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from loader.notifications import (
    IGNORE_REASONS,
    Ignored,
    Message,
    ObjectNotice,
    Wanted,
    classify,
    is_sqs_event,
    parse_body,
    parse_sqs_event,
    percentile,
    plan_batch,
)
from loader.observability import emf_batch_metrics
from loader.pipeline.notified import BatchResult

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"
BUCKET = "clickstream-s3-ingest"
T13 = datetime(2026, 11, 24, 13, tzinfo=UTC)
T14 = datetime(2026, 11, 24, 14, tzinfo=UTC)
KEY = "events/2026/11/24/13/x.json"


def stored(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / name).read_text())


def s3_body(
    key: str,
    *,
    bucket: str = BUCKET,
    name: str = "ObjectCreated:Put",
    size: Any = 10,
    when: Any = "2026-11-24T13:07:12.345Z",
) -> str:
    record = {
        "eventSource": "aws:s3",
        "eventName": name,
        "eventTime": when,
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": size}},
    }
    return json.dumps({"Records": [record]})


def eventbridge_body(key: str, *, kind: str = "Object Created", bucket: str = BUCKET) -> str:
    return json.dumps(
        {
            "source": "aws.s3",
            "detail-type": kind,
            "time": "2026-11-24T14:02:41Z",
            "detail": {"bucket": {"name": bucket}, "object": {"key": key, "size": 5}},
        }
    )


def sqs(*bodies: str) -> dict[str, Any]:
    return {
        "Records": [
            {"messageId": f"m{i}", "body": body, "eventSource": "aws:sqs"}
            for i, body in enumerate(bodies)
        ]
    }


# --- the stored batches ----------------------------------------------------------------------


def test_stored_s3_batch_test_event_ignored_and_encoded_key_decoded() -> None:
    # GIVEN the batch S3 sends to the queue: its test event, then two objects
    messages = parse_sqs_event(stored("sqs_s3_notifications.json"))
    # THEN the test event names nothing, and the keys are the ones S3 stored
    assert [m.message_id for m in messages] == [
        "2e1424d4-f796-459a-8184-9c92662be6da",
        "059f36b4-87a3-44ab-83d2-661975830a7d",
        "7c4f9a1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b",
    ]
    assert messages[0].objects == ()
    assert [i.reason for i in messages[0].ignored] == ["test_event"]
    (plain,) = messages[1].objects
    assert plain == ObjectNotice(
        BUCKET,
        "events/2026/11/24/13/event-0b7d5f0e-3c1a-4e9b-8f2d-6a1c9e4b7d21.json",
        861,
        datetime(2026, 11, 24, 13, 7, 12, 345000, tzinfo=UTC),
    )
    (encoded,) = messages[2].objects
    # `+` is a space, `%2B` a plus, `%28`/`%29` parentheses (form encoding)
    assert encoded.key == "events/2026/11/24/13/replayed/event copy (1)+1.json"


def test_stored_eventbridge_batch_keys_are_taken_as_they_are() -> None:
    messages = parse_sqs_event(stored("sqs_eventbridge_object_created.json"))
    keys = [o.key for m in messages for o in m.objects]
    # EventBridge does not encode keys: a `+` stays a `+`
    assert keys == [
        "events/2026/11/24/14/event-5e2c8a41-9d7b-4f3e-a6c1-2b8d4f6a9c30.json",
        "events/2026/11/24/14/event a+b.json",
    ]
    assert messages[0].objects[0].created_at == datetime(2026, 11, 24, 14, 2, 41, tzinfo=UTC)
    assert [i.reason for i in messages[2].ignored] == ["not_object_created"]


def test_stored_batches_plan_by_hour() -> None:
    plan = plan_batch(
        parse_sqs_event(stored("sqs_s3_notifications.json"))
        + parse_sqs_event(stored("sqs_eventbridge_object_created.json")),
        BUCKET,
        "events/",
    )
    hours = plan.hours()
    assert list(hours) == [T13, T14]
    assert [w.notice.key for w in hours[T13]] == sorted(w.notice.key for w in hours[T13])
    assert plan.message_keys["2e1424d4-f796-459a-8184-9c92662be6da"] == frozenset()
    assert {reason for _, i in plan.ignored for reason in [i.reason]} == {
        "test_event",
        "not_object_created",
    }


# --- shapes and what is ignored --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json", "unrecognised"),
        ("[1, 2]", "unrecognised"),
        ('{"hello": "world"}', "unrecognised"),
        (json.dumps({"Event": "s3:TestEvent", "Bucket": BUCKET}), "test_event"),
        (s3_body(KEY, name="ObjectRemoved:Delete"), "not_object_created"),
        (s3_body(KEY, when="yesterday"), "unrecognised"),
        (s3_body(KEY, when=None), "unrecognised"),
        (s3_body(""), "unrecognised"),
        (eventbridge_body(KEY, kind="Object Deleted"), "not_object_created"),
        (
            json.dumps({"source": "aws.s3", "detail-type": "Object Created", "detail": "x"}),
            "unrecognised",
        ),
        (json.dumps({"Records": ["not an object"]}), "unrecognised"),
    ],
)
def test_bodies_that_name_nothing_are_ignored_with_a_reason(body: str, reason: str) -> None:
    objects, ignored = parse_body(body)
    assert objects == []
    assert [i.reason for i in ignored] == [reason]
    assert reason in IGNORE_REASONS


def test_a_body_that_is_not_a_string_is_ignored() -> None:
    assert parse_body(None) == ([], [Ignored("unrecognised", "message body is not a string")])


def test_s3_record_without_a_usable_size_is_still_loaded() -> None:
    # sizes only pre-check the cap; the GET checks the real length
    for size in (None, "12", True, float("nan"), -5):
        (notice,), ignored = parse_body(s3_body(KEY, size=size))
        assert notice.size == 0 and ignored == []


def test_several_records_in_one_s3_message() -> None:
    body = json.dumps(
        {
            "Records": [
                json.loads(s3_body("events/2026/11/24/13/a.json"))["Records"][0],
                json.loads(s3_body("events/2026/11/24/13/b.json", name="ObjectRemoved:Delete"))[
                    "Records"
                ][0],
                json.loads(s3_body("events%2F2026%2F11%2F24%2F13%2Fc.json"))["Records"][0],
            ]
        }
    )
    objects, ignored = parse_body(body)
    assert [o.key for o in objects] == [
        "events/2026/11/24/13/a.json",
        "events/2026/11/24/13/c.json",
    ]
    assert [i.reason for i in ignored] == ["not_object_created"]


@pytest.mark.parametrize(
    ("notice", "reason"),
    [
        (ObjectNotice("someone-else", "events/2026/11/24/13/a.json", 1, T13), "other_bucket"),
        (ObjectNotice(BUCKET, "exports/2026/11/24/13/a.json", 1, T13), "outside_prefix"),
        (ObjectNotice(BUCKET, "events/2026/11/24/13/", 0, T13), "directory_marker"),
        (ObjectNotice(BUCKET, "events/2026/11/24/a.json", 1, T13), "not_an_hour_folder"),
        (ObjectNotice(BUCKET, "events/2026/13/24/13/a.json", 1, T13), "not_an_hour_folder"),
        (ObjectNotice(BUCKET, "events/readme.txt", 1, T13), "not_an_hour_folder"),
    ],
)
def test_only_objects_of_the_bucket_in_an_hour_folder_are_wanted(
    notice: ObjectNotice, reason: str
) -> None:
    choice = classify(notice, BUCKET, "events/")
    assert isinstance(choice, Ignored) and choice.reason == reason


def test_a_key_in_an_hour_folder_is_wanted_with_its_hour() -> None:
    notice = ObjectNotice(BUCKET, "events/2026/11/24/13/sub/a.json", 1, T13)
    assert classify(notice, BUCKET, "events/") == Wanted(notice, T13)
    # EVENTS_PREFIX is honoured as configured
    other = ObjectNotice(BUCKET, "raw/ev/2026/11/24/14/a.json", 1, T14)
    assert classify(other, BUCKET, "raw/ev/") == Wanted(other, T14)
    assert isinstance(classify(other, BUCKET, "events/"), Ignored)


@pytest.mark.parametrize(
    ("key", "size", "expected"),
    [
        ("events/2026/11/24/13/event-x.json", 9, T13),
        ("events/2026/11/24/13/", 0, "directory_marker"),  # the folder itself
        ("events/2026/11/24/25/x.json", 9, "not_an_hour_folder"),
        ("events/2026/02/30/01/x.json", 9, "not_an_hour_folder"),
        ("events/26/11/24/13/x.json", 9, "not_an_hour_folder"),
        ("events/x.json", 9, "not_an_hour_folder"),
        ("xevents/2026/11/24/13/x.json", 9, "outside_prefix"),
    ],
)
def test_only_keys_in_an_hour_folder_are_loaded(key: str, size: int, expected: Any) -> None:
    # GIVEN a notice of RAW_BUCKET_NAME WHEN classified THEN its hour, or why it is ignored
    choice = classify(ObjectNotice(BUCKET, key, size, T13), BUCKET, "events/")
    if isinstance(expected, datetime):
        assert choice == Wanted(ObjectNotice(BUCKET, key, size, T13), expected)
    else:
        assert isinstance(choice, Ignored) and choice.reason == expected


# --- the batch plan --------------------------------------------------------------------------


def test_a_key_named_twice_is_loaded_once_with_its_newest_notice() -> None:
    key = "events/2026/11/24/13/a.json"
    older = ObjectNotice(BUCKET, key, 1, datetime(2026, 11, 24, 13, 1, tzinfo=UTC))
    newer = ObjectNotice(BUCKET, key, 2, datetime(2026, 11, 24, 13, 2, tzinfo=UTC))
    plan = plan_batch(
        [Message("m1", (newer,)), Message("m2", (older,)), Message("m3")], BUCKET, "events/"
    )
    assert plan.wanted[key].notice is newer
    assert plan.message_keys == {"m1": {key}, "m2": {key}, "m3": frozenset()}
    assert [w.notice for w in plan.hours()[T13]] == [newer]


def test_is_sqs_event() -> None:
    assert is_sqs_event(stored("sqs_s3_notifications.json"))
    assert is_sqs_event(sqs("{}"))
    assert not is_sqs_event(stored("eventbridge_scheduled.json"))
    assert not is_sqs_event({"Records": []})
    assert not is_sqs_event({"Records": [{"eventSource": "aws:s3"}]})  # S3 invoking directly
    assert not is_sqs_event({"hour": "2026-11-24T13"})
    assert not is_sqs_event(["Records"])


def test_a_record_without_a_message_id_cannot_be_answered_for() -> None:
    event = sqs("{}")
    del event["Records"][0]["messageId"]
    with pytest.raises(ValueError, match="messageId"):
        parse_sqs_event(event)


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.95) == 95.0
    assert percentile(reversed(values), 0.99) == 99.0
    assert percentile([1.0, 2.0], 0.5) == 1.0


# --- the partial batch response --------------------------------------------------------------


def test_response_lists_messages_waiting_for_a_failed_object() -> None:
    result = BatchResult(
        3, {"m1": frozenset({"a", "b"}), "m2": frozenset({"c"}), "m3": frozenset()}
    )
    result.committed = {"a", "c"}
    result.failed_keys = {"b"}
    assert result.response() == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    result.failed_keys = set()
    assert result.response() == {"batchItemFailures": []}


def test_an_error_that_let_nothing_load_is_raised() -> None:
    result = BatchResult(1, {"m1": frozenset({"a"})})
    result.error = ConnectionError("warehouse down")
    result.failed_keys = {"a"}
    with pytest.raises(ConnectionError):
        result.raise_if_nothing_loaded()
    BatchResult(1, {"m1": frozenset()}).raise_if_nothing_loaded()  # nothing failed: no error


def test_the_batch_metrics_carry_the_end_to_end_lag() -> None:
    result = BatchResult(2, {"m1": frozenset({"a"}), "m2": frozenset({"b"})})
    result.committed = {"a"}
    result.failed_keys = {"b"}
    result.lag_seconds = [4.0, 1.0, 2.0]

    document = emf_batch_metrics(result.metric_counts(), result.lag(), ["2026-11-24T13"])

    names = {m["Name"] for m in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"EndToEndLagP50Seconds", "EndToEndLagP95Seconds", "MessagesFailed"} <= names
    # Nearest rank: p50 of [1, 2, 4] is 2, a value that occurred
    assert document["EndToEndLagP50Seconds"] == [2.0]
    assert document["EndToEndLagMaxSeconds"] == [4.0]
    assert document["MessagesFailed"] == [1.0]
    assert document["hours"] == ["2026-11-24T13"]
