"""AWS Lambda entry point: parse the trigger, call the pipeline, return the report. An SQS
batch of S3 notifications (the near-real-time path) gets the partial batch response instead.

Module level holds only what a warm container should reuse (settings, S3 client, engine object);
connections are closed after every invocation. Errors are logged with context and re-raised so
Lambda's retry and on-failure destination see them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from loader.app import LoaderFactory
from loader.errors import sqlstate
from loader.maintenance import maintain_warehouse, options_from_event
from loader.notifications import is_sqs_event, parse_sqs_event, plan_batch
from loader.observability import emit_batch_metrics, emit_metrics, log
from loader.operations import erase
from loader.pipeline.erase import ErasureInputError, ErasureRequest
from loader.pipeline.runs import finalize_fanned_out_hour, run_hours, run_trigger
from loader.secrets import forget_database_secrets
from loader.window import (
    Shard,
    TriggerError,
    hour_label,
    parse_hour,
    parse_trigger,
    previous_hour,
)

_factory = LoaderFactory()
#: invalid_authorization_specification, invalid_password
_AUTH_FAILURES = frozenset({"28000", "28P01"})


def _clock() -> datetime:
    """The instant the original ETL's payloads count from (`hoursBack`, hours not begun yet);
    tests replace it with a fixed one."""
    return datetime.now(UTC)


def _remaining_ms(context: Any) -> Any:
    """The Lambda clock when there is one; local runs and tests pass context=None."""
    if context is None or not hasattr(context, "get_remaining_time_in_millis"):
        return None
    return context.get_remaining_time_in_millis


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request_id = getattr(context, "aws_request_id", None)
    if request_id:
        log.append_keys(request_id=request_id)
    try:
        if is_sqs_event(event):
            return _notifications(event, context)
        action = event.get("action") if isinstance(event, dict) else None
        if action == "plan":
            return _plan(event)
        if action == "maintain":
            return _maintain(event)
        loader = _factory.get()
        if action == "finalize":
            return _finalize(loader, event, context)
        if action == "erase":
            return _erase(loader, event)
        trigger = parse_trigger(event, events_prefix=loader.settings.events_prefix, now=_clock())
        if trigger.day is not None:
            summary = run_hours(
                loader,
                trigger,
                _remaining_ms(context),
                lambda hour_report: emit_metrics(hour_report, datetime.now(UTC)),
            ).to_dict()
        else:
            report = run_trigger(loader, trigger, _remaining_ms(context))
            emit_metrics(report, datetime.now(UTC))
            summary = report.to_dict()
        log.info("run finished", extra={"report": summary})
        return summary
    except Exception as exc:
        log.exception("run failed")
        # A day run wraps the failing hour's error: look behind it too.
        if {sqlstate(exc), sqlstate(exc.__cause__ or exc)} & _AUTH_FAILURES:
            # The password may have been rotated: re-read the secret on the next invocation.
            forget_database_secrets()
            _factory.close()
        raise
    finally:
        _factory.release()


def _notifications(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """An SQS batch of S3 notifications (the near-real-time path, loader/pipeline/notified.py):
    load exactly the named objects and answer which messages SQS must deliver again."""
    messages = parse_sqs_event(event)
    events = _factory.events()
    settings = events.loader.settings
    plan = plan_batch(messages, settings.raw_bucket, settings.events_prefix)
    result = events.load_batch(plan, _remaining_ms(context))
    now = datetime.now(UTC)
    for report in result.reports:
        emit_metrics(report, now)
    emit_batch_metrics(result.metric_counts(), result.lag(), [r.hour for r in result.reports])
    log.info("batch finished", extra={"batch": result.to_dict()})
    result.raise_if_nothing_loaded()
    return result.response()


def _plan(event: dict[str, Any]) -> dict[str, Any]:
    """Step Functions' first step: the hour to load and one item per shard for its Map, range
    shards (each lists only its own slice of the hour: loader/window.py `Shard`)."""
    if "hour" in event:
        hour = parse_hour(str(event["hour"]))
    elif isinstance(event.get("time"), str):
        hour = previous_hour(parse_hour(event["time"]))
    else:
        raise TriggerError("plan needs 'time' (the schedule time) or 'hour'")
    count = int(event.get("shard_count", 1))
    Shard(0, count)  # validates the count
    label = hour_label(hour)
    return {
        "hour": label,
        "shard_count": count,
        "shards": [
            {"hour": label, "shard": Shard(i, count, "range").as_payload()} for i in range(count)
        ],
    }


def _maintain(event: dict[str, Any]) -> dict[str, Any]:
    """The scheduled maintenance function (deploy/template.yaml, `Maintenance`): its own
    function and role, whose DW_PG_* / DW_PG_SECRET_ARN are the tables' owner's. The payload:
    {"action": "maintain", "keep_days": D, "ahead_days": N} (optionally "allow_shorter")."""
    return maintain_warehouse(options_from_event(event)).to_dict()  # it logs its summary


def _erase(loader: Any, event: dict[str, Any]) -> dict[str, Any]:
    """The erasure function's payload: `{"action": "erase", "user_ids": [...], "client_ids":
    [...], "request_id": "...", "suppress_future": false, "dry_run": false}` (loader/pipeline/
    erase.py). Its record is the answer; the identifiers are never logged."""
    request = ErasureRequest(
        _identifiers(event, "user_ids"),
        _identifiers(event, "client_ids"),
        _optional_text(event, "request_id"),
        _flag(event, "suppress_future"),
        _flag(event, "dry_run"),
    )
    result = erase(loader, request)
    log.info(
        "erasure request answered",
        extra={"request_id": result["request_id"], "state": result.get("state")},
    )
    return result


def _identifiers(event: dict[str, Any], name: str) -> tuple[str, ...]:
    value = event.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ErasureInputError(f"{name} must be a list of strings")
    return tuple(value)


def _optional_text(event: dict[str, Any], name: str) -> str | None:
    value = event.get(name)
    if value is not None and not isinstance(value, str):
        raise ErasureInputError(f"{name} must be a string")
    return value


def _flag(event: dict[str, Any], name: str) -> bool:
    value = event.get(name, False)
    if not isinstance(value, bool):
        raise ErasureInputError(f"{name} must be true or false")
    return value


def _finalize(loader: Any, event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Step Functions' last step: record the fanned-out hour complete once every shard is (the
    same ledger row however often it is retried), then look back over the previous hours."""
    hour = parse_hour(str(event.get("hour", "")))
    count = int(event.get("shard_count", 0))
    Shard(0, count)
    report = finalize_fanned_out_hour(loader, hour, count, _remaining_ms(context))
    emit_metrics(report, datetime.now(UTC))
    summary = report.to_dict()
    log.info("hour finalized", extra={"report": summary})
    return summary
