"""The near-real-time path against real servers: moto's S3 and SQS over HTTP, PostgreSQL.

Objects are put to S3 over HTTP; the bucket's notification configuration (S3 → SQS) or an
EventBridge rule (S3 → EventBridge → SQS) delivers their notifications to a real queue; the
event source mapping is played by `support.sqs_poller` (long-poll, batch, call the real
`lambda_function.lambda_handler`, delete what it did not report failed). Faults come from the
HTTP fault proxy in front of S3 and the TCP fault proxy in front of PostgreSQL. Nothing is
patched. Every case reconciles the warehouse against what was put: one row per valid event,
in both tables, nothing else.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from support.http_fault_proxy import OBJECT_GETS, Fault, FaultProxy
from support.notifications import s3_notification, sqs_event
from support.reconcile import Planted, events_in, from_demo, ledger, reconcile
from support.sqs_poller import EventSourceMapping
from support.tcp_fault_proxy import TcpFaultProxy

import lambda_function
from loader.app import open_loader
from loader.config import load_settings
from loader.load.locks import hour_lock
from loader.notifications import parse_sqs_event, plan_batch
from loader.operations import status
from loader.pipeline.job import HourJob
from loader.pipeline.notified import EventLoader
from loader.window import hour_label
from tools.demo.traffic import RawObject, generate_hour, upload

HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
NEXT = HOUR + timedelta(hours=1)
#: The hourly schedule's event for 14:05Z: it sweeps hour 13.
SWEEP_13 = {
    "version": "0",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "time": "2026-11-24T14:05:00Z",
    "detail": {},
}


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def sqs(s3_endpoint: str) -> Any:
    return boto3.client("sqs", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def queue(sqs: Any) -> Iterator[str]:
    """A fresh queue; a failed message is visible again 2 s after it was received."""
    url = sqs.create_queue(
        QueueName=f"nrt-{uuid.uuid4().hex[:12]}", Attributes={"VisibilityTimeout": "2"}
    )["QueueUrl"]
    yield url
    sqs.delete_queue(QueueUrl=url)


@pytest.fixture
def handler(loader_env: dict[str, str]) -> Iterator[Any]:
    """The Lambda handler with a fresh warm-container state."""
    lambda_function._factory.close()
    yield lambda_function.lambda_handler
    lambda_function._factory.close()


def queue_arn(sqs: Any, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def wire_bucket_notifications(s3: Any, bucket: str, sqs: Any, url: str) -> None:
    """S3 → SQS for objects created under events/ (S3 sends an s3:TestEvent first)."""
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn(sqs, url),
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "events/"}]}},
                }
            ]
        },
    )


def wire_eventbridge(s3: Any, bucket: str, sqs: Any, url: str, endpoint: str) -> str:
    """What deploy/template.yaml sets up: the bucket sends its events to EventBridge, a rule
    picks Object Created under events/ of this bucket and targets the queue."""
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    events = boto3.client("events", endpoint_url=endpoint, region_name="us-east-1")
    rule = f"nrt-{uuid.uuid4().hex[:12]}"
    pattern = {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [bucket]}, "object": {"key": [{"prefix": "events/"}]}},
    }
    events.put_rule(Name=rule, EventPattern=json.dumps(pattern), State="ENABLED")
    events.put_targets(Rule=rule, Targets=[{"Id": "queue", "Arn": queue_arn(sqs, url)}])
    return rule


def real_shaped(key: str, event_id: uuid.UUID, at: datetime) -> Planted:
    """One tracker event as the ingest Lambda stores it, under `key`."""
    body = {
        "eventName": "page_view",
        "eventId": str(event_id),
        "pageUrl": "https://main.d1sbwclickstrm.amplifyapp.com/",
        "userLoginState": "anonymous",
        "clientId": "45f5180a-1ddf-4a4d-8ef3-461658498d4e",
        "sessionId": "4e8b51f7-e055-4092-855f-05621a3b61a0",
        "isFirstVisit": False,
        "_ingest": {"receivedAt": at.isoformat(timespec="milliseconds").replace("+00:00", "Z")},
    }
    return Planted(key, json.dumps(body).encode(), event_ids=(event_id,))


def hour_objects(count: int, seed: int, hour: datetime = HOUR, **ratios: float) -> list[Planted]:
    """Generated objects of one event each; none malformed unless asked."""
    ratios.setdefault("malformed_ratio", 0.0)
    return from_demo(generate_hour(hour, count, seed=seed, **ratios))


def put(s3: Any, bucket: str, planted: list[Planted]) -> None:
    """PutObject over HTTP (concurrently), so the server sends the notifications."""
    upload(s3, bucket, [RawObject(p.key, p.body, p.content_encoding) for p in planted])


def notifications_for(bucket: str, planted: list[Planted], prefix: str = "m") -> dict[str, Any]:
    return sqs_event([s3_notification(bucket, p.key) for p in planted], prefix)


def queue_is_empty(sqs: Any, url: str) -> bool:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return all(int(v) == 0 for v in attributes.values())


def batch_summaries(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The handler's `batch finished` log lines (JSON on stdout), oldest first."""
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [line["batch"] for line in lines if line.get("message") == "batch finished"]


