"""Per-host detectors during the audit: their hits are audit findings, not learned."""

from __future__ import annotations

import numpy as np

from pipeline.core.baseline import edge_keys
from pipeline.core.settings import CoreSettings
from pipeline.core.snapshot import dump_state, load_state
from tests.conftest import DAY, T0, flow, flows_table, make_inventory
from tests.core.test_hosts import AUDIT_DAYS, INV, WS, audit, run

DURING = T0 + 2 * DAY + 11 * 3600  # after the audit's warm-up (its first day), a weekday 11:00


def _worm(t0: float) -> list[dict]:
    return [flow(t0 + 45 * i, WS[0], WS[1 + i], 50000 + i, 445) for i in range(20)]


def _audit_fan_outs(violations: list[dict]) -> list[dict]:
    return [v for v in violations if v["type"] == "fan_out" and v["mode"] == "audit"]


def test_a_worm_during_the_audit_is_an_audit_finding_whose_edge_is_not_trusted() -> None:
    core, violations, _ = run(audit() + _worm(DURING))
    found = _audit_fan_outs(violations)
    assert len(found) == 1
    v = found[0]
    assert v["src_ip"] == WS[0] and v["dst_port"] == 445 and v["detector"] == "audit"
    assert len(set(v["evidence"]["seen"]["dst_ips"]) & set(WS[1:21])) >= 5
    wid = core.workloads.lookup("corp", "workstation")
    key = int(edge_keys(np.array([wid]), np.array([wid]), np.array([445]), np.array([6]))[0])
    assert key in core.audit.findings_
    # and no fan-out violation outside the audit's findings
    assert [x for x in violations if x["type"] == "fan_out" and x["mode"] != "audit"] == []


def test_ordinary_office_traffic_during_the_audit_is_no_finding() -> None:
    _, violations, _ = run(audit())
    assert _audit_fan_outs(violations) == []


def test_no_audit_fan_out_in_the_warm_up() -> None:
    _, violations, _ = run(audit() + _worm(T0 + 11 * 3600))
    assert _audit_fan_outs(violations) == []


def test_audit_findings_do_not_depend_on_batches_or_snapshots() -> None:
    recs = sorted(audit() + _worm(DURING), key=lambda r: r["start"])
    _, v1, _ = run(recs, batches=1)
    _, v7, _ = run(recs, batches=7)
    assert _audit_fan_outs(v1) and _audit_fan_outs(v1) == _audit_fan_outs(v7)
    settings = CoreSettings(audit_days=AUDIT_DAYS)
    cut = next(i for i, r in enumerate(recs) if r["start"] >= DURING + 300)  # mid-worm
    a = make_core(settings)
    a.process(flows_table(recs[:cut]))
    b = load_state(dump_state(a), settings, make_inventory(INV))
    rest = flows_table(recs[cut:])
    va = a.process(rest).violations + a.flush().violations
    vb = b.process(rest).violations + b.flush().violations
    assert _audit_fan_outs(va) == _audit_fan_outs(vb) == _audit_fan_outs(v1)


def make_core(settings: CoreSettings):  # type: ignore[no-untyped-def]
    from pipeline.core.pipeline import Pipeline

    return Pipeline(settings, make_inventory(INV))
