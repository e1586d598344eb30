"""${message}

What changes and why, for the DBA who reviews this file alone. Say what a downgrade cannot
restore. If squawk (tests/integration/test_migrations.py) flags something that is safe here,
waive it below with the reason; an unused waiver fails the test.

Squawk waivers:
- none

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

# Revision identifiers, used by Alembic. Revisions import only alembic and sqlalchemy: never
# `loader`, so a later change to the application cannot change what this revision does.
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}
# True only if a loader built for down_revision still loads correctly into this revision
# (additive: a nullable column or one with a default, an index, a table the loader does not
# use). The DBA may then apply it before the new loader is deployed (expand/contract); env.py
# records it for the loaders in the warehouse. Anything else: False, and an older loader stops
# with a message naming both revisions.
loader_compatible = False


def upgrade() -> None:
    """Apply ..."""
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    """Unapply ..."""
    ${downgrades if downgrades else "pass"}
