"""Allow trigger 'event' in the load ledger: the near-real-time path's runs.

What changes:
- clickstream_load_runs.trigger's check constraint admits 'event' besides schedule, manual,
  backfill, reprocess and lookback; the column comment says what each means.

Why: the loader now also loads objects as their S3 notifications arrive (SQS batches), each
invocation's objects of one hour as one ledger run. Those runs read only the keys their messages
named, so `status` must tell them apart from a run that read the whole hour: an hour is complete
only once its hourly run (the reconciliation sweep) has been. Reusing an existing trigger would
blur that (a `manual` event run would read as a complete hour).

Locks: dropping and re-adding the check takes an ACCESS EXCLUSIVE lock on clickstream_load_runs
(only the ledger: the event tables are not touched) while PostgreSQL checks every existing row
against the new condition, which every row already meets. The table holds one row per run, a few
thousand a month before this change: milliseconds. Loader runs that write the ledger meanwhile
wait for it (lock_timeout bounds the wait on both sides).

Deploy: loader-compatible (see `loader_compatible` below). The check only widens, so a loader
built for 0004 loads into this revision unchanged (it never writes 'event'); deploy this
revision first, then the loader built for it.

Completion records (0004) need nothing: an event run records its objects' completion in the
transaction of their rows, like every run, and the hourly sweep skips exactly those objects.

Downgrade deletes the ledger rows of event runs (the old check cannot hold them), then restores
the old check. The events those runs loaded stay; only the record of which run loaded them goes,
and `status` then shows their hours as the hourly runs left them.

Squawk waivers:
- ban-drop-constraint: the check is dropped only to be re-added, wider, in the same transaction;
  no client ever sees the table without it.
- constraint-missing-not-valid: the check replaces one the rows already satisfy, on a small
  table only the loader writes; NOT VALID and a separate VALIDATE would need two transactions
  and leave a window with no check at all, to save a scan of a few thousand rows.

Revision ID: 0005_event_trigger
Revises: 0004_object_completion
Create Date: 2026-12-01 10:40:00 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Revision identifiers, used by Alembic. Revisions import only alembic and sqlalchemy: never
# `loader`, so a later change to the application cannot change what this revision does.
revision: str = "0005_event_trigger"
down_revision: str | Sequence[str] | None = "0004_object_completion"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Loader-compatible: a loader built for 0004 never writes the new trigger, and the old check's
# values are all still allowed.
loader_compatible = True

TABLE = "clickstream_load_runs"
CHECK = "ck_clickstream_load_runs_trigger"
BEFORE = "trigger IN ('schedule', 'manual', 'backfill', 'reprocess', 'lookback')"
AFTER = "trigger IN ('schedule', 'manual', 'backfill', 'reprocess', 'lookback', 'event')"
COMMENT_BEFORE = "schedule, manual, backfill, reprocess, lookback."
COMMENT_AFTER = (
    "schedule, manual, backfill, lookback: runs that read the whole hour; reprocess (its "
    "quarantined keys) and event (the keys notifications named): runs that read only some."
)


def upgrade() -> None:
    """Apply: widen the trigger check to admit 'event'."""
    op.drop_constraint(op.f(CHECK), TABLE, type_="check")
    op.create_check_constraint(op.f(CHECK), TABLE, AFTER)
    op.alter_column(
        TABLE,
        "trigger",
        existing_type=sa.Text(),
        existing_nullable=False,
        comment=COMMENT_AFTER,
        existing_comment=COMMENT_BEFORE,
    )


def downgrade() -> None:
    """Unapply: delete event runs' ledger rows, then narrow the trigger check again."""
    runs = sa.table(TABLE, sa.column("trigger", sa.Text()))
    op.execute(sa.delete(runs).where(runs.c.trigger == "event"))
    op.drop_constraint(op.f(CHECK), TABLE, type_="check")
    op.create_check_constraint(op.f(CHECK), TABLE, BEFORE)
    op.alter_column(
        TABLE,
        "trigger",
        existing_type=sa.Text(),
        existing_nullable=False,
        comment=COMMENT_BEFORE,
        existing_comment=COMMENT_AFTER,
    )
