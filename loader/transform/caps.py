"""The per-column text caps: the most characters the loader keeps of a text value.

Longer values are truncated and counted as `truncated`. Indexed and id-like columns are capped
at 256 characters, i.e. at most 1 KiB of UTF-8, far under PostgreSQL's btree tuple limit
(~2.7 KB), so no event can ever fail an index insert for being too long. URLs get 4096, the
product name and the user agent 1024. JSON columns keep strings whole (objects are capped at
MAX_OBJECT_BYTES). The columns themselves are plain `text` (loader/schema.py): a cap is the
loader's rule, not a constraint a DBA has to migrate.
"""

from __future__ import annotations

from typing import Final

INDEXED_TEXT_CAP: Final = 256
URL_CAP: Final = 4096
DEFAULT_TEXT_CAP: Final = 1024

#: Maximum characters kept per text column; longer values are truncated (and counted).
TEXT_CAPS: Final[dict[str, int]] = {
    "event_name": INDEXED_TEXT_CAP,
    "user_id": INDEXED_TEXT_CAP,
    "session_id": INDEXED_TEXT_CAP,
    "client_id": INDEXED_TEXT_CAP,
    "user_login_state": INDEXED_TEXT_CAP,
    "identity_source": INDEXED_TEXT_CAP,
    "page_url": URL_CAP,
    "referrer": URL_CAP,
    "context_product_id": INDEXED_TEXT_CAP,
    "context_product_name": DEFAULT_TEXT_CAP,
    "context_product_category": INDEXED_TEXT_CAP,
    "context_product_brand": INDEXED_TEXT_CAP,
    "context_product_url_path": URL_CAP,
    "user_agent": DEFAULT_TEXT_CAP,
    "path": URL_CAP,
    "request_id": INDEXED_TEXT_CAP,
    "api_id": INDEXED_TEXT_CAP,
    "stage": INDEXED_TEXT_CAP,
    "trace_id": INDEXED_TEXT_CAP,
}
