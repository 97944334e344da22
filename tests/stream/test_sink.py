"""The ClickHouse sink: batches, and a failing store means waiting, never dropping."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import SinkSettings
from pipeline.core.pipeline import EDGE_MINUTE_SCHEMA
from pipeline.errors import StorageError
from pipeline.storage import Store, open_store
from pipeline.stream.metrics import Metrics
from pipeline.stream.sink import StoreSink


class FlakyStore:
    """A real chdb store whose first ``failures`` edge-minute writes fail."""

    def __init__(self, store: Store, failures: int) -> None:
        self.store = store
        self.failures = failures

    def write_edge_minutes(self, table: pa.Table) -> int:
        if self.failures:
            self.failures -= 1
            raise StorageError("insert into edge_minute failed on chdb://x: Code: 241. MEMORY")
        return self.store.write_edge_minutes(table)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def rows(n: int, block: int) -> pa.Table:
    data: dict[str, Any] = {f.name: [0] * n for f in EDGE_MINUTE_SCHEMA
                            if pa.types.is_integer(f.type)}
    data.update({f.name: ["x"] * n for f in EDGE_MINUTE_SCHEMA if pa.types.is_string(f.type)})
    data["minute"] = list(range(0, 60 * n, 60))
    data["flows"] = [1] * n
    data["block"] = [block] * n
    return pa.Table.from_pydict({f.name: pa.array(data[f.name], f.type)
                                 for f in EDGE_MINUTE_SCHEMA}, schema=EDGE_MINUTE_SCHEMA)


def test_sink_batches_and_retries_until_stored(tmp_path: Path) -> None:
    store = open_store(f"chdb://{tmp_path / 'store'}", migrate=True)
    metrics = Metrics()
    flaky = FlakyStore(store, failures=2)
    sink = StoreSink(flaky, SinkSettings(max_rows=100, max_seconds=60), metrics,  # type: ignore[arg-type]
                     backoff=(0.01, 0.05))

    async def run() -> None:
        sink.add(rows(60, 1), [], [])
        assert sink.pending and not sink.due
        sink.add(rows(60, 2), [], [])
        assert sink.due  # 120 rows ≥ max_rows
        await sink.flush()
        assert not sink.pending
        await sink.close()

    try:
        asyncio.run(run())
        assert store.query_rows("SELECT sum(flows) FROM edge_minute FINAL") == [(120,)]
        assert metrics.storage_errors._value.get() == 2
        assert metrics.rows_stored.labels("edge_minute")._value.get() == 120
    finally:
        store.close()
