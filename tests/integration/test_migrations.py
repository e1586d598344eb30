"""The migrations a DBA runs: on real PostgreSQL, offline, from the command line, and linted.

- pytest-alembic's built-in tests (one head, upgrade, models match DDL, up/down consistency) on a
  fresh empty database per test;
- every revision renders with `alembic upgrade/downgrade A:B --sql` with no database reachable;
- `alembic upgrade head` and `alembic check` as a DBA types them, DW_PG_* pointing at a socket;
- squawk over each revision's SQL, with waivers justified in the revision's own docstring;
- the house rules: revision files import only alembic and sqlalchemy, every column has a comment.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from conftest import alembic_config as project_alembic_config
from conftest import db_settings
from pytest_alembic.tests import (  # noqa: F401 - collected and run by pytest
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)

from loader.config import ConfigError
from loader.schema import metadata

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ROOT / "migrations" / "versions"
SQUAWK = shutil.which("squawk", path=str(Path(sys.executable).parent)) or shutil.which("squawk")
SUBPROCESS_TIMEOUT_S = 120


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(project_alembic_config())


def _revisions_oldest_first() -> list[tuple[str, str | None]]:
    """(revision, down_revision) pairs along the single line of history."""
    revisions = list(_script().walk_revisions("base", "heads"))
    revisions.reverse()
    pairs = []
    for rev in revisions:
        assert not isinstance(rev.down_revision, tuple), f"{rev.revision}: merges are not expected"
        pairs.append((rev.revision, rev.down_revision))
    return pairs


REVISIONS = _revisions_oldest_first()
HEAD = REVISIONS[-1][0]
UPGRADE_RANGES = [f"{down or 'base'}:{rev}" for rev, down in REVISIONS]
DOWNGRADE_RANGES = [f"{rev}:{down or 'base'}" for rev, down in REVISIONS]


# --- pytest-alembic ------------------------------------------------------------------------------


@pytest.fixture
def alembic_engine(postgresql: psycopg.Connection) -> Iterator[sa.Engine]:
    """The empty per-test database; pytest-alembic hands this engine to env.py."""
    engine = sa.create_engine(db_settings(postgresql.info).url(), poolclass=sa.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def alembic_config() -> Config:
    """The project's own alembic.ini and env.py, exactly what a DBA runs."""
    return project_alembic_config()


# --- helpers -------------------------------------------------------------------------------------