def failures(response: dict[str, Any]) -> list[str]:
    return sorted(f["itemIdentifier"] for f in response["batchItemFailures"])


def quarantined_keys(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(sa.text("SELECT DISTINCT s3_key FROM clickstream_quarantine")).scalars()
        )


def hour_status(hour: datetime = HOUR) -> dict[str, Any]:
    with open_loader(load_settings()) as loader:
        entry: dict[str, Any] = status(loader, start=hour, end=hour)["hours"][0]
        return entry


def runs(engine: sa.Engine, hour: datetime = HOUR) -> list[tuple[str, str, int]]:
    return [(r["trigger"], r["state"], r["inserted"]) for r in ledger(engine, hour)]


# --- end to end: S3 → notifications → the queue → the handler ------------------------------


def test_bucket_notifications_through_the_queue_load_every_object_then_the_sweep_completes(
    handler: Any, s3: Any, bucket: str, sqs: Any, queue: str, dw_engine: sa.Engine
) -> None:
    # GIVEN the bucket notifying the queue, and an hour of objects put to S3 over HTTP: ~10%
    # malformed, ~5% invalid, some gzip, one under a key with a space, a `+` and parentheses
    wire_bucket_notifications(s3, bucket, sqs, queue)
    planted = hour_objects(30, seed=3, malformed_ratio=0.1, invalid_ratio=0.05, gzip_ratio=0.2)
    odd_id = uuid.UUID("7b1d3f7e-4f4b-4c55-9f0e-2a8a1f3c9d10")
    planted.append(real_shaped(f"{HOUR:events/%Y/%m/%d/%H}/copy (1)+final.json", odd_id, HOUR))
    put(s3, bucket, planted)
    # WHEN an event source mapping polls the queue: batches of up to 12, 0.5 s window
    mapping = EventSourceMapping(sqs, queue, handler, batch_size=12, window_s=0.5)
    calls = mapping.drain(
        lambda: reconcile(dw_engine, planted).ok and queue_is_empty(sqs, queue), timeout_s=90
    )
    # THEN every object was loaded (or quarantined) exactly once, no message failed, and the
    # test event was consumed like any other message
    assert all(c.error is None and c.failed == [] for c in calls), calls
    assert sum(len(c.message_ids) for c in calls) == len(planted) + 1
    assert len(calls) >= 3
    assert {p.key for p in planted if p.rejected} <= quarantined_keys(dw_engine)
    # and the ledger holds event runs only: the hour awaits its sweep
    assert {trigger for trigger, _, _ in runs(dw_engine)} == {"event"}
    valid = sum(len(p.event_ids) for p in planted)
    view = hour_status()
    assert (view["state"], view["inserted"], view["inserted_by_events"]) == (
        "awaiting_sweep",
        valid,
        valid,
    )
    # WHEN the hourly schedule sweeps the hour
    report = handler(SWEEP_13, None)
    # THEN it fetched nothing again, inserted nothing, and proved the hour complete
    assert report["state"] == "complete"
    assert report["objects_listed"] == len(planted)
    assert report["objects_skipped_loaded"] == len(planted)
    assert report["inserted"] == 0
    view = hour_status()
    assert (view["state"], view["trigger"], view["inserted_by_events"]) == (
        "complete",
        "schedule",
        valid,
    )
    assert reconcile(dw_engine, planted).ok


