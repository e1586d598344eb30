"""Settings from the environment: read once, validated, with errors that name the variable.

The same code builds the database URL for the loader and for Alembic's `env.py`, so a DBA's
`alembic upgrade head` and the Lambda always talk to the same database the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from sqlalchemy.engine import URL

S3ClientKind = Literal["boto3", "crt"]
WriteMethod = Literal["copy", "insert"]

SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SSL_ALIASES: Final = {"true": "require", "false": "disable", "1": "require", "0": "disable"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


@dataclass(frozen=True)
class DatabaseSettings:
    """How to reach the warehouse. The password is kept out of `repr` and every rendered URL."""

    host: str | None = None
    port: int = 5432
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None
    sslmode: str = "prefer"
    sslrootcert: str | None = None
    connect_timeout_s: int = 10
    statement_timeout_ms: int = 60_000
    lock_timeout_ms: int = 10_000
    idle_in_transaction_timeout_ms: int = 60_000
    application_name: str = "clickstream-loader"

    def url(self) -> URL:
        """A SQLAlchemy URL. Built with `URL.create`, so a socket directory or odd password is
        never mangled; `render_as_string(hide_password=True)` is what `str()` gives."""
        query: dict[str, str] = {"sslmode": self.sslmode, "application_name": self.application_name}
        if self.sslrootcert:
            query["sslrootcert"] = self.sslrootcert
        host = self.host
        if host and host.startswith("/"):
            # A unix-socket directory goes in the query: libpq takes `host=` as a path.
            query["host"] = host
            host = None
        return URL.create(
            "postgresql+psycopg2",
            username=self.user,
            password=self.password or None,
            host=host,
            port=self.port,
            database=self.database,
            query=query,
        )

    def safe_url(self) -> str:
        return self.url().render_as_string(hide_password=True)


@dataclass(frozen=True)
class Settings:
    """Everything the loader reads from its environment."""

    raw_bucket: str
    db: DatabaseSettings
    target_table: str = "clickstream_events"
    target_schema: str | None = None
    max_records_per_batch: int = 500
    fetch_concurrency: int = 32
    s3_client: S3ClientKind = "boto3"
    write_method: WriteMethod = "copy"
    s3_max_attempts: int = 5
    max_object_bytes: int = 1_048_576
    max_decompressed_bytes: int = 8_388_608
    db_retry_budget_s: float = 30.0
    db_max_attempts: int = 10
    lookback_hours: int = 2
    anonymize_ip: bool = False
    lock_wait_s: float = 5.0
    safety_margin_ms: int = 60_000
    key_list_cap: int = 100
    events_prefix: str = "events/"


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {raw}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def parse_sslmode(raw: str | None) -> str:
    """libpq sslmode from DW_PG_SSL; true/false are accepted as require/disable."""
    if raw is None:
        return "prefer"
    lowered = raw.strip().lower()
    lowered = _SSL_ALIASES.get(lowered, lowered)
    if lowered not in SSL_MODES:
        raise ConfigError(
            f"DW_PG_SSL must be one of {', '.join(SSL_MODES)} (or true/false), got {raw!r}"
        )
    return lowered


def parse_target_table(raw: str | None) -> tuple[str | None, str]:
    """`table` or `schema.table`, each a plain identifier: never spliced into SQL unchecked."""
    if raw is None:
        return None, "clickstream_events"
    parts = raw.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.match(p) for p in parts):
        raise ConfigError(
            f"TARGET_TABLE must be a table name or schema.table of letters, digits and _, "
            f"got {raw!r}"
        )
    if len(parts) == 2:
        return parts[0], parts[1]
    return None, parts[0]


def load_database_settings(env: Mapping[str, str] | None = None) -> DatabaseSettings:
    """The DW_PG_* part alone: what Alembic needs (no bucket).

    With DW_PG_SECRET_ARN set, the Secrets Manager secret (read once per process) supplies the
    user and password, and host/port/database where the environment leaves them unset."""
    env = os.environ if env is None else env
    if env.get("DW_PG_SECRET_ARN"):
        from loader.secrets import resolve_database_secret

        env = {**env, **resolve_database_secret(env)}
    return DatabaseSettings(
        host=_get(env, "DW_PG_HOST"),
        port=_int(env, "DW_PG_PORT", 5432, minimum=1),
        user=_get(env, "DW_PG_USER"),
        password=env.get("DW_PG_PASSWORD") or None,
        database=_get(env, "DW_PG_DATABASE"),
        sslmode=parse_sslmode(_get(env, "DW_PG_SSL")),
        sslrootcert=_get(env, "DW_PG_SSLROOTCERT"),
        connect_timeout_s=_int(env, "DW_PG_CONNECT_TIMEOUT", 10, minimum=1),
        statement_timeout_ms=_int(env, "DW_PG_STATEMENT_TIMEOUT_MS", 60_000),
        lock_timeout_ms=_int(env, "DW_PG_LOCK_TIMEOUT_MS", 10_000),
        idle_in_transaction_timeout_ms=_int(env, "DW_PG_IDLE_IN_TRANSACTION_TIMEOUT_MS", 60_000),
        application_name=_get(env, "DW_PG_APPLICATION_NAME") or "clickstream-loader",
    )


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise ConfigError naming the first bad variable."""
    env = os.environ if env is None else env
    bucket = _get(env, "RAW_BUCKET_NAME")
    if bucket is None:
        raise ConfigError("RAW_BUCKET_NAME is required: the S3 bucket holding raw events")
    schema, table = parse_target_table(_get(env, "TARGET_TABLE"))
    s3_client = (_get(env, "S3_CLIENT") or "boto3").lower()
    if s3_client not in ("boto3", "crt"):
        raise ConfigError(f"S3_CLIENT must be boto3 or crt, got {s3_client!r}")
    write_method = (_get(env, "WRITE_METHOD") or "copy").lower()
    if write_method not in ("copy", "insert"):
        raise ConfigError(f"WRITE_METHOD must be copy or insert, got {write_method!r}")
    batch = _int(env, "MAX_RECORDS_PER_BATCH", 500, minimum=1)
    if batch > 10_000:
        raise ConfigError(f"MAX_RECORDS_PER_BATCH must be <= 10000, got {batch}")
    return Settings(
        raw_bucket=bucket,
        db=load_database_settings(env),
        target_table=table,
        target_schema=schema,
        max_records_per_batch=batch,
        fetch_concurrency=_int(env, "FETCH_CONCURRENCY", 32, minimum=1),
        s3_client=s3_client,  # type: ignore[arg-type]
        write_method=write_method,  # type: ignore[arg-type]
        s3_max_attempts=_int(env, "S3_MAX_ATTEMPTS", 5, minimum=1),
        max_object_bytes=_int(env, "MAX_OBJECT_BYTES", 1_048_576, minimum=1),
        max_decompressed_bytes=_int(env, "MAX_DECOMPRESSED_BYTES", 8_388_608, minimum=1),
        db_retry_budget_s=_float(env, "DB_RETRY_BUDGET_SECONDS", 30.0),
        db_max_attempts=_int(env, "DB_MAX_ATTEMPTS", 10, minimum=1),
        lookback_hours=_int(env, "LOOKBACK_HOURS", 2),
        anonymize_ip=_bool(env, "ANONYMIZE_IP", False),
        lock_wait_s=_float(env, "LOCK_WAIT_SECONDS", 5.0),
        safety_margin_ms=_int(env, "SAFETY_MARGIN_MS", 60_000),
        key_list_cap=_int(env, "REPORT_KEY_LIMIT", 100),
        events_prefix=_get(env, "EVENTS_PREFIX") or "events/",
    )
