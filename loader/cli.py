"""`clickstream-loader`: the loader from a command line, for backfills, reprocessing and checks.

Every subcommand runs the same pipeline as the Lambda, prints a human table (or `--json`, the
same summary the Lambda returns), and sends its logs to stderr so stdout stays parseable.
Progress shows on a terminal and becomes one plain line per hour when output is piped.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from loader.app import open_loader
from loader.config import ConfigError
from loader.identity import ErasureKeyError
from loader.maintenance import (
    MaintainOptions,
    MaintenanceBusy,
    MaintenanceError,
    MaintenanceRefused,
    maintain_warehouse,
)
from loader.observability import set_log_stream
from loader.operations import backfill as do_backfill
from loader.operations import check as do_check
from loader.operations import erase as do_erase
from loader.operations import erasures as do_erasures
from loader.operations import parse_since
from loader.operations import reprocess as do_reprocess
from loader.operations import rollup as do_rollup
from loader.operations import status as do_status
from loader.pipeline.erase import ErasureInputError, ErasureRequest
from loader.pipeline.runs import run_trigger
from loader.report import Report
from loader.schema import DAY_PARTITIONED, RunState, TriggerKind
from loader.window import Trigger, TriggerError, hours_between, parse_hour

app = typer.Typer(
    help="Load raw clickstream events from S3 into the PostgreSQL warehouse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="List, fetch and transform; write nothing (ledger too).")
]


def _setup() -> None:
    set_log_stream("stderr")
    # Piped output (a file, grep, the README's transcripts) gets each table's natural width:
    # rich's 80-column default for non-terminals cut hour labels to "2026-11-2…".
    for console in (out, err):
        if not console.is_terminal:
            console.width = max(console.width, 200)


def _emit(data: Any, as_json: bool, render: Any) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, default=str, ensure_ascii=False) + "\n")
    else:
        render(data)


def _hour(value: str) -> datetime:
    try:
        return parse_hour(value)
    except TriggerError as exc:
        raise typer.BadParameter(str(exc)) from None


def _report_table(reports: list[dict[str, Any]]) -> None:
    table = Table(
        "hour",
        "state",
        "listed",
        "read",
        "inserted",
        "dupes",
        "malformed",
        "invalid",
        "quarantined",
        "retries",
        "seconds",
    )
    for r in reports:
        table.add_row(
            r["hour"],
            r["state"],
            str(r["objects_listed"]),
            str(r["events_read"]),
            str(r["would_insert"] if r.get("dry_run") else r["inserted"]),
            str(r["duplicates"]),
            str(r["malformed"]["count"]),
            str(r["invalid"]["count"]),
            str(r["quarantined"]["count"]),
            str(r["retries"]),
            f"{r['seconds']:.1f}",
        )
    out.print(table)
    for r in reports:
        for kind in ("malformed", "invalid", "quarantined", "conflicting"):
            for key in r[kind]["keys"]:
                out.print(f"  {kind}: {key}")
        if r.get("missing_hours"):
            out.print(f"  hours never loaded (run backfill): {', '.join(r['missing_hours'])}")
        if r["state"] == "retired":
            out.print(f"  {r['hour']} is retired (past retention): nothing loaded")
        retired = [h["hour"] for h in r.get("lookback", []) if h["state"] == "retired"]
        if retired:
            out.print(f"  lookback skipped retired hours: {', '.join(retired)}")


@app.command()
def run(
    hour: Annotated[str, typer.Option(help="Hour to load: YYYY-MM-DDTHH (UTC).")],
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
) -> None:
    """Load one hour, in full, inserting only what is missing (the Lambda's code path)."""
    _setup()
    with open_loader() as loader:
        report = run_trigger(loader, Trigger(_hour(hour), TriggerKind.MANUAL), dry_run=dry_run)
        if report.state == RunState.RETIRED and loader.retention is not None:
            err.print(loader.retention.describe(datetime.now(UTC)), highlight=False)
    _emit(report.to_dict(), as_json, lambda d: _report_table([d]))
    if report.state == RunState.ALREADY_RUNNING:
        raise typer.Exit(3)


@app.command()
def backfill(
    start: Annotated[str, typer.Option(help="First hour, YYYY-MM-DDTHH.")],
    end: Annotated[str, typer.Option(help="Last hour (included), YYYY-MM-DDTHH.")],
    force: Annotated[bool, typer.Option(help="Reload hours the ledger marks complete.")] = False,
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
) -> None:
    """Load every hour in a range, in order; resumable: complete hours are skipped."""
    _setup()
    first, last = _hour(start), _hour(end)
    if last < first:
        raise typer.BadParameter("--end is before --start")
    total = sum(1 for _ in hours_between(first, last))
    with open_loader() as loader:
        if err.is_terminal and not as_json:
            with Progress(console=err, transient=True) as bar:
                task = bar.add_task("backfill", total=total)

                def tick(label: str, report: Report | None) -> None:
                    bar.update(task, advance=1, description=f"backfill {label}")

                result = do_backfill(
                    loader, first, last, force=force, dry_run=dry_run, progress=tick
                )
        else:

            def line(label: str, report: Report | None) -> None:
                state = report.state if report else "skipped (complete)"
                inserted = report.inserted if report else 0
                err.print(f"{label} {state} inserted={inserted}", highlight=False)

            result = do_backfill(loader, first, last, force=force, dry_run=dry_run, progress=line)
    data = result.to_dict()

    def render(d: dict[str, Any]) -> None:
        _report_table(d["hours"])
        if d["skipped_complete"]:
            out.print(f"skipped {len(d['skipped_complete'])} complete hours (use --force)")
        if d["retired"]:
            out.print(f"{len(d['retired'])} hours retired (past retention): not loaded")

    _emit(data, as_json, render)


@app.command()
def reprocess(
    hour: Annotated[str | None, typer.Option(help="Only this hour's quarantine.")] = None,
    key: Annotated[str | None, typer.Option(help="Only this object key.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-read quarantined objects (malformed, invalid, rejected) and load what now parses."""
    _setup()
    with open_loader() as loader:
        reports = do_reprocess(loader, _hour(hour) if hour else None, key)
    data = {"hours": [r.to_dict() for r in reports]}
    _emit(
        data,
        as_json,
        lambda d: _report_table(d["hours"]) if d["hours"] else out.print("nothing quarantined"),
    )


@app.command()
def status(
    since: Annotated[
        str | None, typer.Option(help="How far back: 48h, 7d, 90m (default 48h).")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="First hour, YYYY-MM-DDTHH (instead of --since).")
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(help="Last hour (included) with --start; default: the last complete hour."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """One line per hour: what the ledger says was loaded, skipped and quarantined."""
    _setup()
    if since is not None and (start is not None or end is not None):
        raise typer.BadParameter("give --since, or --start (and --end), not both")
    if end is not None and start is None:
        raise typer.BadParameter("--end needs --start")
    first = _hour(start) if start is not None else None
    last = _hour(end) if end is not None else None
    if first is not None and last is not None and last < first:
        raise typer.BadParameter("--end is before --start")
    try:
        window = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with open_loader() as loader:
        data = do_status(loader, window, start=first, end=last)
    _emit(data, as_json, _status_table)


def _status_table(d: dict[str, Any]) -> None:
    table = Table(
        "hour",
        "state",
        "listed",
        "inserted",
        "by events",
        "dupes",
        "skipped",
        "quarantined",
        "erased",
        "lag s",
        "error",
    )
    for h in d["hours"]:
        table.add_row(
            h["hour"],
            h["state"],
            str(h.get("objects_listed", "")),
            str(h.get("inserted", "")),
            str(h.get("inserted_by_events", "")),
            str(h.get("duplicates", "")),
            str(h.get("skipped", "")),
            str(h["quarantined"]),
            str(h.get("erased") or ""),
            str(h.get("lag_seconds") or ""),
            (h.get("error") or "")[:60],
        )
    out.print(table)


_CHECK_COUNTS = ("objects", "loaded", "quarantined", "unloaded")


@app.command()
def check(
    hour: Annotated[str | None, typer.Option(help="Hour to reconcile.")] = None,
    start: Annotated[str | None, typer.Option(help="First hour of a range.")] = None,
    end: Annotated[str | None, typer.Option(help="Last hour of a range.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Reconcile S3 against the warehouse; exit 1 if any object is neither loaded nor
    quarantined (hours past retention are `retired`, never unloaded)."""
    _setup()
    if hour:
        first = last = _hour(hour)
    elif start and end:
        first, last = _hour(start), _hour(end)
    else:
        raise typer.BadParameter("give --hour, or --start and --end")
    with open_loader() as loader:
        data = do_check(loader, first, last)

    def render(d: dict[str, Any]) -> None:
        table = Table("hour", "state", "objects", "loaded", "quarantined", "unloaded")
        for h in d["hours"]:
            table.add_row(
                h["hour"],
                h["state"],
                *("" if h[k] is None else str(h[k]) for k in _CHECK_COUNTS),
            )
        out.print(table)
        for key in d["unloaded_keys"]:
            out.print(f"  unloaded: {key}")

    _emit(data, as_json, render)
    if data["unloaded_keys"]:
        raise typer.Exit(1)


@app.command()
def maintain(
    keep_days: Annotated[
        int,
        typer.Option(
            "--keep-days",
            min=1,
            help="Days of events kept: partitions of UTC days before today - D are dropped, "
            "and the loader treats their hours as retired.",
        ),
    ],
    ahead_days: Annotated[
        int,
        typer.Option(
            "--ahead-days", min=0, max=366, help="Days of partitions made ahead of today."
        ),
    ] = 7,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be made and dropped; change nothing.")
    ] = False,
    allow_shorter: Annotated[
        bool,
        typer.Option(
            "--allow-shorter",
            help="Accept a --keep-days below the recorded one (drops those days at once).",
        ),
    ] = False,
    lock_timeout: Annotated[
        float,
        typer.Option(help="Seconds each statement waits for its lock before a retry.", min=0.1),
    ] = 5.0,
    attempts: Annotated[
        int, typer.Option(help="Attempts per step (lock timeouts are retried).", min=1)
    ] = 5,
    as_json: JsonFlag = False,
) -> None:
    """The DBA's partition job, run daily with the tables' OWNER's login (DW_PG_*): record the
    retention, make the partitions from today - keep-days to today + ahead-days, drop the older
    ones (DETACH ... CONCURRENTLY, then DROP; loads go on). Idempotent."""
    _setup()
    options = MaintainOptions(
        keep_days,
        ahead_days,
        dry_run=dry_run,
        lock_timeout_s=lock_timeout,
        attempts=attempts,
        allow_shorter=allow_shorter,
    )
    try:
        result = maintain_warehouse(options)
    except MaintenanceRefused as exc:
        err.print(f"error: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except MaintenanceBusy as exc:
        err.print(f"{exc}", highlight=False)
        raise typer.Exit(3) from None
    except MaintenanceError as exc:
        err.print(f"error: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    _emit(result.to_dict(), as_json, _maintain_table)


def _maintain_table(d: dict[str, Any]) -> None:
    """Per table: partitions made and dropped (first … last), then the totals."""
    dry = d["dry_run"]
    table = Table("table", "to make" if dry else "made", "to drop" if dry else "dropped")
    for parent in DAY_PARTITIONED:
        made = sorted(n for n in d["made"] if n.startswith(f"{parent}_"))
        dropped = sorted(n for n in d["dropped"] if n.startswith(f"{parent}_"))
        table.add_row(parent, _span(parent, made), _span(parent, dropped))
    out.print(table)
    out.print(
        f"{'would keep' if dry else 'keeps'} {d['keep_days']} days (hours before "
        f"{d['horizon'][:13]} retired), {d['ahead_days']} days ahead; "
        f"{'rows to delete' if dry else 'rows deleted'}: "
        + (", ".join(f"{t} {n}" for t, n in d["rows_deleted"].items()) or "none")
        + (f"; detaches finished: {', '.join(d['finalized'])}" if d["finalized"] else "")
        + f"; retries {d['retries']}; {d['seconds']:.1f} s",
        highlight=False,
    )


def _span(parent: str, names: list[str]) -> str:
    """`3: p20261101 … p20261103`, or `-`."""
    if not names:
        return "-"
    short = [n[len(parent) + 1 :] for n in names]
    return f"{len(names)}: {short[0]}" + (f" … {short[-1]}" if len(short) > 1 else "")


@app.command()
def erase(
    user_id: Annotated[
        list[str] | None,
        typer.Option(
            "--user-id",
            help="A user id to erase: its events and the anonymous "
            "events of every client id seen with it (repeatable).",
        ),
    ] = None,
    client_id: Annotated[
        list[str] | None,
        typer.Option(
            "--client-id", help="A client id whose anonymous events to erase (repeatable)."
        ),
    ] = None,
    request_id: Annotated[
        str | None,
        typer.Option(help="The caller's ticket; rerun with it to continue an open request."),
    ] = None,
    suppress_future: Annotated[
        bool,
        typer.Option(help="Refuse the subject's later events too (consent withdrawn)."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be deleted; change nothing.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Erase a person from the warehouse, the quarantine and the raw bucket, and keep them out
    of every later load (docs/privacy.md). Exit 1 while the request stays open."""
    _setup()
    request = ErasureRequest(
        tuple(user_id or ()), tuple(client_id or ()), request_id, suppress_future, dry_run
    )
    try:
        request.validated()  # bad input fails before any connection
        with open_loader() as loader:
            data = do_erase(loader, request)
    except (ErasureInputError, ErasureKeyError) as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from None
    _emit(data, as_json, _render_erasure)
    if not dry_run and data["state"] != "complete":
        raise typer.Exit(1)


def _render_erasure(d: dict[str, Any]) -> None:
    if d.get("dry_run"):
        table = Table("would delete", "count")
        for name, value in d["would_delete"].items():
            table.add_row(name, str(len(value) if isinstance(value, list) else value))
        out.print(table)
        return
    _erasures_table([d])
    for name, values in d["stores"].items():
        counts = ", ".join(f"{k} {v}" for k, v in values.items() if k != "finished_at")
        out.print(f"  {name}: {counts} (finished {values.get('finished_at')})")
    if d["open_reason"]:
        out.print(f"  open: {d['open_reason']}")


def _erasures_table(requests: list[dict[str, Any]]) -> None:
    table = Table("request", "state", "requested", "due", "events", "objects", "open because")
    for r in requests:
        events = r["stores"].get("clickstream_events", {}).get("deleted", 0)
        objects = r["stores"].get("bucket", {}).get("objects_deleted", 0)
        state = "overdue" if r["overdue"] else r["state"]
        table.add_row(
            r["request_id"],
            state,
            r["requested_at"][:19],
            r["due_at"][:10],
            str(events),
            str(objects),
            (r["open_reason"] or "")[:80],
        )
    out.print(table)


@app.command()
def erasures(
    open_only: Annotated[bool, typer.Option("--open", help="Only the open requests.")] = False,
    overdue: Annotated[
        bool, typer.Option("--overdue", help="Only the open requests past their due date.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """The erasure requests: when, due when, what was deleted, open or complete."""
    _setup()
    with open_loader() as loader:
        data = do_erasures(loader, open_only=open_only, overdue=overdue)
    _emit(data, as_json, lambda d: _erasures_table(d["requests"]))


@app.command()
def rollup(
    start: Annotated[str, typer.Option(help="First hour, YYYY-MM-DDTHH (its whole UTC day).")],
    end: Annotated[
        str, typer.Option(help="Last hour (included), YYYY-MM-DDTHH (its whole UTC day).")
    ],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Compare the rollups with the rows; change nothing."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Rebuild the dashboard's rollups of every UTC day in a range from the raw rows (after
    rows were deleted or changed by hand). With --dry-run, exit 1 if any day is out of step."""
    _setup()
    first, last = _hour(start), _hour(end)
    if last < first:
        raise typer.BadParameter("--end is before --start")

    def line(day: dict[str, Any]) -> None:
        err.print(f"{day['day']} {day['state']} events={day['events']:+d}", highlight=False)

    with open_loader() as loader:
        data = do_rollup(loader, first, last, dry_run=dry_run, progress=line)

    def render(d: dict[str, Any]) -> None:
        table = Table("day", "state", "events", "event rows", "product rows", "client-days")
        for day in d["days"]:
            table.add_row(
                day["day"],
                day["state"],
                f"{day['events']:+d}",
                str(day["event_rows"]),
                str(day["product_rows"]),
                str(day["client_days"]),
            )
        out.print(table)

    _emit(data, as_json, render)
    if dry_run and not data["in_step"]:
        raise typer.Exit(1)


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="Objects to generate for the demo hour.")] = 3000,
    serve: Annotated[
        bool, typer.Option(help="Keep PostgreSQL and S3 running for the operations section.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Embedded PostgreSQL + local S3: migrate, generate an hour, load it as EventBridge would,
    show the rows, and show that a rerun inserts nothing."""
    try:
        # Development tooling, beside the package in a checkout (tools/demo/), never shipped:
        # imported here, when asked for, so that nothing else in loader/ depends on it.
        from tools.demo.run import run_demo
    except ModuleNotFoundError as exc:
        if exc.name not in ("tools", "tools.demo", "tools.demo.run"):
            raise
        err.print(
            "error: the demo is development tooling that lives in the source checkout "
            "(tools/demo/), not in the installed package: run `make demo` (or "
            "`python -m tools.demo`) from a clone of the repository",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2) from None

    _setup()
    run_demo(events=events, serve=serve, as_json=as_json, console=out)


def main(argv: list[str] | None = None) -> None:
    """The console script; `argv` defaults to the process's arguments."""
    try:
        app(args=argv)
    except (ConfigError, TriggerError, ErasureInputError, ErasureKeyError) as exc:
        err.print(f"error: {exc}", highlight=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
