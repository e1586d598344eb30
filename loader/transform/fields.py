"""Which payload field lands in which column: the one table the mapping follows.

Each row names a column, the payload spellings it is read from in precedence order, the
converter that turns the value into the column's, and, for text, the cap: the most characters
kept (longer values are truncated and counted as `truncated`). docs/mapping.md describes the same
rows, and tests/unit/test_transform.py checks that it does.

Spellings: the real tracker sends camelCase (`eventName`, `userId`, ...); the original ETL also
read snake_case, so older or hand-made payloads use it. One precedence rule for every field: the
spellings are tried in the order listed and the first one present with a non-null value wins.
The tracker's own name is always listed first. The payload's event id has a rule of its own
(`ID_FIELDS`, loader/transform/mapping.py `payload_event_id`).

Caps: indexed and id-like columns keep 256 characters, i.e. at most 1 KiB of UTF-8, far under
PostgreSQL's btree tuple limit (~2.7 KB), so no event can fail an index insert for being too
long. URLs get 4096, the product name and the user agent 1024. JSON columns keep strings whole
(objects are capped at MAX_OBJECT_BYTES). The columns themselves are plain `text`
(loader/schema.py): a cap is the loader's rule, not a constraint a DBA has to migrate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from loader.transform.coerce import Repairs, to_bool, to_instant, to_ip, to_price, to_text

INDEXED_TEXT_CAP: Final = 256
URL_CAP: Final = 4096
DEFAULT_TEXT_CAP: Final = 1024

Spellings = tuple[str, ...]
#: value, cap, repairs → the column's value, or None when the value cannot be stored there (its
#: original then stays in `properties`).
Converter = Callable[[Any, int, Repairs], Any]

#: Where a field is read from: the record itself, its product object, or its `_ingest` block.
TOP: Final = ""
PRODUCT: Final = "product"
INGEST: Final = "_ingest"


def event_name(value: Any, cap: int, repairs: Repairs) -> str | None:
    """A non-blank string, trimmed; anything else makes the event invalid."""
    if not isinstance(value, str) or not value.strip():
        return None
    return to_text(value.strip(), cap, repairs)


def boolean(value: Any, cap: int, repairs: Repairs) -> bool | None:
    return to_bool(value)


def price(value: Any, cap: int, repairs: Repairs) -> Any:
    return to_price(value)


def instant(value: Any, cap: int, repairs: Repairs) -> Any:
    return to_instant(value)


def ip_address(value: Any, cap: int, repairs: Repairs) -> str | None:
    return to_ip(value)


def json_object(value: Any, cap: int, repairs: Repairs) -> dict[str, Any] | None:
    """A JSON object as sent (already made storable); anything else → None."""
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Field:
    """One column the payload fills."""

    column: str
    spellings: Spellings
    convert: Converter
    cap: int = 0
    #: TOP, PRODUCT or INGEST: where the spellings are looked up.
    within: str = TOP
    #: With no usable value the event is invalid (event_name).
    required: bool = False


#: Every column the payload fills, in the order they are mapped. `event_id` and
#: `event_timestamp` are derived (docs/mapping.md): the payload id, the key; `_ingest.receivedAt`,
#: the client timestamp, LastModified.
FIELDS: Final = (
    Field("event_name", ("eventName", "event_name"), event_name, INDEXED_TEXT_CAP, required=True),
    Field("page_url", ("pageUrl", "page_url"), to_text, URL_CAP),
    Field("referrer", ("referrer",), to_text, URL_CAP),
    Field("user_id", ("userId", "user_id"), to_text, INDEXED_TEXT_CAP),
    Field("user_login_state", ("userLoginState", "user_login_state"), to_text, INDEXED_TEXT_CAP),
    Field("identity_source", ("identitySource", "identity_source"), to_text, INDEXED_TEXT_CAP),
    Field("client_id", ("clientId", "client_id"), to_text, INDEXED_TEXT_CAP),
    Field("session_id", ("sessionId", "session_id"), to_text, INDEXED_TEXT_CAP),
    Field("is_first_visit", ("isFirstVisit", "is_first_visit"), boolean),
    Field("context_product_id", ("id", "product_id"), to_text, INDEXED_TEXT_CAP, PRODUCT),
    Field("context_product_name", ("name", "product_name"), to_text, DEFAULT_TEXT_CAP, PRODUCT),
    Field(
        "context_product_category",
        ("category", "product_category"),
        to_text,
        INDEXED_TEXT_CAP,
        PRODUCT,
    ),
    Field(
        "context_product_brand",
        ("brand", "brandName", "product_brand"),
        to_text,
        INDEXED_TEXT_CAP,
        PRODUCT,
    ),
    Field("context_product_url_path", ("urlPath", "product_url_path"), to_text, URL_CAP, PRODUCT),
    Field("context_product_price", ("price", "product_price"), price, within=PRODUCT),
    Field(
        "context_product_discount_price",
        ("discountPrice", "product_discount_price"),
        price,
        within=PRODUCT,
    ),
    Field("element", ("element",), json_object),
    Field("client_timestamp", ("timestamp", "eventTimestamp", "event_timestamp"), instant),
    # clickstream_ingest_meta: the ingest Lambda's own names; no other spelling exists.
    Field("received_at", ("receivedAt",), instant, within=INGEST),
    Field("source_ip", ("sourceIp",), ip_address, within=INGEST),
    Field("user_agent", ("userAgent",), to_text, DEFAULT_TEXT_CAP, INGEST),
    Field("path", ("path",), to_text, URL_CAP, INGEST),
    Field("request_id", ("requestId",), to_text, INDEXED_TEXT_CAP, INGEST),
    Field("api_id", ("apiId",), to_text, INDEXED_TEXT_CAP, INGEST),
    Field("stage", ("stage",), to_text, INDEXED_TEXT_CAP, INGEST),
    Field("trace_id", ("traceId",), to_text, INDEXED_TEXT_CAP, INGEST),
)

#: The payload's event id, in precedence order (its own rule: see `payload_event_id`).
ID_FIELDS: Final[Spellings] = ("eventId", "event_id", "id")
#: The product object's spellings: its columns are read inside whichever wins.
PRODUCT_FIELDS: Final[Spellings] = ("product", "context_product")
