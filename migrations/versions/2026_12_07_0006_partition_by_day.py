"""Partition the event tables by UTC day; one row per event through claims; retention.

What changes:
- clickstream_events, clickstream_ingest_meta and clickstream_loaded_objects become tables
  partitioned by range, one partition per UTC day (`<table>_pYYYYMMDD`) of event_timestamp
  (events, meta) or hour (loaded objects). No DEFAULT partition: a row for a day without a
  partition is refused, never parked somewhere a retention would miss.
- Keys that follow time. The primary keys become (event_timestamp, event_id) on events and
  meta and (hour, s3_key) on loaded objects, so an hour's inserts append to the right edge of
  its day's indexes whatever the table's size. clickstream_ingest_meta gains event_timestamp
  (the event's, copied) so an event and its metadata sit in the same day and retire together.
- Indexes, per partition, and what each is for:
  - the primary keys: row identity, time ranges (they replace the BRIN on event_timestamp);
  - ix_clickstream_events_user_id_event_timestamp (partial, kept): erasure finds a user's events;
  - ix_clickstream_events_client_id (new): erasure finds a browser's anonymous events;
  - ix_clickstream_events_product_rows (new, partial on product rows, led by time): the
    dashboard's raw-sample page, newest first;
  - ix_clickstream_ingest_meta_s3_key (kept): which rows an object loaded (`check`);
  - ix_clickstream_quarantine_hour: now on every row (it was partial on open entries), so
    `maintain` deletes the hours past retention through it.
  Dropped: the BRIN on event_timestamp (the primary key serves time now), and the indexes on
  (session_id, event_timestamp) and (event_name, event_timestamp): nothing in the product reads
  through them, and a random-led index costs a full-page write per page an hour touches after
  each checkpoint (docs/scaling.md). A DBA who needs one back creates it on the parent.
- clickstream_event_claims (new, partitioned by day of window_start): one row per event_id
  across partitions. A primary key must hold the partition key, so (event_timestamp, event_id)
  no longer stops two copies of an event with different receivedAt. Each event claims
  (window_start, event_id) in two grids of two-hour windows, one starting on even UTC hours and
  one on odd; only an event that wins both claims is inserted. Two copies received less than an
  hour apart always share a window, whichever partitions or runs they come through, and the
  claims' primary key makes the second wait for the first and lose, race-free, with no lock
  table use. Copies further apart are two events. The windows are two hours, so an hour's claims
  land in a region of the index a few hours wide: no full-page writes over older pages.
- Statement triggers on clickstream_events delete the meta rows and claims of deleted events
  (and empty both tables on TRUNCATE)
  (the foreign key from meta to events is gone: a foreign key between partitioned tables pins
  the order of every detach, and converting it would validate every row under the lock). A DBA
  who deletes events gets them back by rerunning their hour, as before.
- clickstream_retention: the retention `clickstream-loader maintain` applies (one row), so every
  loader knows which hours are retired.
- clickstream_ensure_partitions(first_day, last_day): SECURITY DEFINER, owned by the table owner,
  search_path fixed to pg_catalog, this schema, pg_temp. Makes the missing day partitions of the
  four tables for at most 32 days a call, never a day before the recorded retention, nor more
  than 366 days ahead, and the claims' partition of the day before first_day (the odd grid's
  window of an event in a day's first hour starts at 23:00 the day before); CREATE TABLE +
  ATTACH PARTITION, which takes SHARE UPDATE EXCLUSIVE on the parent (loads and queries go on),
  waiting no longer than the caller's lock_timeout. EXECUTE is revoked from PUBLIC;
  deploy/grants.sql grants it to the loader. Revoking it turns automatic partitions off: then
  `maintain --ahead-days N` must premake them.

Online conversion of a warehouse that holds rows (the original ETL's adopted table included):
each existing table becomes the `_legacy` partition of its new parent, covering every time up to
the start of the UTC day after tomorrow (or after its newest row, if later); daily partitions
take over from there. The long steps run before the swap, each in its own transaction, under
locks that let loads and queries go on:
  1. meta gains event_timestamp (nullable; a NOT VALID check refuses new NULLs from here on, so
     an older loader still running fails its batch and retries after the upgrade);
  2. meta.event_timestamp is copied from the events (ROW EXCLUSIVE; every meta row is
     rewritten once: plan for the bloat on a big table);
  3. CHECKs matching the legacy ranges, added NOT VALID and validated (SHARE UPDATE EXCLUSIVE);
  4. the new indexes built CONCURRENTLY on the tables that become partitions;
  5. claims for every existing event (ACCESS SHARE on the events).
  6. The swap, one transaction: ACCESS EXCLUSIVE on the three tables; rename each to _legacy,
     create its partitioned parent under the old name (LIKE the old: columns, defaults and
     comments), give it the old table's grants, attach the old table (the prebuilt indexes and
     validated CHECKs make ATTACH a catalog change). Measured with bench/conversion.py at
     1,000,000 events with their meta rows and completion records (embedded PostgreSQL 18 with
     default settings, on 2 CPUs shared with other work, load average ~16): a reader probing
     clickstream_events every 5 ms through the whole upgrade waited at most 1.39 s (median
     5 ms); the upgrade took 166 s in all. Readers and the loader wait at most that long; the
     lock_timeout of env.py bounds the wait for the locks themselves.
On a warehouse with no rows, the old tables are dropped instead and no legacy partition exists.

Deploy: not loader-compatible. A loader built for 0005 writes meta rows without event_timestamp
and stops at its revision check; deploy the loader built for this revision right after.

Downgrade rebuilds the three tables as plain tables (PRIMARY KEY (event_id), meta's foreign key,
the dropped indexes) and copies every row back, holding ACCESS EXCLUSIVE on them for the whole
copy (minutes per tens of millions of rows). Two copies of an event_id (received more than an
hour apart, see above) cannot both go back under the old key: the earliest is kept and the
rest are lost. Claims, retention settings and the partition function are dropped; dropped
partitions' rows are gone for good.

Squawk waivers:
- ban-drop-constraint: the old keys are replaced in the same transaction by prebuilt ones (and
  the meta foreign key by the delete trigger); no client sees a table without its key.
- require-concurrent-index-deletion: the indexes dropped inside the swap are dropped under the
  ACCESS EXCLUSIVE lock the swap already holds; dropping an index is a catalog change.
- prefer-robust-stmts: every step outside the swap is idempotent (IF NOT EXISTS, or guarded by
  the session variable) and the swap is one transaction; a failed run is rerun as a whole.
- renaming-table: the old tables keep their rows under `_legacy`; clients keep using the old
  names, which the new parents take in the same transaction.
- renaming-object: indexes follow their tables' renames, so the parents can take the names.
- prefer-bigint-over-int: keep_days and ahead_days count days.

Revision ID: 0006_partition_by_day
Revises: 0005_event_trigger
Create Date: 2026-12-07 22:00:00 UTC
"""

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Revision identifiers, used by Alembic. Revisions import only alembic and sqlalchemy: never
# `loader`, so a later change to the application cannot change what this revision does.
revision: str = "0006_partition_by_day"
down_revision: str | Sequence[str] | None = "0005_event_trigger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Not loader-compatible: a loader built for 0005 inserts meta rows without event_timestamp.
loader_compatible = False

