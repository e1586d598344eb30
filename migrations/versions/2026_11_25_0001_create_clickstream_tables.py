"""Create the clickstream tables: clickstream_events and clickstream_ingest_meta.

What changes:
- clickstream_events: one row per clickstream event, keyed by event_id (a deterministic UUID,
  so reloading an hour inserts nothing twice), with the tracker's fields as typed columns and
  everything else in `properties` (jsonb).
- clickstream_ingest_meta: one row per event, same key, with where and how it arrived (the
  `_ingest` block, the S3 bucket/key/LastModified, a payload hash). Its foreign key cascades,
  so deleting an event deletes its metadata.
- Four indexes on clickstream_events and one on clickstream_ingest_meta; each says below why.
- A comment on both tables and on every column: `\\d+` in psql is the data dictionary.

Why: this is the warehouse schema the hourly loader writes to (issue 3, section 3). Indexed text
columns are capped by the loader at 256 characters (1 KiB of UTF-8), well under PostgreSQL's
btree tuple limit (~2.7 kB), so no event can fail an index insert for being too long.

Locks: both tables are new and empty; nothing else is touched.

Adopting the original ETL's warehouse (issue 11): where `clickstream_events` already exists (the
original ETL's `ensureTableExists` made it, and there is no alembic_version), this revision leaves
that table and its rows alone and creates only clickstream_ingest_meta (its foreign key takes a
SHARE ROW EXCLUSIVE lock on clickstream_events for an instant: the new table is empty).
0003_adopt_original_etl_table then aligns the table. Online the catalog decides; offline there
is no catalog, so a DBA rendering SQL for such a warehouse says so with
`alembic -x adopt_original_etl=true upgrade head --sql`. A `clickstream_events` without the
original ETL's columns or with another primary key is refused, naming what is missing.

Downgrade drops both tables. Every loaded event is lost; reload the hours from S3 afterwards.

Squawk waivers:
- prefer-text-field: fires on `alembic_version.version_num VARCHAR(32)` only, the bookkeeping
  table Alembic itself creates in this revision's SQL. Alembic owns that table's shape and never
  resizes it; every table this project creates uses TEXT.

Revision ID: 0001_clickstream_tables
Revises:
Create Date: 2026-11-25 22:40:45 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

# Revision identifiers, used by Alembic. Revisions import only alembic and sqlalchemy: never
# `loader`, so a later change to the application cannot change what this revision does.
revision: str = "0001_clickstream_tables"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


#: The columns of the original ETL's `CREATE TABLE IF NOT EXISTS clickstream_events`.
ORIGINAL_ETL_COLUMNS = frozenset(
    {
        "event_id",
        "event_timestamp",
        "event_name",
        "user_id",
        "user_login_state",
        "identity_source",
        "client_id",
        "session_id",
        "is_first_visit",
        "context_product_id",
        "context_product_name",
        "context_product_category",
        "context_product_brand",
        "context_product_price",
        "context_product_discount_price",
        "context_product_url_path",
    }
)


def _original_etl_table_present() -> bool:
    """True where clickstream_events already exists and is the original ETL's table to adopt."""
    if context.is_offline_mode():
        flag = context.get_x_argument(as_dictionary=True).get("adopt_original_etl", "false")
        if flag.lower() not in ("true", "false"):
            raise ValueError(f"-x adopt_original_etl must be true or false, got {flag!r}")
        return flag.lower() == "true"
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("clickstream_events"):
        return False
    columns = {c["name"] for c in inspector.get_columns("clickstream_events")}
    missing = ORIGINAL_ETL_COLUMNS - columns
    primary_key = inspector.get_pk_constraint("clickstream_events")["constrained_columns"]
    if missing or primary_key != ["event_id"]:
        raise RuntimeError(
            "clickstream_events exists but is not the original ETL's table (missing columns: "
            f"{sorted(missing)}, primary key: {primary_key}); refusing to adopt it"
        )
    return True


