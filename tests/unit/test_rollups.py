"""The rollups' arithmetic, without a database: what a row adds, and why the gaps table gives
exact unique clients over any range of days (loader/load/rollups.py, docs/dashboard.md)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from loader.load.rollups import RollupOutOfStep, _changed, _links, deltas_of, utc_day

DAY = date(2026, 11, 24)


def row(**values: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_timestamp": datetime(2026, 11, 24, 23, 59, 59, 999999, tzinfo=UTC),
        "user_login_state": "anonymous",
        "event_name": "page_view",
        "client_id": "c1",
        "context_product_id": None,
        "context_product_name": None,
        "context_product_category": None,
        "context_product_brand": None,
    }
    base.update(values)
    return base


def test_a_row_counts_under_the_dashboards_labels_and_its_utc_day() -> None:
    rows = [
        row(),
        row(user_login_state=None, client_id=None),
        row(
            user_login_state="",
            event_timestamp=datetime(2026, 11, 25, 1, tzinfo=timezone(timedelta(hours=2))),
        ),
        row(event_name="product_view", context_product_name="x", context_product_brand=""),
        row(
            event_name="category_view",
            context_product_id="mobiles",
            context_product_category="mobiles",
        ),
        row(event_name="click", context_product_category="ignored: not a product row"),
    ]
    deltas = deltas_of(rows)
    assert deltas.events == {
        (DAY, "anonymous", "page_view"): [1, 0],
        (DAY, "UNKNOWN", "page_view"): [2, 1],  # NULL and '' alike; 01:00+02 is the 24th UTC
        (DAY, "anonymous", "product_view"): [1, 0],
        (DAY, "anonymous", "category_view"): [1, 0],
        (DAY, "anonymous", "click"): [1, 0],
    }
    assert deltas.products == {
        (DAY, "anonymous", "category", "UNKNOWN"): 1,
        (DAY, "anonymous", "brand", "UNKNOWN"): 2,
        (DAY, "anonymous", "category", "mobiles"): 1,
    }
    # (logged_in, anonymous, other): the NULL client is not a client-day
    assert deltas.clients == {("c1", DAY): [0, 4, 1]}
    assert deltas_of(rows, sign=-1).clients == {("c1", DAY): [0, -4, -1]}


def test_utc_day_of_a_naive_instant_is_read_as_utc() -> None:
    assert utc_day(datetime(2026, 11, 24, 23, 30)) == DAY


def _unique(
    histories: dict[str, dict[date, list[int]]], first: date, last: date, slot: int | None
) -> int:
    """Brute force: clients seen in first..last under the filter (slot None: ALL)."""
    return sum(
        1
        for days in histories.values()
        if any(
            first <= day <= last and (sum(counts) > 0 if slot is None else counts[slot] > 0)
            for day, counts in days.items()
        )
    )


def test_the_gaps_give_exact_unique_clients_for_every_range_and_filter() -> None:
    rng = random.Random(25)
    days = [DAY + timedelta(days=n) for n in range(12)]
    histories = {
        f"c{n}": {
            day: [rng.choice((0, 0, 1, 3)), rng.choice((0, 1, 2)), rng.choice((0, 0, 0, 1))]
            for day in rng.sample(days, rng.randint(1, 6))
        }
        for n in range(200)
    }
    histories = {c: {d: v for d, v in h.items() if any(v)} for c, h in histories.items()}
    gaps: Counter[tuple[str, date, date | None]] = Counter()
    for history in histories.values():
        gaps.update(_links(history))
    for first in days:
        for last in days[days.index(first) :]:
            for name, slot in (("ALL", None), ("logged_in", 0), ("anonymous", 1)):
                linked = sum(
                    n
                    for (f, day, previous), n in gaps.items()
                    if f == name and first <= day <= last and (previous is None or previous < first)
                )
                assert linked == _unique(histories, first, last, slot), (first, last, name)


def test_a_late_day_between_two_relinks_the_later_one() -> None:
    before = {DAY: [0, 1, 0], DAY + timedelta(days=4): [1, 1, 0]}
    after = _changed("c", before, {DAY + timedelta(days=2): [0, 2, 0]})
    delta = Counter(_links(after))
    delta.subtract(_links(before))
    assert {k: v for k, v in delta.items() if v} == {
        ("ALL", DAY + timedelta(days=2), DAY): 1,
        ("ALL", DAY + timedelta(days=4), DAY): -1,
        ("ALL", DAY + timedelta(days=4), DAY + timedelta(days=2)): 1,
        ("anonymous", DAY + timedelta(days=2), DAY): 1,
        ("anonymous", DAY + timedelta(days=4), DAY): -1,
        ("anonymous", DAY + timedelta(days=4), DAY + timedelta(days=2)): 1,
    }  # logged_in saw the client on day 4 only, before and after


def test_taking_away_more_than_was_counted_is_refused() -> None:
    with pytest.raises(RollupOutOfStep, match="rebuild those days first"):
        _changed("c", {DAY: [0, 1, 0]}, {DAY: [0, -2, 0]})
    assert _changed("c", {DAY: [0, 1, 0]}, {DAY: [0, -1, 0]}) == {}
