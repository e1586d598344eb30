"""Who an erasure is about, and the keyed hashes that remember them without naming them.

The erasure rule (docs/privacy.md): a subject's events are those with one of its `user_id`s,
and the anonymous events (no `user_id`) of one of its `client_id`s, which are the client ids
named in the request and those seen with one of its user ids. Another user's events are never
the subject's, even from a shared browser.

The warehouse keeps no identifier of an erased person in clear: the request table and the
suppression list hold HMAC-SHA256 hashes keyed with the erasure key (ERASURE_HMAC_KEY or its
secret). Without the key the hashes cannot be recomputed from a guessed identifier, and the same
identifier always hashes the same, so the loader can match each event against the list.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from loader.errors import TerminalError

IdentifierKind = Literal["user_id", "client_id"]

#: The hash of this text under the key names the key in the warehouse (`key_id`), so a loader
#: given another key refuses to load instead of matching nothing.
_KEY_ID_TEXT: Final = b"clickstream-loader:erasure-key-id"


class ErasureKeyError(TerminalError):
    """The erasure key is missing where it is needed, or is not the key the list was made with."""


@dataclass(frozen=True)
class Subject:
    """The identifiers one erasure covers, in clear: only ever in memory."""

    user_ids: frozenset[str]
    #: Client ids whose anonymous events are the subject's: named, and found with a user id.
    client_ids: frozenset[str]

    def matches(self, user_id: str | None, client_id: str | None) -> bool:
        """The erasure rule for one event."""
        if user_id is not None:
            return user_id in self.user_ids
        return client_id is not None and client_id in self.client_ids

    @property
    def empty(self) -> bool:
        return not (self.user_ids or self.client_ids)


class IdentityHasher:
    """HMAC-SHA256 of identifiers under the erasure key. The key stays out of `repr`."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()
        self.key_id = hmac.new(self._key, _KEY_ID_TEXT, hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"IdentityHasher(key_id={self.key_id!r})"

    def digest(self, kind: IdentifierKind, value: str) -> bytes:
        """32 bytes; the kind is part of the input, so a user id and an equal client id differ."""
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def hex_digests(self, kind: IdentifierKind, values: Iterable[str]) -> list[str]:
        """Sorted hex digests: what the request table stores and compares."""
        return sorted(self.digest(kind, v).hex() for v in values)