def _env_without_database(**overrides: str) -> dict[str, str]:
    """This process's environment minus every DW_PG_* and ALEMBIC_* variable, plus overrides."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DW_PG_", "ALEMBIC_", "PG"))
    }
    env.update(overrides)
    return env


def _env_for(info: psycopg.ConnectionInfo) -> dict[str, str]:
    """DW_PG_* as a DBA would export them for the database behind `info`."""
    return _env_without_database(
        DW_PG_HOST=info.host,
        DW_PG_PORT=str(info.port),
        DW_PG_USER=info.user,
        DW_PG_PASSWORD=info.password or "",
        DW_PG_DATABASE=info.dbname,
        DW_PG_SSL="disable",
    )


def _alembic_cli(
    *args: str, env: dict[str, str], cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )


def _render_offline(revision_range: str, *, downgrade: bool = False) -> str:
    """`alembic upgrade|downgrade RANGE --sql`, in-process, as text."""
    buffer = io.StringIO()
    cfg = Config(str(ROOT / "alembic.ini"), output_buffer=buffer)
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["configure_logging"] = False
    if downgrade:
        command.downgrade(cfg, revision_range, sql=True)
    else:
        command.upgrade(cfg, revision_range, sql=True)
    return buffer.getvalue()


def _migrate(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.upgrade(project_alembic_config(conn), revision)


def _module_docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def _revision_file(revision: str) -> Path:
    script = _script().get_revision(revision)
    assert script is not None, revision
    return Path(script.path)


# --- offline rendering ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_overrides",
    [
        pytest.param({}, id="DW_PG_unset"),
        pytest.param(
            {
                "DW_PG_HOST": "warehouse.invalid",
                "DW_PG_PORT": "1",
                "DW_PG_USER": "dba",
                "DW_PG_PASSWORD": "offline-sentinel-password",
                "DW_PG_DATABASE": "dw",
            },
            id="DW_PG_unreachable",
        ),
    ],
)
def test_upgrade_head_renders_offline_without_a_database(env_overrides: dict[str, str]) -> None:
    # GIVEN no database reachable (DW_PG_* unset, or naming a host that does not resolve)
    env = _env_without_database(**env_overrides)

    # WHEN a DBA renders the whole history as SQL
    result = _alembic_cli("upgrade", "head", "--sql", env=env)

    # THEN it succeeds and creates every table and index the models declare
    assert result.returncode == 0, result.stderr
    sql = result.stdout
    for table in metadata.sorted_tables:
        assert f"CREATE TABLE {table.name} (" in sql
        assert f"COMMENT ON TABLE {table.name} IS" in sql
        for index in table.indexes:
            # IF NOT EXISTS: an index a DBA may build CONCURRENTLY beforehand (revision 0008)
            assert re.search(rf"CREATE INDEX (IF NOT EXISTS )?{index.name} ON {table.name}", sql)
    assert "SET lock_timeout = '5000ms';" in sql
    # One transaction per revision, and 0006 runs two groups of its steps outside one
    # (autocommit: each statement its own transaction, so the long ones hold their locks only
    # while they run).
    assert sql.count("BEGIN;") == len(REVISIONS) + 2, "one transaction per revision"
    assert "offline-sentinel-password" not in result.stdout + result.stderr


@pytest.mark.parametrize("revision_range", UPGRADE_RANGES)
def test_each_upgrade_renders_offline(revision_range: str) -> None:
    result = _alembic_cli("upgrade", revision_range, "--sql", env=_env_without_database())

    assert result.returncode == 0, result.stderr
    # 0005_event_trigger creates nothing: it widens a check constraint.
    assert re.search(r"^(CREATE|ALTER) TABLE ", result.stdout, re.MULTILINE), result.stdout
    assert "COMMIT;" in result.stdout


@pytest.mark.parametrize("revision_range", DOWNGRADE_RANGES)
def test_each_downgrade_renders_offline(revision_range: str) -> None:
    result = _alembic_cli("downgrade", revision_range, "--sql", env=_env_without_database())

    assert result.returncode == 0, result.stderr
    assert re.search(r"^(DROP|ALTER) TABLE ", result.stdout, re.MULTILINE), result.stdout


def test_offline_sql_carries_the_configured_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALEMBIC_LOCK_TIMEOUT_MS", "1234")
    monkeypatch.setenv("ALEMBIC_STATEMENT_TIMEOUT_MS", "600000")

    sql = _render_offline(UPGRADE_RANGES[-1])

    assert sql.index("SET lock_timeout = '1234ms';") < sql.index("BEGIN;")
    assert "SET statement_timeout = '600000ms';" in sql


@pytest.mark.parametrize("name", ["ALEMBIC_LOCK_TIMEOUT_MS", "ALEMBIC_STATEMENT_TIMEOUT_MS"])
@pytest.mark.parametrize("value", ["soon", "-1"])
def test_a_bad_timeout_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError, match=name):
        _render_offline(UPGRADE_RANGES[-1])


# --- the command line, online --------------------------------------------------------------------


def test_alembic_upgrade_head_from_the_project_root(postgresql: psycopg.Connection) -> None:
    # GIVEN an empty database and DW_PG_* as a DBA exports them (socket directory, no password)
    env = _env_for(postgresql.info)

    # WHEN `alembic upgrade head` runs in the project root
    result = _alembic_cli("upgrade", "head", env=env)

    # THEN the database is at head with every table
    assert result.returncode == 0, result.stderr
    assert f"Running upgrade {REVISIONS[-1][1]} -> {HEAD}" in result.stderr
    with postgresql.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        assert cur.fetchall() == [(HEAD,)]
        cur.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename <> 'alembic_version'"
        )
        assert {row[0] for row in cur.fetchall()} == set(metadata.tables)


def test_a_failed_online_run_never_prints_the_password() -> None:
    # GIVEN a password and a server that refuses connections
    env = _env_without_database(
        DW_PG_HOST="127.0.0.1",
        DW_PG_PORT="1",
        DW_PG_USER="dba",
        DW_PG_PASSWORD="online-sentinel-password",
        DW_PG_DATABASE="dw",
        DW_PG_CONNECT_TIMEOUT="2",
    )

    result = _alembic_cli("upgrade", "head", env=env)

    # THEN the run fails, logging the URL with the password masked
    assert result.returncode != 0
    assert "dba:***@127.0.0.1:1/dw" in result.stderr
    assert "online-sentinel-password" not in result.stdout + result.stderr


def test_alembic_check_finds_no_drift(dw: psycopg.Connection) -> None:
    result = _alembic_cli("check", env=_env_for(dw.info))

    assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def test_alembic_check_notices_a_missing_revision(postgresql: psycopg.Connection) -> None:
    # GIVEN a database one revision behind the models
    engine = sa.create_engine(db_settings(postgresql.info).url(), poolclass=sa.NullPool)
    try:
        _migrate(engine, REVISIONS[-2][0] if len(REVISIONS) > 1 else "base")
    finally:
        engine.dispose()

    # WHEN alembic check compares it with the models (after stamping head, so only the DDL differs)
    env = _env_for(postgresql.info)
    assert _alembic_cli("stamp", "head", env=env).returncode == 0
    result = _alembic_cli("check", env=env)

    # THEN the drift is reported and the command fails
    assert result.returncode != 0
    assert "New upgrade operations detected" in result.stdout + result.stderr


def test_an_empty_autogenerate_writes_no_revision(dw: psycopg.Connection, tmp_path: Path) -> None:
    # GIVEN a copy of the migrations (so a broken hook cannot litter the real versions/)
    shutil.copy(ROOT / "alembic.ini", tmp_path / "alembic.ini")
    shutil.copytree(
        ROOT / "migrations", tmp_path / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    before = sorted(p.name for p in (tmp_path / "migrations" / "versions").glob("*.py"))
    env = _env_for(dw.info) | {"PYTHONPATH": str(ROOT)}

    # WHEN autogenerate runs against a database already matching the models
    result = _alembic_cli(
        "revision", "--autogenerate", "-m", "nothing to do", env=env, cwd=tmp_path
    )

    # THEN no file is written
    assert result.returncode == 0, result.stderr
    assert "No schema changes detected" in result.stderr
    after = sorted(p.name for p in (tmp_path / "migrations" / "versions").glob("*.py"))
    assert after == before


def test_lock_timeout_stops_a_migration_stuck_behind_a_lock(
    postgresql: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a database at the first revision, and a session holding a lock the next one needs
    engine = sa.create_engine(db_settings(postgresql.info).url(), poolclass=sa.NullPool)
    try:
        _migrate(engine, REVISIONS[0][0])
        monkeypatch.setenv("ALEMBIC_LOCK_TIMEOUT_MS", "200")
        with engine.connect() as blocker:
            blocker.execute(sa.text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))

            # WHEN the migration runs on its own connection (env.py sets the session timeouts)
            cfg = project_alembic_config()
            cfg.attributes["connection"] = engine
            started = time.monotonic()
            with pytest.raises(sa.exc.OperationalError) as excinfo:
                command.upgrade(cfg, "head")
            elapsed = time.monotonic() - started
            blocker.rollback()

        # THEN it gives up after the lock timeout instead of queueing indefinitely
        assert excinfo.value.orig.pgcode == "55P03"  # lock_not_available
        assert elapsed < 5
    finally:
        engine.dispose()


# --- squawk --------------------------------------------------------------------------------------

_WAIVER = re.compile(r"^- (?P<rule>[a-z0-9-]+): (?P<reason>\S.*)$")


def _squawk_waivers(path: Path) -> dict[str, str]:
    """The `Squawk waivers:` list of a revision's docstring: {rule: first line of the reason}."""
    docstring = _module_docstring(path)
    _, found, section = docstring.partition("Squawk waivers:\n")
    assert found, f"{path.name}: the docstring needs a 'Squawk waivers:' section ('- none')"
    waivers: dict[str, str] = {}
    for line in section.splitlines():
        if not line.strip():
            break
        if line.strip() == "- none":
            continue
        match = _WAIVER.match(line)
        if match:
            waivers[match["rule"]] = match["reason"]
    return waivers


