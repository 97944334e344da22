"""Behaviour of the synthetic estate generator (pipeline.generate)."""

from __future__ import annotations

import gzip
import ipaddress
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import pyarrow as pa
import pytest

from pipeline.core.columns import FLOW_SCHEMA
from pipeline.errors import ConfigError
from pipeline.generate import (
    Estate,
    GenerateConfig,
    build_estate,
    flow_records_to_jsonl,
    iter_flow_chunks,
    write_estate,
)

# 16 days: one audit Sunday (weekly job), six post-audit days for five attacks
CFG = GenerateConfig(seed=5, apps=10, days=16, audit_days=10, flows_per_day=4_000)
SMALL = GenerateConfig(apps=6, days=8, audit_days=5, flows_per_day=5_000)
EPHEMERAL_LO, EPHEMERAL_HI = 32_768, 60_999
Episode = dict[str, Any]
REQUIRED = {"start", "end", "src_ip", "dst_ip", "src_port", "dst_port", "proto", "bytes",
            "packets", "action"}


@dataclass
class Flows:
    records: list[dict[str, Any]]
    start: np.ndarray
    end: np.ndarray
    src: np.ndarray  # object arrays of address text
    dst: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    proto: np.ndarray
    bytes: np.ndarray
    reject: np.ndarray
    flags: np.ndarray  # -1 when absent

    @property
    def forward(self) -> np.ndarray:
        """Client→server records (responses come from a service port to an ephemeral one)."""
        return (self.sport >= EPHEMERAL_LO) | (self.proto == 1)


def load_flows(path: Path) -> Flows:
    recs = [orjson.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]

    def col(name: str, default: object = None, dtype: Any = None) -> np.ndarray:
        return np.array([r.get(name, default) for r in recs], dtype=dtype)

    return Flows(
        records=recs, start=col("start", dtype=np.float64), end=col("end", dtype=np.float64),
        src=col("src_ip", dtype=object), dst=col("dst_ip", dtype=object),
        sport=col("src_port", dtype=np.int64), dport=col("dst_port", dtype=np.int64),
        proto=col("proto", dtype=np.int64), bytes=col("bytes", dtype=np.int64),
        reject=col("action", dtype=object) == "reject", flags=col("tcp_flags", -1, np.int64),
    )


