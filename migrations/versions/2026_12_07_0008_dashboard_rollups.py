"""Dashboard rollups: every KPI of the R Shiny dashboard from a few hundred rows, exactly.

What changes:
- clickstream_rollup_events: events per UTC day, login state (as the dashboard labels it:
  NULL or '' become 'UNKNOWN') and event name, with how many of them have no client_id.
  Answers total events, add-to-cart and checkout counts, events per day, the top event names
  and events by login state (queries.sql Q2-Q7) by summing rows.
- clickstream_rollup_products: product rows (context_product_id or context_product_name not
  NULL) per UTC day, login state and category or brand (Q8, Q9, the Q11 page count).
- clickstream_rollup_clients: one row per client per UTC day it sent events, with the login
  states it sent them in. A distinct count per day cannot be summed over days; this set can be
  recounted exactly, and a row is written only when a client first appears on a day (or in a
  login state that day), not for every event.
- clickstream_rollup_client_gaps: per login filter, per day, how many clients seen that day had
  last been seen on `previous_day` ('-infinity': never). Distinct clients over days S..E are
  sum(clients) over day in S..E with previous_day < S: each client counts on its first day in
  the range. At most one row per pair of days, whatever the traffic, so a 7-day answer reads a
  few hundred rows however many clients there are.
- Function clickstream_dashboard(start_date date, end_date date, login_state text DEFAULT
  'ALL') RETURNS TABLE (kpi text, rank int, label text, value numeric): every KPI of the
  dashboard for whole UTC days start_date..end_date (end day included) from the rollups, the
  same numbers as queries.sql Q2-Q9 (and Q11's product-row count) on the raw rows. Bad
  arguments raise SQLSTATE 22023 (22004 for NULL dates).
- No index: the raw-sample page (Q10), which stays a raw query (20 rows newest first), is
  served by ix_clickstream_events_product_rows, which 0006_partition_by_day creates.
- The rollups are filled from the rows already loaded (below).

Why: the dashboard sends every raw row of its 7-day range every 10 s per open session and
computes each KPI in R: 3.7M rows in 15.9 s at 16M rows in the table, before R computes anything
(issue 25). The loader keeps these tables in step with the rows, in the transaction of each batch
it inserts (loader/load/rollups.py); `clickstream-loader rollup --start S --end E` rebuilds any
range of days from the raw rows (after a DBA deletes rows by hand). docs/dashboard.md.

Cost per day (measured, bench/results/dashboard.md): clickstream_rollup_clients takes one row
per client per day it is active, 145-165 bytes with its indexes (52,001 rows, 7.6 MB a day at
~457k events a day of the demo's traffic); the other three tables held 632 + 2,382 + 216 rows
in all for 36 days, at 2M rows as at 16M: they grow with days, not with traffic.

Locks and time: the new tables are new. The fill takes a SHARE lock on clickstream_events for
its whole duration (LOCK TABLE takes it on every day partition too), so the rollups it computes
are exactly the rows present: the loader's inserts wait (the dashboard's reads do not) until the
revision commits. Measured on the embedded server (2 CPUs shared with other work, load average
~14, before 0006's partitions): 22.0 and 26.9 s for 1M rows (bench/dashboard.py); the fill alone
took 342 s at 16M rows.

Deploy: not loader-compatible (see `loader_compatible` below). Stop the loader, upgrade, then
deploy the loader built for this revision: a loader built for an earlier revision would insert
rows without counting them.

Downgrade drops the function and the four tables; the events are not touched.

Squawk waivers:
- none

Revision ID: 0008_dashboard_rollups
Revises: 0007_erasure
Create Date: 2026-12-07 09:00:00 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Revision identifiers, used by Alembic. Revisions import only alembic and sqlalchemy: never
# `loader`, so a later change to the application cannot change what this revision does.
revision: str = "0008_dashboard_rollups"
down_revision: str | Sequence[str] | None = "0007_erasure"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not loader-compatible: a loader built for an earlier revision inserts events without
# counting them, and the rollups would drift from the rows. It stops at its revision check.
loader_compatible = False

LOGIN_FILTERS = ("ALL", "logged_in", "anonymous")
PRODUCT_DIMENSIONS = ("category", "brand")

# The rows already loaded, counted once each, as the loader counts the rows it inserts.
FILL = [
    """
