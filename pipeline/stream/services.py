"""Known clients of a service across partitions: the evidence of ``new_edge`` events.

Flows are partitioned by client workload, so one partition knows only its own clients of a
service. At its audit end each partition publishes its (server, port, proto) → first clients
by key map (:meth:`pipeline.core.pipeline.Pipeline.service_clients`) to the compacted control
topic under ``service-clients/<partition>/<chunk>``; every stateful worker follows the topic
into a :class:`ServiceDirectory`. A ``new_edge`` event gets the union over every ``flows``
partition's map — first :data:`~pipeline.core.pipeline.SERVICE_CLIENTS_MAX` by key, what
replay lists — so until every partition's map is known its partition holds it (see
:class:`~pipeline.stream.partition.PartitionState`). Pure: no Kafka here.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.core.detect import NEW_EDGE
from pipeline.core.pipeline import SERVICE_CLIENTS_MAX

log = logging.getLogger(__name__)

SERVICE_CLIENTS = "service-clients/"  # control key prefix: service-clients/<partition>/<chunk>
CHUNK_BYTES = 800_000  # JSON bytes per control record (the topic's messages are ≤ 1 MiB)

Service = tuple[str, int, int]  # (server workload key, port, proto)
ServiceMap = dict[Service, list[str]]


@dataclass(frozen=True, slots=True)
class MapChunk:
    """One control record of a partition's service map."""

    partition: int
    chunk: int
    chunks: int
    digest: str  # of the whole map: chunks of different publications never mix
    services: ServiceMap


def map_records(partition: int, services: ServiceMap) -> list[tuple[bytes, bytes]]:
    """The (key, value) control records publishing ``partition``'s map. Deterministic, so
    publishing again (after a restore) rewrites the same records."""
    rows = sorted([s, p, pr, c] for (s, p, pr), c in services.items())
    whole = orjson.dumps(rows)
    digest = hashlib.sha256(whole).hexdigest()[:16]
    n = max(1, math.ceil(len(whole) / CHUNK_BYTES))
    size = math.ceil(len(rows) / n) if rows else 0
    out = []
    for i in range(n):
        value = orjson.dumps({"partition": partition, "chunk": i, "chunks": n, "digest": digest,
                              "services": rows[i * size:(i + 1) * size]})
        out.append((f"{SERVICE_CLIENTS}{partition}/{i}".encode(), value))
    return out


def parse_map_record(key: bytes | None, value: bytes | None) -> MapChunk | None:
    """The map chunk in one control record; None for other keys, tombstones and malformed
    values."""
    name = (key or b"").decode("utf-8", "replace")
    if not name.startswith(SERVICE_CLIENTS) or value is None:
        return None
    try:
        v = orjson.loads(value)
        return MapChunk(int(v["partition"]), int(v["chunk"]), int(v["chunks"]),
                        str(v["digest"]), {(str(s), int(p), int(pr)): [str(x) for x in c]
                                           for s, p, pr, c in v["services"]})
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        log.warning("control record %s is not a service map (%s); ignored", name, exc)
        return None


def union(maps: Iterable[ServiceMap]) -> ServiceMap:
    """Per service, the first :data:`SERVICE_CLIENTS_MAX` clients by key over ``maps`` (each
    map holds its own first ones, so this equals the list over all clients)."""
    merged: dict[Service, set[str]] = {}
    for m in maps:
        for k, c in m.items():
            merged.setdefault(k, set()).update(c)
    return {k: sorted(c)[:SERVICE_CLIENTS_MAX] for k, c in merged.items()}


def with_clients(event: dict[str, Any], clients: list[str]) -> dict[str, Any]:
    """``event`` (a new_edge) with ``evidence.expected.known_clients_of_service`` replaced."""
    ev = event["evidence"]
    return {**event, "evidence": {**ev, "expected": {
        **ev["expected"], "known_clients_of_service": clients}}}


def is_new_edge(event: dict[str, Any]) -> bool:
    return event.get("type") == NEW_EDGE


class ServiceDirectory:
    """Every ``flows`` partition's service map, as far as known (thread-safe: the stage's
    loop adds maps while partitions complete events on the stage's thread)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._maps: dict[int, tuple[str, ServiceMap]] = {}  # partition → (digest, map)
        self._chunks: dict[tuple[int, str], dict[int, ServiceMap]] = {}
        self._union: ServiceMap | None = None
        self._lock = threading.Lock()

    def add(self, chunk: MapChunk) -> bool:
        """Take one record; True when it completed a partition's (new or changed) map."""
        parts = self._chunks.setdefault((chunk.partition, chunk.digest), {})
        parts[chunk.chunk] = chunk.services
        if len(parts) < chunk.chunks:
            return False
        del self._chunks[(chunk.partition, chunk.digest)]
        services: ServiceMap = {}
        for i in range(chunk.chunks):
            services.update(parts.get(i, {}))
        return self._set(chunk.partition, chunk.digest, services)

    def add_local(self, partition: int, services: ServiceMap) -> bool:
        """A map this worker published itself (the topic will bring the same records)."""
        records = map_records(partition, services)
        return self._set(partition, orjson.loads(records[0][1])["digest"], services)

    def _set(self, partition: int, digest: str, services: ServiceMap) -> bool:
        with self._lock:
            old = self._maps.get(partition)
            if old is not None and old[0] == digest:
                return False
            if old is not None:
                log.warning("partition %d published another service map; using the latest",
                            partition)
            self._maps[partition] = (digest, services)
            self._union = None
            return True

    @property
    def complete(self) -> bool:
        """Every partition's map is known."""
        with self._lock:
            return all(p in self._maps for p in range(self.partitions))

    def missing(self) -> list[int]:
        with self._lock:
            return [p for p in range(self.partitions) if p not in self._maps]

    def clients(self, service: Service) -> list[str]:
        """The service's first known clients over the partitions known so far."""
        with self._lock:
            if self._union is None:
                self._union = union(m for _, m in self._maps.values())
            return list(self._union.get(service, []))

    def complete_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """A new_edge event with the clients over every partition known so far."""
        service = (str(event["dst_workload"]), int(event["dst_port"]), int(event["proto"]))
        return with_clients(event, self.clients(service))


__all__ = ["CHUNK_BYTES", "SERVICE_CLIENTS", "MapChunk", "Service", "ServiceDirectory",
           "ServiceMap", "is_new_edge", "map_records", "parse_map_record", "union",
           "with_clients"]
