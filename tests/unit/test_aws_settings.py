"""The CRT client takes its AWS settings from botocore itself (loader/extract/address.py): the
same variables and config file, botocore's answers, and botocore's errors for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import InvalidChecksumConfigError

from loader.extract.address import resolve


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_RESPONSE_CHECKSUM_VALIDATION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent"))


def test_response_checksums_are_checked_unless_when_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # botocore's default: when_supported
    assert resolve("bkt").checksums is True
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_supported")
    assert resolve("bkt").checksums is True
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_REQUIRED")
    assert resolve("bkt").checksums is False


def test_settings_from_the_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "[default]\nregion = eu-west-1\n\n"
        "[profile store]\nresponse_checksum_validation = when_required\n"
        f"region = eu-central-1\nca_bundle = {tmp_path / 'ca.pem'}\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    default = resolve("bkt")
    assert (default.checksums, default.region, default.host) == (
        True,
        "eu-west-1",
        "bkt.s3.eu-west-1.amazonaws.com",
    )
    monkeypatch.setenv("AWS_PROFILE", "store")
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    store = resolve("bkt")
    assert (store.checksums, store.region) == (False, "eu-central-1")
    assert store.ca_bundle == str(tmp_path / "ca.pem")
    # the variable wins over the profile, as in botocore
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_supported")
    assert resolve("bkt").checksums is True


def test_an_unknown_checksum_validation_value_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "always")
    with pytest.raises(InvalidChecksumConfigError, match=r"when_supported.*but got always"):
        resolve("bkt")
