"""What the CRT's own machinery does, where loader/extract/crt_client.py keeps its own.

    .venv/bin/python bench/crt_library.py [--out bench/results/crt_library.json]

1. `retries`: one awscrt `S3Client` with `S3RetryConfig(STANDARD, max_retries=3)` (what the CRT
   path would use if it handed its retries to the library), GETs of one 64 KB object (stored
   with its CRC32) through the tests' fault proxy in front of moto, one fault at a time: whether
   the GET succeeded, how many requests reached the proxy, how long it took, what error came
   back, and how many body bytes `on_body` delivered (more than the object: a failed attempt's
   bytes reached the caller).
2. `without_retries`: the same client with `S3RetryMode.NONE` (what crt_client.py uses), one
   throttled, failed or refused GET each: what the caller is told (the error, its status, whether
   the response's headers, and so a `Retry-After`, reach it; whether `on_headers` was called).
3. `in_flight`: 256 GETs started at once with `max_active_connections_override=128`, against a
   server that answers each after 1 s (its own process), at the CRT's default throughput target
   and at the client's 100 Gbps: the most requests the server saw at once, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
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
    "too_many_requests_429_x1": lambda: Fault.error(
        429, "SlowDown", first=1, match=OBJECT_GETS, headers={"Retry-After": "2"}
    ),
}
#: The faults asked of the client without retries.
WITHOUT_RETRIES = (
    "slow_down_retry_after_2s_x1",
    "too_many_requests_429_x1",
    "internal_error_500_x2",
    "expired_token_403_x1",
)


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
            out["retry_after_header"] = any(k.lower() == "retry-after" for k, _ in error.headers)
    proxy.stats.clear()
    return out


#: A server answering every GET after one second, counting the requests it holds at once.
SLOW_SERVER = """
import sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
lock, state = threading.Lock(), {"now": 0, "max": 0}
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/stats":
            body = str(state["max"]).encode()
        else:
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            time.sleep(1.0)
            with lock:
                state["now"] -= 1
            body = b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(ThreadingHTTPServer):
    request_queue_size, daemon_threads = 512, True
Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def in_flight(target_gbps: float | None, port: int) -> dict[str, Any]:
    server = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(port)])
    try:
        time.sleep(1.0)
        host = f"127.0.0.1:{port}"
        provider = AwsCredentialsProvider.new_default_chain()
        client = S3Client(
            region="us-east-1",
            signing_config=create_default_s3_signing_config(
                region="us-east-1", credential_provider=provider
            ),
            tls_mode=S3RequestTlsMode.DISABLED,
            throughput_target_gbps=target_gbps,
            max_active_connections_override=128,
            retry_config=S3RetryConfig(retry_mode=S3RetryMode.NONE),
        )
        started = time.monotonic()
        requests = [
            client.make_request(
                type=S3RequestType.DEFAULT,
                operation_name="GetObject",
                request=HttpRequest("GET", f"/bkt/k{i}", HttpHeaders([("Host", host)])),
            )
            for i in range(256)
        ]
        errors = sum(r.finished_future.exception(timeout=120) is not None for r in requests)
        wall = time.monotonic() - started
        most = int(urllib.request.urlopen(f"http://{host}/stats").read())
        del requests, client
        return {"errors": errors, "wall_s": round(wall, 1), "most_in_flight": most}
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/crt_library.json")
    args = parser.parse_args()
    for name, value in DUMMY_AWS_ENV.items():
        os.environ.setdefault(name, value)
    results: dict[str, Any] = {"retries": {}, "without_retries": {}, "in_flight": {}}
    for port, (name, target) in enumerate(
        [("crt_default_target", None), ("target_100_gbps", 100.0)], start=18771
    ):
        results["in_flight"][name] = in_flight(target, port)
        print(name, results["in_flight"][name], flush=True)
    with moto_s3_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        body = os.urandom(64 * 1024)
        s3.put_object(Bucket=BUCKET, Key=KEY, Body=body, ChecksumAlgorithm="CRC32")
        with FaultProxy(endpoint) as proxy:
            host = proxy.url.split("//", 1)[1]
            for section, mode, faults in (
                ("retries", S3RetryMode.STANDARD, list(FAULTS)),
                ("without_retries", S3RetryMode.NONE, WITHOUT_RETRIES),
            ):
                client = S3Client(
                    region="us-east-1",
                    signing_config=create_default_s3_signing_config(
                        region="us-east-1",
                        credential_provider=AwsCredentialsProvider.new_default_chain(),
                    ),
                    tls_mode=S3RequestTlsMode.DISABLED,
                    retry_config=S3RetryConfig(retry_mode=mode, max_retries=3),
                )
                for name in faults:
                    results[section][name] = probe(client, proxy, name, host)
                    print(section, name, results[section][name], flush=True)
                shutdown: threading.Event = client.shutdown_event
                del client
                shutdown.wait(10)
            proxy.stop()
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
