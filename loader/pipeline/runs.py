"""The runs made of hour loads: what a trigger asks for, beyond loading one hour.

- `run_trigger`: the trigger's hour in full; a scheduled run then looks back over the previous
  LOOKBACK_HOURS hours for objects that landed late (`look_back`). Of an hour notifications
  loaded into, the scheduled run is the sweep of what they missed.
- `run_hours`: a day, hour by hour, each its own run in the ledger.
- `finalize_fanned_out_hour`: the fan-out's last step, once every shard of an hour is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loader import __version__
from loader.errors import LoaderError, TransientError
from loader.load.db import error_summary
from loader.load.ledger import (
    event_loaded_hours,
    finalize_run_id,
    finalize_sharded_hour,
    hour_records,
)
from loader.load.locks import hour_lock
from loader.observability import log
from loader.pipeline.hour import HourLoader
from loader.pipeline.job import HourJob, RemainingMs
from loader.report import COUNTERS, KeyList, Report
from loader.schema import RunState, TriggerKind
from loader.window import HOUR, Trigger, hour_label, hour_prefix


def lookback_hours(hour: datetime, count: int) -> list[datetime]:
    return [hour - HOUR * i for i in range(1, count + 1)]


class HourNotFinalized(TransientError):
    """A fanned-out hour cannot be recorded complete (yet): a shard has no complete run, or a
    run of the hour still holds it. Step Functions retries FinalizeHour on this."""


def run_trigger(
    loader: HourLoader,
    trigger: Trigger,
    remaining_ms: RemainingMs | None = None,
    *,
    dry_run: bool = False,
) -> Report:
    """What the Lambda and `run` do: load the trigger's hour in full; scheduled runs also
    re-check the previous LOOKBACK_HOURS hours for late objects and report hours never loaded.

    A shard never looks back: that would repeat the lookback once per shard. The fan-out's
    lookback is done once per hour, by `finalize_fanned_out_hour`.

    When notifications have loaded into the hour (event runs, loader/pipeline/notified.py),
    the scheduled run is its reconciliation sweep: it lists the whole hour but fetches only the
    objects with no completion record, and its `complete` is what proves the hour complete."""
    job = HourJob(trigger.hour, trigger.kind, trigger.shard, dry_run=dry_run)
    if trigger.kind == TriggerKind.SCHEDULE and trigger.shard is None:
        job.skip_loaded_keys = _notified(loader, trigger.hour, remaining_ms)
    report = loader.load(job, remaining_ms)
    if trigger.kind != TriggerKind.SCHEDULE or trigger.shard is not None or dry_run:
        return report
    if report.state not in (RunState.COMPLETE, RunState.ALREADY_RUNNING):
        return report
    look_back(loader, trigger.hour, report, remaining_ms)
    return report


def finalize_fanned_out_hour(
    loader: HourLoader,
    hour: datetime,
    shard_count: int,
    remaining_ms: RemainingMs | None = None,
) -> Report:
    """The state machine's last step: record the hour complete once every shard is (one ledger
    row however often it is retried), then give the previous hours the scheduled lookback a
    single run would have given them.

    It holds the hour's lock exclusively while it sums the shards' runs, so no shard of the hour
    is writing meanwhile; a run that holds the hour makes it raise `HourNotFinalized`."""
    label = hour_label(hour)
    report = Report.new(
        label,
        hour_prefix(hour, loader.settings.events_prefix),
        TriggerKind.SCHEDULE,
        str(finalize_run_id(label, shard_count)),
        loader.settings.key_list_cap,
    )
    with loader.lambda_clock(remaining_ms):
        report.db_revision = loader.check_schema()
        if loader.retired(hour):
            report.state = RunState.RETIRED  # the shards said so too: nothing to record
            return report
        with hour_lock(loader.engine, label, None, loader.settings.lock_wait_s) as held:
            if not held:
                raise HourNotFinalized(f"hour {label} is held by another run: finalize it later")
            missing = loader.retrying("ledger", report)(
                finalize_sharded_hour,
                loader.engine,
                loader.tables,
                hour,
                shard_count,
                report,
                __version__,
            )
        if missing:
            raise HourNotFinalized(
                f"hour {label} is not complete: shards {missing} have no complete run"
            )
        look_back(loader, hour, report, remaining_ms)
    return report


def look_back(
    loader: HourLoader, hour: datetime, report: Report, remaining_ms: RemainingMs | None
) -> None:
    """Re-check the LOOKBACK_HOURS before `hour` for objects that landed after their hour was
    loaded (full-hour runs that skip loaded keys), into `report.lookback`; hours with objects
    but no run at all go to `report.missing_hours`. Hours past retention are skipped (listed
    in `report.lookback` as `retired`, never as missing)."""
    previous = lookback_hours(hour, loader.settings.lookback_hours)
    retired = [h for h in previous if loader.retired(h)]
    report.lookback.extend({"hour": hour_label(h), "state": "retired"} for h in sorted(retired))
    previous = [h for h in previous if h not in retired]
    if not previous:
        return

    def read_records() -> tuple[dict[datetime, Any], dict[datetime, Any]]:
        with loader.engine.connect() as conn:
            return (
                hour_records(conn, loader.tables, min(previous), max(previous)),
                event_loaded_hours(conn, loader.tables, min(previous), max(previous)),
            )

    with loader.lambda_clock(remaining_ms):
        records, notified = loader.retrying("ledger", report)(read_records)
    for each_hour in sorted(previous):
        if remaining_ms is not None and remaining_ms() < 2 * loader.settings.safety_margin_ms:
            break
        if each_hour not in records and each_hour not in notified:
            if _has_objects(loader, each_hour):
                report.missing_hours.append(hour_label(each_hour))
            continue
        job = HourJob(each_hour, TriggerKind.LOOKBACK, skip_loaded_keys=True)
        late = loader.load(job, remaining_ms)
        report.lookback.append(
            {
                "hour": late.hour,
                "state": late.state,
                "objects_new": late.objects_listed - late.objects_skipped_loaded,
                "objects_skipped_loaded": late.objects_skipped_loaded,
                "inserted": late.inserted,
                "suppressed": late.suppressed,
            }
        )
    if report.missing_hours:
        log.warning(
            "hours with objects but no run in the ledger: run `clickstream-loader "
            "backfill` for them",
            extra={"missing_hours": report.missing_hours},
        )


def _notified(loader: HourLoader, hour: datetime, remaining_ms: RemainingMs | None) -> bool:
    """Whether notifications loaded into this hour: then its scheduled run is the sweep."""
    with loader.lambda_clock(remaining_ms):
        loader.check_schema()

        def read() -> bool:
            with loader.engine.connect() as conn:
                return hour in event_loaded_hours(conn, loader.tables, hour, hour)

        return bool(loader.retrying("ledger")(read))


def _has_objects(loader: HourLoader, hour: datetime) -> bool:
    prefix = hour_prefix(hour, loader.settings.events_prefix)
    return next(iter(loader.source.list_objects(prefix)), None) is not None


@dataclass
class HoursResult:
    """A manual run over the hours of one UTC day: one report (and one ledger run) per hour."""

    trigger: Trigger
    prefix: str
    key_cap: int
    reports: list[Report] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)

    @property
    def state(self) -> RunState:
        """`complete` once every hour that has begun is (a retired hour counts: there is
        nothing left to load); `partial` means rerun the payload."""
        done = all(r.state in (RunState.COMPLETE, RunState.RETIRED) for r in self.reports)
        return RunState.COMPLETE if done and not self.not_started else RunState.PARTIAL

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "day": self.trigger.day.isoformat() if self.trigger.day else None,
            "prefix": self.prefix,
            "trigger": self.trigger.kind,
            "state": self.state,
        }
        for counter in COUNTERS:
            if counter.keys:
                lists = [getattr(r, counter.name) for r in self.reports]
                out[counter.name] = _merged_keys(lists, self.key_cap)
            else:
                out[counter.name] = sum(r.count_of(counter) for r in self.reports)
        out["seconds"] = round(sum(r.seconds for r in self.reports), 3)
        out["hours_not_started"] = list(self.not_started)
        out["hours_in_future"] = [hour_label(h) for h in self.trigger.future_hours()]
        out["hours"] = [r.to_dict() for r in self.reports]
        return out


class HoursFailed(LoaderError):
    """An hour of a day run raised (its `__cause__`, which says whether a rerun can help); its
    message says what was loaded and what was not."""

    def __init__(self, message: str, result: HoursResult) -> None:
        super().__init__(message)
        self.result = result


def run_hours(
    loader: HourLoader,
    trigger: Trigger,
    remaining_ms: RemainingMs | None = None,
    on_report: Callable[[Report], None] | None = None,
) -> HoursResult:
    """Load `trigger.hours` in order, each as its own run, as `backfill` does.

    Stops before starting an hour when less than twice the safety margin remains, or after an
    hour that ran out of time; the hours left are reported as not started. Stops at the first
    hour that raises, because what raises (warehouse or S3 down, schema behind) would fail the
    following hours the same way, each after a full retry budget; bad data never raises. The
    error then names the hours loaded and the hours not started. Rerunning the payload is safe:
    hours already loaded insert nothing again.
    """
    result = HoursResult(
        trigger,
        f"{loader.settings.events_prefix}{trigger.hour:%Y/%m/%d}/",
        loader.settings.key_list_cap,
    )
    margin = 2 * loader.settings.safety_margin_ms
    for index, hour in enumerate(trigger.hours):
        if remaining_ms is not None and remaining_ms() < margin:
            result.not_started = [hour_label(h) for h in trigger.hours[index:]]
            log.warning(
                "time is running out: hours not started",
                extra={"hours_not_started": result.not_started},
            )
            break
        try:
            report = loader.load(HourJob(hour, trigger.kind, trigger.shard), remaining_ms)
        except Exception as exc:
            result.not_started = [hour_label(h) for h in trigger.hours[index + 1 :]]
            loaded = [r.hour for r in result.reports]
            raise HoursFailed(
                f"hour {hour_label(hour)} failed ({error_summary(exc)}); loaded before it: "
                f"{loaded or 'none'}; not started: {result.not_started or 'none'}. "
                "Rerun the same payload: loaded hours insert nothing again.",
                result,
            ) from exc
        result.reports.append(report)
        if on_report is not None:
            on_report(report)
        if report.state == RunState.PARTIAL:
            result.not_started = [hour_label(h) for h in trigger.hours[index + 1 :]]
            break
    return result


def _merged_keys(lists: list[KeyList], cap: int) -> dict[str, Any]:
    """The hours' key lists as one, in the shape and within the cap of each."""
    count = sum(k.count for k in lists)
    keys = [key for k in lists for key in k.keys][:cap]
    return {"count": count, "keys": keys, "keys_truncated": count > len(keys)}
