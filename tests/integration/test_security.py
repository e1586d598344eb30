"""Secrets and row values stay out of everything a failing (or poisoned) run leaves behind.

Each scenario runs the loader twice - as a real process (`python -m loader run --hour ... --json`)
and as the Lambda handler in this process - with a known password in DW_PG_PASSWORD (or in a
Secrets Manager secret), ANONYMIZE_IP=true, and a secret-looking token planted in the events.
Then everything it left is collected: the process's stdout and stderr, the handler's stdout and
stderr (its log lines and EMF metric lines), the raised exception (str, repr and the chain under
it), the ledger rows and the quarantine rows. None of it may contain the password, the token,
a source IP that anonymisation should have cut, or PostgreSQL's row-echoing error text
(`DETAIL:`, `Failing row contains`). The scenarios: an unreachable warehouse, a login without
INSERT on the events table, and a row a CHECK (or a NOT NULL) the DBA added refuses.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import lambda_function
from loader.secrets import forget_database_secrets
from loader.window import hour_prefix
from tools.demo.traffic import generate_hour, upload

ROOT = Path(__file__).resolve().parents[2]
HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)
LABEL = "2026-11-24T13"
PASSWORD = "pw-7Hq2-zX9v-NEVER-LOG-ME"  # the string the test hunts for
SECRET_PASSWORD = "sm-4Kd8-rT1w-FROM-SECRETS-MANAGER"
TOKEN = "tok_live_9f8e7d6c5b4a-POISON"  # a secret-looking value inside an event
ROW_ECHO = ("DETAIL:", "Failing row contains")
#: The generator's source IPs are 203.0.113.1-254; anonymised to /24 they all become .0.
FULL_IP = re.compile(r"203\.0\.113\.(?:[1-9]\d?|1\d\d|2[0-4]\d|25[0-4])\b")


@dataclass
class Leftovers:
    """Everything one run left behind, by where it was found."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, where: str, text: Any) -> None:
        self.texts[where] = self.texts.get(where, "") + str(text)

    def add_exception(self, where: str, exc: BaseException) -> None:
        self.add(f"{where}: str", str(exc))
        self.add(f"{where}: repr", repr(exc))
        self.add(f"{where}: traceback", "".join(traceback.format_exception(exc)))

    def find(self, needle: str | re.Pattern[str]) -> list[str]:
        if isinstance(needle, re.Pattern):
            return [where for where, text in self.texts.items() if needle.search(text)]
        return [where for where, text in self.texts.items() if needle in text]

    def assert_clean(self, *, secrets: tuple[str, ...] = (PASSWORD, TOKEN)) -> None:
        found = {needle: self.find(needle) for needle in (*secrets, *ROW_ECHO)}
        found["full source IP"] = self.find(FULL_IP)
        assert not any(found.values()), {k: v for k, v in found.items() if v}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def plant(s3: Any, bucket: str, *, poison: int = 3) -> list[Any]:
    """An hour of 60 objects whose first `poison` events carry TOKEN as their userId."""
    objects = list(generate_hour(HOUR, 60, malformed_ratio=0.05, seed=77))
    prefix = hour_prefix(HOUR)
    for i in range(poison):
        event = {
            "event_name": "page_view",
            "timestamp": "2026-11-24T13:30:00Z",
            "userId": TOKEN,
            "pageUrl": f"https://shop.example.com/?token={TOKEN}",
            "_ingest": {"sourceIp": f"203.0.113.{200 + i}", "requestId": f"r-{i}"},
        }
        key = f"{prefix}event-{uuid.UUID(int=i + 1, version=4)}.json"
        from tools.demo.traffic import RawObject

        objects.append(RawObject(key, json.dumps(event).encode()))
    return upload(s3, bucket, objects)


def collect_db(engine: sa.Engine, leftovers: Leftovers) -> None:
    """The ledger and the quarantine (every column), and the stored IPs."""
    with engine.connect() as conn:
        for table in ("clickstream_load_runs", "clickstream_quarantine"):
            rows = conn.execute(sa.text(f"SELECT * FROM {table}")).mappings().all()
            leftovers.add(table, "\n".join(json.dumps(dict(r), default=str) for r in rows))
        ips = conn.execute(sa.text("SELECT source_ip::text FROM clickstream_ingest_meta")).scalars()
        leftovers.add("clickstream_ingest_meta.source_ip", " ".join(str(ip) for ip in ips))
        payloads = conn.execute(
            sa.text("SELECT properties::text FROM clickstream_events")
        ).scalars()
        leftovers.add("clickstream_events.properties", " ".join(str(p) for p in payloads))


