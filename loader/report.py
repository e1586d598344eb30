"""What a run did, as one JSON-able summary: the Lambda's return value, the CLI's `--json`,
the ledger row and the metrics all come from this one object.

Each count is declared once, below, as a field of `Report` made by `count()` or `key_list()`;
what it says there (a ledger column, a metric, the notified path's per-hour summary, how a
fanned-out hour sums it) is all the ledger, the metrics and the responses know of it. A new
count is one line here (and, for a ledger count, its column: a revision and loader/schema.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Final

from loader.schema import RunState, TriggerKind


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


@dataclass(frozen=True)
class Counter:
    """How one count of the report travels.

    `ledger`: a column of clickstream_load_runs of the same name. `metric`: the EMF metric's
    name. `summary`: its key in the notified path's per-hour summary. `every_run`: a fanned-out
    hour's finalize sums it over every run of every shard (each is counted by exactly one run);
    the other ledger counts are summed over the passes that listed each shard once."""

    name: str
    keys: bool = False
    ledger: bool = False
    metric: str | None = None
    summary: str | None = None
    every_run: bool = False


_COUNTER: Final = "counter"


def count(
    *,
    ledger: bool = False,
    metric: str | None = None,
    summary: str | None = None,
    every_run: bool = False,
) -> int:
    """A whole-number count of `Report` (see `Counter`)."""
    spec = {"ledger": ledger, "metric": metric, "summary": summary, "every_run": every_run}
    return field(default=0, metadata={_COUNTER: spec})


def key_list(
    *, ledger: bool = False, metric: str | None = None, summary: str | None = None
) -> KeyList:
    """A count of `Report` that keeps the first keys it counted (see `Counter`)."""
    spec = {"keys": True, "ledger": ledger, "metric": metric, "summary": summary}
    return field(default_factory=KeyList, metadata={_COUNTER: spec})


@dataclass
class Report:
    hour: str
    prefix: str
    trigger: TriggerKind
    run_id: str
    shard: str | None = None
    state: RunState = RunState.RUNNING
    dry_run: bool = False
    objects_listed: int = count(ledger=True, metric="ObjectsListed", summary="objects")
    objects_skipped_loaded: int = count()
    events_read: int = count(ledger=True)
    inserted: int = count(ledger=True, metric="EventsInserted", summary="inserted", every_run=True)
    would_insert: int = count()
    #: duplicate_exact + duplicate_conflicting
    duplicates: int = count(metric="Duplicates", summary="duplicates")
    duplicate_exact: int = count(ledger=True)
    duplicate_conflicting: int = count(ledger=True, metric="DuplicatesConflicting")
    #: Of duplicate_exact: events the original ETL had already stored under another id.
    duplicate_adopted: int = count()
    conflicting: KeyList = key_list()
    malformed: KeyList = key_list(ledger=True, metric="Malformed", summary="malformed")
    invalid: KeyList = key_list(ledger=True, metric="Invalid", summary="invalid")
    quarantined: KeyList = key_list(ledger=True, metric="Quarantined", summary="quarantined")
    sanitised: int = count(ledger=True)
    #: Events the suppression list refused (people erased): not written, objects recorded.
    suppressed: int = count(ledger=True, metric="Suppressed", summary="suppressed")
    truncated: int = count(ledger=True)
    batches: int = count()
    retries: int = count(ledger=True, metric="Retries", summary="retries", every_run=True)
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
        trigger: TriggerKind,
        run_id: str,
        key_cap: int,
        shard: str | None = None,
    ) -> Report:
        report = cls(hour=hour, prefix=prefix, trigger=trigger, run_id=run_id, shard=shard)
        for counter in COUNTERS:
            if counter.keys:
                setattr(report, counter.name, KeyList(key_cap))
        return report

    def count_of(self, counter: Counter) -> int:
        """The counter's number (a key list's count)."""
        value = getattr(self, counter.name)
        return value.count if isinstance(value, KeyList) else int(value)

    def set_count(self, counter: Counter, value: int) -> None:
        """Set the counter's number (a key list keeps its keys; the ledger has none)."""
        current = getattr(self, counter.name)
        if isinstance(current, KeyList):
            current.count = value
        else:
            setattr(self, counter.name, value)

    def counts(self, counters: tuple[Counter, ...]) -> dict[str, int]:
        return {c.name: self.count_of(c) for c in counters}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            out[name] = value.to_dict() if isinstance(value, KeyList) else value
        out["seconds"] = round(self.seconds, 3)
        return out


#: Every count of the report, in its field order.
COUNTERS: Final = tuple(
    Counter(f.name, **f.metadata[_COUNTER]) for f in fields(Report) if _COUNTER in f.metadata
)
#: The counts clickstream_load_runs keeps, one column each.
LEDGER_COUNTERS: Final = tuple(c for c in COUNTERS if c.ledger)
