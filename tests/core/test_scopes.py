"""End to end through the core: orientation and local-scope traffic in learning and scoring."""

from __future__ import annotations

from pipeline.core.pipeline import Pipeline
from pipeline.core.settings import CoreSettings
from tests.conftest import DAY, T0, flow, flows_table, make_inventory

INV = [{"ip": "10.0.0.1", "app": "web", "namespace": "shop"},
       {"ip": "10.0.0.2", "app": "cache", "namespace": "shop"}]
AFTER = T0 + 3 * DAY + 10 * 3600


def run(records):
    core = Pipeline(CoreSettings(audit_days=3), make_inventory(INV))
    out = core.process(flows_table(sorted(records, key=lambda r: r["start"])))
    return core, out.violations + core.flush().violations


def audit():
    # web → cache on a port outside the service table, from ordinary ephemeral ports
    return [flow(T0 + d * DAY + h * 3600, "10.0.0.1", "10.0.0.2", 40000 + h, 9999)
            for d in range(3) for h in range(24)]


def test_a_client_on_ephemeral_port_50051_raises_no_new_edge():
    after = [flow(AFTER, "10.0.0.1", "10.0.0.2", 50051, 9999),
             flow(AFTER + 1, "10.0.0.2", "10.0.0.1", 9999, 50051)]
    core, violations = run(audit() + after)
    assert violations == []
    assert len(core.baseline) == 1


def test_broadcast_and_multicast_are_neither_learned_nor_alerted():
    chatter = [flow(T0 + h * 3600, "10.0.0.1", "224.0.0.251", 5353, 5353, proto=17)
               for h in range(24)]
    after = [flow(AFTER, "10.0.0.2", "239.255.255.250", 41000, 1900, proto=17),
             flow(AFTER + 5, "10.0.0.2", "255.255.255.255", 68, 67, proto=17),
             flow(AFTER + 9, "10.0.0.1", "169.254.169.254", 42000, 80)]
    core, violations = run(audit() + chatter + after)
    assert violations == []
    assert len(core.baseline) == 1  # web → cache only
    assert core.counts["local_scope_flows"] == len(chatter) + len(after)
    assert all(r.peer.workload is None or r.peer.workload.kind == "pod"
               for r in core.candidate_rules())
