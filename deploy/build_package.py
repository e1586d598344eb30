#!/usr/bin/env python3
"""Build the release: the Lambda zip `dist/clickstream-loader.zip`, and the wheel beside it.

The loader runs in a private subnet with no internet, so everything it imports ships in this
one artifact. The zip holds:

- the runtime dependencies from pyproject.toml's `[project] dependencies` (the single source of
  truth; `constraints.txt` at the repository root pins them when present), installed by pip as
  manylinux wheels (manylinux2014 up to glibc 2.34, Amazon Linux 2023) for the Lambda runtime's
  Python and CPU, never for the build machine's;
- the loader: `loader/`, `lambda_function.py`.

Nothing else: no tests, no dev or CLI extras (typer, rich), no migrations and no Alembic (the
loader checks the warehouse's revision against constants in loader/schema.py), no
`__pycache__`, no console scripts. Three rules make the dependencies lean without picking files
out of them by hand (each applies to every distribution alike, and RECORD is rewritten to list
exactly what ships, with the hashes of what ships):

- AWS service models only for the services the loader calls (`SDK_SERVICES`): botocore keeps
  one folder per service, 400-odd of them, and reads only the ones a client is created for;
- debug information stripped from compiled extensions (`--strip-debug`: symbols stay, so
  tracebacks and `ldd` look the same); awscrt and SQLAlchemy's Cython modules ship with it;
- console scripts and byte-code dropped.

Entries are sorted and time-stamped with one fixed date, so the same inputs give the same bytes
(pin the inputs with constraints.txt; the build prints the versions it resolved and the strip
tool it used).

Every build prints the zip's size unzipped and zipped, its file count, and the cold import of
the handler from the unpacked zip: the median of 10 fresh `python -S -I` interpreters, when an
interpreter of the target's Python and CPU is found (`--import-python` names one).

The wheel (`dist/clickstream_loader-<version>-py3-none-any.whl`, `--no-wheel` skips it) is the
same code for a host: the `clickstream-loader` CLI with the `[cli]` extra, and the DBA's
migrations as the `clickstream_migrations` package with `clickstream-migrate` and the
`[migrations]` extra (Alembic). tests/integration/test_install.py builds it with `build_wheel`
below, installs it into a fresh virtualenv and runs both.

Usage (`make package` runs the first line):

    .venv/bin/python deploy/build_package.py
    .venv/bin/python deploy/build_package.py --arch arm64 --python-version 3.13
    .venv/bin/python deploy/build_package.py --no-bundle-boto3 --output dist/small.zip
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "dist" / "clickstream-loader.zip"

#: What the package carries from the repository, besides the dependencies.
PROJECT_DIRS = ("loader",)
PROJECT_FILES = ("lambda_function.py",)
#: What the wheel is built from: pyproject.toml and the files it names.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "lambda_function.py", "loader", "migrations")

#: Lambda's CPU names and the machine name in wheel platform tags.
WHEEL_MACHINES = {"x86_64": "x86_64", "arm64": "aarch64"}
LAMBDA_PYTHONS = ("3.12", "3.13")
#: The python3.12 and python3.13 runtimes run on Amazon Linux 2023, whose glibc is 2.34: any
#: manylinux wheel from manylinux2014 (glibc 2.17) up to manylinux_2_34 runs there. Offering
#: only manylinux2014 is not enough: psycopg2-binary 2.9.12+ ships aarch64 wheels solely as
#: manylinux_2_28, so an arm64 build pinned to a current version would find no wheel.
LAMBDA_GLIBC_MINOR = 34


def wheel_platforms(arch: str) -> list[str]:
    """pip --platform values for Lambda on `arch`, most specific first (as pip ranks a host)."""
    machine = WHEEL_MACHINES[arch]
    newer = [f"manylinux_2_{minor}_{machine}" for minor in range(LAMBDA_GLIBC_MINOR, 17, -1)]
    return [*newer, f"manylinux2014_{machine}"]


#: The SDK the Lambda Python runtime already carries in /var/runtime: boto3 and everything it
#: pulls in. `--no-bundle-boto3` leaves this whole set out, so the runtime's copies are used as
#: the consistent set AWS tested together (never our urllib3 under their botocore).
RUNTIME_SDK = frozenset(
    {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"}
)

#: Bundling boto3 is the default. The runtime's boto3 is whatever version AWS last rolled out
#: to that runtime (older than ours, and it changes under a deployed function without a
#: deploy). Bundling costs ~+5 MiB unzipped and ~+1.5 MiB zipped with the service models pruned
#: (37 MiB / 12 MiB in all for x86_64; cold start imports botocore either way) and buys: the
#: exact botocore the tests ran against; a botocore that matches the awscrt we ship
#: (botocore switches to CRT signing whenever awscrt is importable, so a runtime botocore
#: would meet an awscrt version it was never released with); and an artifact the package test
#: can run completely in a bare interpreter. AWS's own guidance for production functions is to
#: package the SDK for full control of dependencies.
BUNDLE_BOTO3_DEFAULT = True

#: Lambda's hard limit on the unzipped size of a function (code and layers together).
UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1024
#: Above this a zip cannot be uploaded directly (SAM uploads through S3, which is fine).
DIRECT_UPLOAD_LIMIT_BYTES = 50 * 1024 * 1024

#: What the default build must stay within (issue 14): a lean zip is a faster cold start and a
#: cheaper deploy. Printed with every build; the package test holds the bundled build to them.
TARGET_UNZIPPED_BYTES = 40 * 1024 * 1024
TARGET_ZIPPED_BYTES = 14 * 1024 * 1024
TARGET_COLD_IMPORT_S = 0.35
COLD_IMPORT_RUNS = 10
#: Compiling every module from source costs seconds per run: a median of fewer.
FROM_SOURCE_RUNS = 3

#: The AWS services the loader calls through botocore, so the only service models it reads:
#: s3 (the boto3 client and the listing signer), secretsmanager (DW_PG_SECRET_ARN,
#: loader/secrets.py) and sts (botocore's credential chain creates an STS client for
#: assume-role and web-identity credentials). A client for any other service fails with
#: botocore's UnknownServiceError: add the service here.
SDK_SERVICES = frozenset({"s3", "secretsmanager", "sts"})
#: Folders that hold one sub-folder per AWS service: botocore's models, boto3's resource
#: models. The files directly inside them (endpoints.json, partitions.json,
#: sdk-default-configuration.json, _retry.json) serve every service and stay.
SERVICE_MODEL_DIRS = ("botocore/data", "boto3/data")

#: Zip entries get one fixed timestamp (zip cannot store dates before 1980);
#: SOURCE_DATE_EPOCH overrides it, as reproducible-builds tooling expects.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

_SKIP_DIR_NAMES = frozenset({"__pycache__"})
_SKIP_SUFFIXES = (".pyc", ".pyo")


class BuildError(RuntimeError):
    """The package cannot be built; the message says what to fix."""


@dataclass(frozen=True)
class BuildResult:
    output: Path
    zipped_bytes: int
    unzipped_bytes: int
    file_count: int
    sha256: str
    distributions: tuple[str, ...]
    largest: tuple[tuple[str, int], ...]
    #: bytes each lean rule removed, by rule
    trimmed: tuple[tuple[str, int], ...]
    strip_tool: str | None


def runtime_dependencies(pyproject: Path) -> list[str]:
    """`[project] dependencies` from pyproject.toml: the runtime set, and nothing else."""
    with pyproject.open("rb") as fh:
        data = tomllib.load(fh)
    try:
        deps = data["project"]["dependencies"]
    except KeyError:
        raise BuildError(f"{pyproject} has no [project] dependencies") from None
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise BuildError(f"{pyproject}: [project] dependencies must be a list of strings")
    return list(deps)


def _canonical(name: str) -> str:
    return name.replace("_", "-").replace(".", "-").lower()


def pip_install(
    requirements: Sequence[str],
    target: Path,
    *,
    platforms: Sequence[str],
    python_version: str,
    constraints: Path | None,
    verbose: bool,
) -> None:
    """Install wheels for the target platform, never the build machine's."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        # Lambda's /var/task is read-only: byte-code would be stale weight, never a cache.
        "--no-compile",
        *(arg for platform in platforms for arg in ("--platform", platform)),
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        "--only-binary=:all:",
        "--target",
        str(target),
    ]
    if constraints is not None:
        cmd += ["-c", str(constraints)]
    if not verbose:
        cmd.append("--quiet")
    cmd += list(requirements)
    print("$ " + " ".join(cmd[1:]), flush=True)
    result = subprocess.run(cmd, check=False)  # noqa: S603 - our own interpreter and args
    if result.returncode != 0:
        raise BuildError(
            f"pip install failed (exit {result.returncode}); a dependency may have no "
            f"{platforms[-1]}..{platforms[0]} wheel for Python {python_version}"
        )