EVENTS = "clickstream_events"
META = "clickstream_ingest_meta"
OBJECTS = "clickstream_loaded_objects"
CLAIMS = "clickstream_event_claims"
RETENTION = "clickstream_retention"
QUARANTINE = "clickstream_quarantine"
ENSURE = "clickstream_ensure_partitions"
# (table, partition column, primary key columns)
CONVERTED = (
    (EVENTS, "event_timestamp", ("event_timestamp", "event_id")),
    (META, "event_timestamp", ("event_timestamp", "event_id")),
    (OBJECTS, "hour", ("hour", "s3_key")),
)
PRODUCT_ROWS = "context_product_id IS NOT NULL OR context_product_name IS NOT NULL"
# The new indexes on clickstream_events besides its key: (name, columns, WHERE).
EVENT_INDEXES = (
    ("ix_clickstream_events_client_id", "client_id", None),
    ("ix_clickstream_events_product_rows", "event_timestamp", PRODUCT_ROWS),
)
# Indexes that go: the BRIN, two random-led btrees, and the hour index of loaded objects
# (its primary key now starts with hour).
DROPPED_INDEXES = (
    "ix_clickstream_events_event_timestamp",
    "ix_clickstream_events_session_id_event_timestamp",
    "ix_clickstream_events_event_name_event_timestamp",
    "ix_clickstream_loaded_objects_hour",
)
# The session variable that carries the legacy partitions' upper bound from step 3 to the swap
# (the same session runs every step, online and in psql alike).
LEGACY_UNTIL = "clickstream.legacy_until"

