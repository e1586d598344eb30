"""No function in the shipped code (loader/, lambda_function.py) runs over MAX_LINES lines unless
it is listed in LONG_FUNCTIONS with the reason, which its docstring gives too.

Measured from the syntax tree: from the first decorator (or the `def`) to the last line of the
body, docstring and comments included, nested functions counted in their outer function too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 60

#: "path:Qualified.name" → why it is longer than MAX_LINES (its docstring says so as well).
LONG_FUNCTIONS: dict[str, str] = {}


def function_lengths(source: str, path: str) -> dict[str, int]:
    """'path:Qualified.name' → lines, for every function and method in `source`."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([d.lineno for d in child.decorator_list] + [child.lineno])
                assert child.end_lineno is not None
                lengths[f"{path}:{prefix}{child.name}"] = child.end_lineno - first + 1
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return lengths


def _shipped() -> dict[str, int]:
    lengths: dict[str, int] = {}
    for path in [*sorted(ROOT.joinpath("loader").rglob("*.py")), ROOT / "lambda_function.py"]:
        lengths.update(function_lengths(path.read_text(), path.relative_to(ROOT).as_posix()))
    return lengths


def test_the_measure_counts_what_it_says() -> None:
    # GIVEN a decorated method of a decorator line, its def, 58 statements and a return
    body = "".join(f"        x{i} = {i}\n" for i in range(58))
    source = "class A:\n    @staticmethod\n    def f():\n" + body + "        return 1\n"
    source += "\n\ndef g():\n    pass\n"
    assert function_lengths(source, "m.py") == {"m.py:A.f": 61, "m.py:g": 2}


def test_no_function_is_too_long_without_a_reason() -> None:
    lengths = _shipped()
    assert len(lengths) > 300  # the whole package was read
    too_long = {
        name: lines
        for name, lines in lengths.items()
        if lines > MAX_LINES and name not in LONG_FUNCTIONS
    }
    assert too_long == {}, "split them, or list them in LONG_FUNCTIONS with the reason"


def test_listed_exceptions_are_still_long_and_say_why() -> None:
    lengths = _shipped()
    for name, reason in LONG_FUNCTIONS.items():
        assert reason.strip(), name
        assert lengths.get(name, 0) > MAX_LINES, f"{name} is short now: take it off the list"
