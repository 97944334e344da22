"""Edge-minute insert throughput into the store vs a floor (Parquet encode of the same rows).

A table of N edge-minute rows (default 1M, every column of the declared record, small string
vocabularies as the core produces) is inserted with ``Store.write_edge_minutes`` into a fresh
chdb store (and a ClickHouse server too when ``CLICKHOUSE_URL`` is set). The floor, measured
in the same run on the same table: ``pyarrow.parquet.write_table`` into memory (zstd, one
thread) — encoding the rows once, columnar and compressed, which any insert pays at least.
Printed as rows/s and the ratio insert time / floor time. Not a test (moved out of
``tests/test_storage.py`` so the default run asserts behaviour, not speed).

    .venv/bin/python bench/bench_store.py [--rows N]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.records import EDGE_MINUTE  # noqa: E402
from pipeline.storage import StoreURL, open_store, parse_store_url  # noqa: E402

MINUTE = 1770260400  # 2026-02-05T03:00:00Z


def edge_minutes(n: int) -> pa.Table:
    """``n`` rows of the declared edge-minute record: 60 minutes, ~100 apps per side."""
    idx = np.arange(n)
    cols = []
    for f in EDGE_MINUTE.schema:
        if pa.types.is_timestamp(f.type):
            arr = pa.array(MINUTE + (idx % 60) * 60, pa.int64()).cast(f.type)
        elif pa.types.is_string(f.type):
            k = {"src_app": 101, "dst_app": 97, "src_namespace": 7, "dst_namespace": 5}.get(
                f.name, 1)
            codes = idx // 60 if f.name == "dst_app" else idx
            arr = pa.array([f"{f.name}{i}" for i in range(k)]).take(pa.array(codes % k))
        elif f.name == "service_port":
            arr = pa.array(443 + idx % 3, f.type)
        elif f.name == "proto":
            arr = pa.array(np.full(n, 6), f.type)
        else:
            arr = pa.array((idx % 1500) + 1, pa.int64()).cast(f.type)
        cols.append(arr)
    return pa.Table.from_arrays(cols, schema=EDGE_MINUTE.schema)


def floor(table: pa.Table) -> float:
    threads = pa.cpu_count()
    pa.set_cpu_count(1)
    try:
        t0 = time.perf_counter()
        pq.write_table(table, io.BytesIO(), compression="zstd")
        return time.perf_counter() - t0
    finally:
        pa.set_cpu_count(threads)


def insert(url: StoreURL, table: pa.Table) -> float:
    with open_store(url, migrate=True) as store:
        t0 = time.perf_counter()
        store.write_edge_minutes(table)
        elapsed = time.perf_counter() - t0
        stored = store.query_rows("SELECT count() FROM edge_minute")[0][0]
        if stored != table.num_rows:
            raise SystemExit(f"{url.scheme}: {stored} rows stored, {table.num_rows} written")
        if url.scheme != "chdb":
            store.command(f"DROP DATABASE IF EXISTS `{url.database}`")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    table = edge_minutes(args.rows)
    base = floor(table)
    n = table.num_rows
    print(f"edge_minute rows {n:,}; floor (Parquet zstd encode, 1 thread) {base:.2f} s "
          f"= {n / base:,.0f} rows/s")
    targets = []
    with tempfile.TemporaryDirectory() as tmp:
        targets.append(("chdb", parse_store_url(f"chdb://{Path(tmp) / 'store'}")))
        server = os.environ.get("CLICKHOUSE_URL", "")
        if server:
            db = f"segflow_bench_{uuid.uuid4().hex[:10]}"
            targets.append(("server", dataclasses.replace(parse_store_url(server), database=db)))
        for name, url in targets:
            s = insert(url, table)
            print(f"  insert via {name:6s} {s:6.2f} s = {n / s:>11,.0f} rows/s   "
                  f"ratio to floor {s / base:.1f}x")


if __name__ == "__main__":
    main()
