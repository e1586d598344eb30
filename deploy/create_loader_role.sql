-- deploy/create_loader_role.sql: the clickstream loader's roles, created once per cluster.
--
-- Run by a DBA with CREATEROLE (or a superuser), before deploy/grants.sql:
--
--   psql "host=... dbname=postgres user=<dba>" -X -v ON_ERROR_STOP=1 \
--        -v loader_role=clickstream_loader -v loader_login=clickstream_loader_lambda \
--        -f deploy/create_loader_role.sql
--
-- It creates two roles (and leaves existing ones as they are, so it is safe to re-run):
--
--   loader_role   NOLOGIN group role. deploy/grants.sql grants the table privileges to it, in
--                 every database the loader writes to.
--   loader_login  LOGIN role the Lambda connects as (DW_PG_USER). It holds no privilege of its
--                 own; it inherits the group's.
--
-- Why two roles: credentials rotate and differ per environment (a password here, RDS IAM auth
-- there, a second login during a rotation), while the privileges a DBA reviewed should not.
-- Adding or replacing a login is one `GRANT loader_role TO new_login`, with no change to the
-- reviewed grants. Roles are cluster-wide, which is also why this is a script and not an
-- Alembic revision: a revision runs per database and would fight over a shared role.
--
-- No password is in this file, and none should be. Afterwards, either
--   \password clickstream_loader_lambda        (psql hashes it client-side; nothing in logs)
-- or, on Amazon RDS with IAM database authentication:
--   GRANT rds_iam TO clickstream_loader_lambda;
--
-- The login gets explicit, boring attributes so a reviewer sees them: no superuser, no role or
-- database creation, no replication, no RLS bypass.

\set ON_ERROR_STOP on

\if :{?loader_role}
\else
  \set loader_role clickstream_loader
\endif
\if :{?loader_login}
\else
  \set loader_login clickstream_loader_lambda
\endif

SELECT format('CREATE ROLE %I NOLOGIN', :'loader_role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'loader_role')
\gexec

SELECT format(
  'CREATE ROLE %I LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS',
  :'loader_login'
)
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'loader_login')
\gexec

GRANT :"loader_role" TO :"loader_login";
