"""The revision guard: a warehouse ahead of the loader by revisions declared loader-compatible
still loads (expand/contract deploys), anything else stops with a message naming both revisions,
and a warm container notices a downgrade between two invocations.

"Ahead" is made for real: the project's migrations are copied, newer revisions are added to the
copy, and the copy's env.py upgrades the test warehouse, exactly as a DBA running a newer
release's `alembic upgrade head` would, while the loader under test keeps its own migrations.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import lambda_function
from loader.load.revision import SchemaRevisionError
from loader.schema import HEAD_REVISION
from loader.window import parse_hour
from tools.demo.traffic import generate_hour, upload

ROOT = Path(__file__).resolve().parents[2]
HOUR = parse_hour("2026-11-24T13")
LOADER_HEAD = HEAD_REVISION

REVISION = '''"""Test revision {revision}: {what}.

Squawk waivers:
- none
"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None
{marker}


def upgrade() -> None:
    """Apply: {what}."""
    op.add_column(
        "clickstream_events",
        sa.Column("{column}", sa.Text(), nullable={nullable}, comment="test column"),
    )


def downgrade() -> None:
    """Unapply: drop the column again."""
    op.drop_column("clickstream_events", "{column}")
'''


def newer_release(tmp_path: Path, compatible: list[bool]) -> tuple[Path, list[str]]:
    """The project's migrations plus one revision per flag, each on top of the last; a
    compatible one adds a nullable column (additive: the old loader never names it), an
    incompatible one a NOT NULL column without a default (the old loader's inserts would fail)."""
    scripts = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", scripts, ignore=shutil.ignore_patterns("__pycache__"))
    down, made = LOADER_HEAD, []
    for index, flag in enumerate(compatible):
        revision = f"09{index:02d}_{'additive' if flag else 'breaking'}"
        (scripts / "versions" / f"2099_01_01_{revision}.py").write_text(
            REVISION.format(
                revision=revision,
                down_revision=down,
                what="a nullable column" if flag else "a NOT NULL column without a default",
                marker="loader_compatible = True" if flag else "",
                column=f"test_column_{index}",
                nullable=flag,
            )
        )
        down = revision
        made.append(revision)
    return scripts, made


def migrate(engine: sa.Engine, scripts: Path, target: str, *, down: bool = False) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(scripts))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        if down:
            command.downgrade(cfg, target)
        else:
            command.upgrade(cfg, target)


@pytest.fixture
def handler(loader_env: dict[str, str], s3: Any, bucket: str) -> Iterator[Any]:
    upload(s3, bucket, generate_hour(HOUR, 20, malformed_ratio=0))
    lambda_function._factory.close()
    yield lambda_function.lambda_handler
    lambda_function._factory.close()


@pytest.mark.parametrize(
    "compatible",
    [[True], [True, True]],
    ids=["one-additive", "two-additive"],
)
def test_a_warehouse_ahead_by_compatible_revisions_still_loads(
    handler: Any, dw_engine: sa.Engine, tmp_path: Path, compatible: list[bool]
) -> None:
    scripts, revisions = newer_release(tmp_path, compatible)
    migrate(dw_engine, scripts, "head")
    report = handler({"hour": "2026-11-24T13"}, None)
    assert (report["state"], report["inserted"]) == ("complete", 20)
    assert report["db_revision"] == revisions[-1]


@pytest.mark.parametrize(
    "compatible",
    [[False], [True, False], [False, True]],
    ids=["breaking", "additive-then-breaking", "breaking-then-additive"],
)
def test_a_warehouse_ahead_by_anything_else_is_refused_naming_both_revisions(
    handler: Any, dw_engine: sa.Engine, tmp_path: Path, compatible: list[bool]
) -> None:
    scripts, revisions = newer_release(tmp_path, compatible)
    migrate(dw_engine, scripts, "head")
    with pytest.raises(SchemaRevisionError) as refused:
        handler({"hour": "2026-11-24T13"}, None)
    message = str(refused.value)
    assert revisions[-1] in message and LOADER_HEAD in message
    assert "loader-compatible" in message
    with dw_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM clickstream_events")).scalar_one() == 0


def test_going_back_to_the_loaders_revision_loads_again(
    handler: Any, dw_engine: sa.Engine, tmp_path: Path
) -> None:
    """The compatibility record follows the warehouse down as well as up."""
    scripts, _ = newer_release(tmp_path, [False])
    migrate(dw_engine, scripts, "head")
    with pytest.raises(SchemaRevisionError):
        handler({"hour": "2026-11-24T13"}, None)
    migrate(dw_engine, scripts, LOADER_HEAD, down=True)
    report = handler({"hour": "2026-11-24T13"}, None)
    assert (report["state"], report["db_revision"]) == ("complete", LOADER_HEAD)


def test_a_warm_container_rechecks_once_per_invocation_and_catches_a_downgrade(
    handler: Any, dw_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_RECORDS_PER_BATCH", "5")
    engine = lambda_function._factory.get().engine  # the warm container's engine object
    revision_reads: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if "alembic_version" in statement:
            revision_reads.append(statement)

    scheduled = {"source": "aws.events", "detail-type": "Scheduled Event"}
    # GIVEN one invocation of four batches and a lookback: one read of the revision
    first = handler({**scheduled, "time": "2026-11-24T14:05:00Z"}, None)
    assert (first["state"], first["batches"]) == ("complete", 4)
    assert len(revision_reads) == 1
    # WHEN a DBA downgrades the warehouse before the next invocation of the same container
    migrate(dw_engine, ROOT / "migrations", "-1", down=True)
    # THEN that invocation reads the revision again and refuses to load
    with pytest.raises(SchemaRevisionError) as refused:
        handler({**scheduled, "time": "2026-11-24T15:05:00Z"}, None)
    assert len(revision_reads) == 2
    message = str(refused.value)
    assert LOADER_HEAD in message and "alembic upgrade head" in message
