"""Throughput of the streaming worker against the floor, on the local Apache Kafka broker.

For each message shape (one flow per message, 100 flows per message) a raw topic is filled
once with a generated estate, then read

* by the floor: a bare aiokafka consumer, ``getmany`` + ``orjson.loads`` of every record;
* by a whole worker: ingest (parse, route, produce Arrow batches) → internal topic →
  stateful stage (dedup, core pipeline, events, snapshots) → chdb sink, timed from the
  worker's first raw record until every flow is stored — once as one process
  (``role = "all"``: in-process routing, and once more through the flows topic,
  ``stream.in_process = false``) and once as two (``segflow worker --role ingest`` in a
  child process, the stateful stage in this one) — and each stage alone (ingest until every
  flow is on the internal topic; then the stateful stage over that topic), which is what
  either process does when it has a core to itself.

``--scaling``: the stateful stage over 4 internal partitions already filled, as 1 and as 2
``--role stateful`` processes (one chdb store each), rate between 10 % and 90 % of the flows,
alternating; with the CPU per flow this gives the cores needed for 1M flows/s.

Usage: ``python bench/bench_kafka.py [--flows 200000] [--bootstrap 127.0.0.1:39092]``
(starts scripts/kafka-local when no bootstrap is given and none is running). Each shape is
measured ``--repeat`` times, floor and worker alternating; printed are the median ratio to
the floor of the same round, the spread (lowest–highest ratio) and the machine's load
average: on a shared machine single runs vary by ±30 %.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import load_settings  # noqa: E402
from pipeline.generate import GenerateConfig, write_estate  # noqa: E402
from pipeline.stream.metrics import Metrics  # noqa: E402
from pipeline.stream.worker import Worker, tune_gc  # noqa: E402


def bootstrap_or_start(given: str | None) -> str:
    if given:
        return given
    out = subprocess.run([str(ROOT / "scripts" / "kafka-local"), "start"], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def make_estate(flows: int, workdir: Path) -> tuple[list[bytes], Path, GenerateConfig]:
    days = 4
    cfg = GenerateConfig(seed=21, apps=12, days=days, audit_days=3,
                         flows_per_day=int(flows / days / 1.2))
    s = write_estate(cfg, workdir)
    lines = gzip.decompress(s.flows_path.read_bytes()).splitlines()[:flows]
    return lines, s.inventory_path, cfg


def fill_topic(bootstrap: str, lines: list[bytes], per_message: int, partitions: int) -> str:
    topic = f"bench-raw-{per_message}-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20,
                             max_request_size=16 << 20)
    for i in range(0, len(lines), per_message):
        part = lines[i:i + per_message]
        producer.send(topic, value=part[0] if len(part) == 1 else b"\n".join(part))
    producer.flush()
    producer.close()
    return topic


def _broker_pid() -> int | None:
    try:
        return int((ROOT / ".kafka" / "kafka.pid").read_text())
    except (OSError, ValueError):
        pass
    found = []  # a broker started otherwise: the one Kafka server process on this machine
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"kafka.Kafka" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found[0] if len(found) == 1 else None


def broker_cpu_seconds() -> float | None:
    """CPU seconds used so far by the broker (None if not found)."""
    try:
        pid = _broker_pid()
        if pid is None:
            return None
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def floor(bootstrap: str, topic: str, expected: int) -> float:
    """flows/s of getmany + orjson.loads over the whole topic."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
    await c.start()
    try:
        parts = sorted(c.partitions_for_topic(topic) or [])
        if not parts:
            await c._client.force_metadata_update()
            parts = sorted(c.partitions_for_topic(topic) or [])
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        n = 0
        t0 = time.perf_counter()
        while n < expected:
            batch = await c.getmany(timeout_ms=500, max_records=20_000)
            for recs in batch.values():
                for r in recs:
                    v = r.value
                    if b"\n" in v:
                        for line in v.split(b"\n"):
                            orjson.loads(line)
                            n += 1
                    else:
                        orjson.loads(v)
                        n += 1
        return n / (time.perf_counter() - t0)
    finally:
        await c.stop()


