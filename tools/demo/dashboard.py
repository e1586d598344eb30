"""The dashboard's KPIs two ways: from the rollups (`clickstream_dashboard()`) and from the raw
rows with the real dashboard's own SQL (queries.sql beside this file, copied byte for byte from
../shared/real-platform/queries.sql: Q2-Q11 are the R app's dplyr steps as SQL).

Both give the same rows: (kpi, rank, label, value), one per number, in the function's order.
Shared by the demo (which prints them side by side), the tests (which compare them) and the
benchmark (which times them).
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa

QUERIES_SQL: Final = Path(__file__).resolve().parent / "queries.sql"
LOGIN_FILTERS: Final = ("ALL", "logged_in", "anonymous")
#: The function's KPIs, in its order; `product_rows` is Q11's count (the raw-sample pager).
KPI_ORDER: Final = (
    "total_events",
    "unique_clients",
    "add_to_cart",
    "checkout_complete",
    "checkout_rate_pct",
    "events_per_day",
    "top_event_names",
    "events_by_login_state",
    "top_product_categories",
    "top_product_brands",
    "product_rows",
)
Row = tuple[str, int | None, str | None, Decimal]

# The literals of each query's `params` CTE, and what replaces them (bound parameters).
_PARAMS: Final = (
    (
        "((now() AT TIME ZONE 'UTC')::date - 7) AS start_date",
        "CAST(:start_date AS date) AS start_date",
    ),
    ("((now() AT TIME ZONE 'UTC')::date)     AS end_date", "CAST(:end_date AS date) AS end_date"),
    (
        "'ALL'::text                              AS login_state",
        "CAST(:login_state AS text) AS login_state",
    ),
    ("1                                        AS page_no", "CAST(:page_no AS int) AS page_no"),
)


@cache
def queries() -> dict[str, str]:
    """queries.sql's statements by their label ("Q2-Q4", "Q5", ... "Q11"), parameters bound."""
    out: dict[str, str] = {}
    lines: list[str] = []
    for line in QUERIES_SQL.read_text(encoding="utf-8").splitlines(keepends=True):
        lines.append(line)
        if line.lstrip().startswith("--") or not line.rstrip().endswith(";"):
            continue
        statement = "".join(lines)
        lines = []
        label = re.search(r"^-- (Q\d+(?:-Q\d+)?)\.", statement, re.MULTILINE)
        if label is None:
            continue
        for literal, bound in _PARAMS:
            statement = statement.replace(literal, bound)
        out[label.group(1)] = statement.rstrip().removesuffix(";")
    return out


def raw_kpis(conn: sa.Connection, start: date, end: date, login_state: str = "ALL") -> list[Row]:
    """Every KPI from the raw rows, by queries.sql, in `clickstream_dashboard()`'s shape."""
    q = queries()
    params = {"start_date": start, "end_date": end, "login_state": login_state}
    rows: list[Row] = []
    totals = conn.execute(sa.text(q["Q2-Q4"]), params).one()
    for kpi, value in zip(KPI_ORDER[:5], totals, strict=True):
        rows.append((kpi, None, None, Decimal(value)))
    for rank, (day, n) in enumerate(conn.execute(sa.text(q["Q5"]), params), start=1):
        rows.append(("events_per_day", rank, day.isoformat(), Decimal(n)))
    for kpi, label in (
        ("top_event_names", "Q6"),
        ("events_by_login_state", "Q7"),
        ("top_product_categories", "Q8"),
        ("top_product_brands", "Q9"),
    ):
        for rank, (item, n) in enumerate(conn.execute(sa.text(q[label]), params), start=1):
            rows.append((kpi, rank, item, Decimal(n)))
    product_rows, _pages = conn.execute(sa.text(q["Q11"]), params).one()
    rows.append(("product_rows", None, None, Decimal(product_rows)))
    return rows


def rollup_kpis(conn: sa.Connection, start: date, end: date, login_state: str = "ALL") -> list[Row]:
    """Every KPI from the rollups: `SELECT * FROM clickstream_dashboard(...)`."""
    result = conn.execute(
        sa.text("SELECT * FROM clickstream_dashboard(:start, :end, :login_state)"),
        {"start": start, "end": end, "login_state": login_state},
    )
    return [(r.kpi, r.rank, r.label, r.value) for r in result]


def raw_sample_page(
    conn: sa.Connection, start: date, end: date, login_state: str = "ALL", page: int = 1
) -> list[dict[str, Any]]:
    """queries.sql Q10: 20 product rows newest first (the raw-sample tab), as the app pages."""
    params = {"start_date": start, "end_date": end, "login_state": login_state, "page_no": page}
    return [dict(r) for r in conn.execute(sa.text(queries()["Q10"]), params).mappings()]
