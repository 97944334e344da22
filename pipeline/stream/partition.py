"""The state of one internal ``flows`` partition: a core :class:`Pipeline` plus the bookkeeping
that makes reprocessing harmless. Pure (no Kafka): the stateful stage feeds it messages.

* ``offset`` — the last internal message applied; older messages are skipped.
* ``applied`` — per raw ``topic/partition``, the highest raw offset applied *on this
  partition*; rows at or below it are dropped, so an ingest re-send after a crash (with other
  batch boundaries) changes nothing.
* event time — the ingest side reports the newest flow start per raw partition; the
  watermark is the minimum over the raw partitions that are not idle. It ends the audit and
  closes violation windows even on a partition that receives no flows of its own, and bounds
  how far a message's flows advance windows (a message can run ahead of other raw
  partitions whose flows for the same windows are still to come).
* audit start — a pipeline without one adopts the start the messages carry (configured or
  agreed by all workers, :mod:`pipeline.stream.control`); one it has (from the settings or a
  snapshot) is kept, and a message carrying another start is logged.
* audit end — the audit ends when the *watermark* passes its end, not on the first
  post-audit flow: a raw partition read faster than another would otherwise end it while the
  slower one still has audit flows to come. Until then post-audit flows are held
  (``deferred``, Arrow, arrival order) while audit flows of every source are learned; the
  message whose watermark passes the end applies them — with its own flows, in one core
  batch in event-time order, under its own offset as block — so replaying the same messages
  gives the same rows. Beyond :data:`MAX_DEFERRED_ROWS` held rows the audit ends early.
* known clients of a service — ``new_edge`` events list the service's clients over *every*
  partition (:mod:`pipeline.stream.services`); with a :attr:`services` directory attached they
  are held (``held_events``, in order) until every partition's map is known, then completed.
  Beyond :data:`MAX_HELD_EVENTS` the oldest are released with the clients known so far.

* in-process batches — with ``role = "all"`` the ingest stage of the same process can hand a
  partition it owns its batches in memory (:meth:`apply_local`) instead of through the flows
  topic. Those batches have no internal offset, so after a crash they are re-read from the
  raw topics with other boundaries; their aggregates therefore carry blocks
  ``LOCAL_BLOCK + n`` (``n`` counted in the snapshot) and are *kept* (:attr:`local_tables`)
  until a snapshot holds them: the stage writes them to the store only after that snapshot
  is stored, and a restored snapshot's tables are written again (same blocks: they replace).
  What was applied after the last snapshot was never written, so re-applying it with other
  boundaries doubles nothing. Events are emitted at once as for messages (ids are
  deterministic; consumers keep the highest version).

A snapshot is this bookkeeping (the held flows as Arrow IPC, the held events, the kept
in-process aggregates) plus :func:`pipeline.core.snapshot.dump_state`; restoring it and
replaying the messages after ``offset`` gives the same outputs as never stopping.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from pipeline.core.columns import FLOW_COLUMNS, FLOW_SCHEMA
from pipeline.core.events import iso
from pipeline.core.inventory import Inventory
from pipeline.core.pipeline import BatchOutput, Pipeline
from pipeline.core.records import EDGE_MINUTE
from pipeline.core.settings import CoreSettings
from pipeline.core.snapshot import dump_state, load_state
from pipeline.stream.flowbatch import FlowBatch
from pipeline.stream.services import ServiceDirectory, is_new_edge

log = logging.getLogger(__name__)

_MAGIC = b"SGFP"
_HEADER = struct.Struct(">4sI")
# Post-audit flows one partition holds while its watermark is before the audit end (~110 B
# each in memory, ~30 B in a snapshot). A row count, not bytes: whether (and where) the cap
# ends the audit early must be the same when the messages are replayed from a snapshot.
MAX_DEFERRED_ROWS = 1_000_000
# new_edge events one partition holds until every partition's service map is known (~1.5 KB
# each in memory and in a snapshot, so ≤ ~75 MB)
MAX_HELD_EVENTS = 50_000
LOCAL_BLOCK = 1 << 62  # blocks of in-process batches (internal offsets stay far below)
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(
    compression="zstd" if pa.Codec.is_available("zstd") else None)


@dataclass(slots=True)
class Step:
    """What applying one message did."""

    output: BatchOutput
    rows: int = 0  # rows in the message
    dropped: int = 0  # rows already applied earlier (duplicates)
    audit_ended: bool = False
    deferred: int = 0  # post-audit rows held until the watermark passes the audit end
    ended_early: bool = False  # the audit ended because MAX_DEFERRED_ROWS was exceeded
    incomplete: int = 0  # new_edge events released beyond MAX_HELD_EVENTS, clients partial


@dataclass
class PartitionState:
    """One internal partition's pipeline and replay bookkeeping."""

    partition: int
    pipeline: Pipeline
    source_id: str  # "<flows topic>/<partition>": the aggregates' source_id
    offset: int = -1
    applied: dict[str, int] = field(default_factory=dict)
    watermarks: dict[str, float] = field(default_factory=dict)
    idle: set[str] = field(default_factory=set)
    raw_partitions: dict[str, int] = field(default_factory=dict)
    event_time: float = float("-inf")  # the watermark last applied
    deferred: list[pa.Table] = field(default_factory=list)  # held post-audit flows
    held_events: list[dict[str, Any]] = field(default_factory=list)  # new_edge, in order
    local_batches: int = 0  # in-process batches applied so far (their blocks)
    local_tables: list[pa.Table] = field(default_factory=list)  # their aggregates, unwritten
    services: ServiceDirectory | None = field(default=None, repr=False)  # not snapshotted
    _reported: set[float] = field(default_factory=set, init=False, repr=False)  # warned of
    _held_at: dict[str, int] | None = field(default=None, init=False, repr=False)  # id → index

    def __post_init__(self) -> None:
        self.pipeline.readiness_source = self.source_id  # app_readiness rows per partition

    def apply(self, offset: int, batch: FlowBatch) -> Step:
        """Apply internal message ``offset`` (must be newer than :attr:`offset`)."""
        if offset <= self.offset:
            raise ValueError(f"message {offset} is not after {self.offset}")
        step = self._apply(batch, offset)
        self.offset = offset
        return step

    def apply_local(self, batch: FlowBatch) -> Step:
        """Apply a batch handed over in memory; its aggregates are kept in
        :attr:`local_tables` (not in the step's output) until a snapshot holds them."""
        step = self._apply(batch, LOCAL_BLOCK + self.local_batches)
        self.local_batches += 1
        out = step.output
        if out.edge_minutes.num_rows:
            self.local_tables.append(out.edge_minutes)
            out.edge_minutes = out.edge_minutes.slice(0, 0)
        return step

    def take_local(self) -> list[pa.Table]:
        """The kept in-process aggregates (call once a snapshot holding them is stored)."""
        tables, self.local_tables = self.local_tables, []
        return tables

    @property
    def local_rows(self) -> int:
        return sum(t.num_rows for t in self.local_tables)

    def _apply(self, batch: FlowBatch, block: int) -> Step:
        p = self.pipeline
        frozen = p.audit_ended
        step = Step(BatchOutput(), rows=batch.num_rows)
        flows = batch.enriched_flows(p.workloads)  # the router's identity: no second enrich
        if batch.num_rows:
            floor = np.array([self.applied.get(s, -1) for s in batch.sources], dtype=np.int64)
            keep = batch.offsets > floor[batch.source_index]
            for i, s in enumerate(batch.sources):
                mine = batch.offsets[batch.source_index == i]
                if len(mine):
                    self.applied[s] = max(self.applied.get(s, -1), int(mine.max()))
            if not keep.all():
                step.dropped = int((~keep).sum())
                flows = flows.filter(keep)
        self._adopt_audit_start(batch.audit_start)
        self._merge_progress(batch)
        t = self.watermark()
        if not frozen:
            if flows.num_rows:  # what the core would pick
                p.start_audit(float(np.min(flows.column("start").to_numpy())))
            flows = self._hold(flows, t, step)
        if flows.num_rows:
            # windows advance no further than the watermark: a batch can run ahead of
            # other raw partitions whose flows for the same windows are still to come
            step.output = p.process(flows, source_id=self.source_id, block=block,
                                    version=flows.num_rows,
                                    watermark=float("-inf") if t is None else t)
        end = p.audit_end
        due = end is not None and t is not None and t >= end and not p.audit_ended
        if t is not None and (t > self.event_time or due):
            self.event_time = max(self.event_time, t)
            more = p.advance(self.event_time)
            step.output.violations.extend(more.violations)
            step.output.rules.extend(more.rules)
            step.output.incidents.extend(more.incidents)
            if more.readiness.num_rows:
                step.output.readiness = pa.concat_tables([step.output.readiness, more.readiness])
        step.audit_ended = p.audit_ended and not frozen
        step.output.violations = self._complete(step.output.violations, step)
        return step

    def _complete(self, events: list[dict[str, Any]], step: Step) -> list[dict[str, Any]]:
        """``events`` to emit now: new_edge ones completed with every partition's clients of
        the service, or held (after those held before) until every partition's map is known."""
        d = self.services
        if d is None:
            return events
        if not self.held_events and not any(is_new_edge(e) for e in events):
            return events
        out = [e for e in events if not is_new_edge(e)]
        self._hold_events(e for e in events if is_new_edge(e))
        if d.complete:
            out.extend(self.release())
        elif len(self.held_events) > MAX_HELD_EVENTS:
            n = len(self.held_events) - MAX_HELD_EVENTS
            early, self.held_events = self.held_events[:n], self.held_events[n:]
            self._held_at = None
            out.extend(d.complete_event(e) for e in early)
            step.incomplete = n
            log.warning("partition %d: more than %d new_edge events wait for the service maps "
                        "of partitions %s; releasing %d with the clients known so far",
                        self.partition, MAX_HELD_EVENTS, d.missing(), n)
        return out

    def _hold_events(self, events: Iterable[dict[str, Any]]) -> None:
        """Hold ``events`` after those held before; a newer version of a held id replaces
        it in place (the topic gets its latest version on release)."""
        if self._held_at is None:
            self._held_at = {e["id"]: i for i, e in enumerate(self.held_events)}
        for e in events:
            i = self._held_at.get(e["id"])
            if i is None:
                self._held_at[e["id"]] = len(self.held_events)
                self.held_events.append(e)
            elif e["version"] >= self.held_events[i]["version"]:
                self.held_events[i] = e

    def release(self) -> list[dict[str, Any]]:
        """The held new_edge events, completed, once every partition's map is known."""
        d = self.services
        if d is None or not self.held_events or not d.complete:
            return []
        held, self.held_events = self.held_events, []
        self._held_at = None
        return [d.complete_event(e) for e in held]

    @property
    def deferred_rows(self) -> int:
        """Post-audit flows held until the watermark passes the audit end."""
        return sum(t.num_rows for t in self.deferred)

    def _hold(self, flows: pa.Table, t: float | None, step: Step) -> pa.Table:
        """The flows to process now (audit not ended yet): hold post-audit ones while the
        watermark is before the audit end; once it passes (or the cap is exceeded), all held
        flows plus this message's, in event-time order, so the core learns this message's
        audit flows, ends the audit and scores the rest in one batch."""
        end = self.pipeline.audit_end
        if end is None:
            return flows
        post = flows.column("start").to_numpy() >= end
        n_post = int(post.sum())
        if t is None or t < end:
            if not n_post:
                return flows
            if self.deferred_rows + n_post <= MAX_DEFERRED_ROWS:
                self.deferred.append(flows.filter(post))
                step.deferred = n_post
                return flows.filter(~post)
            step.ended_early = True
            log.warning(
                "partition %d: more than %d post-audit flows held while event time (%s) is "
                "before the audit end (%s); ending the audit now — later audit flows of "
                "slower raw partitions will not be learned", self.partition,
                MAX_DEFERRED_ROWS, "unknown" if t is None else iso(t), iso(end))
        if not self.deferred:
            return flows
        held, self.deferred = self.deferred, []
        if not step.ended_early:
            log.info("partition %d: event time reached the audit end %s; applying %d "
                     "post-audit flows held until then", self.partition, iso(end),
                     sum(h.num_rows for h in held))
        both = pa.concat_tables(_uniform([*held, flows]))
        order = np.argsort(both.column("start").to_numpy(), kind="stable")
        return both.take(pa.array(order))

    def _adopt_audit_start(self, start: float | None) -> None:
        p = self.pipeline
        if start is None or start == p.audit_start:
            return
        if p.audit_start is None:
            p.start_audit(start)
            log.info("partition %d: audit starts at %s", self.partition, iso(start))
        elif start not in self._reported:
            self._reported.add(start)
            log.warning("partition %d: a message carries audit start %s but the partition's "
                        "is %s; keeping its own (workers with different core.audit_start, or a "
                        "new control topic?)", self.partition, iso(start), iso(p.audit_start))

    def _merge_progress(self, batch: FlowBatch) -> None:
        for s, t in batch.watermarks.items():
            if t > self.watermarks.get(s, float("-inf")):
                self.watermarks[s] = t
        for s in batch.watermarks:
            self.idle.discard(s)
        self.idle.update(batch.idle)
        self.raw_partitions.update(batch.partitions)

    def watermark(self) -> float | None:
        """Event time every raw partition has reached (idle ones aside), or None if unknown."""
        if not self.raw_partitions:
            return None
        expected = {f"{t}/{i}" for t, n in self.raw_partitions.items() for i in range(n)}
        known = set(self.watermarks) | self.idle
        if not expected <= known:
            return None
        active = [self.watermarks[s] for s in expected if s in self.watermarks
                  and s not in self.idle]
        if active:
            return min(active)
        idle = [self.watermarks[s] for s in expected if s in self.watermarks]
        return max(idle) if idle else None

    # -- snapshots -----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Bookkeeping header + held flows (Arrow IPC) + the core's pickle-free state."""
        held = _ipc(self.deferred)
        local = _ipc(self.local_tables, EDGE_MINUTE.schema)
        header = orjson.dumps({
            "partition": self.partition, "source_id": self.source_id, "offset": self.offset,
            "applied": self.applied, "watermarks": self.watermarks, "idle": sorted(self.idle),
            "raw_partitions": self.raw_partitions,
            "event_time": self.event_time if np.isfinite(self.event_time) else None,
            "held_events": self.held_events, "deferred_bytes": len(held),
            "local_batches": self.local_batches, "local_bytes": len(local),
        })
        return (_HEADER.pack(_MAGIC, len(header)) + header + held + local
                + dump_state(self.pipeline))

    @classmethod
    def from_bytes(cls, data: bytes, settings: CoreSettings, inventory: Inventory
                   ) -> PartitionState:
        """Inverse of :meth:`to_bytes`; ``inventory`` must be fresh. ValueError if corrupt."""
        magic, size = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("not a segflow partition snapshot")
        pos = _HEADER.size + size
        h = orjson.loads(data[_HEADER.size:pos])
        held = int(h.get("deferred_bytes", 0))
        deferred = _from_ipc(data[pos:pos + held]) if held else []
        pos += held
        kept = int(h.get("local_bytes", 0))
        local = _from_ipc(data[pos:pos + kept], EDGE_MINUTE.schema) if kept else []
        pipeline = load_state(data[pos + kept:], settings, inventory)
        et = h["event_time"]
        return cls(
            partition=int(h["partition"]), pipeline=pipeline, source_id=h["source_id"],
            offset=int(h["offset"]), applied={k: int(v) for k, v in h["applied"].items()},
            watermarks={k: float(v) for k, v in h["watermarks"].items()},
            idle=set(h["idle"]), raw_partitions={k: int(v) for k, v in
                                                 h["raw_partitions"].items()},
            event_time=float("-inf") if et is None else float(et), deferred=deferred,
            held_events=list(h.get("held_events", [])),
            local_batches=int(h.get("local_batches", 0)), local_tables=local,
        )


