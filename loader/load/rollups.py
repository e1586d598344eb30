"""The dashboard's rollups (revision 0008), kept exact with clickstream_events, whoever writes.

One rule: a rollup changes in the transaction of the rows it counts. Three ways in:

- `apply_inserted`: the events a batch inserted, never its duplicates (the writer's RETURNING
  says which rows went in), as the batch's last statements (loader/load/batch.py). Every load
  path (hourly, lookback, SQS, fan-out shards, reprocess, a bisected batch's halves) commits
  through there, so a rerun or a late object counts exactly what it inserts.
- `subtract_deleted`: rows being deleted, in the deleting transaction, after the DELETE
  (erasure: the columns of `DELETE ... RETURNING` `ROLLUP_COLUMNS`).
- `rebuild_day`: one UTC day recounted from the raw rows and the difference applied
  (`clickstream-loader rollup` after a DBA deleted rows by hand; retention after dropping a
  day). With `apply=False` it only reports the difference.

The event and product counts are additive: upserts that add a delta, in key order, so concurrent
batches take their row locks in one order and never deadlock. Unique clients are not additive:
clickstream_rollup_clients holds which client was seen on which day in which login states (flags,
not counts: a batch writes a row only when a client is new that day, or new in a login state, not
for every event), and clickstream_rollup_client_gaps the links from each client-day to the
client's previous day, recomputed here from the changed clients' whole histories. Both change
under one transaction-scoped advisory lock that every writer takes after its count upserts (so
the history it reads is the one it changes). Deleted rows are not subtracted from the flags:
the client-days they touched are read again from the rows left.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, insert

from loader.errors import TerminalError
from loader.load.tables import Tables

#: The columns of clickstream_events the rollups read: what a deleting caller returns
#: (`DELETE ... RETURNING`) and hands to `subtract_deleted`.
ROLLUP_COLUMNS: Final = (
    "event_timestamp",
    "user_login_state",
    "event_name",
    "client_id",
    "context_product_id",
    "context_product_name",
    "context_product_category",
    "context_product_brand",
)
#: What the dashboard shows for a NULL or '' login state, category or brand.
UNKNOWN: Final = "UNKNOWN"
#: pg_advisory_xact_lock(class, key): the two-int4 key space, apart from the hour locks'
#: bigint keys (loader/load/locks.py). Held by every writer of the client tables until commit.
LOCK_CLASS: Final = 0x636C6B73  # "clks"
LOCK_CLIENTS: Final = 1
_CLIENT_LOCK: Final = sa.select(sa.func.pg_advisory_xact_lock(LOCK_CLASS, LOCK_CLIENTS))
#: The slot of clickstream_rollup_clients' counters a login state counts in.
_STATE_SLOT: Final = {"logged_in": 0, "anonymous": 1}
_OTHER_SLOT: Final = 2
#: A client-day's login-state buckets: (logged_in, anonymous, any other state).
Flags = tuple[bool, bool, bool]
NOBODY: Final[Flags] = (False, False, False)
_FLAG_COLUMNS: Final = ("logged_in", "anonymous", "other_states")
#: Login filter → does a client-day's flags put it in that filter.
_FILTERS: Final[tuple[tuple[str, Callable[[Flags], bool]], ...]] = (
    ("ALL", any),
    ("logged_in", lambda flags: flags[0]),
    ("anonymous", lambda flags: flags[1]),
)

EventKey = tuple[date, str, str]  # day, login state label, event name
ProductKey = tuple[date, str, str, str]  # day, login state label, dimension, value label
ClientKey = tuple[str, date]  # client_id, day
GapKey = tuple[str, date, date | None]  # login filter, day, previous day (None: never)


class RollupOutOfStep(TerminalError):
    """Rows to subtract that the rollups never counted: rebuild those days first."""


@dataclass
class Deltas:
    """Signed changes to the counts (events → [events, events_without_client], product rows
    → events), the rows' client-days by login-state bucket (added or taken away), and, from a
    recount, the flags client-days must end with."""

    events: dict[EventKey, list[int]] = field(default_factory=dict)
    products: dict[ProductKey, int] = field(default_factory=dict)
    clients: dict[ClientKey, list[int]] = field(default_factory=dict)
    presence: dict[ClientKey, Flags] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (
            self.presence
            or any(any(v) for v in self.events.values())
            or any(self.products.values())
            or any(any(v) for v in self.clients.values())
        )


def utc_day(instant: datetime) -> date:
    """The UTC day of an instant: `(event_timestamp AT TIME ZONE 'UTC')::date`."""
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC).date()


def deltas_of(rows: Iterable[Mapping[str, Any]], sign: int = 1) -> Deltas:
    """What these clickstream_events rows add to the rollups (`sign=-1`: take away). A NULL or
    '' login state, category or brand counts as the dashboard shows it: UNKNOWN. A nullable
    column a row leaves out is NULL, as the INSERT leaves it."""
    deltas = Deltas()
    events, products, clients = deltas.events, deltas.products, deltas.clients
    for row in rows:
        day = utc_day(row["event_timestamp"])
        state = row.get("user_login_state")
        state_shown = state or UNKNOWN
        client = row.get("client_id")
        counts = events.setdefault((day, state_shown, row["event_name"]), [0, 0])
        counts[0] += sign
        if client is None:
            counts[1] += sign
        else:
            slots = clients.setdefault((client, day), [0, 0, 0])
            slots[_STATE_SLOT.get(state or "", _OTHER_SLOT)] += sign
        if row.get("context_product_id") is not None or row.get("context_product_name") is not None:
            for key in (
                (day, state_shown, "category", row.get("context_product_category") or UNKNOWN),
                (day, state_shown, "brand", row.get("context_product_brand") or UNKNOWN),
            ):
                products[key] = products.get(key, 0) + sign
    return deltas


def apply_inserted(conn: sa.Connection, tables: Tables, rows: Sequence[Mapping[str, Any]]) -> None:
    """Count rows just inserted, in the caller's transaction (its last statements: the rollup
    rows stay locked until commit, and every batch of the day needs some of them)."""
    if rows:
        apply_deltas(conn, tables, deltas_of(rows))


def subtract_deleted(
    conn: sa.Connection, tables: Tables, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Uncount rows deleted in the caller's transaction; `rows` carry ROLLUP_COLUMNS."""
    if rows:
        apply_deltas(conn, tables, deltas_of(rows, sign=-1))


