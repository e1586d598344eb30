"""The suppression list (clickstream_suppressions): read by every batch before it writes,
extended by every erase.

Each event's `user_id`, and the `client_id` of an anonymous one, are hashed with the erasure key
(loader/identity.py) and looked up; an event the list names, received up to the entry's
`suppress_until` (or at any time when that is NULL), is not written and counts as `suppressed`.
Its object is still recorded as loaded, in the same transaction, so nothing retries it.

Why no event of an erased person slips in while the erase runs: a batch takes a transaction-level
advisory lock on the list in SHARE mode before it reads the list, and keeps it until it commits;
an erase adds its entries holding the same lock EXCLUSIVE. The erase therefore waits for every
batch that read the list without its entries to commit (their rows are then there for it to
delete), and every batch after it reads the list with them. Neither side holds a row lock the
other waits for while it waits for the lock, so the two cannot deadlock. A batch waits at most
for one erase's insert of a few rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, insert

from loader.common import EventRecord
from loader.identity import ErasureKeyError, IdentityHasher
from loader.load.adoption import AdoptedRange
from loader.load.sink import BatchOutcome, BatchWriter
from loader.load.tables import Tables

#: The advisory lock key of the list: one signed 64-bit number, the same in every process.
LIST_LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"clickstream-loader:suppression-list").digest()[:8], "big", signed=True
)


@dataclass(frozen=True)
class Rule:
    """What the list says of one hashed identifier: refused up to `until`, or always."""

    always: bool
    until: datetime | None

    def covers(self, instant: datetime) -> bool:
        return self.always or (self.until is not None and instant <= self.until)


class SuppressionList:
    """The list as one loader sees it: with the erasure key, or without (then the list must be
    empty, or nothing loads)."""

    def __init__(self, hasher: IdentityHasher | None) -> None:
        self.hasher = hasher

    def check_key(self, conn: sa.Connection, tables: Tables) -> None:
        """Once per invocation: refuse to load with no key, or with another key than the one
        the warehouse's requests were hashed with (nothing would ever match)."""
        requests = tables.erasure_requests
        key_ids = set(conn.execute(sa.select(requests.c.key_id).distinct()).scalars())
        if not key_ids:
            return
        if self.hasher is None:
            raise ErasureKeyError(
                "the warehouse holds erasure requests, so every load must check the suppression "
                "list: set ERASURE_HMAC_KEY or ERASURE_HMAC_KEY_SECRET_ARN (the erasure key)"
            )
        if key_ids != {self.hasher.key_id}:
            raise ErasureKeyError(
                f"the erasure key given (key_id {self.hasher.key_id}) is not the one the "
                f"suppression list was made with (key_id {', '.join(sorted(key_ids))}): "
                "nothing would match; give every loader the same ERASURE_HMAC_KEY"
            )

    def split(
        self,
        conn: sa.Connection,
        tables: Tables,
        records: Sequence[EventRecord],
        *,
        lock: bool = True,
    ) -> tuple[list[EventRecord], int]:
        """The records the list does not name, and how many it does. With `lock` (every
        write), first takes the list's lock in SHARE mode until the transaction ends."""
        if not records:
            return [], 0
        if lock:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock_shared(LIST_LOCK_KEY)))
        if self.hasher is None:
            if conn.execute(sa.select(sa.exists().select_from(tables.suppressions))).scalar():
                raise ErasureKeyError(
                    "the suppression list is not empty: set ERASURE_HMAC_KEY (or "
                    "ERASURE_HMAC_KEY_SECRET_ARN) so the loader can check it"
                )
            return list(records), 0
        keys = [self._keys(r) for r in records]
        rules = self._rules(conn, tables, {h for pair in keys for h in pair if h is not None})
        if not rules:
            return list(records), 0
        kept = []
        for record, (user_hash, client_hash) in zip(records, keys, strict=True):
            key = user_hash if user_hash is not None else client_hash
            rule = rules.get(key) if key is not None else None
            if rule is None or not rule.covers(record.event["event_timestamp"]):
                kept.append(record)
        return kept, len(records) - len(kept)

    def _keys(self, record: EventRecord) -> tuple[bytes | None, bytes | None]:
        """(hash of the user id, hash of the client id of an anonymous event): the rule's keys.
        The kind is hashed in, so the two never collide."""
        assert self.hasher is not None
        user_id = record.event.get("user_id")
        if user_id is not None:
            return self.hasher.digest("user_id", user_id), None
        client_id = record.event.get("client_id")
        if client_id is None:
            return None, None
        return None, self.hasher.digest("client_id", client_id)

    @staticmethod
    def _rules(conn: sa.Connection, tables: Tables, hashes: set[bytes]) -> dict[bytes, Rule]:
        if not hashes:
            return {}
        sup = tables.suppressions
        rows = conn.execute(
            sa.select(
                sup.c.id_hash,
                sa.func.bool_or(sup.c.suppress_until.is_(None)),
                sa.func.max(sup.c.suppress_until),
            )
            .where(sup.c.id_hash == sa.any_(sa.cast(sa.bindparam("h"), ARRAY(sa.LargeBinary))))
            .group_by(sup.c.id_hash),
            {"h": sorted(hashes)},
        )
        return {bytes(h): Rule(bool(always), until) for h, always, until in rows}


class SuppressingWriter:
    """A `BatchWriter` that takes the suppressed events out of each batch before `writer`
    writes it, in the same transaction, and counts them in the outcome."""

    def __init__(self, writer: BatchWriter, suppression: SuppressionList) -> None:
        self.writer = writer
        self.suppression = suppression

    def __call__(
        self,
        conn: sa.Connection,
        tables: Tables,
        records: Sequence[EventRecord],
        adopted: AdoptedRange | None = None,
    ) -> BatchOutcome:
        kept, suppressed = self.suppression.split(conn, tables, records)
        outcome = self.writer(conn, tables, kept, adopted)
        outcome.suppressed += suppressed
        return outcome


def lock_list(conn: sa.Connection) -> None:
    """Take the list's lock EXCLUSIVE until the transaction ends (an erase, before it reads
    which client ids go with its user ids and adds its entries: see the module docstring).
    Waits for every batch that read the list before to commit."""
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LIST_LOCK_KEY)))


def add_to_list(conn: sa.Connection, tables: Tables, entries: Sequence[dict[str, Any]]) -> None:
    """An erase's entries, inside the transaction that holds `lock_list`: commit right after,
    and every later batch refuses what they name."""
    if entries:
        conn.execute(insert(tables.suppressions).on_conflict_do_nothing(), list(entries))
