"""The warehouse tables, as SQLAlchemy Core objects: the single source of truth for columns.

Alembic revisions own the DDL (a DBA reviews them); this module describes the head state so the
loader builds its statements from it and `alembic check` / pytest-alembic can prove the two agree.
Every column carries a comment: `\\d+` in psql is the data dictionary. The text caps the
loader truncates to live with the transform (loader/transform/fields.py).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy import or_ as sa_or
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB, UUID

#: Frozen with the first revision: later revisions rely on these names to alter what earlier
#: ones created. Never change it.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

#: Every Alembic revision id in migrations/versions, oldest first: the revisions this code knows.
#: The loader checks the warehouse against these (loader.load.revision.check_revision) without
#: reading the revision files, so neither Alembic nor migrations/ ships with it. A new revision
#: fails tests/unit/test_revision_constants.py until its id is appended here.
KNOWN_REVISIONS: Final = (
    "0001_clickstream_tables",
    "0002_load_ledger",
    "0003_adopt_original_etl_table",
    "0004_object_completion",
    "0005_event_trigger",
    "0006_partition_by_day",
    "0007_erasure",
    "0008_dashboard_rollups",
)
#: The revision these tables describe: the head the loader loads into.
HEAD_REVISION: Final = KNOWN_REVISIONS[-1]

EVENTS_TABLE: Final = "clickstream_events"
INGEST_META_TABLE: Final = "clickstream_ingest_meta"
LOAD_RUNS_TABLE: Final = "clickstream_load_runs"
QUARANTINE_TABLE: Final = "clickstream_quarantine"
ADOPTIONS_TABLE: Final = "clickstream_adoptions"
LOADED_OBJECTS_TABLE: Final = "clickstream_loaded_objects"
CLAIMS_TABLE: Final = "clickstream_event_claims"
RETENTION_TABLE: Final = "clickstream_retention"

#: The tables split into one partition per UTC day (revision 0006), each on its time column.
#: `clickstream_ensure_partitions(first_day, last_day)` makes a day's partition of every one.
DAY_PARTITIONED: Final = {
    "clickstream_events": "event_timestamp",
    "clickstream_ingest_meta": "event_timestamp",
    "clickstream_event_claims": "window_start",
    "clickstream_loaded_objects": "hour",
}
#: The SECURITY DEFINER function revision 0006 creates: the loader's only way to make a
#: partition (it needs no DDL right of its own; revoking EXECUTE turns it off).
ENSURE_PARTITIONS_FUNCTION: Final = "clickstream_ensure_partitions"
#: Dedup windows (clickstream_event_claims): two grids of windows this long, offset by half of
#: it. Two copies of an event received less than half a window apart share a window of one grid.
CLAIM_WINDOW_HOURS: Final = 2
ERASURE_REQUESTS_TABLE: Final = "clickstream_erasure_requests"
SUPPRESSIONS_TABLE: Final = "clickstream_suppressions"

ROLLUP_EVENTS_TABLE: Final = "clickstream_rollup_events"
ROLLUP_PRODUCTS_TABLE: Final = "clickstream_rollup_products"
ROLLUP_CLIENTS_TABLE: Final = "clickstream_rollup_clients"
ROLLUP_CLIENT_GAPS_TABLE: Final = "clickstream_rollup_client_gaps"

# Python None means SQL NULL in jsonb columns (not the JSON value `null`), so `IS NULL` works.
JSON_OR_NULL: Final = JSONB(none_as_null=True)

# S3 keys sort bytewise; the "C" collation makes the btree index serve both
# `s3_key LIKE 'events/2026/11/24/13/%'` and range scans in S3's own order.
S3_KEY_TYPE: Final = Text(collation="C")

clickstream_events = Table(
    EVENTS_TABLE,
    metadata,
    Column(
        "event_id",
        UUID(as_uuid=True),
        nullable=False,
        comment="Event identifier: the payload's event id (a UUID as is, any other id as a uuid5 "
        "of it), else the UUID in the S3 key, else a uuid5 of key and record position. Never "
        "random, so reruns deduplicate. Rows adopted from the original ETL keep its ids, random "
        "where the event had none.",
    ),
    Column(
        "event_name",
        Text,
        nullable=False,
        comment="The tracker's event name, free text, stored as sent and never checked against "
        "a list. The real tracker sends page_view, click, home_view, category_view, "
        "product_view, add_to_cart_click, remove_from_cart_click, wishlist_toggle, "
        "checkout_start and checkout_complete. Adopted rows may read 'unknown': the original "
        "ETL stored that for events without a name, which the loader reports as invalid "
        "instead.",
    ),
    Column(
        "event_timestamp",
        DateTime(timezone=True),
        nullable=False,
        comment="When the event happened, as best known: _ingest.receivedAt, else the payload "
        "timestamp, else the S3 object's LastModified. The real tracker sends no timestamp, so "
        "on real data this is the time the ingest Lambda received the event, as in the original "
        "ETL.",
    ),
    Column(
        "client_timestamp",
        DateTime(timezone=True),
        comment="The payload's own timestamp (client clock), when it parses to a sane instant. "
        "NULL on real data: the tracker sends none.",
    ),
    Column(
        "page_url",
        Text,
        comment="pageUrl: the page the event happened on (the browser's full URL, query "
        "included). NULL on adopted rows: the original ETL did not keep it.",
    ),
    Column(
        "referrer",
        Text,
        comment="referrer: the referrer of the page load, unchanged across in-app navigation; "
        "NULL when there is none, and on adopted rows.",
    ),
    Column(
        "user_id",
        Text,
        comment="userId: the signed-in user; NULL when anonymous (the tracker sends null or "
        "leaves it out).",
    ),
    Column(
        "user_login_state", Text, comment="userLoginState: logged_in or anonymous on real data."
    ),
    Column(
        "identity_source",
        Text,
        comment="identity_source: the identity provider, if sent. NULL on real data: the "
        "tracker sends none.",
    ),
    Column("client_id", Text, comment="clientId: the browser's persistent tracker id."),
    Column("session_id", Text, comment="sessionId: the tracker's session id."),
    Column("is_first_visit", Boolean, comment="isFirstVisit; NULL when absent or not a boolean."),
    Column(
        "context_product_id",
        Text,
        comment="product.id: the product's id. On category_view the tracker sends the "
        "category's URL slug here (and in context_product_category), not a product.",
    ),
    Column("context_product_name", Text, comment="product.name"),
    Column(
        "context_product_category",
        Text,
        comment="product.category. On category_view the category's URL slug.",
    ),
    Column("context_product_brand", Text, comment="product.brand"),
    Column(
        "context_product_price",
        Numeric,
        comment="product.price as sent (no currency conversion); NULL when not a finite number.",
    ),
    Column(
        "context_product_discount_price",
        Numeric,
        comment="product.discountPrice as sent: today the tracker sends the discount as a "
        "percent (0 for none), not a price. NULL when not a finite number.",
    ),
    Column("context_product_url_path", Text, comment="product.urlPath"),
    Column(
        "element",
        JSON_OR_NULL,
        comment="element as sent: {tag, id, role, text, dataset} on click ({} for an SVG icon), "
        "{dataset} on wishlist_toggle and the checkout events; dataset values are strings.",
    ),
    Column(
        "properties",
        JSON_OR_NULL,
        comment="Every payload field not mapped to a column, so nothing the tracker sends is "
        "lost. NULL on adopted rows: the original ETL kept no other field.",
    ),
    Column(
        "loaded_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.now(),
        comment="When the loader inserted this row (transaction time); on adopted rows, when "
        "the adoption ran.",
    ),
    PrimaryKeyConstraint("event_timestamp", "event_id"),
    comment="One row per clickstream event, loaded hourly from S3 by clickstream-loader. On an "
    "adopted warehouse also the rows the original ETL wrote: those have no "
    "clickstream_ingest_meta row (see clickstream_adoptions). Partitioned by UTC day of "
    "event_timestamp (clickstream_events_pYYYYMMDD; _legacy: the rows before revision 0006). "
    "One row per event_id is kept by clickstream_event_claims.",
    postgresql_partition_by="RANGE (event_timestamp)",
)

# Every index here is per partition (one UTC day). The primary key (event_timestamp, event_id)
# follows time: an hour's inserts append to the right edge of its day's index, whatever the
# table's size, and it serves time ranges, so no BRIN is needed. Indexes led by a random value
# (user_id, client_id) cost a full-page write per page an hour touches after each checkpoint;
# only those erasure needs are kept (docs/scaling.md has the measurements).

# Erasure (`clickstream-loader erase`): one user's events. Partial: anonymous rows carry no
# user_id and no query finds them through it.
Index(
    "ix_clickstream_events_user_id_event_timestamp",
    clickstream_events.c.user_id,
    clickstream_events.c.event_timestamp,
    postgresql_where=clickstream_events.c.user_id.isnot(None),
)
# Erasure: the anonymous events of a browser (client_id) seen with an erased user.
Index("ix_clickstream_events_client_id", clickstream_events.c.client_id)
# The dashboard's raw-sample page: product rows, newest first (queries.sql Q10).
Index(
    "ix_clickstream_events_product_rows",
    clickstream_events.c.event_timestamp,
    postgresql_where=sa_or(
        clickstream_events.c.context_product_id.isnot(None),
        clickstream_events.c.context_product_name.isnot(None),
    ),
)

clickstream_ingest_meta = Table(
    INGEST_META_TABLE,
    metadata,
    Column(
        "event_id",
        UUID(as_uuid=True),
        nullable=False,
        comment="The event this metadata belongs to (clickstream_events.event_id).",
    ),
    Column(
        "event_timestamp",
        DateTime(timezone=True),
        nullable=False,
        comment="The event's event_timestamp, copied: the partition key, so an event and its "
        "metadata sit in the same UTC day and retire together.",
    ),
    Column("received_at", DateTime(timezone=True), comment="_ingest.receivedAt"),
    Column("source_ip", INET, comment="_ingest.sourceIp; NULL when not a valid IP address."),
    Column("user_agent", Text, comment="_ingest.userAgent"),
    Column("path", Text, comment="_ingest.path: the ingest API path."),
    Column("request_id", Text, comment="_ingest.requestId: the ingest API request id."),
    Column("api_id", Text, comment="_ingest.apiId"),
    Column("stage", Text, comment="_ingest.stage"),
    Column("trace_id", Text, comment="_ingest.traceId (X-Ray)."),
    Column("s3_bucket", Text, comment="Bucket the event was read from."),
    Column("s3_key", S3_KEY_TYPE, nullable=False, comment="Object key the event was read from."),
    Column("s3_last_modified", DateTime(timezone=True), comment="The object's LastModified."),
    Column(
        "ingest_metadata",
        JSON_OR_NULL,
        comment="The whole _ingest block as received (sanitised), so nothing is lost.",
    ),
    Column(
        "payload_sha256",
        LargeBinary,
        comment="SHA-256 of the canonical event payload: tells an exact repeat from a "
        "conflicting duplicate with the same event_id.",
    ),
    Column(
        "loaded_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.now(),
        comment="When the loader inserted this row (transaction time).",
    ),
    PrimaryKeyConstraint("event_timestamp", "event_id"),
    comment="Ingest and lineage metadata per event: where and how it arrived. Partitioned like "
    "clickstream_events; a row goes when its event is deleted (trigger on clickstream_events).",
    postgresql_partition_by="RANGE (event_timestamp)",
)

# Reconciliation (`check`) asks "which keys of this hour are loaded": a prefix scan.
Index("ix_clickstream_ingest_meta_s3_key", clickstream_ingest_meta.c.s3_key)


class TriggerKind(StrEnum):
    """Why a run ran: the ledger's `trigger`. Whole-hour runs, then those that read some keys."""

    SCHEDULE = "schedule"
    MANUAL = "manual"
    BACKFILL = "backfill"
    REPROCESS = "reprocess"
    LOOKBACK = "lookback"
    EVENT = "event"


