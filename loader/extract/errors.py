"""How an S3 failure is classified: one decision for both clients, their GETs and their listings.

Every failed request ends in one of five verdicts:
- `terminal`: this object can never be read (deleted since it was listed, archived). It is
  reported with a reason code and the run goes on.
- `access`: the bucket, the credentials, the policy or the region is wrong: a configuration
  problem that no retry can mend. It raises `S3AccessError` at once.
- `retry`: throttling, a 5xx, a timeout: worth another attempt with backoff; once the attempts
  are spent, `S3TransientError` fails the invocation so Lambda retries it.
- `expired`: the session token expired under the request (403 ExpiredToken). The credential
  provider (both chains refresh before expiry) has new ones by the next attempt, so it is
  retried like `retry`; a provider that keeps handing out the expired token ends in
  `S3AccessError` once the attempts are spent, since no rerun would mend it.
- `fail`: any other refusal: `S3TransientError` at once.

A `retry` waits for full-jitter backoff, or for the response's `Retry-After` when S3 asks for
longer (capped, so a bad header cannot stall the hour).

A redirect is `access`: S3 answers PermanentRedirect (301) or a 307, or AuthorizationHeaderMalformed
naming another region, when the bucket lives in another region than the client addresses, and
sending the same request again reaches the same wrong endpoint.
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from loader.common import S3AccessError, S3TransientError
from loader.errors import TransientError

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
#: Longest wait a Retry-After header may ask for.
RETRY_AFTER_CAP_S: Final = 20.0


class TransportError(TransientError):
    """The request got no HTTP response (connection refused or reset, timeout): retryable."""


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


def access_error(
    action: str, where: str, status: int, code: str, bucket_region: str | None = None
) -> S3AccessError:
    """`bucket_region` is S3's x-amz-bucket-region header: on a redirect, where to point."""
    hint = ""
    if bucket_region:
        hint = f" (the bucket is in {bucket_region}: set AWS_REGION={bucket_region})"
    return S3AccessError(f"cannot {action} {where}: {code or status}{hint}")


def expired_error(action: str, where: str, attempts: int) -> S3AccessError:
    return S3AccessError(
        f"cannot {action} {where}: ExpiredToken on all {attempts} attempts (the credential "
        "provider keeps handing out an expired session token)"
    )


def header(headers: Iterable[tuple[str, str]] | None, name: str) -> str | None:
    """A response header's value, whatever its case."""
    wanted = name.lower()
    for key, value in headers or ():
        if key.lower() == wanted:
            return value
    return None


def retry_after_s(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds only; S3 sends no HTTP dates)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not seconds >= 0.0:  # also refuses nan
        return None
    return min(seconds, RETRY_AFTER_CAP_S)


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


def backoff_delay(
    retry: int, base_s: float = 0.25, cap_s: float = 10.0, retry_after: float | None = None
) -> float:
    """Full-jitter exponential backoff before retry number `retry` (1, 2, ...), and never sooner
    than the response's Retry-After asked."""
    delay = random.uniform(0.0, min(cap_s, base_s * (2 ** (retry - 1))))
    return delay if retry_after is None else max(delay, retry_after)


@dataclass(frozen=True, slots=True)
class GetRefusal:
    """A GET that S3 answered with an error, when the answer does not end the run: either the
    object can never be read (`terminal_reason`), or the GET is worth another attempt."""

    terminal_reason: str | None
    retry_after: float | None = None
    expired: bool = False


def judge_get_refusal(
    status: int, code: str, headers: Iterable[tuple[str, str]] | None, where: str
) -> GetRefusal:
    """The one decision on a refused GET, shared by both clients. Raises what no retry mends:
    `S3AccessError` (a redirect too: 301, 307, the bucket is in another region) or
    `S3TransientError`."""
    verdict = classify(status, code)
    if verdict == "terminal":
        return GetRefusal(terminal_reason(code))
    if verdict == "access":
        raise access_error("read", where, status, code, header(headers, "x-amz-bucket-region"))
    if verdict == "fail":
        raise transient_error("GET", where, status, code)
    return GetRefusal(None, retry_after_s(header(headers, "retry-after")), verdict == "expired")
