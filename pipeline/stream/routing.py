"""Route flows to internal partitions by *client workload*: ``crc32(name) % partitions``.

All of an edge's state (baseline row, violation windows, a client's scan window, the rules
that name it) depends only on its client, so keying by client keeps it on one partition.
The client is found exactly as the core finds it (inventory at the flow's time, then
orientation, with the router's own :class:`Orienter` over every flow it routes), and that
enrichment travels with the flows (:class:`~pipeline.stream.flowbatch.Identity`): the stateful
stage does not enrich again, so a partition always holds its clients' flows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.core.enrich import Orienter, enrich
from pipeline.core.inventory import Inventory
from pipeline.core.workloads import WORLD


def partition_for(name: str, partitions: int) -> int:
    """The internal partition of a client workload name.

    >>> partition_for("shop/orders-api", 8)
    5
    """
    return zlib.crc32(name.encode()) % partitions


@dataclass(slots=True)
class Routed:
    """Target partition per flow, and how many flows enrichment could not place."""

    partition: np.ndarray  # int32 per row
    misses: dict[tuple[str, str], int]  # (side, "world" | "unknown") → flows
    client_wid: np.ndarray  # int64 per row, in the router inventory's registry
    server_wid: np.ndarray
    swapped: np.ndarray  # bool per row: the record was server → client


class Router:
    """Client-workload router over a (live-updated) inventory."""

    def __init__(self, inventory: Inventory, partitions: int) -> None:
        self.inventory = inventory
        self.partitions = partitions
        self.orienter = Orienter()
        self._lut = np.zeros(0, dtype=np.int32)

    def _table(self) -> np.ndarray:
        infos = self.inventory.workloads.infos
        if len(self._lut) < len(infos):
            extra = [partition_for(i.key, self.partitions) for i in infos[len(self._lut):]]
            self._lut = np.concatenate([self._lut, np.asarray(extra, dtype=np.int32)])
        return self._lut

    def route(self, flows: pa.Table) -> Routed:
        """Partition per row of a FLOW_SCHEMA table."""
        if flows.num_rows == 0:
            none = np.zeros(0, dtype=np.int64)
            return Routed(np.zeros(0, dtype=np.int32), {}, none, none, np.zeros(0, dtype=bool))
        e = enrich(flows, self.inventory, self.orienter)
        lut = self._table()
        unknown_wid = self.inventory.workloads.column("kind") == "unknown"
        misses: dict[tuple[str, str], int] = {}
        for side, wids in (("client", e.client_wid), ("server", e.server_wid)):
            world = int((wids == WORLD).sum())
            unknown = int(unknown_wid[wids].sum())
            if world:
                misses[(side, "world")] = world
            if unknown:
                misses[(side, "unknown")] = unknown
        return Routed(lut[e.client_wid], misses, e.client_wid, e.server_wid, e.swapped)


__all__ = ["Routed", "Router", "partition_for"]
