"""Record per-object completion: clickstream_loaded_objects, backfilled from the ledger.

What changes:
- clickstream_loaded_objects: one row per S3 object whose events and quarantine rows are all
  committed. The loader writes it in the same transaction as the object's last rows, so a
  run that dies between the slices of a big object, or between a bisected batch's good halves
  and its quarantine rows, leaves no row and the next lookback or rerun reads the object again.
  Lookback, `check`, `status` and `reprocess` read this table instead of asking whether a key
  has any row in the event tables or the quarantine (that rule took a half-loaded object for
  a loaded one and lost the rest of it: issue 12).
- One index on `hour` (`status` counts an hour's completed objects); lookback and `check` scan
  the primary key by prefix, which its "C" collation serves.
- A backfill of the objects the ledger proves complete, described below.

Why the backfill is exact, and what it leaves out: a key is recorded only when its hour has a
`complete` full-hour run that read the whole hour (trigger schedule, manual or backfill; not a
lookback or reprocess, which skip keys; not a run resumed after a `partial` one, which listed
only the rest of the hour) and some row of the key (clickstream_ingest_meta.loaded_at,
clickstream_quarantine.first_seen_at) was written before that run finished. Such a key existed
when the run listed the hour or was written by that run, and a complete run writes every object
it lists in full. Keys outside that rule (late objects a lookback loaded, hours only ever
completed by resumed or lookback runs, a shard-by-shard hour whose finalize row did not exist
yet) get no row: the next lookback reads them again if they are recent (ON CONFLICT makes the
repeat insert nothing), and otherwise `check` lists them as unloaded until `run --hour` (or
`backfill --force`) records them. Backfilled rows count the key's clickstream_ingest_meta rows
as its `events`, its open quarantine entries as `quarantined`, and carry the trusted run's id
and end time.

Why schema change and backfill share one revision: the only DDL lock is on the new table,
which nothing else uses yet, so holding it through the backfill blocks no one; and the loader
at this head must not start against an empty table (it would report every older key unloaded).

Deploy: not loader-compatible (see `loader_compatible` below). A loader built for an earlier
revision stops at its revision check once this is applied; deploy the loader built for this
revision right after.

Locks and cost: CREATE TABLE and CREATE INDEX lock only the new table. The backfill reads
clickstream_ingest_meta, clickstream_quarantine and clickstream_load_runs under ACCESS SHARE
locks, which block neither the loader's inserts nor readers (only DDL on those tables waits
for it): one sequential scan of clickstream_ingest_meta grouped by key, then one insert per
object. Measured on the embedded test server (2 shared CPUs, under load): 24-32 s per million
objects (1 million single-event objects, 308 MB of clickstream_ingest_meta); the hour index is
built after the rows, in one sort. Rows committed after the backfill's snapshot are not seen:
keys a loader still running during the upgrade loads are re-read as above. The table takes
about 300 bytes per object with its two indexes (measured), i.e. ~3 GB per 10 million objects.

Downgrade drops the table: every completion record is lost. Nothing else is touched; upgrading
again backfills from the ledger as above.

Squawk waivers:
- prefer-bigint-over-int: the INTEGER columns count the events, meta rows and quarantine rows of
  one object, which is capped at MAX_OBJECT_BYTES (1 MiB by default, at most a few MiB) and
  8 MiB decompressed: it cannot hold 2,147,483,647 of anything. Not identifiers.

Revision ID: 0004_object_completion
Revises: 0003_adopt_original_etl_table
Create Date: 2026-12-01 09:00:00 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Revision identifiers, used by Alembic. Revisions import only alembic and sqlalchemy: never
# `loader`, so a later change to the application cannot change what this revision does.
revision: str = "0004_object_completion"
down_revision: str | Sequence[str] | None = "0003_adopt_original_etl_table"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not loader-compatible: a loader built for an earlier revision would still insert rows here,
# but it records no completion and its lookback keeps taking any key with rows for a loaded
# one, the rule this revision exists to end. It stops with a message naming both revisions
# instead; deploy the loader built for this revision right after the upgrade.
loader_compatible = False

# A key the loader read sits under its hour's prefix, <EVENTS_PREFIX>YYYY/MM/DD/HH/<name>: the
# 13 characters before its last "/" name the hour. Compared as text with the hour of a run,
# so a key of any other shape matches no hour (and nothing is cast that could fail).
BACKFILL = sa.text(
    """
INSERT INTO clickstream_loaded_objects
    (s3_key, s3_bucket, hour, events, meta_rows, quarantined, s3_last_modified, run_id,
     completed_at)