def run_process(env: dict[str, str], leftovers: Leftovers) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "loader", "run", "--hour", LABEL, "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    leftovers.add("process stdout", done.stdout)
    leftovers.add("process stderr", done.stderr)
    return done.returncode


def run_handler(capfd: pytest.CaptureFixture[str], leftovers: Leftovers) -> BaseException | None:
    capfd.readouterr()
    lambda_function._factory.close()
    error: BaseException | None = None
    try:
        summary = lambda_function.lambda_handler({"hour": LABEL}, None)
        leftovers.add("handler return value", json.dumps(summary, default=str))
    except Exception as exc:
        error = exc
        leftovers.add_exception("handler exception", exc)
    finally:
        lambda_function._factory.close()
    captured = capfd.readouterr()
    leftovers.add("handler stdout (logs, EMF)", captured.out)
    leftovers.add("handler stderr", captured.err)
    return error


@pytest.fixture
def secure_env(
    loader_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    monkeypatch.setenv("DW_PG_PASSWORD", PASSWORD)
    monkeypatch.setenv("ANONYMIZE_IP", "true")
    monkeypatch.setenv("DB_RETRY_BUDGET_SECONDS", "1")
    monkeypatch.setenv("DB_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("MAX_RECORDS_PER_BATCH", "20")
    forget_database_secrets()
    yield dict(os.environ)
    forget_database_secrets()


# --- scenarios -------------------------------------------------------------------------------


def test_unreachable_warehouse_leaks_no_password(
    secure_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    plant(s3, bucket)
    port = closed_port()
    monkeypatch.setenv("DW_PG_HOST", "127.0.0.1")
    monkeypatch.setenv("DW_PG_PORT", str(port))
    leftovers = Leftovers()
    assert run_process(dict(os.environ), leftovers) != 0
    error = run_handler(capfd, leftovers)
    assert isinstance(error, sa.exc.OperationalError)
    assert "Connection refused" in leftovers.texts["handler exception: str"]
    collect_db(dw_engine, leftovers)
    leftovers.assert_clean()


def test_password_from_secrets_manager_leaks_nowhere(
    secure_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The Secrets Manager path (the recommended one): the secret's password is not logged
    when the warehouse it names cannot be reached."""
    import boto3

    client = boto3.client("secretsmanager", endpoint_url=s3_endpoint, region_name="us-east-1")
    port = closed_port()
    secret = {
        "engine": "postgres",
        "host": "127.0.0.1",
        "port": port,
        "username": "clickstream_loader_lambda",
        "password": SECRET_PASSWORD,
        "dbname": "warehouse",
    }
    arn = client.create_secret(
        Name=f"dw/sec-{uuid.uuid4().hex[:8]}", SecretString=json.dumps(secret)
    )["ARN"]
    plant(s3, bucket)
    for name in ("DW_PG_HOST", "DW_PG_PORT", "DW_PG_USER", "DW_PG_PASSWORD", "DW_PG_DATABASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DW_PG_SECRET_ARN", arn)
    leftovers = Leftovers()
    assert run_process(dict(os.environ), leftovers) != 0
    error = run_handler(capfd, leftovers)
    assert isinstance(error, sa.exc.OperationalError)
    assert str(port) in leftovers.texts["handler exception: str"]  # it did use the secret
    collect_db(dw_engine, leftovers)
    leftovers.assert_clean(secrets=(SECRET_PASSWORD, TOKEN))


@pytest.fixture
def login_without_insert(
    dw_engine: sa.Engine, dw_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A login that may do everything deploy/grants.sql allows except INSERT into the events
    table (a grant a DBA forgot), with PASSWORD as its password."""
    role = f"sec_loader_{uuid.uuid4().hex[:8]}"
    database = dw_settings.database
    with dw_engine.begin() as conn:
        # The password is bound by psql-style quoting here only because CREATE ROLE takes no
        # parameters; it is the test's own constant.
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'"))
        conn.execute(sa.text(f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO {role}'))
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        conn.execute(
            sa.text(
                "GRANT SELECT ON clickstream_events, alembic_version, clickstream_adoptions, "
                f"clickstream_retention TO {role}"
            )
        )
        conn.execute(sa.text(f"GRANT SELECT, INSERT ON clickstream_ingest_meta TO {role}"))
        conn.execute(
            sa.text(
                f"GRANT SELECT, INSERT, UPDATE ON clickstream_load_runs, clickstream_quarantine "
                f"TO {role}"
            )
        )
        # Everything else the loader needs (deploy/grants.sql): only INSERT on the events is
        # missing, so that is what fails.
        conn.execute(sa.text(f"GRANT SELECT, INSERT, DELETE ON clickstream_event_claims TO {role}"))
        conn.execute(
            sa.text(
                f"GRANT EXECUTE ON FUNCTION clickstream_ensure_partitions(date, date) TO {role}"
            )
        )
    monkeypatch.setenv("DW_PG_USER", role)
    try:
        yield role
    finally:
        with dw_engine.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))


@pytest.mark.parametrize("write_method", ["copy", "insert"])
def test_missing_table_privilege_fails_loudly_and_leaks_nothing(
    write_method: str,
    secure_env: dict[str, str],
    login_without_insert: str,
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("WRITE_METHOD", write_method)
    plant(s3, bucket)
    leftovers = Leftovers()
    assert run_process(dict(os.environ), leftovers) != 0
    error = run_handler(capfd, leftovers)
    assert isinstance(error, sa.exc.ProgrammingError)
    assert "permission denied" in str(error)
    collect_db(dw_engine, leftovers)
    # The ledger says what happened, by SQLSTATE and table only.
    assert "SQLSTATE 42501 (insufficient_privilege)" in leftovers.texts["clickstream_load_runs"]
    leftovers.assert_clean()


@pytest.mark.parametrize("write_method", ["copy", "insert"])
@pytest.mark.parametrize(
    "constraint",
    [
        "ADD CONSTRAINT no_tokens CHECK (user_id IS NULL OR user_id NOT LIKE 'tok_live_%%')",
        # Copied into the COPY staging table by LIKE: refused by COPY itself, not the INSERT.
        "ALTER COLUMN client_id SET NOT NULL",
    ],
    ids=["check", "not_null"],
)
def test_rows_the_database_refuses_are_quarantined_without_their_values(
    constraint: str,
    write_method: str,
    secure_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A DBA's constraint refuses the poisoned events (they carry TOKEN and no clientId): the
    batch is bisected, they are quarantined by SQLSTATE and constraint, the rest loads, and
    "Failing row contains (... TOKEN ...)" appears nowhere."""
    monkeypatch.setenv("WRITE_METHOD", write_method)
    with dw_engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE clickstream_events {constraint}"))
    objects = plant(s3, bucket)
    good = sum(1 for o in objects if o.expect == "event") - 3
    leftovers = Leftovers()
    assert run_process(dict(os.environ), leftovers) == 0
    report = json.loads(leftovers.texts["process stdout"])
    assert (report["state"], report["inserted"], report["quarantined"]["count"]) == (
        "complete",
        good,
        3,
    )
    # the handler, on the same hour: nothing new, the same quarantine refreshed, EMF printed
    assert run_handler(capfd, leftovers) is None
    assert '"EventsInserted"' in leftovers.texts["handler stdout (logs, EMF)"]
    collect_db(dw_engine, leftovers)
    quarantine = leftovers.texts["clickstream_quarantine"]
    assert quarantine.count('"reason_code": "rejected"') == 3
    assert ("23514" if "CHECK" in constraint else "23502") in quarantine
    leftovers.assert_clean()


@pytest.mark.parametrize("write_method", ["copy", "insert"])
def test_target_table_is_an_identifier_quoted_everywhere(
    write_method: str,
    loader_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TARGET_TABLE reaches SQL only as a validated, quoted identifier: a mixed-case name (legal)
    loads through both write paths (the COPY staging table used to be created unquoted, i.e.
    folded to lower case, and then addressed quoted: 42P01), and anything that is not an
    identifier stops the loader before it connects."""
    from loader.config import ConfigError, load_settings

    for hostile in ("events; DROP TABLE clickstream_events", 'a"b', "a.b.c", "x y", "1abc"):
        monkeypatch.setenv("TARGET_TABLE", hostile)
        with pytest.raises(ConfigError, match="TARGET_TABLE"):
            load_settings()
    with dw_engine.begin() as conn:
        # A DBA's own events table (plain, not partitioned), beside the partitioned siblings
        conn.execute(sa.text('CREATE TABLE "ClickEvents" (LIKE clickstream_events INCLUDING ALL)'))
    monkeypatch.setenv("TARGET_TABLE", "ClickEvents")
    monkeypatch.setenv("WRITE_METHOD", write_method)
    objects = upload(s3, bucket, generate_hour(HOUR, 30, malformed_ratio=0, seed=5))
    lambda_function._factory.close()
    try:
        summary = lambda_function.lambda_handler({"hour": LABEL}, None)
    finally:
        lambda_function._factory.close()
    assert (summary["state"], summary["inserted"]) == ("complete", len(objects))
    with dw_engine.connect() as conn:
        assert conn.execute(sa.text('SELECT count(*) FROM "ClickEvents"')).scalar_one() == 30
        assert conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one() == 0