# The two claim grids: windows of two hours starting on even and on odd UTC hours.
GRID_EVEN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
GRID_ODD = "TIMESTAMPTZ '2000-01-01 01:00:00+00'"


def _owns_transactions() -> bool:
    """False when the caller migrates inside a transaction of its own (a connection injected
    with a transaction open, as the test fixtures do): then every step runs in that one
    transaction, and indexes are built plainly. `alembic upgrade` and `--sql` own theirs."""
    ctx = op.get_context()
    return ctx.as_sql or not getattr(ctx, "_in_external_transaction", False)


def _outside_the_transaction(steps: Callable[[], None]) -> None:
    """Commit what came before and run `steps` in autocommit, each statement its own
    transaction, so a long step holds its (weak) lock only while it runs."""
    if _owns_transactions():
        with op.get_context().autocommit_block():
            steps()
    else:
        steps()


def _concurrently() -> str:
    return "CONCURRENTLY " if _owns_transactions() else ""


def upgrade() -> None:
    """Apply: partition the event tables by UTC day, converting whatever rows they hold."""
    _create_claims_and_retention()
    _add_meta_event_timestamp()
    _outside_the_transaction(_backfill_and_prebuild)
    _claim_existing_events()
    _swap_in_partitioned_tables()
    _create_delete_trigger()
    _create_ensure_function()
    _outside_the_transaction(_index_every_quarantine_hour)


def _backfill_and_prebuild() -> None:
    op.execute(
        f"UPDATE {META} AS m SET event_timestamp = e.event_timestamp FROM {EVENTS} AS e "
        "WHERE e.event_id = m.event_id AND m.event_timestamp IS NULL"
    )
    op.execute(f"ALTER TABLE {META} VALIDATE CONSTRAINT ck_{META}_event_timestamp_not_null")
    _legacy_range_checks()
    _prebuild_indexes()


def _index_every_quarantine_hour() -> None:
    op.execute(
        f"CREATE INDEX {_concurrently()}IF NOT EXISTS ix_{QUARANTINE}_hour_all "
        f"ON {QUARANTINE} (hour)"
    )
    op.execute(f"DROP INDEX {_concurrently()}IF EXISTS ix_{QUARANTINE}_hour")
    op.execute(f"ALTER INDEX ix_{QUARANTINE}_hour_all RENAME TO ix_{QUARANTINE}_hour")