class Owners:
    """Which inventory entry holds an address at a time, vectorised over flows."""

    def __init__(self, inventory: list[dict[str, Any]], t0: float) -> None:
        rows = [e for e in inventory if "ip" in e]
        self.ids = {ip: i for i, ip in enumerate(sorted({e["ip"] for e in rows}))}
        self.origin = t0 - 30 * 86_400
        ip_id = np.array([self.ids[e["ip"]] for e in rows])
        lo = np.array([_epoch(e.get("valid_from"), self.origin) for e in rows])
        hi = np.array([_epoch(e.get("valid_to"), np.inf) for e in rows])
        key = np.array([f"{e['namespace']}/{e['app']}" for e in rows], dtype=object)
        order = np.lexsort((lo, ip_id))
        self.ip_id, self.lo, self.hi, self.key = ip_id[order], lo[order], hi[order], key[order]
        self.sorted_keys = self.ip_id * 1e10 + (self.lo - self.origin)
        self.nets = [(ipaddress.ip_network(e["cidr"]), f"{e['namespace']}/{e['app']}")
                     for e in inventory if "cidr" in e]

    def of(self, ips: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``namespace/app`` owning each address at each time, or None."""
        uniq, inverse = np.unique(ips, return_inverse=True)
        uid = np.array([self.ids.get(ip, -1) for ip in uniq])[inverse]
        pos = np.searchsorted(self.sorted_keys, uid * 1e10 + (t - self.origin), side="right") - 1
        pos = np.maximum(pos, 0)
        ok = (uid >= 0) & (self.ip_id[pos] == uid) & (self.lo[pos] <= t) & (t < self.hi[pos])
        by_net = np.array([self._net(ip) for ip in uniq], dtype=object)[inverse]
        return np.where(ok, self.key[pos], by_net)

    def _net(self, ip: str) -> str | None:
        addr = ipaddress.ip_address(ip)
        return next((key for net, key in self.nets if addr in net), None)


def _epoch(text: object, default: float) -> float:
    if text is None:
        return default
    return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Estate, Path, Flows]:
    out = tmp_path_factory.mktemp("estate")
    write_estate(CFG, out)
    return build_estate(CFG), out, load_flows(out / "flows.jsonl.gz")


@pytest.fixture(scope="module")
def owners(written: tuple[Estate, Path, Flows]) -> tuple[np.ndarray, np.ndarray]:
    estate, _, f = written
    own = Owners(estate.inventory, CFG.start)
    return own.of(f.src, f.start), own.of(f.dst, f.start)


def _truth(estate: Estate) -> list[Episode]:
    return cast(list[Episode], estate.truth)


def _malicious(estate: Estate) -> list[Episode]:
    return [e for e in _truth(estate) if e["malicious"]]


def _is_none(values: np.ndarray) -> np.ndarray:
    return np.array([v is None for v in values], dtype=bool)


def _in_episodes(estate: Estate, f: Flows) -> np.ndarray:
    """Flows sent by (or answering) an attack's source during the attack."""
    hit = np.zeros(len(f.start), dtype=bool)
    for ep in _malicious(estate):
        during = (f.start >= ep["start"]) & (f.start <= ep["end"])
        hit |= during & ((f.src == ep["src_ip"]) | (f.dst == ep["src_ip"]))
    return hit


# ---- determinism and speed ------------------------------------------------------------------

def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    cfg = GenerateConfig(apps=4, days=3, audit_days=2, flows_per_day=1_500)
    names = ("inventory.jsonl", "flows.jsonl.gz", "truth.jsonl")
    write_estate(cfg, tmp_path / "a")
    write_estate(cfg, tmp_path / "b")
    write_estate(GenerateConfig(**{**cfg.__dict__, "seed": cfg.seed + 1}), tmp_path / "c")
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_small_estate_is_fast(tmp_path: Path) -> None:
    t = time.perf_counter()
    summary = write_estate(SMALL, tmp_path)
    elapsed = time.perf_counter() - t
    assert summary.flows > 8 * 5_000
    assert elapsed < 5.0, f"{summary.flows} flows took {elapsed:.2f}s"


def test_config_is_validated() -> None:
    for bad in ({"apps": 1}, {"days": 0}, {"audit_days": 40}, {"reverse_share": 1.5},
                {"start": 1_767_571_201.0}, {"flows_per_day": -1}):
        with pytest.raises(ConfigError):
            GenerateConfig(**cast(dict[str, Any], bad))


# ---- flow records -----------------------------------------------------------------------------

def test_every_flow_record_is_canonical(written: tuple[Estate, Path, Flows]) -> None:
    _, _, f = written
    assert len(f.records) > CFG.days * CFG.flows_per_day * 0.9
    for r in f.records:
        assert REQUIRED <= r.keys() <= REQUIRED | {"tcp_flags", "exporter"}
        assert isinstance(r["start"], float) and isinstance(r["end"], float)
        assert ("tcp_flags" in r) == (r["proto"] == 6)
        assert isinstance(r["exporter"], str) and r["exporter"]
        ipaddress.ip_address(r["src_ip"])
        ipaddress.ip_address(r["dst_ip"])
    assert np.all(np.diff(f.start) >= 0), "flows are time-ordered"
    assert f.start.min() >= CFG.start and f.start.max() < CFG.end
    assert np.all(f.end >= f.start)
    for ports in (f.sport, f.dport):
        assert ports.min() >= 0 and ports.max() <= 65_535
    assert set(np.unique(f.proto)) == {1, 6, 17}
    assert f.bytes.min() >= 0 and min(int(r["packets"]) for r in f.records) >= 1
    assert np.all((f.flags == -1) | ((f.flags >= 0) & (f.flags <= 255)))
    client = f.forward & (f.proto != 1)
    assert f.sport[client].min() >= EPHEMERAL_LO and f.sport[client].max() <= EPHEMERAL_HI
    assert np.all(f.sport[f.proto == 1] == 0) and np.all(f.dport[f.proto == 1] == 0)


def test_rejects_ipv6_and_responses_are_present(written: tuple[Estate, Path, Flows]) -> None:
    _, _, f = written
    n = len(f.start)
    assert 0.001 < f.reject.mean() < 0.03
    v6 = np.array([":" in ip for ip in f.src])
    assert v6.sum() > 100
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("fd00::/8") for ip in f.src[v6])
    response = ~f.forward
    answerable = f.forward & ~f.reject & (f.proto != 1)
    share = response.sum() / answerable.sum()
    assert 0.08 < share < 0.22, share
    assert np.all(f.dport[response] >= EPHEMERAL_LO)
    tcp_resp = f.flags[response & (f.proto == 6)]
    assert np.all(tcp_resp & 0x10), "responses carry ACK"
    assert np.mean((tcp_resp & 0x12) == 0x12) > 0.5, "most responses include SYN+ACK"
    assert response.sum() < n


