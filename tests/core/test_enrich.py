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


def test_ephemeral_source_port_equal_to_a_listed_service_port_stays_the_client():
    # 50051 (gRPC) is in the service table but inside the ephemeral range: a client that
    # picked it as its source port must not be flipped into a server (issue 9 regression)
    got = oriented([flow(T0, "10.0.0.1", "10.0.0.2", 50051, 9999),
                    flow(T0, "10.0.0.2", "10.0.0.1", 9999, 50051)])
    assert got == [("shop/web", "shop/db", 9999)] * 2


def test_both_ends_ephemeral_the_listed_port_is_the_service():
    got = oriented([flow(T0, "10.0.0.1", "10.0.0.2", 40000, 50051),
                    flow(T0, "10.0.0.2", "10.0.0.1", 50051, 40000)])
    assert got == [("shop/web", "shop/db", 50051)] * 2


def test_confirmed_listener_wins_over_a_listed_client_port():
    # a client whose (non-Linux) ephemeral range gave it source port 3306 talks to a listener
    # on 7777 that a pure SYN confirmed earlier
    got = oriented([flow(T0, "10.0.0.1", "10.0.0.2", 40000, 7777, flags=0x02),
                    flow(T0 + 1, "10.0.0.1", "10.0.0.2", 3306, 7777),
                    flow(T0 + 1, "10.0.0.2", "10.0.0.1", 7777, 3306)])
    assert got == [("shop/web", "shop/db", 7777)] * 3


def test_listed_port_wins_over_a_privileged_client_port():
    # NFS clients use reserved source ports (< 1024) towards 2049
    got = oriented([flow(T0, "10.0.0.1", "10.0.0.2", 800, 2049),
                    flow(T0, "10.0.0.2", "10.0.0.1", 2049, 800)])
    assert got == [("shop/web", "shop/db", 2049)] * 2


def scoped(records, inv=INV):
    inventory = make_inventory(inv)
    e = enrich(flows_table(records), inventory, Orienter())
    keys = inventory.workloads.keys()
    kinds = inventory.workloads.column("kind")
    return [(keys[c], keys[s], int(p), kinds[s], bool(loc)) for c, s, p, loc in
            zip(e.client_wid, e.server_wid, e.service_port, e.local, strict=True)]


def test_broadcast_multicast_and_link_local_are_scopes_not_hosts():
    got = scoped([
        flow(T0, "10.0.0.1", "224.0.0.251", 5353, 5353, proto=17),  # mDNS
        flow(T0, "10.0.0.1", "239.255.255.250", 40000, 1900, proto=17),  # SSDP
        flow(T0, "0.0.0.0", "255.255.255.255", 68, 67, proto=17),  # DHCP discover
        flow(T0, "10.0.0.2", "ff02::fb", 5353, 5353, proto=17),
        flow(T0, "10.0.0.1", "169.254.169.254", 41000, 80),  # cloud metadata
        flow(T0, "fe80::1", "fe80::2", 40000, 22),
        flow(T0, "10.0.0.1", "10.0.0.2", 40000, 5432),
    ])
    assert got == [
        ("shop/web", "multicast", 5353, "multicast", True),
        ("shop/web", "multicast", 1900, "multicast", True),
        ("unspecified", "broadcast", 67, "broadcast", True),
        ("shop/db", "multicast", 5353, "multicast", True),
        ("shop/web", "link-local", 80, "link-local", True),
        ("link-local", "link-local", 22, "link-local", True),
        ("shop/web", "shop/db", 5432, "pod", False),
    ]


def test_a_group_address_is_never_the_client_even_on_a_lower_port():
    # a multicast sender on a high port to group port 5353: the group is the destination
    got = scoped([flow(T0, "10.0.0.1", "224.0.0.251", 60000, 5353, proto=17),
                  flow(T0, "10.0.0.1", "224.0.0.1", 1000, 40000, proto=17)])
    assert [(c, s, p) for c, s, p, _, _ in got] == [("shop/web", "multicast", 5353),
                                                   ("shop/web", "multicast", 40000)]


def test_an_inventory_entry_for_a_link_local_address_makes_it_a_workload():
    inv = [*INV, {"ip": "169.254.169.254", "app": "metadata", "namespace": "cloud",
                  "kind": "external"}]
    got = scoped([flow(T0, "10.0.0.1", "169.254.169.254", 41000, 80)], inv)
    assert got == [("shop/web", "cloud/metadata", 80, "external", False)]


def _reference_orientation(sport: int, dport: int, flags: int, syn_listeners: set) -> bool:
    """The documented order, one flow at a time (src is server?)."""
    from pipeline.core.enrich import EPHEMERAL_FLOOR, SERVICE_PORTS

    table = set(SERVICE_PORTS.tolist())
    if flags >= 0 and flags & 0x02 and not flags & 0x10:
        return False
    strong = {p for p in table if p < EPHEMERAL_FLOOR}
    s_eph, d_eph = sport >= EPHEMERAL_FLOOR, dport >= EPHEMERAL_FLOOR
    if sport in strong and d_eph:
        return True
    if dport in strong and s_eph:
        return False
    s_l, d_l = ("a", sport) in syn_listeners, ("b", dport) in syn_listeners
    rules = [(s_l, d_l), (d_eph, s_eph), (sport in strong, dport in strong),
             (0 < sport < 1024, 0 < dport < 1024), (sport in table, dport in table)]
    for src_side, dst_side in rules:
        if src_side != dst_side:
            return bool(src_side)
    return sport != dport and sport > 0 and dport > 0 and sport < dport


def test_orientation_equals_a_one_flow_at_a_time_reference_on_random_ports():
    from pipeline.core.enrich import SERVICE_PORTS

    rng = np.random.default_rng(9)
    n = 4000
    pool = np.r_[SERVICE_PORTS, [0, 1, 800, 1023, 1024, 7777, 32767, 32768, 40000, 65535]]
    pick = lambda: np.where(rng.random(n) < 0.6, rng.choice(pool, n),  # noqa: E731
                            rng.integers(0, 65536, n)).astype(np.int32)
    sport, dport = pick(), pick()
    flags = rng.choice([-1, 0x02, 0x12, 0x1B], n).astype(np.int16)
    # address 0 is always the source, address 1 the destination; a few listeners known
    orienter = Orienter()
    listeners = {(1, 7777), (0, 40000), (1, 443)}
    orienter.listeners_ = set(listeners)
    src_addr, dst_addr = np.zeros(n, np.int64), np.ones(n, np.int64)
    got = orienter.orient(sport, dport, flags, src_addr, dst_addr, [0, 1])
    named = {("a" if a == 0 else "b", p) for a, p in listeners}
    # a batch's pure SYNs confirm their listeners before the batch is oriented
    named |= {("b", int(d)) for d, f in zip(dport, flags, strict=True) if f in (0x02,)}
    want = [_reference_orientation(int(s), int(d), int(f), named)
            for s, d, f in zip(sport, dport, flags, strict=True)]
    assert got.tolist() == want