@pytest.mark.skipif(SQUAWK is None, reason="squawk (squawk-cli) is not installed")
@pytest.mark.parametrize(("revision", "down_revision"), REVISIONS, ids=[r for r, _ in REVISIONS])
def test_squawk_finds_nothing_unwaived(
    revision: str, down_revision: str | None, tmp_path: Path
) -> None:
    # GIVEN the SQL this one revision runs
    sql_file = tmp_path / f"{revision}.sql"
    sql_file.write_text(_render_offline(f"{down_revision or 'base'}:{revision}"), encoding="utf-8")
    waivers = _squawk_waivers(_revision_file(revision))

    # WHEN squawk lints it (from tmp_path, so no stray .squawk.toml changes the rules)
    result = subprocess.run(
        [str(SQUAWK), "--reporter", "json", sql_file.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    violations = json.loads(result.stdout or "[]")

    # THEN every violation is waived in the revision's docstring, and every waiver still applies
    unwaived = [
        f"{v['rule_name']} at line {v['line']}: {v['message']}"
        for v in violations
        if v["rule_name"] not in waivers
    ]
    assert not unwaived, "squawk violations not waived in the docstring:\n" + "\n".join(unwaived)
    stale = set(waivers) - {v["rule_name"] for v in violations}
    assert not stale, f"waivers for rules squawk no longer reports; remove them: {sorted(stale)}"
    assert result.returncode in (0, 1), result.stderr
    for rule, reason in waivers.items():
        assert len(reason) >= 20, f"waiver for {rule} needs a real reason"


# --- house rules ---------------------------------------------------------------------------------

ALLOWED_IMPORTS = {"__future__", "collections", "typing", "alembic", "sqlalchemy"}
_FILE_NAME = re.compile(r"^\d{4}_\d{2}_\d{2}_(?P<seq>\d{4})_[a-z0-9_]+\.py$")


def _imported_top_level_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                modules.add("<relative import>")
            elif node.module:
                modules.add(node.module.split(".")[0])
    return modules


def test_revisions_import_only_alembic_and_sqlalchemy() -> None:
    files = sorted(VERSIONS.glob("*.py"))
    assert files
    for path in files:
        imported = _imported_top_level_modules(path)
        assert "loader" not in imported, f"{path.name} imports the application package"
        assert imported <= ALLOWED_IMPORTS, (
            f"{path.name} imports {sorted(imported - ALLOWED_IMPORTS)}"
        )


def test_revision_files_follow_the_house_style() -> None:
    for revision, _down in REVISIONS:
        path = _revision_file(revision)
        match = _FILE_NAME.match(path.name)
        assert match, f"{path.name}: name it YYYY_MM_DD_NNNN_what_changes.py"
        assert revision.startswith(match["seq"] + "_"), f"{path.name}: id {revision!r}"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{path.name}: say what changes and why"
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        for name, verb in (("upgrade", "Apply"), ("downgrade", "Unapply")):
            doc = ast.get_docstring(functions[name]) or ""
            assert doc.startswith(verb), f"{path.name}: {name}() docstring starts with {verb!r}"
    sequence = [int(_revision_file(r).name[11:15]) for r, _ in REVISIONS]
    assert sequence == list(range(1, len(REVISIONS) + 1)), "file numbers follow the history"


def test_every_table_and_column_carries_the_models_comment(dw: psycopg.Connection) -> None:
    with dw.cursor() as cur:
        cur.execute(
            """
            SELECT c.relname, a.attname, col_description(c.oid, a.attnum)
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
              AND n.nspname = current_schema() AND c.relname <> 'alembic_version'
            """
        )
        column_comments = {(table, column): comment for table, column, comment in cur.fetchall()}
        cur.execute(
            """
            SELECT c.relname, obj_description(c.oid, 'pg_class')
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
              AND n.nspname = current_schema() AND c.relname <> 'alembic_version'
            """
        )
        table_comments = dict(cur.fetchall())

    missing = sorted(key for key, comment in column_comments.items() if not comment)
    assert not missing, f"columns without a comment: {missing}"
    expected_columns = {
        (table.name, column.name): column.comment
        for table in metadata.sorted_tables
        for column in table.columns
    }
    assert column_comments == expected_columns
    assert table_comments == {table.name: table.comment for table in metadata.sorted_tables}
