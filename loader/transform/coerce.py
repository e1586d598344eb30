"""Value coercions from what trackers send to what the warehouse columns hold. Pure functions.

Each coercion either returns a value the column accepts or None; it never raises. The README's
"Coercion" table documents every rule here, and tests/unit/test_coerce.py checks each row.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

REPLACEMENT: Final = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Sane event instants: anything outside is a broken clock or a unit mix-up.
MIN_INSTANT: Final = datetime(2000, 1, 1, tzinfo=UTC)
MAX_INSTANT: Final = datetime(2100, 1, 1, tzinfo=UTC)
#: Epoch numbers at or above this are milliseconds (1e11 s is the year 5138).
_EPOCH_MS_THRESHOLD: Final = 100_000_000_000
#: Prices beyond this magnitude are unit errors or junk, not prices.
MAX_PRICE: Final = Decimal("1e15")
#: PostgreSQL `numeric` keeps at most 16383 digits after the decimal point; a value with more
#: (e.g. "1e-20000") makes the INSERT fail with "value overflows numeric format".
MAX_PRICE_SCALE: Final = 16383
#: Nesting beyond this depth in a JSON value is replaced by a marker (and counted as truncated).
MAX_JSON_DEPTH: Final = 64
TOO_DEEP_MARKER: Final = "<nested too deep: truncated by clickstream-loader>"


@dataclass(slots=True)
class Repairs:
    """Counts of values changed on the way in, so a run can report them."""

    sanitised: int = 0
    truncated: int = 0
    notes: list[str] = field(default_factory=list)


def clean_text(value: str, repairs: Repairs) -> str:
    """Replace what PostgreSQL cannot store in text/jsonb: NUL and lone surrogates → U+FFFD."""
    if value.isascii():
        if "\x00" not in value:
            return value
        repairs.sanitised += 1
        return value.replace("\x00", REPLACEMENT)
    cleaned = value.replace("\x00", REPLACEMENT)
    cleaned = _SURROGATE.sub(REPLACEMENT, cleaned)
    if cleaned != value:
        repairs.sanitised += 1
    return cleaned


def clean_json(value: Any, repairs: Repairs, depth: int = 0) -> Any:
    """A JSON value made storable as jsonb: text cleaned (keys too), NaN/±Infinity → null,
    nesting capped at MAX_JSON_DEPTH."""
    if isinstance(value, str):
        return clean_text(value, repairs)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        repairs.sanitised += 1
        return None
    if depth >= MAX_JSON_DEPTH:
        repairs.truncated += 1
        return TOO_DEEP_MARKER
    if isinstance(value, dict):
        return {
            clean_text(str(k), repairs): clean_json(v, repairs, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [clean_json(v, repairs, depth + 1) for v in value]
    # Not reachable from a JSON parser; keep the value's text rather than fail.
    return clean_text(str(value), repairs)


def to_text(value: Any, cap: int, repairs: Repairs) -> str | None:
    """Text column: strings as they are, other scalars as their JSON text, objects/arrays → None."""
    if isinstance(value, str):
        text = clean_text(value, repairs)
    elif value is None or isinstance(value, dict | list):
        return None
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and not math.isfinite(value):
        return None
    else:
        text = str(value)
    if len(text) > cap:
        repairs.truncated += 1
        text = text[:cap]
    return text


def to_bool(value: Any) -> bool | None:
    """true/false, or the strings "true"/"false" (any case, trimmed); anything else → None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered == "true":
            return True
        if lowered == "false":
            return False
    return None


def to_price(value: Any) -> Decimal | None:
    """Numbers or numeric strings → Decimal; NaN, ±Infinity, junk and |x| >= 1e15 → None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        text = repr(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 64:
            return None
    else:
        return None
    try:
        number = Decimal(text)
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite() or abs(number) >= MAX_PRICE:
        return None
    # A scale past the column's ("1e-20000") is finite here but fails the whole batch in
    # PostgreSQL.
    if -int(number.as_tuple().exponent) > MAX_PRICE_SCALE:
        return None
    return number


def to_ip(value: Any) -> str | None:
    """A valid IPv4/IPv6 address in canonical form, else None (the raw value stays in JSON)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    # A scoped IPv6 address ("fe80::1%eth0") parses in Python but PostgreSQL's inet refuses it
    # and would fail the whole batch: it is not storable, so it is invalid.
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    return str(address)


def anonymize_ip(address: str) -> str:
    """IPv4 → its /24 network, IPv6 → its /48 network (GDPR-style truncation)."""
    ip = ipaddress.ip_address(address)
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


def _sane(instant: datetime) -> datetime | None:
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    if MIN_INSTANT <= instant < MAX_INSTANT:
        return instant.astimezone(UTC)
    return None


def _from_epoch(number: float) -> datetime | None:
    if not math.isfinite(number):
        return None
    seconds = number / 1000 if abs(number) >= _EPOCH_MS_THRESHOLD else number
    try:
        return _sane(datetime.fromtimestamp(seconds, tz=UTC))
    except (OverflowError, OSError, ValueError):
        return None


def to_instant(value: Any) -> datetime | None:
    """ISO-8601 (no offset means UTC) or epoch seconds/milliseconds, if between 2000 and 2100."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return _sane(value)
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer past float range (e.g. 400 digits)
            return None
        return _from_epoch(number)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if text.lstrip("-").replace(".", "", 1).isdigit():
        try:
            return _from_epoch(float(text))
        except ValueError:
            return None
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    try:
        return _sane(datetime.fromisoformat(text))
    except ValueError:
        return None


def first_instant(*candidates: Any) -> datetime | None:
    """The first candidate that parses to a sane instant."""
    for candidate in candidates:
        instant = to_instant(candidate)
        if instant is not None:
            return instant
    return None