def _create_claims_and_retention() -> None:
    op.create_table(
        CLAIMS,
        sa.Column(
            "window_start",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="Start of a two-hour dedup window holding the event's event_timestamp. "
            "Every event claims two: one on even UTC hours, one on odd ones.",
        ),
        sa.Column(
            "event_id", postgresql.UUID(as_uuid=True), nullable=False, comment="The event claimed."
        ),
        sa.Column(
            "event_timestamp",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="event_timestamp of the copy that holds the claim: where its row is.",
        ),
        sa.PrimaryKeyConstraint("window_start", "event_id", name=op.f(f"pk_{CLAIMS}")),
        comment="One row per event_id, across partitions: each event claims (window_start, "
        "event_id) in two grids of two-hour windows offset by one hour, and only an event that "
        "wins both claims is inserted. Two copies of an event received less than an hour apart "
        "always share a window, so they load once whatever runs at the same time. Partitioned "
        "by UTC day of window_start; rows go with their event (trigger on clickstream_events).",
        postgresql_partition_by="RANGE (window_start)",
    )
    op.create_table(
        RETENTION,
        sa.Column(
            "singleton",
            sa.Boolean(),
            server_default=sa.text("true"),
            nullable=False,
            comment="Always true: the table holds one row.",
        ),
        sa.Column(
            "keep_days",
            sa.Integer(),
            nullable=False,
            comment="Days of events kept: `maintain --keep-days D` drops the partitions of UTC "
            "days before today - D. Hours before that are retired: the loader says so, never "
            "reloads.",
        ),
        sa.Column(
            "ahead_days",
            sa.Integer(),
            nullable=False,
            comment="Days of partitions `maintain` made ahead of today.",
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When `maintain` last recorded this.",
        ),
        sa.Column(
            "updated_by",
            sa.Text(),
            server_default=sa.text("CURRENT_USER"),
            nullable=False,
            comment="The role that ran it.",
        ),
        sa.CheckConstraint("singleton", name=op.f(f"ck_{RETENTION}_singleton")),
        sa.CheckConstraint("keep_days > 0", name=op.f(f"ck_{RETENTION}_keep_days")),
        sa.CheckConstraint("ahead_days >= 0", name=op.f(f"ck_{RETENTION}_ahead_days")),
        sa.PrimaryKeyConstraint("singleton", name=op.f(f"pk_{RETENTION}")),
        comment="The retention `clickstream-loader maintain` applies, recorded so every loader "
        "knows which hours are retired. No row: nothing is retired.",
    )


def _add_meta_event_timestamp() -> None:
    op.add_column(
        META,
        sa.Column(
            "event_timestamp",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="The event's event_timestamp, copied: the partition key, so an event and its "
            "metadata sit in the same UTC day and retire together.",
        ),
    )
    op.execute(
        f"ALTER TABLE {META} ADD CONSTRAINT ck_{META}_event_timestamp_not_null "
        "CHECK (event_timestamp IS NOT NULL) NOT VALID"
    )


def _legacy_range_checks() -> None:
    """The upper bound of the legacy partitions, kept in a session variable for the swap, and a
    validated CHECK per table that proves its rows fit under it (so ATTACH scans nothing)."""
    op.execute(
        f"""
        DO $$
        DECLARE
            newest timestamptz := (SELECT max(event_timestamp) FROM {EVENTS});
            until timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') + interval '2 days';
        BEGIN
            IF newest IS NOT NULL AND newest >= until - interval '1 day' THEN
                until := date_trunc('day', newest AT TIME ZONE 'UTC') + interval '1 day';
            END IF;
            PERFORM set_config('{LEGACY_UNTIL}', (until AT TIME ZONE 'UTC')::text, false);
        END $$
        """
    )
    for table, column, _ in CONVERTED:
        op.execute(
            f"""
            DO $$ BEGIN
                EXECUTE format('ALTER TABLE {table} ADD CONSTRAINT ck_{table}_legacy_range '
                               'CHECK ({column} < %L::timestamp AT TIME ZONE ''UTC'') NOT VALID',
                               current_setting('{LEGACY_UNTIL}'));
            END $$
            """
        )
        op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT ck_{table}_legacy_range")


def _prebuild_indexes() -> None:
    """The new keys and indexes, built without blocking writes on the tables that become
    the legacy partitions; ATTACH then adopts them instead of building under its lock."""
    for table, _, key in CONVERTED:
        op.execute(
            f"CREATE UNIQUE INDEX {_concurrently()}IF NOT EXISTS {table}_legacy_pkey "
            f"ON {table} ({', '.join(key)})"
        )
    for name, column, where in EVENT_INDEXES:
        op.execute(
            f"CREATE INDEX {_concurrently()}IF NOT EXISTS {name}_legacy ON {EVENTS} ({column})"
            + (f" WHERE {where}" if where else "")
        )


def _claim_existing_events() -> None:
    """A claims partition for the legacy range, and both claims of every existing event."""
    op.execute(
        f"""
        DO $$ BEGIN
            EXECUTE format('CREATE TABLE {CLAIMS}_legacy PARTITION OF {CLAIMS} '
                           'FOR VALUES FROM (MINVALUE) TO (%L)',
                           current_setting('{LEGACY_UNTIL}') || '+00');
        END $$
        """
    )
    for grid in (GRID_EVEN, GRID_ODD):
        op.execute(
            f"INSERT INTO {CLAIMS} (window_start, event_id, event_timestamp) "
            f"SELECT date_bin('2 hours', event_timestamp, {grid}), event_id, event_timestamp "
            f"FROM {EVENTS} ON CONFLICT DO NOTHING"
        )


