"""The AWS settings the CRT client reads without botocore give botocore's answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.extract.address import checksum_validation_from_env, region_from_env


def test_response_checksums_are_checked_unless_when_required(tmp_path: Path) -> None:
    no_file = {"AWS_CONFIG_FILE": str(tmp_path / "absent")}
    # botocore's default: when_supported
    assert checksum_validation_from_env(no_file) is True
    assert checksum_validation_from_env({**no_file, "AWS_RESPONSE_CHECKSUM_VALIDATION": ""})
    on = {**no_file, "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_supported"}
    assert checksum_validation_from_env(on) is True
    # botocore lower-cases the value before it compares
    off = {**no_file, "AWS_RESPONSE_CHECKSUM_VALIDATION": " WHEN_REQUIRED "}
    assert checksum_validation_from_env(off) is False


def test_response_checksum_validation_from_the_profile(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "[default]\nregion = eu-west-1\n\n"
        "[profile store]\nresponse_checksum_validation = when_required\n"
        "region = eu-central-1\n"
    )
    env = {"AWS_CONFIG_FILE": str(config)}
    assert checksum_validation_from_env(env) is True  # the default profile leaves it unset
    assert checksum_validation_from_env({**env, "AWS_PROFILE": "store"}) is False
    # the variable wins over the profile, as in botocore
    assert checksum_validation_from_env(
        {**env, "AWS_PROFILE": "store", "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_supported"}
    )
    # the region comes from the same profile reader
    assert region_from_env(env) == "eu-west-1"
    assert region_from_env({**env, "AWS_PROFILE": "store"}) == "eu-central-1"


def test_an_unknown_checksum_validation_value_is_a_clear_error(tmp_path: Path) -> None:
    env = {
        "AWS_CONFIG_FILE": str(tmp_path / "absent"),
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "always",
    }
    with pytest.raises(ValueError, match="when_supported, when_required, got 'always'"):
        checksum_validation_from_env(env)