def apply_deltas(conn: sa.Connection, tables: Tables, deltas: Deltas) -> None:
    """Add signed deltas to the rollups; rows that reach zero are deleted. Lock order, the same
    for every writer: event rows, product rows (each in key order), then the client lock."""
    _add(
        conn,
        tables.rollup_events,
        ("day", "login_state", "event_name"),
        ("events", "events_without_client"),
        {k: tuple(v) for k, v in deltas.events.items()},
    )
    _add(
        conn,
        tables.rollup_products,
        ("day", "login_state", "dimension", "value"),
        ("events",),
        {k: (v,) for k, v in deltas.products.items()},
    )
    _apply_clients(conn, tables, deltas.clients)


def _add(
    conn: sa.Connection,
    table: sa.Table,
    keys: tuple[str, ...],
    counters: tuple[str, ...],
    deltas: Mapping[tuple[Any, ...], Sequence[int]],
) -> None:
    """Add deltas to a count table, in key order. Growth is one upsert (`INSERT ... SELECT FROM
    unnest(arrays) ORDER BY key ON CONFLICT DO UPDATE SET counter = counter + delta`); a
    shrinking row must exist (PostgreSQL checks an upsert's candidate row, negative, against
    the table's CHECKs): it is locked, updated, and deleted when it reaches zero."""
    items = [(key, delta) for key, delta in deltas.items() if any(delta)]
    grow = [(key, delta) for key, delta in items if min(delta) >= 0]
    shrink = [(key, delta) for key, delta in items if min(delta) < 0]
    statements = _statements(table, keys, counters)
    if grow:
        conn.execute(statements.upsert, _arrays(statements, grow))
    if shrink:
        arrays = _arrays(statements, shrink)
        conn.execute(statements.lock, arrays)
        updated = conn.execute(statements.subtract, arrays).rowcount
        if updated != len(shrink):
            raise RollupOutOfStep(
                f"{table.name}: {len(shrink) - updated} of the rows to subtract from are missing "
                "or hold less than is taken away: rebuild those days first (clickstream-loader "
                "rollup)"
            )
        conn.execute(statements.delete_zeros, arrays)