class RunState(StrEnum):
    """Where a run is or how it ended: the ledger's `state`."""

    RUNNING = "running"
    COMPLETE = "complete"
    PARTIAL = "partial"
    FAILED = "failed"
    #: Reported only: another run held the hour's lock, so this one wrote no ledger row.
    ALREADY_RUNNING = "already_running"
    #: Reported only: the hour is past the recorded retention; nothing is read or written.
    RETIRED = "retired"


#: Reported only, never in the ledger.
_REPORTED_ONLY: Final = (RunState.ALREADY_RUNNING, RunState.RETIRED)
#: The values the ledger's CHECK constraints allow (the revisions spell the same lists out).
RUN_TRIGGERS: Final = tuple(kind.value for kind in TriggerKind)
RUN_STATES: Final = tuple(state.value for state in RunState if state not in _REPORTED_ONLY)

clickstream_load_runs = Table(
    LOAD_RUNS_TABLE,
    metadata,
    Column("run_id", UUID(as_uuid=True), primary_key=True, comment="One loader run of one hour."),
    Column(
        "hour", DateTime(timezone=True), nullable=False, comment="Start of the UTC hour loaded."
    ),
    Column(
        "trigger",
        Text,
        nullable=False,
        comment="schedule, manual, backfill, lookback: runs that read the whole hour; "
        "reprocess (its quarantined keys) and event (the keys notifications named): runs that "
        "read only some.",
    ),
    Column("shard", Text, comment="Shard 'index/count' when the hour was fanned out, else NULL."),
    Column("started_at", DateTime(timezone=True), nullable=False, comment="Run start."),
    Column(
        "finished_at", DateTime(timezone=True), comment="Run end; NULL while running or killed."
    ),
    Column(
        "state",
        Text,
        nullable=False,
        comment="running, complete (every listed object loaded, quarantined or recorded as "
        "malformed), partial (stopped early; resume_after says where) or failed.",
    ),
    Column(
        "objects_listed", Integer, nullable=False, server_default=text("0"), comment="Keys listed."
    ),
    Column(
        "events_read", Integer, nullable=False, server_default=text("0"), comment="Events parsed."
    ),
    Column(
        "inserted", Integer, nullable=False, server_default=text("0"), comment="New event rows."
    ),
    Column(
        "duplicate_exact",
        Integer,
        nullable=False,
        server_default=text("0"),
        comment="Events already loaded with the same payload (harmless repeats).",
    ),
    Column(
        "duplicate_conflicting",
        Integer,
        nullable=False,
        server_default=text("0"),
        comment="Events whose id was already loaded with a different payload (worth a look).",
    ),
    Column(
        "malformed",
        Integer,
        nullable=False,
        server_default=text("0"),
        comment="Unparseable objects.",
    ),
    Column(
        "invalid",
        Integer,
        nullable=False,
        server_default=text("0"),
        comment="Events skipped as invalid.",
    ),
    Column(
        "quarantined",
        Integer,
        nullable=False,
        server_default=text("0"),
        comment="Events the database rejected, isolated by bisection and quarantined.",
    ),
    Column(
        "sanitised", Integer, nullable=False, server_default=text("0"), comment="Values repaired."
    ),
    Column(
        "suppressed",
        Integer,
        nullable=False,
        server_default=text("0"),
        comment="Events not loaded because the suppression list names them (people erased); "
        "their objects are recorded as loaded.",
    ),
    Column(
        "truncated", Integer, nullable=False, server_default=text("0"), comment="Values truncated."
    ),
    Column(
        "retries", Integer, nullable=False, server_default=text("0"), comment="Transient retries."
    ),
    Column("resume_after", S3_KEY_TYPE, comment="Partial runs: the last key fully written."),
    Column("newest_event_at", DateTime(timezone=True), comment="Newest event_timestamp loaded."),
    Column("loader_version", Text, nullable=False, comment="clickstream-loader version."),
    Column("db_revision", Text, comment="Alembic revision of the DW at run time."),
    Column("error_summary", Text, comment="Failure class and message, scrubbed of row data."),
    CheckConstraint(f"trigger IN {RUN_TRIGGERS!r}", name="trigger"),
    CheckConstraint(f"state IN {RUN_STATES!r}", name="state"),
    comment="The load ledger: one row per loader run per hour, written by the loader.",
)

