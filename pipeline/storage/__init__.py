"""Storage: segflow's tables on embedded chdb or a ClickHouse server, one code path.

with open_store("chdb://var/segflow", migrate=True) as store:
    store.write_edge_minutes(table)
    store.query_rows("SELECT sum(flows) FROM edge_minute FINAL")
"""

from __future__ import annotations

from pipeline.storage.store import (
    NO_RETRY,
    RetryHook,
    RetryPolicy,
    Store,
    call_with_retry,
    is_transient,
    open_store,
)
from pipeline.storage.tables import EDGE_MINUTE_COLUMNS, EDGE_MINUTE_SCHEMA
from pipeline.storage.url import DEFAULT_DATABASE, StoreURL, parse_store_url

__all__ = [
    "DEFAULT_DATABASE",
    "EDGE_MINUTE_COLUMNS",
    "EDGE_MINUTE_SCHEMA",
    "NO_RETRY",
    "RetryHook",
    "RetryPolicy",
    "Store",
    "StoreURL",
    "call_with_retry",
    "is_transient",
    "open_store",
    "parse_store_url",
]