@dataclass(frozen=True)
class _Statements:
    """One count table's statements over `unnest` of one bound array per column."""

    columns: tuple[str, ...]
    upsert: sa.Insert
    lock: sa.Select[Any]
    subtract: sa.Update
    delete_zeros: sa.Delete


def _arrays(
    statements: _Statements, items: Sequence[tuple[tuple[Any, ...], Sequence[int]]]
) -> dict[str, list[Any]]:
    """The deltas as one list per column: the statements' bound arrays."""
    rows = [tuple(key) + tuple(delta) for key, delta in items]
    return {
        f"a_{name}": list(values)
        for name, values in zip(statements.columns, zip(*rows, strict=True), strict=True)
    }


@functools.lru_cache(maxsize=64)  # bounded: each TARGET_TABLE's copies are tables of their own
def _statements(table: sa.Table, keys: tuple[str, ...], counters: tuple[str, ...]) -> _Statements:
    """Built once per table, like prepared statements: building Core constructs (and their
    cache keys) for every batch cost more CPU than the rollups' own arithmetic."""
    columns = (*keys, *counters)
    arrays = (
        sa.func.unnest(
            *(sa.bindparam(f"a_{name}", type_=ARRAY(table.c[name].type)) for name in columns)
        )
        .table_valued(*columns)
        .render_derived()
    )
    selected: list[sa.ColumnElement[Any]] = []
    for name in columns:
        column: sa.ColumnElement[Any] = arrays.c[name]
        if name == "previous_day":  # None: never seen before; a key column cannot be NULL
            column = sa.func.coalesce(column, sa.cast("-infinity", sa.Date))
        selected.append(column.label(name))
    source = sa.select(*selected).subquery()
    upsert = insert(table).from_select(
        columns, sa.select(*(source.c[n] for n in columns)).order_by(*(source.c[n] for n in keys))
    )
    upsert = upsert.on_conflict_do_update(
        index_elements=list(keys),
        set_={name: table.c[name] + upsert.excluded[name] for name in counters},
    )
    matches = sa.and_(*(table.c[name] == source.c[name] for name in keys))
    return _Statements(
        columns=columns,
        upsert=upsert,
        lock=sa.select(table.c[keys[0]])
        .where(sa.exists().where(matches))
        .order_by(*(table.c[name] for name in keys))
        .with_for_update(),
        subtract=sa.update(table)
        .values({name: table.c[name] + source.c[name] for name in counters})
        .where(matches, *(table.c[name] + source.c[name] >= 0 for name in counters)),
        delete_zeros=sa.delete(table).where(
            *(table.c[name] == 0 for name in counters), sa.exists().where(matches)
        ),
    )


def _apply_clients(
    conn: sa.Connection, tables: Tables, deltas: Mapping[ClientKey, Sequence[int]]
) -> None:
    """Rows added only: the client-days they show are ORed into the presence flags. Rows
    deleted: the client-days they touched are read again from the rows left (the caller
    deleted them first, in this transaction)."""
    touched = {key: delta for key, delta in deltas.items() if any(delta)}
    if not touched:
        return
    if all(min(delta) >= 0 for delta in touched.values()):
        _grow_presence(conn, tables, {key: _present(delta) for key, delta in touched.items()})
    else:
        conn.execute(_CLIENT_LOCK)
        _set_presence(conn, tables, _raw_presence(conn, tables, sorted(touched)))


def _present(counts: Sequence[int]) -> Flags:
    return (counts[0] > 0, counts[1] > 0, counts[2] > 0)