def test_no_responses_when_reverse_share_is_zero() -> None:
    cfg = GenerateConfig(apps=4, days=1, audit_days=1, flows_per_day=2_000, reverse_share=0.0)
    table = pa.concat_tables(iter_flow_chunks(build_estate(cfg)))
    sport, proto = table.column("src_port").to_numpy(), table.column("proto").to_numpy()
    assert np.all((sport >= EPHEMERAL_LO) | (proto == 1))


def test_chunks_are_canonical_tables_in_time_order() -> None:
    cfg = GenerateConfig(apps=4, days=3, audit_days=1, flows_per_day=1_000)
    last = -np.inf
    for table in iter_flow_chunks(build_estate(cfg)):
        assert table.schema == FLOW_SCHEMA
        start = table.column("start").to_numpy()
        assert start[0] >= last and np.all(np.diff(start) >= 0)
        last = start[-1]


def test_jsonl_is_exact_for_odd_values() -> None:
    """Whole-second times stay floats; strings needing escapes and null exporters survive."""
    cfg = GenerateConfig(apps=4, days=1, audit_days=1, flows_per_day=500)
    table = next(iter_flow_chunks(build_estate(cfg))).slice(0, 50)
    starts = [1_767_571_200.0, *table.column("start").to_pylist()[1:]]
    odd = table.set_column(0, "start", pa.array(starts, pa.float64()))
    exporters = ['node "7"\n', *[None] * 49]
    odd = odd.set_column(FLOW_SCHEMA.get_field_index("exporter"), "exporter",
                         pa.array(exporters, pa.string()))
    for t in (table, odd):
        lines = flow_records_to_jsonl(t)
        assert len(lines) == t.num_rows and not any(b"\n" in line for line in lines)
        for line, row in zip(lines, t.to_pylist(), strict=True):
            rec = orjson.loads(line)
            assert rec["start"] == row["start"] and isinstance(rec["start"], float)
            assert rec["src_ip"] == row["src_ip"] and rec["bytes"] == row["bytes"]
            assert rec.get("exporter") == row["exporter"]
            assert rec["action"] == {1: "accept", 2: "reject"}[row["action"]]


# ---- inventory and identities -----------------------------------------------------------------

def test_inventory_entries(written: tuple[Estate, Path, Flows]) -> None:
    _, out, _ = written
    entries = [orjson.loads(line) for line in (out / "inventory.jsonl").read_bytes().splitlines()]
    kinds = {e["kind"] for e in entries}
    assert kinds == {"pod", "vm", "service", "external"}
    for e in entries:
        assert ("ip" in e) != ("cidr" in e)
        assert {"app", "namespace", "env", "labels", "service_account", "kind"} <= e.keys()
        assert e["labels"]["app"] == e["app"]
        if "valid_from" in e and "valid_to" in e:
            assert e["valid_from"] < e["valid_to"]
    cidrs = {e["cidr"]: e["kind"] for e in entries if "cidr" in e}
    assert cidrs["10.20.0.0/28"] == "vm"
    assert cidrs["203.0.113.0/24"] == cidrs["198.51.100.0/24"] == "external"
    assert any(":" in e.get("ip", "") for e in entries), "a dual-stack app"


def test_flows_only_use_addresses_valid_at_flow_time(
    written: tuple[Estate, Path, Flows], owners: tuple[np.ndarray, np.ndarray]
) -> None:
    estate, _, f = written
    src_owner, dst_owner = owners
    unlisted = [ipaddress.ip_network(c) for c in estate.unlisted_cidrs]
    for ips, owner in ((f.src, src_owner), (f.dst, dst_owner)):
        stray = set(ips[_is_none(owner)])
        assert all(any(ipaddress.ip_address(ip) in net for net in unlisted) for ip in stray), stray
    assert _is_none(src_owner).any(), "some blocked probes come from unlisted ranges"