def upgrade() -> None:
    """Apply: create clickstream_events and clickstream_ingest_meta with their indexes."""
    if not _original_etl_table_present():
        _create_clickstream_events()
    _create_clickstream_ingest_meta()


def _create_clickstream_events() -> None:
    op.create_table(
        "clickstream_events",
        sa.Column(
            "event_id",
            postgresql.UUID(as_uuid=True),
            nullable=False,
            comment="Event identifier: the tracker's id, the UUID in the S3 key, or a uuid5 "
            "derived from the key and record position. Never random, so reruns deduplicate.",
        ),
        sa.Column(
            "event_name",
            sa.Text(),
            nullable=False,
            comment="Event type: page_view, click, custom, ...",
        ),
        sa.Column(
            "event_timestamp",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="When the event happened, as best known: _ingest.receivedAt, else the "
            "payload timestamp, else the S3 object's LastModified.",
        ),
        sa.Column(
            "client_timestamp",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="The payload's own timestamp (client clock), when it parses to a sane instant.",
        ),
        sa.Column(
            "page_url", sa.Text(), nullable=True, comment="pageUrl: the page the event happened on."
        ),
        sa.Column(
            "referrer",
            sa.Text(),
            nullable=True,
            comment="referrer: the page that linked to page_url.",
        ),
        sa.Column(
            "user_id",
            sa.Text(),
            nullable=True,
            comment="userId: the logged-in user, NULL when anonymous.",
        ),
        sa.Column(
            "user_login_state",
            sa.Text(),
            nullable=True,
            comment="userLoginState, e.g. anonymous / logged_in.",
        ),
        sa.Column(
            "identity_source",
            sa.Text(),
            nullable=True,
            comment="identity_source: the identity provider, if sent.",
        ),
        sa.Column(
            "client_id",
            sa.Text(),
            nullable=True,
            comment="clientId: the browser's persistent tracker id.",
        ),
        sa.Column(
            "session_id", sa.Text(), nullable=True, comment="sessionId: the tracker's session id."
        ),
        sa.Column(
            "is_first_visit",
            sa.Boolean(),
            nullable=True,
            comment="isFirstVisit; NULL when absent or not a boolean.",
        ),
        sa.Column("context_product_id", sa.Text(), nullable=True, comment="product.id"),
        sa.Column("context_product_name", sa.Text(), nullable=True, comment="product.name"),
        sa.Column("context_product_category", sa.Text(), nullable=True, comment="product.category"),
        sa.Column("context_product_brand", sa.Text(), nullable=True, comment="product.brand"),
        sa.Column(
            "context_product_price",
            sa.Numeric(),
            nullable=True,
            comment="product.price as sent (no currency conversion); NULL when not a finite "
            "number.",
        ),
        sa.Column(
            "context_product_discount_price",
            sa.Numeric(),
            nullable=True,
            comment="product.discountPrice as sent; NULL when not a finite number.",
        ),
        sa.Column("context_product_url_path", sa.Text(), nullable=True, comment="product.urlPath"),
        sa.Column(
            "element",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=True,
            comment="Click metadata: element {tag, id, role, text, dataset}.",
        ),
        sa.Column(
            "properties",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=True,
            comment="Every payload field not mapped to a column, so nothing the tracker sends "
            "is lost.",
        ),
        sa.Column(
            "loaded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When the loader inserted this row (transaction time).",
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_clickstream_events")),
        comment="One row per clickstream event, loaded hourly from S3 by clickstream-loader.",
    )

    # BRIN, not btree: events are appended roughly in time order, so event_timestamp follows
    # the physical row order and a BRIN index (min/max per 128-page block range) is a few
    # pages where a btree would be as large as the column. Dashboards scan hours and days,
    # which is exactly what BRIN serves. Late events and backfills of old hours loosen the
    # correlation for the ranges they land in: results stay correct, those ranges are just
    # scanned more. Point lookups by time are not a query this table is used for.
    op.create_index(
        op.f("ix_clickstream_events_event_timestamp"),
        "clickstream_events",
        ["event_timestamp"],
        unique=False,
        postgresql_using="brin",
    )
    # One session's events in order: funnel and session-replay queries.
    op.create_index(
        op.f("ix_clickstream_events_session_id_event_timestamp"),
        "clickstream_events",
        ["session_id", "event_timestamp"],
        unique=False,
    )
    # One user's history in order. Partial: most traffic is anonymous (user_id NULL), and those
    # rows would only bloat an index no query uses them through.
    op.create_index(
        op.f("ix_clickstream_events_user_id_event_timestamp"),
        "clickstream_events",
        ["user_id", "event_timestamp"],
        unique=False,
        postgresql_where=sa.text("user_id IS NOT NULL"),
    )
    # "How many add_to_cart per hour": one event type over a time range.
    op.create_index(
        op.f("ix_clickstream_events_event_name_event_timestamp"),
        "clickstream_events",
        ["event_name", "event_timestamp"],
        unique=False,
    )


def _create_clickstream_ingest_meta() -> None:
    op.create_table(
        "clickstream_ingest_meta",
        sa.Column(
            "event_id",
            postgresql.UUID(as_uuid=True),
            nullable=False,
            comment="The event this metadata belongs to (clickstream_events.event_id).",
        ),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), nullable=True, comment="_ingest.receivedAt"
        ),
        sa.Column(
            "source_ip",
            postgresql.INET(),
            nullable=True,
            comment="_ingest.sourceIp; NULL when not a valid IP address.",
        ),
        sa.Column("user_agent", sa.Text(), nullable=True, comment="_ingest.userAgent"),
        sa.Column("path", sa.Text(), nullable=True, comment="_ingest.path: the ingest API path."),
        sa.Column(
            "request_id",
            sa.Text(),
            nullable=True,
            comment="_ingest.requestId: the ingest API request id.",
        ),
        sa.Column("api_id", sa.Text(), nullable=True, comment="_ingest.apiId"),
        sa.Column("stage", sa.Text(), nullable=True, comment="_ingest.stage"),
        sa.Column("trace_id", sa.Text(), nullable=True, comment="_ingest.traceId (X-Ray)."),
        sa.Column("s3_bucket", sa.Text(), nullable=True, comment="Bucket the event was read from."),
        # Collation "C": S3 keys sort bytewise, and a "C" btree serves `s3_key LIKE 'prefix%'`.
        sa.Column(
            "s3_key",
            sa.Text(collation="C"),
            nullable=False,
            comment="Object key the event was read from.",
        ),
        sa.Column(
            "s3_last_modified",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="The object's LastModified.",
        ),
        sa.Column(
            "ingest_metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=True,
            comment="The whole _ingest block as received (sanitised), so nothing is lost.",
        ),
        sa.Column(
            "payload_sha256",
            sa.LargeBinary(),
            nullable=True,
            comment="SHA-256 of the canonical event payload: tells an exact repeat from a "
            "conflicting duplicate with the same event_id.",
        ),
        sa.Column(
            "loaded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When the loader inserted this row (transaction time).",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["clickstream_events.event_id"],
            name=op.f("fk_clickstream_ingest_meta_event_id_clickstream_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_clickstream_ingest_meta")),
        comment="Ingest and lineage metadata per event: where and how it arrived.",
    )

    # Reconciliation asks "which keys of this hour are loaded": a prefix scan on s3_key
    # (`LIKE 'events/2026/11/24/13/%'`), which this "C"-collated btree serves.
    op.create_index(
        op.f("ix_clickstream_ingest_meta_s3_key"),
        "clickstream_ingest_meta",
        ["s3_key"],
        unique=False,
    )


def downgrade() -> None:
    """Unapply: drop clickstream_ingest_meta and clickstream_events (and their indexes).

    Every loaded event and its metadata is lost; reload the hours from S3 after upgrading again.
    """
    # ingest_meta first: its foreign key references clickstream_events.
    op.drop_table("clickstream_ingest_meta")
    op.drop_table("clickstream_events")