def bench_config(bootstrap: str, topic: str, inventory: Path, cfg: GenerateConfig,
                 partitions: int) -> tuple[str, Path, dict[str, Any]]:
    """Fresh topic names, a fresh chdb store and the worker settings of one measurement."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    store = Path(tempfile.mkdtemp(prefix="segflow-bench-store-")) / "store"
    config: dict[str, Any] = {
        "kafka": {"bootstrap": bootstrap, "session_timeout": 6.0},
        "topics": {"raw": {topic: "canonical"}, "flows": f"{prefix}-flows",
                   "state": f"{prefix}-state", "inventory": f"{prefix}-inventory",
                   "control": f"{prefix}-control",
                   "dead_letter": f"{prefix}-dlq", "violations": f"{prefix}-violations",
                   "candidate_rules": f"{prefix}-rules", "flows_partitions": partitions},
        "core": {"audit_start": cfg.start, "audit_days": cfg.audit_days},
        "store": f"chdb://{store}", "app_id": prefix, "metrics_port": 0,
        "inventory_file": str(inventory),
    }
    return prefix, store, config


async def stage_alone(config: dict[str, Any], role: str, expected: int
                      ) -> tuple[float, float, float]:
    """(flows/s, CPU µs per flow of the stage, of the broker) of one stage on its own: ingest
    until every flow is on the internal topic, or the stateful stage over an internal topic
    ingest already filled."""
    metrics = Metrics()
    worker = Worker(load_settings(None, **{**config, "role": role}), metrics)
    flows = config["topics"]["flows"]
    if role == "ingest":
        first = metrics.records_in.labels("ingest", next(iter(config["topics"]["raw"])))
        last = metrics.records_out.labels(flows)
    else:
        first = last = metrics.records_in.labels("stateful", flows)
    await worker.start()
    tune_gc()
    try:
        while first._value.get() == 0:
            await asyncio.sleep(0.01)
        t0, c0, b0 = time.perf_counter(), time.process_time(), broker_cpu_seconds()
        while last._value.get() < expected:
            await asyncio.sleep(0.01)
        if worker.writer is not None:
            await worker.writer.flush_async()
        b1 = broker_cpu_seconds()
        broker = (b1 - b0) if b0 is not None and b1 is not None else 0.0
        return (expected / (time.perf_counter() - t0),
                (time.process_time() - c0) / expected * 1e6, broker / expected * 1e6)
    finally:
        await worker.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def counter_value(port: int, name: str, label: str) -> float:
    """A counter from a worker's /metrics page (0 when absent or unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def worker_rate(bootstrap: str, topic: str, inventory: Path, cfg: GenerateConfig,
                      expected: int, partitions: int, *, split: bool, in_process: bool = True
                      ) -> tuple[float, dict[str, float]]:
    """flows/s of a whole worker from its first record until every flow is stored; with
    ``split`` the ingest stage runs as its own process (``segflow worker --role ingest``)."""
    _, store, config = bench_config(bootstrap, topic, inventory, cfg, partitions)
    config["stream"] = {"in_process": in_process}
    child: subprocess.Popen[bytes] | None = None
    port = 0
    if split:
        port = free_port()
        cfg_path = store.parent / "ingest.json"
        cfg_path.write_text(json.dumps({**config, "role": "ingest", "metrics_port": port,
                                        "store": "chdb://unused"}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEGFLOW_")}
        child = subprocess.Popen([str(Path(sys.executable).parent / "segflow"), "worker",
                                  "--config", str(cfg_path)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = load_settings(None, **{**config, "role": "stateful" if split else "all"})
    metrics = Metrics()
    worker = Worker(settings, metrics)
    applied = metrics.records_in.labels("stateful", settings.topics.flows)
    stored = metrics.rows_stored.labels("edge_minute")
    raw_in = metrics.records_in.labels("ingest", topic)
    await worker.start()
    tune_gc()  # as `segflow worker` does once started
    try:
        t0 = None
        while True:
            await asyncio.sleep(0.02)
            if t0 is None:
                started = (await asyncio.to_thread(counter_value, port,
                                                   "segflow_records_in_total", topic)
                           if child else raw_in._value.get())
                if started > 0:
                    t0, c0, b0 = time.perf_counter(), time.process_time(), broker_cpu_seconds()
                    k0 = process_cpu_seconds(child.pid) if child else 0.0
            if applied._value.get() >= expected and worker.writer is not None:
                await worker.writer.flush_async()
                break
        t1 = time.perf_counter()
        assert t0 is not None and stored._value.get() > 0
        seconds = {s: metrics.batch_seconds.labels(s)._sum.get()
                   for s in ("ingest", "stateful", "sink")}
        k1 = process_cpu_seconds(child.pid) if child else 0.0
        seconds["cpu"] = (time.process_time() - c0 + k1 - k0) / (t1 - t0)
        seconds["cpu_ingest"] = (k1 - k0) / (t1 - t0)
        b1 = broker_cpu_seconds()
        seconds["broker"] = (b1 - b0) / (t1 - t0) if b0 is not None and b1 is not None else 0.0
        return expected / (t1 - t0), seconds
    finally:
        await worker.stop()
        if child is not None:
            child.terminate()
            child.wait(timeout=60)


async def stateful_processes(config: dict[str, Any], expected: int, count: int,
                             workdir: Path) -> tuple[float, float]:
    """(flows/s, CPU µs per flow) of ``count`` ``--role stateful`` processes sharing the
    internal partitions (filled already), between 10 % and 90 % of the flows."""
    run = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGFLOW_")}
    procs, ports = [], []
    for i in range(count):
        port = free_port()
        path = workdir / f"stateful-{run}-{i}.json"
        path.write_text(json.dumps({
            **config, "role": "stateful", "metrics_port": port, "app_id": f"scale-{run}",
            "store": f"chdb://{workdir / f'store-{run}-{i}'}",
            "topics": {**config["topics"], "state": f"scale-{run}-state",
                       "control": f"scale-{run}-control"}}))
        ports.append(port)
        procs.append(subprocess.Popen([str(Path(sys.executable).parent / "segflow"), "worker",
                                       "--config", str(path)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    flows = config["topics"]["flows"]

    def applied() -> float:
        return sum(counter_value(p, "segflow_records_in_total", f'topic="{flows}"')
                   for p in ports)

    try:
        marks: dict[float, tuple[float, float]] = {}
        deadline = time.monotonic() + 600
        while len(marks) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            n = await asyncio.to_thread(applied)
            for frac in (0.1, 0.9):
                if frac not in marks and n >= frac * expected:
                    marks[frac] = (time.perf_counter(),
                                   sum(process_cpu_seconds(p.pid) for p in procs))
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a stateful process exited")
        (t0, c0), (t1, c1) = marks[0.1], marks[0.9]
        flows_between = 0.8 * expected
        return flows_between / (t1 - t0), (c1 - c0) / flows_between * 1e6
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


def scaling(bootstrap: str, lines: list[bytes], inventory: Path, cfg: GenerateConfig,
            repeat: int) -> None:
    """1 vs 2 stateful processes on 4 internal partitions, and cores for 1M flows/s."""
    n = len(lines)
    topic = fill_topic(bootstrap, lines, 100, partitions=1)
    _, _, config = bench_config(bootstrap, topic, inventory, cfg, 4)
    ingest_rate, ingest_us, broker_us = asyncio.run(stage_alone(config, "ingest", n))
    work = Path(tempfile.mkdtemp(prefix="segflow-bench-scale-"))
    got: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    for _ in range(repeat):
        for count in (1, 2):
            got[count].append(asyncio.run(stateful_processes(config, n, count, work)))
    print(f"scaling, 100 records/msg, 4 internal partitions, load {os.getloadavg()[0]:.1f}:")
    med = {}
    for count, runs in got.items():
        rates = [r for r, _ in runs]
        med[count] = statistics.median(rates)
        us = statistics.median(u for _, u in runs)
        print(f"  {count} stateful process(es): {med[count]:>10,.0f} flows/s "
              f"(runs {', '.join(f'{r:,.0f}' for r in rates)}), {us:.2f} µs CPU/flow")
    print(f"  2 vs 1: {med[2] / med[1]:.2f}x (this machine: {os.cpu_count()} cores, shared)")
    stateful_us = statistics.median(u for _, u in got[1])
    cores = ingest_us + stateful_us  # µs of CPU per flow × 1M flows/s = cores
    print(f"  ingest alone {ingest_rate:,.0f} flows/s, {ingest_us:.2f} µs CPU/flow (broker "
          f"{broker_us:.2f} µs/flow); 1M flows/s needs ≈ {cores:.1f} cores for ingest + "
          f"stateful ({ingest_us:.2f} + {stateful_us:.2f} µs/flow), plus the brokers")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flows", type=int, default=200_000)
    p.add_argument("--bootstrap", default=None)
    p.add_argument("--partitions", type=int, default=4, help="internal flows partitions")
    p.add_argument("--shapes", default="1,100", help="records per message to measure")
    p.add_argument("--repeat", type=int, default=3, help="runs per shape (median reported)")
    p.add_argument("--scaling", action="store_true",
                   help="only: 1 vs 2 stateful processes, cores for 1M flows/s")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bootstrap = bootstrap_or_start(args.bootstrap)
    work = Path(tempfile.mkdtemp(prefix="segflow-bench-"))
    lines, inventory, cfg = make_estate(args.flows, work)
    n = len(lines)
    print(f"{n:,} flows, broker {bootstrap}, load {os.getloadavg()[0]:.1f}")
    if args.scaling:
        scaling(bootstrap, lines, inventory, cfg, args.repeat)
        return 0
    print(f"{'records/msg':>11} {'worker':>8} {'floor flows/s':>14} {'worker flows/s':>15} "
          f"{'ratio':>6}  worker CPU  broker CPU  ingest CPU")
    for shape in (int(x) for x in args.shapes.split(",")):
        topic = fill_topic(bootstrap, lines, shape, partitions=1)
        floors: list[float] = []
        kinds = {"1 proc": (False, True), "1 proc, via topic": (False, False),
                 "2 procs": (True, True)}
        rates: dict[str, list[float]] = {k: [] for k in kinds}
        alone: dict[str, list[tuple[float, float, float]]] = {"ingest": [], "stateful": []}
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        loads: list[float] = []
        for _ in range(args.repeat):  # alternate: the machine's load changes under us
            loads.append(os.getloadavg()[0])
            floors.append(asyncio.run(floor(bootstrap, topic, n)))
            for kind, (split, in_process) in kinds.items():
                w, busy = asyncio.run(worker_rate(bootstrap, topic, inventory, cfg, n,
                                                  args.partitions, split=split,
                                                  in_process=in_process))
                rates[kind].append(w)
                runs[kind].append(busy)
            _, _, config = bench_config(bootstrap, topic, inventory, cfg, args.partitions)
            for role in ("ingest", "stateful"):
                alone[role].append(asyncio.run(stage_alone(config, role, n)))
        f = statistics.median(floors)
        print(f"{'':>11} load average {min(loads):.1f}–{max(loads):.1f} "
              f"(floor runs {', '.join(f'{x:,.0f}' for x in floors)})")
        for kind in kinds:
            r = rates[kind]
            ratios = [x / q for x, q in zip(r, floors, strict=True)]
            w = statistics.median(r)
            busy = runs[kind][r.index(sorted(r)[len(r) // 2])]
            print(f"{shape:>11} {kind:>8} {f:>14,.0f} {w:>15,.0f} "
                  f"{statistics.median(ratios):>6.2f}  "
                  f"{busy['cpu']:>9.0%}  {busy['broker']:>9.0%}  "
                  f"{busy['cpu_ingest']:>10.0%}   (ratio median of runs; spread "
                  f"{min(ratios):.2f}–{max(ratios):.2f}: {', '.join(f'{x:.2f}' for x in ratios)})")
        cpu_us = 0.0
        for role, got in alone.items():
            r = [g[0] for g in got]
            w = statistics.median(r)
            us = statistics.median(g[1] for g in got)
            broker_us = statistics.median(g[2] for g in got)
            cpu_us += us + broker_us
            print(f"{shape:>11} {role + ' alone':>8} {f:>14,.0f} {w:>15,.0f} {w / f:>6.2f}  "
                  f"{us:>6.2f} µs CPU/flow, broker {broker_us:.2f} µs  (runs: "
                  f"{', '.join(f'{x / q:.2f}' for x, q in zip(r, floors, strict=True))})")
        print(f"{'':>11} at 0.8 × floor both stages and the broker need "
              f"{cpu_us * 0.8 * f / 1e6:.2f} cores (this machine: {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