def installed_distributions(site: Path) -> dict[str, Path]:
    """Canonical distribution name -> its .dist-info folder, for what pip put in `site`."""
    found: dict[str, Path] = {}
    for info in sorted(site.glob("*.dist-info")):
        name = info.name.removesuffix(".dist-info").rsplit("-", 1)[0]
        found[_canonical(name)] = info
    return found


def distribution_version(info: Path) -> str:
    for line in (info / "METADATA").read_text(encoding="utf-8").splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
        if not line:
            break
    return "?"


def remove_distribution(site: Path, info: Path) -> None:
    """Delete every file a distribution's RECORD lists, then its emptied folders."""
    record = info / "RECORD"
    if not record.exists():
        raise BuildError(f"{info.name} has no RECORD; cannot remove it cleanly")
    site_resolved = site.resolve()
    dirs: set[Path] = set()
    with record.open(newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if not row:
                continue
            path = (site / row[0]).resolve()
            if not path.is_relative_to(site_resolved):
                continue  # console scripts under ../../bin; bin/ is dropped anyway
            path.unlink(missing_ok=True)
            dirs.update(p for p in path.parents if p.is_relative_to(site_resolved))
    for folder in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if folder != site_resolved and folder.exists():
            # __pycache__ folders pip did not record would keep a folder alive: drop them.
            shutil.rmtree(folder / "__pycache__", ignore_errors=True)
            if not any(folder.iterdir()):
                folder.rmdir()
    shutil.rmtree(info, ignore_errors=True)


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prune_service_models(staging: Path, services: frozenset[str] = SDK_SERVICES) -> int:
    """Delete the service folders of SERVICE_MODEL_DIRS that `services` does not name.

    botocore reads a service's model only when a client for it is created, so the other 400-odd
    folders are never opened (20 MB of the 23 MB botocore installs). Returns the bytes removed."""
    removed = 0
    for relative in SERVICE_MODEL_DIRS:
        root = staging / relative
        if not root.is_dir():
            continue  # --no-bundle-boto3: the runtime's SDK, whole
        folders = {p.name: p for p in root.iterdir() if p.is_dir()}
        if relative.startswith("botocore/") and (unknown := services - folders.keys()):
            raise BuildError(f"botocore has no model for {', '.join(sorted(unknown))}")
        for name, folder in sorted(folders.items()):
            if name not in services:
                removed += _tree_bytes(folder)
                shutil.rmtree(folder)
    return removed


def find_strip_tool(arch: str) -> list[str] | None:
    """The command that strips debug information for `arch`, or None.

    llvm-strip reads every CPU's ELF; GNU strip (binutils) only the build machine's."""
    llvm = shutil.which("llvm-strip")
    if llvm:
        return [llvm, "--strip-debug"]
    gnu = shutil.which("strip")
    host = platform.machine().lower()
    if gnu and WHEEL_MACHINES[arch] == {"amd64": "x86_64", "arm64": "aarch64"}.get(host, host):
        return [gnu, "--strip-debug"]
    return None


def _tool_version(tool: Sequence[str]) -> str:
    result = subprocess.run(  # noqa: S603 - a tool found on PATH, fixed arguments
        [tool[0], "--version"], capture_output=True, text=True, check=False
    )
    lines = [ln.strip() for ln in (result.stdout or result.stderr).splitlines() if ln.strip()]
    # llvm-strip: "... LLVM version 14.0.6" on its second line; GNU strip: "... 2.40" on its first
    shown = next((ln for ln in lines if "LLVM version" in ln), lines[0] if lines else "?")
    return f"{Path(tool[0]).name} ({shown})"


def has_debug_sections(path: Path) -> bool:
    """Whether `path` is an ELF file with a `.debug_*` section (read from its section headers)."""
    with path.open("rb") as fh:
        ident = fh.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2):
            return False
        wide, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
        header = fh.read(48 if wide else 36)
        if len(header) < (48 if wide else 36):
            return False
        # e_shoff, then e_shentsize, e_shnum, e_shstrndx (the ELF header's last fields)
        shoff = struct.unpack_from(order + ("Q" if wide else "I"), header, 24 if wide else 16)[0]
        entsize, count, names_index = struct.unpack_from(order + "HHH", header, len(header) - 6)
        if not shoff or not count or names_index >= count:
            return False
        fh.seek(shoff)
        table = fh.read(entsize * count)
        if len(table) < entsize * count:
            return False
        # sh_name, then sh_offset and sh_size of each section header
        layout = order + ("I20xQQ" if wide else "I12xII")

        def section(index: int) -> tuple[int, int, int]:
            name, offset, size = struct.unpack_from(layout, table, index * entsize)
            return name, offset, size

        _, names_offset, names_size = section(names_index)
        fh.seek(names_offset)
        names = fh.read(names_size)
    return any(names[section(i)[0] :].startswith(b".debug_") for i in range(count))


