"""Erase a person from every store: the warehouse, the quarantine and the raw bucket, for good.

One request, in this order (docs/privacy.md):
1. **Suppress.** Holding the suppression list's lock exclusively (loader/load/suppression.py),
   read the client ids seen with the user ids and add every identifier to the list, keyed
   hashes only, with the request's record; commit. From here no load path writes the
   subject's events, and every batch that read the list before has committed.
2. **Plan** (reads only; all a dry run does). The subject's events and the objects they were
   loaded from; each such object, each quarantined object and, for rows adopted from the
   original ETL (no object recorded), every object of the hour folder of their timestamp is
   read and judged by the rule (loader/transform/subjects.py): wholly the subject's (deleted),
   shared with other people's events (kept, and the request stays open), or not theirs.
3. **Warehouse**, one transaction: their rows in clickstream_ingest_meta and clickstream_events
   (DELETE ... RETURNING), their quarantine rows, the completion records' counts, and the
   request's record of it all, including the keys still to delete.
4. **Bucket**: every version of each of those keys (loader/extract/deletion.py).
5. **Verify**: count what still matches in each table and the bucket; zero everywhere closes
   the request, anything else leaves it open with the reason.

A rerun of an open request (same request id, same identifiers) runs the steps again and adds
its counts to the record's; the identifiers are needed in clear for that, and the record holds
only hashes, so the caller gives them again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from loader.common import FetchedObject, ObjectRef, SourceObject
from loader.errors import TerminalError
from loader.extract.deletion import Deleted, ObjectEraser
from loader.identity import ErasureKeyError, IdentifierKind, IdentityHasher, Subject
from loader.load import erasure as store
from loader.load.suppression import add_to_list, lock_list
from loader.observability import log
from loader.pipeline.hour import HourLoader
from loader.transform.subjects import Judgement, judge
from loader.window import HOUR, floor_hour, hour_label, hour_of_key, hour_prefix

#: The ingest Lambda names an object's hour folder from a clock read after `receivedAt`, so an
#: event received this close to the end of an hour may sit in the next hour's folder.
HOUR_EDGE: Final = timedelta(minutes=1)
MAX_REQUEST_ID_CHARS: Final = 200
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class ErasureInputError(TerminalError):
    """The request cannot be run as given; the message says what to change."""


@dataclass(frozen=True)
class ErasureRequest:
    """What the caller asks for, in clear: never stored, never logged."""

    user_ids: tuple[str, ...] = ()
    client_ids: tuple[str, ...] = ()
    request_id: str | None = None
    suppress_future: bool = False
    dry_run: bool = False

    def validated(self) -> ErasureRequest:
        """The same request, checked: at least one identifier, none empty, a usable id."""
        if not self.user_ids and not self.client_ids:
            raise ErasureInputError("give at least one --user-id or --client-id")
        for flag, values in (("--user-id", self.user_ids), ("--client-id", self.client_ids)):
            for value in values:
                if not isinstance(value, str) or not value.strip():
                    raise ErasureInputError(f"{flag} must not be empty")
        request_id = self.request_id
        if request_id is not None:
            request_id = request_id.strip()
            if not request_id or len(request_id) > MAX_REQUEST_ID_CHARS:
                raise ErasureInputError(
                    f"--request-id must be 1 to {MAX_REQUEST_ID_CHARS} characters"
                )
            if not request_id.isprintable():
                raise ErasureInputError("--request-id must be printable text")
        return ErasureRequest(
            tuple(sorted(set(self.user_ids))),
            tuple(sorted(set(self.client_ids))),
            request_id,
            self.suppress_future,
            self.dry_run,
        )


@dataclass
class Plan:
    """What the warehouse and the bucket hold of the subject (step 2)."""

    events: list[store.SubjectEvent] = field(default_factory=list)
    delete_keys: set[str] = field(default_factory=set)
    shared_keys: set[str] = field(default_factory=set)
    unreadable_keys: set[str] = field(default_factory=set)
    quarantine_ids: list[int] = field(default_factory=list)
    not_found: list[dict[str, str]] = field(default_factory=list)
    objects_read: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "events": len(self.events),
            "ingest_meta": sum(1 for e in self.events if e.s3_key is not None),
            "adopted_events": sum(1 for e in self.events if e.s3_key is None),
            "quarantine_rows": len(self.quarantine_ids),
            "objects": len(self.delete_keys),
            "objects_shared": sorted(self.shared_keys),
            "objects_unreadable": sorted(self.unreadable_keys),
            "adopted_not_found": self.not_found,
            "objects_read": self.objects_read,
        }


class _Steps:
    """Seconds per step of one run, for its answer and the logs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[step] = round(time.monotonic() - started, 3)


