"""The inventory on a compacted topic: every worker reads it whole and follows it.

Key ``<ip|cidr>@<valid_from>`` (``valid_from`` in epoch seconds, empty when unbounded) —
the same identity :class:`~pipeline.core.inventory.InventoryEntry` uses, so a newer record
replaces an older one and a tombstone (null value) removes the entry. Values are inventory
JSON records (the ``inventory.jsonl`` shape). Workers read the topic from the beginning with
their own group-less consumer before processing any flow, optionally on top of a seed file
(``inventory_file``), and apply later records to every live inventory.

Publish a file: ``python -m pipeline.stream.inventory_topic FILE [--bootstrap H:P] [--topic T]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.config import KafkaSettings
from pipeline.core.addresses import int_to_ip, network_to_int
from pipeline.core.columns import Reject
from pipeline.core.inventory import Inventory, InventoryEntry, entry_from_record, load_inventory
from pipeline.core.normalize import parse_time_text
from pipeline.core.text import excerpt
from pipeline.errors import BrokerError, SegflowError
from pipeline.sources.base import RAW_KEEP
from pipeline.stream.clients import ensure_topics, kafka_python_kwargs, unreachable
from pipeline.stream.clients import inventory_topic as inventory_spec
from pipeline.stream.metrics import Metrics

log = logging.getLogger(__name__)

EntryKey = tuple[int, int, float]
BAD_INVENTORY = "bad_inventory"  # dead-letter reason of an unusable inventory-topic record


def _where(net: int, plen: int) -> str:
    ip = int_to_ip(net)
    if plen == 128:
        return ip
    return f"{ip}/{plen - 96 if net >> 32 == 0xFFFF else plen}"


def key_text(entry: InventoryEntry) -> str:
    """The topic key of an entry: ``10.1.0.7@1767571200.0``, ``10.0.0.0/8@``."""
    vf = "" if entry.valid_from == -math.inf else repr(entry.valid_from)
    return f"{_where(entry.net, entry.plen)}@{vf}"


def parse_key(text: str) -> EntryKey:
    """Inverse of :func:`key_text` (ValueError if malformed)."""
    where, _, vf = text.rpartition("@")
    if not where:
        raise ValueError(f"inventory key {text!r} is not '<ip|cidr>@<valid_from>'")
    net, plen = network_to_int(where)
    if not vf:
        return net, plen, -math.inf
    t = parse_time_text(vf)
    if t is None:
        raise ValueError(f"inventory key {text!r}: valid_from is not a time")
    return net, plen, t


def record_of(entry: InventoryEntry) -> dict[str, Any]:
    """An inventory JSON record for an entry."""
    i = entry.info
    rec: dict[str, Any] = {"app": i.app, "namespace": i.namespace, "kind": i.kind}
    rec["ip" if entry.plen == 128 else "cidr"] = _where(entry.net, entry.plen)
    if i.env:
        rec["env"] = i.env
    if i.service_account:
        rec["service_account"] = i.service_account
    if i.labels:
        rec["labels"] = dict(i.labels)
    if entry.valid_from != -math.inf:
        rec["valid_from"] = entry.valid_from
    if entry.valid_to != math.inf:
        rec["valid_to"] = entry.valid_to
    return rec


class InventoryFeed:
    """The worker's view of the inventory topic; hands out inventories it keeps up to date."""

    def __init__(self, topic: str, client: dict[str, Any], metrics: Metrics, *,
                 internal_cidrs: Iterable[str], seed: Path | None = None) -> None:
        self.topic = topic
        self.metrics = metrics
        self.internal_cidrs = tuple(internal_cidrs)
        self._client = client
        self.entries: dict[EntryKey, InventoryEntry] = {}
        if seed is not None:
            for e in load_inventory(seed, internal_cidrs=self.internal_cidrs).entries():
                self.entries[e.key] = e
        # live inventories and their locks: users on other threads hold the lock while they
        # enrich, and updates take it, so an update never lands in the middle of a batch
        self._live: weakref.WeakKeyDictionary[Inventory, threading.Lock] = (
            weakref.WeakKeyDictionary())
        self._consumer: AIOKafkaConsumer | None = None
        self.records = 0
        # sends bad records to the dead-letter topic (set by the worker; None: log and count)
        self.dead_letter: Callable[[list[Reject]], Awaitable[None]] | None = None

    def new_inventory(self) -> Inventory:
        """A fresh inventory with the current entries, updated as the topic changes."""
        inv = Inventory(self.entries.values(), internal_cidrs=self.internal_cidrs)
        self._live[inv] = threading.Lock()
        return inv

    def lock(self, inventory: Inventory) -> threading.Lock:
        """The lock to hold while using ``inventory`` off the event loop's thread."""
        return self._live[inventory]

    async def start(self, partitions: int, timeout: float) -> None:
        """Read the topic (``partitions`` partitions) from the beginning to its current end."""
        c = self._consumer = AIOKafkaConsumer(**self._client, group_id=None,
                                              enable_auto_commit=False, fetch_max_wait_ms=100)
        await c.start()
        tps = [TopicPartition(self.topic, p) for p in range(partitions)]
        c.assign(tps)
        begin = await c.beginning_offsets(tps)
        end = await c.end_offsets(tps)
        for tp in tps:
            c.seek(tp, begin[tp])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while [tp for tp in tps if await c.position(tp) < end[tp]]:
            if loop.time() > deadline:
                raise BrokerError(f"reading inventory topic {self.topic} took over {timeout:g} s")
            await self.poll(500)
        log.info("inventory: %d entries (%d topic records)", len(self.entries), self.records)
        self.warn_if_empty()

    def warn_if_empty(self) -> bool:
        """Log a warning when there is no entry at all (True then): only the identities the
        flows carry name workloads, every other internal address becomes unknown."""
        if self.entries:
            return False
        log.warning("inventory is empty (topic %s has no entries and no inventory_file seeds "
                    "it): only identities the flows carry name workloads, other internal "
                    "addresses become unknown:<ip>; publish one with "
                    "`python -m pipeline.stream.inventory_topic FILE`", self.topic)
        return True

    async def poll(self, timeout_ms: int) -> int:
        """Apply whatever arrived within ``timeout_ms``; returns records read."""
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=10_000)
        records = [(r.key, r.value, f"{tp.topic}/{tp.partition}@{r.offset}")
                   for tp, recs in batch.items() for r in recs]
        if records:
            rejects = self.apply(records)
            if rejects and self.dead_letter is not None:
                await self.dead_letter(rejects)
        return len(records)

    def apply(self, records: Iterable[tuple[bytes | None, bytes | None]
                                      | tuple[bytes | None, bytes | None, str]]) -> list[Reject]:
        """Apply topic records (key, value[, where]); a bad one is logged, counted and
        returned as a ``bad_inventory`` reject naming its key, never raised."""
        updated: dict[EntryKey, InventoryEntry] = {}
        removed: set[EntryKey] = set()
        rejects: list[Reject] = []
        for key, value, *where in records:
            self.records += 1
            try:
                if value is None:
                    k = parse_key((key or b"").decode())
                    removed.add(k)
                    updated.pop(k, None)
                    continue
                obj = orjson.loads(value)
                if not isinstance(obj, dict):
                    raise ValueError("an inventory record must be a JSON object")
                e = entry_from_record(obj)
            except (ValueError, UnicodeDecodeError) as exc:
                name = excerpt((key or b"").decode("utf-8", "replace"))
                log.warning("inventory topic: skipping record %s: %s", name, exc)
                self.metrics.inventory_rejects.inc()
                self.metrics.dead_letters.labels(BAD_INVENTORY).inc()
                rejects.append(Reject(BAD_INVENTORY, f"inventory entry {name}: {exc}",
                                      (value or key or b"")[:RAW_KEEP],
                                      where[0] if where else self.topic))
                continue
            updated[e.key] = e
            removed.discard(e.key)
        for k in removed:
            self.entries.pop(k, None)
        self.entries.update(updated)
        if updated or removed:
            for inv, lock in list(self._live.items()):
                with lock:
                    inv.update(updated.values(), removed=removed)
        return rejects

    async def run(self) -> None:
        """Follow the topic until cancelled."""
        while True:
            await self.poll(1000)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