def strip_debug_info(staging: Path, tool: Sequence[str]) -> int:
    """Strip debug sections from every ELF file; return the bytes saved.

    Wheels built with debug information (awscrt, SQLAlchemy's Cython modules) carry 3-8x their
    code in `.debug_*` sections that nothing reads at run time. `--strip-debug` keeps the symbol
    tables. Only files that carry `.debug_*` sections are touched: auditwheel's patchelf has
    rewritten the others (psycopg2's), and strip tools can break such a file's segment
    alignment. A file the tool cannot read, or that does not shrink, is left byte for byte."""
    saved = 0
    for path in sorted(p for p in staging.rglob("*") if p.is_file() and not p.is_symlink()):
        if not has_debug_sections(path):
            continue
        before = path.stat().st_size
        stripped = path.with_name(path.name + ".stripped")
        result = subprocess.run(  # noqa: S603 - the strip tool, our own paths
            [*tool, "-o", str(stripped), str(path)], capture_output=True, check=False
        )
        if result.returncode == 0 and stripped.stat().st_size < before:
            shutil.copymode(path, stripped)
            stripped.replace(path)
            saved += before - path.stat().st_size
        else:
            stripped.unlink(missing_ok=True)
    return saved


def _record_hash(data: bytes) -> str:
    """A RECORD hash (PEP 376 / the wheel spec): urlsafe base64 of the sha256, unpadded."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def refresh_records(staging: Path) -> None:
    """Make every RECORD list exactly what ships: rows of files removed dropped, hashes and
    sizes of files changed recomputed. importlib.metadata and `pip show -f` then tell the truth
    about the zip, and a hash check of an installed file passes."""
    root = staging.resolve()
    for record in sorted(staging.glob("*.dist-info/RECORD")):
        with record.open(newline="", encoding="utf-8") as fh:
            rows = [row for row in csv.reader(fh) if row]
        kept: list[list[str]] = []
        for row in rows:
            path = (staging / row[0]).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                continue  # removed by a rule, or a console script outside the package
            if len(row) >= 2 and row[1]:
                data = path.read_bytes()
                row = [row[0], _record_hash(data), str(len(data))]
            kept.append(row)
        if kept != rows:
            with record.open("w", newline="", encoding="utf-8") as fh:
                csv.writer(fh, lineterminator="\n").writerows(kept)


def copy_project(staging: Path) -> None:
    """The loader and the handler, without byte-code."""
    missing = [n for n in (*PROJECT_DIRS, *PROJECT_FILES) if not (ROOT / n).exists()]
    if missing:
        raise BuildError(f"missing from {ROOT}: {', '.join(missing)}")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
    for name in PROJECT_DIRS:
        if (staging / name).exists():
            raise BuildError(f"a dependency installed a top-level {name!r}, which would clash")
        shutil.copytree(ROOT / name, staging / name, ignore=ignore)
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, staging / name)


def package_files(staging: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, path) for every file that belongs in the zip, sorted by name."""
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(staging):
        rel_dir = Path(dirpath).relative_to(staging)
        # pip's console scripts carry the build machine's shebang: useless on Lambda.
        dirnames[:] = [
            d
            for d in dirnames
            if d not in _SKIP_DIR_NAMES and not (rel_dir == Path() and d == "bin")
        ]
        for filename in filenames:
            if filename.endswith(_SKIP_SUFFIXES):
                continue
            path = Path(dirpath) / filename
            entries.append(((rel_dir / filename).as_posix(), path))
    yield from sorted(entries)


