from __future__ import annotations

import numpy as np

from pipeline.core.enrich import Orienter, enrich
from tests.conftest import T0, flow, flows_table, make_inventory

INV = [{"ip": "10.0.0.1", "app": "web", "namespace": "shop"},
       {"ip": "10.0.0.2", "app": "db", "namespace": "shop"}]


def oriented(records):
    inv = make_inventory(INV)
    e = enrich(flows_table(records), inv, Orienter())
    keys = inv.workloads.keys()
    return [(keys[c], keys[s], int(p)) for c, s, p in
            zip(e.client_wid, e.server_wid, e.service_port, strict=True)]


def test_request_and_response_records_give_the_same_edge():
    got = oriented([flow(T0, "10.0.0.1", "10.0.0.2", 51234, 5432),
                    flow(T0, "10.0.0.2", "10.0.0.1", 5432, 51234)])
    assert got == [("shop/web", "shop/db", 5432)] * 2


def test_high_ports_use_syn_then_remembered_listener_then_ephemeral_range():
    got = oriented([
        flow(T0, "10.0.0.1", "10.0.0.2", 40000, 30123, flags=0x02),  # pure SYN: dst listens
        flow(T0 + 1, "10.0.0.2", "10.0.0.1", 30123, 45000),  # reply: listener remembered
        flow(T0 + 2, "10.0.0.2", "10.0.0.1", 20000, 50000),  # 50000 is ephemeral
    ])
    assert got == [("shop/web", "shop/db", 30123), ("shop/web", "shop/db", 30123),
                   ("shop/web", "shop/db", 20000)]


def test_source_identity_wins_over_inventory():
    rec = flow(T0, "10.0.0.1", "10.0.0.2", 40000, 5432)
    rec["src_workload"] = {"app": "hubble-web", "namespace": "shop"}
    inv = make_inventory(INV)
    e = enrich(flows_table([rec]), inv, Orienter())
    assert inv.workloads.infos[int(e.client_wid[0])].key == "shop/hubble-web"
    assert np.array_equal(e.service_port, [5432])