def _grow_presence(conn: sa.Connection, tables: Tables, seen: Mapping[ClientKey, Flags]) -> None:
    """One statement ORs the batch's client-days into clickstream_rollup_clients and returns the
    ones that changed (a new day, or a login state new that day), with their flags before; only
    those clients are relinked. Most rows of a batch change nothing: the client was already
    seen that day, in that state."""
    clients = tables.rollup_clients
    statements = _presence_statements(clients)
    conn.execute(_CLIENT_LOCK)  # its own statement: the next one's snapshot is taken after it
    changed: dict[str, dict[date, Flags]] = defaultdict(dict)
    for client, day, *before in conn.execute(statements.grow, _presence_arrays(seen)):
        changed[client][day] = (before[0], before[1], before[2])
    if not changed:
        return
    gaps: dict[GapKey, int] = defaultdict(int)
    for client, after in _histories(conn, clients, sorted(changed)).items():
        before_days = dict(after)
        for day, flags in changed[client].items():
            if any(flags):
                before_days[day] = flags
            else:
                before_days.pop(day, None)
        _relink(gaps, before_days, after)
    _add_gaps(conn, tables, gaps)


def _set_presence(conn: sa.Connection, tables: Tables, targets: Mapping[ClientKey, Flags]) -> None:
    """Set client-days to these flags (none: the row goes) and relink their clients. The
    caller holds the client lock."""
    if not targets:
        return
    clients = tables.rollup_clients
    statements = _presence_statements(clients)
    by_client: dict[str, dict[date, Flags]] = defaultdict(dict)
    for (client, day), flags in targets.items():
        by_client[client][day] = flags
    histories = _histories(conn, clients, sorted(by_client))
    gaps: dict[GapKey, int] = defaultdict(int)
    for client, days in by_client.items():
        before = histories.get(client, {})
        after = {**before, **days}
        _relink(gaps, before, {day: flags for day, flags in after.items() if any(flags)})
    kept = {key: flags for key, flags in targets.items() if any(flags)}
    gone = {key: flags for key, flags in targets.items() if not any(flags)}
    if kept:
        conn.execute(statements.set_flags, _presence_arrays(kept))
    if gone:
        conn.execute(statements.delete, _presence_arrays(gone))
    _add_gaps(conn, tables, gaps)


def _relink(
    gaps: dict[GapKey, int], before: Mapping[date, Flags], after: Mapping[date, Flags]
) -> None:
    """One client's links before and after, into signed changes of the gaps table."""
    for key in _links(before):
        gaps[key] -= 1
    for key in _links(after):
        gaps[key] += 1


def _add_gaps(conn: sa.Connection, tables: Tables, gaps: Mapping[GapKey, int]) -> None:
    _add(
        conn,
        tables.rollup_client_gaps,
        ("login_filter", "day", "previous_day"),
        ("clients",),
        {key: (n,) for key, n in gaps.items() if n},
    )


def _raw_presence(
    conn: sa.Connection, tables: Tables, pairs: Sequence[ClientKey]
) -> dict[ClientKey, Flags]:
    """What the rows left say of these client-days: one scan of each day, for all its clients
    (clickstream_events has no index on client_id; its BRIN index narrows to the day)."""
    events = tables.events
    by_day: dict[date, list[str]] = defaultdict(list)
    for client, day in pairs:
        by_day[day].append(client)
    found: dict[ClientKey, Flags] = {}
    for day, ids in sorted(by_day.items()):
        start, end = day_bounds(day)
        rows = conn.execute(
            _client_flags(events)
            .where(
                events.c.event_timestamp >= start,
                events.c.event_timestamp < end,
                events.c.client_id == sa.any_(sa.literal(ids, ARRAY(sa.Text))),
            )
            .group_by(events.c.client_id)
        )
        found.update({(client, day): (li, an, ot) for client, li, an, ot in rows})
    return {pair: found.get(pair, NOBODY) for pair in pairs}


