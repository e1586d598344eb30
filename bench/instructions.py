"""Instructions per object of the transform, counted by valgrind: a before/after check that the
machine's load cannot blur.

    .venv/bin/python bench/instructions.py                          # this checkout
    .venv/bin/python bench/instructions.py --tree /tmp/before --tree .   # side by side

On this shared 2-core machine two identical timing runs differ by up to ±30%, so a change worth
5% cannot be seen in seconds. Instructions executed vary by ~0.1% from run to run (the hash seed
is fixed), whatever else runs. Each tree's `loader` transforms the bench's real-shaped hour
(`bench/workload.py`, ~1% malformed) under `valgrind --tool=callgrind`, once with no timed pass
and once with `--passes`; the difference, divided by the objects transformed, is the
transform's instructions per object, set-up and interpreter start excluded. Instructions are not
CPU time (cache misses and system calls are not in them), so confirm a change with a paired
`bench/run.py --quick --before-tree` run; this tells whether the change did what it meant to.
It needs `valgrind` (~1 min per tree for 1,000 objects).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
_COLLECTED = re.compile(r"Collected : (\d+)")


def child(objects: int, passes: int) -> None:
    """Inside valgrind: build the hour, transform it once untimed, then `passes` more times."""
    sys.path.insert(0, str(BENCH))
    import cases  # bench/cases.py puts BENCH_LOADER_TREE first on sys.path

    from loader.common import FetchedObject
    from loader.pipeline.prefetch import prepare

    items = cases._prefetched(objects)
    for _ in range(1 + passes):
        for ref, body in items:
            prepare(FetchedObject(ref, body), "raw", anonymize=False)


def count(tree: Path, objects: int, passes: int) -> int:
    """Instructions the whole child process executed, as callgrind counts them."""
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "PYTHONHASHSEED": "0", "BENCH_LOADER_TREE": str(tree)}
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={scratch}/callgrind.out",
                sys.executable,
                __file__,
                "--child",
                "--objects",
                str(objects),
                "--passes",
                str(passes),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed for {tree}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="checkout(s) to count")
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.objects, args.passes)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("bench/instructions.py needs valgrind (apt install valgrind)")
    trees = [t.resolve() for t in args.tree or [BENCH.parent]]
    started = time.monotonic()
    runs = [(tree, passes) for tree in trees for passes in (0, args.passes)]
    with ThreadPoolExecutor(max_workers=2) as pool:  # one valgrind per CPU
        totals = dict(
            zip(runs, pool.map(lambda run: count(run[0], args.objects, run[1]), runs), strict=True)
        )
    print(f"transform, {args.objects} objects x {args.passes} passes, PYTHONHASHSEED=0")
    first = None
    for tree in trees:
        per_object = (totals[tree, args.passes] - totals[tree, 0]) / (args.objects * args.passes)
        first = first or per_object
        ratio = per_object / first
        print(f"  {per_object / 1000:8.1f} k instructions per object  ({ratio:.3f})  {tree}")
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