LOCK TABLE clickstream_events IN SHARE MODE
""",
    """
INSERT INTO clickstream_rollup_events (day, login_state, event_name, events, events_without_client)
SELECT (event_timestamp AT TIME ZONE 'UTC')::date,
       coalesce(nullif(user_login_state, ''), 'UNKNOWN'),
       event_name,
       count(*),
       count(*) FILTER (WHERE client_id IS NULL)
FROM clickstream_events
GROUP BY 1, 2, 3
""",
    """
INSERT INTO clickstream_rollup_products (day, login_state, dimension, value, events)
SELECT (e.event_timestamp AT TIME ZONE 'UTC')::date,
       coalesce(nullif(e.user_login_state, ''), 'UNKNOWN'),
       d.dimension,
       coalesce(nullif(CASE d.dimension WHEN 'category' THEN e.context_product_category
                                        ELSE e.context_product_brand END, ''), 'UNKNOWN'),
       count(*)
FROM clickstream_events e
CROSS JOIN (VALUES ('category'), ('brand')) AS d (dimension)
WHERE e.context_product_id IS NOT NULL OR e.context_product_name IS NOT NULL
GROUP BY 1, 2, 3, 4
""",
    """
INSERT INTO clickstream_rollup_clients (client_id, day, logged_in, anonymous, other_states)
SELECT client_id,
       (event_timestamp AT TIME ZONE 'UTC')::date,
       count(*) FILTER (WHERE user_login_state = 'logged_in') > 0,
       count(*) FILTER (WHERE user_login_state = 'anonymous') > 0,
       count(*) FILTER (WHERE user_login_state IS NULL
                           OR user_login_state NOT IN ('logged_in', 'anonymous')) > 0
FROM clickstream_events
WHERE client_id IS NOT NULL
GROUP BY 1, 2
""",
    """
INSERT INTO clickstream_rollup_client_gaps (login_filter, day, previous_day, clients)
SELECT login_filter, day, previous_day, count(*)
FROM (
    SELECT f.login_filter,
           c.day,
           coalesce(lag(c.day) OVER (PARTITION BY f.login_filter, c.client_id ORDER BY c.day),
                    '-infinity') AS previous_day
    FROM clickstream_rollup_clients c
    JOIN (VALUES ('ALL'), ('logged_in'), ('anonymous')) AS f (login_filter)
      ON f.login_filter = 'ALL'
      OR (f.login_filter = 'logged_in' AND c.logged_in)
      OR (f.login_filter = 'anonymous' AND c.anonymous)
) AS links
GROUP BY 1, 2, 3
""",
    "ANALYZE clickstream_rollup_events",
    "ANALYZE clickstream_rollup_products",
    "ANALYZE clickstream_rollup_clients",
    "ANALYZE clickstream_rollup_client_gaps",
]

# PL/pgSQL for the argument checks; the answer is one query over the rollups. Columns are
# always qualified: `#variable_conflict use_column` keeps the OUT parameters (kpi, rank, label,
# value) and the login_state parameter from shadowing the tables' columns.
DASHBOARD_FUNCTION = """
CREATE FUNCTION clickstream_dashboard(
    start_date date, end_date date, login_state text DEFAULT 'ALL'
) RETURNS TABLE (kpi text, rank integer, label text, value numeric)
LANGUAGE plpgsql STABLE
AS $function$
#variable_conflict use_column
DECLARE
    first_day CONSTANT date := clickstream_dashboard.start_date;
    last_day CONSTANT date := clickstream_dashboard.end_date;
    wanted_state CONSTANT text := clickstream_dashboard.login_state;
