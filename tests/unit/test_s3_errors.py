"""The one S3 error classifier both clients use (loader/extract/errors.py): each answer S3 can
give, and the verdict it gets. The clients' behaviour on the wire is tested for both of them in
tests/integration/test_source.py."""

from __future__ import annotations

import pytest

from loader.extract.errors import classify, error_code, terminal_reason


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
        (400, "ExpiredToken", "access"),
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
