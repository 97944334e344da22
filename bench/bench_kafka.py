"""Throughput of the streaming worker against the floor, on the local Apache Kafka broker.

For each message shape (one flow per message, 100 flows per message) a raw topic is filled
once with a generated estate, then read

* by the floor: a bare aiokafka consumer, ``getmany`` + ``orjson.loads`` of every record;
* by a whole worker (in this process): ingest (parse, route, produce Arrow batches) →
  internal topic → stateful stage (dedup, core pipeline, events, snapshots) → chdb sink,
  timed from the worker's first record until every flow is stored.

Usage: ``python bench/bench_kafka.py [--flows 200000] [--bootstrap 127.0.0.1:39092]``
(starts scripts/kafka-local when no bootstrap is given and none is running). Each shape is
measured ``--repeat`` times, floor and worker alternating, and the medians are printed: on
a shared machine single runs vary by ±30 %.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import load_settings  # noqa: E402
from pipeline.generate import GenerateConfig, write_estate  # noqa: E402
from pipeline.stream.metrics import Metrics  # noqa: E402
from pipeline.stream.worker import Worker  # noqa: E402


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


def broker_cpu_seconds() -> float | None:
    """CPU seconds used so far by the scripts/kafka-local broker (None if not found)."""
    try:
        pid = int((ROOT / ".kafka" / "kafka.pid").read_text())
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


async def worker_rate(bootstrap: str, topic: str, inventory: Path, cfg: GenerateConfig,
                      expected: int, partitions: int) -> tuple[float, dict[str, float]]:
    """flows/s of a whole worker from its first record until every flow is stored."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    store = Path(tempfile.mkdtemp(prefix="segflow-bench-store-"))
    settings = load_settings(None, **{
        "kafka": {"bootstrap": bootstrap, "session_timeout": 6.0},
        "topics": {"raw": {topic: "canonical"}, "flows": f"{prefix}-flows",
                   "state": f"{prefix}-state", "inventory": f"{prefix}-inventory",
                   "dead_letter": f"{prefix}-dlq", "violations": f"{prefix}-violations",
                   "candidate_rules": f"{prefix}-rules", "flows_partitions": partitions},
        "audit": {"start": cfg.start, "days": cfg.audit_days},
        "store": f"chdb://{store}", "app_id": prefix, "metrics_port": 0,
        "inventory_file": str(inventory),
    })
    metrics = Metrics()
    worker = Worker(settings, metrics)
    applied = metrics.records_in.labels(settings.topics.flows)
    stored = metrics.rows_stored.labels("edge_minute")
    raw_in = metrics.records_in.labels(topic)
    await worker.start()
    try:
        t0 = None
        while True:
            await asyncio.sleep(0.02)
            if t0 is None and raw_in._value.get() > 0:
                t0, c0, b0 = time.perf_counter(), time.process_time(), broker_cpu_seconds()
            if applied._value.get() >= expected and worker.sink is not None:
                await worker.sink.flush()
                break
        t1 = time.perf_counter()
        assert t0 is not None and stored._value.get() > 0
        seconds = {s: metrics.batch_seconds.labels(s)._sum.get()
                   for s in ("ingest", "stateful", "sink")}
        seconds["cpu"] = (time.process_time() - c0) / (t1 - t0)
        b1 = broker_cpu_seconds()
        seconds["broker"] = (b1 - b0) / (t1 - t0) if b0 is not None and b1 is not None else 0.0
        return expected / (t1 - t0), seconds
    finally:
        await worker.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flows", type=int, default=200_000)
    p.add_argument("--bootstrap", default=None)
    p.add_argument("--partitions", type=int, default=4, help="internal flows partitions")
    p.add_argument("--shapes", default="1,100", help="records per message to measure")
    p.add_argument("--repeat", type=int, default=3, help="runs per shape (median reported)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bootstrap = bootstrap_or_start(args.bootstrap)
    work = Path(tempfile.mkdtemp(prefix="segflow-bench-"))
    lines, inventory, cfg = make_estate(args.flows, work)
    n = len(lines)
    print(f"{n:,} flows, broker {bootstrap}")
    print(f"{'records/msg':>11} {'floor flows/s':>14} {'worker flows/s':>15} {'ratio':>6}  "
          "worker CPU  broker CPU  busy s (ingest/stateful/sink)")
    for shape in (int(x) for x in args.shapes.split(",")):
        topic = fill_topic(bootstrap, lines, shape, partitions=1)
        floors, rates, runs = [], [], []
        for _ in range(args.repeat):  # alternate: the machine's load changes under us
            floors.append(asyncio.run(floor(bootstrap, topic, n)))
            w, busy = asyncio.run(worker_rate(bootstrap, topic, inventory, cfg, n,
                                              args.partitions))
            rates.append(w)
            runs.append(busy)
        f, w = statistics.median(floors), statistics.median(rates)
        busy = runs[rates.index(sorted(rates)[len(rates) // 2])]
        print(f"{shape:>11} {f:>14,.0f} {w:>15,.0f} {w / f:>6.2f}  {busy['cpu']:>9.0%}  "
              f"{busy['broker']:>9.0%}  "
              f"{busy['ingest']:.1f}/{busy['stateful']:.1f}/{busy['sink']:.1f}"
              f"   (runs: {', '.join(f'{r / q:.2f}' for r, q in zip(rates, floors, strict=True))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
