"""COPY text by column (the writer's hot loop) is the same text as `_copy_field` value by value.

`_copy_field` is the plain definition of one value's COPY text; `_copy_rows` formats a batch a
column at a time with shortcuts per column type. These tests hold the two equal over the values
the transform produces and the ones it could (mixed types in a column, subclasses, escapes).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from loader.load.copy import _copy_field, _copy_rows


class Label(str):
    """A str subclass: formatted value by value, like any type the shortcuts do not name."""


def reference(rows: list[dict[str, Any]], columns: list[str]) -> str:
    return "".join("\t".join(_copy_field(row.get(c)) for c in columns) + "\n" for row in rows)


COLUMN_VALUES: dict[str, list[Any]] = {
    "plain text": ["page_view", "", None, "café ☕", "a" * 300],
    "text needing escapes": ["tab\there", "new\nline", "cr\rhere", "back\\slash", None, "plain"],
    "timestamps": [datetime(2026, 11, 24, 5, tzinfo=UTC), None, datetime(2026, 1, 2, 3, 4, 5, 6)],
    "offset timestamps": [datetime(2026, 11, 24, 5, tzinfo=timezone(timedelta(hours=2))), None],
    "uuids": [uuid.UUID(int=1), None, uuid.uuid5(uuid.NAMESPACE_URL, "x")],
    "decimals": [Decimal("12.50"), None, Decimal("1E+3"), Decimal("-0.0001")],
    "integers": [0, -1, 123456789012345678901234567890, None],
    "booleans": [True, False, None],
    "bytes": [b"\x00\xff", None, b""],
    "json": [{"text": "a\tb\\c\nd"}, None, [1, "x"], {"big": 123456789012345678901234567890}],
    "json without escapes": [{"a": 1}, {"b": [True, None]}, None],
    "mixed types": ["text", 42, None, True, 1.5, {"a": "\t"}, Label("x\ty")],
    "a str subclass": [Label("tab\there"), Label("plain")],
    "all null": [None, None, None],
}


@pytest.mark.parametrize("kind", sorted(COLUMN_VALUES))
def test_each_column_kind_formats_as_the_per_value_definition(kind: str) -> None:
    values = COLUMN_VALUES[kind]
    rows = [{"n": str(i), "value": v} for i, v in enumerate(values)]
    assert _copy_rows(rows, ["n", "value"]).getvalue() == reference(rows, ["n", "value"])


def test_a_whole_batch_of_every_kind_at_once() -> None:
    columns = sorted(COLUMN_VALUES)
    length = max(map(len, COLUMN_VALUES.values()))
    rows = [
        {c: COLUMN_VALUES[c][i % len(COLUMN_VALUES[c])] for c in columns} for i in range(length)
    ]
    text = _copy_rows(rows, columns).getvalue()
    assert text == reference(rows, columns)
    assert text.count("\n") == length  # escaped newlines stay inside their field


def test_a_row_lacking_a_column_writes_null_there() -> None:
    rows: list[dict[str, Any]] = [{"a": "x", "b": "y"}, {"a": "z"}]
    assert _copy_rows(rows, ["a", "b"]).getvalue() == "x\ty\nz\t\\N\n"


def test_one_column() -> None:
    rows = [{"a": "x\ty"}, {"a": None}]
    assert _copy_rows(rows, ["a"]).getvalue() == "x\\ty\n\\N\n"