def _uniform(tables: list[pa.Table]) -> list[pa.Table]:
    """``tables`` with one schema: FLOW_SCHEMA alone when some lack the identity columns
    (messages of older workers; the core then enriches them all)."""
    if all(t.schema.equals(tables[0].schema) for t in tables[1:]):
        return tables
    return [t.select(list(FLOW_COLUMNS)) for t in tables]


def _ipc(tables: list[pa.Table], schema: pa.Schema | None = None) -> bytes:
    """``tables`` (FLOW_SCHEMA, with or without the identity columns, whose wids belong to
    the snapshot's own registry; or ``schema``) as one Arrow IPC stream; empty bytes when
    there are none."""
    if not tables:
        return b""
    tables = _uniform(tables) if schema is None else [t.cast(schema) for t in tables]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, tables[0].schema, options=_IPC_OPTIONS) as writer:
        for t in tables:
            writer.write_table(t)
    return sink.getvalue().to_pybytes()


_HELD_SCHEMA = pa.schema([*FLOW_SCHEMA, pa.field("client_wid", pa.int64()),
                          pa.field("server_wid", pa.int64()), pa.field("swapped", pa.bool_())])


def _from_ipc(data: bytes, schema: pa.Schema | None = None) -> list[pa.Table]:
    table = pa.ipc.open_stream(data).read_all()
    if schema is not None:
        if not table.schema.equals(schema):
            raise ValueError("corrupt partition snapshot: kept aggregates are not edge rows")
    elif not (table.schema.equals(FLOW_SCHEMA) or table.schema.equals(_HELD_SCHEMA)):
        raise ValueError("corrupt partition snapshot: held flows are not flow rows")
    return [table]


__all__ = ["LOCAL_BLOCK", "MAX_DEFERRED_ROWS", "MAX_HELD_EVENTS", "PartitionState", "Step"]