# `status` and `backfill` read the newest runs of a range of hours.
Index(
    "ix_clickstream_load_runs_hour_started_at",
    clickstream_load_runs.c.hour,
    clickstream_load_runs.c.started_at,
)

clickstream_quarantine = Table(
    QUARANTINE_TABLE,
    metadata,
    Column(
        "quarantine_id",
        BigInteger,
        Identity(always=True),
        primary_key=True,
        comment="Surrogate key.",
    ),
    Column("s3_bucket", Text, nullable=False, comment="Bucket of the object."),
    Column("s3_key", S3_KEY_TYPE, nullable=False, comment="Object that could not (fully) load."),
    Column(
        "position",
        Integer,
        nullable=False,
        comment="Record position in the object (NDJSON line); 0 for object-level problems.",
    ),
    Column("hour", DateTime(timezone=True), nullable=False, comment="UTC hour the key belongs to."),
    Column("event_id", UUID(as_uuid=True), comment="Event id, when one could be derived."),
    Column(
        "reason_code",
        Text,
        nullable=False,
        comment="malformed (not JSON objects), invalid (no usable event_name), "
        "rejected (the database refused the row), fetch_failed (S3 refused the object).",
    ),
    Column("sqlstate", Text, comment="PostgreSQL SQLSTATE for rejected rows."),
    Column("error_text", Text, comment="Why, scrubbed of row data."),
    Column("first_seen_at", DateTime(timezone=True), nullable=False, comment="First failure."),
    Column("last_seen_at", DateTime(timezone=True), nullable=False, comment="Latest failure."),
    Column("attempts", Integer, nullable=False, server_default=text("1"), comment="Failures seen."),
    Column("resolved_at", DateTime(timezone=True), comment="When a reprocess loaded it."),
    UniqueConstraint("s3_key", "position"),
    comment="Objects and events that could not load; `clickstream-loader reprocess` replays them.",
)

