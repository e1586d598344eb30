"""`loader.secrets` against moto's server: real HTTP calls to a Secrets Manager API."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from loader.secrets import (
    DatabaseSecretError,
    forget_database_secrets,
    resolve_database_secret,
)

RDS_SECRET = {
    "engine": "postgres",
    "host": "dw.cluster-abc.eu-west-1.rds.amazonaws.com",
    "port": 5432,
    "username": "loader",
    "password": "s3cr3t-Ünïcode-'quote\"-pässword",
    "dbname": "warehouse",
}


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    forget_database_secrets()
    yield
    forget_database_secrets()


@pytest.fixture
def secretsmanager(s3_endpoint: str) -> Any:
    # moto's ThreadedMotoServer serves every service on the one endpoint.
    return boto3.client("secretsmanager", endpoint_url=s3_endpoint, region_name="us-east-1")


def create_secret(client: Any, value: dict[str, Any] | str) -> str:
    body = value if isinstance(value, str) else json.dumps(value)
    response = client.create_secret(Name=f"dw/loader-{uuid.uuid4().hex[:8]}", SecretString=body)
    return str(response["ARN"])


def test_without_a_secret_arn_nothing_is_resolved() -> None:
    assert resolve_database_secret({}) == {}
    assert resolve_database_secret({"DW_PG_SECRET_ARN": "  ", "DW_PG_HOST": "h"}) == {}


def test_secret_supplies_every_dw_pg_value(secretsmanager: Any) -> None:
    arn = create_secret(secretsmanager, RDS_SECRET)

    resolved = resolve_database_secret({"DW_PG_SECRET_ARN": arn})

    assert resolved == {
        "DW_PG_HOST": RDS_SECRET["host"],
        "DW_PG_PORT": "5432",
        "DW_PG_USER": "loader",
        "DW_PG_PASSWORD": RDS_SECRET["password"],
        "DW_PG_DATABASE": "warehouse",
    }


def test_secret_wins_for_credentials_env_wins_for_location(secretsmanager: Any) -> None:
    arn = create_secret(secretsmanager, RDS_SECRET)
    env = {
        "DW_PG_SECRET_ARN": arn,
        "DW_PG_HOST": "proxy.endpoint.local",
        "DW_PG_PORT": "6432",
        "DW_PG_DATABASE": "analytics",
        "DW_PG_USER": "stale-user",
        "DW_PG_PASSWORD": "stale-password",
    }

    merged = {**env, **resolve_database_secret(env)}

    assert merged["DW_PG_HOST"] == "proxy.endpoint.local"
    assert merged["DW_PG_PORT"] == "6432"
    assert merged["DW_PG_DATABASE"] == "analytics"
    assert merged["DW_PG_USER"] == "loader"
    assert merged["DW_PG_PASSWORD"] == RDS_SECRET["password"]


def test_rds_managed_master_secret_has_only_credentials(secretsmanager: Any) -> None:
    # GIVEN the secret RDS manages for a master user: username and password only
    arn = create_secret(secretsmanager, {"username": "postgres", "password": "pw"})

    resolved = resolve_database_secret({"DW_PG_SECRET_ARN": arn, "DW_PG_HOST": "db.local"})

    assert resolved == {"DW_PG_USER": "postgres", "DW_PG_PASSWORD": "pw"}


def test_secret_is_read_once_per_process(secretsmanager: Any) -> None:
    arn = create_secret(secretsmanager, RDS_SECRET)
    first = resolve_database_secret({"DW_PG_SECRET_ARN": arn})

    # WHEN the secret disappears from the server, a warm process does not notice
    secretsmanager.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    second = resolve_database_secret({"DW_PG_SECRET_ARN": arn})

    assert second == first
    # ... until the cache is dropped (what the caller does after an auth failure)
    forget_database_secrets()
    with pytest.raises(DatabaseSecretError, match="ResourceNotFoundException"):
        resolve_database_secret({"DW_PG_SECRET_ARN": arn})


def test_missing_secret_error_names_the_variable(secretsmanager: Any) -> None:
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:dw/none-AbCdEf"
    with pytest.raises(DatabaseSecretError) as excinfo:
        resolve_database_secret({"DW_PG_SECRET_ARN": arn})
    assert "DW_PG_SECRET_ARN" in str(excinfo.value)
    assert arn in str(excinfo.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json at all", "not a JSON object"),
        ('["a", "list"]', "not a JSON object"),
        ({"engine": "mysql", "username": "u", "password": "p"}, "not PostgreSQL"),
        ({"engine": "postgres", "username": "u"}, "lacks password"),
        ({"password": "p"}, "lacks username"),
    ],
)
def test_unusable_secrets_are_rejected(
    secretsmanager: Any, value: dict[str, Any] | str, message: str
) -> None:
    arn = create_secret(secretsmanager, value)
    with pytest.raises(DatabaseSecretError, match=message) as excinfo:
        resolve_database_secret({"DW_PG_SECRET_ARN": arn})
    assert '"p"' not in str(excinfo.value)


def test_password_never_logged(secretsmanager: Any, caplog: pytest.LogCaptureFixture) -> None:
    arn = create_secret(secretsmanager, RDS_SECRET)
    with caplog.at_level(logging.DEBUG):
        resolve_database_secret({"DW_PG_SECRET_ARN": arn})

    assert any(r.getMessage() == "read database secret" for r in caplog.records)
    for record in caplog.records:
        rendered = f"{record.getMessage()} {record.__dict__}"
        assert RDS_SECRET["password"] not in rendered


def test_the_erasure_key_comes_from_its_secret_plain_or_json(secretsmanager: Any) -> None:
    from loader.config import ConfigError, load_settings
    from loader.secrets import resolve_erasure_key

    key = "k3y-" + "x" * 40
    plain = create_secret(secretsmanager, key)
    wrapped = create_secret(secretsmanager, {"hmac_key": key, "rotated": "never"})

    assert resolve_erasure_key({"ERASURE_HMAC_KEY_SECRET_ARN": plain}) == key
    env = {"RAW_BUCKET_NAME": "b", "ERASURE_HMAC_KEY_SECRET_ARN": wrapped, "ERASURE_HMAC_KEY": "x"}
    assert load_settings(env).erasure_hmac_key == key  # the secret wins over the variable
    short = create_secret(secretsmanager, "too-short")
    forget_database_secrets()
    with pytest.raises(ConfigError, match="ERASURE_HMAC_KEY must be at least 32") as refused:
        load_settings({"RAW_BUCKET_NAME": "b", "ERASURE_HMAC_KEY_SECRET_ARN": short})
    assert "too-short" not in str(refused.value)
    without = create_secret(secretsmanager, {"password": key})
    with pytest.raises(DatabaseSecretError, match="without a text `hmac_key`"):
        resolve_erasure_key({"ERASURE_HMAC_KEY_SECRET_ARN": without})
