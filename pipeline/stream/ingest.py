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

In-process routing (``role = "all"``, ``stream.in_process``): batches for internal partitions
the same process's stateful stage owns are handed to it in memory
(:meth:`~pipeline.stream.stateful.StatefulStage.offer`) instead of being produced to the flows
topic and consumed back; the other partitions' go through the topic as before. A partition
gets in-process batches only once it has applied every flows-topic message it must not
overtake: those this stage sent it (acknowledged; none in flight) and, after each change of
the raw assignment, everything in its flows partition then (another instance may have sent it
rows of the raw partitions this one just took over). The raw offsets of a batch are
committed once its messages are acknowledged *and* a snapshot covers its in-process part.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
from pipeline.stream.flowbatch import FlowBatch, Identity, encode, source_name
from pipeline.stream.leave import stop_consumer
from pipeline.stream.metrics import Metrics
from pipeline.stream.rawblock import RawReject, parse_messages
from pipeline.stream.routing import Router

if TYPE_CHECKING:
    from pipeline.stream.stateful import StatefulStage

log = logging.getLogger(__name__)

IDLE_AFTER = 5.0  # seconds a caught-up raw partition must stay quiet to count as idle
DEAD_LETTER_MAX = 1 << 20  # raw bytes kept in a dead-letter message
IN_FLIGHT = 2  # batches sent but not yet acknowledged while the next one is prepared
CATCH_UP_WAIT = 0.5  # seconds a batch waits for owned partitions to catch up with the topic


