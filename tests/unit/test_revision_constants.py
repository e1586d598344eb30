"""The loader's revision constants are the Alembic history, and the loader never imports Alembic.

The revision guard compares the warehouse with `loader.schema.KNOWN_REVISIONS` and
`HEAD_REVISION` instead of reading migrations/ (which neither the Lambda zip nor a plain
install of the loader carries). These tests keep the constants equal to the scripts, so whoever
adds a revision is told to add its id.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from loader.load.revision import code_revisions
from loader.schema import HEAD_REVISION, KNOWN_REVISIONS, clickstream_load_runs

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "migrations"))
    return ScriptDirectory.from_config(config)


def test_known_revisions_are_the_alembic_history_oldest_first() -> None:
    history = [rev.revision for rev in _script().walk_revisions("base", "heads")]
    history.reverse()

    assert list(KNOWN_REVISIONS) == history, (
        f"migrations/versions holds {history}, loader/schema.py KNOWN_REVISIONS says "
        f"{list(KNOWN_REVISIONS)}: append the new revision's id to KNOWN_REVISIONS"
    )


def test_head_revision_is_the_single_alembic_head() -> None:
    heads = _script().get_heads()

    assert heads == [HEAD_REVISION], (
        f"Alembic heads {heads}, loader/schema.py HEAD_REVISION {HEAD_REVISION!r}"
    )


def test_the_revision_guard_uses_the_constants() -> None:
    code = code_revisions()

    assert code.head == HEAD_REVISION
    assert code.known == frozenset(KNOWN_REVISIONS)


def test_the_handler_and_its_revision_guard_never_import_alembic() -> None:
    # A fresh interpreter: this test process has imported alembic above.
    probe = (
        "import sys, lambda_function\n"
        "from loader.load.revision import code_revisions\n"
        "code_revisions()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_ledger_checks_rendered_from_the_enums_are_what_the_revisions_created() -> None:
    """loader/schema.py builds the CHECK constraints from `TriggerKind` and `RunState`; shipped
    revisions are never edited, so the rendered text must be, to the letter, the newest
    revision's that sets each constraint."""
    revisions = sorted((ROOT / "migrations" / "versions").glob("*.py"))
    for check in clickstream_load_runs.constraints:
        text = str(getattr(check, "sqltext", ""))
        if not text:
            continue
        column = text.split()[0]
        # The column and its first value: another table's `state` check (0007's erasure
        # requests) is not this one.
        opening = text.split(",")[0]
        setting = [p for p in revisions if f'"{opening}' in p.read_text()]
        assert setting, f"no revision sets the {column} check"
        assert f'"{text}"' in setting[-1].read_text(), (text, setting[-1].name)
