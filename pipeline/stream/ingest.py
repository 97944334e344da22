"""Ingest stage: raw topics → parsed, client-routed Arrow batches on the internal ``flows`` topic.

Collectors usually write one flow per Kafka message, and a per-message stream processor
caps at ~18k messages/s per core, so raw topics are read by a plain aiokafka consumer
(group ``<app_id>-ingest``) in ``getmany`` batches: each partition's message values are
parsed as one block (:mod:`pipeline.stream.rawblock`), rejects go to the dead-letter topic,
good rows keep their raw (topic, partition, offset), flows are routed by client workload
(:mod:`pipeline.stream.routing`) and each target partition gets one Arrow message per batch
(:mod:`pipeline.stream.flowbatch`). Raw offsets are committed only after every produced
message is acknowledged; a crash in between re-sends rows the stateful stage then drops.

The stage also reports event-time progress (newest flow start per raw partition, idle raw
partitions) in every message, and to partitions that got no flows for a while, so that every
internal partition can close its violation windows (a partition's earlier messages of one
batch report, for raw partitions with rows still to come, their progress before the batch).
Every message carries the audit start:
``core.audit_start`` when configured, else the one agreed on the control topic
(:mod:`pipeline.stream.control`) before the stage sends its first flows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from pipeline.config import KafkaSettings, StreamSettings, TopicSettings
from pipeline.core.columns import empty_flows
from pipeline.core.inventory import Inventory
from pipeline.sources import get_parser
from pipeline.sources.base import BlockParser
from pipeline.stream.control import AuditStartAgreement
from pipeline.stream.flowbatch import Identity, encode, source_name
from pipeline.stream.metrics import Metrics
from pipeline.stream.rawblock import RawReject, parse_messages
from pipeline.stream.routing import Router

log = logging.getLogger(__name__)

IDLE_AFTER = 5.0  # seconds a caught-up raw partition must stay quiet to count as idle
DEAD_LETTER_MAX = 1 << 20  # raw bytes kept in a dead-letter message
IN_FLIGHT = 2  # batches sent but not yet acknowledged while the next one is prepared


@dataclass(slots=True)
class Prepared:
    """One batch, ready to send: internal messages, dead letters, commit offsets."""

    messages: list[tuple[int, bytes]] = field(default_factory=list)  # (partition, value)
    dead: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = field(default_factory=list)
    commit: dict[TopicPartition, int] = field(default_factory=dict)
    records: int = 0
    flows: int = 0


@dataclass(slots=True)
class Parsed:
    """One batch parsed, not yet routed: good rows with their raw source and offset."""

    out: Prepared  # dead letters, commit offsets, counts
    tables: list[pa.Table] = field(default_factory=list)
    index: list[np.ndarray] = field(default_factory=list)  # per table: index into sources
    offsets: list[np.ndarray] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    first: float | None = None  # earliest flow start
    before: dict[str, float] = field(default_factory=dict)  # per source: progress before it


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, stage: IngestStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.stage.lock:  # let the batches in flight finish and commit
            await self.stage.drain()
            self.stage.forget(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        now = time.monotonic()
        for tp in assigned:
            self.stage.last_data.setdefault(tp, now)


class IngestStage:
    """Batching ingest from the raw topics into the internal flows topic."""

    def __init__(self, topics: TopicSettings, stream: StreamSettings, *, kafka: KafkaSettings,
                 group: str, audit_start: float | None, client: dict[str, Any],
                 producer: AIOKafkaProducer, inventory: Inventory,
                 inventory_lock: threading.Lock, metrics: Metrics,
                 agreement: AuditStartAgreement | None = None) -> None:
        self.topics = topics
        self.stream = stream
        self.kafka = kafka
        self.group = group  # consumer group of the raw topics
        self.client = client
        self.producer = producer
        self.metrics = metrics
        self.router = Router(inventory, topics.flows_partitions)
        self.audit_start = audit_start  # stamped into every message once known
        self.agreement = agreement  # agrees it when core.audit_start is unset
        self.parsers: dict[TopicPartition, BlockParser] = {}
        self.watermarks: dict[str, float] = {}  # raw source → newest flow start sent
        self.last_data: dict[TopicPartition, float] = {}
        self.next_offset: dict[TopicPartition, int] = {}
        self._sent: dict[int, tuple[float, frozenset[str]]] = {}  # partition → progress sent
        self._inflight: deque[asyncio.Future[None]] = deque()
        self._inventory_lock = inventory_lock
        self._cpu = ThreadPoolExecutor(1, thread_name_prefix="segflow-ingest")
        self._idle: list[str] = []  # raw sources caught up and quiet (refreshed on the loop)
        self._parts: dict[str, int] = {}  # raw topic → partition count
        self.lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        k = self.kafka
        self.consumer = AIOKafkaConsumer(
            **self.client, group_id=self.group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(k.session_timeout * 1000),
            heartbeat_interval_ms=max(100, int(k.session_timeout * 1000) // 5),
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
            metadata_max_age_ms=30_000)
        self.consumer.subscribe(list(self.topics.raw), listener=_Listener(self))
        await self.consumer.start()

    async def stop(self) -> None:
        async with self.lock:
            await self.drain()
            if self.consumer is not None:
                await self.consumer.stop()
                self.consumer = None
        self._cpu.shutdown(wait=True)

    def forget(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.parsers.pop(tp, None)
            self.watermarks.pop(source_name(tp.topic, tp.partition), None)
            self.last_data.pop(tp, None)
            self.next_offset.pop(tp, None)

    async def run(self) -> None:
        """Consume until cancelled."""
        assert self.consumer is not None
        while True:
            batch = await self.consumer.getmany(timeout_ms=self.stream.poll_timeout_ms,
                                                max_records=self.stream.max_messages)
            async with self.lock:
                if batch:
                    await self.handle(batch)
                else:
                    await self.drain()
                    self._refresh()
                    await asyncio.gather(*await self._send(self.progress_only()))

    async def handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Parse, route and send one ``getmany`` batch; its raw offsets are committed once
        every message it produced is acknowledged (in batch order, up to ``IN_FLIGHT``
        batches awaiting acknowledgement while the next ones are prepared)."""
        t0 = time.perf_counter()
        self._refresh()
        loop = asyncio.get_running_loop()
        parsed = await loop.run_in_executor(self._cpu, self.parse, batch)
        if self.audit_start is None and parsed.first is not None and self.agreement is not None:
            self.audit_start = await self.agreement.agree(parsed.first)
        prepared = await loop.run_in_executor(self._cpu, self._route_locked, parsed)
        futures = await self._send(prepared)
        self._inflight.append(asyncio.ensure_future(
            self._commit_when_acked(futures, prepared.commit)))
        while len(self._inflight) > IN_FLIGHT or (self._inflight and self._inflight[0].done()):
            await self._inflight.popleft()
        self.metrics.batch_seconds.labels("ingest").observe(time.perf_counter() - t0)
        self.metrics.batch_records.labels("ingest").observe(prepared.records)

    async def drain(self) -> None:
        """Wait until every batch sent so far is acknowledged and committed."""
        while self._inflight:
            await self._inflight.popleft()

    async def _commit_when_acked(self, futures: list[asyncio.Future[Any]],
                                 offsets: dict[TopicPartition, int]) -> None:
        if futures:
            await asyncio.gather(*futures)
        if offsets and self.consumer is not None:
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                # a rebalance took the partitions: the next owner re-sends, rows dedupe
                log.warning("ingest commit failed (%s); the batch will be re-read", exc)

    async def _send(self, prepared: Prepared) -> list[asyncio.Future[Any]]:
        futures = []
        for partition, value in prepared.messages:
            futures.append(await self.producer.send(self.topics.flows, value=value,
                                                    partition=partition))
        for key, value, headers in prepared.dead:
            futures.append(await self.producer.send(self.topics.dead_letter, value=value,
                                                    key=key, headers=headers))
        if prepared.messages:
            self.metrics.records_out.labels(self.topics.flows).inc(prepared.flows)
        if prepared.dead:
            self.metrics.records_out.labels(self.topics.dead_letter).inc(len(prepared.dead))
        return futures

    # -- the CPU part (on the stage's own thread) ----------------------------------------
    def _route_locked(self, parsed: Parsed) -> Prepared:
        with self._inventory_lock:
            return self.route(parsed)

    def prepare(self, batch: dict[TopicPartition, list[Any]]) -> Prepared:
        """Parse and route one batch (stamped with the audit start known so far)."""
        return self.route(self.parse(batch))

    def parse(self, batch: dict[TopicPartition, list[Any]]) -> Parsed:
        """Parse every raw partition's records as one block; rejects become dead letters."""
        out = Prepared()
        parsed = Parsed(out)
        now = time.monotonic()
        for tp, records in batch.items():
            if not records:
                continue
            parser = self.parsers.get(tp)
            if parser is None:
                parser = self.parsers[tp] = get_parser(self.topics.raw[tp.topic])
            block = parse_messages(parser, [r.value for r in records],
                                   [r.offset for r in records],
                                   max_record_bytes=self.stream.max_record_bytes)
            out.records += block.records_in
            out.commit[tp] = records[-1].offset + 1
            self.next_offset[tp] = records[-1].offset + 1
            self.last_data[tp] = now
            self.metrics.records_in.labels("ingest", tp.topic).inc(block.records_in)
            for why, k in block.skipped.items():
                self.metrics.records_skipped.labels(why).inc(k)
            for rej in block.rejects:
                out.dead.append(self._dead_letter(tp, rej))
            n = block.flows.num_rows
            if not n:
                continue
            src = source_name(tp.topic, tp.partition)
            starts = block.flows.column("start")
            newest = float(pc.max(starts).as_py())
            oldest = float(pc.min(starts).as_py())
            parsed.before[src] = self.watermarks.get(src, oldest)
            self.watermarks[src] = max(self.watermarks.get(src, newest), newest)
            parsed.first = oldest if parsed.first is None else min(parsed.first, oldest)
            parsed.index.append(np.full(n, len(parsed.sources), dtype=np.int32))
            parsed.sources.append(src)
            parsed.tables.append(block.flows)
            parsed.offsets.append(block.offsets)
        return parsed

    def route(self, parsed: Parsed) -> Prepared:
        """Route the parsed flows by client workload and encode the internal messages."""
        out, tables, sources = parsed.out, parsed.tables, parsed.sources
        if not tables:
            out.messages = self._progress(set(), force=False)
            return out
        flows = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        src_idx = np.concatenate(parsed.index)
        offs = np.concatenate(parsed.offsets)
        routed = self.router.route(flows)
        for (side, kind), count in routed.misses.items():
            self.metrics.enrichment_misses.labels(side, kind).inc(count)
        out.flows = flows.num_rows
        order = np.argsort(routed.partition, kind="stable")
        counts = np.bincount(routed.partition, minlength=self.router.partitions)
        flows = flows.take(pa.array(order))
        src_idx, offs = src_idx[order], offs[order]
        client, server = routed.client_wid[order], routed.server_wid[order]
        swapped, registry = routed.swapped[order], self.router.inventory.workloads
        meta = self._meta(frozenset(sources))
        start = 0
        for p, c in enumerate(counts.tolist()):
            # where each source's rows for p end: a message followed by more of a source's
            # rows reports that source's progress from before the batch, so the partition's
            # watermark never passes rows still to come in the batch's next messages
            u, rev = np.unique(src_idx[start:start + c][::-1], return_index=True)
            ends = list(zip(u.tolist(), (start + c - rev).tolist(), strict=True))
            for lo, hi in _cuts(src_idx, offs, start, start + c, self.stream.message_rows):
                pending = {sources[i]: parsed.before[sources[i]] for i, end in ends if end > hi}
                m = meta if not pending else {
                    **meta, "watermarks": {**meta["watermarks"], **pending}}
                identity = Identity.of(client[lo:hi], server[lo:hi], swapped[lo:hi], registry)
                out.messages.append((p, encode(flows.slice(lo, hi - lo), sources,
                                               src_idx[lo:hi], offs[lo:hi], **m,
                                               identity=identity)))
            start += c
        sent_to = {p for p, c in enumerate(counts.tolist()) if c}
        for p in sent_to:
            self._sent[p] = self._progress_key()
        out.messages.extend(self._progress(sent_to, force=False))
        return out

    def _dead_letter(self, tp: TopicPartition, rej: RawReject
                     ) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        r = rej.reject
        self.metrics.dead_letters.labels(r.reason).inc()
        raw = rej.raw or r.raw
        headers = [("segflow.reason", r.reason.encode()), ("segflow.detail", r.detail.encode()),
                   ("segflow.topic", tp.topic.encode()),
                   ("segflow.partition", str(tp.partition).encode()),
                   ("segflow.offset", str(rej.offset).encode()),
                   ("segflow.format", self.topics.raw[tp.topic].encode())]
        if len(raw) > DEAD_LETTER_MAX:
            headers.append(("segflow.truncated", str(len(raw)).encode()))
            raw = raw[:DEAD_LETTER_MAX]
        return f"{tp.topic}/{tp.partition}@{rej.offset}".encode(), raw, headers

    # -- event-time progress -------------------------------------------------------------
    def _refresh(self) -> None:
        """Read the consumer's view (on the loop's thread): idle raw partitions — caught up
        and quiet for ``IDLE_AFTER`` s — and each raw topic's partition count."""
        if self.consumer is None:
            return
        now = time.monotonic()
        idle = []
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            caught_up = high is not None and self.next_offset.get(tp, 0) >= high
            if caught_up and now - self.last_data.get(tp, now) >= IDLE_AFTER:
                idle.append(source_name(tp.topic, tp.partition))
        self._idle = sorted(idle)
        for topic in self.topics.raw:
            parts = self.consumer.partitions_for_topic(topic)
            if parts:
                self._parts[topic] = len(parts)

    def _meta(self, busy: frozenset[str] = frozenset()) -> dict[str, Any]:
        return {"watermarks": dict(self.watermarks), "partitions": dict(self._parts),
                "idle": [s for s in self._idle if s not in busy],
                "audit_start": self.audit_start}

    def _progress_key(self) -> tuple[float, frozenset[str]]:
        """(event time, idle sources) as a partition computes it from this instance's raw
        partitions: the oldest newest-start of the busy ones, so a lagging raw partition
        catching up (e.g. past the audit end) is reported even when the others stand still."""
        idle = frozenset(self._idle)
        busy = [t for s, t in self.watermarks.items() if s not in idle]
        newest = min(busy) if busy else max(self.watermarks.values(), default=float("-inf"))
        return newest, idle

    def _progress(self, skip: set[int], *, force: bool) -> list[tuple[int, bytes]]:
        """Progress-only messages for partitions that did not get flows in this batch."""
        newest, idle = key = self._progress_key()
        if newest == float("-inf") and not idle:
            return []
        empty: bytes | None = None
        out = []
        for p in range(self.router.partitions):
            if p in skip:
                continue
            last = self._sent.get(p)
            stale = last is None or newest - last[0] >= self.stream.watermark_step
            changed = last is None or last != key
            if stale or (force and changed):
                if empty is None:
                    empty = encode(empty_flows(), [], np.zeros(0, np.int32),
                                   np.zeros(0, np.int64), **self._meta())
                out.append((p, empty))
                self._sent[p] = key
        return out

    def progress_only(self) -> Prepared:
        """When the raw topics are quiet: tell every partition the latest event time."""
        return Prepared(messages=self._progress(set(), force=True))


def _cuts(src: np.ndarray, offs: np.ndarray, lo: int, hi: int, step: int
          ) -> list[tuple[int, int]]:
    """Split rows [lo, hi) into runs of about ``step`` rows, never inside one raw message
    (the stateful stage treats a raw offset it has seen as fully applied)."""
    out = []
    while lo < hi:
        cut = min(lo + step, hi)
        while cut < hi and src[cut] == src[cut - 1] and offs[cut] == offs[cut - 1]:
            cut += 1
        out.append((lo, cut))
        lo = cut
    return out


__all__ = ["IngestStage", "Parsed", "Prepared"]
