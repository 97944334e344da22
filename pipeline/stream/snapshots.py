"""Partition snapshots on the compacted ``state`` topic: the worker's changelog.

State partition ``p`` holds the snapshots of internal partition ``p`` (so a restore reads one
small partition). A snapshot can be larger than a Kafka message, so it is written as chunks
under keys ``A/0, A/1, …`` or ``B/0, …`` (two slots, used in turn) followed by a manifest
under key ``manifest`` naming the slot, the chunk count and a checksum. A crash while
writing chunks touches only the slot the current manifest does not name, so the previous
snapshot stays readable; compaction keeps the latest value per key, i.e. both slots and the
latest manifest.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from pipeline.errors import BrokerError
from pipeline.stream.reader import PartitionReader

MANIFEST = b"manifest"


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class SnapshotStore:
    """Write and read partition snapshots on one compacted topic."""

    def __init__(self, producer: AIOKafkaProducer, reader: PartitionReader, topic: str,
                 *, chunk_bytes: int) -> None:
        self.producer = producer
        self.reader = reader
        self.topic = topic
        self.chunk_bytes = chunk_bytes
        self._slot: dict[int, str] = {}  # partition → slot of its current manifest

    async def write(self, partition: int, blob: bytes, *, offset: int) -> None:
        """Store ``blob`` as partition ``partition``'s latest snapshot (covering ``offset``)."""
        slot = "B" if self._slot.get(partition) == "A" else "A"
        chunks = [blob[i:i + self.chunk_bytes] for i in range(0, len(blob), self.chunk_bytes)]
        futures = []
        for i, chunk in enumerate(chunks or [b""]):
            futures.append(await self.producer.send(
                self.topic, value=chunk, key=f"{slot}/{i}".encode(), partition=partition))
        manifest = orjson.dumps({"slot": slot, "chunks": max(1, len(chunks)),
                                 "bytes": len(blob), "digest": _digest(blob),
                                 "offset": offset})
        futures.append(await self.producer.send(self.topic, value=manifest, key=MANIFEST,
                                                partition=partition))
        await asyncio.gather(*futures)
        self._slot[partition] = slot

    async def read(self, partition: int) -> bytes | None:
        """The latest complete snapshot of ``partition``, or None when there is none."""
        latest: dict[bytes, bytes] = {}
        manifest: dict[str, Any] | None = None
        async for rec in self.reader.read(self.topic, partition):
            if rec.key == MANIFEST and rec.value is not None:
                manifest = orjson.loads(rec.value)
            elif rec.key is not None and rec.value is not None:
                latest[rec.key] = rec.value
        if manifest is None:
            return None
        slot = manifest["slot"]
        parts = [latest.get(f"{slot}/{i}".encode()) for i in range(int(manifest["chunks"]))]
        if any(p is None for p in parts):
            raise BrokerError(f"snapshot of partition {partition} on {self.topic} is missing "
                              "chunks; was the topic's compaction or retention changed?")
        blob = b"".join(p for p in parts if p is not None)[: int(manifest["bytes"])]
        if _digest(blob) != manifest["digest"]:
            raise BrokerError(f"snapshot of partition {partition} on {self.topic} fails its "
                              "checksum; delete the partition's manifest to start it afresh")
        self._slot[partition] = slot
        return blob


__all__ = ["SnapshotStore"]
