"""The attack kinds that hide inside known edges, and the office network they use."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.errors import ConfigError
from pipeline.generate import GenerateConfig, build_estate, iter_flow_chunks
from pipeline.generate.config import ATTACK_KINDS

CFG = GenerateConfig(seed=4, apps=6, days=12, audit_days=7, workstations=30,
                     flows_per_day=6_000, attack_kinds=ATTACK_KINDS)


@pytest.fixture(scope="module")
def estate():
    est = build_estate(CFG)
    flows = pa.concat_tables(list(iter_flow_chunks(est))).to_pydict()
    cols = {k: np.array(v) for k, v in flows.items() if k in (
        "start", "src_ip", "dst_ip", "src_port", "dst_port", "bytes", "action")}
    return est, cols


def _episodes(est):
    return {e["type"]: e for e in est.truth if e["malicious"]}


def _sent(cols, ep):
    return ((cols["src_ip"] == ep["src_ip"]) & (cols["start"] >= ep["start"])
            & (cols["start"] <= ep["end"]))


def test_every_kind_is_generated_and_only_the_audit_attack_is_in_the_audit(estate):
    est, _ = estate
    eps = _episodes(est)
    kinds = {k for k in ATTACK_KINDS if k != "audit_attack"}
    assert kinds <= set(eps)
    audit = [e for e in eps.values() if e["phase"] == "audit"]
    assert len(audit) == 1 and audit[0]["type"].startswith("audit_")
    assert audit[0]["start"] < CFG.audit_end
    for e in eps.values():
        if e["phase"] != "audit":
            assert CFG.audit_end <= e["start"] < CFG.end


def test_worm_spreads_over_the_workstation_smb_edge_the_audit_saw(estate):
    est, cols = estate
    worm = _episodes(est)["worm"]
    sel = _sent(cols, worm) & (cols["dst_port"] == 445)
    targets = set(cols["dst_ip"][sel])
    assert len(targets) >= 6 and all(t.startswith("10.40.") for t in targets)
    before = ((cols["start"] < CFG.audit_end) & np.char.startswith(cols["src_ip"].astype(str),
              "10.40.0.") & np.char.startswith(cols["dst_ip"].astype(str), "10.40.0.")
              & (cols["dst_port"] == 445))
    assert before.sum() > 0, "workstation → workstation SMB is a known identity edge"


def test_beacon_is_periodic_to_one_known_peer(estate):
    est, cols = estate
    beacon = _episodes(est)["beacon"]
    sel = _sent(cols, beacon) & np.isin(cols["dst_ip"], beacon["dst_ips"])
    assert len(beacon["dst_ips"]) == 1
    t = np.sort(cols["start"][sel])
    gaps = np.diff(t)
    assert len(t) >= 12
    # the peer's ordinary traffic on the same edge mixes in; most gaps are the period ±15%
    near = np.abs(gaps / np.median(gaps) - 1) < 0.35
    assert near.mean() > 0.7


def test_slow_scan_touches_many_addresses_slowly(estate):
    est, cols = estate
    scan = _episodes(est)["slow_scan"]
    assert scan["dst_hosts"] >= 25 and len(scan["dst_ports"]) == 1
    sel = _sent(cols, scan) & (cols["dst_port"] == scan["dst_ports"][0])
    per_minute = len(set(cols["dst_ip"][sel])) / max((scan["end"] - scan["start"]) / 60, 1)
    assert per_minute < 3, "slow: not a burst"


def test_host_exfiltration_is_large_for_the_host_and_diluted_for_its_fleet(estate):
    est, cols = estate
    ex = _episodes(est)["host_exfiltration"]
    sel = _sent(cols, ex) & np.isin(cols["dst_ip"], ex["dst_ips"])
    audit = cols["start"] < CFG.audit_end
    same_host = audit & (cols["src_ip"] == ex["src_ip"])
    hourly = cols["bytes"][same_host].sum() / (CFG.audit_days * 24)
    assert cols["bytes"][sel].sum() > 5 * hourly


def test_office_hosts_beacon_to_their_edr_console_legitimately(estate):
    est, cols = estate
    edr = [e["cidr"] for e in est.inventory if e["app"] == "edr-console"]
    assert edr == ["10.40.8.16/29"]
    edr = ["10.40.8.20"]
    ws = str(cols["src_ip"][np.char.startswith(cols["src_ip"].astype(str), "10.40.0.")][0])
    sel = (cols["src_ip"] == ws) & np.isin(cols["dst_ip"], edr) & (cols["dst_port"] == 443)
    gaps = np.diff(np.sort(cols["start"][sel]))
    assert len(gaps) > 100 and abs(np.median(gaps) - 600) < 3


def test_unknown_attack_kinds_and_oversized_offices_are_refused():
    with pytest.raises(ConfigError, match="unknown attack kind"):
        GenerateConfig(attack_kinds=("teleport",))
    with pytest.raises(ConfigError, match="workstations"):
        GenerateConfig(workstations=5000)
