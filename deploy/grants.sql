-- deploy/grants.sql: the least privilege the clickstream loader needs, and nothing more.
--
-- Run by a DBA as the owner of the tables (the role that ran `alembic upgrade head`) or a
-- superuser, once per database after `alembic upgrade head`, and again after any revision that
-- adds a table the loader uses:
--
--   psql "host=... dbname=... user=<owner>" -X -v ON_ERROR_STOP=1 \
--        -v loader_role=clickstream_loader -f deploy/grants.sql
--   (optionally -v schema=<schema>; the default is public; and -v erasure_role=<role> to grant
--   the erasure function's role too: see "The erasure role" below)
--
-- `loader_role` is the role that receives the privileges: the NOLOGIN group role made by
-- deploy/create_loader_role.sql (recommended), or the loader's login itself. Roles are
-- cluster-wide and stay out of the Alembic revision chain; privileges are per database and
-- live here.
--
-- The script is idempotent and exact: it first revokes every table privilege the role holds on
-- the loader's tables, then grants the list below, all in one transaction. Re-running it also
-- takes back anything granted by hand since. (Column-level grants made by hand are not
-- covered by the table-level REVOKE; there should be none.)
--
-- What the loader may do, and why:
--
--   CONNECT on the database       PUBLIC has it by default; granted explicitly so a hardened
--                                 cluster that revoked it from PUBLIC still works.
--   USAGE on the schema           To reach the tables at all. Not CREATE: the loader runs no
--                                 DDL; migrations run as the owner, never as the loader.
--   clickstream_events,           INSERT: the load is `INSERT ... ON CONFLICT DO NOTHING` on
--   clickstream_ingest_meta       (event_timestamp, event_id), after the event's dedup claims
--                                 (below), so reruns and overlapping lookbacks are harmless.
--     INSERT, SELECT              SELECT: `RETURNING` needs it (the loader counts what was
--                                 new), and so do the loader's own reads: telling an exact
--                                 repeat from a conflicting duplicate by payload_sha256, and
--                                 reconciling which keys of an hour are loaded.
--                                 No UPDATE, DELETE or TRUNCATE: a loaded event is never
--                                 changed or removed by the loader.
--   clickstream_load_runs,        Operational tables the loader maintains: a run row is
--   clickstream_quarantine        inserted when a run starts and updated when it ends; a
--     INSERT, SELECT, UPDATE      quarantine entry is upserted (ON CONFLICT DO UPDATE needs
--                                 UPDATE and SELECT) and marked resolved by `reprocess`.
--                                 No DELETE: history is kept; a DBA prunes it.
--   clickstream_loaded_objects    One row per object loaded in full, inserted in the
--     INSERT, SELECT, UPDATE      transaction of the object's last rows (ON CONFLICT DO
--                                 NOTHING; `reprocess` refreshes its counts with ON CONFLICT
--                                 DO UPDATE, which needs UPDATE). SELECT: lookback skips the
--                                 keys recorded there, `check` and `status` read it. No
--                                 DELETE: a DBA who wants an object read again deletes its row.
--   clickstream_rollup_events,    The dashboard's rollups (revision 0008): each batch adds
--   clickstream_rollup_products,  the events it inserted, in its own transaction (upserts:
--   clickstream_rollup_clients,   INSERT ... ON CONFLICT DO UPDATE needs UPDATE and SELECT);
--   clickstream_rollup_client_gaps rows that reach zero are deleted, and `clickstream-loader
--     SELECT, INSERT, UPDATE,     rollup` (run with the loader's credentials) recounts days
--     DELETE                      from the events, locking the two count tables (LOCK TABLE
--                                 ... IN SHARE ROW EXCLUSIVE MODE needs UPDATE or DELETE).
--                                 No TRUNCATE. Derived counts only: the events stay
--                                 append-only for the loader.
--   the database                  The default write path (WRITE_METHOD=copy) streams each batch
--     CONNECT, TEMPORARY          with COPY into two session-local temporary tables, then moves
--                                 it with INSERT ... SELECT ... ON CONFLICT DO NOTHING. PUBLIC
--                                 usually holds TEMPORARY already; granting it explicitly keeps
--                                 the loader working where a DBA revoked it from PUBLIC.
--                                 With WRITE_METHOD=insert it is not needed.
--   alembic_version               The loader records the schema revision it ran against
--     SELECT                      (clickstream_load_runs.db_revision) and can refuse a schema
--                                 it does not know. It never writes it.
--   clickstream_adoptions         What the migration adopted from the original ETL (rows and
--     SELECT                      their time range), read once per process so only events in
--                                 that range are checked against the adopted rows. Written
--                                 only by the migration.
--   clickstream_event_claims      One row per event_id across day partitions: each event claims
--     SELECT, INSERT, DELETE      two dedup windows before its rows go in (INSERT ... ON
--                                 CONFLICT DO NOTHING RETURNING). DELETE: an event that won one
--                                 of its claims and lost the other takes the one back, in the
--                                 same transaction. Only its own just-inserted claims.
--   clickstream_retention         The retention `maintain` records: which hours are retired.
--     SELECT
--   clickstream_ensure_partitions EXECUTE: makes the day partitions a batch needs. It runs with
--     (date, date)                the owner's rights (SECURITY DEFINER) and can only add UTC-day
--                                 partitions to the four partitioned tables, at most 32 days a
--                                 call, never a retired day. Revoke it to turn automatic
--                                 partitions off; `maintain --ahead-days` then premakes them.
--                                 Grants on a partitioned table cover its partitions when they
--                                 are reached through it, which is the only way the loader does.
--   clickstream_suppressions,     The suppression list: every batch reads it (by keyed hash)
--   clickstream_erasure_requests  and leaves out the events of people erased; the requests'
--     SELECT                      key_id tells the loader it holds the right key. Written only
--                                 by the erasure role.
--
-- The erasure role (optional, -v erasure_role=clickstream_eraser; create it and its login with
-- deploy/create_loader_role.sql, -v loader_role=clickstream_eraser -v
-- loader_login=clickstream_eraser_lambda). `clickstream-loader erase` and the template's
-- ErasureFunction connect as it. It may remove a person's rows and nothing else:
--
--   clickstream_events,           DELETE (with SELECT, which a DELETE ... WHERE needs): the
--   clickstream_ingest_meta,      subject's rows and their quarantine rows; the claims go with
--   clickstream_event_claims,     their events (revision 0006's trigger runs with the erasing
--   clickstream_quarantine        role's rights). No INSERT or UPDATE: it never writes an event.
--     SELECT, DELETE
--   clickstream_loaded_objects    UPDATE of the counts: an erased object's completion record
--     SELECT, UPDATE              counts the ingest rows it still has, so `check` agrees.
--   clickstream_erasure_requests  The request record: created, then updated as each store is
--     SELECT, INSERT, UPDATE      done. No DELETE: it is the proof.
--   clickstream_suppressions      Its entries. No UPDATE or DELETE: nobody comes off the list
--     SELECT, INSERT              by accident.
--   clickstream_rollup_events,    The dashboard's rollups: an erasure takes its events out of
--   clickstream_rollup_products,  them in the same transaction as the DELETE (upserts of
--   clickstream_rollup_clients,   negative deltas; rows that reach zero are deleted), and
--   clickstream_rollup_client_gaps recounts a day first when it holds rows the rollups never
--     SELECT, INSERT, UPDATE,     counted (LOCK TABLE ... IN SHARE ROW EXCLUSIVE MODE). Derived
--     DELETE                      counts only.
--   alembic_version,              Read, like the loader: the revision check, the adopted
--   clickstream_adoptions,        range and the retention.
--   clickstream_retention
--     SELECT
-- It gets no INSERT on the event tables, and the loader role gets no DELETE: neither can do
-- the other's job.
--
-- Deliberately not granted:
--   - sequences: the only one backs clickstream_quarantine.quarantine_id, an identity column
--     (GENERATED ALWAYS AS IDENTITY), which needs no privilege on its sequence to insert.
--   - CREATE on the schema: PostgreSQL 15+ no longer gives it to PUBLIC on `public`. On older
--     clusters PUBLIC still has it, and this script warns (it does not change PUBLIC's
--     privileges: that is a cluster-wide decision for the DBA, not for one application).
--
-- Safety checks before anything changes: the role must exist, must not be a superuser (a
-- superuser ignores every privilege) and must neither own the tables nor be a member of their
-- owner (an owner holds every privilege on them, whatever is revoked, and can run DDL).

\set ON_ERROR_STOP on

\if :{?loader_role}
\else
  \warn 'deploy/grants.sql: set the role to grant to, e.g. psql -v loader_role=clickstream_loader -f deploy/grants.sql'
  DO $$ BEGIN RAISE EXCEPTION 'psql variable loader_role is not set'; END $$;
\endif

\if :{?schema}
\else
  \set schema public
\endif

SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'loader_role') AS loader_role_exists
\gset
\if :loader_role_exists
\else
  \warn 'deploy/grants.sql: the role does not exist; create it first (deploy/create_loader_role.sql)'
  DO $$ BEGIN RAISE EXCEPTION 'loader_role does not exist'; END $$;
\endif

SELECT
  EXISTS (
    SELECT 1 FROM pg_roles WHERE rolname = :'loader_role' AND (rolsuper OR rolbypassrls)
  ) AS loader_role_too_powerful,
  EXISTS (
    SELECT 1 FROM pg_tables
    WHERE schemaname = :'schema'
      AND tablename IN ('clickstream_events', 'clickstream_ingest_meta', 'clickstream_load_runs',
                        'clickstream_quarantine', 'clickstream_loaded_objects',
                        'clickstream_adoptions', 'clickstream_event_claims',
                        'clickstream_retention', 'clickstream_suppressions',
                        'clickstream_erasure_requests', 'alembic_version',
                        'clickstream_rollup_events', 'clickstream_rollup_products',
                        'clickstream_rollup_clients', 'clickstream_rollup_client_gaps')
      AND pg_has_role(:'loader_role', tableowner, 'MEMBER')
  ) AS loader_role_owns_tables,
  current_database() AS database_name
\gset

\if :loader_role_too_powerful
  \warn 'deploy/grants.sql: the role is a superuser or bypasses RLS: privileges would not restrict it'
  DO $$ BEGIN RAISE EXCEPTION 'loader_role must not be a superuser or BYPASSRLS'; END $$;
\endif

\if :loader_role_owns_tables
  \warn 'deploy/grants.sql: the role owns the tables (or is a member of their owner): an owner holds every privilege'
  DO $$ BEGIN RAISE EXCEPTION 'loader_role must not own the warehouse tables or be a member of their owner'; END $$;
\endif

\if :{?erasure_role}
SELECT
  EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'erasure_role') AS erasure_role_exists,
  EXISTS (
    SELECT 1 FROM pg_roles WHERE rolname = :'erasure_role' AND (rolsuper OR rolbypassrls)
  ) AS erasure_role_too_powerful,
  EXISTS (
    SELECT 1 FROM pg_tables
    WHERE schemaname = :'schema' AND tablename LIKE 'clickstream%'
      AND pg_has_role(:'erasure_role', tableowner, 'MEMBER')
  ) AS erasure_role_owns_tables,
  :'erasure_role' = :'loader_role' AS erasure_role_is_loader_role
