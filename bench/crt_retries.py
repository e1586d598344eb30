"""What the CRT's own retry strategy does with each fault the fault suite injects.

    .venv/bin/python bench/crt_retries.py [--out bench/results/crt_retries.json]

One awscrt `S3Client` with `S3RetryConfig(STANDARD, max_retries=3)` (what the CRT path would
use if it handed its retries to the library), GETs of one 64 KB object (stored with its CRC32)
through the tests' fault proxy in front of moto, one fault at a time: whether the GET succeeded,
how many requests reached the proxy, how long it took, what error came back, and how many body
bytes `on_body` delivered (more than the object: a failed attempt's bytes reached the caller).
It is the measurement behind `loader/extract/crt_client.py`'s note on what it keeps for itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import boto3  # noqa: E402
from awscrt.auth import AwsCredentialsProvider  # noqa: E402
from awscrt.http import HttpHeaders, HttpRequest  # noqa: E402
from awscrt.s3 import (  # noqa: E402
    S3ChecksumConfig,
    S3Client,
    S3RequestTlsMode,
    S3RequestType,
    S3ResponseError,
    S3RetryConfig,
    S3RetryMode,
    create_default_s3_signing_config,
)
from support.http_fault_proxy import LISTINGS, OBJECT_GETS, Fault, FaultProxy  # noqa: E402

from tools.servers import DUMMY_AWS_ENV, moto_s3_server  # noqa: E402

BUCKET = "crt-retries"
KEY = "events/a.json"

FAULTS: dict[str, Any] = {
    "slow_down_503_x2": lambda: Fault.slow_down(first=2, match=OBJECT_GETS),
    "internal_error_500_x2": lambda: Fault.internal_error(first=2, match=OBJECT_GETS),
    "500_error_body_cut_x2": lambda: Fault.error(
        500, "InternalError", first=2, match=OBJECT_GETS, cut_after=20
    ),
    "body_cut_short_x2": lambda: Fault.cut(1000, first=2, match=OBJECT_GETS),
    "connection_reset_x2": lambda: Fault.reset(first=2, match=OBJECT_GETS),
    "corrupt_body_checksum_x1": lambda: Fault.corrupt(first=1, match=OBJECT_GETS),
    "expired_token_403_x1": lambda: Fault.error(403, "ExpiredToken", first=1, match=OBJECT_GETS),
    "expired_token_400_x1": lambda: Fault.error(400, "ExpiredToken", first=1, match=OBJECT_GETS),
    "slow_down_retry_after_2s_x1": lambda: Fault.error(
        503, "SlowDown", first=1, match=OBJECT_GETS, headers={"Retry-After": "2"}
    ),
    "stalled_8s_x1": lambda: Fault.delay(8.0, first=1, match=OBJECT_GETS),
    "listing_slow_down_x1": lambda: Fault.slow_down(first=1, match=LISTINGS),
}


def probe(client: S3Client, proxy: FaultProxy, name: str, host: str) -> dict[str, Any]:
    proxy.set_faults(FAULTS[name]())
    before = proxy.requests
    delivered = [0]
    headers_calls = [0]

    def on_headers(**_: Any) -> None:
        headers_calls[0] += 1

    def on_body(chunk: Any, **_: Any) -> None:
        delivered[0] += len(chunk)

    listing = name.startswith("listing")
    path = f"/{BUCKET}?list-type=2" if listing else f"/{BUCKET}/{KEY}"
    started = time.monotonic()
    request = client.make_request(
        type=S3RequestType.DEFAULT,
        operation_name="ListObjectsV2" if listing else "GetObject",
        request=HttpRequest("GET", path, HttpHeaders([("Host", host)])),
        on_headers=on_headers,
        on_body=on_body,
        checksum_config=None if listing else S3ChecksumConfig(validate_response=True),
    )
    error = request.finished_future.exception(timeout=60)
    took = time.monotonic() - started
    out: dict[str, Any] = {
        "ok": error is None,
        "requests_at_proxy": proxy.requests - before,
        "faults_fired": sum(proxy.stats.values()),
        "seconds": round(took, 2),
        "body_bytes_delivered": delivered[0],
        "on_headers_calls": headers_calls[0],
    }
    if error is not None:
        out["error"] = getattr(error, "name", type(error).__name__)
        if isinstance(error, S3ResponseError):
            out["status"] = error.status_code
    proxy.stats.clear()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/crt_retries.json")
    args = parser.parse_args()
    for name, value in DUMMY_AWS_ENV.items():
        os.environ.setdefault(name, value)
    results: dict[str, Any] = {}
    with moto_s3_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        body = os.urandom(64 * 1024)
        s3.put_object(Bucket=BUCKET, Key=KEY, Body=body, ChecksumAlgorithm="CRC32")
        with FaultProxy(endpoint) as proxy:
            host = proxy.url.split("//", 1)[1]
            provider = AwsCredentialsProvider.new_default_chain()
            client = S3Client(
                region="us-east-1",
                signing_config=create_default_s3_signing_config(
                    region="us-east-1", credential_provider=provider
                ),
                tls_mode=S3RequestTlsMode.DISABLED,
                retry_config=S3RetryConfig(retry_mode=S3RetryMode.STANDARD, max_retries=3),
            )
            for name in FAULTS:
                results[name] = probe(client, proxy, name, host)
                print(name, results[name], flush=True)
            shutdown: threading.Event = client.shutdown_event
            del client
            proxy.stop()
            shutdown.wait(10)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
