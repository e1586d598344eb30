"""Erasure: the request table, the suppression list, and the ledger's `suppressed` count.

What changes:
- clickstream_erasure_requests: one row per erasure request (`clickstream-loader erase`): the
  caller's request id, when, the due date, the hashed identifiers (HMAC-SHA256 under the erasure
  key, never in clear), per store what was deleted and when it finished, what verification
  still found, and why the request is open if it is. A partial index on due_at serves
  `erasures --open/--overdue`.
- clickstream_suppressions: the suppression list, keyed hashes only. Every load path checks each
  event against it before writing and counts the refused ones as `suppressed`.
- clickstream_load_runs.suppressed (integer, default 0): the ledger's count of those events.

Why: a person's events must go from every store, and stay gone: every rerun, lookback,
backfill, reprocess or redelivery would otherwise load them again from the raw bucket
(issue 24, docs/privacy.md).

The subject's events are found through revision 0006's indexes (ix_clickstream_events_user_id_
event_timestamp, ix_clickstream_events_client_id) and deleted by their primary key
(event_timestamp, event_id); 0006's trigger deletes their meta rows and claims.

Locks: CREATE TABLE and CREATE INDEX lock only the new tables. ADD COLUMN with a constant
default is a catalog-only change since PostgreSQL 11 (no table rewrite), but it takes an ACCESS
EXCLUSIVE lock on clickstream_load_runs for that instant; lock_timeout bounds the wait behind a
running loader's ledger update. The event tables are not touched.

Deploy: not loader-compatible (see `loader_compatible` below): a loader built for an earlier
revision does not check the suppression list, and would load an erased person again. It stops
at its revision check once this is applied; deploy the loader built for this revision right
after the upgrade. Then give every loader function the erasure key (ERASURE_HMAC_KEY or
ERASURE_HMAC_KEY_SECRET_ARN) before the first erase: once the list holds an entry, a loader
without the key refuses to load.

Downgrade drops both tables and the column: the proof of past erasures and the suppression
list are lost, and a later reload brings the erased people back. Export the request table
first if it must be kept.

Squawk waivers:
- prefer-bigint-over-int: `suppressed` counts the events of one run of one hour, like every other
  count of the ledger (all INTEGER): a run cannot read 2,147,483,647 events. Not an identifier.

Revision ID: 0007_erasure
Revises: 0006_partition_by_day
Create Date: 2026-12-07 09:00:00 UTC
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Revision identifiers, used by Alembic. Revisions import only alembic and sqlalchemy: never
# `loader`, so a later change to the application cannot change what this revision does.
revision: str = "0007_erasure"
down_revision: str | Sequence[str] | None = "0006_partition_by_day"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not loader-compatible: an older loader never reads the suppression list and would load an
# erased person's events again.
loader_compatible = False

REQUESTS = "clickstream_erasure_requests"
SUPPRESSIONS = "clickstream_suppressions"
HASHES = "HMAC-SHA256 (hex) under the erasure key (key_id), sorted: never the identifier in clear."


def _request_columns() -> list[sa.Column[Any]]:
    timestamp = sa.DateTime(timezone=True)
    jsonb = postgresql.JSONB(astext_type=sa.Text())
    empty_json = sa.text("'{}'::jsonb")
    return [
        sa.Column(
            "request_id",
            sa.Text(),
            nullable=False,
            comment="The caller's ticket (--request-id), else a generated UUID. Rerunning an "
            "open request continues it; the same id with other identifiers is refused.",
        ),
        sa.Column(
            "requested_at",
            timestamp,
            nullable=False,
            comment="When the request was first made: by default the suppression list covers "
            "the subject's events up to this instant.",
        ),
        sa.Column(
            "due_at",
            timestamp,
            nullable=False,
            comment="requested_at plus ERASURE_DUE_DAYS: an open request past it is overdue.",
        ),
        sa.Column(
            "key_id",
            sa.Text(),
            nullable=False,
            comment="Names the erasure key the hashes were made with (a hash of a fixed text "
            "under it), so a loader given another key refuses to load.",
        ),
        sa.Column(
            "user_id_hashes",
            postgresql.ARRAY(sa.Text()),
            nullable=False,
            comment=f"The user ids named (--user-id). {HASHES}",
        ),
        sa.Column(
            "client_id_hashes",
            postgresql.ARRAY(sa.Text()),
            nullable=False,
            comment=f"The client ids named (--client-id): their anonymous events. {HASHES}",
        ),
        sa.Column(
            "found_client_id_hashes",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
            comment="Client ids seen with a named user id when the erase ran: their anonymous "
            f"events are the subject's too. {HASHES}",
        ),
        sa.Column(
            "suppress_future",
            sa.Boolean(),
            nullable=False,
            comment="True: the subject's later events are refused too (consent withdrawn); "
            "false: only those received up to requested_at.",
        ),
        sa.Column(
            "state",
            sa.Text(),
            nullable=False,
            comment="open (not yet verified gone: open_reason says why) or complete.",
        ),
        sa.Column(
            "stores",
            jsonb,
            server_default=empty_json,
            nullable=False,
            comment="Per store (clickstream_events, clickstream_ingest_meta, "
            "clickstream_quarantine, bucket): what was deleted (counts, summed over the runs) "
            "and when it finished.",
        ),
        sa.Column(
            "hours",
            jsonb,
            server_default=empty_json,
            nullable=False,
            comment="Events erased per UTC hour ('YYYY-MM-DDTHH' of the object's key, else of "
            "the event): `status` shows them beside the ledger's counts, which stay as loaded.",
        ),
        sa.Column(
            "objects",
            jsonb,
            server_default=empty_json,
            nullable=False,
            comment="The bucket side: keys to delete (kept until gone, so a rerun finishes "
            "them), keys shared with other people's events (not deleted), unreadable keys, and "
            "adopted events whose object was not found in their hour's folder. Keys and event "
            "ids only.",
        ),
        sa.Column(
            "remaining",
            jsonb,
            nullable=True,
            comment="What the last verification still found per store (all zero when complete).",
        ),
        sa.Column("verified_at", timestamp, nullable=True, comment="When it was last verified."),
        sa.Column(
            "open_reason",
            sa.Text(),
            nullable=True,
            comment="Why the request is still open; NULL once complete.",
        ),
        sa.Column(
            "completed_at",
            timestamp,
            nullable=True,
            comment="When verification found nothing.",
        ),
    ]


def _suppression_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column(
            "id_hash",
            sa.LargeBinary(),
            nullable=False,
            comment="HMAC-SHA256 of the kind and the identifier under the erasure key (the "
            "request's key_id): the loader hashes each event's ids the same way.",
        ),
        sa.Column(
            "kind",
            sa.Text(),
            nullable=False,
            comment="user_id: every event with it; client_id: the anonymous events (no user_id) "
            "with it.",
        ),
        sa.Column(
            "request_id",
            sa.Text(),
            nullable=False,
            comment="The erasure request that added it (clickstream_erasure_requests).",
        ),
        sa.Column(
            "suppress_until",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="Events whose event_timestamp is after this load again (a returning person "
            "is a new visitor); NULL: every later event is refused too (--suppress-future).",
        ),
        sa.Column(
            "found_with_user",
            sa.Boolean(),
            server_default=sa.text("false"),
            nullable=False,
            comment="A client id found with an erased user id, rather than named in the request.",
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When it was added.",
        ),
    ]


def upgrade() -> None:
    """Apply: create the request table and the suppression list; add the ledger's count."""
    op.create_table(
        REQUESTS,
        *_request_columns(),
        sa.CheckConstraint(
            "state IN ('open', 'complete')", name=op.f("ck_clickstream_erasure_requests_state")
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_clickstream_erasure_requests")),
        comment="Erasure requests (`clickstream-loader erase`): the proof of what was deleted "
        "from which store and when, and the deadline. No identifier in clear.",
    )
    op.create_index(
        op.f("ix_clickstream_erasure_requests_due_at"),
        REQUESTS,
        ["due_at"],
        unique=False,
        postgresql_where=sa.text("state = 'open'"),
    )
    op.create_table(
        SUPPRESSIONS,
        *_suppression_columns(),
        sa.CheckConstraint(
            "kind IN ('user_id', 'client_id')", name=op.f("ck_clickstream_suppressions_kind")
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            [f"{REQUESTS}.request_id"],
            name="fk_clickstream_suppressions_request_id",
        ),
        sa.PrimaryKeyConstraint(
            "id_hash", "kind", "request_id", name=op.f("pk_clickstream_suppressions")
        ),
        comment="The suppression list: every load path refuses the events it names (counted "
        "as suppressed), so no rerun, lookback, backfill, reprocess or redelivery brings an "
        "erased person back. Keyed hashes only.",
    )
    op.add_column(
        "clickstream_load_runs",
        sa.Column(
            "suppressed",
            sa.Integer(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Events not loaded because the suppression list names them (people "
            "erased); their objects are recorded as loaded.",
        ),
    )


def downgrade() -> None:
    """Unapply: drop the ledger's count, the suppression list and the request table.

    The proof of past erasures and the suppression list are lost: a reload after this brings
    the erased people back from the raw bucket."""
    op.drop_column("clickstream_load_runs", "suppressed")
    op.drop_table(SUPPRESSIONS)
    op.drop_index(
        op.f("ix_clickstream_erasure_requests_due_at"),
        table_name=REQUESTS,
        postgresql_where=sa.text("state = 'open'"),
    )
    op.drop_table(REQUESTS)
