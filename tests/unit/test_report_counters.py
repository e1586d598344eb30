"""The report's counts are declared once (loader/report.py); the ledger row, the metrics, the
day run's totals and the notified path's per-hour summary all come from that declaration."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import Integer

from loader.observability import emf_metrics
from loader.pipeline.notified import _hour_summary
from loader.pipeline.runs import HoursResult
from loader.report import COUNTERS, LEDGER_COUNTERS, KeyList, Report
from loader.schema import clickstream_load_runs
from loader.window import Trigger

HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)


def counted(seed: int) -> Report:
    """A report whose every count differs from every other (seed + 100 * its position)."""
    report = Report.new("2026-11-24T13", "events/2026/11/24/13/", "manual", "r", key_cap=2)
    for position, counter in enumerate(COUNTERS):
        report.set_count(counter, seed + 100 * position)
    return report


def test_the_ledger_counts_are_the_integer_columns_of_the_ledger() -> None:
    # GIVEN the load ledger's table as loader/schema.py describes it
    integer_columns = [c.name for c in clickstream_load_runs.columns if isinstance(c.type, Integer)]
    # THEN its integer columns are exactly the counts the report marks for the ledger, in order
    assert [c.name for c in LEDGER_COUNTERS] == integer_columns


def test_every_count_is_in_the_report_and_the_day_totals() -> None:
    # GIVEN two hours' reports with distinct counts
    first, second = counted(1), counted(2)
    trigger = Trigger(HOUR, "manual", day=date(2026, 11, 24), hours=(HOUR,))
    result = HoursResult(trigger, "events/2026/11/24/", key_cap=5, reports=[first, second])
    # WHEN the report and the day run are rendered
    single, totals = first.to_dict(), result.to_dict()
    # THEN each count is there, a key list as its count; the day sums the two hours
    for position, counter in enumerate(COUNTERS):
        expected = 1 + 100 * position
        value = single[counter.name]
        assert (value["count"] if counter.keys else value) == expected, counter.name
        total = totals[counter.name]
        assert (total["count"] if counter.keys else total) == 2 * expected + 1, counter.name


def test_metrics_and_the_hour_summary_carry_the_counts_declared_for_them() -> None:
    report = counted(7)
    # WHEN the run's EMF document and the notified path's hour summary are built
    document = emf_metrics(report, HOUR)
    summary = _hour_summary(report)
    # THEN each count marked as a metric is one, under its name, with its value
    declared = [c for c in COUNTERS if c.metric]
    names = [m["Name"] for m in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert {c.metric for c in declared} <= set(names)
    for counter in declared:
        assert document[counter.metric] == [report.count_of(counter)], counter.name
    # AND each count marked for the summary is in it, under its key
    for counter in COUNTERS:
        if counter.summary:
            assert summary[counter.summary] == report.count_of(counter), counter.name
    assert len(summary) == 3 + sum(1 for c in COUNTERS if c.summary)


def test_a_key_list_count_set_from_the_ledger_says_its_keys_are_not_all_there() -> None:
    # GIVEN a report whose quarantined count comes from the ledger (a fanned-out hour's finalize)
    report = Report.new("2026-11-24T13", "p", "schedule", "r", key_cap=2)
    quarantined = next(c for c in COUNTERS if c.name == "quarantined")
    report.set_count(quarantined, 3)
    # THEN the count is the ledger's and the report does not pretend to list the keys
    assert report.quarantined.to_dict() == {"count": 3, "keys": [], "keys_truncated": True}
    assert isinstance(report.quarantined, KeyList) and report.quarantined.cap == 2