BEGIN
    IF first_day IS NULL OR last_day IS NULL THEN
        RAISE EXCEPTION 'clickstream_dashboard: start_date and end_date must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF last_day < first_day THEN
        RAISE EXCEPTION 'clickstream_dashboard: end_date % is before start_date %',
            last_day, first_day
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Both days are included: start_date = end_date is one day.';
    END IF;
    IF wanted_state IS NULL OR wanted_state NOT IN ('ALL', 'logged_in', 'anonymous') THEN
        RAISE EXCEPTION 'clickstream_dashboard: unknown login_state %',
            quote_nullable(wanted_state)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'login_state is one of ALL, logged_in, anonymous.';
    END IF;
    RETURN QUERY
    WITH ev AS (
        SELECT r.day, r.login_state AS state, r.event_name, r.events, r.events_without_client
        FROM clickstream_rollup_events r
        WHERE r.day BETWEEN first_day AND last_day
          AND (wanted_state = 'ALL' OR r.login_state = wanted_state)
    ), products AS (
        SELECT p.dimension, p.value AS item, sum(p.events) AS n
        FROM clickstream_rollup_products p
        WHERE p.day BETWEEN first_day AND last_day
          AND (wanted_state = 'ALL' OR p.login_state = wanted_state)
        GROUP BY p.dimension, p.value
    ), totals AS (
        SELECT coalesce(sum(ev.events), 0)::bigint AS total_events,
               coalesce(sum(ev.events) FILTER (WHERE ev.event_name = 'add_to_cart_click'),
                        0)::bigint AS add_to_cart,
               coalesce(sum(ev.events) FILTER (WHERE ev.event_name = 'checkout_complete'),
                        0)::bigint AS checkout_complete,
               coalesce(sum(ev.events_without_client), 0) > 0 AS any_without_client
        FROM ev
    ), returning_clients AS (
        SELECT coalesce(sum(g.clients), 0)::bigint AS n
        FROM clickstream_rollup_client_gaps g
        WHERE g.login_filter = wanted_state
          AND g.day BETWEEN first_day AND last_day
          AND g.previous_day < first_day
    ), ranked AS (
        SELECT 7 AS part, 'top_event_names' AS kpi, x.item, x.n,
               row_number() OVER (ORDER BY x.n DESC, x.item COLLATE "C") AS position
        FROM (SELECT ev.event_name AS item, sum(ev.events) AS n
              FROM ev GROUP BY ev.event_name) x
        UNION ALL
        SELECT 8, 'events_by_login_state', x.item, x.n,
               row_number() OVER (ORDER BY x.n DESC, x.item COLLATE "C")
        FROM (SELECT ev.state AS item, sum(ev.events) AS n FROM ev GROUP BY ev.state) x
        UNION ALL
        SELECT 9, 'top_product_categories', x.item, x.n,
               row_number() OVER (ORDER BY x.n DESC, x.item COLLATE "C")
        FROM products x WHERE x.dimension = 'category'
        UNION ALL
        SELECT 10, 'top_product_brands', x.item, x.n,
               row_number() OVER (ORDER BY x.n DESC, x.item COLLATE "C")
        FROM products x WHERE x.dimension = 'brand'
    ), answer AS (
        SELECT 1 AS part, 'total_events' AS kpi, NULL::integer AS rank, NULL::text AS label,
               t.total_events::numeric AS value
        FROM totals t
        UNION ALL
        SELECT 2, 'unique_clients', NULL, NULL,
               (c.n + CASE WHEN t.any_without_client THEN 1 ELSE 0 END)::numeric
        FROM totals t CROSS JOIN returning_clients c
        UNION ALL
        SELECT 3, 'add_to_cart', NULL, NULL, t.add_to_cart::numeric FROM totals t
        UNION ALL
        SELECT 4, 'checkout_complete', NULL, NULL, t.checkout_complete::numeric FROM totals t
        UNION ALL
        SELECT 5, 'checkout_rate_pct', NULL, NULL,
               CASE WHEN t.add_to_cart > 0
                    THEN round(t.checkout_complete * 100.0 / t.add_to_cart, 1)
                    ELSE 0 END
        FROM totals t
        UNION ALL
        SELECT 6, 'events_per_day', (row_number() OVER (ORDER BY d.day))::integer,
               to_char(d.day, 'YYYY-MM-DD'), d.n
        FROM (SELECT ev.day, sum(ev.events) AS n FROM ev GROUP BY ev.day) d
        UNION ALL
        SELECT r.part, r.kpi, r.position::integer, r.item, r.n
        FROM ranked r
        WHERE r.position <= 10 OR r.kpi = 'events_by_login_state'
        UNION ALL
        SELECT 11, 'product_rows', NULL, NULL, coalesce(sum(x.n), 0)
        FROM products x WHERE x.dimension = 'category'
    )
    SELECT a.kpi, a.rank, a.label, a.value FROM answer a ORDER BY a.part, a.rank;