def publish_inventory(path: Path, kafka: KafkaSettings, topic: str, *,
                      internal_cidrs: Iterable[str] = ()) -> int:
    """Publish every entry of an inventory file to the topic; returns the count."""
    from kafka.errors import KafkaError, KafkaTimeoutError
    from kafka.producer import KafkaProducer

    cidrs = tuple(internal_cidrs) or None
    inv = load_inventory(path) if cidrs is None else load_inventory(path, internal_cidrs=cidrs)
    ensure_topics(kafka, [inventory_spec(topic)], [])
    try:
        producer = KafkaProducer(**kafka_python_kwargs(kafka), acks="all",
                                 bootstrap_timeout_ms=int(kafka.connect_timeout * 1000))
    except (KafkaTimeoutError, OSError) as exc:
        raise unreachable(kafka) from exc
    try:
        futures = [producer.send(topic, key=key_text(e).encode(),
                                 value=orjson.dumps(record_of(e))) for e in inv.entries()]
        producer.flush()
        for f in futures:
            f.get(timeout=kafka.connect_timeout)
    except KafkaError as exc:
        raise BrokerError(f"publishing the inventory to {topic} failed: {exc}") from exc
    finally:
        producer.close()
    return len(futures)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.stream.inventory_topic FILE``: publish an inventory file."""
    p = argparse.ArgumentParser(prog="python -m pipeline.stream.inventory_topic",
                                description="publish an inventory file to the inventory topic")
    p.add_argument("file", type=Path)
    p.add_argument("--bootstrap", default=None, help="default: SEGFLOW_KAFKA__BOOTSTRAP")
    p.add_argument("--topic", default=None, help="default: topics.inventory")
    args = p.parse_args(argv)
    from pipeline.config import load_settings

    try:
        s = load_settings()
        kafka = s.kafka if args.bootstrap is None else s.kafka.model_copy(
            update={"bootstrap": args.bootstrap})
        n = publish_inventory(args.file, kafka, args.topic or s.topics.inventory,
                              internal_cidrs=s.core_settings().internal_cidrs)
    except SegflowError as exc:
        print(f"segflow: error: {exc}", file=sys.stderr)
        return 2
    if not n:
        print(f"segflow: warning: {args.file} has no entries: nothing published",
              file=sys.stderr)
    print(f"published {n} inventory entries to {args.topic or s.topics.inventory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["InventoryFeed", "key_text", "main", "parse_key", "publish_inventory", "record_of"]
