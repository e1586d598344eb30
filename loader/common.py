"""What the stages hand each other: the types and errors extract, transform, load and the
pipeline share.

It sits below every stage and imports none of them (docs/architecture.md), so a stage never
needs another stage's module for a type: extract yields `FetchedObject`s through the
`ObjectSource` interface, transform turns a body into `EventRecord`s and `Rejection`s, and load
writes those.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from loader.errors import TerminalError, TransientError

# --- S3 objects: extract → pipeline --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One listed object."""

    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True, slots=True)
class FetchedObject:
    """A fetched object: its decoded body, or why there is none (a terminal reason code)."""

    ref: ObjectRef
    body: bytes | None
    error: str | None = None
    detail: str | None = None
    retries: int = 0


#: How often a source waiting on S3 looks at the caller's stop signal.
STOP_POLL_S = 0.1


class ObjectSource(Protocol):
    """What every S3 client offers the pipeline. Failures come in two kinds and stay apart: an
    object that can never be read (too large, corrupt gzip, deleted since listing) is yielded as
    a `FetchedObject` with an `error`, and the run goes on; S3 refusing access raises
    `S3AccessError`, and S3 failing past every retry raises `S3TransientError`."""

    bucket: str

    def list_objects(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectRef]:
        """Every object under `prefix` in key order, directory markers left out."""
        ...

    def fetch_many(
        self, refs: Iterable[ObjectRef], stop: threading.Event | None = None
    ) -> Iterator[FetchedObject]:
        """Fetch concurrently with bounded memory; yield results in the order of `refs`.

        When `stop` is set, return within about STOP_POLL_S, even while S3 has not answered:
        the caller's invocation is ending and its thread must not outlive it."""
        ...

    def close(self) -> None: ...


class S3TransientError(TransientError):
    """S3 kept failing after every retry: fail the invocation so it is retried as a whole."""


class S3AccessError(TerminalError):
    """S3 refused access: a configuration problem (bucket, IAM policy, region), not bad data."""


# --- records: transform → load ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceObject:
    """What transform needs to know about an object besides its body."""

    bucket: str
    key: str
    last_modified: datetime | None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that was not loaded, and why (reason code + human detail, no row data)."""

    key: str
    position: int
    reason: str
    detail: str
    event_id: uuid.UUID | None = None
    sqlstate: str | None = None


@dataclass(slots=True)
class EventRecord:
    """One event as rows for both tables, plus where it came from."""

    event_id: uuid.UUID
    key: str
    position: int
    event: dict[str, Any]
    meta: dict[str, Any]
    #: False when the payload had no id and event_id was derived from the key: the original
    #: ETL stored such events under a random id, so only these can duplicate an adopted row.
    id_from_payload: bool = True