def _client_flags(events: sa.Table) -> sa.Select[Any]:
    """client_id and whether its rows include each login state bucket (to be filtered and
    grouped by client_id)."""
    state = events.c.user_login_state
    other = sa.or_(state.is_(None), state.notin_(list(_STATE_SLOT)))
    return sa.select(
        events.c.client_id,
        sa.func.count().filter(state == "logged_in") > 0,
        sa.func.count().filter(state == "anonymous") > 0,
        sa.func.count().filter(other) > 0,
    )


def _histories(
    conn: sa.Connection, clients: sa.Table, ids: list[str]
) -> dict[str, dict[date, Flags]]:
    """Every day each of these clients was seen on, with its login-state flags."""
    histories: dict[str, dict[date, Flags]] = defaultdict(dict)
    for client, day, logged_in, anonymous, other in conn.execute(_history(clients), {"ids": ids}):
        histories[client][day] = (logged_in, anonymous, other)
    return histories


@functools.lru_cache(maxsize=16)
def _history(clients: sa.Table) -> sa.Select[Any]:
    return sa.select(
        clients.c.client_id, clients.c.day, *(clients.c[n] for n in _FLAG_COLUMNS)
    ).where(clients.c.client_id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.Text))))


@dataclass(frozen=True)
class _PresenceStatements:
    """clickstream_rollup_clients' statements over `unnest` of one array per column."""

    grow: sa.Select[Any]
    set_flags: sa.Insert
    delete: sa.Delete


def _presence_arrays(flags: Mapping[ClientKey, Flags]) -> dict[str, list[Any]]:
    rows = [(client, day, *f) for (client, day), f in flags.items()]
    columns = zip(*rows, strict=True)
    names = ("client_id", "day", *_FLAG_COLUMNS)
    return {f"a_{name}": list(values) for name, values in zip(names, columns, strict=True)}


@functools.lru_cache(maxsize=16)
def _presence_statements(clients: sa.Table) -> _PresenceStatements:
    """Built once per table. `grow`: the batch's client-days as a CTE; the rows they match
    before the statement (`before`, the statement's snapshot); the upsert that ORs the flags in,
    writing only where one turns true, RETURNING those; joined: what changed, and from what."""
    names = ("client_id", "day", *_FLAG_COLUMNS)
    arrays = (
        sa.func.unnest(*(sa.bindparam(f"a_{n}", type_=ARRAY(clients.c[n].type)) for n in names))
        .table_valued(*names)
        .render_derived()
    )
    batch = sa.select(*(arrays.c[n].label(n) for n in names)).cte("batch")
    same = sa.and_(clients.c.client_id == batch.c.client_id, clients.c.day == batch.c.day)
    before = sa.select(clients).join(batch, same).cte("before")
    ordered = sa.select(*(batch.c[n] for n in names)).order_by(batch.c.client_id, batch.c.day)
    upsert = insert(clients).from_select(names, ordered)
    grown = (
        upsert.on_conflict_do_update(
            index_elements=["client_id", "day"],
            set_={n: sa.or_(clients.c[n], upsert.excluded[n]) for n in _FLAG_COLUMNS},
            where=sa.or_(*(sa.and_(~clients.c[n], upsert.excluded[n]) for n in _FLAG_COLUMNS)),
        )
        .returning(clients.c.client_id, clients.c.day)
        .cte("grown")
    )
    grow = sa.select(
        grown.c.client_id,
        grown.c.day,
        *(sa.func.coalesce(before.c[n], sa.false()) for n in _FLAG_COLUMNS),
    ).select_from(
        grown.outerjoin(
            before, sa.and_(before.c.client_id == grown.c.client_id, before.c.day == grown.c.day)
        )
    )
    setting = insert(clients).from_select(names, ordered)
    set_flags = setting.on_conflict_do_update(
        index_elements=["client_id", "day"],
        set_={n: setting.excluded[n] for n in _FLAG_COLUMNS},
    )
    delete = sa.delete(clients).where(sa.exists().where(same))
    return _PresenceStatements(grow=grow, set_flags=set_flags, delete=delete)


