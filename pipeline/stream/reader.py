"""Group-less reads of one partition's offset range (snapshots, catch-up after a restore).

One aiokafka consumer without a group, assigned to one partition at a time. Reads go from
explicit offsets to the partition's end as it was when the read began, so they always
finish; nothing is committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.errors import BrokerError


class PartitionReader:
    """Reads ``[start, end)`` of a topic partition, one read at a time."""

    def __init__(self, client: dict[str, Any], *, max_fetch_bytes: int = 16 << 20) -> None:
        self._client = client
        self._max_fetch_bytes = max_fetch_bytes
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            **self._client, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=20,
            max_partition_fetch_bytes=self._max_fetch_bytes)
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def end_offsets(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """The current end offset of each partition of ``topic``."""
        consumer = self._consumer
        if consumer is None:
            raise BrokerError("partition reader used before start(); this is a bug")
        async with self._lock:
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    async def read(self, topic: str, partition: int, start: int | None = None,
                   end: int | None = None) -> AsyncIterator[Any]:
        """Records of ``topic``/``partition`` from ``start`` (default: the log start) up to
        ``end`` (default: the current end), in offset order. Offsets retention already
        deleted are skipped: the first record may be after ``start``."""
        consumer = self._consumer
        if consumer is None:
            raise BrokerError("partition reader used before start(); this is a bug")
        tp = TopicPartition(topic, partition)
        async with self._lock:
            first = (await consumer.beginning_offsets([tp]))[tp]
            last = (await consumer.end_offsets([tp]))[tp]
            lo = first if start is None else max(start, first)
            hi = last if end is None else min(end, last)
            if lo >= hi:
                return
            consumer.assign([tp])
            try:
                consumer.seek(tp, lo)
                while await consumer.position(tp) < hi:
                    batch = await consumer.getmany(tp, timeout_ms=1000)
                    for rec in batch.get(tp, []):
                        if rec.offset >= hi:
                            return
                        yield rec
            finally:
                consumer.assign([])


__all__ = ["PartitionReader"]