def test_eventbridge_rule_through_the_queue_loads_raw_keys(
    handler: Any,
    s3: Any,
    bucket: str,
    sqs: Any,
    queue: str,
    s3_endpoint: str,
    dw_engine: sa.Engine,
) -> None:
    # GIVEN the template's wiring: bucket → EventBridge → rule (Object Created, events/) → queue
    wire_eventbridge(s3, bucket, sqs, queue, s3_endpoint)
    planted = hour_objects(8, seed=4)
    raw_key = f"{HOUR:events/%Y/%m/%d/%H}/a b+c.json"
    planted.append(real_shaped(raw_key, uuid.uuid5(uuid.NAMESPACE_URL, raw_key), HOUR))
    put(s3, bucket, planted)
    s3.put_object(Bucket=bucket, Key="exports/2026/11/24/13/report.json", Body=b"{}")
    # WHEN the mapping polls
    mapping = EventSourceMapping(sqs, queue, handler, batch_size=10, window_s=0.5)
    calls = mapping.drain(
        lambda: reconcile(dw_engine, planted).ok and queue_is_empty(sqs, queue), timeout_s=60
    )
    # THEN every object under events/ loaded, with the raw `+` in its key kept, and the rule
    # never delivered the object outside the prefix
    assert all(c.failed == [] for c in calls)
    assert sum(len(c.message_ids) for c in calls) == len(planted)
    with dw_engine.connect() as conn:
        keys = set(conn.execute(sa.text("SELECT s3_key FROM clickstream_ingest_meta")).scalars())
    assert raw_key in keys


# --- what gets loaded, and what is ignored -------------------------------------------------


def test_only_named_objects_of_the_bucket_and_prefix_load_the_rest_is_reported(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an hour of 6 objects, a batch naming 2 of them, plus: S3's test event, an object of
    # another bucket, one outside EVENTS_PREFIX, one not in an hour folder, a deleted object,
    # an object removal, and a body that is not JSON
    planted = hour_objects(6, seed=5)
    put(s3, bucket, planted)
    gone = f"{HOUR:events/%Y/%m/%d/%H}/event-{uuid.uuid4()}.json"
    s3.put_object(Bucket=bucket, Key=gone, Body=planted[0].body)
    s3.delete_object(Bucket=bucket, Key=gone)
    removal = json.loads(s3_notification(bucket, planted[3].key))
    removal["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    event = sqs_event(
        [
            json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket}),
            s3_notification(bucket, planted[0].key),
            s3_notification(bucket, planted[1].key),
            s3_notification("someone-elses-bucket", planted[2].key),
            s3_notification(bucket, "exports/2026/11/24/13/x.json"),
            s3_notification(bucket, "events/readme.json"),
            s3_notification(bucket, gone),
            json.dumps(removal),
            "<html>502 Bad Gateway</html>",
        ]
    )
    # WHEN the handler gets the batch
    response = handler(event, None)
    # THEN no message is to be redelivered: each loaded, or settled for good
    assert response == {"batchItemFailures": []}
    # AND exactly the two named objects are in the warehouse, nothing was quarantined
    assert reconcile(dw_engine, planted[:2]).ok
    assert quarantined_keys(dw_engine) == set()
    (summary,) = batch_summaries(capsys)
    assert summary["ignored"]["by_reason"] == {
        "test_event": 1,
        "other_bucket": 1,
        "outside_prefix": 1,
        "not_an_hour_folder": 1,
        "not_object_created": 1,
        "unrecognised": 1,
    }
    assert summary["objects_gone"]["keys"] == [gone]
    assert summary["objects_committed"] == 2
    assert runs(dw_engine) == [("event", "complete", 2)]


