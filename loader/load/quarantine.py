"""The quarantine (clickstream_quarantine): what was not loaded, why, and whether it loads now.

One row per (key, position). A new failure of the same record refreshes its row (attempts + 1,
`resolved_at` cleared); a reprocess that loads the key marks its open rows resolved.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from loader.common import Rejection
from loader.load.tables import Tables


def rejection_row(
    rejection: Rejection, bucket: str, hour: datetime, now: datetime
) -> dict[str, Any]:
    return {
        "s3_bucket": bucket,
        "s3_key": rejection.key,
        "position": rejection.position,
        "hour": hour,
        "event_id": rejection.event_id,
        "reason_code": rejection.reason,
        "sqlstate": rejection.sqlstate,
        "error_text": rejection.detail[:1000],
        "first_seen_at": now,
        "last_seen_at": now,
        "attempts": 1,
        "resolved_at": None,
    }


def quarantine(conn: sa.Connection, tables: Tables, rows: Sequence[dict[str, Any]]) -> None:
    """Record (or refresh) quarantine entries; a later success clears `resolved_at`'s null."""
    if not rows:
        return
    stmt = insert(tables.quarantine)
    stmt = stmt.on_conflict_do_update(
        index_elements=["s3_key", "position"],
        set_={
            "last_seen_at": stmt.excluded.last_seen_at,
            "attempts": tables.quarantine.c.attempts + 1,
            "reason_code": stmt.excluded.reason_code,
            "sqlstate": stmt.excluded.sqlstate,
            "error_text": stmt.excluded.error_text,
            "resolved_at": None,
        },
    )
    # One row per (key, position) per statement: ON CONFLICT DO UPDATE may not touch a row twice.
    unique = {(r["s3_key"], r["position"]): r for r in rows}
    conn.execute(stmt, list(unique.values()))


def resolve_quarantined(
    conn: sa.Connection, tables: Tables, keys: Sequence[str], now: datetime
) -> int:
    """Mark open quarantine entries of keys that now loaded as resolved."""
    if not keys:
        return 0
    q = tables.quarantine
    result = conn.execute(
        sa.update(q)
        .where(q.c.s3_key.in_(list(keys)), q.c.resolved_at.is_(None))
        .values(resolved_at=now)
    )
    return int(result.rowcount or 0)


def open_quarantine(
    conn: sa.Connection, tables: Tables, hour: datetime | None = None, key: str | None = None
) -> Sequence[sa.Row[Any]]:
    q = tables.quarantine
    stmt = (
        sa.select(q).where(q.c.resolved_at.is_(None)).order_by(q.c.hour, q.c.s3_key, q.c.position)
    )
    if hour is not None:
        stmt = stmt.where(q.c.hour == hour)
    if key is not None:
        stmt = stmt.where(q.c.s3_key == key)
    return conn.execute(stmt).all()
