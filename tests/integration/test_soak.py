"""Soak: a day of events backfilled by three concurrent processes over overlapping ranges.

24 hours, >= 100k events in ~13k objects of mixed shapes (single events, NDJSON batches, gzip
NDJSON, ~1% malformed events), loaded by three `python -m loader backfill` processes at once
over hours 0-15, 8-23 and 0-23 - every hour is wanted by two or three of them. Afterwards the
warehouse is reconciled against the generated input (zero lost, zero duplicated), the ledger
must show every hour complete, and the resources each process used are checked: peak RSS
(VmHWM, reported by each process at exit) and PostgreSQL connections (held, counted inside each
process by `support/count_connections.py`; and as the server sees them, polling
pg_stat_activity).

Long (a few minutes against moto): opt-in with `pytest --run-slow -m slow` or `make soak`.
Figures are printed at the end, and written to $SOAK_FIGURES_JSON if set.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support.reconcile import Planted, fill, hours, ledger, mixed_hour, reconcile

from loader.window import hour_label

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 11, 23, 0, tzinfo=UTC)
HOURS = 24
OBJECTS_PER_HOUR = 560
RANGES = {"a": (0, 15), "b": (8, 23), "c": (0, 23)}
#: Limits: the engine is pool_size=1 + max_overflow=1; the loader streams, so RSS stays flat.
MAX_SESSIONS_PER_PROCESS = 2
MAX_RSS_MB = 400
BOUND_S = 900


class SessionPoller:
    """Polls pg_stat_activity every 50 ms: the most sessions each process held at once."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.peak: Counter[str] = Counter()
        self.peak_total = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="session-poller", daemon=True)

    def __enter__(self) -> SessionPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.wait(0.05):
                rows = conn.execute(
                    sa.text(
                        "SELECT application_name, count(*) FROM pg_stat_activity "
                        "WHERE application_name LIKE 'clickstream-loader-soak-%' "
                        "GROUP BY application_name"
                    )
                ).all()
                conn.rollback()
                self.samples += 1
                for name, count in rows:
                    self.peak[name] = max(self.peak[name], int(count))
                self.peak_total = max(self.peak_total, sum(int(c) for _, c in rows))


def _wait_all(procs: dict[str, subprocess.Popen[bytes]], deadline: float) -> dict[str, Any]:
    """Reap every child with wait4: exit status and its own CPU time. (Not its ru_maxrss: after
    fork + exec that still includes this process's RSS at fork time; the child reports its own
    VmHWM instead.)"""
    results: dict[str, Any] = {}
    while len(results) < len(procs):
        if time.monotonic() > deadline:
            for proc in procs.values():
                if proc.returncode is None:
                    proc.kill()
            raise AssertionError(f"soak exceeded {BOUND_S}s: {sorted(set(procs) - set(results))}")
        for name, proc in procs.items():
            if name in results:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                continue
            proc.returncode = os.waitstatus_to_exitcode(status)
            results[name] = {
                "exit": proc.returncode,
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                "seconds": round(time.monotonic() - proc.started, 1),  # type: ignore[attr-defined]
            }
        time.sleep(0.1)
    return results


@pytest.mark.slow
def test_a_day_backfilled_by_three_overlapping_processes_loses_and_duplicates_nothing(
    loader_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    planted: list[Planted] = []
    for index, hour in enumerate(hours(START, HOURS)):
        planted.extend(mixed_hour(hour, OBJECTS_PER_HOUR, seed=1000 + index))
    fill(s3, bucket, planted)
    events = sum(len(p.event_ids) for p in planted)
    malformed_lines = sum(p.rejected for p in planted)
    assert events >= 100_000
    generated_s = time.monotonic() - began

    logs = tmp_path
    procs: dict[str, subprocess.Popen[bytes]] = {}
    started = time.monotonic()
    with SessionPoller(dw_engine) as poller:
        for name, (first, last) in RANGES.items():
            env = {
                **os.environ,
                "DW_PG_APPLICATION_NAME": f"clickstream-loader-soak-{name}",
                "LOCK_WAIT_SECONDS": "2",
            }
            args = [
                sys.executable,
                str(ROOT / "tests" / "support" / "count_connections.py"),
                str(logs / f"{name}.connections.json"),
                "backfill",
                "--start",
                hour_label(START.replace(hour=first)),
                "--end",
                hour_label(START.replace(hour=last)),
                "--json",
            ]
            with (logs / f"{name}.out").open("wb") as out, (logs / f"{name}.err").open("wb") as err:
                proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=err)
            proc.started = time.monotonic()  # type: ignore[attr-defined]
            procs[name] = proc
        results = _wait_all(procs, started + BOUND_S)
    load_s = time.monotonic() - started

    for name, result in results.items():
        assert result["exit"] == 0, (logs / f"{name}.err").read_text()[-3000:]
        output = json.loads((logs / f"{name}.out").read_text())
        result["hours_loaded"] = sum(1 for h in output["hours"] if h["state"] == "complete")
        result["hours_already_running"] = sum(
            1 for h in output["hours"] if h["state"] == "already_running"
        )
        result["hours_skipped_complete"] = len(output["skipped_complete"])
        result["inserted"] = output["inserted"]
        result["peak_sessions_seen_by_server"] = poller.peak[f"clickstream-loader-soak-{name}"]
        held = json.loads((logs / f"{name}.connections.json").read_text())
        result["peak_connections_held"] = held["peak"]
        result["connections_opened"] = held["opened"]
        result["peak_rss_mb"] = round(held["vmhwm_kib"] / 1024, 1)

    # Reconcile: every valid event exactly once in both tables, the malformed in the quarantine.
    outcome = reconcile(dw_engine, planted)
    # The ledger: every hour complete, no run left `running` or `failed`.
    runs = ledger(dw_engine)
    by_hour: dict[datetime, set[str]] = {}
    for run in runs:
        by_hour.setdefault(run["hour"], set()).add(run["state"])
    figures = {
        "hours": HOURS,
        "objects": len(planted),
        "events": events,
        "objects_with_malformed_lines": malformed_lines,
        "lost": outcome.lost,
        "duplicated": outcome.duplicated,
        "inserted_total": sum(r["inserted"] for r in results.values()),
        "ledger_runs": len(runs),
        "ledger_states": dict(Counter(run["state"] for run in runs)),
        "peak_sessions_all_processes": poller.peak_total,
        "session_samples": poller.samples,
        "processes": results,
        "generate_s": round(generated_s, 1),
        "load_s": round(load_s, 1),
        "events_per_s": round(events / load_s),
        "pytest_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line("soak: " + json.dumps(figures))
    target = os.environ.get("SOAK_FIGURES_JSON")
    if target:
        Path(target).write_text(json.dumps(figures, indent=2) + "\n")

    assert outcome.ok, outcome
    assert figures["inserted_total"] == events  # each event inserted by exactly one process
    assert sorted(by_hour) == hours(START, HOURS)
    for hour, states in by_hour.items():
        assert states == {"complete"}, (hour, states)
    for name, result in results.items():
        assert 1 <= result["peak_connections_held"] <= MAX_SESSIONS_PER_PROCESS, (name, result)
        # The server may list one more for a moment: a session the process closed whose backend
        # has not exited yet when the next one starts.
        assert result["peak_sessions_seen_by_server"] <= MAX_SESSIONS_PER_PROCESS + 1, result
        assert result["peak_rss_mb"] <= MAX_RSS_MB, (name, result)