def test_a_batch_of_only_ignored_messages_touches_no_database(
    handler: Any, bucket: str, dw_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the warehouse unreachable (a closed port) WHEN the batch is S3's test event alone
    monkeypatch.setenv("DW_PG_HOST", "127.0.0.1")
    monkeypatch.setenv("DW_PG_PORT", "1")
    event = sqs_event([json.dumps({"Event": "s3:TestEvent", "Bucket": bucket})])
    # THEN it is settled without a connection attempt
    assert handler(event, None) == {"batchItemFailures": []}


# --- partial failures -------------------------------------------------------------------------


@pytest.fixture
def s3_proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint, seed=11) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy


def _gets_under(folder: str) -> Any:
    def match(method: str, path: str) -> bool:
        return OBJECT_GETS(method, path) and folder in path

    return match


@pytest.mark.parametrize("client", ["boto3", "crt"])
def test_s3_failing_for_one_hour_lists_only_its_messages_then_redelivery_completes(
    client: str,
    handler: Any,
    s3_proxy: FaultProxy,
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("S3_CLIENT", client)
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "2")
    # GIVEN objects of hours 13 and 14 named by one batch, and S3 answering 500 to every GET
    # under hour 14 (an outage past the retries), while a few GETs of hour 13 are throttled
    early, late = hour_objects(5, seed=6), hour_objects(4, seed=7, hour=NEXT)
    put(s3, bucket, early + late)
    event = sqs_event([s3_notification(bucket, p.key) for p in early + late])
    s3_proxy.set_faults(
        Fault.internal_error(match=_gets_under("/2026/11/24/14/")),
        Fault.slow_down(first=2, match=_gets_under("/2026/11/24/13/")),
    )
    # WHEN the handler gets the batch
    response = handler(event, None)
    # THEN hour 13 loaded (its throttled GETs retried) and only hour 14's messages are listed
    assert failures(response) == sorted(f"m{i}" for i in range(5, 9))
    assert s3_proxy.stats["slow_down"] == 2 and s3_proxy.stats["internal_error"] >= 4
    assert reconcile(dw_engine, early).ok
    assert quarantined_keys(dw_engine) == set()
    assert runs(dw_engine, HOUR) == [("event", "complete", 5)]
    ((trigger, state, inserted),) = runs(dw_engine, NEXT)
    assert (trigger, state, inserted) == ("event", "failed", 0)
    # WHEN S3 recovers and SQS delivers the listed messages again
    s3_proxy.clear_faults()
    again = {"Records": [r for r in event["Records"] if r["messageId"] in failures(response)]}
    assert handler(again, None) == {"batchItemFailures": []}
    # THEN both hours hold every event once
    assert reconcile(dw_engine, early + late).ok


