"""The one S3 error classifier both clients use (loader/extract/errors.py): each answer S3 can
give, and the verdict it gets. The clients' behaviour on the wire is tested for both of them in
tests/integration/test_source.py."""

from __future__ import annotations

import pytest

from loader.common import S3AccessError, S3TransientError
from loader.extract.errors import (
    Attempts,
    Retry,
    Terminal,
    access_error,
    backoff_delay,
    classify,
    error_code,
    header,
    judge,
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


def test_backoff_is_full_jitter_within_its_cap() -> None:
    assert all(0.0 <= backoff_delay(1, 0.25, 10.0) <= 0.25 for _ in range(50))
    assert all(0.0 <= backoff_delay(3, 0.25, 10.0) <= 1.0 for _ in range(50))
    assert all(backoff_delay(12, 1.0, 10.0) <= 10.0 for _ in range(50))


def test_headers_are_read_whatever_their_case() -> None:
    headers = [
        ("Location", "https://b.s3.eu-west-1.amazonaws.com/"),
        ("x-amz-bucket-region", "eu-west-1"),
    ]
    assert header(headers, "X-Amz-Bucket-Region") == "eu-west-1"
    assert header(headers, "retry-after") is None
    assert header(None, "x-amz-bucket-region") is None


def test_a_redirect_names_the_region_to_set() -> None:
    error = access_error("read", "s3://b/k", 301, "PermanentRedirect", "eu-west-1")
    assert str(error) == (
        "cannot read s3://b/k: PermanentRedirect (the bucket is in eu-west-1: set "
        "AWS_REGION=eu-west-1)"
    )
    assert str(access_error("list", "s3://b/", 403, "")) == "cannot list s3://b/: 403"


# ------------------------------------------------------------------ one decision, one budget


def test_judge_turns_a_response_into_a_result_a_retry_or_an_error() -> None:
    gone = judge(404, "NoSuchKey", [], "read", "s3://b/k")
    assert gone == Terminal("not_found", "NoSuchKey")
    slow = judge(503, "SlowDown", [], "read", "s3://b/k", requests=4)
    assert isinstance(slow, Retry)
    assert (slow.reason, slow.requests, slow.expired) == ("503 SlowDown", 4, False)
    expired = judge(400, "ExpiredToken", None, "list", "s3://b/")
    assert isinstance(expired, Retry) and expired.expired
    with pytest.raises(S3AccessError, match="AWS_REGION=eu-west-1"):
        judge(301, "PermanentRedirect", [("x-amz-bucket-region", "eu-west-1")], "list", "s3://b/")
    with pytest.raises(S3TransientError, match="409"):
        judge(409, "", None, "read", "s3://b/k")
    with pytest.raises(S3TransientError):  # a listing that is not there is no object to skip
        judge(404, "", None, "list", "s3://b/")


def test_every_request_counts_against_one_budget() -> None:
    attempts = Attempts("read", "s3://b/k", max_attempts=5, backoff_base_s=0.25)
    # the backoff doubles with each request spent; botocore's own retries spend the budget too
    assert 0.0 <= attempts.failed(Retry("503 SlowDown")) <= 0.25
    assert 0.0 <= attempts.failed(Retry("500 InternalError", requests=3)) <= 2.0
    assert attempts.spent == 4
    with pytest.raises(S3TransientError, match="after 5 attempts: body read failed"):
        attempts.failed(Retry("body read failed"))
    stale = Attempts("list", "s3://b/", max_attempts=1)
    with pytest.raises(S3AccessError, match="ExpiredToken on all 1 attempts"):
        stale.failed(Retry("403 ExpiredToken", expired=True))