# `reprocess` reads an hour's open entries, `status` counts them per hour, and `maintain`
# deletes the hours past retention.
Index("ix_clickstream_quarantine_hour", clickstream_quarantine.c.hour)

# Written once, by the revision that adopts the original ETL's table (0003); read by the loader
# once per process. A warehouse that started empty has no row, and the loader then never looks
# for adopted duplicates at all.
clickstream_adoptions = Table(
    ADOPTIONS_TABLE,
    metadata,
    Column(
        "table_name",
        Text,
        primary_key=True,
        comment="The table adopted: clickstream_events as the original ETL created it.",
    ),
    Column("revision", Text, nullable=False, comment="The Alembic revision that adopted it."),
    Column(
        "adopted_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.now(),
        comment="When the adoption ran; also the loaded_at of every adopted row.",
    ),
    Column(
        "adopted_rows",
        BigInteger,
        nullable=False,
        comment="Rows the original ETL had written, all kept with their ids.",
    ),
    Column(
        "first_event_at",
        DateTime(timezone=True),
        nullable=False,
        comment="Earliest event_timestamp of an adopted row.",
    ),
    Column(
        "last_event_at",
        DateTime(timezone=True),
        nullable=False,
        comment="Latest event_timestamp of an adopted row.",
    ),
    comment="What alembic upgrade adopted from the original ETL; no row on a warehouse that "
    "started empty. The loader reads it once per process: an event without a payload id whose "
    "event_timestamp is in [first_event_at, last_event_at] and that matches an adopted row (no "
    "clickstream_ingest_meta row; same event_timestamp, client_id, session_id and event_name) "
    "is a duplicate, not inserted.",
)
# An object counts as loaded only once all of its events and its quarantine rows are committed:
# the loader writes its row in the transaction of the object's last rows. Rows in the event
# tables alone prove nothing (an object larger than a batch is written in several
# transactions, and a run can die between them).
clickstream_loaded_objects = Table(
    LOADED_OBJECTS_TABLE,
    metadata,
    Column(
        "s3_key",
        S3_KEY_TYPE,
        nullable=False,
        comment="An object whose events and quarantine rows are all committed.",
    ),
    Column("s3_bucket", Text, nullable=False, comment="Bucket of the object."),
    Column(
        "hour",
        DateTime(timezone=True),
        nullable=False,
        comment="UTC hour the key belongs to: the partition key (one partition per UTC day).",
    ),
    Column(
        "events",
        Integer,
        nullable=False,
        comment="Valid events the object held when it completed, new or already loaded "
        "(rows backfilled by revision 0004: its clickstream_ingest_meta rows).",
    ),
    Column(
        "meta_rows",
        Integer,
        nullable=False,
        comment="clickstream_ingest_meta rows naming this key when it completed (an event whose "
        "id another object loaded first stays with that one); `check` reports the key unloaded "
        "once fewer remain.",
    ),
    Column(
        "quarantined",
        Integer,
        nullable=False,
        comment="Records of the object in the quarantine when it completed (malformed, invalid, "
        "rejected or fetch_failed).",
    ),
    Column("s3_last_modified", DateTime(timezone=True), comment="The object's LastModified."),
    Column(
        "run_id",
        UUID(as_uuid=True),
        nullable=False,
        comment="The run that completed it (clickstream_load_runs.run_id; rows backfilled by "
        "revision 0004: the hour's complete run).",
    ),
    Column(
        "completed_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.now(),
        comment="When the transaction that completed it committed (transaction time).",
    ),
    PrimaryKeyConstraint("hour", "s3_key"),
    comment="Objects loaded in full, one row each: lookback, check, status and reprocess read "
    "this, never the mere presence of rows. Partitioned by UTC day of hour.",
    postgresql_partition_by="RANGE (hour)",
)
# The primary key (hour, s3_key) serves `status` (an hour's objects) and every lookup by key:
# a key names its hour.

