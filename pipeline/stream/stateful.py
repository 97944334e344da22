"""Stateful stage: internal ``flows`` partitions → core pipelines → store and event topics.

One :class:`~pipeline.stream.partition.PartitionState` per owned partition. The consumer
(a faust agent, see :mod:`pipeline.stream.app`) hands every message to :meth:`handle`;
messages are acknowledged — and so their offsets committed — only by a *snapshot*, which
happens every ``snapshot_every_messages`` messages, when the audit ends, after a quiet
``snapshot_idle_seconds``, on revocation and at shutdown, and always in this order:

1. flush the sink (aggregates and events are in the store),
2. wait for the event topics to acknowledge what was published,
3. write the partition's snapshot (state + offset + raw high-water marks) to ``state``,
4. acknowledge the messages it covers (faust commits acknowledged offsets every second and
   when it stops; the stage never commits itself — a commit inside a rebalance would wait
   for the rebalance, which waits for the stage).

On assignment the latest snapshot is restored and the partition resumes right after the
offset it covers: messages the snapshot already covers are skipped, and if the committed
offset is *ahead* of the snapshot the messages in between are read directly and applied
first. So a crash anywhere re-applies at most the messages after the last snapshot —
idempotently: aggregates carry ``(source_id, block)`` keys that replace, events
deterministic ids.

In-process batches (``role = "all"``, :meth:`offer`): the ingest stage of the same process
hands a partition it owns its batches in memory, skipping the flows topic's produce → broker
→ consume round trip. The partition keeps their aggregates until a snapshot holds them
(:mod:`pipeline.stream.partition`); step 3 is followed by writing them, and the *raw* offsets
such a batch came from are committed only once a snapshot covers it (the future
:meth:`offer` returns), so a crash re-reads them from the raw topics. A partition is offered
batches only while it has applied every message of the flows topic the ingest must not
overtake (:meth:`ready_for`): rows of one raw partition then reach it in raw offset order,
which the dedup by raw high-water marks needs.

At its audit end (and again when restored after it) a partition publishes its service map to
the control topic; the stage follows that topic on every :meth:`tick` into a
:class:`~pipeline.stream.services.ServiceDirectory`, and new_edge events held by its
partitions are completed and emitted once every partition's map is known
(:mod:`pipeline.stream.services`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from aiokafka.errors import KafkaError

from pipeline.config import StreamSettings, TopicSettings
from pipeline.core.pipeline import Pipeline
from pipeline.core.records import EDGE_MINUTE
from pipeline.core.settings import CoreSettings
from pipeline.storage.writer import StoreWriter
from pipeline.stream.flowbatch import FlowBatch, decode
from pipeline.stream.inventory_topic import InventoryFeed
from pipeline.stream.metrics import Metrics
from pipeline.stream.outputs import EventPublisher
from pipeline.stream.partition import PartitionState, Step
from pipeline.stream.reader import PartitionReader
from pipeline.stream.services import ServiceDirectory, map_records, parse_map_record
from pipeline.stream.snapshots import SnapshotStore

log = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[Any]]
MAX_LOCAL_ROWS = 200_000  # kept in-process aggregate rows that trigger a snapshot (its size)
T = TypeVar("T")


class ConsumerControl(Protocol):
    """What the stage needs from the consumer that feeds it."""

    def owns(self, partition: int) -> bool: ...

    def highwater(self, partition: int) -> int | None: ...


class StatefulStage:
    """Owns the partition states of one worker."""

    def __init__(self, core: CoreSettings, topics: TopicSettings, stream: StreamSettings, *,
                 group: str, client: dict[str, Any], feed: InventoryFeed,
                 snapshots: SnapshotStore, reader: PartitionReader, sink: StoreWriter,
                 publisher: EventPublisher, metrics: Metrics) -> None:
        self.core = core
        self.topics = topics
        self.stream = stream
        self.group = group  # the consumer group of the flows topic (lag metric label)
        self.client = client  # aiokafka connection kwargs (the control topic reader)
        self.feed = feed
        self.snapshots = snapshots
        self.reader = reader
        self.sink = sink
        self.publisher = publisher
        self.metrics = metrics
        self.states: dict[int, PartitionState] = {}
        self.parked: dict[int, PartitionState] = {}  # snapshotted at revocation, maybe back
        self.pending: dict[int, list[Ack]] = {}
        self.since_snapshot: dict[int, int] = {}
        self.last_message: dict[int, float] = {}
        self._audit_ended: dict[int, bool] = {}
        self.control: ConsumerControl | None = None
        self.services = ServiceDirectory(topics.flows_partitions)
        self._control_reader: PartitionReader | None = None  # follows the control topic
        self._control_next = 0
        self._released: set[int] = set()  # partitions whose snapshot still holds emitted events
        self._local: dict[int, list[asyncio.Future[None]]] = {}  # in-process, not yet covered
        self._in_process: set[int] = set()  # partitions that got in-process batches (logged)
        self._fenced: set[int] = set()  # revoked, until the next assignment
        self.lock = asyncio.Lock()
        self._cpu = ThreadPoolExecutor(1, thread_name_prefix="segflow-stateful")
        self.ready = asyncio.Event()
        self.closed = False

    # -- messages ------------------------------------------------------------------------
    async def handle(self, partition: int, offset: int, value: bytes | None, ack: Ack) -> None:
        """Apply one internal message; ``ack`` is called once a snapshot covers it."""
        await self.ready.wait()
        async with self.lock:
            control = self.control
            if self.closed or control is None or not control.owns(partition):
                return  # not ours (any more): the owner re-reads it
            state = await self._state(partition)
            if offset <= state.offset:
                await ack()  # covered by the snapshot already
                return
            if offset > state.offset + 1:
                await self._catch_up(partition, state, offset)
            await self._apply(partition, state, offset, value)
            self._track(partition, ack)
            step_done = self.since_snapshot[partition] >= self.stream.snapshot_every_messages
            if step_done or self._audit_ended.pop(partition, False):
                await self._snapshot(partition)

    async def offer(self, partition: int, batch: FlowBatch
                    ) -> asyncio.Future[None] | None:
        """Apply an in-process batch to ``partition`` if this stage owns it (None otherwise:
        send it through the flows topic). The future completes once a snapshot covers the
        batch (then its raw offsets may be committed), or fails if none will."""
        await self.ready.wait()
        async with self.lock:
            control = self.control
            if (self.closed or control is None or partition in self._fenced
                    or not control.owns(partition)):
                return None
            state = await self._state(partition)
            if partition not in self._in_process:
                self._in_process.add(partition)
                log.info("partition %d: batches of this process's ingest are handed over in "
                         "memory from now on (in-process routing)", partition)
            t0 = time.perf_counter()
            step = await self._run(state, state.apply_local, batch)
            await self._outputs(partition, state, step, t0)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            async def covered() -> None:
                if not done.done():
                    done.set_result(None)

            self._track(partition, covered)
            self._local.setdefault(partition, []).append(done)
            step_done = (self.since_snapshot[partition] >= self.stream.snapshot_every_messages
                         or state.local_rows >= MAX_LOCAL_ROWS)
            if step_done or self._audit_ended.pop(partition, False):
                await self._snapshot(partition)
            return done

    def owned(self) -> set[int]:
        """The flows partitions this stage's consumer owns."""
        control = self.control
        if control is None:
            return set()
        return {p for p in range(self.topics.flows_partitions)
                if p not in self._fenced and control.owns(p)}

    def ready_for(self, need: dict[int, int]) -> set[int]:
        """Owned partitions that have applied flows-topic message ``need[p]`` (and so every
        one before it): in-process batches may go to them without overtaking a message."""
        control = self.control
        if self.closed or control is None or not self.ready.is_set():
            return set()
        return {p for p, st in self.states.items()
                if p not in self._fenced and control.owns(p) and st.offset >= need.get(p, -1)}

    async def snapshot_local(self) -> None:
        """Snapshot every partition holding in-process batches no snapshot covers yet (the
        ingest stage then commits their raw offsets)."""
        async with self.lock:
            for p in sorted(p for p, futs in self._local.items() if futs):
                if p in self.states:
                    await self._snapshot(p)

    async def _apply(self, partition: int, state: PartitionState, offset: int,
                     value: bytes | None) -> None:
        """Apply message ``offset`` (the next one) and hand its outputs to sink and topics."""
        t0 = time.perf_counter()
        try:
            batch = decode(value or b"")
        except ValueError as exc:
            log.error("partition %d offset %d: skipping a message: %s", partition, offset, exc)
            state.offset = offset
            return
        step = await self._run(state, state.apply, offset, batch)
        await self._outputs(partition, state, step, t0)

    async def _outputs(self, partition: int, state: PartitionState, step: Step,
                       t0: float) -> None:
        """Hand a step's outputs to the sink and the event topics; metrics."""
        out = step.output
        await self.sink.add_async(out.edge_minutes, out.violations, out.rules,  # back-pressure
                                  out.incidents, readiness=out.readiness)
        await self.publisher.publish(out.violations, out.rules, out.incidents)
        self.metrics.records_in.labels("stateful", self.topics.flows).inc(step.rows)
        if step.dropped:
            self.metrics.duplicates.inc(step.dropped)
        if step.audit_ended:
            self._audit_ended[partition] = True
        if step.ended_early:
            self.metrics.audit_ended_early.inc()
        if step.incomplete:
            self.metrics.events_incomplete.inc(step.incomplete)
        self.metrics.held_events.labels(str(partition)).set(len(state.held_events))
        if step.audit_ended:
            await self._publish_services(partition, state)
        if step.deferred or step.audit_ended:
            self.metrics.deferred_flows.labels(str(partition)).set(state.deferred_rows)
        self.metrics.batch_records.labels("stateful").observe(step.rows)
        self.metrics.batch_seconds.labels("stateful").observe(time.perf_counter() - t0)

    async def _catch_up(self, partition: int, state: PartitionState, offset: int) -> None:
        """The consumer is ahead of the snapshot (its committed offset went further than
        the last snapshot): apply the messages in between, read directly, before
        ``offset``. Messages retention already deleted are counted and skipped."""
        start = state.offset + 1
        log.info("partition %d: at %d, catching up from its snapshot at %d", partition,
                 offset, start)
        async for rec in self.reader.read(self.topics.flows, partition, start, offset):
            if rec.offset > state.offset + 1:
                self._gap(partition, state, rec.offset)
            await self._apply(partition, state, rec.offset, rec.value)
        if offset > state.offset + 1:
            self._gap(partition, state, offset)

    def _gap(self, partition: int, state: PartitionState, offset: int) -> None:
        log.error("partition %d: messages %d..%d are gone (retention?); continuing at %d",
                  partition, state.offset + 1, offset - 1, offset)
        self.metrics.offset_gaps.inc(offset - state.offset - 1)
        state.offset = offset - 1

    async def _run(self, state: PartitionState, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the stage's thread, holding the partition inventory's lock (the
        loop keeps fetching and the ingest stage keeps parsing meanwhile)."""
        lock = self.feed.lock(state.pipeline.inventory)

        def locked() -> T:
            with lock:
                return fn(*args)

        return await asyncio.get_running_loop().run_in_executor(self._cpu, locked)

    def _track(self, partition: int, ack: Ack) -> None:
        self.pending.setdefault(partition, []).append(ack)
        self.since_snapshot[partition] = self.since_snapshot.get(partition, 0) + 1
        self.last_message[partition] = time.monotonic()

    async def _state(self, partition: int) -> PartitionState:
        state = self.states.get(partition) or self.parked.pop(partition, None)
        if state is not None:
            self.states[partition] = state
            return state
        blob = await self.snapshots.read(partition)
        if blob is None:
            state = PartitionState(partition, Pipeline(self.core, self.feed.new_inventory()),
                                   f"{self.topics.flows}/{partition}",
                                   services=self.services)
        else:
            inventory = self.feed.new_inventory()
            lock = self.feed.lock(inventory)

            def restore() -> PartitionState:
                with lock:  # no inventory update while its registry is rebuilt
                    return PartitionState.from_bytes(blob, self.core, inventory)

            state = await asyncio.get_running_loop().run_in_executor(self._cpu, restore)
            state.services = self.services
            self.metrics.snapshots_restored.inc()
            self.metrics.deferred_flows.labels(str(partition)).set(state.deferred_rows)
            self.metrics.held_events.labels(str(partition)).set(len(state.held_events))
            log.info("partition %d: restored its snapshot at offset %d", partition,
                     state.offset)
            for table in state.take_local():  # maybe written before the crash: they replace
                await self.sink.add_async(table, [], [])
        self.states[partition] = state
        if blob is not None and state.pipeline.audit_ended:
            await self._publish_services(partition, state)  # idempotent: the same records
        self.metrics.partitions.set(len(self.states))
        return state

    # -- known clients of a service ------------------------------------------------------
    async def _publish_services(self, partition: int, state: PartitionState) -> None:
        """Publish the partition's service map (after its audit) and wait for the broker."""
        services = await self._run(state, state.pipeline.service_clients)
        sent = [await self.publisher.producer.send(self.topics.control, key=k,
                                                   value=v, partition=0)
                for k, v in map_records(partition, services)]
        await asyncio.gather(*sent)
        if self.services.add_local(partition, services):
            await self._release_held()

    async def _release_held(self) -> None:
        """Emit the held new_edge events of every owned partition, once they are complete."""
        for p, state in self.states.items():
            events = state.release()
            if events:
                await self.sink.add_async(EDGE_MINUTE.schema.empty_table(), events, [])
                await self.publisher.publish(events, [])
                self.metrics.held_events.labels(str(p)).set(0)
                self._released.add(p)
                log.info("partition %d: every partition's service map is known; emitting %d "
                         "new_edge events held until then", p, len(events))

    async def follow_control(self) -> None:
        """Read what is new on the control topic; release held events once every
        partition's service map is known. A broker error is logged and retried next time."""
        if self._control_reader is None:
            self._control_reader = PartitionReader(self.client, max_fetch_bytes=1 << 20)
            await self._control_reader.start()
        changed = False
        try:
            async for rec in self._control_reader.read(self.topics.control, 0,
                                                       self._control_next):
                self._control_next = rec.offset + 1
                chunk = parse_map_record(rec.key, rec.value)
                changed = (chunk is not None and self.services.add(chunk)) or changed
        except KafkaError as exc:
            log.warning("reading the control topic %s failed (%r); retrying",
                        self.topics.control, exc)
        if changed and self.services.complete:
            async with self.lock:
                await self._release_held()

    async def _snapshot(self, partition: int) -> None:
        state = self.states[partition]
        await self.sink.flush_async()
        await self.publisher.flush()
        blob = await self._run(state, state.to_bytes)
        await self.snapshots.write(partition, blob, offset=state.offset)
        self.metrics.snapshots_written.inc()
        self.metrics.snapshot_bytes.labels(str(partition)).set(len(blob))
        for table in state.take_local():  # the snapshot holds them: safe to write now
            await self.sink.add_async(table, [], [])
        self._local.pop(partition, None)
        for ack in self.pending.pop(partition, []):
            await ack()
        self.since_snapshot[partition] = 0
        self._released.discard(partition)

    # -- rebalancing, timers, shutdown ---------------------------------------------------
    def assigned(self, partitions: set[int]) -> None:
        """The consumer's new assignment: forget parked partitions that went elsewhere
        (call synchronously from the rebalance callback, then :meth:`on_assigned`)."""
        for p in [p for p in self.parked if p not in partitions]:
            del self.parked[p]
        self._fenced.clear()  # the consumer's assignment is current again

    async def on_assigned(self, partitions: set[int]) -> None:
        """Restore newly assigned partitions ahead of their first message."""
        await self.ready.wait()
        async with self.lock:
            for p in sorted(partitions):
                if not self.closed and p not in self.states:
                    await self._state(p)

    async def on_revoked(self, partitions: set[int]) -> None:
        """Snapshot revoked partitions so their next owner starts where we stop. Their
        states stay parked: an eager rebalance revokes everything, and partitions assigned
        straight back resume without reading their snapshots again."""
        async with self.lock:
            # the consumer reports them as assigned until the new assignment arrives: no
            # in-process batch may reach them meanwhile (their next owner restores the
            # snapshot written here)
            self._fenced |= partitions
            await self._release(partitions, park=True)

    async def _release(self, partitions: set[int], *, park: bool = False) -> None:
        for p in sorted(partitions):
            if p not in self.states:
                continue
            if self.pending.get(p) or p in self._released:
                await self._snapshot(p)
            for fut in self._local.pop(p, []):  # not covered: the raw offsets are re-read
                if not fut.done():
                    fut.set_exception(RuntimeError(f"partition {p} left before a snapshot"))
            state = self.states.pop(p)
            if park:
                self.parked[p] = state
            self.pending.pop(p, None)
            self.since_snapshot.pop(p, None)
            self.last_message.pop(p, None)
            self._audit_ended.pop(p, None)
        self.metrics.partitions.set(len(self.states))

    async def tick(self) -> None:
        """Periodic: follow the control topic, snapshot quiet partitions, flush a due sink,
        update lag gauges."""
        if self.ready.is_set() and not self.closed:
            await self.follow_control()
        now = time.monotonic()
        idle = self.stream.snapshot_idle_seconds
        async with self.lock:
            quiet = [p for p, acks in self.pending.items() if acks and p in self.states
                     and now - self.last_message.get(p, now) >= idle]
            quiet += [p for p in sorted(self._released) if p in self.states and p not in quiet]
            for p in quiet:
                await self._snapshot(p)
            self.sink.tick()
            if self.control is not None:
                for p, state in self.states.items():
                    high = self.control.highwater(p)
                    if high is not None:
                        self.metrics.lag.labels(self.group, self.topics.flows,
                                                str(p)).set(max(0, high - state.offset - 1))

    async def stop(self) -> None:
        """Emit what the control topic completes, snapshot everything owned, stop taking
        messages (faust commits when it stops)."""
        if self.ready.is_set() and not self.closed:
            await self.follow_control()
        async with self.lock:
            self.closed = True
            await self._release(set(self.states))
        if self._control_reader is not None:
            await self._control_reader.stop()
        self._cpu.shutdown(wait=True)


__all__ = ["Ack", "ConsumerControl", "StatefulStage"]
