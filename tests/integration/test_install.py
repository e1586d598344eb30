"""A plain `pip install` of the wheel, outside the checkout, loads an hour and migrates a database.

The wheel is built as `make package` builds it (deploy/build_package.py's `build_wheel`), then
installed with its `[cli,migrations]` extras into a fresh virtualenv: no system site-packages,
no editable hook, nothing on PYTHONPATH, every command run from an empty folder. Its
dependencies come from wheels repacked from this environment (tests/support/wheelhouse.py): the
versions the suite runs with, and no index. So whatever the installed code needs from the
checkout (migrations/, alembic.ini, a path computed from `__file__`) fails here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from support.wheelhouse import build_wheelhouse

from loader.config import DatabaseSettings
from loader.schema import HEAD_REVISION, KNOWN_REVISIONS, metadata

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "data" / "samples"
HOUR = "2026-11-24T13"
PREFIX = "events/2026/11/24/13/"
EXTRAS = ("cli", "migrations")
TIMEOUT_S = 300


def _build_package_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_package", ROOT / "deploy" / "build_package.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class Install:
    """The fresh virtualenv, and an empty folder outside the checkout to run commands in."""

    def __init__(self, venv: Path, cwd: Path) -> None:
        self.venv = venv
        self.cwd = cwd

    def run(self, *command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """A console script of the install, or its `python`, with only `env` set."""
        program = str(self.venv / "bin" / command[0])
        return subprocess.run(
            [program, *command[1:]],
            cwd=self.cwd,
            env={
                "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "HOME": str(self.cwd),
                **env,
            },
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    base = tmp_path_factory.mktemp("install")
    wheel = _build_package_module().build_wheel(base / "dist")
    wheelhouse = base / "wheelhouse"
    build_wheelhouse(wheel, EXTRAS, wheelhouse)
    venv = base / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=TIMEOUT_S
    )
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "--no-compile",
            "--quiet",
            f"{wheel}[{','.join(EXTRAS)}]",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout[-4000:] + installed.stderr[-4000:]
    cwd = base / "elsewhere"
    cwd.mkdir()
    yield Install(venv, cwd)


def _aws_env() -> dict[str, str]:
    """The dummy credentials and the S3 endpoint conftest set for this session."""
    return {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "BOTO_"))}


def _db_env(db: DatabaseSettings) -> dict[str, str]:
    env = {
        "DW_PG_HOST": db.host or "",
        "DW_PG_PORT": str(db.port),
        "DW_PG_USER": db.user or "",
        "DW_PG_DATABASE": db.database or "",
        "DW_PG_SSL": "disable",
    }
    if db.password:
        env["DW_PG_PASSWORD"] = db.password
    return env


def _settings_of(conn: psycopg.Connection) -> DatabaseSettings:
    info = conn.info
    return DatabaseSettings(
        host=info.host,
        port=int(info.port),
        user=info.user,
        password=info.password or None,
        database=info.dbname,
    )


def test_the_install_imports_nothing_from_the_checkout(install: Install) -> None:
    probe = (
        "import json, sys, lambda_function, loader.cli, clickstream_migrations.cli\n"
        "print(json.dumps({'files': [m.__file__ for m in (lambda_function, loader.cli,"
        " clickstream_migrations.cli)], 'path': sys.path}))"
    )
    result = install.run("python", "-c", probe, env={})

    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    site = install.venv.resolve()
    assert all(Path(f).resolve().is_relative_to(site) for f in found["files"]), found["files"]
    assert not [p for p in found["path"] if p and Path(p).resolve().is_relative_to(ROOT)]


def test_the_installed_cli_loads_an_hour_and_reports_its_status(
    install: Install,
    dw_settings: DatabaseSettings,
    dw_engine: sa.Engine,
    s3: Any,
    bucket: str,
) -> None:
    # GIVEN the sample events of one hour in S3, and a warehouse at head
    samples = sorted(SAMPLES.glob("*.json"))
    assert len(samples) >= 3
    for path in samples:
        s3.put_object(Bucket=bucket, Key=PREFIX + path.name, Body=path.read_bytes())
    env = {"RAW_BUCKET_NAME": bucket, **_db_env(dw_settings), **_aws_env()}

    # WHEN the installed command line loads the hour, then reports on it
    loaded = install.run("clickstream-loader", "run", "--hour", HOUR, "--json", env=env)
    status = install.run(
        "clickstream-loader", "status", "--start", HOUR, "--end", HOUR, "--json", env=env
    )

    # THEN every event is in the warehouse, and the ledger says so
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    report = json.loads(loaded.stdout)
    assert (report["state"], report["inserted"]) == ("complete", len(samples))
    assert status.returncode == 0, status.stderr[-4000:]
    (hour,) = json.loads(status.stdout)["hours"]
    assert (hour["hour"], hour["state"], hour["inserted"]) == (HOUR, "complete", len(samples))
    with dw_engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one()
    assert rows == len(samples)


def test_the_installed_clickstream_migrate_takes_an_empty_database_to_head(
    install: Install, postgresql: psycopg.Connection
) -> None:
    env = _db_env(_settings_of(postgresql))

    upgraded = install.run("clickstream-migrate", "upgrade", "head", env=env)
    checked = install.run("python", "-m", "clickstream_migrations", "check", env=env)

    assert upgraded.returncode == 0, upgraded.stderr[-4000:]
    assert f"-> {HEAD_REVISION}" in upgraded.stderr
    with postgresql.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        assert cur.fetchall() == [(HEAD_REVISION,)]
        cur.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename <> 'alembic_version'"
        )
        assert {row[0] for row in cur.fetchall()} == set(metadata.tables)
    # The models installed beside the migrations match what they built.
    assert checked.returncode == 0, checked.stderr[-4000:]
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr


def test_the_installed_clickstream_migrate_renders_the_checkouts_sql_offline(
    install: Install,
) -> None:
    # GIVEN no database at all: no DW_PG_* set
    # WHEN the DBA renders the whole history from the install, and from the checkout
    installed = install.run("clickstream-migrate", "upgrade", "head", "--sql", env={})
    checkout = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head", "--sql"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith(("DW_PG_", "ALEMBIC_"))},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )

    # THEN both render the same SQL, one transaction per revision
    assert installed.returncode == 0, installed.stderr[-4000:]
    assert checkout.returncode == 0, checkout.stderr[-4000:]
    assert installed.stdout == checkout.stdout
    # (0006_partition_by_day runs two groups of steps in autocommit: two more transactions)
    assert installed.stdout.count("BEGIN;") == len(KNOWN_REVISIONS) + 2
    assert "CREATE TABLE clickstream_events (" in installed.stdout


def test_clickstream_migrate_refuses_what_does_not_apply_to_an_install(install: Install) -> None:
    for args, message in (
        (("revision", "-m", "x"), "writes revision files"),
        (("-c", "alembic.ini", "current"), "-c/--config does not apply"),
    ):
        result = install.run("clickstream-migrate", *args, env={})
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
