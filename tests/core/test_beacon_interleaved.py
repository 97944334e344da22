"""Beacons on a host pair that also carries ordinary connections."""

from __future__ import annotations

import numpy as np

from tests.conftest import DAY, T0, flow
from tests.core.test_hosts import AFTER, AUDIT_DAYS, WS, audit, host_findings, office, run

PEER = "198.51.100.7"


def _beacon_with_a_normal_flow(split_after: int, beats: int = 12, period: float = 300.0
                               ) -> list[dict]:
    rng = np.random.default_rng(11)
    t = AFTER + np.arange(beats) * period + rng.uniform(-0.03, 0.03, beats) * period
    recs = [flow(float(x), WS[6], PEER, 53000 + i, 443) for i, x in enumerate(t)]
    # an ordinary connection on the same pair splits one interval in two
    recs.append(flow(float(t[split_after] + 0.4 * period), WS[6], PEER, 53900, 443))
    return recs


def test_a_beacon_whose_pair_also_carries_a_normal_flow_is_found() -> None:
    extra = _beacon_with_a_normal_flow(split_after=2)
    _, violations, _ = run(audit() + office(T0 + AUDIT_DAYS * DAY, 1, seed=6) + extra)
    found = [v for v in host_findings(violations) if v["type"] == "beacon"]
    assert found and {(v["src_ip"], v["dst_ip"]) for v in found} == {(WS[6], PEER)}
    assert all(abs(v["evidence"]["seen"]["period_s"] - 300) < 30 for v in found)


def test_ordinary_poisson_connections_on_a_pair_are_no_beacon() -> None:
    rng = np.random.default_rng(12)
    t = AFTER + np.cumsum(rng.exponential(300, 200))
    extra = [flow(float(x), WS[7], PEER, 53000 + i, 443) for i, x in enumerate(t)]
    _, violations, _ = run(audit() + office(T0 + AUDIT_DAYS * DAY, 1, seed=6) + extra)
    assert [v for v in host_findings(violations) if v["type"] == "beacon"] == []


def test_a_beacon_on_a_pair_with_ordinary_traffic_all_along_is_found() -> None:
    """A 324 s beacon for 40 beats on a pair that carries an ordinary connection about every
    third period: no run of clean intervals is long enough, most intervals are still on the
    beat."""
    rng = np.random.default_rng(13)
    t = AFTER + np.arange(40) * 324.0 + rng.uniform(-0.01, 0.01, 40) * 324
    normal = AFTER + np.cumsum(rng.exponential(1000, 14))
    extra = [flow(float(x), WS[8], PEER, 54000 + i, 443) for i, x in enumerate(t)]
    extra += [flow(float(x), WS[8], PEER, 55000 + i, 443, nbytes=20_000)
              for i, x in enumerate(normal[normal < t[-1]])]
    _, violations, _ = run(audit() + office(T0 + AUDIT_DAYS * DAY, 1, seed=6) + extra)
    found = [v for v in host_findings(violations) if v["type"] == "beacon"]
    assert found and {(v["src_ip"], v["dst_ip"], v["dst_port"]) for v in found} == {
        (WS[8], PEER, 443)}
    assert all(abs(v["evidence"]["seen"]["period_s"] - 324) < 20 for v in found)
