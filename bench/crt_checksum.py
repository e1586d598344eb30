"""Client CPU per GET of the CRT client with and without checking S3's stored checksum.

    .venv/bin/python bench/crt_checksum.py [--objects 1000] [--repeats 12]

s3rver returns no checksum, so the main benchmark's GETs are never checked. This one stores
~800 B objects with a CRC32 in a moto server (its own process), puts the tests' fault proxy in
front of it (its own process too: it hands moto the CRT's `x-amz-checksum-mode: enabled` as the
`ENABLED` moto reads), and fetches them all through `CrtSource`, the check on and off in turn,
`--repeats` interleaved pairs. CPU is `time.process_time()` of this process only (every thread,
the CRT's event loops included; moto and the proxy excluded). moto is slow, so the CPU per GET
is higher than on s3rver; compare the two columns, not the absolutes. Writes
bench/results/crt_checksum.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "crt_checksum.json"
BUCKET = "crt-checksum-bench"
sys.path.insert(0, str(ROOT))

_PROXY = """
import sys, time
sys.path.insert(0, sys.argv[2])
from support.http_fault_proxy import FaultProxy
with FaultProxy(sys.argv[1], max_connections=64) as proxy:
    print(proxy.url, flush=True)
    time.sleep(24 * 3600)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _servers() -> tuple[str, str]:
    """moto on a loopback port and the proxy in front of it; both stop when this process ends."""
    port = _free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(moto.kill)
    moto_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("moto did not start") from None
            time.sleep(0.2)
    proxy = subprocess.Popen(
        [sys.executable, "-c", _PROXY, moto_url, str(ROOT / "tests")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    atexit.register(proxy.kill)
    assert proxy.stdout is not None
    return moto_url, proxy.stdout.readline().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()

    moto_url, proxy_url = _servers()
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": proxy_url,
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    import boto3

    import loader.extract.crt_client as crt_client
    from loader.config import DatabaseSettings, Settings

    s3 = boto3.client("s3", endpoint_url=moto_url)
    s3.create_bucket(Bucket=BUCKET)
    body = b'{"eventName":"click","pad":"' + b"x" * 760 + b'"}'

    def put(i: int) -> None:
        s3.put_object(
            Bucket=BUCKET, Key=f"events/{i:06d}.json", Body=body, ChecksumAlgorithm="CRC32"
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(args.objects)))

    checked = crt_client._VALIDATE_CHECKSUM
    source = crt_client.CrtSource(
        Settings(raw_bucket=BUCKET, db=DatabaseSettings(), fetch_concurrency=32)
    )
    runs: dict[str, list[float]] = {"checked": [], "unchecked": []}
    try:
        refs = list(source.list_objects("events/"))
        for _ in range(1 + args.repeats):  # the first pair warms up and is dropped
            for mode in runs:
                crt_client._VALIDATE_CHECKSUM = checked if mode == "checked" else None
                started = time.process_time()
                fetched = list(source.fetch_many(refs))
                cpu_ms = 1000 * (time.process_time() - started) / len(refs)
                if any(f.body != body for f in fetched):
                    raise SystemExit("a GET came back without the object's body")
                runs[mode].append(cpu_ms)
    finally:
        crt_client._VALIDATE_CHECKSUM = checked
        source.close()
    runs = {mode: values[1:] for mode, values in runs.items()}
    paired = [c - u for c, u in zip(runs["checked"], runs["unchecked"], strict=True)]
    result = {
        "objects": args.objects,
        "repeats": args.repeats,
        "body_bytes": len(body),
        "cpu_ms_per_get": runs,
        "median_checked": statistics.median(runs["checked"]),
        "median_unchecked": statistics.median(runs["unchecked"]),
        "median_paired_difference": statistics.median(paired),
        "loadavg": os.getloadavg(),
    }
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"CRT client, {args.objects} GETs of {len(body)} B from moto, {args.repeats} pairs")
    print("| GETs | CPU ms/GET (median) |\n|---|---:|")
    print(f"| checksum checked (the default) | {result['median_checked']:.3f} |")
    print(f"| not checked | {result['median_unchecked']:.3f} |")
    print(f"median paired difference: {result['median_paired_difference']:+.3f} ms per GET")


if __name__ == "__main__":
    main()
