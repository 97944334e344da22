"""Suppression windows (core/detect.py) on hand-built candidates, and against a slow
reference (dicts, one flow at a time) on random candidates cut into random batches."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.detect import (
    NEW_EDGE,
    NEW_PORT,
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
    """Replay-style: add each (time-sorted) batch, advance to its newest start, close; at the
    end (unless ``end`` is false) close everything."""
    out: list[Agg] = []
    for b in batches:
        if b:
            w.add(cands(b))
            w.advance(max(f.start for f in b))
        out += w.take_forced() + w.close()
    return out + w.close(everything=True) if end else out


def summary(a: Agg) -> tuple[Any, ...]:
    return (a.type, a.client, a.server, a.port, a.proto, a.window, a.count, a.bytes, a.rejected,
            a.first, a.last, tuple(a.client_ips), tuple(a.server_ips))


# -- hand-built cases ---------------------------------------------------------------------


def test_a_window_closes_once_the_watermark_passes_its_end_plus_lateness() -> None:
    w = ViolationWindows(window=H, lateness=300)
    w.add(cands([C(NEW_EDGE, 2, 3, 5432, W0 + 10), C(NEW_EDGE, 2, 3, 5432, W0 + 20)]))
    w.advance(W0 + H + 299)
    assert w.close() == [] and len(w) == 1
    w.advance(W0 + 5)  # the watermark never goes backwards
    assert w.watermark_ == W0 + H - 1
    w.advance(W0 + H + 300)
    [a] = w.close()
    assert (a.type, a.window, a.count, a.first, a.last) == (NEW_EDGE, W0, 2, W0 + 10, W0 + 20)
    assert len(w) == 0 and w.close(everything=True) == []


def test_one_event_per_edge_and_window_with_counts_bytes_and_rejections() -> None:
    flows = [C(NEW_PORT, 2, 3, 8443, W0 + i * 60, bytes=10 * i, rejected=i % 2 == 0)
             for i in range(1, 6)] + [C(NEW_PORT, 2, 3, 8443, W0 + H + 1)]
    aggs = feed(ViolationWindows(window=H), [flows])
    assert [(a.window, a.count, a.bytes, a.rejected) for a in aggs] == [
        (W0, 5, 150, 2), (W0 + H, 1, 100, 0)]


def test_scan_folding_starts_at_the_threshold_of_distinct_new_targets() -> None:
    def attempts(n: int) -> list[C]:
        return [C(NEW_EDGE if i % 2 else NEW_PORT, 7, 100 + i, 1000 + i, W0 + i)
                for i in range(n)]

    below = feed(ViolationWindows(window=H, scan_threshold=5), [attempts(4)])
    assert sorted(a.type for a in below) == [NEW_EDGE, NEW_EDGE, NEW_PORT, NEW_PORT]
    [scan] = feed(ViolationWindows(window=H, scan_threshold=5), [attempts(5)])
    assert (scan.type, scan.client, scan.server, scan.port, scan.count) == (SCAN, 7, -1, 0, 5)
    assert scan.extra["targets"] == 5
    assert scan.extra["ports"] == [1000, 1001, 1002, 1003, 1004]
    assert sorted(scan.extra["servers"]) == [100, 101, 102, 103, 104]
    # the same target again is no new target; other clients and other windows do not count
    again = attempts(4) + [C(NEW_EDGE, 7, 100, 1000, W0 + 50), C(NEW_EDGE, 8, 200, 1, W0 + 60),
                           C(NEW_EDGE, 7, 300, 1, W0 + H + 1)]
    assert SCAN not in {a.type for a in feed(ViolationWindows(window=H, scan_threshold=5),
                                             [sorted(again, key=lambda f: f.start)])}


def test_volume_and_off_hours_candidates_are_never_folded_into_scans() -> None:
    flows = [C(VOLUME, 7, 100 + i, 1000 + i, W0 + i) for i in range(10)]
    aggs = feed(ViolationWindows(window=H, scan_threshold=3), [flows])
    assert [a.type for a in aggs] == [VOLUME] * 10


def test_a_late_flow_reopens_its_closed_window_with_the_cumulative_count() -> None:
    w = ViolationWindows(window=H, lateness=0)
    w.add(cands([C(NEW_EDGE, 2, 3, 22, W0 + 1)]))
    w.advance(W0 + 2 * H)
    [first] = w.close()
    w.add(cands([C(NEW_EDGE, 2, 3, 22, W0 + 2)]))  # belongs to the closed window
    w.advance(W0 + 2 * H + 1)
    [again] = w.close()
    assert again.key() == first.key() and again.count == 2 and w.reopened_ == 1


def test_the_bound_on_open_windows_closes_the_oldest_first() -> None:
    w = ViolationWindows(window=H, max_open=4)
    w.add(cands([C(NEW_EDGE, 2, 3, 80 + i, W0 + i * H) for i in range(5)]))
    forced = w.take_forced()
    assert w.forced_closes_ == 1 and len(w) <= 2
    assert [a.window for a in forced] == sorted(a.window for a in forced)
    assert max(a.window for a in forced) < min(k[5] for k in w.open_)
    assert w.take_forced() == []


def test_address_samples_are_the_first_distinct_in_flow_order_whatever_the_batches() -> None:
    flows = [C(NEW_EDGE, 2, 3, 443, W0 + i, client_ip=f"10.0.0.{i % 11}") for i in range(30)]
    want = [f"10.0.0.{i}" for i in range(SAMPLE)]
    for cut in (1, 7, 30):
        [a] = feed(ViolationWindows(window=H), [flows[i:i + cut] for i in range(0, 30, cut)])
        assert a.client_ips == want and a.server_ips == ["10.0.1.1"]


def test_numeric_evidence_keeps_its_maximum() -> None:
    flows = [C(VOLUME, 2, 3, 443, W0 + i, extra={"hour_bytes": b, "note": f"n{i}"})
             for i, b in enumerate([5.0, 9.0, 7.0])]
    [a] = feed(ViolationWindows(window=H), [flows[:2], flows[2:]])
    assert a.extra == {"hour_bytes": 9.0, "note": "n2"}


def test_state_round_trip_gives_the_same_events() -> None:
    flows = [C(NEW_EDGE if i % 3 else NEW_PORT, i % 4, 10 + i % 5, 80 + i % 3, W0 + i * 500,
               client_ip=f"10.0.0.{i % 9}") for i in range(40)]
    params = {"window": H, "lateness": 100.0, "scan_threshold": 3, "max_open": 50}
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


def reference(flows: list[C], window: float, threshold: int) -> list[tuple[Any, ...]]:
    """One flow at a time into plain dicts; scans folded per (client, window) at the end."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for f in sorted(flows, key=lambda f: f.start):  # input order = time order (replay)
        w = (f.start // window) * window
        g = groups.setdefault((f.type, f.client, f.server, f.port, f.proto, w), {
            "count": 0, "bytes": 0, "rejected": 0, "first": f.start, "last": f.start,
            "cips": [], "sips": []})
        g["count"] += 1
        g["bytes"] += f.bytes
        g["rejected"] += int(f.rejected)
        g["first"], g["last"] = min(g["first"], f.start), max(g["last"], f.start)
        for ips, ip in ((g["cips"], f.client_ip), (g["sips"], f.server_ip)):
            if ip not in ips and len(ips) < SAMPLE:
                ips.append(ip)
    targets: dict[tuple[int, float], set[tuple[int, int, int]]] = defaultdict(set)
    for (t, cl, sv, port, proto, w) in groups:
        if t in (NEW_EDGE, NEW_PORT):
            targets[(cl, w)].add((sv, port, proto))
    out = []
    scans: dict[tuple[int, float], list[tuple[Any, ...]]] = defaultdict(list)
    for (t, cl, sv, port, proto, w), g in groups.items():
        if t in (NEW_EDGE, NEW_PORT) and len(targets[(cl, w)]) >= threshold:
            scans[(cl, w)].append((port, g))
            continue
        out.append((t, cl, sv, port, proto, w, g["count"], g["bytes"], g["rejected"],
                    g["first"], g["last"], tuple(g["cips"]), tuple(g["sips"])))
    for (cl, w), members in scans.items():
        gs = [g for _, g in members]
        out.append((SCAN, cl, len(targets[(cl, w)]), sorted({p for p, _ in members}),
                    sum(g["count"] for g in gs), sum(g["bytes"] for g in gs),
                    min(g["first"] for g in gs), max(g["last"] for g in gs)))
    return sorted(out, key=repr)


def ours(aggs: list[Agg]) -> list[tuple[Any, ...]]:
    out = []
    for a in aggs:
        if a.type == SCAN:
            out.append((SCAN, a.client, a.extra["targets"], a.extra["ports"], a.count, a.bytes,
                        a.first, a.last))
        else:
            out.append(summary(a))
    return sorted(out, key=repr)


candidate = st.builds(
    C,
    type=st.sampled_from([NEW_EDGE, NEW_EDGE, NEW_PORT, VOLUME]),
    client=st.integers(2, 4),
    server=st.integers(5, 9),
    port=st.sampled_from([22, 80, 443, 5432]),
    start=st.integers(0, int(6 * H)).map(lambda s: W0 + s),
    bytes=st.integers(0, 10_000),
    rejected=st.booleans(),
    client_ip=st.sampled_from([f"10.0.0.{i}" for i in range(12)]),
    server_ip=st.sampled_from([f"10.0.1.{i}" for i in range(3)]),
)


@settings(max_examples=150, deadline=None)
@given(flows=st.lists(candidate, max_size=60), cuts=st.lists(st.integers(0, 60), max_size=6),
       lateness=st.sampled_from([0.0, 300.0, 5000.0]), threshold=st.integers(2, 6))
def test_windows_equal_the_reference_whatever_the_batch_boundaries(
        flows: list[C], cuts: list[int], lateness: float, threshold: int) -> None:
    flows = sorted(flows, key=lambda f: f.start)
    bounds = [0, *sorted(c for c in cuts if c < len(flows)), len(flows)]
    batches = [flows[a:b] for a, b in pairwise(bounds)]
    w = ViolationWindows(window=H, lateness=lateness, scan_threshold=threshold)
    assert ours(feed(w, batches)) == reference(flows, H, threshold)
    assert len(w) == 0 and w.reopened_ == 0
