"""CPU per event of the COPY writer's text: a column at a time (`_copy_rows`) against `_copy_field`
value by value, over the bench hour's rows as the loader's transform makes them, in 500-event
batches. Whether the column-wise formatting in loader/load/copy.py still earns its keep (kept only
above 5% of the default path's CPU).

    .venv/bin/python bench/copy_format.py            # this checkout
    BENCH_LOADER_TREE=/path/to/tree .venv/bin/python bench/copy_format.py
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases  # puts BENCH_LOADER_TREE first on sys.path

from loader.common import FetchedObject
from loader.load.copy import _copy_field, _copy_rows
from loader.pipeline.prefetch import prepare

BATCH = 500


def per_value(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> io.StringIO:
    """The plain version: `_copy_field` for every value."""
    buffer = io.StringIO()
    for row in rows:
        buffer.write("\t".join([_copy_field(row.get(c)) for c in columns]) + "\n")
    buffer.seek(0)
    return buffer


def main() -> None:
    records = [
        event
        for ref, body in cases._prefetched(2000)
        for event in prepare(FetchedObject(ref, body), "raw", anonymize=False).events
    ]
    tables = [[r.event for r in records], [r.meta for r in records]]
    columns = [list(rows[0]) for rows in tables]

    def cpu_us_per_event(fmt: Callable[..., io.StringIO]) -> float:
        start = time.process_time()
        for rows, names in zip(tables, columns, strict=True):
            for i in range(0, len(rows), BATCH):
                fmt(rows[i : i + BATCH], names)
        return (time.process_time() - start) / len(records) * 1e6

    for rows, names in zip(tables, columns, strict=True):
        assert _copy_rows(rows, names).getvalue() == per_value(rows, names).getvalue()
    runs: dict[str, list[float]] = {"column at a time": [], "value by value": []}
    for _ in range(9):  # interleaved
        runs["column at a time"].append(cpu_us_per_event(_copy_rows))
        runs["value by value"].append(cpu_us_per_event(per_value))
    print(f"{len(records)} events, both tables, batches of {BATCH}; CPU µs per event:")
    for name, values in runs.items():
        print(f"  {name:18} median {statistics.median(values):6.1f}  min {min(values):6.1f}")


if __name__ == "__main__":
    main()