def _swap_in_partitioned_tables() -> None:
    """The only step under ACCESS EXCLUSIVE: each table becomes its new parent's partition."""
    op.execute(f"LOCK TABLE {EVENTS}, {META}, {OBJECTS} IN ACCESS EXCLUSIVE MODE")
    op.drop_constraint(op.f(f"fk_{META}_event_id_{EVENTS}"), META, type_="foreignkey")
    op.execute(f"ALTER TABLE {META} ALTER COLUMN event_timestamp SET NOT NULL")
    op.drop_constraint(op.f(f"ck_{META}_event_timestamp_not_null"), META, type_="check")
    for name in DROPPED_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    for table, column, key in CONVERTED:
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}, "
            f"ADD CONSTRAINT {table}_legacy_pkey PRIMARY KEY USING INDEX {table}_legacy_pkey"
        )
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_legacy")
        op.execute(
            f"CREATE TABLE {table} (LIKE {table}_legacy INCLUDING DEFAULTS INCLUDING COMMENTS "
            f"INCLUDING STORAGE INCLUDING COMPRESSION) PARTITION BY RANGE ({column})"
        )
        op.create_primary_key(op.f(f"pk_{table}"), table, list(key))
        _copy_grants(f"{table}_legacy", table)
    op.execute(f"ALTER INDEX ix_{META}_s3_key RENAME TO ix_{META}_s3_key_legacy")
    op.create_index(op.f(f"ix_{META}_s3_key"), META, ["s3_key"])
    op.execute(
        f"ALTER INDEX ix_{EVENTS}_user_id_event_timestamp "
        f"RENAME TO ix_{EVENTS}_user_id_event_timestamp_legacy"
    )
    op.create_index(
        op.f(f"ix_{EVENTS}_user_id_event_timestamp"),
        EVENTS,
        ["user_id", "event_timestamp"],
        postgresql_where=sa.text("user_id IS NOT NULL"),
    )
    for name, column, where in EVENT_INDEXES:
        op.create_index(
            op.f(name), EVENTS, [column], postgresql_where=sa.text(where) if where else None
        )
    _attach_or_drop_legacy()
    op.alter_column(
        OBJECTS,
        "hour",
        existing_type=sa.DateTime(timezone=True),
        existing_nullable=False,
        comment="UTC hour the key belongs to: the partition key (one partition per UTC day).",
        existing_comment="UTC hour the key belongs to.",
    )
    _set_table_comments()


def _copy_grants(old: str, new: str) -> None:
    """Give `new` every table privilege `old` has, as granted (the owner's own aside)."""
    op.execute(
        f"""
        DO $$
        DECLARE grant_row record;
        BEGIN
            FOR grant_row IN
                SELECT a.grantee, a.privilege_type, a.is_grantable
                FROM pg_class c, aclexplode(c.relacl) a
                WHERE c.oid = '{old}'::regclass AND a.grantee <> c.relowner
            LOOP
                EXECUTE format('GRANT %s ON {new} TO %s%s', grant_row.privilege_type,
                    CASE WHEN grant_row.grantee = 0 THEN 'PUBLIC'
                         ELSE quote_ident(grant_row.grantee::regrole::text) END,
                    CASE WHEN grant_row.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
            END LOOP;
        END $$
        """
    )


def _attach_or_drop_legacy() -> None:
    """Attach each old table as the legacy partition; drop it (and the claims' legacy
    partition) instead when the warehouse held no events at all."""
    tables = ", ".join(f"'{t}'" for t, _, _ in CONVERTED)
    op.execute(
        f"""
        DO $$
        DECLARE
            t text;
            until text := current_setting('{LEGACY_UNTIL}') || '+00';
            empty boolean := NOT EXISTS (SELECT FROM {EVENTS}_legacy)
                             AND NOT EXISTS (SELECT FROM {OBJECTS}_legacy);
        BEGIN
            FOREACH t IN ARRAY ARRAY[{tables}] LOOP
                IF empty THEN
                    EXECUTE format('DROP TABLE %I', t || '_legacy');
                ELSE
                    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I '
                                   'FOR VALUES FROM (MINVALUE) TO (%L)', t, t || '_legacy', until);
                END IF;
            END LOOP;
            IF empty THEN
                DROP TABLE {CLAIMS}_legacy;
            END IF;
        END $$
        """
    )