class Eraser:
    """Runs erasure requests with a loader's settings, warehouse and S3 reader, and an
    `ObjectEraser` for the deletes (None for dry runs: they delete nothing)."""

    def __init__(self, loader: HourLoader, objects: ObjectEraser | None) -> None:
        self.loader = loader
        self.objects = objects
        self.tables = loader.tables
        key = loader.settings.erasure_hmac_key
        if key is None:
            raise ErasureKeyError(
                "erase needs the erasure key: set ERASURE_HMAC_KEY or "
                "ERASURE_HMAC_KEY_SECRET_ARN (the same key every loader is given)"
            )
        self.hasher = IdentityHasher(key)

    def erase(self, request: ErasureRequest, now: datetime | None = None) -> dict[str, Any]:
        """Run one request (see the module docstring); returns its record, or for a dry run
        what it would delete."""
        started = time.monotonic()
        request = request.validated()
        now = now or datetime.now(UTC)
        self.loader.check_schema()
        request_id = request.request_id or str(uuid.uuid4())
        self._refuse_other_identifiers(request, request_id)
        if request.dry_run:
            result = self._dry_run(request, request_id)
        else:
            result = self._run(request, request_id, now)
        result["seconds"] = round(time.monotonic() - started, 3)
        log.info(
            "erasure finished",
            extra={
                "request_id": request_id,
                "state": result.get("state"),
                "dry_run": request.dry_run,
            },
        )
        return result

    # ------------------------------------------------------------- the steps

    def _refuse_other_identifiers(self, request: ErasureRequest, request_id: str) -> None:
        with self.loader.engine.connect() as conn:
            existing = store.read_request(conn, self.tables, request_id)
        if existing is None:
            return
        if (
            existing["user_id_hashes"] != self.hasher.hex_digests("user_id", request.user_ids)
            or existing["client_id_hashes"]
            != self.hasher.hex_digests("client_id", request.client_ids)
            or existing["suppress_future"] != request.suppress_future
        ):
            raise ErasureInputError(
                f"request id {request_id!r} was used for other identifiers (or without "
                "--suppress-future the one time and with it the other): give a new request id"
            )

    def _dry_run(self, request: ErasureRequest, request_id: str) -> dict[str, Any]:
        with self.loader.engine.connect() as conn:
            found = store.found_client_ids(conn, self.tables, request.user_ids)
        subject = Subject(frozenset(request.user_ids), frozenset(request.client_ids) | found)
        plan = self._plan(subject, None)
        return {
            "request_id": request_id,
            "dry_run": True,
            "found_client_ids": len(found - set(request.client_ids)),
            "would_delete": plan.summary(),
        }

    def _run(self, request: ErasureRequest, request_id: str, now: datetime) -> dict[str, Any]:
        clock = _Steps()
        with clock("suppress"):
            record = self.loader.retrying("erasure")(self._suppress, request, request_id, now)
        found = record["found"]
        subject = Subject(frozenset(request.user_ids), frozenset(request.client_ids) | found)
        cutoff = None if request.suppress_future else record["requested_at"]
        with clock("plan"):
            plan = self._plan(subject, cutoff)
        with clock("warehouse"):
            self.loader.retrying("erasure")(self._delete_rows, request_id, subject, cutoff, plan)
        with clock("bucket"):
            self._delete_objects(request_id)
        with clock("verify"):
            result = self._verify(request_id, subject, cutoff, plan)
        result["step_seconds"] = clock.seconds
        return result

    def _suppress(self, request: ErasureRequest, request_id: str, now: datetime) -> dict[str, Any]:
        """Step 1, one transaction holding the list's lock exclusively."""
        hashed = self.hasher.hex_digests
        with self.loader.engine.begin() as conn:
            lock_list(conn)
            found = store.found_client_ids(conn, self.tables, request.user_ids)
            row = store.open_request(
                conn,
                self.tables,
                {
                    "request_id": request_id,
                    "requested_at": now,
                    "due_at": now + timedelta(days=self.loader.settings.erasure_due_days),
                    "key_id": self.hasher.key_id,
                    "user_id_hashes": hashed("user_id", request.user_ids),
                    "client_id_hashes": hashed("client_id", request.client_ids),
                    "suppress_future": request.suppress_future,
                    "state": "open",
                    "open_reason": "erasure running",
                },
            )
            found_hashes = sorted(
                set(row["found_client_id_hashes"]) | set(hashed("client_id", found))
            )
            store.update_request(conn, self.tables, request_id, found_client_id_hashes=found_hashes)
            until = None if request.suppress_future else row["requested_at"]
            add_to_list(conn, self.tables, self._entries(request, request_id, found, until))
        return {"requested_at": row["requested_at"], "found": frozenset(found)}

    def _entries(
        self,
        request: ErasureRequest,
        request_id: str,
        found: Iterable[str],
        until: datetime | None,
    ) -> list[dict[str, Any]]:
        named = set(request.client_ids)
        rows: list[tuple[IdentifierKind, str, bool]] = [
            ("user_id", u, False) for u in request.user_ids
        ]
        rows += [("client_id", c, False) for c in named]
        rows += [("client_id", c, True) for c in set(found) - named]
        return [
            {
                "id_hash": self.hasher.digest(kind, value),
                "kind": kind,
                "request_id": request_id,
                "suppress_until": until,
                "found_with_user": found_with_user,
            }
            for kind, value, found_with_user in rows
        ]

    # ------------------------------------------------------------- step 2: plan

    def _plan(self, subject: Subject, cutoff: datetime | None) -> Plan:
        """What of the subject the warehouse and the bucket hold; reads only."""
        plan = Plan()
        with self.loader.engine.connect() as conn:
            plan.events = store.subject_events(conn, self.tables, subject, cutoff)
            quarantined = store.quarantine_rows(conn, self.tables)
        loaded_from = {e.s3_key for e in plan.events if e.s3_key is not None}
        refs = [ObjectRef(key, 0, _EPOCH) for key in sorted(loaded_from | set(quarantined))]
        judged = self._read_and_judge(refs, subject, plan)
        for key in sorted(loaded_from):
            verdict = judged.get(key)
            if verdict == "gone" or (
                isinstance(verdict, Judgement) and verdict.verdict == "theirs"
            ):
                plan.delete_keys.add(key)  # gone: older versions may hold it still
            elif isinstance(verdict, Judgement) and verdict.verdict == "shared":
                plan.shared_keys.add(key)
            else:
                plan.unreadable_keys.add(key)
        for key, rows in quarantined.items():
            verdict = judged.get(key)
            if isinstance(verdict, Judgement) and verdict.verdict != "not_theirs":
                plan.quarantine_ids += [
                    qid for qid, position in rows if position in verdict.positions
                ]
                (plan.delete_keys if verdict.verdict == "theirs" else plan.shared_keys).add(key)
        self._find_adopted(plan, subject, cutoff, judged)
        return plan

    def _read_and_judge(
        self, refs: list[ObjectRef], subject: Subject, plan: Plan
    ) -> dict[str, Judgement | str]:
        """Each object read and judged by the rule; `gone` or `unreadable` when it cannot be."""
        out: dict[str, Judgement | str] = {}
        bucket = self.loader.settings.raw_bucket
        for fetched in self._fetch(refs):
            key = fetched.ref.key
            plan.objects_read += 1
            if fetched.body is None:
                out[key] = "gone" if fetched.error == "not_found" else "unreadable"
                continue
            out[key] = judge(
                SourceObject(bucket, key, fetched.ref.last_modified), fetched.body, subject
            )
        return out

    def _fetch(self, refs: list[ObjectRef]) -> Iterator[FetchedObject]:
        if not refs:
            return
        fetched = self.loader.source.fetch_many(refs)
        try:
            yield from fetched
        finally:
            close = getattr(fetched, "close", None)
            if close is not None:
                close()

    def _find_adopted(
        self,
        plan: Plan,
        subject: Subject,
        cutoff: datetime | None,
        judged: dict[str, Judgement | str],
    ) -> None:
        """Rows adopted from the original ETL name no object: list the hour folder of each
        one's timestamp (and the next, at an hour's edge), read and judge what is there, and
        match them by event id, else by timestamp. Those not found are named in the record."""
        adopted = [e for e in plan.events if e.s3_key is None]
        hours: set[datetime] = set()
        for event in adopted:
            hour = floor_hour(event.event_timestamp)
            hours.add(hour)
            if hour + HOUR - event.event_timestamp <= HOUR_EDGE:
                hours.add(hour + HOUR)
        prefix = self.loader.settings.events_prefix
        for hour in sorted(hours):
            listed = self.loader.source.list_objects(hour_prefix(hour, prefix))
            refs = [ref for ref in listed if ref.key not in judged]
            judged.update(self._read_and_judge(refs, subject, plan))
        by_id: dict[Any, str] = {}
        by_time: dict[datetime, str] = {}
        for key, verdict in judged.items():
            if not isinstance(verdict, Judgement) or verdict.verdict == "not_theirs":
                continue
            if hour_of_key(key, prefix) not in hours:
                continue
            if cutoff is None or all(
                r.event_timestamp <= cutoff for r in verdict.events if r.event_timestamp
            ):
                (plan.delete_keys if verdict.verdict == "theirs" else plan.shared_keys).add(key)
            for record in verdict.events:
                by_id[record.event_id] = key
                if record.event_timestamp is not None:
                    by_time[record.event_timestamp] = key
        for event in adopted:
            if event.event_id not in by_id and event.event_timestamp not in by_time:
                plan.not_found.append(
                    {"event_id": str(event.event_id), "hour": hour_label(event.event_timestamp)}
                )

    # ------------------------------------------------------------- steps 3 to 5

    def _delete_rows(
        self, request_id: str, subject: Subject, cutoff: datetime | None, plan: Plan
    ) -> None:
        """Step 3: one transaction, the request's record included."""
        prefix = self.loader.settings.events_prefix
        with self.loader.engine.begin() as conn:
            row = store.read_request(conn, self.tables, request_id, for_update=True)
            assert row is not None
            deleted = store.delete_subject_rows(conn, self.tables, subject, cutoff)
            quarantined = store.delete_quarantine(conn, self.tables, plan.quarantine_ids)
            store.refresh_completions(conn, self.tables, deleted.meta_keys.values(), prefix)
            now = datetime.now(UTC).isoformat()
            stores = _added(
                row["stores"],
                {
                    self.tables.events.name: {"deleted": len(deleted.events)},
                    self.tables.meta.name: {"deleted": len(deleted.meta_keys)},
                    self.tables.quarantine.name: {"deleted": quarantined},
                },
                now,
            )
            hours = dict(row["hours"])
            for event in deleted.events:
                key = deleted.meta_keys.get(event["event_id"])
                hour = (hour_of_key(key, prefix) if key else None) or event["event_timestamp"]
                label = hour_label(hour)
                hours[label] = hours.get(label, 0) + 1
            objects = _merged_objects(row["objects"], plan)
            store.update_request(
                conn, self.tables, request_id, stores=stores, hours=hours, objects=objects
            )

    def _delete_objects(self, request_id: str) -> None:
        """Step 4: every version of every key still to delete; what S3 refused stays listed."""
        assert self.objects is not None
        with self.loader.engine.connect() as conn:
            row = store.read_request(conn, self.tables, request_id)
        assert row is not None
        pending = list(row["objects"].get("pending", []))
        result = self.objects.delete_every_version(pending) if pending else Deleted()
        with self.loader.engine.begin() as conn:
            row = store.read_request(conn, self.tables, request_id, for_update=True)
            assert row is not None
            objects = dict(row["objects"])
            objects["pending"] = sorted(result.failed)
            objects["refused"] = dict(sorted(result.failed.items()))
            done = set(objects.get("deleted", [])) | (set(pending) - set(result.failed))
            objects["deleted"] = sorted(done)
            counts = {
                "bucket": {"objects_deleted": result.objects, "versions_deleted": result.versions}
            }
            stores = _added(row["stores"], counts, datetime.now(UTC).isoformat())
            store.update_request(conn, self.tables, request_id, objects=objects, stores=stores)

    def _verify(
        self, request_id: str, subject: Subject, cutoff: datetime | None, plan: Plan
    ) -> dict[str, Any]:
        """Step 5: count what still matches everywhere; close the request or say why not."""
        assert self.objects is not None
        with self.loader.engine.connect() as conn:
            remaining = store.count_remaining(
                conn, self.tables, subject, cutoff, plan.quarantine_ids
            )
            row = store.read_request(conn, self.tables, request_id)
        assert row is not None
        objects = row["objects"]
        left = self.objects.remaining([*objects.get("deleted", []), *objects.get("pending", [])])
        remaining["bucket"] = len(left)
        reasons = [
            f"{n} rows still match in {name}"
            for name, n in remaining.items()
            if n and name != "bucket"
        ]
        if left:
            reasons.append(
                f"{len(left)} objects still have versions in the bucket (see objects.refused)"
            )
        if objects.get("shared"):
            reasons.append(
                f"{len(objects['shared'])} objects hold other people's events too and were not "
                "deleted: the suppression list keeps the subject's out of every load"
            )
        if objects.get("unreadable"):
            reasons.append(f"{len(objects['unreadable'])} objects could not be read to judge them")
        now = datetime.now(UTC)
        with self.loader.engine.begin() as conn:
            store.update_request(
                conn,
                self.tables,
                request_id,
                state="open" if reasons else "complete",
                remaining=remaining,
                verified_at=now,
                open_reason="; ".join(reasons) or None,
                completed_at=None if reasons else now,
            )
            final = store.read_request(conn, self.tables, request_id)
        assert final is not None
        return {**request_view(final, now), "dry_run": False, "this_run": plan.summary()}


