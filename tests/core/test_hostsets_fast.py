"""The per-host state's fast paths against slow obvious versions, on random inputs: the sort
helpers against numpy's stable sorts, the release order against a full lexsort, and the
per-flow running counts of :class:`HostWindows` (which feeds its distinct counters one flow
per distinct tuple) against plain Python sets."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.hosts import HostFlows, HostWindows, _release_order
from pipeline.core.hostsets import (
    group_cummax,
    group_cumsum,
    sorted_unique,
    stable_order,
    unique_first,
    unique_inverse,
)

small_ints = st.lists(st.integers(0, 6), min_size=0, max_size=60)


@given(small_ints)
def test_unique_first_is_numpys_unique(values: list[int]) -> None:
    x = np.array(values, dtype=np.uint64)
    want = np.unique(x, return_index=True, return_inverse=True)
    got = unique_first(x)
    for a, b in zip(want, got, strict=True):
        assert a.tolist() == b.tolist()
    assert sorted_unique(x).tolist() == want[0].tolist()
    u, inv = unique_inverse(x.astype(np.int64) - 3)
    want_u, want_inv = np.unique(x.astype(np.int64) - 3, return_inverse=True)
    assert (u.tolist(), inv.tolist()) == (want_u.tolist(), want_inv.tolist())


@given(small_ints)
def test_stable_order_and_group_runs_match_a_stable_sort(values: list[int]) -> None:
    g = np.array(values, dtype=np.int64)
    assert stable_order(g).tolist() == np.argsort(g, kind="stable").tolist()
    v = np.arange(len(g), dtype=np.int64) % 5
    sums: dict[int, int] = defaultdict(int)
    maxima: dict[int, int] = defaultdict(int)
    want_sum, want_max = [], []
    for gi, vi in zip(values, v.tolist(), strict=True):
        sums[gi] += vi
        maxima[gi] = max(maxima[gi], vi)
        want_sum.append(sums[gi])
        want_max.append(maxima[gi])
    assert group_cumsum(g, v).tolist() == want_sum
    assert group_cummax(g, v).tolist() == want_max


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 2),
                          st.integers(0, 1), st.integers(0, 2)), max_size=50))
def test_release_order_is_the_full_lexsort(rows: list[tuple[int, ...]]) -> None:
    n = len(rows)
    col = np.array(rows, dtype=np.int64).reshape(n, 5)
    f = HostFlows(start=col[:, 0].astype(np.float64), host=col[:, 1].astype(np.uint64),
                  peer=col[:, 2].astype(np.uint64), app=np.zeros(n, dtype=np.int64),
                  peer_app=np.zeros(n, dtype=np.int64), port=col[:, 3].astype(np.int32),
                  proto=np.full(n, 6, dtype=np.int16), bytes=col[:, 4],
                  rejected=np.zeros(n, dtype=bool), failed=np.zeros(n, dtype=bool),
                  new_edge=np.zeros(n, dtype=bool), edge=np.zeros(n, dtype=np.int64))
    want = np.lexsort((f.bytes, f.proto, f.port, f.peer, f.host, f.start))
    assert _release_order(f, np.arange(n)).tolist() == want.tolist()
    rows = np.arange(0, n, 2)  # a subset, as the release buffer passes
    sub = np.lexsort((f.bytes[rows], f.proto[rows], f.port[rows], f.peer[rows], f.host[rows],
                      f.start[rows]))
    assert _release_order(f, rows).tolist() == sub.tolist()


flow_rows = st.lists(st.tuples(st.integers(0, 7199), st.integers(1, 3), st.integers(1, 5),
                               st.sampled_from([22, 445]), st.integers(0, 2), st.booleans()),
                     min_size=1, max_size=80)


@settings(max_examples=60, deadline=None)
@given(st.lists(flow_rows, min_size=1, max_size=3))
def test_running_counts_match_python_sets_across_batches(batches: list[list[tuple]]) -> None:
    w = HostWindows(window=3600.0)
    peers: dict[tuple, set] = defaultdict(set)
    flows: dict[tuple, int] = defaultdict(int)
    fails: dict[tuple, int] = defaultdict(int)
    t0 = 0
    for batch in batches:
        rows = sorted((t0 + r[0], *r[1:]) for r in batch)
        t0 = rows[-1][0]
        n = len(rows)
        col = np.array([r[:5] for r in rows], dtype=np.int64)
        failed = np.array([r[5] for r in rows], dtype=bool)
        f = HostFlows(start=col[:, 0].astype(np.float64), host=col[:, 1].astype(np.uint64),
                      peer=col[:, 2].astype(np.uint64), app=col[:, 1] % 2,
                      peer_app=col[:, 4], port=col[:, 3].astype(np.int32),
                      proto=np.full(n, 6, dtype=np.int16), bytes=np.ones(n, dtype=np.int64),
                      rejected=failed, failed=failed, new_edge=np.zeros(n, dtype=bool),
                      edge=np.zeros(n, dtype=np.int64))
        got = w.add(f, running=True)
        want_pp, want_flows, want_fail = [], [], []
        for t, host, peer, port, _, bad in rows:
            hw = (host, t // 3600)
            peers[(*hw, port)].add(peer)
            flows[hw] += 1
            fails[hw] += bad
            want_pp.append(len(peers[(*hw, port)]))
            want_flows.append(flows[hw])
            want_fail.append(fails[hw])
        assert got.port_peers.tolist() == want_pp
        assert got.flows.tolist() == want_flows
        assert got.failures.tolist() == want_fail
    feats = w.take_closed(float("inf"), everything=True)
    by_hw: dict[tuple, set] = defaultdict(set)
    for (host, win, _), s in peers.items():
        by_hw[(host, win)] |= s
    want = {(h, win * 3600.0): len(s) for (h, win), s in by_hw.items()}
    got_peers = dict(zip(zip(feats["host"].tolist(), feats["window"].tolist(), strict=True),
                         feats["peers"].tolist(), strict=True))
    assert got_peers == want
    pairs = {hw: sum(len(s) for (h, win, _), s in peers.items() if (h, win) == hw)
             for hw in by_hw}
    assert dict(zip(zip(feats["host"].tolist(), (feats["window"] // 3600).astype(int).tolist(),
                        strict=True), feats["pairs"].tolist(), strict=True)) == pairs
