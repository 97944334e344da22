"""Per-source-host behaviour: feature windows, fan-out, failed connections, host volume,
beacons, bounds and independence from batch boundaries and arrival order."""

from __future__ import annotations

import numpy as np

from pipeline.core.addresses import ip_to_int
from pipeline.core.hostdetect import HostBehaviour, HostParams
from pipeline.core.hosts import FEATURES, HostFlows, HostWindows, ReleaseBuffer, host_keys
from pipeline.core.pipeline import Pipeline
from pipeline.core.settings import CoreSettings
from pipeline.core.snapshot import dump_state, load_state
from tests.conftest import DAY, T0, flow, flows_table, make_inventory

WS = [f"10.40.0.{10 + i}" for i in range(40)]
FILES = "10.40.8.5"
INV = [{"cidr": "10.40.0.0/24", "app": "workstation", "namespace": "corp", "kind": "vm"},
       {"ip": FILES, "app": "file-server", "namespace": "corp", "kind": "vm"}]
AUDIT_DAYS = 4
AFTER = T0 + AUDIT_DAYS * DAY + 10 * 3600  # a weekday 10:00 after the audit
HOST_TYPES = {"fan_out", "failed_connections", "host_volume", "beacon"}


def office(day0: float, days: int, seed: int) -> list[dict]:
    """Business-hours office traffic: file shares, now and then another workstation's share,
    browsing random internet addresses (ordinary, Poisson-like timing)."""
    rng = np.random.default_rng(seed)
    recs = []
    for d in range(days):
        for h in range(9, 17):
            t0 = day0 + d * DAY + h * 3600
            for i, ws in enumerate(WS):
                for t in t0 + np.sort(rng.uniform(0, 3600, rng.poisson(3))):
                    recs.append(flow(float(t), ws, FILES, 40000 + i, 445,
                                     nbytes=int(rng.lognormal(11, 1))))
                if rng.random() < 0.1:
                    peer = WS[(i + 1 + int(rng.integers(len(WS) - 1))) % len(WS)]
                    recs.append(flow(float(t0 + rng.uniform(0, 3600)), ws, peer, 41000 + i, 445,
                                     nbytes=400_000))
                for t in t0 + np.sort(rng.uniform(0, 3600, rng.poisson(4))):
                    ip = f"203.0.113.{int(rng.integers(1, 250))}"
                    recs.append(flow(float(t), ws, ip, 42000 + i, 443,
                                     nbytes=int(rng.lognormal(10, 1))))
    return recs


def audit() -> list[dict]:
    return office(T0, AUDIT_DAYS, seed=1)


