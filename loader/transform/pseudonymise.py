"""Pseudonymisation at load (opt-in): fewer details of who sent an event. Not anonymity.

`PSEUDONYMISE_USER_AGENT=true` replaces `_ingest.userAgent` with its browser and OS family
("Chrome / Windows", "Mobile Safari / iOS") before anything is stored: the `user_agent` column
and the `_ingest` block kept in `ingest_metadata` both get the families, never the full string,
whose versions, device model and rare tokens single a visitor out. It goes with ANONYMIZE_IP
(IPv4 to /24, IPv6 to /48: loader/transform/coerce.py `anonymize_ip`). The events still carry
`user_id`, `client_id` and `session_id`, which identify a person by design: pseudonymous data
is personal data (docs/privacy.md).

The parser is uap-python (`ua-parser`, the rules of the uap-core project, kept current by the
`ua-parser-builtins` release each month; 0.5 MB), pure Python. Only the browser and OS rules
run, never the device rules, the largest set: measured here 0.2-1.1 ms per new string against
~11 ms for a full parse. Its Rust matcher (`ua-parser-rs`, ~0.1 ms per full parse) would add
3.1 MB and take the zip past its 40 MiB target (`make package`). Imported on first use only,
so a loader that does not pseudonymise never pays its import and first match (~1 s, compiling
the rules, once per container). Strings repeat a great deal, so results are cached.
"""

from __future__ import annotations

import functools
from typing import Any, Final

#: The family the rules give what they do not recognise.
OTHER: Final = "Other"


@functools.lru_cache(maxsize=8192)
def user_agent_family(user_agent: str) -> str:
    """`<browser family> / <OS family>` of a user agent string."""
    # The parser and its rules: only when pseudonymising.
    from ua_parser import parse_os, parse_user_agent

    browser = parse_user_agent(user_agent)
    system = parse_os(user_agent)
    return f"{browser.family if browser else OTHER} / {system.family if system else OTHER}"


def pseudonymised_ingest(ingest: dict[str, Any]) -> dict[str, Any]:
    """The `_ingest` block with its user agent reduced to the families (a non-text one
    dropped: it cannot be reduced)."""
    raw = ingest.get("userAgent")
    if raw is None:
        return ingest
    family = user_agent_family(raw) if isinstance(raw, str) else None
    return {**ingest, "userAgent": family}
