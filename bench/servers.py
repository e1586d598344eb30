"""The benchmark's servers: s3rver (npm) for S3 and the embedded PostgreSQL for the warehouse.

Shared by `bench/run.py` and `bench/s3_client_cost.py`.

s3rver is installed under bench/.work/ on first use (`npm install --prefix bench/.work s3rver@3`;
the directory is gitignored) and started on 127.0.0.1 with an ephemeral port. node runs it with
`--openssl-legacy-provider`: its ListObjectsV2 continuation tokens use DES, and without the
legacy provider any listing past 1,000 keys fails with InternalError.

s3rver logs one line per response (`GET /bucket/key?... 200 ...`); `S3rver` counts them by
request kind, so a benchmark can read the server-side request count of each case whatever client
made the requests (retries and errors included).

`FilesystemStore` layout (s3rver 3.7, lib/stores/filesystem.js), which `write_objects` writes
directly (the benchmark verifies it against a real PUT before using it):

    <dir>/<bucket>/<key dirs>/<basename>._S3rver_object          the body
    <dir>/<bucket>/<key dirs>/<basename>._S3rver_object.md5      hex MD5 (the ETag)
    <dir>/<bucket>/<key dirs>/<basename>._S3rver_metadata.json   content-type etc.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
S3RVER_JS = WORK / "node_modules" / "s3rver" / "bin" / "s3rver.js"
S3RVER_LIB = WORK / "node_modules" / "s3rver" / "lib"
#: Swaps s3rver's O(N)-per-page listing for an indexed one, same results (see the file).
FAST_LISTING_JS = Path(__file__).resolve().parent / "s3rver_fastlist.js"

# One line per response: koa-logger's "  --> GET /path 200 3ms 7b" with its first 16 characters
# cut off by s3rver (so the method and the start of the path are gone): "info: <path tail>
# <status> <time> <size>". Our keys never contain "=", list requests always do.
_LOG_LINE = re.compile(r"info\S*: (\S*) (\d{3}) \d+(?:\.\d+)?m?s \S+\s*$")


def ensure_s3rver() -> bool:
    """Install s3rver@3 under bench/.work unless it is there; False when npm/node are missing."""
    if S3RVER_JS.exists():
        return True
    if not shutil.which("npm") or not shutil.which("node"):
        return False
    print("installing s3rver@3 under bench/.work ...", file=sys.stderr)
    WORK.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["npm", "install", "--prefix", str(WORK), "--no-audit", "--no-fund", "s3rver@3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    return S3RVER_JS.exists()


@dataclass
class S3rver:
    """A running s3rver: its endpoint, data directory, process and server-side request counts."""

    endpoint: str
    data_dir: Path
    process: subprocess.Popen[str]
    counts: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _count(self, line: str) -> None:
        found = _LOG_LINE.search(line)
        if not found:
            return
        tail, status = found.group(1), int(found.group(2))
        kind = "list" if "=" in tail else "get"
        with self._lock:
            self.counts[kind] += 1
            self.statuses[status] += 1

    def snapshot(self) -> dict[str, int]:
        """Responses served so far: `list` (any request with a query string), `get` (the rest:
        object GETs, and the PUTs made before any case runs), and `errors` (status >= 300)."""
        with self._lock:
            out = dict(self.counts)
            out["errors"] = sum(n for s, n in self.statuses.items() if s >= 300)
            return out

    def settle(self, quiet_s: float = 0.3, timeout_s: float = 10.0) -> dict[str, int]:
        """The counts once the log has stopped moving (s3rver logs after it responds)."""
        deadline = time.monotonic() + timeout_s
        last = self.snapshot()
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            now = self.snapshot()
            if now == last:
                return now
            last = now
        return last

    def cpu_seconds(self) -> float:
        """user+sys CPU s3rver's process has used so far (from /proc)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")


