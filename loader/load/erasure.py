"""The warehouse side of an erasure: which rows are the subject's, deleting them, and the
request record (clickstream_erasure_requests) that proves it.

Every statement selects the subject's events by their columns (`user_id`, `client_id`) through
the events table, never by `event_id` alone, and joins or deletes clickstream_ingest_meta on
the key it shares with the events table, (event_timestamp, event_id): the tables are partitioned
by UTC day of event_timestamp (revision 0006), so a key names its row's partition. The index on
`user_id` serves the user ids; the one on `client_id` the anonymous events of a client id.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, insert

from loader.identity import Subject
from loader.load.rollups import subtract_deleted
from loader.load.tables import Tables
from loader.window import hour_of_key


def _texts(values: Iterable[str]) -> sa.BindParameter[Any]:
    return sa.bindparam(None, sorted(values), type_=ARRAY(sa.Text))


def subject_filter(
    events: sa.Table, subject: Subject, cutoff: datetime | None
) -> sa.ColumnElement[bool]:
    """The erasure rule as SQL. With a `cutoff` (the request's time, unless the subject's
    later events are suppressed too) only the events received or loaded up to it: a person
    who came back since is a new visitor, whose new events the list lets in."""
    rule = sa.or_(
        events.c.user_id == sa.any_(_texts(subject.user_ids)),
        sa.and_(
            events.c.user_id.is_(None),
            events.c.client_id == sa.any_(_texts(subject.client_ids)),
        ),
    )
    if cutoff is None:
        return rule
    return sa.and_(rule, sa.or_(events.c.event_timestamp <= cutoff, events.c.loaded_at <= cutoff))


def _meta_join(tables: Tables) -> sa.ColumnElement[bool]:
    """clickstream_ingest_meta to its event, on every key column the two tables share."""
    meta, events = tables.meta, tables.events
    shared = [c for c in ("event_timestamp", "event_id") if c in meta.c and c in events.c]
    return sa.and_(*(meta.c[c] == events.c[c] for c in shared))


def found_client_ids(conn: sa.Connection, tables: Tables, user_ids: Iterable[str]) -> set[str]:
    """The client ids seen with these user ids (the index on user_id serves it)."""
    users = sorted(user_ids)
    if not users:
        return set()
    events = tables.events
    rows = conn.execute(
        sa.select(events.c.client_id)
        .where(events.c.user_id == sa.any_(_texts(users)), events.c.client_id.is_not(None))
        .distinct()
    )
    return set(rows.scalars())


@dataclass(frozen=True)
class SubjectEvent:
    """One of the subject's events: enough to find its raw object."""

    event_id: Any
    event_timestamp: datetime
    #: The object it was loaded from; None for a row adopted from the original ETL.
    s3_key: str | None


def subject_events(
    conn: sa.Connection, tables: Tables, subject: Subject, cutoff: datetime | None
) -> list[SubjectEvent]:
    events, meta = tables.events, tables.meta
    query = sa.select(events.c.event_id, events.c.event_timestamp, meta.c.s3_key).select_from(
        events.outerjoin(meta, _meta_join(tables))
    )
    rows = conn.execute(query.where(subject_filter(events, subject, cutoff)))
    return [SubjectEvent(r.event_id, r.event_timestamp, r.s3_key) for r in rows]


@dataclass
class DeletedRows:
    """What `delete_subject_rows` took out, whole: the events' rows (every column, for whoever
    keeps aggregates of them) and, per event id, the key of its ingest row."""

    events: list[sa.RowMapping] = field(default_factory=list)
    meta_keys: dict[Any, str] = field(default_factory=dict)


def delete_subject_rows(
    conn: sa.Connection, tables: Tables, subject: Subject, cutoff: datetime | None
) -> DeletedRows:
    """Delete the subject's rows from clickstream_ingest_meta, then clickstream_events, in the
    caller's transaction, and return them (DELETE ... RETURNING). The one place an erasure
    removes events: a rollup that must subtract them hooks in here.

    The subject's events are found once, through the indexes on user_id and client_id (no
    FOR UPDATE: it needs UPDATE, which the erasure role lacks; the erase holds the suppression
    list's lock, so no load adds the subject's rows meanwhile), and both deletes go by their
    primary key (event_timestamp, event_id), which names each row's
    day partition. Revision 0006's trigger on the events deletes their claims (and would delete
    their meta rows: those are gone already, taken first for the keys of their objects)."""
    events, meta = tables.events, tables.meta
    key_names = [c for c in ("event_timestamp", "event_id") if c in meta.c]
    found = conn.execute(
        sa.select(*(events.c[c] for c in key_names)).where(subject_filter(events, subject, cutoff))
    ).all()
    deleted = DeletedRows()
    if not found:
        return deleted
    keys = [tuple(row) for row in found]
    meta_rows = conn.execute(
        sa.delete(meta)
        .where(sa.tuple_(*(meta.c[c] for c in key_names)).in_(keys))
        .returning(meta.c.event_id, meta.c.s3_key)
    )
    deleted.meta_keys = {r.event_id: r.s3_key for r in meta_rows}
    event_keys = sa.tuple_(*(events.c[c] for c in key_names)).in_(keys)
    deleted.events = list(
        conn.execute(sa.delete(events).where(event_keys).returning(events)).mappings()
    )
    # The dashboard's rollups lose the erased events in the same transaction (issue 25).
    subtract_deleted(conn, tables, [dict(row) for row in deleted.events])
    return deleted


