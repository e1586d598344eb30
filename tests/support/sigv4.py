"""Check a request's SigV4 signature the way S3 does, with botocore's signer as the reference.

moto and s3rver accept any signature, so a client that signs the wrong path encoding, query order
or header set would pass every other test and fail on AWS with 403 SignatureDoesNotMatch. This
recomputes the signature from what arrived on the wire (method, raw path and query, the headers
the Authorization header says were signed, X-Amz-Date) with the secret key, and compares.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_ALGORITHM = "AWS4-HMAC-SHA256 "


def sigv4_problem(method: str, path: str, headers: Mapping[str, str], secret: str) -> str | None:
    """Why the request's signature is not the one `secret` gives; None when it is."""
    auth = headers.get("Authorization") or ""
    if not auth.startswith(_ALGORITHM):
        return f"not a SigV4 Authorization header: {auth[:30]!r}"
    fields = dict(part.strip().split("=", 1) for part in auth[len(_ALGORITHM) :].split(","))
    access_key, _date, region, service, _ = fields["Credential"].split("/")
    signed = fields["SignedHeaders"].split(";")
    lowered = {k.lower(): v for k, v in headers.items()}
    missing = [name for name in signed if name not in lowered]
    if missing or "host" not in signed:
        return f"signed headers missing or host unsigned: {signed}"
    request = AWSRequest(
        method=method,
        url=f"https://{lowered['host']}{path}",
        headers={name: lowered[name] for name in signed},
    )
    request.context["timestamp"] = lowered["x-amz-date"]
    signer = S3SigV4Auth(
        Credentials(access_key, secret, lowered.get("x-amz-security-token")), service, region
    )
    if sorted(signer.headers_to_sign(request)) != sorted(signed):
        return f"botocore would sign {sorted(signer.headers_to_sign(request))}, not {signed}"
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, fields["Signature"]):
        return f"signature mismatch; canonical request:\n{canonical}"
    return None
