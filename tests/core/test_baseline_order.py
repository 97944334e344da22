"""The learned baseline does not depend on arrival order within the allowed lateness (issue 10
item 7): flows reordered by up to ``lateness``, or several time-sorted sources interleaved as
a streaming worker reads a multi-partition backlog (watermark = the slowest source), learn
exactly what the time-sorted stream learns."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.baseline import DAY, HOUR, EdgeBaseline, edge_keys

LATENESS = 300.0
COMPARED = ("keys_", "flows_", "bytes_", "packets_", "first_seen_", "last_seen_", "hour_mask_",
            "days_", "hist_", "peak_hour_bytes_", "threshold_", "median_hour_bytes_")


def _flows(rng: np.random.Generator, n: int = 30_000, days: float = 12.0):
    client = rng.integers(1, 6, n)
    server = rng.integers(6, 9, n)
    key = edge_keys(client, server, np.full(n, 443), np.full(n, 6))
    start = np.sort(1_767_225_600 + rng.uniform(0, days * DAY, n))
    # some edges are quiet for days at a time: day counts matter
    quiet = (client == 5) & (((start // DAY) % 3) != 0)
    nbytes = rng.lognormal(8, 2, n).astype(np.int64) + 1
    keep = ~quiet
    return key[keep], start[keep], nbytes[keep], np.maximum(nbytes[keep] // 1000, 1)


def _learn(batches, *, watermarks=None) -> EdgeBaseline:
    b = EdgeBaseline(lateness=LATENESS)
    for i, (k, s, nb, pk) in enumerate(batches):
        b.partial_fit(k, s, nb, pk, watermark=None if watermarks is None else watermarks[i])
    return b.freeze()


def _batches(order: np.ndarray, flows, sizes: np.ndarray):
    k, s, nb, pk = flows
    cuts = np.cumsum(sizes)
    return [(k[i], s[i], nb[i], pk[i]) for i in np.split(order, cuts[cuts < len(order)])]


def _assert_same(a: EdgeBaseline, b: EdgeBaseline) -> None:
    order_a, order_b = np.argsort(a.keys_[:a.n_]), np.argsort(b.keys_[:b.n_])
    for name in COMPARED:
        np.testing.assert_array_equal(getattr(a, name)[:a.n_][order_a],
                                      getattr(b, name)[:b.n_][order_b], err_msg=name)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_flows_reordered_within_the_lateness_learn_the_same(seed: int) -> None:
    rng = np.random.default_rng(seed)
    flows = _flows(rng)
    n = len(flows[0])
    sizes = rng.integers(1, 400, n)
    ordered = _learn(_batches(np.arange(n), flows, sizes))
    # each flow arrives at most LATENESS after flows that start after it
    arrival = np.argsort(flows[1] + rng.uniform(0, LATENESS, n), kind="stable")
    reordered = _learn(_batches(arrival, flows, sizes))
    _assert_same(ordered, reordered)
    assert ordered.days_[:ordered.n_].max() == 12


def _interleaved(rng: np.random.Generator, flows, sources: int):
    """Flows split over time-sorted sources, read chunk by chunk from a random source, each
    batch with the watermark a streaming worker uses: the slowest source's newest flow."""
    n = len(flows[0])
    src = rng.integers(0, sources, n)
    queues = [list(np.flatnonzero(src == i)) for i in range(sources)]
    pos = [0] * sources
    newest = [-np.inf] * sources
    order, sizes, marks = [], [], []
    while any(pos[i] < len(queues[i]) for i in range(sources)):
        i = int(rng.choice([j for j in range(sources) if pos[j] < len(queues[j])]))
        take = queues[i][pos[i]:pos[i] + int(rng.integers(50, 3000))]
        pos[i] += len(take)
        newest[i] = float(flows[1][take[-1]])
        done = [pos[j] >= len(queues[j]) for j in range(sources)]
        order.extend(take)
        sizes.append(len(take))
        marks.append(min(t for t, d in zip(newest, done, strict=True) if not d)
                     if not all(done) else float(flows[1].max()))
    return np.array(order), np.array(sizes), marks


@pytest.mark.parametrize("seed", [4, 5])
def test_a_multi_partition_backlog_learns_what_replay_learns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    flows = _flows(rng)
    n = len(flows[0])
    ordered = _learn(_batches(np.arange(n), flows, rng.integers(1, 400, n)))
    order, sizes, marks = _interleaved(rng, flows, sources=4)
    skew = max(float(flows[1][order[:i + 1]].max() - flows[1][order[i]])
               for i in range(0, len(order), 97))
    assert skew > 6 * HOUR  # sources really run hours apart
    streamed = _learn(_batches(order, flows, sizes), watermarks=marks)
    _assert_same(ordered, streamed)


def test_days_are_counted_once_in_any_order_within_128_days() -> None:
    b = EdgeBaseline()
    key = edge_keys(np.array([1]), np.array([2]), np.array([80]), np.array([6]))
    days = [100, 3, 57, 3, 99, 64, 1, 120, 64, 0, 127, 126, 65]
    for d in days:
        b.partial_fit(key, np.array([1e9 + d * DAY + 10]), np.array([100]), np.array([1]))
    assert int(b.days_[0]) == len(set(days))
    b.partial_fit(key, np.array([1e9 + 300 * DAY]), np.array([100]), np.array([1]))
    b.partial_fit(key, np.array([1e9 + 100 * DAY]), np.array([100]), np.array([1]))  # 200 back
    assert int(b.days_[0]) == len(set(days)) + 1  # beyond the map: learned, day not counted
    assert int(b.flows_[0]) == len(days) + 2


def test_open_hours_are_bounded() -> None:
    b = EdgeBaseline(lateness=10 * DAY, max_open_hours=50)
    key = edge_keys(np.array([1]), np.array([2]), np.array([80]), np.array([6]))
    for h in range(200):
        b.partial_fit(key, np.array([1e9 + h * HOUR]), np.array([1000]), np.array([1]))
    assert len(b.open_keys_) <= 50 and b.early_closed_hours_ >= 150
    b.freeze()
    assert int(b.hist_[0].sum()) == 200  # every hour a sample, early or not
