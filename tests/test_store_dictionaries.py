"""Edge minutes go to the store with dictionary strings (ClickHouse LowCardinality) and come
back as they were."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipeline.core.records import EDGE_MINUTE
from pipeline.storage import open_store
from pipeline.storage.tables import as_dictionaries, normalize_edge_minutes

T = 1_767_571_200


def _rows(n: int) -> pa.Table:
    cols = {}
    for f in EDGE_MINUTE.schema:
        if pa.types.is_timestamp(f.type):
            cols[f.name] = pa.array([T + 60 * (i % 7) for i in range(n)], pa.int64()).cast(f.type)
        elif pa.types.is_string(f.type):
            cols[f.name] = pa.array([f"{f.name}-{i % 3}" for i in range(n)], pa.string())
        else:
            cols[f.name] = pa.array([i + 1 for i in range(n)], pa.int64()).cast(f.type)
    return EDGE_MINUTE.table_of(cols)


def test_as_dictionaries_keeps_every_value() -> None:
    t = normalize_edge_minutes(pa.concat_tables([_rows(5), _rows(4)]))  # two chunks
    d = as_dictionaries(t)
    assert d.to_pylist() == t.to_pylist()
    for name in d.column_names:
        col = d.column(name)
        assert pa.types.is_dictionary(col.type) == (t.column(name).type == pa.string())
        assert col.num_chunks == 1 or not pa.types.is_dictionary(col.type)


def test_stored_rows_equal_the_written_ones(tmp_path: Path) -> None:
    rows = _rows(50)
    store = open_store(f"chdb://{tmp_path}/s", migrate=True)
    try:
        assert store.write_edge_minutes(rows) == 50
        got = store.query_rows(
            "SELECT src_app, dst_namespace, phase, source_id, flows FROM edge_minute FINAL "
            "ORDER BY flows")
    finally:
        store.close()
    want = [(r["src_app"], r["dst_namespace"], r["phase"], r["source_id"], r["flows"])
            for r in rows.to_pylist()]
    assert [tuple(r) for r in got] == want
