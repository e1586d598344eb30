"""The one S3 error classifier both clients use (loader/extract/errors.py): each answer S3 can
give, and the verdict it gets. The clients' behaviour on the wire is tested for both of them in
tests/integration/test_source.py."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest

from loader.extract.boto3_client import checksum_problem
from loader.extract.errors import (
    RETRY_AFTER_CAP_S,
    access_error,
    backoff_delay,
    classify,
    error_code,
    header,
    retry_after_s,
    terminal_reason,
)


@pytest.mark.parametrize(
    ("status", "code", "verdict"),
    [
        # the object is gone or archived: reported, the run goes on
        (404, "NoSuchKey", "terminal"),
        (404, "", "terminal"),
        (403, "InvalidObjectState", "terminal"),
        # the configuration is wrong: raised at once, never retried
        (403, "AccessDenied", "access"),
        (403, "", "access"),
        (404, "NoSuchBucket", "access"),
        (400, "InvalidAccessKeyId", "access"),
        (403, "SignatureDoesNotMatch", "access"),
        (301, "PermanentRedirect", "access"),
        (301, "", "access"),
        (307, "TemporaryRedirect", "access"),
        (400, "AuthorizationHeaderMalformed", "access"),
        # worth another attempt
        (503, "SlowDown", "retry"),
        (500, "InternalError", "retry"),
        (503, "", "retry"),
        (400, "RequestTimeout", "retry"),
        (429, "", "retry"),
        (400, "ThrottlingException", "retry"),
        # the session token expired in flight: another attempt, with refreshed credentials
        (400, "ExpiredToken", "expired"),
        (403, "ExpiredToken", "expired"),
        (400, "TokenRefreshRequired", "expired"),
        # anything else fails the invocation at once
        (400, "InvalidRequest", "fail"),
        (409, "", "fail"),
    ],
)
def test_verdict(status: int, code: str, verdict: str) -> None:
    assert classify(status, code) == verdict


def test_terminal_reasons() -> None:
    assert terminal_reason("NoSuchKey") == "not_found"
    assert terminal_reason("InvalidObjectState") == "not_readable"
    assert terminal_reason("") == "not_found"


def test_error_code_whatever_the_namespace() -> None:
    aws = b'<?xml version="1.0"?><Error><Code>PermanentRedirect</Code><Message>m</Message></Error>'
    namespaced = (
        b'<Error xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Code>SlowDown</Code></Error>'
    )
    assert error_code(aws) == "PermanentRedirect"
    assert error_code(namespaced) == "SlowDown"
    assert error_code(b"not xml") == ""
    assert error_code(None) == ""


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("3600", RETRY_AFTER_CAP_S),
        ("-1", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        (None, None),
    ],
)
def test_retry_after_is_honoured_within_a_cap(value: str | None, seconds: float | None) -> None:
    assert retry_after_s(value) == seconds


def test_backoff_never_retries_sooner_than_retry_after() -> None:
    # GIVEN a first retry, whose jittered backoff is at most 0.25 s
    # WHEN S3 asked for 2 s THEN the wait is those 2 s; without the header, the backoff
    assert all(backoff_delay(1, 0.25, 10.0, retry_after=2.0) == 2.0 for _ in range(50))
    assert all(0.0 <= backoff_delay(1, 0.25, 10.0) <= 0.25 for _ in range(50))
    assert backoff_delay(6, 1.0, 10.0, retry_after=0.0) <= 10.0


def test_headers_are_read_whatever_their_case() -> None:
    headers = [("Retry-After", "2"), ("x-amz-bucket-region", "eu-west-1")]
    assert header(headers, "retry-after") == "2"
    assert header(headers, "X-Amz-Bucket-Region") == "eu-west-1"
    assert header(headers, "location") is None
    assert header(None, "retry-after") is None


def test_a_redirect_names_the_region_to_set() -> None:
    error = access_error("read", "s3://b/k", 301, "PermanentRedirect", "eu-west-1")
    assert str(error) == (
        "cannot read s3://b/k: PermanentRedirect (the bucket is in eu-west-1: set "
        "AWS_REGION=eu-west-1)"
    )
    assert str(access_error("list", "s3://b/", 403, "")) == "cannot list s3://b/: 403"


# ------------------------------------------------------------------ the boto3 client's checksum


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def test_a_body_is_checked_against_the_full_object_checksum_s3_sent() -> None:
    body = b'{"event": "page_view"}'
    crc32 = _b64(zlib.crc32(body).to_bytes(4, "big"))
    sha256 = _b64(hashlib.sha256(body).digest())
    assert checksum_problem(body, {"x-amz-checksum-crc32": crc32}) is None
    assert checksum_problem(body, {"x-amz-checksum-sha256": sha256}) is None
    assert checksum_problem(body, {}) is None  # S3 sent none: nothing to check
    problem = checksum_problem(body + b" ", {"x-amz-checksum-crc32": crc32})
    assert problem is not None and problem.startswith("crc32 checksum mismatch")
    wrong = _b64(hashlib.sha256(b"other").digest())
    assert checksum_problem(body, {"x-amz-checksum-sha256": wrong}) is not None


def test_a_composite_checksum_of_a_multipart_upload_is_not_checked() -> None:
    # "<base64 of the parts' checksums>-<parts>": no read of the whole body can reproduce it
    assert checksum_problem(b"{}", {"x-amz-checksum-crc32": "AAAAAA==-3"}) is None
