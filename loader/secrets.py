"""Warehouse credentials from an AWS Secrets Manager secret, read once per process.

Why a secret: a password in a Lambda environment variable is readable by anyone who may read the
function's configuration, and changes only with a redeploy. With `DW_PG_SECRET_ARN` set, the
loader reads the standard RDS secret JSON (`host`, `port`, `username`, `password`, `dbname`,
`engine`) instead, and the function's role needs only `secretsmanager:GetSecretValue` on that
one ARN (plus a Secrets Manager interface endpoint in a VPC without internet).

Why once per process: a warm Lambda container reuses the module-level cache, so the secret costs
one call per cold start, not one per invocation, and a Secrets Manager hiccup cannot fail an
hour that a warm container could load. When the password is rotated under a warm container, the
caller drops the cache with `forget_database_secrets()` after an authentication failure and
resolves again.

Which value wins when both the secret and the environment supply one:
- `username` and `password`: the secret. They are one credential pair; rotation updates both
  (the alternating-users strategy changes the username too), and a stale `DW_PG_PASSWORD` left
  in the environment must never shadow the rotated password.
- `host`, `port`, `dbname`: the environment, when set. They say where to connect, which may
  rightly differ from what the secret names (an RDS Proxy endpoint, a replica, a database other
  than the master user's; RDS-managed master-user secrets hold only username and password).

The password never reaches a log line, an exception message or a `repr`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Final

from loader.errors import TerminalError

SECRET_ARN_VAR: Final = "DW_PG_SECRET_ARN"  # noqa: S105 - a variable name, not a secret

#: Secret JSON key -> the DW_PG_* variable it supplies.
SECRET_FIELDS: Final = {
    "username": "DW_PG_USER",
    "password": "DW_PG_PASSWORD",
    "host": "DW_PG_HOST",
    "port": "DW_PG_PORT",
    "dbname": "DW_PG_DATABASE",
}
#: The credential pair: the secret always wins.
CREDENTIAL_FIELDS: Final = ("username", "password")
#: Where to connect: an explicit environment variable wins.
LOCATION_FIELDS: Final = ("host", "port", "dbname")
POSTGRES_ENGINES: Final = frozenset({"postgres", "postgresql", "aurora-postgresql"})


logger = logging.getLogger(__name__)

_cache: dict[str, dict[str, str]] = {}
_cache_lock = threading.Lock()


class DatabaseSecretError(TerminalError):
    """The secret named by DW_PG_SECRET_ARN cannot be read or is not a PostgreSQL secret."""


def resolve_database_secret(env: Mapping[str, str]) -> dict[str, str]:
    """The DW_PG_* values the secret named by `env["DW_PG_SECRET_ARN"]` supplies.

    Returns `{}` when DW_PG_SECRET_ARN is unset or blank. Otherwise returns DW_PG_USER and
    DW_PG_PASSWORD from the secret, and DW_PG_HOST / DW_PG_PORT / DW_PG_DATABASE from the secret
    only where `env` does not set them, so the caller merges with `{**env, **result}`.
    The secret is fetched at most once per process and ARN.
    """
    arn = (env.get(SECRET_ARN_VAR) or "").strip()
    if not arn:
        return {}
    secret = _read_secret_once(arn)
    resolved: dict[str, str] = {}
    for field in CREDENTIAL_FIELDS:
        resolved[SECRET_FIELDS[field]] = secret[field]
    for field in LOCATION_FIELDS:
        variable = SECRET_FIELDS[field]
        if field in secret and not (env.get(variable) or "").strip():
            resolved[variable] = secret[field]
    return resolved


def forget_database_secrets() -> None:
    """Drop the cached secrets: the next resolve reads Secrets Manager again (after rotation)."""
    with _cache_lock:
        _cache.clear()
        _erasure_keys.clear()


ERASURE_KEY_ARN_VAR: Final = "ERASURE_HMAC_KEY_SECRET_ARN"
_erasure_keys: dict[str, str] = {}


def resolve_erasure_key(env: Mapping[str, str]) -> str:
    """The erasure key (the HMAC key of the suppression list) from the secret named by
    `env["ERASURE_HMAC_KEY_SECRET_ARN"]`: its SecretString as it is, or the `hmac_key` field
    when it is a JSON object. Read at most once per process and ARN, like the DW password;
    the key never reaches a log line or an error message."""
    arn = (env.get(ERASURE_KEY_ARN_VAR) or "").strip()
    with _cache_lock:
        key = _erasure_keys.get(arn)
        if key is None:
            key = _erasure_key_of(arn, _fetch_secret_string(arn, ERASURE_KEY_ARN_VAR))
            _erasure_keys[arn] = key
            logger.info("read erasure key secret", extra={"secret_arn": arn})
        return key


def _erasure_key_of(arn: str, secret_string: str) -> str:
    try:
        data = json.loads(secret_string)
    except ValueError:
        return secret_string
    if isinstance(data, dict):
        key = data.get("hmac_key")
        if not isinstance(key, str) or not key:
            raise DatabaseSecretError(
                f"{ERASURE_KEY_ARN_VAR}: secret {arn} is a JSON object without a text "
                "`hmac_key` field"
            )
        return key
    return secret_string


def _read_secret_once(arn: str) -> dict[str, str]:
    with _cache_lock:
        cached = _cache.get(arn)
        if cached is None:
            cached = _parse_secret(arn, _fetch_secret_string(arn))
            _cache[arn] = cached
            logger.info(
                "read database secret",
                extra={"secret_arn": arn, "secret_fields": sorted(cached)},
            )
        return cached


def _region_of(arn: str) -> str | None:
    """The region in `arn:<partition>:secretsmanager:<region>:...`; None for a bare name."""
    parts = arn.split(":")
    if len(parts) >= 6 and parts[0] == "arn" and parts[2] == "secretsmanager" and parts[3]:
        return parts[3]
    return None


def _fetch_secret_string(arn: str, variable: str = SECRET_ARN_VAR) -> str:
    # Imported here: boto3 is the only Secrets Manager client we ship, and loading it costs
    # ~0.3 s of a cold start that the S3 path (the CRT client) otherwise never pays.
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        # Short timeouts: without a Secrets Manager endpoint in the VPC the connection hangs
        # rather than fails, and botocore's defaults (60 s per attempt) would eat the invocation.
        config = Config(
            connect_timeout=5, read_timeout=10, retries={"max_attempts": 4, "mode": "standard"}
        )
        client = boto3.client("secretsmanager", region_name=_region_of(arn), config=config)
        response = client.get_secret_value(SecretId=arn)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "unknown")
        raise DatabaseSecretError(
            f"{variable}: cannot read secret {arn} ({code}); the function's role needs "
            f"secretsmanager:GetSecretValue on it"
        ) from None
    except BotoCoreError as exc:
        raise DatabaseSecretError(
            f"{variable}: cannot reach Secrets Manager for {arn} ({type(exc).__name__}); "
            f"a VPC without internet needs a Secrets Manager interface endpoint"
        ) from None
    secret_string = response.get("SecretString")
    if not secret_string:
        raise DatabaseSecretError(f"{variable}: secret {arn} has no SecretString")
    return secret_string


def _parse_secret(arn: str, secret_string: str) -> dict[str, str]:
    """The known fields as strings. Errors name fields, never values."""
    try:
        data = json.loads(secret_string)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise DatabaseSecretError(
            f"{SECRET_ARN_VAR}: secret {arn} is not a JSON object (expected the RDS secret "
            f"format: username, password, host, port, dbname)"
        )
    engine = data.get("engine")
    if isinstance(engine, str) and engine.strip().lower() not in POSTGRES_ENGINES:
        raise DatabaseSecretError(
            f"{SECRET_ARN_VAR}: secret {arn} is for engine {engine!r}, not PostgreSQL"
        )
    fields: dict[str, str] = {}
    for field in SECRET_FIELDS:
        value = data.get(field)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | str):
            text = str(value).strip() if field != "password" else str(value)
            if text:
                fields[field] = text
    missing = [f for f in CREDENTIAL_FIELDS if f not in fields]
    if missing:
        raise DatabaseSecretError(f"{SECRET_ARN_VAR}: secret {arn} lacks {' and '.join(missing)}")
    return fields