@dataclass(slots=True)
class Prepared:
    """One batch, ready to send: internal messages, dead letters, commit offsets."""

    messages: list[tuple[int, bytes]] = field(default_factory=list)  # (partition, value)
    local: list[tuple[int, FlowBatch]] = field(default_factory=list)  # handed over in memory
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
    local: set[int] = field(default_factory=set)  # partitions taking in-process batches


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, stage: IngestStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.stage.lock:  # let the batches in flight finish and commit
            await self.stage.drain(covered=True)
            self.stage.forget(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.stage.barrier = True  # others may have sent rows of these raw partitions
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
        self.local: StatefulStage | None = None  # in-process routing (role = "all")
        self.barrier = True  # raw assignment changed: read the flows topic's ends again
        self._need: dict[int, int] = {}  # partition → flows offset it must have applied
        self._unacked: dict[int, int] = {}  # partition → flows messages not acknowledged
        self._commits: deque[asyncio.Future[None]] = deque()  # in batch order
        self._wait_after = 0.0  # monotonic time before which batches do not wait

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
            await self.drain(covered=True)
            if self.consumer is not None:  # leaves at once if held in a rebalance's join
                await stop_consumer(self.consumer, self.consumer.stop())
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
                    prepared = self.progress_only(await self._local_partitions())
                    if prepared.messages or prepared.local:
                        await self._dispatch(prepared)

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
        parsed.local = await self._local_partitions()
        prepared = await loop.run_in_executor(self._cpu, self._route_locked, parsed)
        await self._dispatch(prepared)
        self.metrics.batch_seconds.labels("ingest").observe(time.perf_counter() - t0)
        self.metrics.batch_records.labels("ingest").observe(prepared.records)

    async def _dispatch(self, prepared: Prepared) -> None:
        """Send (or hand over) a prepared batch; its commit follows the previous batch's, once
        its messages are acknowledged and snapshots cover its in-process part."""
        futures, covered = await self._send(prepared)
        acked = asyncio.ensure_future(asyncio.gather(*futures))
        prev = self._commits[-1] if self._commits else None
        self._inflight.append(acked)
        self._commits.append(asyncio.ensure_future(
            self._commit_when_acked(prev, acked, covered, prepared.commit)))
        while len(self._inflight) > IN_FLIGHT or (self._inflight and self._inflight[0].done()):
            await self._inflight.popleft()
        while self._commits and self._commits[0].done():
            await self._commits.popleft()

    async def drain(self, *, covered: bool = False) -> None:
        """Wait until every batch sent so far is acknowledged; with ``covered`` also snapshot
        what was handed over in memory and wait until every batch is committed."""
        while self._inflight:
            await self._inflight.popleft()
        if not covered:
            return
        if self._commits and self.local is not None:
            await self.local.snapshot_local()
        while self._commits:
            try:
                await asyncio.wait_for(self._commits.popleft(), 30.0)
            except (RuntimeError, KafkaError, TimeoutError) as exc:  # re-read after a restart
                log.warning("ingest: a batch is not committed (%s); it will be re-read", exc)

    async def _commit_when_acked(self, prev: asyncio.Future[None] | None,
                                 acked: asyncio.Future[Any], covered: list[asyncio.Future[None]],
                                 offsets: dict[TopicPartition, int]) -> None:
        if prev is not None:
            await prev  # commits in batch order; a batch that is not covered stops them
        await acked
        if covered:
            await asyncio.gather(*covered)
        if offsets and self.consumer is not None:
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                # a rebalance took the partitions: the next owner re-sends, rows dedupe
                log.warning("ingest commit failed (%s); the batch will be re-read", exc)

    async def _local_partitions(self) -> set[int]:
        """Partitions to hand this batch over in memory: owned by this process's stateful
        stage and caught up with the flows topic (waiting up to ``CATCH_UP_WAIT`` s)."""
        stage = self.local
        if stage is None:
            return set()
        if self.barrier:
            try:
                ends = await stage.reader.end_offsets(self.topics.flows,
                                                      range(self.router.partitions))
            except KafkaError as exc:
                log.warning("ingest: reading the flows topic's ends failed (%r); sending "
                            "through the topic", exc)
                return set()
            for p, end in ends.items():
                self._need[p] = max(self._need.get(p, -1), end - 1)
            self.barrier = False
        deadline = time.monotonic() + CATCH_UP_WAIT
        while True:
            ready = {p for p in stage.ready_for(self._need) if not self._unacked.get(p)}
            if ready >= stage.owned() or time.monotonic() < self._wait_after:
                return ready
            if time.monotonic() > deadline:
                self._wait_after = time.monotonic() + 10 * CATCH_UP_WAIT
                return ready
            await asyncio.sleep(0.01)

    async def _send_flows(self, partition: int, value: bytes) -> asyncio.Future[Any]:
        self._unacked[partition] = self._unacked.get(partition, 0) + 1
        fut: asyncio.Future[Any] = await self.producer.send(self.topics.flows, value=value,
                                                            partition=partition)

        def acked(f: asyncio.Future[Any]) -> None:
            self._unacked[partition] -= 1
            if not f.cancelled() and f.exception() is None:
                self._need[partition] = max(self._need.get(partition, -1), f.result().offset)

        fut.add_done_callback(acked)
        return fut

    async def _send(self, prepared: Prepared
                    ) -> tuple[list[asyncio.Future[Any]], list[asyncio.Future[None]]]:
        futures, covered = [], []
        for partition, batch in prepared.local:
            done = await self.local.offer(partition, batch) if self.local else None
            if done is not None:
                covered.append(done)
            else:  # not this process's partition any more: through the topic
                futures.append(await self._send_flows(partition, encode(
                    batch.flows, batch.sources, batch.source_index, batch.offsets,
                    watermarks=batch.watermarks, partitions=batch.partitions, idle=batch.idle,
                    audit_start=batch.audit_start, identity=batch.identity)))
        for partition, value in prepared.messages:
            futures.append(await self._send_flows(partition, value))
        for key, value, headers in prepared.dead:
            futures.append(await self.producer.send(self.topics.dead_letter, value=value,
                                                    key=key, headers=headers))
        if prepared.messages or prepared.local:
            self.metrics.records_out.labels(self.topics.flows).inc(prepared.flows)
        if prepared.dead:
            self.metrics.records_out.labels(self.topics.dead_letter).inc(len(prepared.dead))
        return futures, covered

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
            out.messages, out.local = self._progress(set(), parsed.local, force=False)
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
            in_memory = p in parsed.local  # no message size: one batch
            rows = c if in_memory else self.stream.message_rows
            for lo, hi in _cuts(src_idx, offs, start, start + c, max(1, rows)):
                pending = {sources[i]: parsed.before[sources[i]] for i, end in ends if end > hi}
                m = meta if not pending else {
                    **meta, "watermarks": {**meta["watermarks"], **pending}}
                identity = Identity.of(client[lo:hi], server[lo:hi], swapped[lo:hi], registry)
                if in_memory:
                    out.local.append((p, FlowBatch(flows.slice(lo, hi - lo), sources,
                                                   src_idx[lo:hi], offs[lo:hi], **m,
                                                   identity=identity)))
                else:
                    out.messages.append((p, encode(flows.slice(lo, hi - lo), sources,
                                                   src_idx[lo:hi], offs[lo:hi], **m,
                                                   identity=identity)))
            start += c
        sent_to = {p for p, c in enumerate(counts.tolist()) if c}
        for p in sent_to:
            self._sent[p] = self._progress_key()
        more, local = self._progress(sent_to, parsed.local, force=False)
        out.messages.extend(more)
        out.local.extend(local)
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

    def _progress(self, skip: set[int], local: set[int], *, force: bool
                  ) -> tuple[list[tuple[int, bytes]], list[tuple[int, FlowBatch]]]:
        """Progress-only messages for partitions that did not get flows in this batch (as
        in-process batches for the partitions in ``local``)."""
        newest, idle = key = self._progress_key()
        if newest == float("-inf") and not idle:
            return [], []
        empty: bytes | None = None
        out: list[tuple[int, bytes]] = []
        mine: list[tuple[int, FlowBatch]] = []
        for p in range(self.router.partitions):
            if p in skip:
                continue
            last = self._sent.get(p)
            stale = last is None or newest - last[0] >= self.stream.watermark_step
            changed = last is None or last != key
            if stale or (force and changed):
                if p in local:
                    mine.append((p, FlowBatch(empty_flows(), [], np.zeros(0, np.int32),
                                              np.zeros(0, np.int64), **self._meta())))
                else:
                    if empty is None:
                        empty = encode(empty_flows(), [], np.zeros(0, np.int32),
                                       np.zeros(0, np.int64), **self._meta())
                    out.append((p, empty))
                self._sent[p] = key
        return out, mine

    def progress_only(self, local: set[int] | None = None) -> Prepared:
        """When the raw topics are quiet: tell every partition the latest event time (in
        memory to the partitions in ``local``)."""
        messages, mine = self._progress(set(), local or set(), force=True)
        return Prepared(messages=messages, local=mine)


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