def run(records: list[dict], batches: int = 1, settings: CoreSettings | None = None
        ) -> tuple[Pipeline, list[dict], dict[str, np.ndarray]]:
    records = sorted(records, key=lambda r: r["start"])
    core = Pipeline(settings or CoreSettings(audit_days=AUDIT_DAYS), make_inventory(INV))
    out, feats = [], []
    size = -(-len(records) // batches)
    for i in range(0, len(records), size):
        o = core.process(flows_table(records[i:i + size]))
        out += o.violations
        feats.append(o.host_windows)
    f = core.flush()
    feats.append(f.host_windows)
    return core, out + f.violations, {k: np.concatenate([x[k] for x in feats])
                                      for k in feats[0]}


def host_findings(violations: list[dict]) -> list[dict]:
    return [v for v in violations if v["type"] in HOST_TYPES]


# -- the feature rows the behaviour model reads ------------------------------------------------

def _hf(rows: list[tuple[float, str, str, int, bool]]) -> HostFlows:
    n = len(rows)
    ips = sorted({r[1] for r in rows} | {r[2] for r in rows})
    keys = dict(zip(ips, host_keys([ip_to_int(x) for x in ips]).tolist(), strict=True))
    return HostFlows(
        start=np.array([r[0] for r in rows]), host=np.array([keys[r[1]] for r in rows],
                                                           dtype=np.uint64),
        peer=np.array([keys[r[2]] for r in rows], dtype=np.uint64),
        app=np.full(n, 7, dtype=np.int64), peer_app=np.array([hash(r[2]) % 3 for r in rows]),
        port=np.array([r[3] for r in rows], dtype=np.int32), proto=np.full(n, 6, np.int16),
        bytes=np.full(n, 100, dtype=np.int64), rejected=np.array([r[4] for r in rows]),
        failed=np.array([r[4] for r in rows]), new_edge=np.zeros(n, dtype=bool),
        edge=np.full(n, 5, dtype=np.int64))


def test_feature_rows_count_peers_ports_pairs_and_failures_per_host_window() -> None:
    w = HostWindows(window=3600)
    t = T0 + 3600 * 5
    w.add(_hf([(t + 1, "10.0.0.1", "10.0.0.2", 445, False),
               (t + 2, "10.0.0.1", "10.0.0.2", 445, False),
               (t + 3, "10.0.0.1", "10.0.0.3", 445, True),
               (t + 4, "10.0.0.1", "10.0.0.3", 22, True),
               (t + 5, "10.0.0.9", "10.0.0.2", 80, False),
               (t + 3600, "10.0.0.1", "10.0.0.2", 445, False)]))  # next window
    assert w.take_closed(t + 3599)["host"].size == 0  # the window has not ended yet
    rows = w.take_closed(t + 3600, audit_end=t + 7200)
    assert rows["src_ip"].tolist() == ["10.0.0.1", "10.0.0.9"]
    assert set(FEATURES) <= set(rows)
    first = {k: v[0] for k, v in rows.items()}
    assert (first["flows"], first["peers"], first["ports"], first["pairs"]) == (4, 2, 2, 3)
    assert (first["failures"], first["failure_share"], first["bytes_out"]) == (2, 0.5, 400)
    assert first["window"] == t and first["audit"] and first["app"] == 7
    assert first["hour_of_week"] == 5  # Monday 05:00 UTC
    assert len(w) == 1  # the next window stays open


def test_pipeline_gives_closed_host_windows_in_every_batch_output() -> None:
    _, _, feats = run(audit()[:2000])
    assert len(feats["host"]) > 0
    assert set(feats["src_ip"]) <= set(WS)
    assert (feats["flows"] >= feats["peers"]).all() and (feats["pairs"] >= feats["ports"]).all()


# -- detectors ----------------------------------------------------------------------------------

def test_worm_over_a_known_edge_is_a_fan_out() -> None:
    worm = [flow(AFTER + 30 * i, WS[0], WS[1 + i], 50000 + i, 445) for i in range(25)]
    core, violations, _ = run(audit() + office(T0 + AUDIT_DAYS * DAY, 1, seed=2) + worm)
    assert core.baseline.lookup(np.array([_edge(core, "corp/workstation", 445)]))[0] >= 0
    found = host_findings(violations)
    assert [v["type"] for v in found] == ["fan_out"]
    assert found[0]["src_ip"] == WS[0] and found[0]["dst_port"] == 445
    assert found[0]["evidence"]["seen"]["distinct_peers"] > 8


def test_steady_office_traffic_after_the_audit_raises_no_host_finding() -> None:
    _, violations, _ = run(audit() + office(T0 + AUDIT_DAYS * DAY, 3, seed=3))
    assert host_findings(violations) == []


def test_unanswered_sweep_of_internet_addresses_on_a_known_port_is_found() -> None:
    sweep = [flow(AFTER + 40 * i, WS[3], f"198.51.100.{i + 1}", 51000 + i, 443, flags=0x02,
                  packets=1) for i in range(40)]
    _, violations, _ = run(audit() + office(T0 + AUDIT_DAYS * DAY, 1, seed=4) + sweep)
    found = host_findings(violations)
    assert {v["type"] for v in found} >= {"failed_connections"}
    assert all(v["src_ip"] == WS[3] for v in found)


def test_one_hosts_volume_on_its_fleets_edge_is_found() -> None:
    at = AFTER + np.sort(np.random.default_rng(5).uniform(0, 1800, 30))
    big = [flow(float(t), WS[5], FILES, 52000 + i, 445, nbytes=20_000_000)
           for i, t in enumerate(at)]
    _, violations, _ = run(audit() + office(T0 + AUDIT_DAYS * DAY, 1, seed=5) + big)
    found = host_findings(violations)
    assert [v["type"] for v in found] == ["host_volume"]
    assert found[0]["src_ip"] == WS[5] and found[0]["dst_workload"] == "corp/file-server"


def test_beacon_with_jitter_is_found_and_random_intervals_are_not() -> None:
    rng = np.random.default_rng(7)
    beats = AFTER + np.arange(30) * 300 + rng.uniform(-30, 30, 30)  # ±10 %
    noise = AFTER + np.cumsum(rng.exponential(300, 30))
    extra = [flow(float(t), WS[6], "198.51.100.7", 53000 + i, 443) for i, t in enumerate(beats)]
    extra += [flow(float(t), WS[7], "198.51.100.8", 53000 + i, 443) for i, t in enumerate(noise)]
    _, violations, _ = run(audit() + office(T0 + AUDIT_DAYS * DAY, 1, seed=6) + extra)
    found = host_findings(violations)  # one per suppression window (hour) it spans
    assert found and {(v["type"], v["src_ip"], v["dst_ip"]) for v in found} == {
        ("beacon", WS[6], "198.51.100.7")}
    assert all(abs(v["evidence"]["seen"]["period_s"] - 300) < 30 for v in found)


def test_periodic_traffic_seen_in_the_audit_is_not_a_beacon() -> None:
    def agent(day0: float, days: int) -> list[dict]:
        return [flow(day0 + k * 600 + (i * 7) % 30, ws, FILES, 54000, 8443)
                for i, ws in enumerate(WS[:5]) for k in range(int(days * DAY / 600))]

    after = T0 + AUDIT_DAYS * DAY
    _, violations, _ = run(audit() + agent(T0, AUDIT_DAYS) + agent(after, 1))
    assert host_findings(violations) == []


# -- batch boundaries, arrival order, state -------------------------------------------------------

def _attacks() -> list[dict]:
    rng = np.random.default_rng(9)
    worm = [flow(AFTER + 30 * i, WS[0], WS[1 + i], 50000 + i, 445) for i in range(25)]
    beats = AFTER + 1800 + np.arange(30) * 120 + rng.uniform(-10, 10, 30)
    beacon = [flow(float(t), WS[6], "198.51.100.7", 53000 + i, 443) for i, t in enumerate(beats)]
    at = AFTER + np.sort(rng.uniform(0, 1800, 30))
    big = [flow(float(t), WS[5], FILES, 52000 + i, 445, nbytes=20_000_000)
           for i, t in enumerate(at)]
    return worm + beacon + big


def test_results_do_not_depend_on_batch_boundaries_or_order_within_lateness() -> None:
    recs = sorted(audit() + office(T0 + AUDIT_DAYS * DAY, 1, seed=8) + _attacks(),
                  key=lambda r: r["start"])
    _, v1, f1 = run(recs, batches=1)
    _, v9, _ = run(recs, batches=9)
    assert {v["type"] for v in host_findings(v1)} == HOST_TYPES - {"failed_connections"}
    assert v1 == v9
    # shuffle within 20-second blocks (the detection lateness is 30 s) and feed in 40 batches
    rng = np.random.default_rng(0)
    block = np.array([r["start"] // 20 for r in recs])
    order = np.lexsort((rng.random(len(recs)), block))
    core = Pipeline(CoreSettings(audit_days=AUDIT_DAYS), make_inventory(INV))
    shuffled = [recs[i] for i in order]
    out, feats = [], []
    for part in np.array_split(np.arange(len(shuffled)), 40):
        o = core.process(flows_table([shuffled[i] for i in part]))
        out += o.violations
        feats.append(o.host_windows)
    f = core.flush()
    feats.append(f.host_windows)
    latest = {}
    for v in out + f.violations:
        if v["id"] not in latest or v["version"] >= latest[v["id"]]["version"]:
            latest[v["id"]] = v
    by_id = {v["id"]: v for v in v1}
    mine = {k: v for k, v in latest.items() if v["type"] in HOST_TYPES}
    ref = {k: v for k, v in by_id.items() if v["type"] in HOST_TYPES}
    for k in ref:
        assert mine.get(k) == ref[k], {f: (ref[k][f], mine.get(k, {}).get(f)) for f in ref[k]
                                       if ref[k][f] != mine.get(k, {}).get(f)}
    assert mine == ref
    fs = {k: np.concatenate([x[k] for x in feats]) for k in feats[0]}
    for k in ("host", "window", *FEATURES):
        assert np.array_equal(np.sort(fs[k]), np.sort(f1[k])), k


def test_host_state_round_trips_through_a_snapshot() -> None:
    recs = sorted(audit() + _attacks(), key=lambda r: r["start"])
    cut = next(i for i, r in enumerate(recs) if r["start"] >= AFTER + 600)
    settings = CoreSettings(audit_days=AUDIT_DAYS)
    a = Pipeline(settings, make_inventory(INV))
    a.process(flows_table(recs[:cut]))
    b = load_state(dump_state(a), settings, make_inventory(INV))
    rest = flows_table(recs[cut:])
    va = a.process(rest).violations + a.flush().violations
    vb = b.process(rest).violations + b.flush().violations
    assert va == vb and host_findings(va)


# -- bounds ---------------------------------------------------------------------------------------

def test_state_stays_bounded_under_200k_spoofed_sources() -> None:
    n = 200_000
    rng = np.random.default_rng(3)
    params = HostParams(max_hosts=5_000)
    h = HostBehaviour(params)
    h.beacons_.max_series = 20_000
    for w in range(3):  # three windows of a flood, each from fresh spoofed addresses
        start = T0 + w * 3600 + np.sort(rng.uniform(0, 3600, n))
        hosts = (np.uint64(0xFFFF_0000_0000) + rng.integers(0, 1 << 32, n).astype(np.uint64))
        f = HostFlows(start=start, host=hosts, peer=np.full(n, 42, dtype=np.uint64),
                      app=np.full(n, 3, dtype=np.int64), peer_app=np.full(n, 4, dtype=np.int64),
                      port=rng.integers(1, 65535, n).astype(np.int32),
                      proto=np.full(n, 6, dtype=np.int16), bytes=np.full(n, 60, dtype=np.int64),
                      rejected=np.ones(n, dtype=bool), failed=np.ones(n, dtype=bool),
                      new_edge=np.zeros(n, dtype=bool), edge=np.full(n, 9, dtype=np.int64))
        h.add(f)
        h.advance(start[-1] - 30, start[-1] - 300, audit_end=T0 + 30 * DAY)
        assert len(h.windows_) <= params.max_hosts
        assert len(h.beacons_) <= 20_000
        assert len(h.volume_.keys_) <= 4 * params.max_hosts
        for s in (h.windows_.peers_, h.windows_.port_peers_, h.windows_.apps_):
            assert len(s.members_) <= s.max_members and len(s.groups_) <= params.max_hosts
        assert len(h.buffer_.pending_) <= h.buffer_.max_pending
    assert h.windows_.dropped_flows_ >= 3 * (n - params.max_hosts) - n  # most were refused
    assert h.beacons_.refused_ > 0


def test_release_buffer_bound_releases_the_oldest_early() -> None:
    b = ReleaseBuffer(max_pending=100)
    f = _hf([(T0 + i, "10.0.0.1", "10.0.0.2", 445, False) for i in range(250)])
    b.push(f)
    out = b.pop(T0 - 1)  # nothing is due, but only 100 may wait
    assert len(out) == 150 and len(b.pending_) == 100 and b.early_released_ == 150
    assert out.start.tolist() == sorted(out.start.tolist())
    assert out.start.max() < b.pending_.start.min()


def _edge(core: Pipeline, app: str, port: int) -> int:
    from pipeline.core.baseline import edge_keys

    wid = next(i for i, w in enumerate(core.workloads.infos) if w.key == app)
    return int(edge_keys(np.array([wid]), np.array([wid]), np.array([port]),
                         np.array([6]))[0])

