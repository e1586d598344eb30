"""One root for the loader's errors, a transient and a terminal branch, and one decision on what
is retried (loader/errors.py)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from loader.errors import LoaderError, TerminalError, TransientError, is_transient
from loader.pipeline.runs import HoursFailed, HoursResult

ROOT = Path(__file__).resolve().parents[2]
#: Errors that stand on neither branch, and why.
OFF_BRANCH = {
    # the root itself
    "loader.errors.LoaderError": Exception,
    # a wrapper: the hour's error is its __cause__, which decides
    "loader.pipeline.runs.HoursFailed": LoaderError,
    # private control flow inside a body callback; it never leaves crt_client.py
    "loader.extract.crt_client._TooLarge": Exception,
}


def _exception_classes() -> list[str]:
    """'module.Class' for every class in loader/ whose bases name an Error or Exception."""
    found = []
    for path in sorted((ROOT / "loader").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id.endswith(("Error", "Exception"))
                for b in node.bases
            ):
                found.append(f"{module}.{node.name}")
    return found


def test_every_error_the_loader_raises_is_on_one_branch() -> None:
    classes = _exception_classes()
    assert len(classes) >= 11  # the scan found them
    for name in classes:
        module, _, attr = name.rpartition(".")
        cls = getattr(importlib.import_module(module), attr)
        if name in OFF_BRANCH:
            assert issubclass(cls, OFF_BRANCH[name]), name
            continue
        assert issubclass(cls, TransientError) != issubclass(cls, TerminalError), name


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TransientError("S3 down past the retries"), True),
        (TerminalError("access denied"), False),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("timed out"), True),
        (ValueError("a bug"), False),
    ],
    ids=repr,
)
def test_what_is_retried(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    ("cause", "transient"), [(TransientError("x"), True), (TerminalError("x"), False)]
)
def test_a_wrapper_is_what_it_wraps(cause: BaseException, transient: bool) -> None:
    try:
        try:
            raise cause
        except LoaderError as exc:
            raise HoursFailed("hour 13 failed", HoursResult.__new__(HoursResult)) from exc
    except HoursFailed as wrapped:
        assert is_transient(wrapped) is transient