def test_time_running_out_lists_the_messages_of_objects_not_committed(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN batches of 3 events and a Lambda clock that runs out once the first has committed
    monkeypatch.setenv("MAX_RECORDS_PER_BATCH", "3")
    planted = hour_objects(8, seed=8)
    put(s3, bucket, planted)
    event = notifications_for(bucket, planted)
    context = RowsLambdaContext(dw_engine, rows=3)
    # WHEN the handler gets the batch
    response = handler(event, context)
    # THEN the first 3 objects (in key order) committed; the messages of the other 5 are listed
    order = sorted(range(len(planted)), key=lambda i: planted[i].key)
    assert failures(response) == sorted(f"m{i}" for i in order[3:])
    assert reconcile(dw_engine, [planted[i] for i in order[:3]]).ok
    assert runs(dw_engine) == [("event", "partial", 3)]
    # WHEN they are delivered again THEN the rest loads, nothing twice
    again = {"Records": [r for r in event["Records"] if r["messageId"] in failures(response)]}
    assert handler(again, None) == {"batchItemFailures": []}
    assert reconcile(dw_engine, planted).ok


class RowsLambdaContext:
    """A Lambda clock that runs out once `rows` events are committed, however often the loader
    reads it (the prefetch reads it while it waits, as often as the machine's load makes it
    wait): plenty of time before, less than any safety margin after."""

    def __init__(self, engine: sa.Engine, rows: int) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.engine, self.rows = engine, rows

    def get_remaining_time_in_millis(self) -> int:
        return 50 if events_in(self.engine) >= self.rows else 600_000


# --- the warehouse down -------------------------------------------------------------------------


def test_warehouse_down_the_invocation_raises_and_redelivery_loads_everything(
    handler: Any,
    pg_proxy: TcpFaultProxy,
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DB_RETRY_BUDGET_SECONDS", "2")
    planted = hour_objects(6, seed=9)
    put(s3, bucket, planted)
    event = notifications_for(bucket, planted)
    # GIVEN every connection to the warehouse refused
    pg_proxy.refuse(True)
    # WHEN the handler gets the batch THEN it raises: every message goes back to the queue
    with pytest.raises(sa.exc.OperationalError):
        handler(event, None)
    assert pg_proxy.stats["refused"] >= 2  # retried within the budget
    # WHEN the warehouse is back and SQS delivers the batch again THEN everything loads once
    pg_proxy.refuse(False)
    assert handler(event, None) == {"batchItemFailures": []}
    assert reconcile(dw_engine, planted).ok
    assert runs(dw_engine) == [("event", "complete", 6)]


def test_warehouse_lost_after_an_hour_committed_lists_only_the_hours_left(
    loader_env: dict[str, str],
    pg_proxy: TcpFaultProxy,
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch stops at the first hour that raises, and settles what committed before it."""
    monkeypatch.setenv("DB_RETRY_BUDGET_SECONDS", "2")
    early, late = hour_objects(3, seed=10), hour_objects(3, seed=11, hour=NEXT)
    put(s3, bucket, early + late)
    event = notifications_for(bucket, early + late)
    committed_first: list[int] = []

    def clock() -> datetime:
        # Hour 13 has just committed: now the warehouse goes away.
        committed_first.append(events_in(dw_engine))
        pg_proxy.refuse(True)
        pg_proxy.drop_all()
        return datetime.now(UTC)

    with open_loader(load_settings()) as loader:
        plan = plan_batch(parse_sqs_event(event), bucket, "events/")
        result = EventLoader(loader).load_batch(plan, clock=clock)
    pg_proxy.refuse(False)
    # THEN hour 13's messages are settled, hour 14's are listed, and no error is raised
    assert committed_first == [3]
    assert isinstance(result.error, sa.exc.OperationalError)
    assert sorted(result.failed_messages) == ["m3", "m4", "m5"]
    result.raise_if_nothing_loaded()
    assert reconcile(dw_engine, early).ok
    assert runs(dw_engine, NEXT) == []  # its run could not even be recorded


# --- redelivery and races -----------------------------------------------------------------------


def test_redelivered_batch_inserts_nothing_twice(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    planted = hour_objects(10, seed=12, malformed_ratio=0.2)
    put(s3, bucket, planted)
    event = notifications_for(bucket, planted)
    # WHEN the same batch is delivered twice (SQS is at-least-once)
    assert handler(event, None) == {"batchItemFailures": []}
    assert handler(event, None) == {"batchItemFailures": []}
    # THEN the second inserted nothing and found every event already there, payload equal
    first, second = batch_summaries(capsys)
    valid = sum(len(p.event_ids) for p in planted)
    assert (first["inserted"], first["duplicates"]) == (valid, 0)
    assert (second["inserted"], second["duplicates"]) == (0, valid)
    assert reconcile(dw_engine, planted).ok
    assert [r[:2] for r in runs(dw_engine)] == [("event", "complete")] * 2


def test_event_loads_take_no_hour_lock_and_race_the_hourly_run_harmlessly(
    loader_env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    planted = hour_objects(40, seed=13)
    put(s3, bucket, planted)
    event = notifications_for(bucket, planted)
    with open_loader(load_settings()) as loader:
        plan = plan_batch(parse_sqs_event(event), bucket, "events/")
        # GIVEN another run holding the hour's lock WHEN notifications arrive THEN they load
        with hour_lock(loader.engine, hour_label(HOUR), None, 0) as held:
            assert held
            result = EventLoader(loader).load_batch(plan)
        assert result.failed_messages == [] and len(result.committed) == 40
    # GIVEN an event load and a full-hour run of the same hour at once
    with dw_engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE clickstream_events CASCADE"))
    errors: list[BaseException] = []

    def run(target: Any) -> None:
        try:
            with open_loader(load_settings()) as each:
                target(each)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(lambda ld: EventLoader(ld).load_batch(plan),)),
        threading.Thread(target=run, args=(lambda ld: ld.load(HourJob(HOUR, "manual")),)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # THEN neither failed and every event is there once
    assert errors == []
    assert reconcile(dw_engine, planted).ok


# --- the hourly sweep ----------------------------------------------------------------------------


def test_a_lost_notification_is_caught_by_the_hourly_sweep(
    handler: Any, s3_proxy: FaultProxy, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN 12 objects of hour 13 whose notifications arrived for 8 only
    planted = hour_objects(12, seed=14)
    put(s3, bucket, planted)
    delivered, lost = planted[:8], planted[8:]
    assert handler(notifications_for(bucket, delivered), None) == {"batchItemFailures": []}
    assert hour_status()["state"] == "awaiting_sweep"
    # WHEN the hourly schedule runs at 14:05Z (sweeping 13; hour 14 has nothing yet)
    gets_before = sum(1 for m, p, _ in s3_proxy.log if OBJECT_GETS(m, p))
    report = handler(SWEEP_13, None)
    gets = sum(1 for m, p, _ in s3_proxy.log if OBJECT_GETS(m, p)) - gets_before
    # THEN it fetched and loaded exactly the 4 objects no message delivered
    assert gets == len(lost)
    assert (report["state"], report["objects_listed"], report["objects_skipped_loaded"]) == (
        "complete",
        12,
        8,
    )
    assert report["inserted"] == sum(len(p.event_ids) for p in lost)
    assert reconcile(dw_engine, planted).ok
    view = hour_status()
    assert (view["state"], view["inserted_last_run"]) == ("complete", report["inserted"])
    assert view["inserted_by_events"] == sum(len(p.event_ids) for p in delivered)


def test_an_hour_never_swept_is_swept_by_the_next_runs_lookback(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN hour 13 loaded by notifications only (its 14:05 sweep never ran), one lost
    planted = hour_objects(5, seed=15)
    put(s3, bucket, planted)
    assert handler(notifications_for(bucket, planted[:4]), None) == {"batchItemFailures": []}
    # WHEN the 15:05 schedule runs (hour 14, then the lookback over 13 and 12)
    report = handler({**SWEEP_13, "time": "2026-11-24T15:05:00Z"}, None)
    # THEN the lookback swept hour 13 instead of reporting it missing
    assert report["missing_hours"] == []
    (lookback,) = [h for h in report["lookback"] if h["hour"] == hour_label(HOUR)]
    assert (lookback["state"], lookback["objects_new"]) == ("complete", 1)
    assert reconcile(dw_engine, planted).ok
    assert hour_status()["state"] == "complete"


def test_an_hour_without_notifications_is_still_loaded_in_full_by_its_schedule(
    handler: Any, s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    """The hourly path as it was: no event run, so no skipping of loaded keys."""
    planted = hour_objects(6, seed=16)
    put(s3, bucket, planted)
    report = handler(SWEEP_13, None)
    assert (report["state"], report["objects_listed"], report["objects_skipped_loaded"]) == (
        "complete",
        6,
        0,
    )
    assert reconcile(dw_engine, planted).ok
