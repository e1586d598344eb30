"""Client CPU per GET of the CRT client with and without checking S3's stored checksum.

    .venv/bin/python bench/crt_checksum.py [--server moto|s3rver] [--objects 1000] [--repeats 12]

Fetches ~800 B objects through two `CrtSource`s in turn, the default (asks for the stored
checksum and checks the body) and one built with AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
(asks for none), `--repeats` interleaved pairs after a warm-up pair. CPU is
`time.process_time()` of this process only (every thread, the CRT's event loops included; the
servers excluded). Compare the two columns of one run, not absolutes.

- `--server moto` (default): objects stored with a CRC32 in a moto server, behind the tests'
  fault proxy (both in processes of their own; the proxy hands moto the CRT's
  `x-amz-checksum-mode: enabled` as the `ENABLED` moto reads), so every checked GET is
  checked. moto is slow: the CPU per GET is higher than on s3rver.
- `--server s3rver`: the main benchmark's server, which returns no checksum: what asking costs
  when nothing comes back to check, and what the main benchmark's numbers carry. s3rver runs on
  one CPU and this process on the other, as in `bench/s3_client_cost.py`.

Writes bench/results/crt_checksum_<server>.json and prints a markdown table.
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
RESULTS = ROOT / "bench" / "results"
BUCKET = "crt-checksum-bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

_PROXY = """
import sys, time
sys.path.insert(0, sys.argv[2])
from support.http_fault_proxy import FaultProxy
with FaultProxy(sys.argv[1], max_connections=128) as proxy:  # two sources, 32 each
    print(proxy.url, flush=True)
    time.sleep(24 * 3600)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _moto_behind_proxy() -> tuple[str, str]:
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
    parser.add_argument("--server", choices=("moto", "s3rver"), default="moto")
    args = parser.parse_args()
    if args.server == "s3rver":
        from servers import ensure_s3rver, s3rver

        if not ensure_s3rver():
            raise SystemExit("s3rver could not be installed (needs node and npm)")
        cores = sorted(os.sched_getaffinity(0))
        with s3rver(cores[-1] if len(cores) > 1 else None) as endpoint:
            if len(cores) > 1:
                os.sched_setaffinity(0, {cores[0]})  # the client: one core, like a Lambda
            measure(args, endpoint, endpoint, "S3RVER", stored_checksum=False)
    else:
        moto_url, proxy_url = _moto_behind_proxy()
        measure(args, moto_url, proxy_url, "bench", stored_checksum=True)


def measure(
    args: argparse.Namespace, upload_url: str, get_url: str, secret: str, *, stored_checksum: bool
) -> None:
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": secret,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": get_url,
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_RESPONSE_CHECKSUM_VALIDATION", None)
    import boto3

    import loader.extract.crt_client as crt_client
    from loader.config import DatabaseSettings, Settings

    s3 = boto3.client("s3", endpoint_url=upload_url)
    s3.create_bucket(Bucket=BUCKET)
    body = b'{"eventName":"click","pad":"' + b"x" * 760 + b'"}'

    def put(i: int) -> None:
        checksum = {"ChecksumAlgorithm": "CRC32"} if stored_checksum else {}
        s3.put_object(Bucket=BUCKET, Key=f"events/{i:06d}.json", Body=body, **checksum)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(args.objects)))

    settings = Settings(raw_bucket=BUCKET, db=DatabaseSettings(), fetch_concurrency=8)
    sources = {"checked": crt_client.CrtSource(settings)}
    os.environ["AWS_RESPONSE_CHECKSUM_VALIDATION"] = "when_required"  # the off switch
    sources["unchecked"] = crt_client.CrtSource(settings)
    del os.environ["AWS_RESPONSE_CHECKSUM_VALIDATION"]
    runs: dict[str, list[float]] = {mode: [] for mode in sources}
    try:
        refs = list(sources["checked"].list_objects("events/"))
        for _ in range(1 + args.repeats):  # the first pair warms up and is dropped
            for mode, source in sources.items():
                started = time.process_time()
                fetched = list(source.fetch_many(refs))
                cpu_ms = 1000 * (time.process_time() - started) / len(refs)
                if any(f.body != body for f in fetched):
                    raise SystemExit("a GET came back without the object's body")
                runs[mode].append(cpu_ms)
    finally:
        for source in sources.values():
            source.close()
    runs = {mode: values[1:] for mode, values in runs.items()}
    paired = [c - u for c, u in zip(runs["checked"], runs["unchecked"], strict=True)]
    result = {
        "server": args.server,
        "objects": args.objects,
        "repeats": args.repeats,
        "body_bytes": len(body),
        "cpu_ms_per_get": runs,
        "median_checked": statistics.median(runs["checked"]),
        "median_unchecked": statistics.median(runs["unchecked"]),
        "median_paired_difference": statistics.median(paired),
        "loadavg": os.getloadavg(),
    }
    (RESULTS / f"crt_checksum_{args.server}.json").write_text(json.dumps(result, indent=2))
    print(
        f"CRT client, {args.objects} GETs of {len(body)} B from {args.server}, "
        f"{args.repeats} pairs, load average {result['loadavg'][0]:.2f}"
    )
    print("| GETs | CPU ms/GET (median) |\n|---|---:|")
    print(f"| checksum checked (the default) | {result['median_checked']:.3f} |")
    print(f"| not checked | {result['median_unchecked']:.3f} |")
    print(f"median paired difference: {result['median_paired_difference']:+.3f} ms per GET")


if __name__ == "__main__":
    main()