@contextmanager
def s3rver_server(
    server_cpu: int | None = None, data_dir: Path | None = None, *, fast_listing: bool = False
) -> Iterator[S3rver]:
    """Start s3rver on 127.0.0.1 (ephemeral port); optionally pinned to one CPU, optionally with
    the indexed listing of `s3rver_fastlist.js` (same results, O(page) instead of O(N) a page)."""
    WORK.mkdir(parents=True, exist_ok=True)
    owns_dir = data_dir is None
    data = data_dir or Path(tempfile.mkdtemp(prefix="s3rver-", dir=WORK))
    preload = ["--require", str(FAST_LISTING_JS)] if fast_listing else []
    proc = subprocess.Popen(
        [
            "node",
            "--openssl-legacy-provider",
            *preload,
            str(S3RVER_JS),
            "-d",
            str(data),
            "-a",
            "127.0.0.1",
            "-p",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0", "S3RVER_LIB": str(S3RVER_LIB)},
    )
    try:
        if server_cpu is not None:
            os.sched_setaffinity(proc.pid, {server_cpu})
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        port = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            found = re.search(r"listening on [\d.]+:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        if port is None:
            raise RuntimeError("s3rver did not start")
        server = S3rver(f"http://127.0.0.1:{port}", data, proc)

        def drain() -> None:
            # Keep reading its output so it never blocks on a full pipe; count the requests.
            assert proc.stdout is not None
            for line in proc.stdout:
                server._count(line)

        threading.Thread(target=drain, name="s3rver-log", daemon=True).start()
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if owns_dir:
            shutil.rmtree(data, ignore_errors=True)


@contextmanager
def s3rver(server_cpu: int | None = None) -> Iterator[str]:
    """s3rver's endpoint URL (the interface `bench/s3_client_cost.py` uses)."""
    with s3rver_server(server_cpu) as server:
        yield server.endpoint


# --------------------------------------------------------------------------------------------
# Writing objects straight into s3rver's store


_SUFFIX = "._S3rver_"


def store_paths(data_dir: Path, bucket: str, key: str) -> tuple[Path, Path, Path]:
    """(object, md5, metadata) files of `key`, as s3rver's FilesystemStore names them."""
    *dirs, base = key.split("/")
    folder = data_dir.joinpath(bucket, *dirs)
    return (
        folder / f"{base}{_SUFFIX}object",
        folder / f"{base}{_SUFFIX}object.md5",
        folder / f"{base}{_SUFFIX}metadata.json",
    )


def metadata_document(content_type: str, content_encoding: str | None = None) -> str:
    """The metadata file s3rver writes for a PUT: `JSON.stringify(json, null, 2)` of the allowed
    headers in S3Object.ALLOWED_METADATA's order (content-encoding before content-type)."""
    meta = {"content-encoding": content_encoding} if content_encoding else {}
    meta["content-type"] = content_type
    return json.dumps(meta, indent=2)


def write_objects(
    data_dir: Path,
    bucket: str,
    objects: Iterable[tuple[str, bytes, str | None]],
    *,
    content_type: str = "binary/octet-stream",
    threads: int = 8,
) -> int:
    """Write (key, body, content_encoding) objects in s3rver's on-disk layout; returns the count.

    Orders of magnitude faster than PUTs for 100k small objects; s3rver serves them exactly as
    PUT ones (verified by `bench/run.py` against a real PUT before every run).
    """
    from concurrent.futures import ThreadPoolExecutor

    items = list(objects)
    for folder in {store_paths(data_dir, bucket, key)[0].parent for key, _, _ in items}:
        folder.mkdir(parents=True, exist_ok=True)

    def write(item: tuple[str, bytes, str | None]) -> None:
        key, body, encoding = item
        obj, md5, meta = store_paths(data_dir, bucket, key)
        obj.write_bytes(body)
        md5.write_text(hashlib.md5(body).hexdigest())  # the ETag, not security
        meta.write_text(metadata_document(content_type, encoding))

    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(write, items, chunksize=256):
            pass
    return len(items)