def zip_timestamp() -> tuple[int, int, int, int, int, int]:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return ZIP_EPOCH
    stamp = time.gmtime(max(int(epoch), 315_532_800))  # not before 1980-01-01
    return (stamp.tm_year, stamp.tm_mon, stamp.tm_mday, stamp.tm_hour, stamp.tm_min, stamp.tm_sec)


def write_zip(staging: Path, output: Path) -> tuple[int, int]:
    """Write a reproducible zip; return (file count, unzipped bytes)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(output.suffix + ".partial")
    date_time = zip_timestamp()
    count = 0
    unzipped = 0
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for arcname, path in package_files(staging):
            info = zipfile.ZipInfo(arcname, date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so the permission bits below are honoured
            # Lambda runs code as a different user than the owner: everything must be
            # world-readable. Keep an executable bit only where the source had one.
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            info.external_attr = (0o100000 | mode) << 16
            data = path.read_bytes()
            zf.writestr(info, data)
            count += 1
            unzipped += len(data)
    partial.replace(output)
    return count, unzipped


def largest_top_level(staging: Path, limit: int = 6) -> tuple[tuple[str, int], ...]:
    sizes: dict[str, int] = {}
    for arcname, path in package_files(staging):
        top = arcname.split("/", 1)[0]
        if top.endswith(".dist-info"):
            top = "*.dist-info"
        sizes[top] = sizes.get(top, 0) + path.stat().st_size
    return tuple(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:limit])


def build(
    *,
    arch: str,
    python_version: str,
    bundle_boto3: bool,
    output: Path,
    constraints: Path | None,
    ca_bundle: Path | None,
    verbose: bool = False,
) -> BuildResult:
    requirements = runtime_dependencies(ROOT / "pyproject.toml")
    with tempfile.TemporaryDirectory(prefix="clickstream-package-") as tmp:
        staging = Path(tmp) / "package"
        staging.mkdir()
        pip_install(
            requirements,
            staging,
            platforms=wheel_platforms(arch),
            python_version=python_version,
            constraints=constraints,
            verbose=verbose,
        )
        dists = installed_distributions(staging)
        if not bundle_boto3:
            for name in sorted(RUNTIME_SDK & dists.keys()):
                remove_distribution(staging, dists.pop(name))
        trimmed = [("service models", prune_service_models(staging))]
        strip_tool = find_strip_tool(arch)
        if strip_tool is not None:
            trimmed.append(("debug info", strip_debug_info(staging, strip_tool)))
        refresh_records(staging)
        copy_project(staging)
        if ca_bundle is not None:
            (staging / "certs").mkdir()
            shutil.copyfile(ca_bundle, staging / "certs" / ca_bundle.name)
        count, unzipped = write_zip(staging, output)
        largest = largest_top_level(staging)
        versions = tuple(f"{n}=={distribution_version(p)}" for n, p in sorted(dists.items()))
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    return BuildResult(
        output=output,
        zipped_bytes=output.stat().st_size,
        unzipped_bytes=unzipped,
        file_count=count,
        sha256=digest,
        distributions=versions,
        largest=largest,
        trimmed=tuple(trimmed),
        strip_tool=_tool_version(strip_tool) if strip_tool else None,
    )


#: Runs in the measured interpreter: argv = [the unpacked zip].
_IMPORT_PROBE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
wall, cpu = time.perf_counter(), time.process_time()
import lambda_function
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}))
"""
_IMPORTTIME_LINE = re.compile(r"^import time:\s+(\d+) \|\s+\d+ \|\s+(\S+)")


