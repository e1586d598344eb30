"""Settings from the environment: read once, validated, with errors that name the variable.

Each setting is declared once, as a dataclass field: its default is the field's default, and
`from_env(...)` in the field's metadata names the environment variable, says how its text is
parsed and validated, and gives the line the README's configuration table shows
(`python -m loader.config` prints that table; tests/unit/test_config.py keeps the README equal
to it). The few variables no field holds (the secret's ARN, read before the fields it fills,
and what the module-level logger reads at import) are declared the same way, as `Variable`s.

The same code builds the database URL for the loader and for Alembic's `env.py`, so a DBA's
`alembic upgrade head` and the Lambda always talk to the same database the same way.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, Final, Generic, Literal, TypeVar, cast

from sqlalchemy.engine import URL

from loader.errors import TerminalError

S3ClientKind = Literal["auto", "boto3", "crt"]
WriteMethod = Literal["copy", "insert"]
T = TypeVar("T")

SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SSL_ALIASES: Final = {"true": "require", "false": "disable", "1": "require", "0": "disable"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

#: Parses a variable's text (never blank: blank means the default); (variable, text) -> value.
Parse = Callable[[str, str], Any]


class ConfigError(TerminalError):
    """A setting is missing or invalid; the message names the environment variable."""


# --- parsers: each names the variable in its error ----------------------------------------------


def _text(variable: str, raw: str) -> str:
    return raw


def integer(*, minimum: int = 0, maximum: int | None = None) -> Parse:
    def parse(variable: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{variable} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{variable} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{variable} must be <= {maximum}, got {value}")
        return value

    return parse


def number(*, minimum: float = 0.0) -> Parse:
    def parse(variable: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{variable} must be a number, got {raw!r}") from None
        if not value >= minimum:  # also refuses nan
            raise ConfigError(f"{variable} must be >= {minimum}, got {raw}")
        return value

    return parse


def _boolean(variable: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{variable} must be true or false, got {raw!r}")


def one_of(*choices: str) -> Parse:
    """Case-insensitive; the value is kept in lower case."""

    def parse(variable: str, raw: str) -> str:
        lowered = raw.lower()
        if lowered not in choices:
            raise ConfigError(f"{variable} must be {' or '.join(choices)}, got {lowered!r}")
        return lowered

    return parse


def _sslmode(variable: str, raw: str) -> str:
    """libpq sslmode; true/false are accepted as require/disable."""
    lowered = raw.lower()
    lowered = _SSL_ALIASES.get(lowered, lowered)
    if lowered not in SSL_MODES:
        raise ConfigError(
            f"{variable} must be one of {', '.join(SSL_MODES)} (or true/false), got {raw!r}"
        )
    return lowered


#: The shortest erasure key accepted: 32 characters (a random 32-byte key in base64 is 44).
MIN_ERASURE_KEY_CHARS: Final = 32


def _erasure_key(variable: str, raw: str) -> str:
    """A key for HMAC-SHA256: long enough that the hashes cannot be guessed back; the error
    never shows it."""
    if len(raw) < MIN_ERASURE_KEY_CHARS:
        raise ConfigError(
            f"{variable} must be at least {MIN_ERASURE_KEY_CHARS} characters (got {len(raw)}): "
            "e.g. `openssl rand -base64 32`"
        )
    return raw


def _qualified_table(variable: str, raw: str) -> tuple[str | None, str]:
    """`table` or `schema.table`, each a plain identifier: never spliced into SQL unchecked."""
    parts = raw.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.match(p) for p in parts):
        raise ConfigError(
            f"{variable} must be a table name or schema.table of letters, digits and _, got {raw!r}"
        )
    if len(parts) == 2:
        return parts[0], parts[1]
    return None, parts[0]


# --- declarations --------------------------------------------------------------------------------

_SETTING: Final = "clickstream_loader.setting"


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, how its text becomes a value, its docs line."""

    variable: str
    doc: str
    parse: Parse = _text
    #: What the docs show as the default where the value alone says too little (None).
    shown_default: str | None = None
    #: A password is taken as it is: its spaces are part of it.
    strip: bool = True

    def raw(self, env: Mapping[str, str]) -> str | None:
        """The variable's text; None when it is unset or blank, which means the default."""
        value = env.get(self.variable)
        if value is not None and self.strip:
            value = value.strip()
        return value or None