\gset
\if :erasure_role_exists
\else
  \warn 'deploy/grants.sql: the erasure role does not exist; create it first (deploy/create_loader_role.sql)'
  DO $$ BEGIN RAISE EXCEPTION 'erasure_role does not exist'; END $$;
\endif
\if :erasure_role_too_powerful
  DO $$ BEGIN RAISE EXCEPTION 'erasure_role must not be a superuser or BYPASSRLS'; END $$;
\endif
\if :erasure_role_owns_tables
  DO $$ BEGIN RAISE EXCEPTION 'erasure_role must not own the warehouse tables or be a member of their owner'; END $$;
\endif
\if :erasure_role_is_loader_role
  DO $$ BEGIN RAISE EXCEPTION 'erasure_role must be a role of its own, not loader_role'; END $$;
\endif
\endif

-- The roles this run grants to, as a quoted list for the REVOKEs below.
\if :{?erasure_role}
SELECT format('%I, %I', :'loader_role', :'erasure_role') AS roles \gset
\else
SELECT format('%I', :'loader_role') AS roles \gset
\endif

BEGIN;

-- Start from nothing on the application's tables, so the grants below are the whole story.
REVOKE ALL ON TABLE
  :"schema".clickstream_events,
  :"schema".clickstream_ingest_meta,
  :"schema".clickstream_load_runs,
  :"schema".clickstream_quarantine,
  :"schema".clickstream_loaded_objects,
  :"schema".clickstream_adoptions,
  :"schema".clickstream_event_claims,
  :"schema".clickstream_retention,
  :"schema".clickstream_suppressions,
  :"schema".clickstream_erasure_requests,
  :"schema".alembic_version,
  :"schema".clickstream_rollup_events,
  :"schema".clickstream_rollup_products,
  :"schema".clickstream_rollup_clients,
  :"schema".clickstream_rollup_client_gaps
