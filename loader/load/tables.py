"""The tables one loader writes: schema.py's, or copies under TARGET_TABLE's name and schema.

Every statement of the load stage takes a `Tables`, so a renamed or moved events table (and its
sibling tables in the same schema) is decided once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.sql.schema import RETAIN_SCHEMA

from loader import schema
from loader.config import Settings


@dataclass(frozen=True)
class Tables:
    """The tables one loader writes: TARGET_TABLE may rename/move the events table (the
    others keep their names, in the same schema)."""

    events: sa.Table
    meta: sa.Table
    load_runs: sa.Table
    quarantine: sa.Table
    adoptions: sa.Table
    loaded_objects: sa.Table
    claims: sa.Table
    retention: sa.Table
    erasure_requests: sa.Table
    suppressions: sa.Table
    rollup_events: sa.Table
    rollup_products: sa.Table
    rollup_clients: sa.Table
    rollup_client_gaps: sa.Table


#: schema.py's own tables.
DEFAULT_TABLES: Final = Tables(
    schema.clickstream_events,
    schema.clickstream_ingest_meta,
    schema.clickstream_load_runs,
    schema.clickstream_quarantine,
    schema.clickstream_adoptions,
    schema.clickstream_loaded_objects,
    schema.clickstream_event_claims,
    schema.clickstream_retention,
    schema.clickstream_erasure_requests,
    schema.clickstream_suppressions,
    schema.clickstream_rollup_events,
    schema.clickstream_rollup_products,
    schema.clickstream_rollup_clients,
    schema.clickstream_rollup_client_gaps,
)


def tables_for(settings: Settings) -> Tables:
    """Schema.py's tables, or copies under TARGET_TABLE's name and schema."""
    if settings.target_table == schema.EVENTS_TABLE and settings.target_schema is None:
        return DEFAULT_TABLES
    md = sa.MetaData()
    target = settings.target_schema or RETAIN_SCHEMA
    events = schema.clickstream_events.to_metadata(md, schema=target, name=settings.target_table)
    return Tables(
        events,
        schema.clickstream_ingest_meta.to_metadata(md, schema=target),
        schema.clickstream_load_runs.to_metadata(md, schema=target),
        schema.clickstream_quarantine.to_metadata(md, schema=target),
        schema.clickstream_adoptions.to_metadata(md, schema=target),
        schema.clickstream_loaded_objects.to_metadata(md, schema=target),
        schema.clickstream_event_claims.to_metadata(md, schema=target),
        schema.clickstream_retention.to_metadata(md, schema=target),
        schema.clickstream_erasure_requests.to_metadata(md, schema=target),
        schema.clickstream_suppressions.to_metadata(md, schema=target),
        schema.clickstream_rollup_events.to_metadata(md, schema=target),
        schema.clickstream_rollup_products.to_metadata(md, schema=target),
        schema.clickstream_rollup_clients.to_metadata(md, schema=target),
        schema.clickstream_rollup_client_gaps.to_metadata(md, schema=target),
    )
