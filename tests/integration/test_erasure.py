"""Erasure end to end: `clickstream-loader erase` and the Lambda's `erase` action against real
PostgreSQL and moto's S3 server, then every load path trying to bring the person back.

The hour holds one shopper U across three browsers: C1 (anonymous, then logged in), C2
(logged in, an anonymous event too) and C3, a browser U shares with another user V (V logged
in, U logged in, and an anonymous event). V also browses on C4, and C5 is a stranger. U also
has an invalid event and a malformed object in the quarantine, and a stranger a malformed one.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from support.notifications import s3_notification, sqs_event
from typer.testing import CliRunner

import lambda_function
from loader.cli import app
from loader.identity import ErasureKeyError
from loader.observability import set_log_stream
from loader.pipeline.erase import ErasureInputError
from loader.window import hour_label, hour_prefix
from tools.demo.traffic import generate_hour

T13 = datetime(2026, 11, 24, 13, tzinfo=UTC)
T14 = T13 + timedelta(hours=1)
KEY = "k" * 40
U, V = "user-u-7f3a", "user-v-91bc"
C1, C2, C3, C4, C5 = (f"client-{n}-{uuid.uuid4().hex[:6]}" for n in range(1, 6))
TEMPLATE: dict[str, Any] = json.loads(next(generate_hour(T13, 1, malformed_ratio=0, seed=3)).body)
# Bodies of malformed objects: one naming U (truncated JSON), one naming nobody.
U_MALFORMED = b'{"eventName":"click","userId":"' + U.encode() + b'","clientId":"x'
NOBODY_MALFORMED = b"{not json at all"


def iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def document(name: str | None, user: str | None, client: str | None, at: datetime) -> bytes:
    """A real-shaped tracker event as the ingest Lambda stores it."""
    doc = {k: v for k, v in TEMPLATE.items() if k not in ("product", "element")}
    doc.update(
        eventId=str(uuid.uuid4()),
        userId=user,
        userLoginState="logged_in" if user else "anonymous",
        clientId=client,
        sessionId=f"session-{client}",
    )
    if name is None:
        del doc["eventName"]
    else:
        doc["eventName"] = name
    doc["_ingest"] = {**TEMPLATE["_ingest"], "receivedAt": iso(at)}
    return json.dumps(doc).encode()


@dataclass
class Hour:
    """The keys planted, by whose they are."""

    bucket: str
    theirs: dict[str, bytes] = field(default_factory=dict)
    others: dict[str, bytes] = field(default_factory=dict)

    def put(self, s3: Any, body: bytes, *, subject: bool, hour: datetime = T13) -> str:
        key = f"{hour_prefix(hour)}event-{uuid.uuid4()}.json"
        s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        (self.theirs if subject else self.others)[key] = body
        return key


def plant(s3: Any, bucket: str) -> Hour:
    hour = Hour(bucket)
    at = iter(T13 + timedelta(minutes=m) for m in range(1, 60))
    for user, client, subject in (
        (None, C1, True),  # U before logging in
        (None, C1, True),
        (U, C1, True),
        (U, C1, True),
        (U, C2, True),
        (None, C2, True),
        (V, C3, False),  # the shared browser: V's stays
        (U, C3, True),
        (None, C3, True),  # anonymous on a browser seen with U: U's by the rule
        (V, C4, False),
        (None, C4, False),  # V's anonymous events: never U's
        (None, C5, False),
        (U, C5, True),  # U on a stranger's browser: U's event, C5's anonymous ones stay
    ):
        hour.put(s3, document("page_view", user, client, next(at)), subject=subject)
    # C5 was seen with U, so its anonymous event above is U's by the rule after all.
    hour.theirs.update({k: b for k, b in hour.others.items() if json.loads(b)["clientId"] == C5})
    hour.others = {k: b for k, b in hour.others.items() if json.loads(b)["clientId"] != C5}
    hour.put(s3, document(None, U, C1, next(at)), subject=True)  # invalid: quarantined
    hour.put(s3, U_MALFORMED, subject=True)
    hour.put(s3, NOBODY_MALFORMED, subject=False)
    return hour


@pytest.fixture
def env(loader_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("ERASURE_HMAC_KEY", KEY)
    lambda_function._factory.close()
    yield {**loader_env, "ERASURE_HMAC_KEY": KEY}
    lambda_function._factory.close()


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    try:
        return lambda_function.lambda_handler(event, None)
    finally:
        lambda_function._factory.close()


def cli(*args: str, code: int = 0) -> Any:
    """The CLI in-process: its --json output, or for a failure (code 2) its error text."""
    try:
        result = CliRunner().invoke(app, [*args, "--json"])
    finally:
        set_log_stream("stdout")
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout) if code != 2 else result.stderr


def rows(engine: sa.Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


def count(engine: sa.Engine, sql: str, **params: Any) -> int:
    return int(rows(engine, sql, **params)[0][0])


def subject_rows(
    engine: sa.Engine, user: str = U, clients: tuple[str, ...] = (C1, C2, C3, C5)
) -> int:
    return count(
        engine,
        "SELECT count(*) FROM clickstream_events WHERE user_id = :u "
        "OR (user_id IS NULL AND client_id = ANY(:c))",
        u=user,
        c=list(clients),
    )


def keys_in(s3: Any, bucket: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def clear_text_hits(engine: sa.Engine, *identifiers: str) -> dict[str, int]:
    """Rows of any table of the warehouse whose text holds one of the identifiers (each
    partitioned table once, through its parent)."""
    tables = [
        r[0]
        for r in rows(
            engine,
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
        )
    ]
    hits = {}
    for table in tables:
        for identifier in identifiers:
            n = count(
                engine, f"SELECT count(*) FROM {table} t WHERE t::text LIKE :p", p=f"%{identifier}%"
            )
            if n:
                hits[f"{table}:{identifier}"] = n
    return hits


def test_erase_a_user_with_pre_login_events_and_a_shared_browser(
    env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    hour = plant(s3, bucket)
    loaded = invoke({"hour": hour_label(T13)})
    assert (loaded["inserted"], loaded["quarantined"]["count"], loaded["malformed"]["count"]) == (
        13,
        0,
        2,
    )
    assert loaded["invalid"]["count"] == 1
    ledger_before = rows(dw_engine, "SELECT run_id, inserted FROM clickstream_load_runs")

    record = cli("erase", "--user-id", U, "--request-id", "TICKET-1")

    assert record["state"] == "complete", record["open_reason"]
    stores = record["stores"]
    assert stores["clickstream_events"]["deleted"] == 10
    assert stores["clickstream_ingest_meta"]["deleted"] == 10
    assert stores["clickstream_quarantine"]["deleted"] == 2  # the invalid event, the U body
    assert stores["bucket"]["objects_deleted"] == len(hour.theirs) == 12
    assert record["identifiers"] == {"user_ids": 1, "client_ids": 0, "found_client_ids": 4}
    assert record["remaining"] == {
        "clickstream_events": 0,
        "clickstream_ingest_meta": 0,
        "clickstream_quarantine": 0,
        "bucket": 0,
    }
    assert subject_rows(dw_engine) == 0
    kept = rows(dw_engine, "SELECT user_id, client_id FROM clickstream_events ORDER BY 1, 2")
    assert sorted(map(tuple, kept), key=str) == sorted([(V, C3), (V, C4), (None, C4)], key=str)
    assert count(dw_engine, "SELECT count(*) FROM clickstream_ingest_meta") == 3
    assert keys_in(s3, bucket) == set(hour.others)
    assert count(dw_engine, "SELECT count(*) FROM clickstream_quarantine") == 1  # nobody's
    # Nothing else touched: the ledger as the run wrote it; the hour reconciles; status says.
    assert rows(dw_engine, "SELECT run_id, inserted FROM clickstream_load_runs") == ledger_before
    assert cli("check", "--hour", hour_label(T13))["unloaded_keys"] == []
    status = cli("status", "--start", hour_label(T13), "--end", hour_label(T13))["hours"][0]
    assert (status["state"], status["inserted"], status["erased"]) == ("complete", 13, 10)
    # C3 stays only as the client id of V's own event (and V's count in the dashboard's
    # unique-clients rollup): the shared browser is V's too.
    assert clear_text_hits(dw_engine, U, C1, C2, C3, C5) == {
        f"clickstream_events:{C3}": 1,
        f"clickstream_rollup_clients:{C3}": 1,
    }
    listed = cli("erasures")["requests"]
    assert [(r["request_id"], r["state"]) for r in listed] == [("TICKET-1", "complete")]


def test_erase_a_client_id_takes_only_its_anonymous_events(
    env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    hour = plant(s3, bucket)
    invoke({"hour": hour_label(T13)})

    record = invoke({"action": "erase", "client_ids": [C3], "request_id": "ticket-c3"})

    assert (record["request_id"], record["state"]) == ("ticket-c3", "complete")
    assert json.loads(json.dumps(record)) == record  # the Lambda's answer is plain JSON
    assert record["stores"]["clickstream_events"]["deleted"] == 1
    assert (
        count(dw_engine, "SELECT count(*) FROM clickstream_events WHERE client_id = :c", c=C3) == 2
    )
    assert (
        count(
            dw_engine,
            "SELECT count(*) FROM clickstream_events WHERE client_id = :c AND user_id IS NULL",
            c=C3,
        )
        == 0
    )
    anonymous_c3 = [k for k, b in hour.theirs.items() if b'userId": null' in b and C3.encode() in b]
    assert len(anonymous_c3) == 1
    assert keys_in(s3, bucket) == (set(hour.theirs) | set(hour.others)) - set(anonymous_c3)


def test_every_load_path_after_an_erase_reloads_nothing_of_the_subject(
    env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    hour = plant(s3, bucket)
    invoke({"hour": hour_label(T13)})
    cli("erase", "--user-id", U)
    others = count(dw_engine, "SELECT count(*) FROM clickstream_events")
    # GIVEN every object of the subject back in the bucket (restored from a backup, same keys),
    # and objects of theirs that were never loaded (received before the request)
    for key, body in hour.theirs.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    later = [T13 + timedelta(minutes=58, seconds=s) for s in range(4)]
    fresh = [hour.put(s3, document("click", U, C2, at), subject=True) for at in later[:1]]

    # WHEN each load path runs: the schedule (and its lookback), run, backfill --force
    scheduled = invoke({"source": "aws.events", "time": "2026-11-24T14:05:00Z"})
    assert (scheduled["inserted"], scheduled["suppressed"]) == (0, 11)
    fresh.append(hour.put(s3, document("click", None, C1, later[1]), subject=True))
    looked_back = invoke({"source": "aws.events", "time": "2026-11-24T15:05:00Z"})
    assert looked_back["lookback"][0]["inserted"] == 0
    assert cli("run", "--hour", hour_label(T13))["suppressed"] == 12
    assert (
        cli("backfill", "--start", hour_label(T13), "--end", hour_label(T13), "--force")["hours"][
            0
        ]["suppressed"]
        == 12
    )
    # ... reprocess: the quarantined invalid event of the subject, now a valid one
    invalid_key = next(k for k, b in hour.theirs.items() if b"eventName" not in b)
    s3.put_object(Bucket=bucket, Key=invalid_key, Body=document("click", U, C1, later[2]))
    reprocessed = cli("reprocess", "--hour", hour_label(T13))["hours"]
    assert [(r["inserted"], r["suppressed"]) for r in reprocessed] == [(0, 1)]
    # ... the SQS event loader, and the fan-out's shards and finalize
    fresh.append(hour.put(s3, document("click", U, C3, later[3]), subject=True))
    notified = invoke(sqs_event([s3_notification(bucket, fresh[-1])]))
    assert notified == {"batchItemFailures": []}
    plan = invoke({"action": "plan", "hour": hour_label(T13), "shard_count": 2})
    for shard in plan["shards"]:
        invoke(shard)
    final = invoke({"action": "finalize", "hour": hour_label(T13), "shard_count": 2})

    # THEN none of it came back, and the ledger counted it as suppressed
    assert final["inserted"] == 0 and final["suppressed"] == 14
    assert subject_rows(dw_engine) == 0
    assert count(dw_engine, "SELECT count(*) FROM clickstream_events") == others
    by_trigger = dict(
        rows(
            dw_engine,
            "SELECT trigger, max(suppressed) FROM clickstream_load_runs "
            "WHERE suppressed > 0 GROUP BY trigger",
        )
    )
    assert set(by_trigger) == {"schedule", "lookback", "manual", "backfill", "reprocess", "event"}
    assert cli("check", "--hour", hour_label(T13))["unloaded_keys"] == []


def test_a_person_back_after_the_request_is_new_unless_the_future_is_suppressed(
    env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    hour = plant(s3, bucket)
    invoke({"hour": hour_label(T13)})
    cli("erase", "--user-id", U)
    cli("erase", "--user-id", V, "--suppress-future")
    # GIVEN both back after their requests (received after them), and an old event of each
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    hour.put(s3, document("page_view", U, C1, tomorrow), subject=True)
    hour.put(s3, document("page_view", V, C4, tomorrow), subject=False)
    hour.put(s3, document("page_view", U, C1, T13 + timedelta(minutes=59)), subject=True)
    hour.put(s3, document("page_view", V, C4, T13 + timedelta(minutes=59)), subject=False)

    report = cli("run", "--hour", hour_label(T13))

    # THEN U's later event loads (a new visitor), V's does not; neither old one does
    assert (report["inserted"], report["suppressed"]) == (1, 3)
    assert count(dw_engine, "SELECT count(*) FROM clickstream_events WHERE user_id = :u", u=U) == 1
    assert count(dw_engine, "SELECT count(*) FROM clickstream_events WHERE user_id = :v", v=V) == 0


def test_a_versioned_bucket_loses_every_version_of_the_subjects_objects(
    env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    hour = Hour(bucket)
    theirs = hour.put(s3, document("page_view", U, C1, T13 + timedelta(minutes=5)), subject=True)
    s3.put_object(
        Bucket=bucket, Key=theirs, Body=document("page_view", U, C1, T13 + timedelta(minutes=6))
    )
    s3.delete_object(Bucket=bucket, Key=theirs)  # a delete marker on top of two versions
    s3.put_object(Bucket=bucket, Key=theirs, Body=hour.theirs[theirs])
    other = hour.put(s3, document("page_view", V, C4, T13 + timedelta(minutes=7)), subject=False)
    s3.put_object(Bucket=bucket, Key=other, Body=hour.others[other])
    invoke({"hour": hour_label(T13)})

    record = cli("erase", "--user-id", U)

    assert record["state"] == "complete"
    assert record["stores"]["bucket"] == {
        "objects_deleted": 1,
        "versions_deleted": 4,
        "finished_at": record["stores"]["bucket"]["finished_at"],
    }
    versions = s3.list_object_versions(Bucket=bucket)
    left = [v["Key"] for v in [*versions.get("Versions", []), *versions.get("DeleteMarkers", [])]]
    assert left == [other, other]


def test_adopted_rows_are_found_in_their_hour_folder_or_named_as_not_found(
    env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    # GIVEN rows the original ETL wrote (no ingest row, no key), two of which have their object
    # in the folder of their hour (one by event id, one without an id of its own), one not
    hour = Hour(bucket)
    at = [T13 + timedelta(minutes=m) for m in (10, 20, 30, 40)]
    with_id = document("page_view", U, C1, at[0])
    hour.put(s3, with_id, subject=True)
    legacy = json.loads(document("click", None, C1, at[1]))
    del legacy["eventId"]
    hour.put(s3, json.dumps(legacy).encode(), subject=True)
    other = hour.put(s3, document("page_view", V, C4, at[3]), subject=False)
    adopted = [
        (json.loads(with_id)["eventId"], "page_view", U, C1, at[0]),
        (str(uuid.uuid4()), "click", None, C1, at[1]),
        (str(uuid.uuid4()), "page_view", U, C1, at[2]),  # its object is gone
        (str(uuid.uuid4()), "page_view", V, C4, at[3]),
    ]
    with dw_engine.begin() as conn:
        # The original ETL's rows sit in day partitions like the loader's.
        conn.execute(sa.text("SELECT clickstream_ensure_partitions(:d, :d)"), {"d": T13.date()})
        for event_id, name, user, client, when in adopted:
            conn.execute(
                sa.text(
                    "INSERT INTO clickstream_events (event_id, event_name, event_timestamp, "
                    "user_id, client_id) VALUES (:i, :n, :t, :u, :c)"
                ),
                {"i": event_id, "n": name, "t": when, "u": user, "c": client},
            )
    # Rows written by hand: the dashboard's rollups count them once rebuilt (revision 0008
    # fills them from the rows an adopted warehouse already holds).
    cli("rollup", "--start", hour_label(T13), "--end", hour_label(T13), code=0)

    record = cli("erase", "--user-id", U, code=0)

    assert record["state"] == "complete"
    assert record["stores"]["clickstream_events"]["deleted"] == 3
    assert record["objects"]["adopted_not_found"] == [
        {"event_id": adopted[2][0], "hour": hour_label(T13)}
    ]
    assert keys_in(s3, bucket) == {other}
    assert count(dw_engine, "SELECT count(*) FROM clickstream_events") == 1


def test_a_dry_run_says_what_would_go_and_changes_nothing(
    env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    hour = plant(s3, bucket)
    invoke({"hour": hour_label(T13)})

    plan = cli("erase", "--user-id", U, "--dry-run")

    assert plan["dry_run"] is True and plan["found_client_ids"] == 4
    would = plan["would_delete"]
    assert (would["events"], would["quarantine_rows"], would["objects"]) == (10, 2, 12)
    assert subject_rows(dw_engine) == 10
    assert keys_in(s3, bucket) == set(hour.theirs) | set(hour.others)
    assert count(dw_engine, "SELECT count(*) FROM clickstream_erasure_requests") == 0
    assert count(dw_engine, "SELECT count(*) FROM clickstream_suppressions") == 0


def test_bad_input_gets_a_clear_error_and_an_unknown_person_a_complete_empty_request(
    env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant(s3, bucket)
    invoke({"hour": hour_label(T13)})
    assert "at least one --user-id or --client-id" in cli("erase", code=2)
    assert "--user-id must not be empty" in cli("erase", "--user-id", " ", code=2)
    assert "--client-id must not be empty" in cli("erase", "--client-id", "", code=2)
    with pytest.raises(ErasureInputError, match="user_ids must be a list of strings"):
        invoke({"action": "erase", "user_ids": U})

    nobody = cli("erase", "--user-id", "nobody-at-all", "--request-id", "R-1")
    assert nobody["state"] == "complete"
    assert nobody["stores"]["clickstream_events"]["deleted"] == 0
    assert nobody["stores"]["bucket"]["objects_deleted"] == 0
    assert "was used for other identifiers" in cli(
        "erase", "--user-id", U, "--request-id", "R-1", code=2
    )
    assert cli("erase", "--user-id", "nobody-at-all", "--request-id", "R-1")["state"] == "complete"
    assert subject_rows(dw_engine) == 10

    # Without the key, nothing erases, and nothing loads once the list holds an entry
    monkeypatch.delenv("ERASURE_HMAC_KEY")
    assert "erase needs the erasure key" in cli("erase", "--user-id", U, code=2)
    with pytest.raises(ErasureKeyError, match="ERASURE_HMAC_KEY"):
        invoke({"hour": hour_label(T13)})
    monkeypatch.setenv("ERASURE_HMAC_KEY", "another key of at least thirty-two chars")
    with pytest.raises(ErasureKeyError, match="not the one the suppression list was made with"):
        invoke({"hour": hour_label(T13)})


def _slow_inserts(engine: sa.Engine, table: str, seconds: float) -> None:
    """Every INSERT statement into `table` of this test's own database takes `seconds` longer:
    a transaction held open at the worst moment, on demand."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE OR REPLACE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                f"CREATE TRIGGER slow_insert AFTER INSERT ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION slow_insert()"
            )
        )