def _set_table_comments() -> None:
    op.create_table_comment(
        EVENTS,
        "One row per clickstream event, loaded hourly from S3 by clickstream-loader. On an "
        "adopted warehouse also the rows the original ETL wrote: those have no "
        "clickstream_ingest_meta row (see clickstream_adoptions). Partitioned by UTC day of "
        "event_timestamp (clickstream_events_pYYYYMMDD; _legacy: the rows before revision "
        "0006). One row per event_id is kept by clickstream_event_claims.",
    )
    op.create_table_comment(
        META,
        "Ingest and lineage metadata per event: where and how it arrived. Partitioned like "
        "clickstream_events; a row goes when its event is deleted (trigger on "
        "clickstream_events).",
    )
    op.create_table_comment(
        OBJECTS,
        "Objects loaded in full, one row each: lookback, check, status and reprocess read "
        "this, never the mere presence of rows. Partitioned by UTC day of hour.",
    )


def _create_delete_trigger() -> None:
    op.execute(
        f"""
        CREATE FUNCTION clickstream_events_deleted() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM {META} AS m USING deleted_events AS d
            WHERE m.event_timestamp = d.event_timestamp AND m.event_id = d.event_id;
            DELETE FROM {CLAIMS} AS c USING deleted_events AS d
            WHERE c.event_id = d.event_id AND c.event_timestamp = d.event_timestamp
              AND c.window_start IN (date_bin('2 hours', d.event_timestamp, {GRID_EVEN}),
                                     date_bin('2 hours', d.event_timestamp, {GRID_ODD}));
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "COMMENT ON FUNCTION clickstream_events_deleted() IS 'Deletes the clickstream_ingest_meta "
        "rows and clickstream_event_claims of deleted events (what the foreign key''s ON DELETE "
        "CASCADE did before revision 0006), so a rerun of their hour loads them again.'"
    )
    op.execute(
        f"CREATE TRIGGER clickstream_events_deleted AFTER DELETE ON {EVENTS} "
        "REFERENCING OLD TABLE AS deleted_events FOR EACH STATEMENT "
        "EXECUTE FUNCTION clickstream_events_deleted()"
    )
    # TRUNCATE fires no DELETE trigger: empty the meta rows and claims with the events.
    op.execute(
        f"""
        CREATE FUNCTION clickstream_events_truncated() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            TRUNCATE {META}, {CLAIMS};
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        f"CREATE TRIGGER clickstream_events_truncated AFTER TRUNCATE ON {EVENTS} "
        "FOR EACH STATEMENT EXECUTE FUNCTION clickstream_events_truncated()"
    )