def test_every_normal_flow_follows_the_plan(
    written: tuple[Estate, Path, Flows], owners: tuple[np.ndarray, np.ndarray]
) -> None:
    """Outside attacks, each accepted flow is a planned (src app, dst app, port) edge; so after
    an address moves to another app its flows are that app's, never the old owner's."""
    estate, _, f = written
    plan, wls = estate.plan, estate.population.workloads
    planned = {(wls[s].key, wls[d].key, int(p))
               for s, d, p in zip(plan.src, plan.dst, plan.port, strict=True)}
    src_owner, dst_owner = owners
    normal = ~f.reject & ~_in_episodes(estate, f)
    fwd = f.forward
    client = np.where(fwd, src_owner, dst_owner)
    server = np.where(fwd, dst_owner, src_owner)
    port = np.where(fwd, f.dport, f.sport)
    seen = set(zip(client[normal], server[normal], port[normal].tolist(), strict=True))
    assert seen <= planned, sorted(seen - planned, key=str)[:5]


def test_ip_reuse_across_apps_happens(
    written: tuple[Estate, Path, Flows], owners: tuple[np.ndarray, np.ndarray]
) -> None:
    estate, _, f = written
    apps_by_ip: dict[str, set[str]] = {}
    for e in estate.inventory:
        if "ip" in e:
            apps_by_ip.setdefault(str(e["ip"]), set()).add(f"{e['namespace']}/{e['app']}")
    reused = {ip for ip, apps in apps_by_ip.items() if len(apps) > 1}
    episodes = [e for e in _truth(estate) if e["type"] == "ip_reuse"]
    assert len(reused) >= 3 and {e["src_ip"] for e in episodes} <= reused
    assert any(e["start"] >= CFG.audit_end for e in episodes), "a reuse after the audit"
    src_owner, dst_owner = owners
    both_sides = 0
    for ip in reused:
        holders = set(src_owner[f.src == ip]) | set(dst_owner[f.dst == ip])
        both_sides += len(holders - {None}) > 1
    assert both_sides >= 1, "traffic seen on a reused address under two different apps"


# ---- episodes -------------------------------------------------------------------------------

