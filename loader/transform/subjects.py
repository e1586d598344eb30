"""Whose records a raw object holds: the erasure rule (loader/identity.py) applied to a body.

Pure, like the rest of the transform. The ids are read as the loader reads them into the
`user_id` and `client_id` columns (the same spellings, the same text rules), so an object
matches exactly when the rows loaded from it would.

A part of a body that does not parse (a malformed object, a bad NDJSON line) has no columns to
read. It is the subject's when its bytes name one of the subject's user ids as a JSON string,
or one of its client ids while naming no user id at all (an anonymous event); otherwise it is
not. Erasure errs towards deleting such a part only where the rule would.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from loader.common import SourceObject
from loader.identity import Subject
from loader.transform.coerce import Repairs
from loader.transform.fields import FIELDS
from loader.transform.mapping import pick, transform_object
from loader.transform.parse import parse_body

#: A `userId` (or `user_id`) with a string value, anywhere in a body's bytes.
_NAMES_A_USER: Final = re.compile(rb'"(?:userId|user_id)"\s*:\s*"')

Verdict = Literal["theirs", "shared", "not_theirs"]


@dataclass(frozen=True)
class Record:
    """One record of a body, as far as erasure cares."""

    position: int
    user_id: str | None
    client_id: str | None
    #: None for a record the loader would not load (invalid): it has no row.
    event_id: uuid.UUID | None = None
    event_timestamp: datetime | None = None


@dataclass
class Judgement:
    """What an object holds of a subject."""

    verdict: Verdict
    #: Positions of the subject's records (and of unreadable parts that name it): the
    #: quarantine rows of the object that are the subject's.
    positions: set[int] = field(default_factory=set)
    #: The subject's records the loader would load (event id and time): to match adopted rows.
    events: list[Record] = field(default_factory=list)


#: The id columns' fields, as the mapping reads them (loader/transform/fields.py).
_ID_COLUMNS: Final = {f.column: f for f in FIELDS if f.column in ("user_id", "client_id")}


def _column(record: dict[str, Any], column: str) -> str | None:
    spec = _ID_COLUMNS[column]
    _, raw = pick(record, spec.spellings, {})
    value = None if raw is None else spec.convert(raw, spec.cap, Repairs())
    return value if isinstance(value, str) else None


def records_of(source: SourceObject, body: bytes) -> tuple[list[Record], list[int]]:
    """Every record of a body with its ids, and the positions of the parts that do not parse."""
    result = transform_object(source, body)
    records = [
        Record(
            r.position,
            r.event.get("user_id"),
            r.event.get("client_id"),
            r.event_id,
            r.event["event_timestamp"],
        )
        for r in result.events
    ]
    invalid = {r.position for r in result.invalid}
    if invalid:
        for position, record in parse_body(body).records:
            if position in invalid:
                user_id = _column(record, "user_id")
                records.append(Record(position, user_id, _column(record, "client_id")))
    return records, [r.position for r in result.malformed]


def names_subject(body: bytes, subject: Subject) -> bool:
    """The byte rule for what does not parse: a subject's user id as a JSON string, or one of
    its client ids in a body that names no user at all."""
    if any(json.dumps(u).encode() in body for u in subject.user_ids):
        return True
    if _NAMES_A_USER.search(body):
        return False
    return any(json.dumps(c).encode() in body for c in subject.client_ids)


def judge(source: SourceObject, body: bytes, subject: Subject) -> Judgement:
    """`theirs` (every record and part is the subject's: delete the object), `shared` (some
    are, some are someone else's: the object cannot be deleted whole), or `not_theirs`."""
    records, unreadable = records_of(source, body)
    mine = [r for r in records if subject.matches(r.user_id, r.client_id)]
    positions = {r.position for r in mine}
    unreadable_mine = bool(unreadable) and names_subject(body, subject)
    if unreadable_mine:
        positions.update(unreadable)
    if not positions:
        return Judgement("not_theirs")
    whole = len(mine) == len(records) and (not unreadable or unreadable_mine)
    events = [r for r in mine if r.event_id is not None]
    return Judgement("theirs" if whole else "shared", positions, events)
