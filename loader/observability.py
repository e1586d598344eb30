"""Structured logs and CloudWatch metrics, via AWS Lambda Powertools.

Powertools' Logger and Metrics (7.6 MB unpacked, pure Python, no dependencies beyond what we
ship) give JSON log lines with a stable schema and CloudWatch Embedded Metric Format without a
PutMetricData call, which a VPC Lambda with no CloudWatch endpoint could not make anyway.
Logs go to stdout (CloudWatch in Lambda); the CLI moves them to stderr so its own output
(`--json`) stays machine-readable.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import IO, Any, Final, Literal, cast

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from loader.config import LOG_LEVEL, METRICS_NAMESPACE, SERVICE_NAME
from loader.report import Report

SERVICE: Final = SERVICE_NAME.read()
NAMESPACE: Final = METRICS_NAMESPACE.read()


class CurrentStream(io.TextIOBase):
    """`sys.stdout` or `sys.stderr` as they are when a line is written, not when the logger was
    created: whoever redirects them later (the CLI, a test's capture) gets the log lines too."""

    def __init__(self, name: Literal["stdout", "stderr"]) -> None:
        self.stream_name = name

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        written: int = getattr(sys, self.stream_name).write(text)
        return written

    def flush(self) -> None:
        getattr(sys, self.stream_name).flush()


log = Logger(
    service=SERVICE,
    level=LOG_LEVEL.read(),
    stream=cast(IO[str], CurrentStream("stdout")),
)


def set_log_stream(name: Literal["stdout", "stderr"]) -> None:
    """Send log lines to stdout (Lambda, CloudWatch) or stderr (the CLI, whose stdout is data)."""
    for handler in log.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(CurrentStream(name))


def emf_metrics(report: Report, now: datetime) -> dict[str, Any]:
    """The run's metrics as one EMF document (also what `emit_metrics` prints)."""
    metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
    metrics.clear_metrics()
    counts = {
        "EventsInserted": report.inserted,
        "Duplicates": report.duplicates,
        "DuplicatesConflicting": report.duplicate_conflicting,
        "Malformed": report.malformed.count,
        "Invalid": report.invalid.count,
        "Quarantined": report.quarantined.count,
        "Retries": report.retries,
        "ObjectsListed": report.objects_listed,
        "Suppressed": report.suppressed,
    }
    for name, value in counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    metrics.add_metric(name="DurationSeconds", unit=MetricUnit.Seconds, value=report.seconds)
    if report.newest_event_at:
        lag = (now - datetime.fromisoformat(report.newest_event_at)).total_seconds()
        metrics.add_metric(name="FreshnessLagSeconds", unit=MetricUnit.Seconds, value=max(lag, 0))
    metrics.add_metadata(key="hour", value=report.hour)
    metrics.add_metadata(key="run_id", value=report.run_id)
    metrics.add_metadata(key="state", value=report.state)
    document = dict(metrics.serialize_metric_set())
    metrics.clear_metrics()
    return document


def emit_metrics(report: Report, now: datetime) -> None:
    """Print the run's EMF document on stdout, where CloudWatch Logs turns it into metrics."""
    print(json.dumps(emf_metrics(report, now), separators=(",", ":")), flush=True)


def emf_batch_metrics(
    counts: Mapping[str, int], lag: Mapping[str, float | None], hours: Sequence[str]
) -> dict[str, Any]:
    """An SQS batch's own metrics as one EMF document (the near-real-time path): its counts and
    the end-to-end lag of its objects, S3's creation time to the commit (`p50`, `p95`, `max`
    seconds). Each hour it loaded emits its run's usual document besides."""
    metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
    metrics.clear_metrics()
    for name, value in counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    for name, key in (
        ("EndToEndLagP50Seconds", "p50"),
        ("EndToEndLagP95Seconds", "p95"),
        ("EndToEndLagMaxSeconds", "max"),
    ):
        seconds = lag.get(key)
        if seconds is not None:
            metrics.add_metric(name=name, unit=MetricUnit.Seconds, value=max(seconds, 0.0))
    metrics.add_metadata(key="trigger", value="event")
    metrics.add_metadata(key="hours", value=list(hours))
    document = dict(metrics.serialize_metric_set())
    metrics.clear_metrics()
    return document


def emit_batch_metrics(
    counts: Mapping[str, int], lag: Mapping[str, float | None], hours: Sequence[str]
) -> None:
    """Print the batch's EMF document on stdout, where CloudWatch Logs turns it into metrics."""
    print(json.dumps(emf_batch_metrics(counts, lag, hours), separators=(",", ":")), flush=True)