def _added(
    stores: dict[str, Any], counts: dict[str, dict[str, int]], finished_at: str
) -> dict[str, Any]:
    """`stores` with `counts` added to each store's, and its `finished_at` set."""
    out = {name: dict(values) for name, values in stores.items()}
    for name, values in counts.items():
        entry = out.setdefault(name, {})
        for count, value in values.items():
            entry[count] = int(entry.get(count, 0)) + value
        entry["finished_at"] = finished_at
    return out


def _merged_objects(objects: dict[str, Any], plan: Plan) -> dict[str, Any]:
    out = dict(objects)
    for name, keys in (
        ("pending", plan.delete_keys),
        ("shared", plan.shared_keys),
        ("unreadable", plan.unreadable_keys),
    ):
        out[name] = sorted(set(out.get(name, [])) | keys)
    seen = {(n["event_id"], n["hour"]) for n in out.get("not_found", [])}
    out["not_found"] = [
        *out.get("not_found", []),
        *(n for n in plan.not_found if (n["event_id"], n["hour"]) not in seen),
    ]
    return out


def request_view(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A request record as the CLI and the Lambda show it: counts of hashed identifiers, never
    the hashes themselves."""
    objects = row["objects"] or {}

    def iso(value: datetime | None) -> str | None:
        return value.astimezone(UTC).isoformat() if value is not None else None

    return {
        "request_id": row["request_id"],
        "state": row["state"],
        "overdue": row["state"] == "open" and row["due_at"] < now,
        "requested_at": iso(row["requested_at"]),
        "due_at": iso(row["due_at"]),
        "completed_at": iso(row["completed_at"]),
        "verified_at": iso(row["verified_at"]),
        "suppress_future": row["suppress_future"],
        "identifiers": {
            "user_ids": len(row["user_id_hashes"]),
            "client_ids": len(row["client_id_hashes"]),
            "found_client_ids": len(row["found_client_id_hashes"]),
        },
        "stores": row["stores"],
        "objects": {
            "deleted": len(objects.get("deleted", [])),
            "pending": objects.get("pending", []),
            "shared": objects.get("shared", []),
            "unreadable": objects.get("unreadable", []),
            "adopted_not_found": objects.get("not_found", []),
        },
        "hours": row["hours"],
        "remaining": row["remaining"],
        "open_reason": row["open_reason"],
    }
