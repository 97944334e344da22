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
