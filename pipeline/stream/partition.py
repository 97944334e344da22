"""The state of one internal ``flows`` partition: a core :class:`Pipeline` plus the bookkeeping
that makes reprocessing harmless. Pure (no Kafka): the stateful stage feeds it messages.

* ``offset`` — the last internal message applied; older messages are skipped.
* ``applied`` — per raw ``topic/partition``, the highest raw offset applied *on this
  partition*; rows at or below it are dropped, so an ingest re-send after a crash (with other
  batch boundaries) changes nothing.
* event time — the ingest side reports the newest flow start per raw partition; the
  watermark is the minimum over the raw partitions that are not idle. It ends the audit and
  closes violation windows even on a partition that receives no flows of its own.
* audit start — a pipeline without one adopts the start the messages carry (configured or
  agreed by all workers, :mod:`pipeline.stream.control`); one it has (from the settings or a
  snapshot) is kept, and a message carrying another start is logged.

A snapshot is this bookkeeping plus :func:`pipeline.core.snapshot.dump_state`; restoring it
and replaying the messages after ``offset`` gives the same outputs as never stopping.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

import numpy as np
import orjson

from pipeline.core.events import iso
from pipeline.core.inventory import Inventory
from pipeline.core.pipeline import BatchOutput, CoreSettings, Pipeline
from pipeline.core.snapshot import dump_state, load_state
from pipeline.stream.flowbatch import FlowBatch

log = logging.getLogger(__name__)

_MAGIC = b"SGFP"
_HEADER = struct.Struct(">4sI")


@dataclass(slots=True)
class Step:
    """What applying one message did."""

    output: BatchOutput
    rows: int = 0  # rows in the message
    dropped: int = 0  # rows already applied earlier (duplicates)
    audit_ended: bool = False


def advance_event_time(p: Pipeline, t: float) -> BatchOutput:
    """Move ``p``'s event time to ``t`` without flows: end the audit once ``t`` passes its end,
    close violation windows behind the watermark (exactly what :meth:`Pipeline.process`
    does after a batch whose newest flow starts at ``t``)."""
    out = BatchOutput()
    end = p.audit_end
    if end is not None and t >= end and not p.baseline.frozen_:
        out.rules.extend(p._end_audit())
    p.windows.advance(t)
    out.violations.extend(p._events(p.windows.take_forced()))
    out.violations.extend(p._events(p.windows.close()))
    p.counts["violations"] += len(out.violations)
    return out


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
    _reported: set[float] = field(default_factory=set, init=False, repr=False)  # warned of

    def apply(self, offset: int, batch: FlowBatch) -> Step:
        """Apply internal message ``offset`` (must be newer than :attr:`offset`)."""
        if offset <= self.offset:
            raise ValueError(f"message {offset} is not after {self.offset}")
        p = self.pipeline
        frozen = p.baseline.frozen_
        step = Step(BatchOutput(), rows=batch.num_rows)
        flows = batch.flows
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
        if flows.num_rows:
            step.output = p.process(flows, source_id=self.source_id, block=offset,
                                    version=flows.num_rows)
        self._merge_progress(batch)
        t = self.watermark()
        if t is not None and t > self.event_time:
            self.event_time = t
            more = advance_event_time(p, t)
            step.output.violations.extend(more.violations)
            step.output.rules.extend(more.rules)
        self.offset = offset
        step.audit_ended = p.baseline.frozen_ and not frozen
        return step

    def _adopt_audit_start(self, start: float | None) -> None:
        p = self.pipeline
        if start is None or start == p.audit_start:
            return
        if p.audit_start is None:
            p.audit_start = start
            log.info("partition %d: audit starts at %s", self.partition, iso(start))
        elif start not in self._reported:
            self._reported.add(start)
            log.warning("partition %d: a message carries audit start %s but the partition's "
                        "is %s; keeping its own (workers with different audit.start, or a "
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
        """Bookkeeping header + the core's pickle-free state."""
        header = orjson.dumps({
            "partition": self.partition, "source_id": self.source_id, "offset": self.offset,
            "applied": self.applied, "watermarks": self.watermarks, "idle": sorted(self.idle),
            "raw_partitions": self.raw_partitions,
            "event_time": self.event_time if np.isfinite(self.event_time) else None,
        })
        return _HEADER.pack(_MAGIC, len(header)) + header + dump_state(self.pipeline)

    @classmethod
    def from_bytes(cls, data: bytes, settings: CoreSettings, inventory: Inventory
                   ) -> PartitionState:
        """Inverse of :meth:`to_bytes`; ``inventory`` must be fresh. ValueError if corrupt."""
        magic, size = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("not a segflow partition snapshot")
        h = orjson.loads(data[_HEADER.size:_HEADER.size + size])
        pipeline = load_state(data[_HEADER.size + size:], settings, inventory)
        et = h["event_time"]
        return cls(
            partition=int(h["partition"]), pipeline=pipeline, source_id=h["source_id"],
            offset=int(h["offset"]), applied={k: int(v) for k, v in h["applied"].items()},
            watermarks={k: float(v) for k, v in h["watermarks"].items()},
            idle=set(h["idle"]), raw_partitions={k: int(v) for k, v in
                                                 h["raw_partitions"].items()},
            event_time=float("-inf") if et is None else float(et),
        )


__all__ = ["PartitionState", "Step", "advance_event_time"]
