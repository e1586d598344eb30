"""Run the loader's command line while counting the PostgreSQL connections the process holds.

    python tests/support/count_connections.py OUT.json backfill --start ... --end ...

Every psycopg2 connection is made through a counting connection class: opened on connect,
released on close(). At exit the peak number held at once (and the total opened) is written to
OUT.json, with the process's peak RSS (VmHWM). This is the client's own count;
pg_stat_activity, seen from the server, can show one more for a moment while a closed
session's backend is still exiting.
"""

from __future__ import annotations

import atexit
import json
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

_lock = threading.Lock()
_state = {"open": 0, "peak": 0, "opened": 0}


class CountingConnection(psycopg2.extensions.connection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counted = True
        with _lock:
            _state["open"] += 1
            _state["opened"] += 1
            _state["peak"] = max(_state["peak"], _state["open"])

    def close(self) -> None:
        try:
            super().close()
        finally:
            with _lock:
                if self._counted:
                    self._counted = False
                    _state["open"] -= 1


def _memory() -> dict[str, int]:
    """Peak and current RSS of this process (VmHWM/VmRSS, KiB). Not ru_maxrss: after fork +
    exec that still counts the parent's RSS at fork time (the test runner's, here)."""
    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            out[name.lower() + "_kib"] = int(value.split()[0])
    return out


def main() -> None:
    out = Path(sys.argv[1])
    _connect = psycopg2.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("connection_factory", CountingConnection)
        return _connect(*args, **kwargs)

    psycopg2.connect = connect  # type: ignore[assignment]
    atexit.register(lambda: out.write_text(json.dumps({**_state, **_memory()}) + "\n"))
    sys.argv = ["clickstream-loader", *sys.argv[2:]]
    from loader.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
