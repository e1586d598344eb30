"""Object body → JSON records: one object, an array of objects, or NDJSON; else why not. Pure.

A body is tried whole first (the real ingest Lambda writes one JSON object per object), then line
by line, so one bad line of an NDJSON batch costs that line only. Positions are 0-based record
or line numbers: they become part of derived event ids, so they never change for a body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

_BOM = b"\xef\xbb\xbf"


def _parse_int(text: str) -> int | float:
    """Integers as Python ints, exactly; past the interpreter's int-from-text limit (4300 digits)
    as ±inf, which clean_json turns into null (counted as sanitised)."""
    try:
        return int(text)
    except ValueError:
        # int() refuses such digit strings; as ±inf the value loses only its column, where
        # raising would make the whole object "not JSON".
        return float(text)


def _parse_json(data: bytes) -> Any:
    """The standard library's JSON, which keeps integers past 64 bits exact and reads what we
    can repair: lone surrogate escapes, NaN/Infinity literals, numbers past double range."""
    # The caller has checked the body is UTF-8: decode it as that, never as anything else.
    # json.loads(bytes) guesses UTF-16/UTF-32 from NUL bytes, so a BOM-less UTF-16 body (valid
    # UTF-8 when ASCII-only) would load while the same body with a BOM is malformed.
    return json.loads(data.decode("utf-8"), parse_int=_parse_int)


@dataclass(frozen=True, slots=True)
class ParsedBody:
    """What a body holds: its records and why the rest is malformed."""

    records: list[tuple[int, dict[str, Any]]]
    bad: list[tuple[int, str]]


def parse_body(data: bytes) -> ParsedBody:
    """Body → its records (with their positions) and what is malformed (with the reason).

    A body that is one JSON object (or an array of objects) is that; otherwise each non-blank
    line must be a JSON object (NDJSON). Positions are 0-based record/line numbers.
    """
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    if not data.strip():
        return ParsedBody([], [(0, "empty body")])
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ParsedBody([], [(0, f"invalid UTF-8 at byte {exc.start}")])
    too_deep = False
    try:
        whole = _parse_json(data)
    except RecursionError:
        # One over-deep NDJSON line must not lose the good lines after it: parse line by line.
        # A body that is a single document still ends below, as nested too deep.
        whole, too_deep = _NOT_JSON, True
    except ValueError:
        whole = _NOT_JSON
    if isinstance(whole, dict):
        return ParsedBody([(0, whole)], [])
    if isinstance(whole, list):
        if whole and all(isinstance(item, dict) for item in whole):
            return ParsedBody(list(enumerate(whole)), [])
        return ParsedBody([], [(0, "JSON array that is not a list of objects")])
    if whole is not _NOT_JSON:
        return ParsedBody([], [(0, f"JSON {_json_kind(whole)}, not an object")])
    return _parse_lines(data, too_deep)


def _parse_lines(data: bytes, too_deep: bool) -> ParsedBody:
    """NDJSON: each non-blank line one JSON object; a bad line costs that line only."""
    records: list[tuple[int, dict[str, Any]]] = []
    bad: list[tuple[int, str]] = []
    for position, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            value = _parse_json(line)
        except RecursionError:
            bad.append((position, "line is JSON nested too deep to parse"))
            continue
        except ValueError:
            bad.append((position, "line is not valid JSON"))
            continue
        if isinstance(value, dict):
            records.append((position, value))
        else:
            bad.append((position, f"line is JSON {_json_kind(value)}, not an object"))
    if not records:
        if too_deep:
            return ParsedBody([], [(0, "JSON nested too deep to parse")])
        return ParsedBody([], [(0, "not JSON: no line parses as a JSON object")])
    return ParsedBody(records, bad)


_NOT_JSON: Final = object()


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return type(value).__name__