END
$function$
"""

DASHBOARD_COMMENT = (
    "COMMENT ON FUNCTION clickstream_dashboard(date, date, text) IS "
    "'Every KPI of the clickstream dashboard for whole UTC days start_date..end_date (both "
    "included) and a login filter (ALL, logged_in, anonymous), from the rollups: one row per "
    "number, the same as queries.sql Q2-Q9 and Q11 on the raw rows. docs/dashboard.md'"
)


def _day() -> sa.Column[object]:
    return sa.Column("day", sa.Date(), nullable=False, comment="UTC day of event_timestamp.")


def _login_state() -> sa.Column[object]:
    return sa.Column(
        "login_state",
        sa.Text(),
        nullable=False,
        comment="user_login_state as the dashboard shows it: NULL or '' become 'UNKNOWN'.",
    )


def upgrade() -> None:
    """Apply: create the four rollup tables, fill the rollups from
    the rows already loaded, create clickstream_dashboard()."""
    _create_count_tables()
    _create_client_tables()
    for statement in FILL:
        op.execute(sa.text(statement))
    op.execute(sa.text(DASHBOARD_FUNCTION))
    op.execute(sa.text(DASHBOARD_COMMENT))


def _create_count_tables() -> None:
    op.create_table(
        "clickstream_rollup_events",
        _day(),
        _login_state(),
        sa.Column("event_name", sa.Text(), nullable=False, comment="event_name as stored."),
        sa.Column(
            "events",
            sa.BigInteger(),
            nullable=False,
            comment="Rows of clickstream_events with this day, login state and event name.",
        ),
        sa.Column(
            "events_without_client",
            sa.BigInteger(),
            nullable=False,
            comment="Of those, rows whose client_id is NULL: the dashboard counts them all as "
            "one more client (R's n_distinct counts NA once).",
        ),
        sa.CheckConstraint("events >= 0", name=op.f("ck_clickstream_rollup_events_events")),
        sa.CheckConstraint(
            "events_without_client >= 0 AND events_without_client <= events",
            name=op.f("ck_clickstream_rollup_events_events_without_client"),
        ),
        sa.PrimaryKeyConstraint(
            "day", "login_state", "event_name", name=op.f("pk_clickstream_rollup_events")
        ),
        comment="Dashboard rollup: events per UTC day, login state and event name (total "
        "events, add-to-cart and checkout counts, events per day, top event names, events by "
        "login state). Kept by the loader in each batch's transaction; `clickstream-loader "
        "rollup` rebuilds days.",
    )
    op.create_table(
        "clickstream_rollup_products",
        _day(),
        _login_state(),
        sa.Column("dimension", sa.Text(), nullable=False, comment="category or brand."),
        sa.Column(
            "value",
            sa.Text(),
            nullable=False,
            comment="context_product_category or context_product_brand as the dashboard shows "
            "it: NULL or '' become 'UNKNOWN'.",
        ),
        sa.Column(
            "events",
            sa.BigInteger(),
            nullable=False,
            comment="Product rows (context_product_id or context_product_name not NULL) with "
            "this day, login state and value.",
        ),
        sa.CheckConstraint(
            f"dimension IN {PRODUCT_DIMENSIONS!r}",
            name=op.f("ck_clickstream_rollup_products_dimension"),
        ),
        sa.CheckConstraint("events >= 0", name=op.f("ck_clickstream_rollup_products_events")),
        sa.PrimaryKeyConstraint(
            "day", "login_state", "dimension", "value", name=op.f("pk_clickstream_rollup_products")
        ),
        comment="Dashboard rollup: product rows per UTC day, login state and category or brand "
        "(top categories, top brands, the raw-sample page count). Each product row counts once "
        "under its category and once under its brand.",
    )


def _create_client_tables() -> None:
    op.create_table(
        "clickstream_rollup_clients",
        sa.Column(
            "client_id",
            sa.Text(),
            nullable=False,
            comment="clickstream_events.client_id (not NULL).",
        ),
        sa.Column("day", sa.Date(), nullable=False, comment="A UTC day the client sent events on."),
        sa.Column(
            "logged_in",
            sa.Boolean(),
            nullable=False,
            comment="The client sent events that day with user_login_state 'logged_in'.",
        ),
        sa.Column(
            "anonymous",
            sa.Boolean(),
            nullable=False,
            comment="The client sent events that day with user_login_state 'anonymous'.",
        ),
        sa.Column(
            "other_states",
            sa.Boolean(),
            nullable=False,
            comment="The client sent events that day with any other user_login_state, NULL or ''.",
        ),
        sa.CheckConstraint(
            "logged_in OR anonymous OR other_states",
            name=op.f("ck_clickstream_rollup_clients_seen"),
        ),
        sa.PrimaryKeyConstraint("client_id", "day", name=op.f("pk_clickstream_rollup_clients")),
        comment="Dashboard rollup: which clients sent events on which UTC day, in which login "
        "states: what keeps unique clients over any range of days exact (a distinct count per "
        "day cannot be summed). The largest rollup: one row per client per day it is active. A "
        "row changes only when a client is first seen on a day or in a login state that day.",
    )
    op.create_index(
        op.f("ix_clickstream_rollup_clients_day"),
        "clickstream_rollup_clients",
        ["day"],
        postgresql_using="brin",
    )
    op.create_table(
        "clickstream_rollup_client_gaps",
        sa.Column(
            "login_filter",
            sa.Text(),
            nullable=False,
            comment="ALL (every event) or the user_login_state the dashboard filters on.",
        ),
        sa.Column("day", sa.Date(), nullable=False, comment="A UTC day."),
        sa.Column(
            "previous_day",
            sa.Date(),
            nullable=False,
            comment="The last day before `day` the same client sent events under this filter; "
            "'-infinity' when it never had.",
        ),
        sa.Column(
            "clients",
            sa.BigInteger(),
            nullable=False,
            comment="Clients seen on `day` under this filter whose previous day seen was "
            "previous_day. Unique clients over days S..E = sum(clients) for day between S and "
            "E and previous_day < S: each client counts once, on its first day in the range.",
        ),
        sa.CheckConstraint(
            f"login_filter IN {LOGIN_FILTERS!r}",
            name=op.f("ck_clickstream_rollup_client_gaps_login_filter"),
        ),
        sa.CheckConstraint(
            "previous_day < day", name=op.f("ck_clickstream_rollup_client_gaps_previous_day")
        ),
        sa.CheckConstraint("clients >= 0", name=op.f("ck_clickstream_rollup_client_gaps_clients")),
        sa.PrimaryKeyConstraint(
            "login_filter", "day", "previous_day", name=op.f("pk_clickstream_rollup_client_gaps")
        ),
        comment="Dashboard rollup derived from clickstream_rollup_clients: unique clients over "
        "any range of days from at most one row per pair of days, whatever the traffic.",
    )


def downgrade() -> None:
    """Unapply: drop clickstream_dashboard() and the rollup tables.

    The rollups are lost (upgrading again refills them from the rows); no event is touched.
    """
    op.execute(sa.text("DROP FUNCTION clickstream_dashboard(date, date, text)"))
    op.drop_table("clickstream_rollup_client_gaps")
    op.drop_index(
        op.f("ix_clickstream_rollup_clients_day"), table_name="clickstream_rollup_clients"
    )
    op.drop_table("clickstream_rollup_clients")
    op.drop_table("clickstream_rollup_products")
    op.drop_table("clickstream_rollup_events")