clickstream_event_claims = Table(
    CLAIMS_TABLE,
    metadata,
    Column(
        "window_start",
        DateTime(timezone=True),
        nullable=False,
        comment="Start of a two-hour dedup window holding the event's event_timestamp. Every "
        "event claims two: one on even UTC hours, one on odd ones.",
    ),
    Column("event_id", UUID(as_uuid=True), nullable=False, comment="The event claimed."),
    Column(
        "event_timestamp",
        DateTime(timezone=True),
        nullable=False,
        comment="event_timestamp of the copy that holds the claim: where its row is.",
    ),
    PrimaryKeyConstraint("window_start", "event_id"),
    comment="One row per event_id, across partitions: each event claims (window_start, "
    "event_id) in two grids of two-hour windows offset by one hour, and only an event that "
    "wins both claims is inserted. Two copies of an event received less than an hour apart "
    "always share a window, so they load once whatever runs at the same time. Partitioned by "
    "UTC day of window_start; rows go with their event (trigger on clickstream_events).",
    postgresql_partition_by="RANGE (window_start)",
)

clickstream_retention = Table(
    RETENTION_TABLE,
    metadata,
    Column(
        "singleton",
        Boolean,
        nullable=False,
        server_default=text("true"),
        comment="Always true: the table holds one row.",
    ),
    Column(
        "keep_days",
        Integer,
        nullable=False,
        comment="Days of events kept: `maintain --keep-days D` drops the partitions of UTC days "
        "before today - D. Hours before that are retired: the loader says so, never reloads.",
    ),
    Column(
        "ahead_days",
        Integer,
        nullable=False,
        comment="Days of partitions `maintain` made ahead of today.",
    ),
    Column(
        "updated_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.now(),
        comment="When `maintain` last recorded this.",
    ),
    Column(
        "updated_by",
        Text,
        nullable=False,
        server_default=func.current_user(),
        comment="The role that ran it.",
    ),
    PrimaryKeyConstraint("singleton"),
    CheckConstraint("singleton", name="singleton"),
    CheckConstraint("keep_days > 0", name="keep_days"),
    CheckConstraint("ahead_days >= 0", name="ahead_days"),
    comment="The retention `clickstream-loader maintain` applies, recorded so every loader "
    "knows which hours are retired. No row: nothing is retired.",
)


