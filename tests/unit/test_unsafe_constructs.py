"""Static checks over the shipped code (loader/ and lambda_function.py), by syntax tree rather
than by text, so a word in a comment or `exec_driver_sql` is not mistaken for a call.

- No deserialiser that can run code: pickle/marshal/shelve/dill, `yaml.load` (only
  `yaml.safe_load` would be acceptable), and no `eval`/`exec`/`compile`/`__import__`.
- SQL text is built with f-strings in exactly the places docs/security.md reviewed; a new one
  fails here until it has been reviewed and added to REVIEWED_SQL_FSTRINGS.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*ROOT.joinpath("loader").rglob("*.py"), ROOT / "lambda_function.py"])

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}
SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|COPY|TRUNCATE|GRANT|LOCK|SET)\b"
)

#: (file, a fragment of the f-string's literal text) for every reviewed f-string that builds SQL.
#: See docs/security.md, "SQL construction".
REVIEWED_SQL_FSTRINGS = {
    ("loader/load/copy.py", "CREATE TEMPORARY TABLE IF NOT EXISTS "),
    ("loader/load/copy.py", "COPY pg_temp."),
    ("loader/maintenance.py", " DETACH PARTITION "),
    ("loader/maintenance.py", "DROP TABLE IF EXISTS "),
    ("loader/load/rollups.py", "LOCK TABLE "),
}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", SHIPPED, ids=_rel)
def test_no_code_executing_deserialisers_or_dynamic_evaluation(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            problems += [a.name for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in UNSAFE_MODULES:
                problems.append(node.module)
            if node.module.split(".")[0] == "yaml" and any(
                a.name in ("load", "load_all", "unsafe_load") for a in node.names
            ):
                problems.append("from yaml import load")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS:
                problems.append(f"{func.id}() at line {node.lineno}")
            if (
                isinstance(func, ast.Attribute)
                and func.attr in ("load", "load_all", "unsafe_load", "full_load")
                and isinstance(func.value, ast.Name)
                and func.value.id == "yaml"
            ):
                problems.append(f"yaml.{func.attr}() at line {node.lineno}")
    assert problems == [], f"{_rel(path)}: {problems}"


def _sql_fstrings(path: Path) -> list[tuple[int, str]]:
    """(line, literal text) of each f-string whose literal parts read like SQL."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            literal = "".join(
                part.value
                for part in node.values
                if isinstance(part, ast.Constant) and isinstance(part.value, str)
            )
            if SQL_WORDS.search(literal) and not literal.rstrip().endswith((".", ":")):
                found.append((node.lineno, literal))
    return found


def test_every_sql_fstring_has_been_reviewed() -> None:
    unreviewed = []
    seen = set()
    for path in SHIPPED:
        for line, literal in _sql_fstrings(path):
            match = next(
                (
                    (file, fragment)
                    for file, fragment in REVIEWED_SQL_FSTRINGS
                    if file == _rel(path) and fragment in literal
                ),
                None,
            )
            if match is None:
                unreviewed.append(f"{_rel(path)}:{line}: {literal!r}")
            else:
                seen.add(match)
    assert unreviewed == [], "SQL built with f-strings, not reviewed in docs/security.md"
    assert seen == REVIEWED_SQL_FSTRINGS, "a reviewed f-string is gone: update the list"
