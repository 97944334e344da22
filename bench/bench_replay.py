"""Replay throughput: the full core path into chdb vs the floor (orjson decode only).

Both are measured in the same run on the same generated file, on one core for the Arrow
JSON reader (``use_threads`` off) and with threads on, and printed as ratios. Not a test.

    .venv/bin/python bench/bench_replay.py [--flows-per-day N] [--days N]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.commands.replay import replay  # noqa: E402
from pipeline.core.inventory import load_inventory  # noqa: E402
from pipeline.core.settings import CoreSettings  # noqa: E402
from pipeline.generate import GenerateConfig, write_estate  # noqa: E402
from pipeline.storage import open_store  # noqa: E402


def floor(path: Path) -> tuple[int, float]:
    """orjson.loads of every line of the same (decompressed) bytes."""
    data = gzip.decompress(path.read_bytes())
    t0 = time.perf_counter()
    n = 0
    for line in data.splitlines():
        if line:
            orjson.loads(line)
            n += 1
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows-per-day", type=int, default=30_000)
    ap.add_argument("--days", type=int, default=35)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segflow-bench-"))
    try:
        cfg = GenerateConfig(seed=3, days=args.days, audit_days=max(1, args.days - 5),
                             flows_per_day=args.flows_per_day)
        write_estate(cfg, work / "data")
        flows = work / "data" / "flows.jsonl.gz"
        plain = work / "data" / "flows.jsonl"
        plain.write_bytes(gzip.decompress(flows.read_bytes()))
        n, t_floor = floor(flows)
        rows = []
        for threads in (False, True):
            pa.set_cpu_count(1 if not threads else 2)
            pa.set_io_thread_count(1 if not threads else 2)
            for label, store_url in (("core only", None),
                                     ("core + chdb", f"chdb://{work}/store")):  # one path
                inv = load_inventory(work / "data" / "inventory.jsonl")
                store = open_store(store_url, migrate=True) if store_url else None
                t0 = time.perf_counter()
                s = replay([plain], inv, CoreSettings(audit_days=cfg.audit_days), store=store)
                dt = time.perf_counter() - t0
                if store is not None:
                    store.close()
                rows.append((f"{label}, {'2 threads' if threads else '1 thread'}", s.records, dt))
        print(f"flows: {n:,} (uncompressed input; {plain.stat().st_size / n:.0f} B/record)")
        print(f"{'path':<28} {'flows/s':>12} {'vs floor':>9}")
        floor_rate = n / t_floor
        print(f"{'floor: orjson.loads/line':<28} {floor_rate:>12,.0f} {1.0:>9.2f}")
        for label, recs, dt in rows:
            rate = recs / dt
            print(f"{label:<28} {rate:>12,.0f} {rate / floor_rate:>9.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