def _wait_for_a_slow_insert(engine: sa.Engine) -> None:
    """Until some session sleeps inside `_slow_inserts`' trigger (its transaction open)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sleeping = count(
            engine, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
        )
        if sleeping:
            return
        time.sleep(0.02)
    raise AssertionError("no insert reached the trigger")


class Background(threading.Thread):
    """A call on its own thread, its result or error kept for the test."""

    def __init__(self, call: Any) -> None:
        super().__init__(daemon=True)
        self.call, self.result, self.error = call, None, None

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def outcome(self) -> Any:
        self.join(timeout=120)
        assert not self.is_alive(), "deadlocked"
        if self.error is not None:
            raise self.error
        return self.result


def test_an_erase_racing_a_load_of_the_same_hour_lets_nothing_in_either_way(
    env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    from loader.app import open_loader
    from loader.operations import erase
    from loader.pipeline.erase import ErasureRequest
    from loader.pipeline.runs import run_trigger
    from loader.window import Trigger

    hour = plant(s3, bucket)
    # 1. A batch holds the hour's rows uncommitted when the erase starts: the erase waits for
    #    it, then deletes what it wrote.
    _slow_inserts(dw_engine, "clickstream_events", 1)

    def load() -> Any:
        with open_loader() as loader:
            return run_trigger(loader, Trigger(T13, "manual"))

    loading = Background(load)
    loading.start()
    _wait_for_a_slow_insert(dw_engine)
    with open_loader() as loader:
        record = erase(loader, ErasureRequest(user_ids=(U,)))
    assert loading.outcome().inserted == 13
    assert record["state"] == "complete"
    assert record["stores"]["clickstream_events"]["deleted"] == 10
    assert subject_rows(dw_engine) == 0

    # 2. An erase holds the list when notified objects of the same hour load: the load waits,
    #    then refuses the subject's events.
    with dw_engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER slow_insert ON clickstream_events"))
    _slow_inserts(dw_engine, "clickstream_suppressions", 1)
    at = T13 + timedelta(minutes=59)
    new = [
        hour.put(s3, document("click", V, C4, at), subject=False),
        hour.put(s3, document("click", None, C4, at), subject=False),
    ]

    def erase_v() -> Any:
        with open_loader() as loader:
            return erase(loader, ErasureRequest(user_ids=(V,)))

    erasing = Background(erase_v)
    erasing.start()
    _wait_for_a_slow_insert(dw_engine)
    notified = invoke(sqs_event([s3_notification(bucket, key) for key in new]))
    assert notified == {"batchItemFailures": []}
    assert erasing.outcome()["state"] == "complete"
    assert (
        count(
            dw_engine,
            "SELECT count(*) FROM clickstream_load_runs WHERE trigger = 'event' AND suppressed = 2",
        )
        == 1
    )
    assert subject_rows(dw_engine, V, (C3, C4)) == 0
