"""Wheels of distributions this environment has installed, for a `pip install --no-index`.

Installing the project's wheel into a fresh virtualenv needs its dependencies as wheels. The
index serves them, but costs about a minute of network per install here; the exact versions the
suite runs with are installed already. So each one the wheel requires is zipped back into a
wheel from its RECORD: the same files, metadata and tag. Files outside site-packages (console
scripts) are left out: pip writes them again from entry_points.txt.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import zipfile
from collections.abc import Iterable
from email.parser import Parser
from importlib.metadata import Distribution, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

#: Written by pip on install; not part of a wheel.
_INSTALL_ONLY = frozenset({"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"})


def wheel_requirements(wheel: Path, extras: Iterable[str]) -> list[Requirement]:
    """The `Requires-Dist` entries of `wheel` that apply with `extras` on this interpreter."""
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode("utf-8"))
    return _applicable(metadata.get_all("Requires-Dist") or [], set(extras))


def _applicable(lines: Iterable[str], extras: set[str]) -> list[Requirement]:
    found = []
    for line in lines:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in extras | {""}):
            found.append(requirement)
    return found


def installed_closure(requirements: Iterable[Requirement]) -> list[Distribution]:
    """The installed distributions `requirements` need, transitively (extras followed)."""
    todo = list(requirements)
    seen: set[tuple[str, str]] = set()
    found: dict[str, Distribution] = {}
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if all((name, e) in seen for e in extras | {""}):
            continue
        seen.update((name, e) for e in extras | {""})
        dist = found.setdefault(name, distribution(requirement.name))
        todo.extend(_applicable(dist.requires or [], extras))
    return sorted(found.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def repack(dist: Distribution, wheelhouse: Path) -> Path:
    """One installed distribution as a wheel in `wheelhouse` (stored, not compressed: speed)."""
    tags = [
        line.split(":", 1)[1].strip().split("-")
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    ]
    # A compressed tag set, as in `py2.py3-none-any`: one file name for every tag it carries.
    tag = "-".join(".".join(sorted({t[i] for t in tags})) for i in range(3))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    site = Path(str(dist.locate_file(""))).resolve()
    wheel = wheelhouse / f"{name}-{dist.version}-{tag}.whl"
    files = dist.files or []
    dist_info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as archive:
        for file in files:
            path = Path(str(dist.locate_file(file))).resolve()
            parts = file.parts
            if not path.is_relative_to(site) or "__pycache__" in parts or not path.is_file():
                continue
            arcname = path.relative_to(site).as_posix()
            if parts[0] == dist_info and parts[1:] and parts[1] in _INSTALL_ONLY:
                continue
            data = path.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            archive.writestr(arcname, data)
            writer.writerow([arcname, f"sha256={digest.decode()}", len(data)])
        writer.writerow([f"{dist_info}/RECORD", "", ""])
        archive.writestr(f"{dist_info}/RECORD", record.getvalue())
    return wheel


def build_wheelhouse(wheel: Path, extras: Iterable[str], wheelhouse: Path) -> list[Path]:
    """Every dependency of `wheel` (with `extras`) as a wheel in `wheelhouse`."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    return [repack(d, wheelhouse) for d in installed_closure(wheel_requirements(wheel, extras))]
