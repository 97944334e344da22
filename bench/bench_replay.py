"""Replay throughput: the full core path into chdb vs the floor (orjson decode only).

Both are measured in the same run on the same generated file, with Arrow's thread pools at
one thread and at two, and printed as ratios: each round measures the floor, then every path
(``--rounds``, default 3), and each path's ratio to its round's floor is printed as median and
spread [min–max], with the machine's load before and after, and the CPU time per flow (less
disturbed by other processes than the wall-clock rate). The path "host detectors off" is the
core without the per-host detectors and the behaviour model (issue 9's "new detectors"), so
the run also prints what they cost. Not a test.

    .venv/bin/python bench/bench_replay.py [--flows-per-day N] [--days N] [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import load, spread  # noqa: E402
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


@contextlib.contextmanager
def host_detectors_off() -> Iterator[None]:
    """The core without the per-host detectors (with ``behaviour_model="off"``, without the
    behaviour model too): no per-host flows buffered, no host windows, no candidates."""
    from pipeline.core import pipeline as core
    from pipeline.core.hosts import empty_features

    saved = core._host_flows, core.HostBehaviour.add, core.Pipeline._advance_hosts
    core._host_flows = lambda *a: None  # type: ignore[assignment,misc]
    core.HostBehaviour.add = lambda self, f: None  # type: ignore[method-assign]
    core.Pipeline._advance_hosts = (  # type: ignore[method-assign]
        lambda self, t, *, everything=False: empty_features())
    try:
        yield
    finally:
        core._host_flows, core.HostBehaviour.add, core.Pipeline._advance_hosts = (  # type: ignore[method-assign]
            saved)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows-per-day", type=int, default=30_000)
    ap.add_argument("--days", type=int, default=35)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segflow-bench-"))
    try:
        cfg = GenerateConfig(seed=3, days=args.days, audit_days=max(1, args.days - 5),
                             flows_per_day=args.flows_per_day)
        write_estate(cfg, work / "data")
        flows = work / "data" / "flows.jsonl.gz"
        plain = work / "data" / "flows.jsonl"
        plain.write_bytes(gzip.decompress(flows.read_bytes()))
        print(f"before: {load()}")
        paths = [(label, threads, store, True) for threads in (False, True)
                 for label, store in (("core only", False), ("core + chdb", True))]
        paths.insert(1, ("core only, host detectors off", False, False, False))
        rates: dict[str, list[float]] = {"floor": []}
        ratios: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        n = 0
        for r in range(args.rounds):
            n, t_floor = floor(flows)
            floor_rate = n / t_floor
            rates["floor"].append(floor_rate)
            for label, threads, with_store, detectors in paths:
                pa.set_cpu_count(2 if threads else 1)
                pa.set_io_thread_count(2 if threads else 1)
                inv = load_inventory(work / "data" / "inventory.jsonl")
                store = (open_store(f"chdb://{work}/store{r}", migrate=True) if with_store
                         else None)
                ctx: contextlib.AbstractContextManager[None] = (
                    contextlib.nullcontext() if detectors else host_detectors_off())
                settings = CoreSettings(audit_days=cfg.audit_days,
                                        behaviour_model="" if detectors else "off")
                with ctx:
                    t0, c0 = time.perf_counter(), time.process_time()
                    s = replay([plain], inv, settings, store=store)
                    dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if store is not None:
                    store.close()
                name = f"{label}, {'2 threads' if threads else '1 thread'}"
                rates.setdefault(name, []).append(s.records / dt)
                ratios.setdefault(name, []).append(s.records / dt / floor_rate)
                cpu.setdefault(name, []).append(dc / s.records * 1e6)
        print(f"after: {load()}")
        print(f"flows: {n:,} (uncompressed input; {plain.stat().st_size / n:.0f} B/record); "
              f"{args.rounds} rounds, each the floor then every path")
        print(f"{'path':<40} {'flows/s (median)':>17} {'vs floor: median [min–max]':>28} "
              f"{'CPU µs/flow':>12}")
        print(f"{'floor: orjson.loads/line':<40} {statistics.median(rates['floor']):>17,.0f} "
              f"{'1.00':>28}")
        for name, values in ratios.items():
            print(f"{name:<40} {statistics.median(rates[name]):>17,.0f} {spread(values):>28} "
                  f"{statistics.median(cpu[name]):>12.2f}")
        on, off = "core only, 1 thread", "core only, host detectors off, 1 thread"
        cost = [1 - a / b for a, b in zip(ratios[on], ratios[off], strict=True)]
        cpu_cost = 1 - statistics.median(cpu[off]) / statistics.median(cpu[on])
        print(f"host detectors' cost, core only: {spread(cost)} of the rate (per round), "
              f"{cpu_cost:.2f} of the CPU per flow (medians)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