FROM :roles;
REVOKE ALL ON FUNCTION :"schema".clickstream_ensure_partitions(date, date) FROM :roles;
REVOKE CREATE ON SCHEMA :"schema" FROM :roles;

GRANT CONNECT, TEMPORARY ON DATABASE :"database_name" TO :"loader_role";
GRANT USAGE ON SCHEMA :"schema" TO :"loader_role";

-- The events: append-only for the loader.
GRANT SELECT, INSERT ON TABLE
  :"schema".clickstream_events,
  :"schema".clickstream_ingest_meta
TO :"loader_role";

-- The load ledger: the loader's own bookkeeping.
GRANT SELECT, INSERT, UPDATE ON TABLE
  :"schema".clickstream_load_runs,
  :"schema".clickstream_quarantine,
  :"schema".clickstream_loaded_objects
TO :"loader_role";

-- One row per event across partitions: the loader's claims.
GRANT SELECT, INSERT, DELETE ON TABLE :"schema".clickstream_event_claims TO :"loader_role";

-- The dashboard's rollups: derived counts the loader keeps in step with the events it inserts.
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE
  :"schema".clickstream_rollup_events,
  :"schema".clickstream_rollup_products,
  :"schema".clickstream_rollup_clients,
  :"schema".clickstream_rollup_client_gaps