def test_attacks_only_after_audit_on_distinct_days(written: tuple[Estate, Path, Flows]) -> None:
    estate, _, _ = written
    attacks = _malicious(estate)
    assert {e["type"] for e in attacks} == {"lateral_movement", "port_scan", "new_listener",
                                             "exfiltration", "off_hours"}
    for e in attacks:
        assert CFG.audit_end <= e["start"] <= e["end"] < CFG.end
        assert e["expected"] and e["src_ip"] and e["dst_ips"] and e["dst_ports"]
    days = {int((e["start"] - CFG.start) // 86_400) for e in attacks}
    assert len(days) == 5
    benign = [e for e in _truth(estate) if not e["malicious"]]
    assert benign and all(e["expected"] == [] for e in benign)
    assert {"ip_reuse", "scale_out", "pod_restart", "scheduled_job"} <= {e["type"] for e in benign}


@pytest.mark.parametrize(
    ("days", "attacks", "expect"), [(10, True, 0), (12, True, 5), (16, False, 0)]
)
def test_attacks_fit_the_post_audit_window(days: int, attacks: bool, expect: int) -> None:
    cfg = GenerateConfig(apps=5, days=days, audit_days=10, attacks=attacks, flows_per_day=100)
    mal = _malicious(build_estate(cfg))
    assert len(mal) == expect
    assert all(e["start"] >= cfg.audit_end for e in mal)


def test_attack_episodes_are_in_the_flows(
    written: tuple[Estate, Path, Flows], owners: tuple[np.ndarray, np.ndarray]
) -> None:
    estate, _, f = written
    src_owner, dst_owner = owners
    audit = f.start < CFG.audit_end
    eps = {e["type"]: e for e in _malicious(estate)}
    for ep in eps.values():
        sel = ((f.src == ep["src_ip"]) & np.isin(f.dst, ep["dst_ips"]) & f.forward
               & (f.start >= ep["start"]) & (f.start <= ep["end"]))
        assert sel.any(), ep["id"]
        assert set(ep["dst_ports"]) <= set(f.dport[sel].tolist()), ep["id"]

    def edge(ep: Episode) -> np.ndarray:
        return (src_owner == ep["src_workload"]) & (dst_owner == ep["dst_workload"])

    scan = eps["port_scan"]
    hosts = scan["dst_ips"]
    sel = ((f.src == scan["src_ip"]) & np.isin(f.dst, hosts)
           & (f.start >= scan["start"]) & (f.start <= scan["end"]))
    assert 3 <= len(hosts) <= 5 and scan["end"] - scan["start"] < 600
    assert all(len(set(f.dport[sel & (f.dst == h)])) >= 200 for h in hosts)
    assert f.reject[sel].mean() > 0.5

    lateral = eps["lateral_movement"]
    assert not (edge(lateral) & audit).any(), "lateral movement uses a never-seen edge"

    new_port = eps["new_listener"]
    known = edge(new_port) & audit & f.forward
    assert known.any() and not np.isin(f.dport[known], new_port["dst_ports"]).any()

    exfil = eps["exfiltration"]
    port = exfil["dst_ports"][0]
    usual = edge(exfil) & audit & f.forward & (f.dport == port)
    hourly = f.bytes[usual].sum() / (CFG.audit_days * 24)
    spike = (f.src == exfil["src_ip"]) & (f.start >= exfil["start"]) & (f.start <= exfil["end"])
    assert exfil["end"] - exfil["start"] < 3_700
    assert f.bytes[spike & (f.dport == port)].sum() > 50 * hourly

    off = eps["off_hours"]
    assert int(off["start"] // 3_600 % 24) == 3
    bastion = edge(off) & audit & f.forward
    assert bastion.sum() >= 10
    hod, dow = f.start[bastion] // 3_600 % 24, ((f.start[bastion] // 86_400).astype(int) + 3) % 7
    assert np.all((hod >= 9) & (hod < 17) & (dow < 5)), "bastion used only in office hours"


def test_weekly_job_runs_during_audit(
    written: tuple[Estate, Path, Flows], owners: tuple[np.ndarray, np.ndarray]
) -> None:
    estate, _, f = written
    src_owner, dst_owner = owners
    runs = [e for e in _truth(estate) if e["type"] == "scheduled_job"]
    assert any(e["start"] < CFG.audit_end for e in runs)
    for run in runs:
        sel = ((f.src == run["src_ip"]) & (dst_owner == run["dst_workload"])
               & (f.start >= run["start"]) & (f.start < run["end"]))
        assert sel.sum() >= 5
        assert np.all(((f.start[sel] // 86_400).astype(int) + 3) % 7 == 6), "on Sundays"
    assert not ((src_owner == runs[0]["src_workload"]) & (f.start // 3_600 % 24 != 4)).any()


def test_default_estate_plan() -> None:
    estate = build_estate(GenerateConfig())
    truth, audit_end = _truth(estate), estate.cfg.audit_end
    assert sum(e["type"] == "ip_reuse" and e["start"] >= audit_end for e in truth) >= 2
    jobs = [e for e in truth if e["type"] == "scheduled_job" and e["start"] < audit_end]
    assert len(jobs) >= 3
    assert len({e["id"] for e in truth}) == len(truth)


# ---- volume shape -----------------------------------------------------------------------------

def test_diurnal_and_weekly_modulation(written: tuple[Estate, Path, Flows]) -> None:
    _, _, f = written
    hod = f.start // 3_600 % 24
    dow = ((f.start // 86_400).astype(int) + 3) % 7
    weekday = dow < 5
    night = (weekday & (hod >= 1) & (hod < 5)).sum()
    day = (weekday & (hod >= 12) & (hod < 16)).sum()
    assert 0.2 < night / day < 0.55, night / day
    per_day = np.bincount(((f.start - CFG.start) // 86_400).astype(int))
    weekend_days = [d for d in range(CFG.days) if (int(CFG.start // 86_400) + d + 3) % 7 >= 5]
    weekdays = [d for d in range(CFG.days) if d not in weekend_days]
    assert per_day[weekend_days].mean() < 0.75 * per_day[weekdays].mean()