ERASURE_STATES: Final = ("open", "complete")
IDENTIFIER_KINDS: Final = ("user_id", "client_id")
_HASHES_COMMENT: Final = (
    "HMAC-SHA256 (hex) under the erasure key (key_id), sorted: never the identifier in clear."
)

clickstream_erasure_requests = Table(
    ERASURE_REQUESTS_TABLE,
    metadata,
    Column(
        "request_id",
        Text,
        primary_key=True,
        comment="The caller's ticket (--request-id), else a generated UUID. Rerunning an open "
        "request continues it; the same id with other identifiers is refused.",
    ),
    Column(
        "requested_at",
        DateTime(timezone=True),
        nullable=False,
        comment="When the request was first made: by default the suppression list covers the "
        "subject's events up to this instant.",
    ),
    Column(
        "due_at",
        DateTime(timezone=True),
        nullable=False,
        comment="requested_at plus ERASURE_DUE_DAYS: an open request past it is overdue.",
    ),
    Column(
        "key_id",
        Text,
        nullable=False,
        comment="Names the erasure key the hashes were made with (a hash of a fixed text under "
        "it), so a loader given another key refuses to load.",
    ),
    Column(
        "user_id_hashes",
        ARRAY(Text),
        nullable=False,
        comment=f"The user ids named (--user-id). {_HASHES_COMMENT}",
    ),
    Column(
        "client_id_hashes",
        ARRAY(Text),
        nullable=False,
        comment=f"The client ids named (--client-id): their anonymous events. {_HASHES_COMMENT}",
    ),
    Column(
        "found_client_id_hashes",
        ARRAY(Text),
        nullable=False,
        server_default=text("'{}'"),
        comment="Client ids seen with a named user id when the erase ran: their anonymous "
        f"events are the subject's too. {_HASHES_COMMENT}",
    ),
    Column(
        "suppress_future",
        Boolean,
        nullable=False,
        comment="True: the subject's later events are refused too (consent withdrawn); false: "
        "only those received up to requested_at.",
    ),
    Column(
        "state",
        Text,
        nullable=False,
        comment="open (not yet verified gone: open_reason says why) or complete.",
    ),
    Column(
        "stores",
        JSONB,
        nullable=False,
        server_default=text("'{}'::jsonb"),
        comment="Per store (clickstream_events, clickstream_ingest_meta, clickstream_quarantine, "
        "bucket): what was deleted (counts, summed over the runs) and when it finished.",
    ),
    Column(
        "hours",
        JSONB,
        nullable=False,
        server_default=text("'{}'::jsonb"),
        comment="Events erased per UTC hour ('YYYY-MM-DDTHH' of the object's key, else of the "
        "event): `status` shows them beside the ledger's counts, which stay as loaded.",
    ),
    Column(
        "objects",
        JSONB,
        nullable=False,
        server_default=text("'{}'::jsonb"),
        comment="The bucket side: keys to delete (kept until gone, so a rerun finishes them), "
        "keys shared with other people's events (not deleted), unreadable keys, and adopted "
        "events whose object was not found in their hour's folder. Keys and event ids only.",
    ),
    Column(
        "remaining",
        JSONB,
        comment="What the last verification still found per store (all zero when complete).",
    ),
    Column("verified_at", DateTime(timezone=True), comment="When it was last verified."),
    Column("open_reason", Text, comment="Why the request is still open; NULL once complete."),
    Column("completed_at", DateTime(timezone=True), comment="When verification found nothing."),
    CheckConstraint(f"state IN {ERASURE_STATES!r}", name="state"),
    comment="Erasure requests (`clickstream-loader erase`): the proof of what was deleted from "
    "which store and when, and the deadline. No identifier in clear.",
)

