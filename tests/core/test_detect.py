"""Violation windows (core/detect.py): emitted once the detection watermark passes the first
flow, updated to a final version that neither the batches nor arrival order within the
detection lateness change. Hand-built cases, and a slow reference (plain dicts over all flows
at once) on random candidates cut into random batches and shuffled within the lateness."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.detect import (
    _PORTS_MAX,
    _TARGETS_MAX,
    NEW_EDGE,
    NEW_PORT,
    OFF_HOURS,
    SAMPLE,
    SCAN,
    TYPES,
    VOLUME,
    Agg,
    Candidates,
    ViolationWindows,
)

H = 3600.0
W0 = 1_767_571_200.0  # a window start (2026-01-05T00:00:00Z)


@dataclass(frozen=True)
class C:
    """One candidate flow."""

    type: str
    client: int
    server: int
    port: int
    start: float
    proto: int = 6
    bytes: int = 100
    rejected: bool = False
    client_ip: str = "10.0.0.1"
    server_ip: str = "10.0.1.1"
    extra: dict[str, Any] | None = None


def cands(flows: list[C]) -> Candidates:
    return Candidates(
        type_code=np.array([TYPES.index(f.type) for f in flows], dtype=np.int64),
        client=np.array([f.client for f in flows], dtype=np.int64),
        server=np.array([f.server for f in flows], dtype=np.int64),
        port=np.array([f.port for f in flows], dtype=np.int64),
        proto=np.array([f.proto for f in flows], dtype=np.int64),
        start=np.array([f.start for f in flows], dtype=np.float64),
        bytes=np.array([f.bytes for f in flows], dtype=np.int64),
        rejected=np.array([f.rejected for f in flows], dtype=bool),
        client_ip=[f.client_ip for f in flows],
        server_ip=[f.server_ip for f in flows],
        extra=[f.extra for f in flows],
    )


def feed(w: ViolationWindows, batches: list[list[C]], *, end: bool = True) -> list[Agg]:
    """Replay-style: add each batch, advance to its newest start, drain; at the end (unless
    ``end`` is false) close everything. Every emission, in order."""
    out: list[Agg] = []
    for b in batches:
        if b:
            w.add(cands(b))
            w.advance(max(f.start for f in b))
        out += w.take_forced() + w.close()
        # never late: a window the detection watermark passed has been emitted (or folded)
        assert all(a.emitted or a.folded for a in w.open_.values()
                   if a.first < w.detect_watermark_), "a due window was not emitted"
    return out + w.close(everything=True) if end else out


def finals(emissions: list[Agg]) -> dict[Any, Agg]:
    """The last (highest-count) emission of every window."""
    out: dict[Any, Agg] = {}
    for a in emissions:
        old = out.get(a.key())
        assert old is None or a.count >= old.count, "versions go backwards"
        out[a.key()] = a
    return out


def summary(a: Agg) -> tuple[Any, ...]:
    base = (a.type, a.client, a.server, a.port, a.proto, a.window, a.count, a.bytes, a.rejected,
            a.first, a.last, tuple(a.client_ips), tuple(a.server_ips))
    if a.type == SCAN:
        return (*base, a.extra["targets"], tuple(a.extra["ports"]),
                tuple(sorted(a.extra["servers"])))
    return base


def ours(emissions: list[Agg]) -> list[tuple[Any, ...]]:
    return sorted((summary(a) for a in finals(emissions).values()), key=repr)


# -- hand-built cases ---------------------------------------------------------------------


def test_emitted_once_the_detection_watermark_passes_the_first_flow_then_updated() -> None:
    w = ViolationWindows(window=H, lateness=300, detect_lateness=30)
    w.add(cands([C(NEW_EDGE, 2, 3, 5432, W0 + 10), C(NEW_EDGE, 2, 3, 5432, W0 + 20)]))
    w.advance(W0 + 40)  # the watermark is at the first flow, not past it
    assert w.close() == []
    w.advance(W0 + 41)
    [a] = w.close()
    assert (a.type, a.window, a.count, a.first, a.last) == (NEW_EDGE, W0, 2, W0 + 10, W0 + 20)
    assert w.close() == []  # each change emitted once
    w.add(cands([C(NEW_EDGE, 2, 3, 5432, W0 + 50)]))
    w.advance(W0 + 100)
    assert w.close() == []  # 3 flows: not yet twice the emitted count
    w.add(cands([C(NEW_EDGE, 2, 3, 5432, W0 + 60)]))
    w.advance(W0 + 101)
    [b] = w.close()
    assert b.key() == a.key() and (b.count, b.last) == (4, W0 + 60)
    w.add(cands([C(NEW_EDGE, 2, 3, 5432, W0 + 70)]))
    w.advance(W0 + H + 299)
    assert w.close() == [] and len(w) == 1
    w.advance(W0 + 5)  # event time never goes backwards
    assert w.watermark_ == W0 + H - 1
    w.advance(W0 + H + 300)  # the window closes: its changes since the last emission go out
    [c] = w.close()
    assert c.key() == a.key() and c.count == 5 and len(w) == 0
    assert w.close(everything=True) == []


def test_emissions_are_snapshots_and_counts_bytes_rejections_sum() -> None:
    flows = [C(NEW_PORT, 2, 3, 8443, W0 + i * 60, bytes=10 * i, rejected=i % 2 == 0)
             for i in range(1, 6)] + [C(NEW_PORT, 2, 3, 8443, W0 + H + 1)]
    emitted = feed(ViolationWindows(window=H), [[f] for f in flows])
    # due when the second flow arrives (60 s > 30 s later), then at doubling, then at close
    assert [a.count for a in emitted if a.window == W0] == [2, 4, 5]
    assert [(a.window, a.count, a.bytes, a.rejected) for a in finals(emitted).values()] == [
        (W0, 5, 150, 2), (W0 + H, 1, 100, 0)]


def test_a_late_flow_after_emission_gives_a_higher_version_of_the_same_window() -> None:
    w = ViolationWindows(window=H, lateness=0, detect_lateness=0)
    w.add(cands([C(NEW_EDGE, 2, 3, 22, W0 + 5)]))
    w.advance(W0 + 2 * H)
    [first] = w.close()
    assert len(w) == 0  # closed
    w.add(cands([C(NEW_EDGE, 2, 3, 22, W0 + 2)]))  # belongs to the closed window, and earlier
    w.advance(W0 + 2 * H + 1)
    [again] = w.close()
    assert again.key() == first.key() and (again.count, again.first) == (2, W0 + 2)
    assert w.reopened_ == 1


def attempts(n: int, *, step: float = 1.0, client: int = 7) -> list[C]:
    return [C(NEW_EDGE if i % 2 else NEW_PORT, client, 100 + i, 1000 + i, W0 + i * step,
              server_ip=f"10.0.2.{i}") for i in range(n)]


def test_a_fast_scan_is_one_event_a_slow_one_first_shows_as_new_edges() -> None:
    # threshold 5, detection lateness 30 s: targets whose first flow is at most 15 s before
    # the 5th target's fold into the scan, earlier ones are reported alone
    for step, alone in ((0.0, 0), (1.0, 0), (4.0, 1), (50.0, 4)):
        for cut in (1, 7, 1000):
            flows = attempts(30, step=step)
            out = feed(ViolationWindows(window=H, scan_threshold=5, detect_lateness=30),
                       [flows[i:i + cut] for i in range(0, 30, cut)])
            final = finals(out)
            ports = sorted(a.port for a in final.values() if a.type != SCAN)
            [scan] = [a for a in final.values() if a.type == SCAN]
            assert ports == list(range(1000, 1000 + alone)), (step, cut)
            assert (scan.client, scan.server, scan.port, scan.count) == (7, -1, 0, 30 - alone)
            assert scan.first == W0 + alone * step  # its earliest folded target's first flow
            assert scan.extra["targets"] == 30
            assert scan.extra["ports"] == list(range(1000 + alone, 1030))
            assert sorted(scan.extra["servers"]) == list(range(100 + alone, 130))
            if step:
                assert scan.server_ips == [f"10.0.2.{i}" for i in range(alone, alone + SAMPLE)]
    below = feed(ViolationWindows(window=H, scan_threshold=5), [attempts(4)])
    assert sorted(a.type for a in below) == [NEW_EDGE, NEW_EDGE, NEW_PORT, NEW_PORT]
    # the same target again is no new target; other clients and other windows do not count
    again = attempts(4) + [C(NEW_EDGE, 7, 100, 1000, W0 + 50), C(NEW_EDGE, 8, 200, 1, W0 + 60),
                           C(NEW_EDGE, 7, 300, 1, W0 + H + 1)]
    assert SCAN not in {a.type for a in feed(ViolationWindows(window=H, scan_threshold=5),
                                             [sorted(again, key=lambda f: f.start)])}


def test_volume_and_off_hours_candidates_are_never_folded_into_scans() -> None:
    flows = [C(VOLUME if i % 2 else OFF_HOURS, 7, 100 + i, 1000 + i, W0 + i) for i in range(10)]
    aggs = finals(feed(ViolationWindows(window=H, scan_threshold=3), [flows]))
    assert sorted(a.type for a in aggs.values()) == [OFF_HOURS] * 5 + [VOLUME] * 5


def test_the_bound_on_open_windows_closes_the_oldest_first() -> None:
    w = ViolationWindows(window=H, max_open=4)
    w.add(cands([C(NEW_EDGE, 2, 3, 80 + i, W0 + i * H) for i in range(5)]))
    forced = w.take_forced()
    assert w.forced_closes_ == 1 and len(w) <= 2
    assert [a.window for a in forced] == sorted(a.window for a in forced)
    assert max(a.window for a in forced) < min(k[5] for k in w.open_)
    assert w.take_forced() == []
    assert len(w.recent_) <= 4


def test_a_scan_flood_stays_within_the_bounds_and_loses_no_flow() -> None:
    """12,000 targets in 10 minutes, at most 1,000 open windows: the oldest close early
    (their current totals emitted), the scan reopens from the recently closed ones, every
    flow is counted once in the final versions."""
    w = ViolationWindows(window=H, max_open=1000, scan_threshold=20)
    flows = [C(NEW_EDGE, 7, 100 + i, i % 60_000 + 1, W0 + i * 0.05,
               server_ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(12_000)]
    out: list[Agg] = []
    for lo in range(0, len(flows), 500):
        batch = flows[lo:lo + 500]
        w.add(cands(batch))
        w.advance(batch[-1].start)
        out += w.take_forced() + w.close()
        assert len(w) <= 1000 and len(w.recent_) <= 1000
        assert all(len(t) <= _TARGETS_MAX for t in w.targets_.values())
    out += w.close(everything=True)
    final = finals(out)
    assert w.forced_closes_ > 0 and sum(a.count for a in final.values()) == 12_000
    [scan] = [a for a in final.values() if a.type == SCAN]
    assert len(scan.extra["ports"]) <= _PORTS_MAX and len(scan.extra["servers"]) <= _TARGETS_MAX
    assert len(scan.client_ips) <= SAMPLE and len(scan.server_ips) <= SAMPLE


def test_address_samples_are_the_earliest_whatever_the_batches_and_their_order() -> None:
    flows = [C(NEW_EDGE, 2, 3, 443, W0 + i, client_ip=f"10.0.0.{i % 11}") for i in range(30)]
    want = [f"10.0.0.{i}" for i in range(SAMPLE)]
    for cut in (1, 7, 30):
        batches = [flows[i:i + cut] for i in range(0, 30, cut)]
        for order in (batches, batches[::-1]):
            [a] = finals(feed(ViolationWindows(window=H), order)).values()
            assert a.client_ips == want and a.server_ips == ["10.0.1.1"]
            assert a.client_times == [W0 + i for i in range(SAMPLE)]


def test_numeric_evidence_keeps_its_maximum() -> None:
    flows = [C(VOLUME, 2, 3, 443, W0 + i, extra={"hour_bytes": b, "note": f"n{i}"})
             for i, b in enumerate([5.0, 9.0, 7.0])]
    [a] = finals(feed(ViolationWindows(window=H), [flows[:2], flows[2:]])).values()
    assert a.extra == {"hour_bytes": 9.0, "note": "n2"}


def test_state_round_trip_gives_the_same_events() -> None:
    flows = [C(NEW_EDGE if i % 3 else NEW_PORT, i % 4, 10 + i % 5, 80 + i % 3, W0 + i * 500,
               client_ip=f"10.0.0.{i % 9}") for i in range(40)]
    params = {"window": H, "lateness": 100.0, "scan_threshold": 3, "max_open": 50,
              "detect_lateness": 20.0}
    a = ViolationWindows(**params)
    assert feed(a, [flows[:20]], end=False) and len(a)  # windows closed and open at the cut
    b = ViolationWindows.from_state(a.state(), **params)
    assert b.state() == a.state()
    assert [summary(x) for x in feed(a, [flows[20:]])] == [summary(x) for x in
                                                           feed(b, [flows[20:]])]


def test_an_unused_window_set_has_empty_state() -> None:
    w = ViolationWindows()
    assert len(w) == 0 and w.close() == [] and w.take_forced() == []
    assert ViolationWindows.from_state(ViolationWindows().state()).state() == w.state()


# -- against a slow reference ---------------------------------------------------------------


def _earliest(pairs: list[tuple[float, str]]) -> tuple[str, ...]:
    best: dict[str, float] = {}
    for t, ip in pairs:
        best[ip] = min(t, best.get(ip, t))
    return tuple(ip for _, ip in sorted((t, ip) for ip, t in best.items())[:SAMPLE])


def reference(flows: list[C], window: float, threshold: int, horizon: float
              ) -> list[tuple[Any, ...]]:
    """Every window's final record from all flows at once; targets of each client window
    ranked by (first flow, port, proto, earliest server address); a target whose rank plus
    ``horizon`` seconds reaches the threshold-th target's is in the scan."""
    groups: dict[tuple[Any, ...], list[C]] = defaultdict(list)
    for f in flows:
        groups[(f.type, f.client, f.server, f.port, f.proto,
                (f.start // window) * window)].append(f)

    def record(key: tuple[Any, ...], fs: list[C]) -> tuple[Any, ...]:
        return (*key, len(fs), sum(f.bytes for f in fs), sum(f.rejected for f in fs),
                min(f.start for f in fs), max(f.start for f in fs),
                _earliest([(f.start, f.client_ip) for f in fs]),
                _earliest([(f.start, f.server_ip) for f in fs]))

    ranks: dict[tuple[int, float], dict[tuple[Any, ...], tuple[Any, ...]]] = defaultdict(dict)
    for key, fs in groups.items():
        t, cl, _sv, port, proto, w = key
        if t in (NEW_EDGE, NEW_PORT):
            first = min(f.start for f in fs)
            ranks[(cl, w)][key] = (first, port, proto,
                                   _earliest([(f.start, f.server_ip) for f in fs])[0])
    out = []
    scans: dict[tuple[int, float], list[tuple[Any, ...]]] = defaultdict(list)
    for key, fs in groups.items():
        cl, w = key[1], key[5]
        r = ranks[(cl, w)]
        if key in r and len(r) >= threshold and sorted(r.values())[threshold - 1] <= (
                r[key][0] + horizon, *r[key][1:]):
            scans[(cl, w)].append(key)
        else:
            out.append(record(key, fs))
    for (cl, w), members in scans.items():
        fs = [f for k in members for f in groups[k]]
        proto = min((ranks[(cl, w)][k][0], k[4]) for k in members)[1]
        out.append((*record((SCAN, cl, -1, 0, proto, w), fs), len(ranks[(cl, w)]),
                    tuple(sorted({k[3] for k in members})),
                    tuple(sorted({k[2] for k in members}))))
    return sorted(out, key=repr)


def jittered(flows: list[C], lateness: float, seed: int) -> list[C]:
    """``flows`` in an arrival order where each flow comes before event time has moved more
    than ``lateness`` past it (sorted by start plus a random delay up to ``lateness``)."""
    rng = random.Random(seed)
    return [f for _, f in sorted(((f.start + rng.uniform(0, lateness), i), f)
                                 for i, f in enumerate(flows))]


def _realistic(f: C) -> C:
    """A (client, server) pair is either known (new ports) or not (new edges), never both."""
    if f.type == VOLUME:
        return f
    return C(**{**f.__dict__, "type": NEW_PORT if (f.client + f.server) % 3 == 0 else NEW_EDGE})


candidate = st.builds(
    C,
    type=st.sampled_from([NEW_EDGE, NEW_EDGE, NEW_PORT, VOLUME]),
    client=st.integers(2, 4),
    server=st.integers(5, 9),
    port=st.sampled_from([22, 80, 443, 5432]),
    start=st.integers(0, int(6 * H)).map(lambda s: W0 + s) | st.integers(0, 90).map(
        lambda s: W0 + 100 + s),  # some dense seconds: ties and scans within the lateness
    proto=st.sampled_from([6, 6, 17]),
    bytes=st.integers(0, 10_000),
    rejected=st.booleans(),
    client_ip=st.sampled_from([f"10.0.0.{i}" for i in range(12)]),
    server_ip=st.sampled_from([f"10.0.1.{i}" for i in range(3)]),
).map(_realistic)


@settings(max_examples=200, deadline=None)
@given(flows=st.lists(candidate, max_size=80), cuts=st.lists(st.integers(0, 80), max_size=8),
       detect=st.sampled_from([0.0, 30.0, 60.0]), lateness=st.sampled_from([60.0, 300.0, 5000.0]),
       threshold=st.integers(2, 6), seed=st.integers(0, 3))
def test_final_versions_equal_the_reference_whatever_the_batches_and_order_within_lateness(
        flows: list[C], cuts: list[int], detect: float, lateness: float, threshold: int,
        seed: int) -> None:
    arrival = (sorted(flows, key=lambda f: f.start) if seed == 0
               else jittered(flows, detect / 2, seed))
    bounds = [0, *sorted(c for c in cuts if c < len(arrival)), len(arrival)]
    batches = [arrival[a:b] for a, b in pairwise(bounds)]
    w = ViolationWindows(window=H, lateness=lateness, scan_threshold=threshold,
                         detect_lateness=detect)
    assert ours(feed(w, batches)) == reference(flows, H, threshold, detect / 2)
    assert len(w) == 0 and w.reopened_ == 0


def test_final_versions_equal_across_batch_sizes_and_shuffles() -> None:
    rng = random.Random(3)
    flows = [C(rng.choice([NEW_EDGE, NEW_EDGE, VOLUME]), rng.randrange(2, 6),
               rng.randrange(5, 40), rng.choice([22, 80, 443, 445, 5432]),
               W0 + rng.uniform(0, 3 * H), client_ip=f"10.0.0.{rng.randrange(20)}",
               server_ip=f"10.0.1.{rng.randrange(9)}") for _ in range(1500)]
    flows = [_realistic(f) for f in flows]
    flows += attempts(60, step=0.5, client=9)  # a fast scan
    want = reference(flows, H, 20, 30.0)
    ordered = sorted(flows, key=lambda f: f.start)
    for cut in (1, 7, 1000, len(flows)):
        for arrival in (ordered, jittered(flows, 30.0, cut)):
            w = ViolationWindows(window=H, lateness=300, scan_threshold=20, detect_lateness=60)
            got = ours(feed(w, [arrival[i:i + cut] for i in range(0, len(arrival), cut)]))
            assert got == want, cut
