"""Inventory topic records: keys, values, tombstones, and live inventories following them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson

from pipeline.core.addresses import encode_ips
from pipeline.core.inventory import entry_from_record
from pipeline.stream.inventory_topic import InventoryFeed, key_text, parse_key, record_of
from pipeline.stream.metrics import Metrics
from tests.conftest import T0

RECORDS = [
    {"ip": "10.1.0.7", "app": "orders-api", "namespace": "shop", "valid_from": T0,
     "valid_to": T0 + 3600, "labels": {"app": "orders-api"}},
    {"ip": "10.1.0.7", "app": "auth", "namespace": "identity", "valid_from": T0 + 3600},
    {"cidr": "10.9.0.0/16", "app": "legacy-db", "namespace": "data", "kind": "vm"},
    {"ip": "fd00::5", "app": "cache", "namespace": "shop"},
]


def owner(inv, ip: str, t: float) -> str:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    idx, addrs = encode_ips(pa.array([ip]))
    wid = int(inv.assign(idx, addrs, np.array([t]))[0])
    return inv.workloads.infos[wid].key


def test_keys_and_records_round_trip() -> None:
    for rec in RECORDS:
        e = entry_from_record(rec)
        assert parse_key(key_text(e)) == e.key
        assert entry_from_record(record_of(e)) == e
    assert key_text(entry_from_record(RECORDS[2])) == "10.9.0.0/16@"
    assert parse_key("10.9.0.0/16@")[2] == -math.inf


def test_feed_applies_updates_and_tombstones_to_live_inventories(tmp_path: Path) -> None:
    seed = tmp_path / "inventory.jsonl"
    seed.write_bytes(orjson.dumps(RECORDS[0]) + b"\n")
    feed = InventoryFeed("inv", {}, Metrics(), internal_cidrs=("10.0.0.0/8",), seed=seed)
    inv = feed.new_inventory()
    assert owner(inv, "10.1.0.7", T0 + 10) == "shop/orders-api"
    assert owner(inv, "10.1.0.7", T0 + 7200) == "unknown:10.1.0.7"
    e1 = entry_from_record(RECORDS[1])
    feed.apply([(key_text(e1).encode(), orjson.dumps(RECORDS[1])),
                (b"bad-key", b"{not json"), (b"x@", None)])  # bad ones are skipped
    assert owner(inv, "10.1.0.7", T0 + 7200) == "identity/auth"
    feed.apply([(key_text(entry_from_record(RECORDS[0])).encode(), None)])  # tombstone
    assert owner(inv, "10.1.0.7", T0 + 10) == "unknown:10.1.0.7"
    assert owner(feed.new_inventory(), "10.1.0.7", T0 + 7200) == "identity/auth"
    assert feed.metrics.inventory_rejects._value.get() == 2


def test_feed_dead_letters_an_entry_with_a_bad_time_and_keeps_the_rest() -> None:
    """A ``valid_from: "nan"`` (or inf, milliseconds, valid_to before valid_from) record is a
    ``bad_inventory`` dead letter naming its key; the good entries still apply."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    metrics = Metrics()
    feed = InventoryFeed("inv", {}, metrics, internal_cidrs=("10.0.0.0/8",))
    inv = feed.new_inventory()
    bad = [{**RECORDS[0], "valid_from": "nan"}, {**RECORDS[0], "valid_to": "inf"},
           {**RECORDS[0], "valid_from": T0 * 1000}, {**RECORDS[0], "valid_to": T0 - 1}]
    good = RECORDS[1]
    batch = {TopicPartition("inv", 0): [
        SimpleNamespace(key=b"10.1.0.7@x", value=orjson.dumps(b), offset=i)
        for i, b in enumerate([*bad, good])]}
    sent: list[object] = []

    async def dead_letter(rejects: list[object]) -> None:
        sent.extend(rejects)

    async def getmany(**_: object) -> object:
        return batch

    feed._consumer = SimpleNamespace(getmany=getmany)  # type: ignore[assignment]
    feed.dead_letter = dead_letter  # type: ignore[assignment]
    assert asyncio.run(feed.poll(10)) == 5
    assert [(r.reason, r.source) for r in sent] == [  # type: ignore[attr-defined]
        ("bad_inventory", f"inv/0@{i}") for i in range(4)]
    details = [r.detail for r in sent]  # type: ignore[attr-defined]
    assert details[0] == ("inventory entry '10.1.0.7@x': valid_from 'nan' is not a finite "
                          "time; leave it out for an open interval")
    assert "outside 1970..2100" in details[2] and "must be after valid_from" in details[3]
    assert sent[0].raw == orjson.dumps(bad[0])  # type: ignore[attr-defined]
    assert metrics.dead_letters.labels("bad_inventory")._value.get() == 4
    assert len(feed.entries) == 1 and owner(inv, "10.1.0.7", T0 + 7200) == "identity/auth"
    assert owner(inv, "10.1.0.7", T0 + 10) == "unknown:10.1.0.7"