# `erasures --open` / `--overdue`.
Index(
    "ix_clickstream_erasure_requests_due_at",
    clickstream_erasure_requests.c.due_at,
    postgresql_where=clickstream_erasure_requests.c.state == "open",
)

clickstream_suppressions = Table(
    SUPPRESSIONS_TABLE,
    metadata,
    Column(
        "id_hash",
        LargeBinary,
        primary_key=True,
        comment="HMAC-SHA256 of the kind and the identifier under the erasure key (the request's "
        "key_id): the loader hashes each event's ids the same way.",
    ),
    Column(
        "kind",
        Text,
        primary_key=True,
        comment="user_id: every event with it; client_id: the anonymous events (no user_id) "
        "with it.",
    ),
    Column(
        "request_id",
        Text,
        primary_key=True,
        comment="The erasure request that added it (clickstream_erasure_requests).",
    ),
    Column(
        "suppress_until",
        DateTime(timezone=True),
        comment="Events whose event_timestamp is after this load again (a returning person is "
        "a new visitor); NULL: every later event is refused too (--suppress-future).",
    ),
    Column(
        "found_with_user",
        Boolean,
        nullable=False,
        server_default=text("false"),
        comment="A client id found with an erased user id, rather than named in the request.",
    ),
    Column(
        "created_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.now(),
        comment="When it was added.",
    ),
    CheckConstraint(f"kind IN {IDENTIFIER_KINDS!r}", name="kind"),
    # Named here: the convention's name would pass PostgreSQL's 63 characters.
    ForeignKeyConstraint(
        ["request_id"],
        [clickstream_erasure_requests.c.request_id],
        name="fk_clickstream_suppressions_request_id",
    ),
    comment="The suppression list: every load path refuses the events it names (counted as "
    "suppressed), so no rerun, lookback, backfill, reprocess or redelivery brings an erased "
    "person back. Keyed hashes only.",
)

# --- the dashboard's rollups (revision 0008, loader/load/rollups.py, docs/dashboard.md) -----------
#
# What the R Shiny dashboard computes from every raw row of its date range, kept per UTC day by
# the loader in the transaction of the rows it inserts, so `clickstream_dashboard()` answers any
# whole-day range and login filter exactly from a few hundred rows. Labels are stored as the
# dashboard shows them: NULL or '' become 'UNKNOWN' (queries.sql Q7-Q9).

#: The login filters the dashboard offers (its sidebar): every event, or one user_login_state.
LOGIN_FILTERS: Final = ("ALL", "logged_in", "anonymous")
#: What clickstream_rollup_products counts product rows by.
PRODUCT_DIMENSIONS: Final = ("category", "brand")