ENSURE_BODY = f"""
DECLARE
    parents constant text[] := ARRAY['{EVENTS}', '{META}', '{CLAIMS}', '{OBJECTS}'];
    today constant date := (now() AT TIME ZONE 'UTC')::date;
    -- Where the parents are (search_path puts it after pg_catalog): partitions go beside them.
    home constant text := (SELECT n.nspname FROM pg_class c
                           JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE c.oid = '{EVENTS}'::regclass);
    horizon date;
    day date;
    parent text;
    part text;
    made integer := 0;
BEGIN
    IF first_day IS NULL OR last_day IS NULL OR last_day < first_day THEN
        RAISE EXCEPTION 'clickstream_ensure_partitions: need first_day <= last_day, got % and %',
            first_day, last_day USING ERRCODE = '22023';
    END IF;
    IF last_day - first_day > 31 THEN
        RAISE EXCEPTION 'clickstream_ensure_partitions: at most 32 days a call, got % to %',
            first_day, last_day USING ERRCODE = '22023';
    END IF;
    IF last_day > today + 366 THEN
        RAISE EXCEPTION 'clickstream_ensure_partitions: % is more than 366 days ahead', last_day
            USING ERRCODE = '22023';
    END IF;
    SELECT today - keep_days INTO horizon FROM {RETENTION};
    IF horizon IS NOT NULL AND first_day < horizon THEN
        RAISE EXCEPTION 'clickstream_ensure_partitions: % is retired (retention keeps days from %)',
            first_day, horizon USING ERRCODE = '22023';
    END IF;
    -- From the day before first_day, for the claims alone: an event in the first hour of a day
    -- claims the odd grid's window that starts at 23:00 the day before.
    FOR day IN SELECT generate_series(first_day - 1, last_day, interval '1 day')::date LOOP
        FOREACH parent IN ARRAY parents LOOP
            CONTINUE WHEN day < first_day AND parent <> '{CLAIMS}';
            part := parent || '_p' || to_char(day, 'YYYYMMDD');
            CONTINUE WHEN to_regclass(format('%I.%I', home, part)) IS NOT NULL
                          OR clickstream_partition_covers(parent, day);
            -- Serializes concurrent callers; loads (ROW EXCLUSIVE) and readers go on.
            EXECUTE format('LOCK TABLE %I.%I IN SHARE UPDATE EXCLUSIVE MODE', home, parent);
            CONTINUE WHEN to_regclass(format('%I.%I', home, part)) IS NOT NULL;
            EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING DEFAULTS '
                           'INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)',
                           home, part, home, parent);
            EXECUTE format('ALTER TABLE %I.%I ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                           home, parent, home, part, day::text || ' 00:00:00+00',
                           (day + 1)::text || ' 00:00:00+00');
            made := made + 1;
        END LOOP;
    END LOOP;
    RETURN made;
END
"""

COVERS_BODY = """
    SELECT EXISTS (
        SELECT FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = parent::regclass
          AND pg_get_expr(c.relpartbound, c.oid) LIKE 'FOR VALUES FROM (MINVALUE) TO (%'
          AND (day::timestamp AT TIME ZONE 'UTC') < substring(
                pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']+)''\\)')::timestamptz
    )
"""


def _create_ensure_function() -> None:
    op.execute(
        "CREATE FUNCTION clickstream_partition_covers(parent text, day date) RETURNS boolean "
        f"LANGUAGE sql STABLE AS $${COVERS_BODY}$$"
    )
    op.execute(
        f"CREATE FUNCTION {ENSURE}(first_day date, last_day date) RETURNS integer "
        f"LANGUAGE plpgsql SECURITY DEFINER AS $${ENSURE_BODY}$$"
    )
    # search_path fixed at creation to this schema, after pg_catalog and before pg_temp: a
    # caller's own search_path can never point the owner's rights at other tables.
    op.execute(
        f"""
        DO $$ BEGIN
            EXECUTE format('ALTER FUNCTION {ENSURE}(date, date) SET search_path = '
                           'pg_catalog, %I, pg_temp', current_schema());
            EXECUTE format('ALTER FUNCTION clickstream_partition_covers(text, date) '
                           'SET search_path = pg_catalog, %I, pg_temp', current_schema());
        END $$
        """
    )
    op.execute(f"REVOKE ALL ON FUNCTION {ENSURE}(date, date) FROM PUBLIC")
    op.execute(
        f"COMMENT ON FUNCTION {ENSURE}(date, date) IS 'Makes the missing UTC-day partitions of "
        "clickstream_events, clickstream_ingest_meta, clickstream_event_claims and "
        "clickstream_loaded_objects from first_day to last_day (at most 32 days, never before "
        "the recorded retention), and the claims partition of the day before first_day. "
        "SECURITY DEFINER: the loader needs EXECUTE, not DDL rights; REVOKE EXECUTE to turn "
        "automatic partitions off (then maintain --ahead-days premakes them). Returns the "
        "number of partitions made.'"
    )