def quarantine_rows(conn: sa.Connection, tables: Tables) -> dict[str, list[tuple[int, int]]]:
    """Every quarantine row by key: (quarantine_id, position). Their bodies are in the bucket
    only, so the caller reads each object to tell whose it is."""
    q = tables.quarantine
    by_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for row in conn.execute(sa.select(q.c.s3_key, q.c.quarantine_id, q.c.position)):
        by_key[row.s3_key].append((row.quarantine_id, row.position))
    return dict(by_key)


def delete_quarantine(conn: sa.Connection, tables: Tables, ids: Sequence[int]) -> int:
    if not ids:
        return 0
    q = tables.quarantine
    return len(
        conn.execute(
            sa.delete(q).where(q.c.quarantine_id.in_(sorted(ids))).returning(q.c.quarantine_id)
        ).all()
    )


def refresh_completions(
    conn: sa.Connection, tables: Tables, keys: Iterable[str], events_prefix: str
) -> None:
    """The completion records of these objects count the ingest rows they still have, so
    `check` goes on reporting them loaded (it compares the two). Each record is found by its
    primary key (hour, s3_key): a key names its hour. Keys in order: two erasures touching the
    same objects lock them in the same order."""
    done, meta = tables.loaded_objects, tables.meta
    ordered = sorted(set(keys))
    if not ordered:
        return
    still = sa.select(sa.func.count()).where(meta.c.s3_key == done.c.s3_key).scalar_subquery()
    hours = {key: hour_of_key(key, events_prefix) for key in ordered}
    located = [(hour, key) for key, hour in hours.items() if hour is not None]
    # A key outside the hour layout has no completion record of its own hour: found by key.
    unlocated = [key for key, hour in hours.items() if hour is None]
    if located:
        where = sa.tuple_(done.c.hour, done.c.s3_key).in_(located)
        conn.execute(sa.update(done).where(where).values(meta_rows=still))
    if unlocated:
        conn.execute(sa.update(done).where(done.c.s3_key.in_(unlocated)).values(meta_rows=still))


def count_remaining(
    conn: sa.Connection,
    tables: Tables,
    subject: Subject,
    cutoff: datetime | None,
    quarantine_ids: Sequence[int],
) -> dict[str, int]:
    """Verification: what of the subject each table still holds."""
    events, meta, q = tables.events, tables.meta, tables.quarantine
    match = subject_filter(events, subject, cutoff)
    in_events = conn.execute(sa.select(sa.func.count()).where(match)).scalar_one()
    in_meta = conn.execute(
        sa.select(sa.func.count()).select_from(meta.join(events, _meta_join(tables))).where(match)
    ).scalar_one()
    in_quarantine = 0
    if quarantine_ids:
        in_quarantine = conn.execute(
            sa.select(sa.func.count()).where(q.c.quarantine_id.in_(sorted(quarantine_ids)))
        ).scalar_one()
    return {
        events.name: int(in_events),
        meta.name: int(in_meta),
        q.name: int(in_quarantine),
    }


# --- the request record --------------------------------------------------------------------------


def read_request(
    conn: sa.Connection, tables: Tables, request_id: str, *, for_update: bool = False
) -> dict[str, Any] | None:
    requests = tables.erasure_requests
    query = sa.select(requests).where(requests.c.request_id == request_id)
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    return dict(row) if row is not None else None


def open_request(conn: sa.Connection, tables: Tables, values: dict[str, Any]) -> dict[str, Any]:
    """The request's row, created if new (a rerun of an open request keeps its own), locked
    for the rest of the transaction."""
    conn.execute(
        insert(tables.erasure_requests).values(**values).on_conflict_do_nothing(),
    )
    row = read_request(conn, tables, values["request_id"], for_update=True)
    assert row is not None
    return row


def update_request(conn: sa.Connection, tables: Tables, request_id: str, **values: Any) -> None:
    requests = tables.erasure_requests
    conn.execute(sa.update(requests).where(requests.c.request_id == request_id).values(**values))


def list_requests(
    conn: sa.Connection, tables: Tables, *, open_only: bool = False, due_by: datetime | None = None
) -> list[dict[str, Any]]:
    """The requests, oldest first; only the open ones, or only those open past `due_by`."""
    requests = tables.erasure_requests
    query = sa.select(requests).order_by(requests.c.requested_at, requests.c.request_id)
    if open_only or due_by is not None:
        query = query.where(requests.c.state == "open")
    if due_by is not None:
        query = query.where(requests.c.due_at < due_by)
    return [dict(r) for r in conn.execute(query).mappings()]


def erased_by_hour(conn: sa.Connection, tables: Tables, labels: Sequence[str]) -> dict[str, int]:
    """Events erased per hour label ('YYYY-MM-DDTHH'), summed over every request."""
    if not labels:
        return {}
    requests = tables.erasure_requests
    hours = sa.func.jsonb_each_text(requests.c.hours).table_valued("key", "value").render_derived()
    rows = conn.execute(
        sa.select(hours.c.key, sa.func.sum(sa.cast(hours.c.value, sa.Integer)))
        .select_from(requests)
        .join(hours, sa.true())
        .where(hours.c.key.in_(list(labels)))
        .group_by(hours.c.key)
    )
    return {key: int(total) for key, total in rows}