@dataclass(frozen=True)
class ColdImport:
    """`import lambda_function` in fresh `python -S -I` interpreters from the unpacked zip."""

    interpreter: str
    runs: int
    #: medians, in seconds, with byte-code cached next to the sources (what a developer's
    #: machine shows, and the issue's target), and compiling every module as Lambda does: its
    #: /var/task is read-only and the zip ships no byte-code
    cached_wall_s: float
    cached_cpu_s: float
    from_source_wall_s: float
    from_source_runs: int
    #: the 1-minute load average when measured: on a shared machine wall times stretch with it
    load_average: float
    #: self time per top-level package, microseconds, largest first (one -X importtime run)
    profile: tuple[tuple[str, int], ...]


#: Prints the Lambda architecture name of an interpreter's CPU, and its Python version.
_WHICH_PYTHON = (
    "import platform, sys; m = platform.machine().lower(); "
    "print({'x86_64': 'x86_64', 'amd64': 'x86_64', 'aarch64': 'arm64', 'arm64': 'arm64'}"
    ".get(m, m), '%d.%d' % sys.version_info[:2])"
)


def find_import_python(arch: str, python_version: str, explicit: str | None) -> str | None:
    """An interpreter that can import the zip: the target's Python version on the target's CPU.

    `explicit` (--import-python), else pythonX.Y on PATH, else a pyenv install of X.Y."""
    if explicit:
        candidates = [explicit]
    else:
        pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
        found = sorted(pyenv.glob(f"{python_version}.*/bin/python{python_version}"))
        candidates = [str(c) for c in (shutil.which(f"python{python_version}"), *found) if c]
    for candidate in candidates:
        result = subprocess.run(  # noqa: S603 - an interpreter the user or PATH names
            [candidate, "-S", "-c", _WHICH_PYTHON], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.split() == [arch, python_version]:
            return candidate
    return None


def _run_probe(
    interpreter: str, flags: Sequence[str], task: Path
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: S603 - the interpreter found above, our own probe
        [interpreter, "-S", "-I", *flags, "-c", _IMPORT_PROBE, str(task)],
        capture_output=True,
        text=True,
        cwd=task.parent,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC"},
    )
    if result.returncode != 0:
        raise BuildError(f"the handler does not import from the zip:\n{result.stderr[-3000:]}")
    return result


def measure_cold_import(zip_path: Path, interpreter: str, runs: int) -> ColdImport:
    """Median of `runs` fresh interpreters per regime, from the zip unpacked in an empty folder."""

    def median(flags: Sequence[str], key: str, count: int) -> float:
        samples = [
            json.loads(_run_probe(interpreter, flags, task).stdout)[key] for _ in range(count)
        ]
        return float(statistics.median(samples))

    with tempfile.TemporaryDirectory(prefix="clickstream-import-") as tmp:
        task = Path(tmp) / "task"
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(task)
        # -B: nothing cached, every run compiles. Fewer runs: each costs seconds of CPU.
        from_source = median(["-B"], "wall", min(runs, FROM_SOURCE_RUNS))
        _run_probe(interpreter, [], task)  # writes the byte-code the next runs read
        cached = [json.loads(_run_probe(interpreter, [], task).stdout) for _ in range(runs)]
        profiled = _run_probe(interpreter, ["-X", "importtime"], task)
    by_package: dict[str, int] = {}
    for line in profiled.stderr.splitlines():
        if match := _IMPORTTIME_LINE.match(line):
            top = match.group(2).split(".", 1)[0]
            by_package[top] = by_package.get(top, 0) + int(match.group(1))
    return ColdImport(
        interpreter=interpreter,
        runs=runs,
        cached_wall_s=statistics.median(s["wall"] for s in cached),
        cached_cpu_s=statistics.median(s["cpu"] for s in cached),
        from_source_wall_s=from_source,
        from_source_runs=min(runs, FROM_SOURCE_RUNS),
        load_average=os.getloadavg()[0],
        profile=tuple(sorted(by_package.items(), key=lambda kv: (-kv[1], kv[0]))[:10]),
    )


def build_wheel(dist: Path, *, verbose: bool = False) -> Path:
    """Build the wheel into `dist` and return its path.

    From a copy of WHEEL_SOURCES: setuptools writes build/ and *.egg-info beside its input, and
    a module deleted since an earlier build would linger in build/lib and in the wheel. Without
    build isolation, so the environment's setuptools builds it and no index is consulted; with
    SOURCE_DATE_EPOCH (1980 unless set) the same sources give the same bytes."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
    with tempfile.TemporaryDirectory(prefix="clickstream-wheel-") as tmp:
        source = Path(tmp) / "source"
        source.mkdir()
        for name in WHEEL_SOURCES:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, source / name, ignore=ignore)
            else:
                shutil.copy2(ROOT / name, source / name)
        built = Path(tmp) / "wheel"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--disable-pip-version-check",
            "--no-input",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(built),
            *([] if verbose else ["--quiet"]),
            str(source),
        ]
        env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "315532800")}
        result = subprocess.run(cmd, check=False, env=env)  # noqa: S603 - our interpreter and args
        wheels = sorted(built.glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            raise BuildError(
                f"pip wheel failed (exit {result.returncode}); it needs setuptools>=77 in "
                f"{sys.prefix} (`make .venv/.dev-installed` installs it)"
            )
        dist.mkdir(parents=True, exist_ok=True)
        target = dist / wheels[0].name
        shutil.copyfile(wheels[0], target)
    return target


def report_wheel(wheel: Path) -> None:
    try:
        shown = wheel.relative_to(ROOT)
    except ValueError:
        shown = wheel
    with zipfile.ZipFile(wheel) as archive:
        count = len(archive.infolist())
    print(f"\nbuilt {shown}  (the CLI, and the DBA's clickstream-migrate)")
    print(f"  size:     {wheel.stat().st_size / 1024:>6.0f} KiB  in {count} files")
    print(f"  sha256:   {hashlib.sha256(wheel.read_bytes()).hexdigest()}")


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(result: BuildResult, *, arch: str, python_version: str, bundle_boto3: bool) -> None:
    try:
        shown = result.output.relative_to(ROOT)
    except ValueError:
        shown = result.output
    sdk = "boto3 bundled" if bundle_boto3 else "boto3 from the Lambda runtime"
    print(f"\nbuilt {shown}  (python{python_version}, {arch}, {sdk})")
    print(
        f"  unzipped: {_mib(result.unzipped_bytes):>10}  in {result.file_count} files"
        f"  (target {_mib(TARGET_UNZIPPED_BYTES)}: "
        f"{_verdict(result.unzipped_bytes <= TARGET_UNZIPPED_BYTES)};"
        f" Lambda limit {_mib(UNZIPPED_LIMIT_BYTES)})"
    )
    print(
        f"  zipped:   {_mib(result.zipped_bytes):>10}"
        f"  (target {_mib(TARGET_ZIPPED_BYTES)}: "
        f"{_verdict(result.zipped_bytes <= TARGET_ZIPPED_BYTES)};"
        f" direct-upload limit {_mib(DIRECT_UPLOAD_LIMIT_BYTES)})"
    )
    print(f"  sha256:   {result.sha256}")
    print("  largest:  " + ", ".join(f"{name} {_mib(size)}" for name, size in result.largest))
    print(
        "  trimmed:  "
        + ", ".join(f"{rule} {_mib(size)}" for rule, size in result.trimmed)
        + f"  (service models kept: {', '.join(sorted(SDK_SERVICES))})"
    )
    if result.strip_tool is None:
        print("  note:     debug info kept: no llvm-strip (or strip for this CPU) on PATH")
    else:
        print(f"  stripped: with {result.strip_tool}")
    print("  bundled:  " + " ".join(result.distributions))


def report_cold_import(cold: ColdImport | None, *, arch: str, python_version: str) -> None:
    if cold is None:
        print(
            f"  cold import: not measured (no python{python_version} for {arch} here; "
            "--import-python names one)"
        )
        return
    print(
        f"  cold import: {cold.cached_wall_s:.3f} s median of {cold.runs} "
        f"(CPU {cold.cached_cpu_s:.3f} s; target {TARGET_COLD_IMPORT_S} s: "
        f"{_verdict(cold.cached_wall_s <= TARGET_COLD_IMPORT_S)}), byte-code cached; "
        f"{cold.from_source_wall_s:.3f} s (median of {cold.from_source_runs}) compiling from "
        f"source, as on Lambda (no byte-code in the zip)"
    )
    print(
        f"               [{cold.interpreter} -S -I; load average {cold.load_average:.1f} on "
        f"{os.cpu_count()} CPUs: wall times stretch with it, CPU times less]"
    )
    print(
        "  import profile (self time by top-level package, -X importtime): "
        + ", ".join(f"{name} {us / 1000:.0f} ms" for name, us in cold.profile)
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build dist/clickstream-loader.zip for AWS Lambda (Python, x86_64 or arm64).",
    )
    parser.add_argument(
        "--arch",
        choices=sorted(WHEEL_MACHINES),
        default="x86_64",
        help="Lambda architecture (default: x86_64, the template's default)",
    )
    parser.add_argument(
        "--python-version",
        default="3.12",
        metavar="X.Y",
        help=f"Lambda Python runtime, one of {', '.join(LAMBDA_PYTHONS)} "
        "(default: 3.12); other versions only for local tests",
    )
    parser.add_argument(
        "--bundle-boto3",
        action=argparse.BooleanOptionalAction,
        default=BUNDLE_BOTO3_DEFAULT,
        help="ship boto3/botocore in the zip (default) or use the runtime's",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="zip to write (default: dist/clickstream-loader.zip)",
    )
    parser.add_argument(
        "--constraints",
        type=Path,
        default=None,
        help="pip constraints file (default: constraints.txt at the root, if any)",
    )
    parser.add_argument(
        "--ca-bundle",
        type=Path,
        default=None,
        help="a CA bundle (e.g. the RDS global-bundle.pem) to ship as "
        "certs/<name>; set DW_PG_SSLROOTCERT=/var/task/certs/<name>",
    )
    parser.add_argument(
        "--wheel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also build the wheel (CLI and migrations) next to the zip (default)",
    )
    parser.add_argument(
        "--import-python",
        default=None,
        metavar="PATH",
        help="interpreter for the cold-import measurement (default: pythonX.Y of the target "
        "version on PATH or in pyenv; the target CPU only)",
    )
    parser.add_argument(
        "--cold-import-runs",
        type=int,
        default=COLD_IMPORT_RUNS,
        metavar="N",
        help=f"fresh interpreters per measurement (default: {COLD_IMPORT_RUNS}; 0 skips it)",
    )
    parser.add_argument("--verbose", action="store_true", help="show pip's output")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not (len(parts := args.python_version.split(".")) == 2 and all(p.isdigit() for p in parts)):
        print(
            f"error: --python-version must look like 3.12, got {args.python_version!r}",
            file=sys.stderr,
        )
        return 2
    if args.python_version not in LAMBDA_PYTHONS:
        print(
            f"note: python{args.python_version} is not a runtime this package targets "
            f"({', '.join(LAMBDA_PYTHONS)}); fine for a local test build",
            file=sys.stderr,
        )
    constraints = args.constraints
    if constraints is None and (ROOT / "constraints.txt").exists():
        constraints = ROOT / "constraints.txt"
    if args.ca_bundle is not None and not args.ca_bundle.is_file():
        print(f"error: --ca-bundle {args.ca_bundle} is not a file", file=sys.stderr)
        return 2
    output = args.output if args.output.is_absolute() else Path.cwd() / args.output
    try:
        result = build(
            arch=args.arch,
            python_version=args.python_version,
            bundle_boto3=args.bundle_boto3,
            output=output,
            constraints=constraints,
            ca_bundle=args.ca_bundle,
            verbose=args.verbose,
        )
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report(
        result, arch=args.arch, python_version=args.python_version, bundle_boto3=args.bundle_boto3
    )
    if args.cold_import_runs > 0 and not args.bundle_boto3:
        print("  cold import: not measured (the handler imports the Lambda runtime's boto3)")
    elif args.cold_import_runs > 0:
        interpreter = find_import_python(args.arch, args.python_version, args.import_python)
        try:
            cold = (
                measure_cold_import(output, interpreter, args.cold_import_runs)
                if interpreter
                else None
            )
        except BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        report_cold_import(cold, arch=args.arch, python_version=args.python_version)
    if args.wheel:
        try:
            wheel = build_wheel(output.parent, verbose=args.verbose)
        except BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        report_wheel(wheel)
    if result.unzipped_bytes > UNZIPPED_LIMIT_BYTES:
        print(
            f"error: unzipped size {_mib(result.unzipped_bytes)} exceeds Lambda's "
            f"{_mib(UNZIPPED_LIMIT_BYTES)} limit",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
