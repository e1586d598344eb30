"""The rollups' arithmetic, without a database: what a row adds, and why the gaps table gives
exact unique clients over any range of days (loader/load/rollups.py, docs/dashboard.md)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone

from loader.load.rollups import Flags, _links, deltas_of, utc_day

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
    histories: dict[str, dict[date, Flags]], first: date, last: date, slot: int | None
) -> int:
    """Brute force: clients seen in first..last under the filter (slot None: ALL)."""
    return sum(
        1
        for days in histories.values()
        if any(
            first <= day <= last and (any(flags) if slot is None else flags[slot])
            for day, flags in days.items()
        )
    )


def test_the_gaps_give_exact_unique_clients_for_every_range_and_filter() -> None:
    rng = random.Random(25)
    days = [DAY + timedelta(days=n) for n in range(12)]
    histories: dict[str, dict[date, Flags]] = {}
    for n in range(200):
        seen: dict[date, Flags] = {}
        for day in rng.sample(days, rng.randint(1, 6)):
            flags = (rng.random() < 0.4, rng.random() < 0.7, rng.random() < 0.1)
            if any(flags):
                seen[day] = flags
        histories[f"c{n}"] = seen
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
    before: dict[date, Flags] = {
        DAY: (False, True, False),
        DAY + timedelta(days=4): (True, True, False),
    }
    after = {**before, DAY + timedelta(days=2): (False, True, False)}
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
