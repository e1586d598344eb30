"""Alembic environment for the clickstream warehouse.

Online (`alembic upgrade head`): the URL comes from `loader.config.load_database_settings()`, the
same DW_PG_* code the loader uses, so there is no credential in alembic.ini and the password is
never printed. Every migration runs in its own transaction, on a session with `lock_timeout` set so
a migration waiting for a lock gives up instead of queueing every reader and writer behind it:

    ALEMBIC_LOCK_TIMEOUT_MS       default 5000 ms. DDL needs ACCESS EXCLUSIVE locks; while it
                                  waits, everything else on that table waits behind it. Better to
                                  fail fast and retry at a quieter time. 0 disables (waits forever).
    ALEMBIC_STATEMENT_TIMEOUT_MS  default 0 = no limit. An index built CONCURRENTLY on a big table
                                  may rightly take an hour, and killing it halfway leaves an
                                  INVALID index to clean up; the lock timeout above is what protects
                                  the loader. Set it when you want a hard ceiling.

Tests (and any caller that owns a connection) inject one as `config.attributes["connection"]`: a
`Connection` is used as is (its transaction and session settings belong to the caller); an `Engine`
(what pytest-alembic passes) is connected to and treated like our own. In-process runs keep the
caller's logging; set `config.attributes["configure_logging"]` to choose explicitly.

Offline (`alembic upgrade A:B --sql`): renders PostgreSQL DDL for a DBA to review or run with psql,
with no database reachable and no DW_PG_* set. The same timeouts are emitted as SET statements.

After every step (upgrade, downgrade or stamp), in that step's transaction, the comment of the
alembic_version table is set to the revisions whose loaders may load into the new head: the head,
then each older one for as long as the revision above it declares `loader_compatible = True`. A
loader of an older release cannot read a newer revision file; it reads that comment (see
`loader.load.db.check_revision`), so expand/contract deploys can migrate before the loader is
deployed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.operations.ops import MigrationScript
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, MetaData, NullPool, Table, create_engine, text

from loader.config import ConfigError, load_database_settings
from loader.load.revision import compatibility_comment, compatible_loader_revisions
from loader.schema import metadata

LOCK_TIMEOUT_ENV = "ALEMBIC_LOCK_TIMEOUT_MS"
STATEMENT_TIMEOUT_ENV = "ALEMBIC_STATEMENT_TIMEOUT_MS"
DEFAULT_LOCK_TIMEOUT_MS = 5000
DEFAULT_STATEMENT_TIMEOUT_MS = 0

# Offline mode renders for this dialect; no driver is loaded and nothing is connected to.
OFFLINE_URL = "postgresql://"

config = context.config
log = logging.getLogger("alembic.env")

# The CLI logs as alembic.ini says. In-process callers (tests, anything injecting a connection)
# keep their own logging: fileConfig would replace pytest's log capture.
_configure_logging = config.attributes.get(
    "configure_logging", config.attributes.get("connection") is None
)
if config.config_file_name is not None and _configure_logging:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata


def _timeout_ms(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number of milliseconds, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must be >= 0 (0 means no limit), got {value}")
    return value


def _session_timeouts() -> dict[str, str]:
    """The SET values for every migrating session, e.g. {"lock_timeout": "5000ms"}."""
    lock_ms = _timeout_ms(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_MS)
    statement_ms = _timeout_ms(STATEMENT_TIMEOUT_ENV, DEFAULT_STATEMENT_TIMEOUT_MS)
    return {"lock_timeout": f"{lock_ms}ms", "statement_timeout": f"{statement_ms}ms"}


def _refuse_empty_autogenerate(
    migration_context: MigrationContext, revision: Any, directives: list[MigrationScript]
) -> None:
    """`alembic revision --autogenerate` writes no file when the models match the database."""
    cmd_opts = config.cmd_opts
    if cmd_opts is not None and getattr(cmd_opts, "autogenerate", False):
        script = directives[0]
        if script.upgrade_ops is not None and script.upgrade_ops.is_empty():
            directives[:] = []
            log.info("No schema changes detected; no revision file written.")


def _record_loader_compatibility(
    *, ctx: MigrationContext, step: Any, heads: set[str], run_args: Any
) -> None:
    """COMMENT ON TABLE alembic_version: which loaders may load into the new head."""
    head = next(iter(heads)) if len(heads) == 1 else None
    comment = compatibility_comment(compatible_loader_revisions(context.script, head))
    version_table = Table(
        ctx.version_table, MetaData(), schema=ctx.version_table_schema, comment=comment
    )
    if comment is None:
        ctx.impl.drop_table_comment(version_table)
    else:
        ctx.impl.create_table_comment(version_table)


# The day partitions (`<table>_pYYYYMMDD`) and the converted tables (`<table>_legacy`) that
# revision 0006 attaches are the partitioned tables' storage, not tables of their own: the
# models describe the parents, so autogenerate and `alembic check` compare only those.
_PARTITION_NAME = re.compile(r"_(p\d{8}|legacy)$")


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    if type_ in ("table", "index") and name is not None:
        return _PARTITION_NAME.search(name) is None
    return True


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        transaction_per_migration=True,
        compare_type=True,
        compare_server_default=True,
        process_revision_directives=_refuse_empty_autogenerate,
        include_name=_include_name,
        on_version_apply=_record_loader_compatibility,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Render the migrations as SQL, one BEGIN/COMMIT per revision."""
    _configure(
        url=OFFLINE_URL,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    for name, value in _session_timeouts().items():
        context.execute(f"SET {name} = '{value}'")
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def _run_on_own_connection(engine: Engine) -> None:
    with engine.connect() as connection:
        for name, value in _session_timeouts().items():
            connection.execute(
                text("SELECT set_config(:name, :value, false)"), {"name": name, "value": value}
            )
        # Close the transaction the SETs began, so Alembic opens one per migration.
        connection.commit()
        _run_on(connection)


def run_migrations_online() -> None:
    injected = config.attributes.get("connection")
    if isinstance(injected, Connection):
        _run_on(injected)
        return
    if isinstance(injected, Engine):
        _run_on_own_connection(injected)
        return
    if injected is not None:
        raise TypeError(
            f"config.attributes['connection'] must be a Connection or Engine, got {injected!r}"
        )

    settings = load_database_settings()
    # Tell a DBA's pg_stat_activity which sessions are migrations.
    settings = dataclasses.replace(
        settings, application_name=f"{settings.application_name}-migrations"
    )
    url = settings.url()
    log.info("Migrating %s", url.render_as_string(hide_password=True))
    engine = create_engine(
        url,
        poolclass=NullPool,
        connect_args={"connect_timeout": settings.connect_timeout_s},
    )
    try:
        _run_on_own_connection(engine)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
