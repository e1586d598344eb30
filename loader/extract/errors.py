"""How an S3 failure is classified: one decision for both clients, their GETs and their listings.

Every failed request ends in one of four verdicts:
- `terminal`: this object can never be read (deleted since it was listed, archived). It is
  reported with a reason code and the run goes on.
- `access`: the bucket, the credentials, the policy or the region is wrong: a configuration
  problem that no retry can mend. It raises `S3AccessError` at once.
- `retry`: throttling, a 5xx, a timeout: worth another attempt with backoff; once the attempts
  are spent, `S3TransientError` fails the invocation so Lambda retries it.
- `fail`: any other refusal: `S3TransientError` at once.

A redirect is `access`: S3 answers PermanentRedirect (301) or a 307, or AuthorizationHeaderMalformed
naming another region, when the bucket lives in another region than the client addresses, and
sending the same request again reaches the same wrong endpoint.
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from typing import Final, Literal

from loader.common import S3AccessError, S3TransientError

Verdict = Literal["terminal", "access", "retry", "fail"]

#: Object-level refusals, and the reason code each is reported under.
TERMINAL_CODES: Final = {"NoSuchKey": "not_found", "InvalidObjectState": "not_readable"}
#: Error codes, as S3 names them, that mean the configuration is wrong.
ACCESS_CODES: Final = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "NoSuchBucket",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
    }
)
#: Statuses that mean the same whatever the code: forbidden, or the bucket is elsewhere.
ACCESS_STATUS: Final = frozenset({301, 307, 403})
RETRYABLE_CODES: Final = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
    }
)
RETRYABLE_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})


class TransportError(Exception):
    """The request got no HTTP response (connection refused or reset, timeout): retryable."""


def classify(status: int, code: str) -> Verdict:
    """The verdict on an S3 error response: its HTTP status and its error document's <Code>."""
    if code in TERMINAL_CODES or (status == 404 and code != "NoSuchBucket"):
        return "terminal"
    if code in ACCESS_CODES or status in ACCESS_STATUS:
        return "access"
    if status in RETRYABLE_STATUS or code in RETRYABLE_CODES:
        return "retry"
    return "fail"


def terminal_reason(code: str) -> str:
    """The reason code a terminal failure is reported under (`not_found` for a bare 404)."""
    return TERMINAL_CODES.get(code, "not_found")


def access_error(action: str, where: str, status: int, code: str) -> S3AccessError:
    return S3AccessError(f"cannot {action} {where}: {code or status}")


def transient_error(action: str, where: str, status: int, code: str) -> S3TransientError:
    return S3TransientError(f"{action} {where} failed: {status} {code}".strip())


def error_code(body: bytes | None) -> str:
    """The <Code> of an S3 error document, or "" when there is none."""
    if not body:
        return ""
    try:
        root = ET.fromstring(body)  # noqa: S314 - the document comes from our own S3 endpoint
    except ET.ParseError:
        return ""
    for child in root.iter():
        if child.tag.rpartition("}")[2] == "Code":
            return (child.text or "").strip()
    return ""


def backoff_delay(retry: int, base_s: float = 0.25, cap_s: float = 10.0) -> float:
    """Full-jitter exponential backoff before retry number `retry` (1, 2, ...)."""
    return random.uniform(0.0, min(cap_s, base_s * (2 ** (retry - 1))))