def downgrade() -> None:
    """Unapply: plain tables again, every row copied back (see the module docstring)."""
    op.execute(f"DROP FUNCTION {ENSURE}(date, date)")
    op.execute("DROP FUNCTION clickstream_partition_covers(text, date)")
    op.execute(f"DROP TRIGGER clickstream_events_deleted ON {EVENTS}")
    op.execute("DROP FUNCTION clickstream_events_deleted()")
    op.execute(f"DROP TRIGGER clickstream_events_truncated ON {EVENTS}")
    op.execute("DROP FUNCTION clickstream_events_truncated()")
    op.execute(f"LOCK TABLE {EVENTS}, {META}, {OBJECTS} IN ACCESS EXCLUSIVE MODE")
    for table, _, _ in CONVERTED:
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_partitioned")
        op.execute(
            f"CREATE TABLE {table} (LIKE {table}_partitioned INCLUDING DEFAULTS "
            "INCLUDING COMMENTS INCLUDING STORAGE INCLUDING COMPRESSION)"
        )
        _copy_grants(f"{table}_partitioned", table)
    op.execute(
        f"INSERT INTO {EVENTS} SELECT DISTINCT ON (event_id) * FROM {EVENTS}_partitioned "
        "ORDER BY event_id, event_timestamp"
    )
    op.execute(
        f"INSERT INTO {META} SELECT m.* FROM {META}_partitioned m JOIN {EVENTS} e "
        "USING (event_id, event_timestamp)"
    )
    op.execute(f"INSERT INTO {OBJECTS} SELECT * FROM {OBJECTS}_partitioned")
    for table, _, _ in CONVERTED:
        op.execute(f"DROP TABLE {table}_partitioned CASCADE")
    op.drop_column(META, "event_timestamp")
    op.create_primary_key(op.f(f"pk_{EVENTS}"), EVENTS, ["event_id"])
    op.create_primary_key(op.f(f"pk_{META}"), META, ["event_id"])
    op.create_primary_key(op.f(f"pk_{OBJECTS}"), OBJECTS, ["s3_key"])
    op.create_foreign_key(
        op.f(f"fk_{META}_event_id_{EVENTS}"),
        META,
        EVENTS,
        ["event_id"],
        ["event_id"],
        ondelete="CASCADE",
    )
    _restore_old_indexes()
    op.drop_table(CLAIMS)
    op.drop_table(RETENTION)
    _restore_old_comments()


def _restore_old_comments() -> None:
    op.create_table_comment(
        EVENTS,
        "One row per clickstream event, loaded hourly from S3 by clickstream-loader. On an "
        "adopted warehouse also the rows the original ETL wrote: those have no "
        "clickstream_ingest_meta row (see clickstream_adoptions).",
    )
    op.create_table_comment(
        META, "Ingest and lineage metadata per event: where and how it arrived."
    )
    op.create_table_comment(
        OBJECTS,
        "Objects loaded in full, one row each: lookback, check, status and reprocess read "
        "this, never the mere presence of rows.",
    )
    op.alter_column(
        OBJECTS,
        "hour",
        existing_type=sa.DateTime(timezone=True),
        existing_nullable=False,
        comment="UTC hour the key belongs to.",
    )


def _restore_old_indexes() -> None:
    op.create_index(
        op.f(f"ix_{EVENTS}_event_timestamp"), EVENTS, ["event_timestamp"], postgresql_using="brin"
    )
    op.create_index(
        op.f(f"ix_{EVENTS}_session_id_event_timestamp"), EVENTS, ["session_id", "event_timestamp"]
    )
    op.create_index(
        op.f(f"ix_{EVENTS}_user_id_event_timestamp"),
        EVENTS,
        ["user_id", "event_timestamp"],
        postgresql_where=sa.text("user_id IS NOT NULL"),
    )
    op.create_index(
        op.f(f"ix_{EVENTS}_event_name_event_timestamp"), EVENTS, ["event_name", "event_timestamp"]
    )
    op.create_index(op.f(f"ix_{META}_s3_key"), META, ["s3_key"])
    op.create_index(op.f(f"ix_{OBJECTS}_hour"), OBJECTS, ["hour"])
    op.drop_index(f"ix_{QUARANTINE}_hour", table_name=QUARANTINE)
    op.create_index(
        op.f(f"ix_{QUARANTINE}_hour"),
        QUARANTINE,
        ["hour"],
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
