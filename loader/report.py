"""What a run did, as one JSON-able summary: the Lambda's return value, the CLI's `--json`,
the ledger row and the metrics all come from this one object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class KeyList:
    """A count and the first `cap` keys: a bad hour must not make a megabyte-sized report."""

    cap: int = 100
    count: int = 0
    keys: list[str] = field(default_factory=list)

    def add(self, key: str) -> None:
        self.count += 1
        if len(self.keys) < self.cap:
            self.keys.append(key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "keys": list(self.keys),
            "keys_truncated": self.count > len(self.keys),
        }


@dataclass
class Report:
    hour: str
    prefix: str
    trigger: str
    run_id: str
    shard: str | None = None
    state: str = "running"
    dry_run: bool = False
    objects_listed: int = 0
    objects_skipped_loaded: int = 0
    events_read: int = 0
    inserted: int = 0
    would_insert: int = 0
    duplicates: int = 0
    duplicate_exact: int = 0
    duplicate_conflicting: int = 0
    #: Of duplicate_exact: events the original ETL had already stored under another id.
    duplicate_adopted: int = 0
    #: Events the suppression list refused (people erased): not written, objects recorded.
    suppressed: int = 0
    conflicting: KeyList = field(default_factory=KeyList)
    malformed: KeyList = field(default_factory=KeyList)
    invalid: KeyList = field(default_factory=KeyList)
    quarantined: KeyList = field(default_factory=KeyList)
    sanitised: int = 0
    truncated: int = 0
    batches: int = 0
    retries: int = 0
    seconds: float = 0.0
    newest_event_at: str | None = None
    resume_after: str | None = None
    db_revision: str | None = None
    error: str | None = None
    lookback: list[dict[str, Any]] = field(default_factory=list)
    missing_hours: list[str] = field(default_factory=list)

    @classmethod
    def new(
        cls,
        hour: str,
        prefix: str,
        trigger: str,
        run_id: str,
        key_cap: int,
        shard: str | None = None,
    ) -> Report:
        return cls(
            hour=hour,
            prefix=prefix,
            trigger=trigger,
            run_id=run_id,
            shard=shard,
            conflicting=KeyList(key_cap),
            malformed=KeyList(key_cap),
            invalid=KeyList(key_cap),
            quarantined=KeyList(key_cap),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            out[name] = value.to_dict() if isinstance(value, KeyList) else value
        out["seconds"] = round(self.seconds, 3)
        return out
