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
`__pycache__`, no console scripts. Entries are sorted and time-stamped with one fixed date, so
the same inputs give the same bytes (pin the inputs with constraints.txt; the build prints the
versions it resolved).

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
import csv
import hashlib
import os
import shutil
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
#: deploy). Bundling costs ~+23 MB unzipped and ~+17 MB zipped (69 MB / 31 MB in all, far
#: under the 250 MB limit; cold start imports botocore either way) and buys: the exact botocore
#: the tests ran against; a botocore that matches the awscrt we ship
#: (botocore switches to CRT signing whenever awscrt is importable, so a runtime botocore
#: would meet an awscrt version it was never released with); and an artifact the package test
#: can run completely in a bare interpreter. AWS's own guidance for production functions is to
#: package the SDK for full control of dependencies.
BUNDLE_BOTO3_DEFAULT = True

#: Lambda's hard limit on the unzipped size of a function (code and layers together).
UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1024
#: Above this a zip cannot be uploaded directly (SAM uploads through S3, which is fine).
DIRECT_UPLOAD_LIMIT_BYTES = 50 * 1024 * 1024

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
    print(f"  size:     {wheel.stat().st_size / 1024:>6.0f} kB  in {count} files")
    print(f"  sha256:   {hashlib.sha256(wheel.read_bytes()).hexdigest()}")


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def report(result: BuildResult, *, arch: str, python_version: str, bundle_boto3: bool) -> None:
    try:
        shown = result.output.relative_to(ROOT)
    except ValueError:
        shown = result.output
    sdk = "boto3 bundled" if bundle_boto3 else "boto3 from the Lambda runtime"
    print(f"\nbuilt {shown}  (python{python_version}, {arch}, {sdk})")
    print(
        f"  unzipped: {_mb(result.unzipped_bytes):>9}  in {result.file_count} files"
        f"  (Lambda limit {_mb(UNZIPPED_LIMIT_BYTES)})"
    )
    print(
        f"  zipped:   {_mb(result.zipped_bytes):>9}"
        f"  (direct-upload limit {_mb(DIRECT_UPLOAD_LIMIT_BYTES)}; SAM uploads via S3)"
    )
    print(f"  sha256:   {result.sha256}")
    print("  largest:  " + ", ".join(f"{name} {_mb(size)}" for name, size in result.largest))
    print("  bundled:  " + " ".join(result.distributions))


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
    if args.wheel:
        try:
            wheel = build_wheel(output.parent, verbose=args.verbose)
        except BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        report_wheel(wheel)
    if result.unzipped_bytes > UNZIPPED_LIMIT_BYTES:
        print(
            f"error: unzipped size {_mb(result.unzipped_bytes)} exceeds Lambda's "
            f"{_mb(UNZIPPED_LIMIT_BYTES)} limit",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
