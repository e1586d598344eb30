"""Adopt the original ETL's clickstream_events in place, record what was adopted, comment it.

What changes:
- clickstream_events, where the original ETL created it (0001 left it alone): the five columns
  it lacks (client_timestamp, page_url, referrer, element, properties) and loaded_at are added;
  context_product_price and context_product_discount_price go from BIGINT to numeric (every
  value is kept exactly); its primary key `clickstream_events_pkey` is renamed to our naming
  convention's `pk_clickstream_events`; the four indexes 0001 creates on a fresh warehouse are
  built. Every row and every event_id survives, random ids included.
- Every column of clickstream_events gets the comment that says what it holds on real data
  (the tracker's event names, discountPrice being a percent, category_view's URL slug in
  context_product_id/category, client_timestamp and identity_source NULL because the tracker
  sends neither). On a fresh warehouse this is the only change to clickstream_events.
- clickstream_adoptions: one row per adopted table (how many rows, their first and last
  event_timestamp), none on a warehouse that started empty. The loader reads it once per
  process to know when an event without a payload id may duplicate a row the original ETL
  stored under a random id.

Why: DBAs point `alembic upgrade head` at the warehouse the original ETL has been filling
(issue 11). Every statement here is idempotent (ADD COLUMN IF NOT EXISTS, a type change guarded
by the catalog, ALTER INDEX IF EXISTS, CREATE INDEX IF NOT EXISTS, COMMENT ON), so the same SQL
serves a fresh warehouse and an adopted one, online and rendered offline.

Adopted rows are the rows of clickstream_events without a clickstream_ingest_meta row. They are
recorded only while clickstream_ingest_meta is still empty (0001 has just created it for an
adopted table): on a warehouse the loader has been filling the recording is skipped without
reading clickstream_events.

Locks and cost, on an adopted table (bench/adoption.py, bench/results/adoption.md: 1,000,000
original-ETL rows, 250 MB; embedded PostgreSQL 18, default settings incl. maintenance_work_mem
64 MB; a shared 2-CPU machine; median of 3 runs, range in brackets):
- The first ALTER TABLE takes ACCESS EXCLUSIVE on clickstream_events, and the revision is one
  transaction, so every reader (the dashboard) and writer waits until it commits: 18 s per
  million rows for the whole revision [13-19 s]; a reader probe was blocked 18 s [12-18 s].
- Of that, the BIGINT -> numeric change rewrites the table and its primary key: 5.4 s per
  million rows [4.8-7.1 s], with disk for a second copy of the table while it runs. Adding the
  columns is catalog-only (loaded_at's now() default is stored once, not written per row).
- The four index builds take 10.5 s per million rows [6.7-12.3 s]. Alone they
  would need only SHARE (reads allowed, writes blocked); here they run under the ACCESS
  EXCLUSIVE already held.
- Recording the adoption reads the table once: 0.4 s per million rows [0.3-0.6 s].
- Table and indexes grew from 250 MB to 374 MB. Not linear: 250,000 rows took 2.3 s in all.
On a fresh warehouse nothing is rewritten or built: the ALTER TABLEs take ACCESS EXCLUSIVE for
an instant and change nothing but comments.

Downgrade drops clickstream_adoptions and puts back 0001's comments. It refuses on an adopted
warehouse: the loader needs that record to avoid duplicating the original ETL's rows, and the
original table cannot be given back (restore the backup taken before the adoption instead).
The columns, types and indexes are 0001's on a fresh warehouse, so there is nothing to undo.

Squawk waivers:
- renaming-object: renames only the primary key index PostgreSQL named for the original ETL
  (`clickstream_events_pkey`, IF EXISTS: a no-op on a fresh warehouse) to the naming convention's
  `pk_clickstream_events`, so later revisions can address it by name. No client refers to the
  name of a primary key's index.
- require-concurrent-index-creation: the indexes are built only on an adopted table, in the
  transaction that has just rewritten it and already holds ACCESS EXCLUSIVE, so CONCURRENTLY would
  spare no reader or writer; it also cannot run in a transaction, and a failed concurrent build
  leaves an INVALID index that IF NOT EXISTS would then keep. On a fresh warehouse they exist.
  (squawk does not read the DO block: the type change there is the deliberate rewrite above.)

Revision ID: 0003_adopt_original_etl_table
Revises: 0002_load_ledger
Create Date: 2026-12-01 10:00:00 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Revision identifiers, used by Alembic. Revisions import only alembic and sqlalchemy: never
# `loader`, so a later change to the application cannot change what this revision does.
revision: str = "0003_adopt_original_etl_table"
down_revision: str | Sequence[str] | None = "0002_load_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not loader-compatible: a loader built for 0002 would load into the adopted table, but it does
# not take out the derived-id events that duplicate the original ETL's rows.
loader_compatible = False

EVENTS = "clickstream_events"
ADOPTIONS = "clickstream_adoptions"


def _added_columns() -> list[sa.Column]:
    """What 0001 gives a fresh clickstream_events and the original ETL's table lacks."""
    return [
        sa.Column("client_timestamp", sa.DateTime(timezone=True), nullable=True),
        sa.Column("page_url", sa.Text(), nullable=True),
        sa.Column("referrer", sa.Text(), nullable=True),
        sa.Column("element", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("properties", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        # now() is stable, not volatile: PostgreSQL stores it once in the catalog instead of
        # rewriting the table, and every adopted row reads the adoption's transaction time.
        sa.Column(
            "loaded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    ]


# The catalog decides, so a fresh warehouse (already numeric) is neither locked for a rewrite
# nor rewritten. Both columns in one ALTER TABLE: one rewrite, not two.
_PRICES_TO_NUMERIC = """\
DO $$
BEGIN
  IF EXISTS (
    SELECT 1 FROM pg_attribute
    WHERE attrelid = 'clickstream_events'::regclass
      AND attname IN ('context_product_price', 'context_product_discount_price')
      AND atttypid = 'bigint'::regtype
      AND NOT attisdropped
  ) THEN
    ALTER TABLE clickstream_events
      ALTER COLUMN context_product_price TYPE numeric,
      ALTER COLUMN context_product_discount_price TYPE numeric;
  END IF;
END
$$"""

# PostgreSQL named the original ETL's primary key; renaming its index renames the constraint.
_PRIMARY_KEY_TO_CONVENTION = (
    "ALTER INDEX IF EXISTS clickstream_events_pkey RENAME TO pk_clickstream_events"
)

_REFUSE_ON_ADOPTED = """\
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM clickstream_adoptions) THEN
    RAISE EXCEPTION 'clickstream_events was adopted from the original ETL '
      '(clickstream_adoptions has a row): downgrading would lose the record the loader needs '
      'to avoid duplicating its rows; restore the backup taken before the adoption instead';
  END IF;
END
$$"""

TABLE_COMMENT = (
    "One row per clickstream event, loaded hourly from S3 by clickstream-loader. On an adopted "
    "warehouse also the rows the original ETL wrote: those have no clickstream_ingest_meta row "
    "(see clickstream_adoptions)."
)
PREVIOUS_TABLE_COMMENT = (
    "One row per clickstream event, loaded hourly from S3 by clickstream-loader."
)

#: Every column's comment: what it holds on real data. Comments only; no value is changed.
COMMENTS: dict[str, str] = {
    "event_id": "Event identifier: the payload's event id (a UUID as is, any other id as a "
    "uuid5 of it), else the UUID in the S3 key, else a uuid5 of key and record position. Never "
    "random, so reruns deduplicate. Rows adopted from the original ETL keep its ids, random "
    "where the event had none.",
    "event_name": "The tracker's event name, free text, stored as sent and never checked "
    "against a list. The real tracker sends page_view, click, home_view, category_view, "
    "product_view, add_to_cart_click, remove_from_cart_click, wishlist_toggle, checkout_start "
    "and checkout_complete. Adopted rows may read 'unknown': the original ETL stored that for "
    "events without a name, which the loader reports as invalid instead.",
    "event_timestamp": "When the event happened, as best known: _ingest.receivedAt, else the "
    "payload timestamp, else the S3 object's LastModified. The real tracker sends no "
    "timestamp, so on real data this is the time the ingest Lambda received the event, as in "
    "the original ETL.",
    "client_timestamp": "The payload's own timestamp (client clock), when it parses to a sane "
    "instant. NULL on real data: the tracker sends none.",
    "page_url": "pageUrl: the page the event happened on (the browser's full URL, query "
    "included). NULL on adopted rows: the original ETL did not keep it.",
    "referrer": "referrer: the referrer of the page load, unchanged across in-app navigation; "
    "NULL when there is none, and on adopted rows.",
    "user_id": "userId: the signed-in user; NULL when anonymous (the tracker sends null or "
    "leaves it out).",
    "user_login_state": "userLoginState: logged_in or anonymous on real data.",
    "identity_source": "identity_source: the identity provider, if sent. NULL on real data: the "
    "tracker sends none.",
    "client_id": "clientId: the browser's persistent tracker id.",
    "session_id": "sessionId: the tracker's session id.",
    "is_first_visit": "isFirstVisit; NULL when absent or not a boolean.",
    "context_product_id": "product.id: the product's id. On category_view the tracker sends the "
    "category's URL slug here (and in context_product_category), not a product.",
    "context_product_name": "product.name",
    "context_product_category": "product.category. On category_view the category's URL slug.",
    "context_product_brand": "product.brand",
    "context_product_price": "product.price as sent (no currency conversion); NULL when not a "
    "finite number.",
    "context_product_discount_price": "product.discountPrice as sent: today the tracker sends "
    "the discount as a percent (0 for none), not a price. NULL when not a finite number.",
    "context_product_url_path": "product.urlPath",
    "element": "element as sent: {tag, id, role, text, dataset} on click ({} for an SVG icon), "
    "{dataset} on wishlist_toggle and the checkout events; dataset values are strings.",
    "properties": "Every payload field not mapped to a column, so nothing the tracker sends is "
    "lost. NULL on adopted rows: the original ETL kept no other field.",
    "loaded_at": "When the loader inserted this row (transaction time); on adopted rows, when "
    "the adoption ran.",
}

#: 0001's comment of every column whose comment changes above (put back by the downgrade).
PREVIOUS_COMMENTS: dict[str, str] = {
    "event_id": "Event identifier: the tracker's id, the UUID in the S3 key, or a uuid5 "
    "derived from the key and record position. Never random, so reruns deduplicate.",
    "event_name": "Event type: page_view, click, custom, ...",
    "event_timestamp": "When the event happened, as best known: _ingest.receivedAt, else the "
    "payload timestamp, else the S3 object's LastModified.",
    "client_timestamp": "The payload's own timestamp (client clock), when it parses to a sane "
    "instant.",
    "page_url": "pageUrl: the page the event happened on.",
    "referrer": "referrer: the page that linked to page_url.",
    "user_id": "userId: the logged-in user, NULL when anonymous.",
    "user_login_state": "userLoginState, e.g. anonymous / logged_in.",
    "identity_source": "identity_source: the identity provider, if sent.",
    "context_product_id": "product.id",
    "context_product_category": "product.category",
    "context_product_discount_price": "product.discountPrice as sent; NULL when not a finite "
    "number.",
    "element": "Click metadata: element {tag, id, role, text, dataset}.",
    "properties": "Every payload field not mapped to a column, so nothing the tracker sends is "
    "lost.",
    "loaded_at": "When the loader inserted this row (transaction time).",
}


def _create_indexes() -> None:
    """0001's four indexes, built where the original ETL's table had none (after the rewrite,
    which would otherwise rebuild them)."""
    op.create_index(
        op.f("ix_clickstream_events_event_timestamp"),
        EVENTS,
        ["event_timestamp"],
        unique=False,
        postgresql_using="brin",
        if_not_exists=True,
    )
    op.create_index(
        op.f("ix_clickstream_events_session_id_event_timestamp"),
        EVENTS,
        ["session_id", "event_timestamp"],
        unique=False,
        if_not_exists=True,
    )
    op.create_index(
        op.f("ix_clickstream_events_user_id_event_timestamp"),
        EVENTS,
        ["user_id", "event_timestamp"],
        unique=False,
        postgresql_where=sa.text("user_id IS NOT NULL"),
        if_not_exists=True,
    )
    op.create_index(
        op.f("ix_clickstream_events_event_name_event_timestamp"),
        EVENTS,
        ["event_name", "event_timestamp"],
        unique=False,
        if_not_exists=True,
    )


def _record_adoption() -> None:
    """One row describing the adopted rows, written only while clickstream_ingest_meta is empty
    (the uncorrelated NOT EXISTS is evaluated once: a filled warehouse is not scanned)."""
    events = sa.table(EVENTS, sa.column("event_timestamp"))
    meta = sa.table("clickstream_ingest_meta", sa.column("event_id"))
    adoptions = sa.table(
        ADOPTIONS,
        sa.column("table_name"),
        sa.column("revision"),
        sa.column("adopted_rows"),
        sa.column("first_event_at"),
        sa.column("last_event_at"),
    )
    adopted = (
        sa.select(
            sa.literal(EVENTS),
            sa.literal(revision),
            sa.func.count(),
            sa.func.min(events.c.event_timestamp),
            sa.func.max(events.c.event_timestamp),
        )
        .where(~sa.exists(sa.select(meta.c.event_id)))
        .having(sa.func.count() > 0)
    )
    op.execute(
        adoptions.insert().from_select(
            ["table_name", "revision", "adopted_rows", "first_event_at", "last_event_at"],
            adopted,
        )
    )


def upgrade() -> None:
    """Apply: align clickstream_events with the schema (a no-op but for comments on a fresh
    warehouse), create clickstream_adoptions and record what was adopted."""
    for column in _added_columns():
        op.add_column(EVENTS, column, if_not_exists=True)
    op.execute(_PRICES_TO_NUMERIC)
    op.execute(_PRIMARY_KEY_TO_CONVENTION)
    _create_indexes()
    op.create_table_comment(EVENTS, TABLE_COMMENT)
    for name, comment in COMMENTS.items():
        op.alter_column(EVENTS, name, comment=comment)

    op.create_table(
        ADOPTIONS,
        sa.Column(
            "table_name",
            sa.Text(),
            nullable=False,
            comment="The table adopted: clickstream_events as the original ETL created it.",
        ),
        sa.Column(
            "revision",
            sa.Text(),
            nullable=False,
            comment="The Alembic revision that adopted it.",
        ),
        sa.Column(
            "adopted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When the adoption ran; also the loaded_at of every adopted row.",
        ),
        sa.Column(
            "adopted_rows",
            sa.BigInteger(),
            nullable=False,
            comment="Rows the original ETL had written, all kept with their ids.",
        ),
        sa.Column(
            "first_event_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="Earliest event_timestamp of an adopted row.",
        ),
        sa.Column(
            "last_event_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="Latest event_timestamp of an adopted row.",
        ),
        sa.PrimaryKeyConstraint("table_name", name=op.f("pk_clickstream_adoptions")),
        comment="What alembic upgrade adopted from the original ETL; no row on a warehouse that "
        "started empty. The loader reads it once per process: an event without a payload id "
        "whose event_timestamp is in [first_event_at, last_event_at] and that matches an "
        "adopted row (no clickstream_ingest_meta row; same event_timestamp, client_id, "
        "session_id and event_name) is a duplicate, not inserted.",
    )
    _record_adoption()


def downgrade() -> None:
    """Unapply: drop clickstream_adoptions and put back 0001's comments on clickstream_events.

    Refuses on an adopted warehouse (clickstream_adoptions has a row); see the module docstring.
    """
    op.execute(_REFUSE_ON_ADOPTED)
    op.drop_table(ADOPTIONS)
    op.create_table_comment(EVENTS, PREVIOUS_TABLE_COMMENT)
    for name, comment in PREVIOUS_COMMENTS.items():
        op.alter_column(EVENTS, name, comment=comment)