WITH runs AS (
    SELECT hour, run_id, state, trigger, finished_at,
           lag(state) OVER (PARTITION BY hour ORDER BY started_at) AS previous_state
    FROM clickstream_load_runs
    WHERE shard IS NULL AND trigger <> 'reprocess'
),
whole_hour_complete AS (
    SELECT DISTINCT ON (hour) hour, run_id, finished_at,
           to_char(hour AT TIME ZONE 'UTC', 'YYYY/MM/DD/HH24') AS hour_path
    FROM runs
    WHERE state = 'complete'
      AND trigger IN ('schedule', 'manual', 'backfill')
      AND finished_at IS NOT NULL
      AND previous_state IS DISTINCT FROM 'partial'
    ORDER BY hour, finished_at DESC
),
in_meta AS (
    SELECT s3_key, min(s3_bucket) AS s3_bucket, count(*) AS meta_rows,
           min(loaded_at) AS first_written, max(s3_last_modified) AS s3_last_modified
    FROM clickstream_ingest_meta
    GROUP BY s3_key
),
in_quarantine AS (
    SELECT s3_key, min(s3_bucket) AS s3_bucket,
           count(*) FILTER (WHERE resolved_at IS NULL) AS quarantined,
           min(first_seen_at) AS first_written
    FROM clickstream_quarantine
    GROUP BY s3_key
),
objects AS (
    SELECT s3_key,
           substr(s3_key, length(s3_key) - strpos(reverse(s3_key), '/') - 12, 13) AS hour_path,
           coalesce(m.s3_bucket, q.s3_bucket) AS s3_bucket,
           coalesce(m.meta_rows, 0) AS meta_rows,
           coalesce(q.quarantined, 0) AS quarantined,
           m.s3_last_modified,
           least(m.first_written, q.first_written) AS first_written
    FROM in_meta m FULL JOIN in_quarantine q USING (s3_key)
)
SELECT o.s3_key, o.s3_bucket, r.hour, o.meta_rows, o.meta_rows, o.quarantined,
       o.s3_last_modified, r.run_id, r.finished_at
FROM objects o
JOIN whole_hour_complete r ON r.hour_path = o.hour_path
WHERE o.first_written <= r.finished_at AND o.s3_bucket IS NOT NULL
"""
)


def upgrade() -> None:
    """Apply: create clickstream_loaded_objects and its index, then backfill it."""
    op.create_table(
        "clickstream_loaded_objects",
        sa.Column(
            "s3_key",
            sa.Text(collation="C"),
            nullable=False,
            comment="An object whose events and quarantine rows are all committed.",
        ),
        sa.Column("s3_bucket", sa.Text(), nullable=False, comment="Bucket of the object."),
        sa.Column(
            "hour",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="UTC hour the key belongs to.",
        ),
        sa.Column(
            "events",
            sa.Integer(),
            nullable=False,
            comment="Valid events the object held when it completed, new or already loaded "
            "(rows backfilled by revision 0004: its clickstream_ingest_meta rows).",
        ),
        sa.Column(
            "meta_rows",
            sa.Integer(),
            nullable=False,
            comment="clickstream_ingest_meta rows naming this key when it completed (an event "
            "whose id another object loaded first stays with that one); `check` reports the key "
            "unloaded once fewer remain.",
        ),
        sa.Column(
            "quarantined",
            sa.Integer(),
            nullable=False,
            comment="Records of the object in the quarantine when it completed (malformed, "
            "invalid, rejected or fetch_failed).",
        ),
        sa.Column(
            "s3_last_modified",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="The object's LastModified.",
        ),
        sa.Column(
            "run_id",
            postgresql.UUID(as_uuid=True),
            nullable=False,
            comment="The run that completed it (clickstream_load_runs.run_id; rows backfilled "
            "by revision 0004: the hour's complete run).",
        ),
        sa.Column(
            "completed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When the transaction that completed it committed (transaction time).",
        ),
        sa.PrimaryKeyConstraint("s3_key", name=op.f("pk_clickstream_loaded_objects")),
        comment="Objects loaded in full, one row each: lookback, check, status and reprocess "
        "read this, never the mere presence of rows.",
    )
    op.execute(BACKFILL)
    # `status` counts an hour's completed objects. Built after the backfill: one sort instead
    # of an index insert per row.
    op.create_index(
        op.f("ix_clickstream_loaded_objects_hour"),
        "clickstream_loaded_objects",
        ["hour"],
        unique=False,
    )


def downgrade() -> None:
    """Unapply: drop clickstream_loaded_objects (and its index).

    Every completion record is lost; the events, the ledger and the quarantine are not touched.
    """
    op.drop_table("clickstream_loaded_objects")
