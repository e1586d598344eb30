"""How an S3 failure is judged: one decision for both clients, their GETs and their listings.

Each client's library retries what it retries on its own (botocore: throttling, 5xx, broken
connections; the CRT client asks its library for no retries, see crt_client.py). Every failure
that reaches us gets one of five verdicts:
- `terminal`: this object can never be read (deleted since it was listed, archived). It is
  reported with a reason code and the run goes on.
- `access`: the bucket, the credentials, the policy or the region is wrong: a configuration
  problem that no retry can mend. It raises `S3AccessError` at once. A redirect is one too (301
  PermanentRedirect, 307, AuthorizationHeaderMalformed naming another region): the same request
  would reach the same wrong endpoint.
- `retry`: throttling, a 5xx, no response, a body cut short or failing its checksum: another
  attempt, with full-jitter backoff. Neither client can wait for a `Retry-After`: botocore
  reads only `x-amz-retry-after`, and the CRT reports a throttled or 5xx response without its
  headers (AWS_ERROR_S3_SLOW_DOWN, bench/results/crt_library.json).
- `expired`: the session token expired under the request (ExpiredToken). The credential chains
  refresh before expiry, so the next attempt signs with new ones; a provider that keeps handing
  out the expired token ends in `S3AccessError`, since no rerun would mend it.
- `fail`: any other refusal: `S3TransientError` at once.

Every request counts against one budget, S3_MAX_ATTEMPTS, whoever sent it: once spent,
`S3TransientError` fails the invocation so Lambda retries it.
"""

from __future__ import annotations

import random
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from typing import Final, Literal, NamedTuple, TypeVar

from loader.common import S3AccessError, S3TransientError
from loader.errors import TransientError

T = TypeVar("T")
Verdict = Literal["terminal", "access", "retry", "expired", "fail"]

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
#: The session token expired between signing and S3 reading the request.
EXPIRED_CODES: Final = frozenset({"ExpiredToken", "TokenRefreshRequired"})


class Retry(TransientError):
    """An attempt that failed in a way another attempt may mend. `requests`: how many requests
    it spent (botocore's own retries included)."""

    def __init__(self, reason: str, *, expired: bool = False, requests: int = 1) -> None:
        super().__init__(reason)
        self.reason, self.expired, self.requests = reason, expired, requests


def classify(status: int, code: str) -> Verdict:
    """The verdict on an S3 error response: its HTTP status and its error document's <Code>."""
    if code in TERMINAL_CODES or (status == 404 and code != "NoSuchBucket"):
        return "terminal"
    if code in EXPIRED_CODES:
        return "expired"
    if code in ACCESS_CODES or status in ACCESS_STATUS:
        return "access"
    if status in RETRYABLE_STATUS or code in RETRYABLE_CODES:
        return "retry"
    return "fail"


def terminal_reason(code: str) -> str:
    """The reason code a terminal failure is reported under (`not_found` for a bare 404)."""
    return TERMINAL_CODES.get(code, "not_found")


class Terminal(NamedTuple):
    """An object that can never be read: the reason code it is reported under, and S3's word."""

    reason: str
    detail: str


def judge(
    status: int,
    code: str,
    headers: Iterable[tuple[str, str]] | None,
    action: str,
    where: str,
    requests: int = 1,
) -> Terminal | Retry:
    """The one decision on an error response, for both clients: `Terminal` when the object can
    never be read, else a `Retry` to raise. Raises what no retry mends: `S3AccessError` (naming
    the bucket's region on a redirect) or `S3TransientError`."""
    verdict = classify(status, code)
    if verdict == "terminal" and action == "read":
        return Terminal(terminal_reason(code), code or str(status))
    if verdict == "access":
        raise access_error(action, where, status, code, header(headers, "x-amz-bucket-region"))
    if verdict in ("fail", "terminal"):
        raise S3TransientError(f"{action} {where} failed: {status} {code}".strip())
    return Retry(f"{status} {code}".strip(), expired=verdict == "expired", requests=requests)


class Attempts:
    """The S3_MAX_ATTEMPTS requests one GET or one listing may spend, whoever sends them."""

    def __init__(
        self, action: str, where: str, max_attempts: int, backoff_base_s: float = 0.25
    ) -> None:
        self.action, self.where, self.max_attempts = action, where, max(1, max_attempts)
        self.backoff_base_s = backoff_base_s
        self.spent = 0  # requests that failed so far

    def failed(self, retry: Retry) -> float:
        """Count a failed attempt; the seconds to wait before the next one. Once every attempt
        is spent, raises: an expired token that stays expired is a configuration problem;
        anything else fails the invocation so that it is retried."""
        self.spent += retry.requests
        action, where, spent = self.action, self.where, self.spent
        if spent >= self.max_attempts and retry.expired:
            raise S3AccessError(
                f"cannot {action} {where}: ExpiredToken on all {spent} attempts (the credential "
                "provider keeps handing out an expired session token)"
            ) from None
        if spent >= self.max_attempts:
            raise S3TransientError(
                f"{action} {where} failed after {spent} attempts: {retry.reason}"
            ) from None
        return backoff_delay(spent, self.backoff_base_s)


def retrying(call: Callable[[], T], attempts: Attempts) -> T:
    """`call()` until it returns, backing off after each `Retry` it raises."""
    while True:
        try:
            return call()
        except Retry as retry:
            time.sleep(attempts.failed(retry))


def access_error(
    action: str, where: str, status: int, code: str, bucket_region: str | None = None
) -> S3AccessError:
    """`bucket_region` is S3's x-amz-bucket-region header: on a redirect, where to point."""
    hint = ""
    if bucket_region:
        hint = f" (the bucket is in {bucket_region}: set AWS_REGION={bucket_region})"
    return S3AccessError(f"cannot {action} {where}: {code or status}{hint}")


def header(headers: Iterable[tuple[str, str]] | None, name: str) -> str | None:
    """A response header's value, whatever its case."""
    wanted = name.lower()
    for key, value in headers or ():
        if key.lower() == wanted:
            return value
    return None


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
