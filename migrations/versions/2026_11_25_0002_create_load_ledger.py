"""Create the load ledger: clickstream_load_runs and clickstream_quarantine.

What changes:
- clickstream_load_runs: one row per loader run per hour (trigger, state, counters, where a
  partial run stopped). `status`, `backfill` and on-call read it to tell which hours are done.
  Check constraints pin `trigger` and `state` to the values the loader writes.
- clickstream_quarantine: one row per object or event that could not load, unique per
  (s3_key, position) so a repeated failure bumps `attempts` instead of adding rows;
  `reprocess` replays the open ones.
- One index on each; each says below why.

Why: the loader must be able to prove what it loaded and what it could not, without anyone
reading logs. These are operational tables: the loader inserts and updates them; it
never updates or deletes events.

Locks: both tables are new and empty; the event tables are not touched.

Downgrade drops both tables: the run history and the quarantine list are lost (the events
themselves are not). Quarantined objects are still in S3, but nothing records which they were.

Squawk waivers:
- prefer-bigint-over-int: the INTEGER columns are per-run counters, a record's line number in
  one object, and a failure count, not identifiers that grow with the table. A run covers one
  hour (2^31 events in an hour would be 600,000 a second), an object is capped at a few MiB of
  NDJSON, and `attempts` grows by one per retry of an hour. None can approach 2,147,483,647.
  (The identifier that does grow, quarantine_id, is BIGINT.)

Revision ID: 0002_load_ledger
Revises: 0001_clickstream_tables
Create Date: 2026-11-25 22:40:45 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Revision identifiers, used by Alembic. Revisions import only alembic and sqlalchemy: never
# `loader`, so a later change to the application cannot change what this revision does.
revision: str = "0002_load_ledger"
down_revision: str | Sequence[str] | None = "0001_clickstream_tables"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _counter(name: str, comment: str) -> sa.Column:
    """A run counter: NOT NULL, starting at 0."""
    return sa.Column(
        name, sa.Integer(), server_default=sa.text("0"), nullable=False, comment=comment
    )


def upgrade() -> None:
    """Apply: create clickstream_load_runs and clickstream_quarantine with their indexes."""
    op.create_table(
        "clickstream_load_runs",
        sa.Column(
            "run_id",
            postgresql.UUID(as_uuid=True),
            nullable=False,
            comment="One loader run of one hour.",
        ),
        sa.Column(
            "hour",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="Start of the UTC hour loaded.",
        ),
        sa.Column(
            "trigger",
            sa.Text(),
            nullable=False,
            comment="schedule, manual, backfill, reprocess, lookback.",
        ),
        sa.Column(
            "shard",
            sa.Text(),
            nullable=True,
            comment="Shard 'index/count' when the hour was fanned out, else NULL.",
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, comment="Run start."),
        sa.Column(
            "finished_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="Run end; NULL while running or killed.",
        ),
        sa.Column(
            "state",
            sa.Text(),
            nullable=False,
            comment="running, complete (every listed object loaded, quarantined or recorded as "
            "malformed), partial (stopped early; resume_after says where) or failed.",
        ),
        _counter("objects_listed", "Keys listed."),
        _counter("events_read", "Events parsed."),
        _counter("inserted", "New event rows."),
        _counter(
            "duplicate_exact", "Events already loaded with the same payload (harmless repeats)."
        ),
        _counter(
            "duplicate_conflicting",
            "Events whose id was already loaded with a different payload (worth a look).",
        ),
        _counter("malformed", "Unparseable objects."),
        _counter("invalid", "Events skipped as invalid."),
        _counter(
            "quarantined", "Events the database rejected, isolated by bisection and quarantined."
        ),
        _counter("sanitised", "Values repaired."),
        _counter("truncated", "Values truncated."),
        _counter("retries", "Transient retries."),
        sa.Column(
            "resume_after",
            sa.Text(collation="C"),
            nullable=True,
            comment="Partial runs: the last key fully written.",
        ),
        sa.Column(
            "newest_event_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="Newest event_timestamp loaded.",
        ),
        sa.Column(
            "loader_version", sa.Text(), nullable=False, comment="clickstream-loader version."
        ),
        sa.Column(
            "db_revision",
            sa.Text(),
            nullable=True,
            comment="Alembic revision of the DW at run time.",
        ),
        sa.Column(
            "error_summary",
            sa.Text(),
            nullable=True,
            comment="Failure class and message, scrubbed of row data.",
        ),
        sa.CheckConstraint(
            "trigger IN ('schedule', 'manual', 'backfill', 'reprocess', 'lookback')",
            name=op.f("ck_clickstream_load_runs_trigger"),
        ),
        sa.CheckConstraint(
            "state IN ('running', 'complete', 'partial', 'failed')",
            name=op.f("ck_clickstream_load_runs_state"),
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_clickstream_load_runs")),
        comment="The load ledger: one row per loader run per hour, written by the loader.",
    )
    # `status` and `backfill` read the newest runs of a range of hours.
    op.create_index(
        op.f("ix_clickstream_load_runs_hour_started_at"),
        "clickstream_load_runs",
        ["hour", "started_at"],
        unique=False,
    )

    op.create_table(
        "clickstream_quarantine",
        sa.Column(
            "quarantine_id",
            sa.BigInteger(),
            sa.Identity(always=True),
            nullable=False,
            comment="Surrogate key.",
        ),
        sa.Column("s3_bucket", sa.Text(), nullable=False, comment="Bucket of the object."),
        sa.Column(
            "s3_key",
            sa.Text(collation="C"),
            nullable=False,
            comment="Object that could not (fully) load.",
        ),
        sa.Column(
            "position",
            sa.Integer(),
            nullable=False,
            comment="Record position in the object (NDJSON line); 0 for object-level problems.",
        ),
        sa.Column(
            "hour",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="UTC hour the key belongs to.",
        ),
        sa.Column(
            "event_id",
            postgresql.UUID(as_uuid=True),
            nullable=True,
            comment="Event id, when one could be derived.",
        ),
        sa.Column(
            "reason_code",
            sa.Text(),
            nullable=False,
            comment="malformed (not JSON objects), invalid (no usable event_name), "
            "rejected (the database refused the row), fetch_failed (S3 refused the object).",
        ),
        sa.Column(
            "sqlstate", sa.Text(), nullable=True, comment="PostgreSQL SQLSTATE for rejected rows."
        ),
        sa.Column("error_text", sa.Text(), nullable=True, comment="Why, scrubbed of row data."),
        sa.Column(
            "first_seen_at", sa.DateTime(timezone=True), nullable=False, comment="First failure."
        ),
        sa.Column(
            "last_seen_at", sa.DateTime(timezone=True), nullable=False, comment="Latest failure."
        ),
        sa.Column(
            "attempts",
            sa.Integer(),
            server_default=sa.text("1"),
            nullable=False,
            comment="Failures seen.",
        ),
        sa.Column(
            "resolved_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When a reprocess loaded it.",
        ),
        sa.PrimaryKeyConstraint("quarantine_id", name=op.f("pk_clickstream_quarantine")),
        # One entry per failing record: a repeat failure updates it (ON CONFLICT) instead of
        # adding a row each hourly retry.
        sa.UniqueConstraint(
            "s3_key", "position", name=op.f("uq_clickstream_quarantine_s3_key_position")
        ),
        comment="Objects and events that could not load; `clickstream-loader reprocess` "
        "replays them.",
    )
    # `reprocess` reads the open entries, `status` counts them per hour. Partial: resolved
    # entries are history, and no hot query reads them.
    op.create_index(
        op.f("ix_clickstream_quarantine_hour"),
        "clickstream_quarantine",
        ["hour"],
        unique=False,
        postgresql_where=sa.text("resolved_at IS NULL"),
    )


def downgrade() -> None:
    """Unapply: drop clickstream_quarantine and clickstream_load_runs (and their indexes).

    The run history and the quarantine list are lost; the events are not touched.
    """
    op.drop_table("clickstream_quarantine")
    op.drop_table("clickstream_load_runs")
