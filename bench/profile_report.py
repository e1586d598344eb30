"""Top functions of a py-spy profile (`py-spy record -f raw --function`), as text.

    python bench/profile_report.py profile.raw [--top 15]

py-spy's raw format is one collapsed stack per line, `frame;frame;...;leaf count`, with each frame
`function (file)`. Self = samples where the function is the leaf (where the CPU was); total =
samples where it is anywhere on the stack (counted once per sample). Samples inside an import
(`_find_and_load`: the process starting up, before the measured section) are left out and
counted apart.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_SITE = re.compile(r".*/site-packages/")
#: Frames every sample of a thread passes through: not worth a line of "total".
_ENTRY_POINTS = ("<module>", "Thread.run ", "Thread._bootstrap", "Retrying.__call__ ")


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    where = _SITE.sub("", where)
    if "/work/" in where or where.startswith("/"):
        parts = where.split("/")
        where = "/".join(parts[-2:])
    return f"{name} ({where})" if where else name


def summarize_pyspy(raw: Path, top: int = 15) -> str:
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = imports = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        if any(f.startswith("_find_and_load ") for f in frames):
            imports += count
            continue
        samples += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count
    if not samples:
        return "no samples\n"
    lines = [
        f"{samples} samples ({imports} more inside imports at start-up, left out)",
        "",
        f"top {top} by self time:",
    ]
    lines.append(f"{'self%':>6} {'total%':>7}  function")
    for frame, count in self_counts.most_common(top):
        lines.append(
            f"{100 * count / samples:6.1f} {100 * total_counts[frame] / samples:7.1f}  {frame}"
        )
    lines += ["", f"top {top} by total (inclusive) time, entry points excluded:"]
    lines.append(f"{'total%':>7} {'self%':>6}  function")
    shown = 0
    for frame, count in total_counts.most_common():
        if count == samples or frame.startswith(_ENTRY_POINTS) or "cases.py:" in frame:
            continue
        lines.append(
            f"{100 * count / samples:7.1f} {100 * self_counts[frame] / samples:6.1f}  {frame}"
        )
        shown += 1
        if shown >= top:
            break
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(summarize_pyspy(args.raw, args.top), end="")


if __name__ == "__main__":
    main()