def _links(days: Mapping[date, Flags]) -> list[GapKey]:
    """Per login filter, each day the client was seen on under it, with the day before it was
    (None for the first): the rows this client adds to clickstream_rollup_client_gaps."""
    links: list[GapKey] = []
    ordered = sorted(days.items())
    for login_filter, seen in _FILTERS:
        previous: date | None = None
        for day, flags in ordered:
            if seen(flags):
                links.append((login_filter, day, previous))
                previous = day
    return links


# --- rebuilding a day from the raw rows -----------------------------------------------------------


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day, as event_timestamp bounds."""
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def lock_for_rebuild(conn: sa.Connection, tables: Tables) -> None:
    """Block every other rollup writer until commit, in the writers' own lock order: a batch
    that inserted rows the rebuild cannot see yet adds them after it commits, and one that
    already counted its rows has committed before the rebuild reads."""
    preparer = conn.dialect.identifier_preparer
    names = ", ".join(
        preparer.format_table(t) for t in (tables.rollup_events, tables.rollup_products)
    )
    conn.exec_driver_sql(f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE")
    conn.execute(_CLIENT_LOCK)


def rebuild_day(conn: sa.Connection, tables: Tables, day: date, *, apply: bool = True) -> Deltas:
    """Recount one UTC day from clickstream_events and apply the difference to the rollups
    (with `apply=False`, only return it). The caller's transaction holds the rollup locks
    (`lock_for_rebuild`) when applying; a check alone may run under REPEATABLE READ instead."""
    if apply:
        lock_for_rebuild(conn, tables)
    raw = _raw_day(conn, tables, day)
    kept = _rollup_day(conn, tables, day)
    difference = Deltas(
        events=_difference(raw.events, kept.events),
        products={k: v[0] for k, v in _difference(_one(raw.products), _one(kept.products)).items()},
        presence={
            key: raw.presence.get(key, NOBODY)
            for key in raw.presence.keys() | kept.presence.keys()
            if raw.presence.get(key, NOBODY) != kept.presence.get(key, NOBODY)
        },
    )
    if apply:
        apply_deltas(conn, tables, difference)
        _set_presence(conn, tables, difference.presence)
    return difference


def _one(counts: Mapping[ProductKey, int]) -> dict[ProductKey, list[int]]:
    return {key: [n] for key, n in counts.items()}


def _difference(
    raw: Mapping[Any, Sequence[int]], kept: Mapping[Any, Sequence[int]]
) -> dict[Any, list[int]]:
    """raw - kept, key by key, only where they differ."""
    out: dict[Any, list[int]] = {}
    for key in raw.keys() | kept.keys():
        have = kept.get(key)
        want = raw.get(key)
        width = len(want if want is not None else have or ())
        delta = [(want[i] if want else 0) - (have[i] if have else 0) for i in range(width)]
        if any(delta):
            out[key] = delta
    return out


def _label(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """`coalesce(nullif(x, ''), 'UNKNOWN')`: what `shown` does, in SQL."""
    return sa.func.coalesce(sa.func.nullif(column, ""), UNKNOWN)


def _raw_day(conn: sa.Connection, tables: Tables, day: date) -> Deltas:
    """What the rollups should hold for one day: the raw rows, counted."""
    events = tables.events
    start, end = day_bounds(day)
    in_day = sa.and_(events.c.event_timestamp >= start, events.c.event_timestamp < end)
    state, client = events.c.user_login_state, events.c.client_id
    counted = Deltas()
    rows = conn.execute(
        sa.select(
            _label(state),
            events.c.event_name,
            sa.func.count(),
            sa.func.count().filter(client.is_(None)),
        )
        .where(in_day)
        .group_by(_label(state), events.c.event_name)
    )
    counted.events = {(day, s, name): [n, n_null] for s, name, n, n_null in rows}
    product_row = sa.or_(
        events.c.context_product_id.isnot(None), events.c.context_product_name.isnot(None)
    )
    for dimension, column in (
        ("category", events.c.context_product_category),
        ("brand", events.c.context_product_brand),
    ):
        rows = conn.execute(
            sa.select(_label(state), _label(column), sa.func.count())
            .where(in_day, product_row)
            .group_by(_label(state), _label(column))
        )
        counted.products.update({(day, s, dimension, value): n for s, value, n in rows})
    rows = conn.execute(
        _client_flags(events).where(in_day, client.isnot(None)).group_by(events.c.client_id)
    )
    counted.presence = {(c, day): (li, an, ot) for c, li, an, ot in rows}
    return counted


def _rollup_day(conn: sa.Connection, tables: Tables, day: date) -> Deltas:
    """What the rollups hold for one day."""
    ev, pr, cl = tables.rollup_events, tables.rollup_products, tables.rollup_clients
    kept = Deltas()
    rows = conn.execute(
        sa.select(ev.c.login_state, ev.c.event_name, ev.c.events, ev.c.events_without_client).where(
            ev.c.day == day
        )
    )
    kept.events = {(day, s, name): [n, n_null] for s, name, n, n_null in rows}
    rows = conn.execute(
        sa.select(pr.c.login_state, pr.c.dimension, pr.c.value, pr.c.events).where(pr.c.day == day)
    )
    kept.products = {(day, s, dim, value): n for s, dim, value, n in rows}
    rows = conn.execute(
        sa.select(cl.c.client_id, *(cl.c[n] for n in _FLAG_COLUMNS)).where(cl.c.day == day)
    )
    kept.presence = {(c, day): (li, an, ot) for c, li, an, ot in rows}
    return kept


# --- retention: the days `maintain` dropped ------------------------------------------------------

_NEVER: Final = sa.cast("-infinity", sa.Date)


def retire_days(
    conn: sa.Connection, tables: Tables, before: date, *, apply: bool
) -> dict[str, int]:
    """Take the UTC days before `before` out of the rollups, once their rows are gone (`maintain`
    dropped their partitions): their rows of every rollup table, and the links of later
    client-days to them, which become "never seen before" (every earlier day is gone too).
    One statement (atomic on an autocommit connection), under the client tables' advisory lock
    held for the session, so no batch relinks a client meanwhile. Returns the rows deleted (with
    `apply=False`: that would be) per table."""
    counted = (
        tables.rollup_events,
        tables.rollup_products,
        tables.rollup_clients,
        tables.rollup_client_gaps,
    )
    if not apply:
        return {
            t.name: conn.execute(
                sa.select(sa.func.count()).select_from(t).where(t.c.day < before)
            ).scalar_one()
            for t in counted
        }
    gaps = tables.rollup_client_gaps
    moved = (
        sa.delete(gaps)
        .where(gaps.c.day >= before, gaps.c.previous_day < before, gaps.c.previous_day != _NEVER)
        .returning(gaps.c.login_filter, gaps.c.day, gaps.c.clients)
        .cte("moved")
    )
    relinked = sa.select(moved.c.login_filter, moved.c.day, _NEVER, sa.func.sum(moved.c.clients))
    upsert = insert(gaps).from_select(
        ["login_filter", "day", "previous_day", "clients"],
        relinked.group_by(moved.c.login_filter, moved.c.day),
    )
    relink = upsert.on_conflict_do_update(
        index_elements=["login_filter", "day", "previous_day"],
        set_={"clients": gaps.c.clients + upsert.excluded.clients},
    ).cte("relink")
    deleted = [
        sa.delete(t).where(t.c.day < before).returning(t.c.day).cte(f"retired_{i}")
        for i, t in enumerate(counted)
    ]
    counts = sa.select(
        *(sa.select(sa.func.count()).select_from(d).scalar_subquery() for d in deleted)
    ).add_cte(moved, relink)
    conn.execute(sa.select(sa.func.pg_advisory_lock(LOCK_CLASS, LOCK_CLIENTS)))
    try:
        row = conn.execute(counts).one()
    finally:
        conn.execute(sa.select(sa.func.pg_advisory_unlock(LOCK_CLASS, LOCK_CLIENTS)))
    return {t.name: int(n) for t, n in zip(counted, row, strict=True)}
