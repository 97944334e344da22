from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core.addresses import encode_ips
from pipeline.core.inventory import load_inventory
from pipeline.errors import InputError
from tests.conftest import make_inventory


def owners(inv, ips, times):
    idx, addrs = encode_ips(pa.array(ips))
    wids = inv.assign(idx, addrs, np.asarray(times, dtype=float))
    return [inv.workloads.infos[w].key for w in wids]


def test_ip_reuse_is_resolved_at_the_flows_own_time():
    inv = make_inventory([
        {"ip": "10.1.0.7", "app": "orders-api", "namespace": "shop", "valid_from": 100,
         "valid_to": 200},
        {"ip": "10.1.0.7", "app": "auth", "namespace": "identity", "valid_from": 250},
    ])
    got = owners(inv, ["10.1.0.7"] * 5, [150, 199.999, 200, 249, 300])
    assert got == ["shop/orders-api", "shop/orders-api", "unknown:10.1.0.7",
                   "unknown:10.1.0.7", "identity/auth"]


def test_most_specific_prefix_wins_then_falls_back_outside_its_validity():
    inv = make_inventory([
        {"cidr": "10.20.0.0/16", "app": "legacy", "kind": "vm"},
        {"ip": "10.20.0.5", "app": "db", "namespace": "shop", "valid_from": 100,
         "valid_to": 200},
    ])
    assert owners(inv, ["10.20.0.5", "10.20.0.5", "10.20.9.9"], [150, 250, 150]) == [
        "shop/db", "legacy", "legacy"]


def test_ipv6_and_unknowns():
    inv = make_inventory([{"cidr": "fd00:1::/64", "app": "v6app", "namespace": "n"}])
    got = owners(inv, ["fd00:1::5", "fd00:2::1", "8.8.8.8", "192.168.1.1"], [0, 0, 0, 0])
    assert got == ["n/v6app", "unknown:fd00:2::1", "world", "unknown:192.168.1.1"]


def test_updates_replace_entries_and_clear_caches():
    inv = make_inventory([{"ip": "10.0.0.1", "app": "a", "namespace": "n"}])
    assert owners(inv, ["10.0.0.1"], [0]) == ["n/a"]
    inv.update([], removed=[next(inv.entries()).key])
    inv.update(make_inventory([{"ip": "10.0.0.1", "app": "b", "namespace": "n"}]).entries())
    assert owners(inv, ["10.0.0.1"], [0]) == ["n/b"]


def test_load_inventory_formats_and_errors(tmp_path):
    j = tmp_path / "inv.jsonl"
    j.write_text('{"ip": "10.0.0.1", "app": "a", "labels": {"app": "a"}}\n'
                 '{"cidr": "10.9.0.0/24", "app": "b", "valid_from": "2026-01-01T00:00:00Z"}\n')
    assert len(load_inventory(j)) == 2
    c = tmp_path / "inv.csv"
    c.write_text("ip,app,namespace,labels\n10.0.0.1,a,n,app=a;tier=web\n")
    inv = load_inventory(c)
    assert next(inv.entries()).info.labels == (("app", "a"), ("tier", "web"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ip": "10.0.0.1", "app": "a"}\n{"ip": "300.1.1.1", "app": "b"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: '300.1.1.1' is not an IP"):
        load_inventory(bad)
    with pytest.raises(InputError, match="cannot read inventory"):
        load_inventory(tmp_path / "missing.jsonl")
    noip = tmp_path / "x.csv"
    noip.write_text("host,app\nx,y\n")
    with pytest.raises(InputError, match="no 'ip' or 'cidr' column"):
        load_inventory(noip)
