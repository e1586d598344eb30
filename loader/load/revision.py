"""The revision guard: the loader refuses a warehouse it was not built for; it never migrates.

The code's side is the Alembic history it was built for (loader.schema's KNOWN_REVISIONS, which
a test keeps equal to migrations/versions, so neither Alembic nor migrations/ ships with it);
the warehouse's side is `alembic_version` and, for expand/contract deploys, the list of
compatible revisions that migrations/env.py records in that table's comment. `check_revision`
compares the two once per invocation, before any S3 work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa

from loader.errors import TerminalError, sqlstate
from loader.schema import HEAD_REVISION, KNOWN_REVISIONS

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory


class SchemaRevisionError(TerminalError):
    """The warehouse is not at the revision this loader was built for."""


@dataclass(frozen=True)
class CodeRevisions:
    """The Alembic history this code was built for: its head, and every revision it knows."""

    head: str
    known: frozenset[str]


def code_revisions() -> CodeRevisions:
    """From loader.schema's constants, which a test keeps equal to migrations/versions."""
    return CodeRevisions(HEAD_REVISION, frozenset(KNOWN_REVISIONS))


# --- expand/contract: which loaders may load into a newer warehouse ------------------------------
#
# A loader knows only the revisions shipped with it, so it cannot read the file of a newer one.
# The newer release's env.py can: after every migration step it writes, in the same transaction,
# the list of revisions whose loaders may load into the new head as the comment of the
# alembic_version table. The loader reads it with the version, in the same statement.

#: Module-level flag a revision sets when a loader built for its down_revision still loads
#: correctly into it: additive changes (a nullable column or one with a default, an index, a
#: table the loader does not use). Anything the old loader would write wrongly, or fail on, leaves
#: it unset, and the chain of compatibility stops there.
COMPATIBLE_MARKER: Final = "loader_compatible"
_COMPATIBILITY_PREFIX: Final = "clickstream-loader: loaders built for these revisions may load here"
_COMPATIBILITY_SEPARATOR: Final = " (this one first): "


def compatible_loader_revisions(script: ScriptDirectory, head: str | None) -> list[str]:
    """`head`, then each down_revision for as long as the revision above it declares
    `loader_compatible = True`: the revisions whose loaders may load into `head`."""
    chain: list[str] = []
    revision = script.get_revision(head) if head else None
    while revision is not None:
        chain.append(revision.revision)
        down = revision.down_revision
        if not getattr(revision.module, COMPATIBLE_MARKER, False) or not isinstance(down, str):
            break
        revision = script.get_revision(down)
    return chain


def compatibility_comment(chain: list[str]) -> str | None:
    """The alembic_version table comment that records `compatible_loader_revisions`."""
    if not chain:
        return None
    return _COMPATIBILITY_PREFIX + _COMPATIBILITY_SEPARATOR + " ".join(chain)


def parse_compatibility_comment(comment: str | None, version: str) -> frozenset[str]:
    """The revisions a warehouse at `version` accepts loaders of; only `version` itself unless
    the comment was written for that very version (an edited or stale comment counts for
    nothing)."""
    if comment and comment.startswith(_COMPATIBILITY_PREFIX + _COMPATIBILITY_SEPARATOR):
        chain = comment.split(_COMPATIBILITY_SEPARATOR, 1)[1].split()
        if chain and chain[0] == version:
            return frozenset(chain)
    return frozenset({version})


@dataclass(frozen=True)
class WarehouseRevision:
    version: str | None
    accepts_loaders_of: frozenset[str]


#: One statement per check: the version and the compatibility comment of the same table.
_READ_REVISION = sa.text(
    "SELECT version_num, obj_description('alembic_version'::regclass, 'pg_class') "
    "FROM alembic_version"
)


def database_revision(conn: sa.Connection) -> WarehouseRevision:
    """The warehouse's Alembic version; no version at all when alembic_version does not exist.
    A role without SELECT on it is told so: that is a missing grant, not a missing table."""
    try:
        with conn.begin_nested():
            row = conn.execute(_READ_REVISION).first()
    except sa.exc.ProgrammingError as exc:
        code = sqlstate(exc)
        if code == "42P01":  # undefined_table
            return WarehouseRevision(None, frozenset())
        if code == "42501":  # insufficient_privilege
            raise SchemaRevisionError(
                "the loader's role may not read alembic_version (SQLSTATE 42501, permission "
                "denied): the DBA grants it SELECT there (deploy/grants.sql)"
            ) from None
        raise
    if row is None or row[0] is None:
        return WarehouseRevision(None, frozenset())
    version = str(row[0])
    return WarehouseRevision(version, parse_compatibility_comment(row[1], version))


def check_revision(conn: sa.Connection, code: CodeRevisions) -> str:
    """Refuse to load into a warehouse this loader was not built for; the loader never migrates.

    Loads when the warehouse is at the loader's head, or ahead of it by revisions that all
    declare themselves loader-compatible (expand/contract: the DBA applies the additive step,
    the loader is deployed after). Behind, ahead by anything else, or unknown: refused, naming
    both revisions and what to do."""
    found = database_revision(conn)
    current = found.version
    if current == code.head:
        return current
    if current is None or current in code.known:
        raise SchemaRevisionError(
            f"DW is at revision {current or '<none: alembic_version missing>'}, loader needs "
            f"{code.head}: run `alembic upgrade head` against the warehouse first"
        )
    if code.head in found.accepts_loaders_of:
        return current
    raise SchemaRevisionError(
        f"DW is at revision {current}, which this loader (built for {code.head}) does not know "
        f"and which is not declared loader-compatible back to {code.head}: deploy the loader "
        f"built for {current}, or downgrade the warehouse to {code.head}"
    )
