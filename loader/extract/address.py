"""How a bucket is addressed: the endpoint override botocore honours, then virtual-hosted or
path-style. Both clients resolve through here, so they address buckets exactly the same way.

The CRT client reads the rest of what boto3 would read here too (the region, a CA bundle,
whether to check response checksums), so that it needs no botocore session: the same variables
and config file, the same answers.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class S3Address:
    """Where a bucket's requests go: scheme, the Host header, and the path prefix.

    Virtual-hosted (`https://bucket.s3.region.amazonaws.com/key`) for AWS; path-style
    (`http://127.0.0.1:PORT/bucket/key`) for a custom endpoint (moto, s3rver, MinIO) or a bucket
    whose name cannot be a DNS label under TLS (dots).
    """

    scheme: str
    host: str  # host[:port], exactly as sent in the Host header
    base_path: str  # "" (virtual-hosted) or "/bucket" (path-style), plus any endpoint path
    custom_endpoint: bool

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def object_path(self, key: str) -> str:
        """The request path of an object: the key percent-encoded the way botocore does."""
        return f"{self.base_path}/{quote(key, safe='/~')}"

    def bucket_path(self) -> str:
        return self.base_path or "/"

    def url(self, path_and_query: str) -> str:
        return f"{self.scheme}://{self.host}{path_and_query}"


def endpoint_url_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The endpoint override botocore honours: AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL."""
    env = os.environ if env is None else env
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return None
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = (env.get(name) or "").strip()
        if value:
            return value
    return None


def region_from_env(env: Mapping[str, str] | None = None) -> str:
    """The region boto3 would use: AWS_REGION, AWS_DEFAULT_REGION, the profile's `region` in
    the config file (AWS_CONFIG_FILE, else ~/.aws/config), else us-east-1 (as botocore's S3)."""
    env = os.environ if env is None else env
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        value = (env.get(name) or "").strip()
        if value:
            return value
    return _profile_setting(env, "region") or DEFAULT_REGION


#: botocore's `response_checksum_validation` values: check every response that can carry a
#: checksum (its default), or only those whose request asked for one (so, for us, none).
CHECKSUM_VALIDATION_VALUES = ("when_supported", "when_required")


def checksum_validation_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Whether GETs ask for the object's stored checksum and check the body against it, as
    botocore decides: AWS_RESPONSE_CHECKSUM_VALIDATION, else the profile's
    `response_checksum_validation`; `when_supported` (the default) checks, `when_required`
    does not (for an S3-compatible store that refuses `x-amz-checksum-mode`)."""
    env = os.environ if env is None else env
    value = (env.get("AWS_RESPONSE_CHECKSUM_VALIDATION") or "").strip()
    value = (value or _profile_setting(env, "response_checksum_validation") or "").lower()
    if value and value not in CHECKSUM_VALIDATION_VALUES:
        raise ValueError(
            f"AWS_RESPONSE_CHECKSUM_VALIDATION / response_checksum_validation must be one of "
            f"{', '.join(CHECKSUM_VALIDATION_VALUES)}, got {value!r}"
        )
    return value != "when_required"


def _profile_setting(env: Mapping[str, str], name: str) -> str | None:
    """`name` in the active profile of the AWS config file (AWS_PROFILE, AWS_DEFAULT_PROFILE,
    else default; AWS_CONFIG_FILE, else ~/.aws/config), as botocore reads it; None if unset or
    the file is unreadable."""
    profile = (env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default").strip()
    path = Path(env.get("AWS_CONFIG_FILE") or "~/.aws/config").expanduser()
    config = configparser.RawConfigParser()
    try:
        config.read(path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None
    section = "default" if profile == "default" else f"profile {profile}"
    return config.get(section, name, fallback="").strip() or None


def ca_bundle_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The CA bundle botocore trusts instead of the system's: AWS_CA_BUNDLE."""
    env = os.environ if env is None else env
    return (env.get("AWS_CA_BUNDLE") or "").strip() or None


def _aws_dns_suffix(region: str) -> str:
    return "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"


def is_aws_host(host: str) -> bool:
    hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return hostname.endswith((".amazonaws.com", ".amazonaws.com.cn"))


def resolve_address(bucket: str, region: str, endpoint_url: str | None = None) -> S3Address:
    """Address `bucket` through `endpoint_url` (path-style) or AWS's regional endpoint."""
    if endpoint_url and not is_aws_host(urlsplit(endpoint_url).netloc):
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"S3 endpoint URL must be http(s)://host[:port], got {endpoint_url!r}")
        prefix = parts.path.rstrip("/")
        return S3Address(parts.scheme, parts.netloc, f"{prefix}/{bucket}", custom_endpoint=True)
    if endpoint_url:  # an explicit AWS endpoint (FIPS, dualstack): keep its host, path-style
        parts = urlsplit(endpoint_url)
        if "." in bucket:
            return S3Address(parts.scheme, parts.netloc, f"/{bucket}", custom_endpoint=False)
        return S3Address(parts.scheme, f"{bucket}.{parts.netloc}", "", custom_endpoint=False)
    regional = f"s3.{region}.{_aws_dns_suffix(region)}"
    if "." in bucket:  # a dotted name breaks the wildcard certificate: path-style
        return S3Address("https", regional, f"/{bucket}", custom_endpoint=False)
    return S3Address("https", f"{bucket}.{regional}", "", custom_endpoint=False)
