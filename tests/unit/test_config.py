"""Settings from the environment: defaults, validation that names the variable, no leaked secret."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from loader.config import (
    LOG_LEVEL,
    ConfigError,
    DatabaseSettings,
    Settings,
    documented_settings,
    load_settings,
    settings_table,
)

README = Path(__file__).resolve().parents[2] / "README.md"

PASSWORD = "s3cr3t-P@ss/w:rd%?"  # characters a URL would have to escape
BASE = {"RAW_BUCKET_NAME": "raw-clickstream"}


def settings(**env: str) -> Settings:
    return load_settings({**BASE, **env})


def test_defaults() -> None:
    loaded = settings()
    assert loaded.raw_bucket == "raw-clickstream"
    assert (loaded.target_schema, loaded.target_table) == (None, "clickstream_events")
    assert loaded.max_records_per_batch == 500
    assert (loaded.db.host, loaded.db.port, loaded.db.sslmode) == (None, 5432, "prefer")
    assert loaded.db.password is None
    assert loaded.anonymize_ip is False
    assert loaded.events_prefix == "events/"


def test_settings_are_frozen() -> None:
    loaded = settings()
    with pytest.raises(AttributeError):
        loaded.raw_bucket = "other"  # type: ignore[misc]


# --- required and malformed variables ----------------------------------------------------------


@pytest.mark.parametrize("env", [{}, {"RAW_BUCKET_NAME": ""}, {"RAW_BUCKET_NAME": "   "}])
def test_missing_bucket_names_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="RAW_BUCKET_NAME is required"):
        load_settings(env)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DW_PG_PORT", "abc", "DW_PG_PORT must be an integer, got 'abc'"),
        ("DW_PG_PORT", "0", "DW_PG_PORT must be >= 1, got 0"),
        ("DW_PG_PORT", "5432.0", "DW_PG_PORT must be an integer"),
        ("MAX_RECORDS_PER_BATCH", "many", "MAX_RECORDS_PER_BATCH must be an integer"),
        ("MAX_RECORDS_PER_BATCH", "0", "MAX_RECORDS_PER_BATCH must be >= 1"),
        ("MAX_RECORDS_PER_BATCH", "10001", "MAX_RECORDS_PER_BATCH must be <= 10000"),
        ("FETCH_CONCURRENCY", "-1", "FETCH_CONCURRENCY must be >= 1"),
        ("DW_PG_CONNECT_TIMEOUT", "ten", "DW_PG_CONNECT_TIMEOUT must be an integer"),
        ("DW_PG_STATEMENT_TIMEOUT_MS", "1e3", "DW_PG_STATEMENT_TIMEOUT_MS must be an integer"),
        ("DB_RETRY_BUDGET_SECONDS", "soon", "DB_RETRY_BUDGET_SECONDS must be a number"),
        ("DB_RETRY_BUDGET_SECONDS", "-1", "DB_RETRY_BUDGET_SECONDS must be >= 0"),
        ("DB_RETRY_BUDGET_SECONDS", "nan", "DB_RETRY_BUDGET_SECONDS must be >= 0"),
        ("ANONYMIZE_IP", "maybe", "ANONYMIZE_IP must be true or false"),
        ("S3_CLIENT", "curl", "S3_CLIENT must be auto or boto3 or crt"),
        ("WRITE_METHOD", "Fast", "WRITE_METHOD must be copy or insert, got 'fast'"),
        ("LOOKBACK_HOURS", "-1", "LOOKBACK_HOURS must be >= 0, got -1"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(**{name: value})


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("DW_PG_PORT", " 6432 ", ("db", "port"), 6432),
        ("MAX_RECORDS_PER_BATCH", "10000", ("max_records_per_batch",), 10_000),
        ("DB_RETRY_BUDGET_SECONDS", "2.5", ("db_retry_budget_s",), 2.5),
        ("ANONYMIZE_IP", "yes", ("anonymize_ip",), True),
        ("ANONYMIZE_IP", "0", ("anonymize_ip",), False),
        ("S3_CLIENT", "CRT", ("s3_client",), "crt"),
        ("S3_CLIENT", "boto3", ("s3_client",), "boto3"),
        ("S3_CLIENT", "", ("s3_client",), "auto"),  # the fast client when awscrt imports
        ("MAX_RECORDS_PER_BATCH", "", ("max_records_per_batch",), 500),  # blank: the default
        ("DW_PG_APPLICATION_NAME", " ", ("db", "application_name"), "clickstream-loader"),
        ("TARGET_TABLE", "events_v2", ("target_schema",), None),
    ],
)
def test_good_values_are_read(
    name: str, value: str, attribute: tuple[str, ...], expected: Any
) -> None:
    loaded: Any = settings(**{name: value})
    for part in attribute:
        loaded = getattr(loaded, part)
    assert loaded == expected


# --- DW_PG_SSL ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "sslmode"),
    [
        ("disable", "disable"),
        ("allow", "allow"),
        ("prefer", "prefer"),
        ("require", "require"),
        ("verify-ca", "verify-ca"),
        ("verify-full", "verify-full"),
        ("VERIFY-FULL", "verify-full"),
        (" require ", "require"),
        ("true", "require"),
        ("TRUE", "require"),
        ("1", "require"),
        ("false", "disable"),
        ("0", "disable"),
        ("", "prefer"),
    ],
)
def test_dw_pg_ssl(value: str, sslmode: str) -> None:
    loaded = settings(DW_PG_SSL=value)
    assert loaded.db.sslmode == sslmode
    assert loaded.db.url().query["sslmode"] == sslmode


@pytest.mark.parametrize("value", ["yes", "on", "verify", "ssl", "required"])
def test_dw_pg_ssl_invalid_lists_the_choices(value: str) -> None:
    with pytest.raises(ConfigError, match="DW_PG_SSL must be one of disable, allow, prefer"):
        settings(DW_PG_SSL=value)


# --- TARGET_TABLE ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "schema", "table"),
    [
        ("clickstream_events", None, "clickstream_events"),
        ("events_v2", None, "events_v2"),
        ("_staging", None, "_staging"),
        ("analytics.clickstream_events", "analytics", "clickstream_events"),
        ("Analytics.Events2", "Analytics", "Events2"),
        ("t" * 63, None, "t" * 63),  # PostgreSQL's identifier limit
    ],
)
def test_target_table(value: str, schema: str | None, table: str) -> None:
    loaded = settings(TARGET_TABLE=value)
    assert (loaded.target_schema, loaded.target_table) == (schema, table)


@pytest.mark.parametrize(
    "value",
    [
        "x; drop table y",
        "clickstream_events; DROP TABLE clickstream_events --",
        "x'--",
        '"quoted"',
        "a.b.c",
        "schema.",
        ".table",
        "1events",
        "my-events",
        "my events",
        "événements",
        "t" * 64,
        "public.x y",
    ],
)
def test_target_table_refuses_anything_but_identifiers(value: str) -> None:
    with pytest.raises(ConfigError, match=r"TARGET_TABLE must be a table name or schema\.table"):
        settings(TARGET_TABLE=value)


# --- secrets and the database URL --------------------------------------------------------------


def db_env(**extra: str) -> dict[str, str]:
    return {
        "DW_PG_HOST": "dw.internal.example",
        "DW_PG_PORT": "5433",
        "DW_PG_USER": "loader",
        "DW_PG_PASSWORD": PASSWORD,
        "DW_PG_DATABASE": "dw",
        **extra,
    }


def test_the_password_never_shows() -> None:
    loaded = settings(**db_env())
    assert loaded.db.password == PASSWORD
    assert loaded.db.url().password == PASSWORD  # libpq still gets it
    for rendered in (
        repr(loaded),
        str(loaded),
        repr(loaded.db),
        str(loaded.db.url()),
        repr(loaded.db.url()),
    ):
        assert PASSWORD not in rendered
        assert "s3cr3t" not in rendered
    assert str(loaded.db.url()).startswith(
        "postgresql+psycopg2://loader:***@dw.internal.example:5433/dw?"
    )


def test_url_carries_host_port_database_and_options() -> None:
    url = settings(**db_env(DW_PG_SSL="verify-full", DW_PG_SSLROOTCERT="/opt/rds.pem")).db.url()
    assert (url.drivername, url.host, url.port, url.database, url.username) == (
        "postgresql+psycopg2",
        "dw.internal.example",
        5433,
        "dw",
        "loader",
    )
    assert url.query["sslmode"] == "verify-full"
    assert url.query["sslrootcert"] == "/opt/rds.pem"
    assert url.query["application_name"] == "clickstream-loader"


def test_a_unix_socket_directory_goes_in_the_query() -> None:
    url = settings(**db_env(DW_PG_HOST="/var/run/postgresql")).db.url()
    assert url.host is None
    assert url.query["host"] == "/var/run/postgresql"
    assert "/var/run/postgresql" not in (url.render_as_string().split("?")[0])


def test_an_empty_password_is_no_password() -> None:
    loaded = settings(**db_env(DW_PG_PASSWORD=""))
    assert loaded.db.password is None
    assert loaded.db.url().password is None


def test_a_password_is_taken_as_it_is() -> None:
    assert settings(DW_PG_PASSWORD=" two words ").db.password == " two words "


# --- one declaration per setting ---------------------------------------------------------------


def test_an_empty_environment_gives_the_dataclass_defaults() -> None:
    assert settings() == Settings(raw_bucket="raw-clickstream", db=DatabaseSettings())
    assert LOG_LEVEL.read({}) == "INFO"
    assert LOG_LEVEL.read({"LOG_LEVEL": " DEBUG "}) == "DEBUG"


def test_every_field_is_declared_with_its_variable() -> None:
    """A new field needs `metadata=from_env(...)`, or it is never read from the environment."""
    undeclared = {
        f"{cls.__name__}.{f.name}"
        for cls in (Settings, DatabaseSettings)
        for f in dataclasses.fields(cls)
        if not f.metadata
    }
    # db holds the DW_PG_* settings; target_schema is the schema part of TARGET_TABLE.
    assert undeclared == {"Settings.db", "Settings.target_schema"}


def test_each_variable_is_declared_once() -> None:
    variables = [s.variable for s in documented_settings()]
    assert len(variables) == len(set(variables))
    assert all(s.meaning for s in documented_settings())


def _readme_configuration_table() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_the_readme_table_is_the_declared_settings() -> None:
    """Rows compared one by one (variable, default, meaning), so the diff names the setting."""
    readme = [
        tuple(cell.strip() for cell in line.strip("|").split(" | "))
        for line in _readme_configuration_table()[2:]
    ]
    declared = [(f"`{s.variable}`", s.default, s.meaning) for s in documented_settings()]

    assert readme == declared, (
        "README.md's Configuration table differs from the declarations in loader/config.py: "
        "paste the output of `python -m loader.config` into it"
    )
    assert "\n".join(_readme_configuration_table()) == settings_table()