clickstream_rollup_events = Table(
    ROLLUP_EVENTS_TABLE,
    metadata,
    Column("day", Date, primary_key=True, comment="UTC day of event_timestamp."),
    Column(
        "login_state",
        Text,
        primary_key=True,
        comment="user_login_state as the dashboard shows it: NULL or '' become 'UNKNOWN'.",
    ),
    Column("event_name", Text, primary_key=True, comment="event_name as stored."),
    Column(
        "events",
        BigInteger,
        nullable=False,
        comment="Rows of clickstream_events with this day, login state and event name.",
    ),
    Column(
        "events_without_client",
        BigInteger,
        nullable=False,
        comment="Of those, rows whose client_id is NULL: the dashboard counts them all as one "
        "more client (R's n_distinct counts NA once).",
    ),
    # Rows that reach 0 (erasure, a rebuild) are deleted in the same transaction.
    CheckConstraint("events >= 0", name="events"),
    CheckConstraint(
        "events_without_client >= 0 AND events_without_client <= events",
        name="events_without_client",
    ),
    comment="Dashboard rollup: events per UTC day, login state and event name (total events, "
    "add-to-cart and checkout counts, events per day, top event names, events by login state). "
    "Kept by the loader in each batch's transaction; `clickstream-loader rollup` rebuilds days.",
)

clickstream_rollup_products = Table(
    ROLLUP_PRODUCTS_TABLE,
    metadata,
    Column("day", Date, primary_key=True, comment="UTC day of event_timestamp."),
    Column(
        "login_state",
        Text,
        primary_key=True,
        comment="user_login_state as the dashboard shows it: NULL or '' become 'UNKNOWN'.",
    ),
    Column("dimension", Text, primary_key=True, comment="category or brand."),
    Column(
        "value",
        Text,
        primary_key=True,
        comment="context_product_category or context_product_brand as the dashboard shows it: "
        "NULL or '' become 'UNKNOWN'.",
    ),
    Column(
        "events",
        BigInteger,
        nullable=False,
        comment="Product rows (context_product_id or context_product_name not NULL) with this "
        "day, login state and value.",
    ),
    CheckConstraint(f"dimension IN {PRODUCT_DIMENSIONS!r}", name="dimension"),
    CheckConstraint("events >= 0", name="events"),
    comment="Dashboard rollup: product rows per UTC day, login state and category or brand "
    "(top categories, top brands, the raw-sample page count). Each product row counts once "
    "under its category and once under its brand.",
)

clickstream_rollup_clients = Table(
    ROLLUP_CLIENTS_TABLE,
    metadata,
    Column("client_id", Text, primary_key=True, comment="clickstream_events.client_id (not NULL)."),
    Column("day", Date, primary_key=True, comment="A UTC day the client sent events on."),
    Column(
        "logged_in",
        Boolean,
        nullable=False,
        comment="The client sent events that day with user_login_state 'logged_in'.",
    ),
    Column(
        "anonymous",
        Boolean,
        nullable=False,
        comment="The client sent events that day with user_login_state 'anonymous'.",
    ),
    Column(
        "other_states",
        Boolean,
        nullable=False,
        comment="The client sent events that day with any other user_login_state, NULL or ''.",
    ),
    CheckConstraint("logged_in OR anonymous OR other_states", name="seen"),
    comment="Dashboard rollup: which clients sent events on which UTC day, in which login "
    "states: what keeps unique clients over any range of days exact (a distinct count per day "
    "cannot be summed). The largest rollup: one row per client per day it is active. A row "
    "changes only when a client is first seen on a day or in a login state that day.",
)
# Rebuilding a range of days deletes its rows; rows arrive roughly in day order, so a BRIN
# index of a few pages finds them.
Index(
    "ix_clickstream_rollup_clients_day",
    clickstream_rollup_clients.c.day,
    postgresql_using="brin",
)

clickstream_rollup_client_gaps = Table(
    ROLLUP_CLIENT_GAPS_TABLE,
    metadata,
    Column(
        "login_filter",
        Text,
        primary_key=True,
        comment="ALL (every event) or the user_login_state the dashboard filters on.",
    ),
    Column("day", Date, primary_key=True, comment="A UTC day."),
    Column(
        "previous_day",
        Date,
        primary_key=True,
        comment="The last day before `day` the same client sent events under this filter; "
        "'-infinity' when it never had.",
    ),
    Column(
        "clients",
        BigInteger,
        nullable=False,
        comment="Clients seen on `day` under this filter whose previous day seen was "
        "previous_day. Unique clients over days S..E = sum(clients) for day between S and E "
        "and previous_day < S: each client counts once, on its first day in the range.",
    ),
    CheckConstraint(f"login_filter IN {LOGIN_FILTERS!r}", name="login_filter"),
    CheckConstraint("previous_day < day", name="previous_day"),
    CheckConstraint("clients >= 0", name="clients"),
    comment="Dashboard rollup derived from clickstream_rollup_clients: unique clients over any "
    "range of days from at most one row per pair of days, whatever the traffic.",
)
