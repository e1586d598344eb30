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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

import lambda_function
from loader.app import open_loader
from loader.cli import app
from loader.observability import set_log_stream
from loader.operations import erase
from loader.pipeline.erase import ErasureRequest
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
    try:
        result = CliRunner().invoke(app, [*args, "--json"])
    finally:
        set_log_stream("stdout")
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout) if result.stdout.strip() else None


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
    """Rows of any table of the warehouse whose text holds one of the identifiers."""
    tables = [
        r[0] for r in rows(engine, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
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
    # C3 stays only as the client id of V's own event: the shared browser is V's too.
    assert clear_text_hits(dw_engine, U, C1, C2, C3, C5) == {f"clickstream_events:{C3}": 1}
    listed = cli("erasures")["requests"]
    assert [(r["request_id"], r["state"]) for r in listed] == [("TICKET-1", "complete")]


def test_erase_a_client_id_takes_only_its_anonymous_events(
    env: dict[str, str], s3: Any, bucket: str, dw_engine: sa.Engine
) -> None:
    hour = plant(s3, bucket)
    invoke({"hour": hour_label(T13)})

    record = cli("erase", "--client-id", C3)

    assert record["state"] == "complete"
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