def from_env(
    variable: str,
    doc: str,
    parse: Parse = _text,
    *,
    shown_default: str | None = None,
    strip: bool = True,
) -> dict[str, Setting]:
    """Field metadata: `field(default=..., metadata=from_env("NAME", "what it does", parser))`."""
    return {_SETTING: Setting(variable, doc, parse, shown_default, strip)}


@dataclass(frozen=True)
class Variable(Generic[T]):
    """A setting no Settings field holds, with its default."""

    setting: Setting
    default: T

    def read(self, env: Mapping[str, str] | None = None) -> T:
        env = os.environ if env is None else env
        raw = self.setting.raw(env)
        if raw is None:
            return self.default
        return cast(T, self.setting.parse(self.setting.variable, raw))


def _declared(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Setting]]:
    for f in dataclasses.fields(cls):
        setting = f.metadata.get(_SETTING)
        if setting is not None:
            yield f, setting


def _values_from(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments for `cls` from `env`: only the variables set, so every unset one takes
    its field's default."""
    values: dict[str, Any] = {}
    for f, setting in _declared(cls):
        raw = setting.raw(env)
        if raw is not None:
            values[f.name] = setting.parse(setting.variable, raw)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{setting.variable} is required: {setting.doc}")
    return values


# --- the settings --------------------------------------------------------------------------------

#: Read before the DW_PG_* fields, because the secret supplies some of them.
DATABASE_SECRET_ARN: Final = Variable[str | None](
    Setting(
        "DW_PG_SECRET_ARN",
        "Secrets Manager secret (RDS JSON shape), read once per cold start: it supplies "
        "`DW_PG_USER` and `DW_PG_PASSWORD`, and host, port and database where those are unset",
    ),
    None,
)
#: Read before the ERASURE_HMAC_KEY field, which the secret supplies.
ERASURE_KEY_SECRET_ARN: Final = Variable[str | None](
    Setting(
        "ERASURE_HMAC_KEY_SECRET_ARN",
        "Secrets Manager secret holding the erasure key (its SecretString, or the `hmac_key` of "
        "a JSON object), read once per cold start; wins over `ERASURE_HMAC_KEY`",
    ),
    None,
)
#: Read at import by loader.observability: its logger and metrics are module-level.
LOG_LEVEL: Final = Variable[str](
    Setting("LOG_LEVEL", "log level: DEBUG, INFO, WARNING, ERROR"), "INFO"
)
SERVICE_NAME: Final = Variable[str](
    Setting("POWERTOOLS_SERVICE_NAME", "the `service` of every log line and metric"),
    "clickstream-loader",
)
METRICS_NAMESPACE: Final = Variable[str](
    Setting("POWERTOOLS_METRICS_NAMESPACE", "CloudWatch namespace of the metrics"),
    "ClickstreamLoader",
)

_LIBPQ_DEFAULT: Final = "libpq default"


@dataclass(frozen=True)
class DatabaseSettings:
    """How to reach the warehouse. The password is kept out of `repr` and every rendered URL."""

    host: str | None = field(
        default=None,
        metadata=from_env(
            "DW_PG_HOST",
            "host name, IP, or a unix-socket **directory** (a path)",
            shown_default=_LIBPQ_DEFAULT,
        ),
    )
    port: int = field(default=5432, metadata=from_env("DW_PG_PORT", "port", integer(minimum=1)))
    user: str | None = field(
        default=None,
        metadata=from_env("DW_PG_USER", "login role", shown_default=_LIBPQ_DEFAULT),
    )
    password: str | None = field(
        default=None,
        repr=False,
        metadata=from_env(
            "DW_PG_PASSWORD",
            "may be empty/unset (peer/trust/IAM auth); never logged, never in a `repr` or URL "
            "we print",
            strip=False,
        ),
    )
    database: str | None = field(
        default=None,
        metadata=from_env("DW_PG_DATABASE", "database name", shown_default=_LIBPQ_DEFAULT),
    )
    sslmode: str = field(
        default="prefer",
        metadata=from_env(
            "DW_PG_SSL",
            "libpq `sslmode`: disable, allow, prefer, require, verify-ca, verify-full; "
            "`true`/`false` mean require/disable",
            _sslmode,
        ),
    )
    sslrootcert: str | None = field(
        default=None,
        metadata=from_env("DW_PG_SSLROOTCERT", "CA bundle path for verify-ca / verify-full"),
    )
    connect_timeout_s: int = field(
        default=10, metadata=from_env("DW_PG_CONNECT_TIMEOUT", "seconds", integer(minimum=1))
    )
    statement_timeout_ms: int = field(
        default=60_000,
        metadata=from_env(
            "DW_PG_STATEMENT_TIMEOUT_MS", "per statement, set on each session", integer()
        ),
    )
    lock_timeout_ms: int = field(
        default=10_000,
        metadata=from_env(
            "DW_PG_LOCK_TIMEOUT_MS", "a DBA's lock makes the loader retry, not hang", integer()
        ),
    )
    idle_in_transaction_timeout_ms: int = field(
        default=60_000,
        metadata=from_env(
            "DW_PG_IDLE_IN_TRANSACTION_TIMEOUT_MS",
            "the server ends a session left idle inside a transaction this long",
            integer(),
        ),
    )
    application_name: str = field(
        default="clickstream-loader",
        metadata=from_env(
            "DW_PG_APPLICATION_NAME",
            "what `pg_stat_activity` shows for the loader's sessions (migrations add "
            "`-migrations`)",
        ),
    )

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


@dataclass(frozen=True)
class Settings:
    """Everything the loader reads from its environment."""

    raw_bucket: str = field(
        metadata=from_env("RAW_BUCKET_NAME", "the S3 bucket holding raw events")
    )
    db: DatabaseSettings
    target_table: str = field(
        default="clickstream_events",
        metadata=from_env(
            "TARGET_TABLE",
            "events table, optionally `schema.table`; validated as identifiers (the other "
            "tables live in the same schema)",
            _qualified_table,
        ),
    )
    #: The schema part of TARGET_TABLE.
    target_schema: str | None = None
    max_records_per_batch: int = field(
        default=500,
        metadata=from_env(
            "MAX_RECORDS_PER_BATCH",
            "events per transaction (1–10000)",
            integer(minimum=1, maximum=10_000),
        ),
    )
    fetch_concurrency: int = field(
        default=32,
        metadata=from_env(
            "FETCH_CONCURRENCY",
            "S3 GETs in flight with the boto3 client (its threads); the CRT client keeps 4× as "
            "many (a request costs it no thread)",
            integer(minimum=1),
        ),
    )
    s3_client: S3ClientKind = field(
        default="auto",
        metadata=from_env(
            "S3_CLIENT",
            "`auto`: the AWS Common Runtime client (`crt`, ~6× less CPU per GET, no boto3 "
            "imported) when `awscrt` imports, else `boto3` with one warning saying so; or "
            "`crt` / `boto3` explicitly",
            one_of("auto", "boto3", "crt"),
        ),
    )
    write_method: WriteMethod = field(
        default="copy",
        metadata=from_env(
            "WRITE_METHOD",
            "`copy` (COPY into a temporary table, then one `INSERT … SELECT … ON CONFLICT`) "
            "or `insert` (executemany `INSERT … RETURNING`)",
            one_of("copy", "insert"),
        ),
    )
    s3_max_attempts: int = field(
        default=5,
        metadata=from_env(
            "S3_MAX_ATTEMPTS",
            "attempts per S3 request, either client (throttling, 5xx, bodies cut short)",
            integer(minimum=1),
        ),
    )
    max_object_bytes: int = field(
        default=1_048_576,
        metadata=from_env(
            "MAX_OBJECT_BYTES",
            "larger objects are skipped as malformed (`too_large`)",
            integer(minimum=1),
        ),
    )
    max_decompressed_bytes: int = field(
        default=8_388_608,
        metadata=from_env(
            "MAX_DECOMPRESSED_BYTES",
            "gzip expanding past this is refused (gzip bombs)",
            integer(minimum=1),
        ),
    )
    db_retry_budget_s: float = field(
        default=30.0,
        metadata=from_env(
            "DB_RETRY_BUDGET_SECONDS",
            "total time spent retrying transient DB errors before failing",
            number(),
        ),
    )
    db_max_attempts: int = field(
        default=10,
        metadata=from_env(
            "DB_MAX_ATTEMPTS",
            "attempts per batch within that budget (with the defaults the 30 s budget is what "
            "ends a long outage)",
            integer(minimum=1),
        ),
    )
    lookback_hours: int = field(
        default=2,
        metadata=from_env(
            "LOOKBACK_HOURS",
            "scheduled runs re-check this many earlier hours for late objects",
            integer(),
        ),
    )
    anonymize_ip: bool = field(
        default=False,
        metadata=from_env(
            "ANONYMIZE_IP",
            "truncate IPv4 to /24 and IPv6 to /48 before anything is stored or hashed",
            _boolean,
        ),
    )
    lock_wait_s: float = field(
        default=5.0,
        metadata=from_env(
            "LOCK_WAIT_SECONDS",
            "how long a second run of a locked hour waits before reporting `already_running`",
            number(),
        ),
    )
    safety_margin_ms: int = field(
        default=60_000,
        metadata=from_env(
            "SAFETY_MARGIN_MS",
            "stop after the current batch when the Lambda has less time left than this",
            integer(),
        ),
    )
    key_list_cap: int = field(
        default=100,
        metadata=from_env(
            "REPORT_KEY_LIMIT",
            "keys listed per category in the summary (the count is always total)",
            integer(),
        ),
    )
    events_prefix: str = field(
        default="events/",
        metadata=from_env("EVENTS_PREFIX", "top-level prefix the ingest Lambda writes under"),
    )
    erasure_hmac_key: str | None = field(
        default=None,
        repr=False,
        metadata=from_env(
            "ERASURE_HMAC_KEY",
            "the key of the suppression list's keyed hashes (HMAC-SHA256), at least 32 "
            "characters; every loader and the erasure function need the same one once anyone "
            "was erased (docs/privacy.md). Never logged",
            _erasure_key,
            strip=False,
        ),
    )
    erasure_due_days: int = field(
        default=30,
        metadata=from_env(
            "ERASURE_DUE_DAYS",
            "days an erasure request has before it is overdue (`erasures --overdue`)",
            integer(minimum=1),
        ),
    )
    pseudonymise_user_agent: bool = field(
        default=False,
        metadata=from_env(
            "PSEUDONYMISE_USER_AGENT",
            "store only the browser and OS family of `_ingest.userAgent` (docs/privacy.md)",
            _boolean,
        ),
    )


def load_database_settings(env: Mapping[str, str] | None = None) -> DatabaseSettings:
    """The DW_PG_* part alone: what Alembic needs (no bucket).

    With DW_PG_SECRET_ARN set, the Secrets Manager secret (read once per process) supplies the
    user and password, and host/port/database where the environment leaves them unset."""
    env = os.environ if env is None else env
    if DATABASE_SECRET_ARN.read(env):
        from loader.secrets import resolve_database_secret

        env = {**env, **resolve_database_secret(env)}
    return DatabaseSettings(**_values_from(DatabaseSettings, env))


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise ConfigError naming the first bad variable."""
    env = os.environ if env is None else env
    if ERASURE_KEY_SECRET_ARN.read(env):
        from loader.secrets import resolve_erasure_key

        env = {**env, "ERASURE_HMAC_KEY": resolve_erasure_key(env)}
    values = _values_from(Settings, env)
    if "target_table" in values:  # TARGET_TABLE may name the schema too
        values["target_schema"], values["target_table"] = values["target_table"]
    return Settings(db=load_database_settings(env), **values)


# --- the docs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentedSetting:
    """One row of the README's configuration table."""

    variable: str
    default: str
    meaning: str


def _shown(setting: Setting, default: object) -> str:
    if setting.shown_default is not None:
        return setting.shown_default
    if default is MISSING:
        return "*(required)*"
    if default is None:
        return "none"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float):
        return f"`{default:g}`"
    return f"`{default}`"


def _documented(cls: type) -> list[DocumentedSetting]:
    return [DocumentedSetting(s.variable, _shown(s, f.default), s.doc) for f, s in _declared(cls)]


def documented_settings() -> list[DocumentedSetting]:
    """Every setting, in the README's order: the bucket, the warehouse, the loader, the logs."""
    bucket, *loader_settings = _documented(Settings)
    variables = (
        DATABASE_SECRET_ARN,
        ERASURE_KEY_SECRET_ARN,
        LOG_LEVEL,
        SERVICE_NAME,
        METRICS_NAMESPACE,
    )
    secret, erasure_secret, *logs = [
        DocumentedSetting(v.setting.variable, _shown(v.setting, v.default), v.setting.doc)
        for v in variables
    ]
    return [
        bucket,
        *_documented(DatabaseSettings),
        secret,
        *loader_settings,
        erasure_secret,
        *logs,
    ]


def settings_table() -> str:
    """The README's configuration table, in Markdown."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{s.variable}` | {s.default} | {s.meaning} |" for s in documented_settings()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_table())