TO :"loader_role";

-- The schema revision, what was adopted from the original ETL, the retention: read-only.
GRANT SELECT ON TABLE
  :"schema".alembic_version,
  :"schema".clickstream_adoptions,
  :"schema".clickstream_retention
TO :"loader_role";

-- The day partitions a batch needs, made with the owner's rights (see above).
GRANT EXECUTE ON FUNCTION :"schema".clickstream_ensure_partitions(date, date) TO :"loader_role";

-- The suppression list and the requests' key_id: read-only.
GRANT SELECT ON TABLE
  :"schema".clickstream_suppressions,
  :"schema".clickstream_erasure_requests
TO :"loader_role";

\if :{?erasure_role}
GRANT CONNECT ON DATABASE :"database_name" TO :"erasure_role";
GRANT USAGE ON SCHEMA :"schema" TO :"erasure_role";
GRANT SELECT, DELETE ON TABLE
  :"schema".clickstream_events,
  :"schema".clickstream_ingest_meta,
  :"schema".clickstream_event_claims,
  :"schema".clickstream_quarantine
TO :"erasure_role";
GRANT SELECT, UPDATE ON TABLE :"schema".clickstream_loaded_objects TO :"erasure_role";
GRANT SELECT, INSERT, UPDATE ON TABLE :"schema".clickstream_erasure_requests TO :"erasure_role";
GRANT SELECT, INSERT ON TABLE :"schema".clickstream_suppressions TO :"erasure_role";
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE
  :"schema".clickstream_rollup_events,
  :"schema".clickstream_rollup_products,
  :"schema".clickstream_rollup_clients,
  :"schema".clickstream_rollup_client_gaps
TO :"erasure_role";
GRANT SELECT ON TABLE
  :"schema".alembic_version,
  :"schema".clickstream_adoptions,
  :"schema".clickstream_retention
TO :"erasure_role";
\endif

COMMIT;

-- Warn (do not fail) when PUBLIC still lets every role create objects in the schema.
SELECT has_schema_privilege(:'loader_role', :'schema', 'CREATE') AS loader_role_can_create
\gset
\if :loader_role_can_create
  \warn 'deploy/grants.sql: WARNING: the role can still CREATE in the schema through PUBLIC (PostgreSQL < 15 default). Consider: REVOKE CREATE ON SCHEMA public FROM PUBLIC;'
\endif

-- For the reviewer: what the role can now do on each table of the schema.
SELECT c.relname AS "table",
       has_table_privilege(:'loader_role', c.oid, 'SELECT') AS "select",
       has_table_privilege(:'loader_role', c.oid, 'INSERT') AS "insert",
       has_table_privilege(:'loader_role', c.oid, 'UPDATE') AS "update",
       has_table_privilege(:'loader_role', c.oid, 'DELETE') AS "delete",
       has_table_privilege(:'loader_role', c.oid, 'TRUNCATE') AS "truncate"
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :'schema' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY 1;

\if :{?erasure_role}
SELECT c.relname AS "table",
       has_table_privilege(:'erasure_role', c.oid, 'SELECT') AS "erasure select",
       has_table_privilege(:'erasure_role', c.oid, 'INSERT') AS "erasure insert",
       has_table_privilege(:'erasure_role', c.oid, 'UPDATE') AS "erasure update",
       has_table_privilege(:'erasure_role', c.oid, 'DELETE') AS "erasure delete"
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :'schema' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY 1;
\endif
