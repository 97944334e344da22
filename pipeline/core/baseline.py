"""The learned per-edge baseline (the "intended traffic" matrix) and its robust statistics.

An *edge* is (client workload, server workload, service port, protocol), packed into one
int64 key so batches group with numpy. During the audit phase accepted flows are learned;
afterwards the baseline is frozen and only looked up. Per edge it keeps: first/last seen,
flows/bytes/packets, distinct days, a 24-bit UTC hour-of-day activity mask, and a log2
histogram of hourly byte volume (median/MAD → a per-edge hourly volume threshold).

Bounded state: at most ``max_edges`` edges in total and ``max_edges_per_workload`` per client
and per server workload (a port scan during audit saturates the scanner's budget, it does not
grow memory). Edges past a bound are not learned; the workload is marked *saturated* (not
ready to enforce) and the refusals counted. Memory ≈ 300 B per edge (arrays + index).

Estimator-like: ``__init__`` only stores parameters, learned attributes end in ``_`` and
exist from the first :meth:`~EdgeBaseline.partial_fit` (or :meth:`~EdgeBaseline.freeze`) on,
``partial_fit`` returns self; :meth:`~EdgeBaseline.state` / :meth:`~EdgeBaseline.from_state`
give the learned state as plain numpy arrays and JSON values (no pickle).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Self

import numpy as np

from pipeline.core.workloads import MAX_WORKLOADS

HIST_BINS = 48  # log2 bins of bytes per active hour (2^48 B/h is far above any link)
HOUR = 3600.0
DAY = 86400.0
_ALL_HOURS = (1 << 24) - 1
_CAPACITY = 1024  # rows allocated at first use; doubles as edges are admitted
# the per-edge learned arrays (row i describes edge i): dtype, per-row shape, unused-row value
_EDGE_ARRAYS: dict[str, tuple[type[np.generic], tuple[int, ...], float]] = {
    "keys_": (np.int64, (), 0),
    "first_seen_": (np.float64, (), 0),
    "last_seen_": (np.float64, (), 0),
    "flows_": (np.int64, (), 0),
    "bytes_": (np.int64, (), 0),
    "packets_": (np.int64, (), 0),
    "hour_mask_": (np.int64, (), 0),
    "days_": (np.int32, (), 0),
    "last_day_": (np.int64, (), -1),
    "hist_": (np.uint16, (HIST_BINS,), 0),
    "peak_hour_bytes_": (np.float64, (), 0),
    "cur_hour_": (np.int64, (), -1),
    "cur_bytes_": (np.float64, (), 0),
    "threshold_": (np.float64, (), np.inf),
    "median_hour_bytes_": (np.float64, (), 0),
}
EDGE_ARRAYS = tuple(_EDGE_ARRAYS)  # names of the per-edge learned arrays, keys_ first


def edge_keys(
    client: np.ndarray, server: np.ndarray, port: np.ndarray, proto: np.ndarray
) -> np.ndarray:
    """Pack edges into int64: client wid (19 b) | server wid (19 b) | port (16 b) | proto (8 b)."""
    return (
        (client.astype(np.int64) << 43)
        | (server.astype(np.int64) << 24)
        | (port.astype(np.int64) << 8)
        | proto.astype(np.int64)
    )


def unpack_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`edge_keys`: (client wid, server wid, port, proto)."""
    k = keys.astype(np.int64)
    return (k >> 43) & 0x7FFFF, (k >> 24) & 0x7FFFF, (k >> 8) & 0xFFFF, k & 0xFF


def _bins(values: np.ndarray) -> np.ndarray:
    return np.clip(np.log2(np.maximum(values, 1.0)).astype(np.int64), 0, HIST_BINS - 1)


def popcount24(mask: np.ndarray) -> np.ndarray:
    """Number of active hours in hour-of-day masks."""
    return np.bitwise_count(mask.astype(np.uint32)).astype(np.int64)


def dilate24(mask: np.ndarray) -> np.ndarray:
    """Hour-of-day mask widened by one hour each side (wrapping at midnight)."""
    m = mask.astype(np.int64)
    left = ((m << 1) | (m >> 23)) & _ALL_HOURS
    right = ((m >> 1) | (m << 23)) & _ALL_HOURS
    return m | left | right


class EdgeBaseline:
    """Learned edges with per-edge statistics; see the module docstring."""

    # learned scalars readable before the first fit (an empty baseline)
    n_: int = 0
    frozen_: bool = False
    refused_: int = 0  # edges refused by a bound
    saturated_: Mapping[int, int] = MappingProxyType({})  # wid → edges refused
    # learned arrays, allocated at first use: _EDGE_ARRAYS, plus per-wid edge counts
    rows_: dict[int, int]  # edge key → row
    keys_: np.ndarray
    first_seen_: np.ndarray
    last_seen_: np.ndarray
    flows_: np.ndarray
    bytes_: np.ndarray
    packets_: np.ndarray
    hour_mask_: np.ndarray
    days_: np.ndarray
    last_day_: np.ndarray
    hist_: np.ndarray
    peak_hour_bytes_: np.ndarray
    cur_hour_: np.ndarray
    cur_bytes_: np.ndarray
    threshold_: np.ndarray
    median_hour_bytes_: np.ndarray
    client_edges_: np.ndarray
    server_edges_: np.ndarray
    _PARAMS: ClassVar[tuple[str, ...]] = (
        "max_edges", "max_edges_per_workload", "volume_min_bytes", "volume_mad_k",
        "volume_peak_factor")

    def __init__(
        self,
        *,
        max_edges: int = 500_000,
        max_edges_per_workload: int = 4_096,
        volume_min_bytes: float = 1e6,
        volume_mad_k: float = 3.0,
        volume_peak_factor: float = 3.0,
    ) -> None:
        self.max_edges = max_edges
        self.max_edges_per_workload = max_edges_per_workload
        self.volume_min_bytes = volume_min_bytes
        self.volume_mad_k = volume_mad_k
        self.volume_peak_factor = volume_peak_factor

    # -- storage -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_

    def _allocate(self, cap: int = _CAPACITY) -> None:
        """Create the (empty) learned state, once."""
        if hasattr(self, "keys_"):
            return
        for name, (dtype, shape, fill) in _EDGE_ARRAYS.items():
            setattr(self, name, np.full((cap, *shape), fill, dtype=dtype))
        self.rows_ = {}
        self.client_edges_ = np.zeros(1024, dtype=np.int32)
        self.server_edges_ = np.zeros(1024, dtype=np.int32)
        self.saturated_ = {}

    def _grow(self, need: int) -> None:
        cap = len(self.keys_)
        if need <= cap:
            return
        new = max(need, cap * 2)
        for name, (dtype, shape, fill) in _EDGE_ARRAYS.items():
            arr = np.full((new, *shape), fill, dtype=dtype)
            arr[:cap] = getattr(self, name)
            setattr(self, name, arr)

    def _count_arrays(self, wid: int) -> None:
        if wid >= len(self.client_edges_):
            size = min(MAX_WORKLOADS, max(wid + 1, len(self.client_edges_) * 2))
            for name in ("client_edges_", "server_edges_"):
                old = getattr(self, name)
                arr = np.zeros(size, dtype=np.int32)
                arr[: len(old)] = old
                setattr(self, name, arr)

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The learned state: the first ``n`` rows of every per-edge array (by name, see
        :data:`EDGE_ARRAYS`), the per-wid edge counts, and JSON scalars. Copies nothing
        that :meth:`from_state` cannot rebuild from it."""
        self._allocate()
        n = self.n_
        out: dict[str, Any] = {
            "n": n,
            "frozen": self.frozen_,
            "refused": self.refused_,
            "saturated": [[k, v] for k, v in self.saturated_.items()],
        }
        out.update({name: getattr(self, name)[:n] for name in EDGE_ARRAYS})
        out["client_edges_"] = self.client_edges_
        out["server_edges_"] = self.server_edges_
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> Self:
        """A baseline with ``params`` (as for ``__init__``) and the learned ``state``."""
        b = cls(**params)
        n = int(state["n"])
        b._allocate(max(n, 1))
        for name in EDGE_ARRAYS:
            getattr(b, name)[:n] = state[name]
        b.client_edges_ = np.array(state["client_edges_"], dtype=np.int32)
        b.server_edges_ = np.array(state["server_edges_"], dtype=np.int32)
        b.n_ = n
        b.rows_ = {int(k): i for i, k in enumerate(b.keys_[:n].tolist())}
        b.frozen_ = bool(state["frozen"])
        b.refused_ = int(state["refused"])
        b.saturated_ = {int(k): int(v) for k, v in state["saturated"]}
        return b

    # -- lookup --------------------------------------------------------------------------
    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Row per key, -1 where the edge is not in the baseline (keys should be few/distinct)."""
        if not self.n_:
            return np.full(len(keys), -1, dtype=np.int64)
        get = self.rows_.get
        return np.fromiter((get(int(k), -1) for k in keys), dtype=np.int64, count=len(keys))

    # -- learning ------------------------------------------------------------------------
    def partial_fit(
        self, keys: np.ndarray, start: np.ndarray, nbytes: np.ndarray, packets: np.ndarray
    ) -> EdgeBaseline:
        """Learn accepted audit-phase flows (one entry per flow)."""
        if self.frozen_ or not len(keys):
            return self
        self._allocate()
        uniq, inv = np.unique(keys, return_inverse=True)
        rows = self.lookup(uniq)
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            first = np.full(len(uniq), np.inf)
            np.minimum.at(first, inv, start)
            for i in missing:
                rows[i] = self._admit(int(uniq[i]), float(first[i]))
        flow_rows = rows[inv]
        ok = flow_rows >= 0
        if not ok.all():
            flow_rows, start, nbytes, packets = flow_rows[ok], start[ok], nbytes[ok], packets[ok]
        if not len(flow_rows):
            return self
        self._update_totals(flow_rows, start, nbytes, packets)
        self._update_hours(flow_rows, start, nbytes, learn=True)
        return self

    def _admit(self, key: int, first: float) -> int:
        client, server = (key >> 43) & 0x7FFFF, (key >> 24) & 0x7FFFF
        self._count_arrays(max(client, server))
        cap = self.max_edges_per_workload
        if (
            self.n_ >= self.max_edges
            or self.client_edges_[client] >= cap
            or self.server_edges_[server] >= cap
        ):
            self.refused_ += 1
            saturated = self.saturated_
            assert isinstance(saturated, dict)  # allocated by _allocate
            for wid, full in ((client, self.client_edges_[client] >= cap),
                              (server, self.server_edges_[server] >= cap)):
                if full or self.n_ >= self.max_edges:
                    saturated[wid] = saturated.get(wid, 0) + 1
            return -1
        row = self.n_
        self._grow(row + 1)
        self.n_ += 1
        self.rows_[key] = row
        self.keys_[row] = key
        self.first_seen_[row] = first
        self.last_seen_[row] = first
        self.client_edges_[client] += 1
        self.server_edges_[server] += 1
        return row

    def _update_totals(
        self, rows: np.ndarray, start: np.ndarray, nbytes: np.ndarray, packets: np.ndarray
    ) -> None:
        np.add.at(self.flows_, rows, 1)
        np.add.at(self.bytes_, rows, nbytes)
        np.add.at(self.packets_, rows, packets)
        np.minimum.at(self.first_seen_, rows, start)
        np.maximum.at(self.last_seen_, rows, start)
        hours = (start // HOUR).astype(np.int64) % 24
        np.bitwise_or.at(self.hour_mask_, rows, np.left_shift(1, hours))
        days = (start // DAY).astype(np.int64)
        pairs = np.unique((rows.astype(np.int64) << 24) | (days & 0xFFFFFF))
        r, d = pairs >> 24, pairs & 0xFFFFFF
        newer = d > self.last_day_[r]
        np.add.at(self.days_, r[newer], 1)
        np.maximum.at(self.last_day_, r, d)

    def _update_hours(
        self, rows: np.ndarray, start: np.ndarray, nbytes: np.ndarray, *, learn: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fold flows into per-edge hourly byte accumulators.

        Completed hours go into the histogram while learning. Returns (rows, hour, bytes so far)
        of every (edge, hour) touched, for the volume check after the audit.
        """
        hour = (start // HOUR).astype(np.int64)
        combo = (rows.astype(np.int64) << 24) | (hour & 0xFFFFFF)  # hours since 1970 < 2^24
        groups, ginv = np.unique(combo, return_inverse=True)
        sums = np.bincount(ginv, weights=nbytes, minlength=len(groups))
        g_rows, g_hours = groups >> 24, groups & 0xFFFFFF
        # rank of each (edge, hour) group within its edge, groups being sorted by (row, hour)
        first_of_row = np.r_[True, g_rows[1:] != g_rows[:-1]]
        starts = np.flatnonzero(first_of_row)
        rank = np.arange(len(groups)) - np.repeat(starts, np.diff(np.r_[starts, len(groups)]))
        out_rows, out_hours, out_bytes = [], [], []
        for level in range(int(rank.max()) + 1 if len(rank) else 0):
            sel = rank == level
            r, h, b = g_rows[sel], g_hours[sel], sums[sel]
            cur = self.cur_hour_[r]
            same, newer, older = h == cur, h > cur, h < cur
            self.cur_bytes_[r[same]] += b[same]
            rn = r[newer]
            if learn:
                closing = rn[self.cur_hour_[rn] >= 0]
                self._hist_add(closing, self.cur_bytes_[closing])
                self._hist_add(r[older], b[older])
            self.cur_hour_[rn] = h[newer]
            self.cur_bytes_[rn] = b[newer]
            keep = same | newer
            out_rows.append(r[keep])
            out_hours.append(h[keep])
            out_bytes.append(self.cur_bytes_[r[keep]])
        if not out_rows:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0)
        return np.concatenate(out_rows), np.concatenate(out_hours), np.concatenate(out_bytes)

    def _hist_add(self, rows: np.ndarray, values: np.ndarray) -> None:
        if len(rows):
            np.add.at(self.hist_, (rows, _bins(values)), 1)
            np.maximum.at(self.peak_hour_bytes_, rows, values)

    def freeze(self) -> EdgeBaseline:
        """End of audit: close open hours, compute per-edge volume thresholds, stop learning."""
        if self.frozen_:
            return self
        self._allocate()
        n = self.n_
        open_rows = np.flatnonzero(self.cur_hour_[:n] >= 0)
        self._hist_add(open_rows, self.cur_bytes_[open_rows])
        self.cur_hour_[:n] = -1
        self.cur_bytes_[:n] = 0
        hist = self.hist_[:n].astype(np.float64)
        total = hist.sum(axis=1)
        centers = np.arange(HIST_BINS) + 0.5
        cdf = np.cumsum(hist, axis=1)
        med_bin = (cdf < (total / 2)[:, None]).sum(axis=1)
        med = centers[np.minimum(med_bin, HIST_BINS - 1)]
        dev = np.abs(centers[None, :] - med[:, None])
        order = np.argsort(dev, axis=1)
        dev_sorted = np.take_along_axis(dev, order, axis=1)
        w_sorted = np.take_along_axis(hist, order, axis=1)
        mad_idx = (np.cumsum(w_sorted, axis=1) < (total / 2)[:, None]).sum(axis=1)
        mad = dev_sorted[np.arange(n), np.minimum(mad_idx, HIST_BINS - 1)]
        spread = np.maximum(self.volume_mad_k * 1.4826 * mad, 3.0)  # at least 8x the median
        thr = np.maximum(2.0 ** (med + spread), self.volume_peak_factor * self.peak_hour_bytes_[:n])
        thr = np.maximum(thr, self.volume_min_bytes)
        self.threshold_[:n] = np.where(total > 0, thr, np.inf)
        self.median_hour_bytes_[:n] = np.where(total > 0, 2.0**med, 0.0)
        self.frozen_ = True
        return self

    def hourly_volume(
        self, rows: np.ndarray, start: np.ndarray, nbytes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """After audit: accumulate flows on known edges, in event-time order.

        Returns (indices of the flows at or after which their edge's hourly bytes exceed its
        threshold, the hour's cumulative bytes at each of them). Per flow, so the result does
        not depend on where batch boundaries fall within the hour.
        """
        if not len(rows):
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        hour = (start // HOUR).astype(np.int64)
        order = np.lexsort((start, hour, rows))
        r, h, b = rows[order], hour[order], nbytes[order].astype(np.int64)
        new_group = np.r_[True, (r[1:] != r[:-1]) | (h[1:] != h[:-1])]
        heads = np.flatnonzero(new_group)
        gid = np.cumsum(new_group) - 1
        g_rows, g_hours = r[heads], h[heads]
        base = np.where(self.cur_hour_[g_rows] == g_hours, self.cur_bytes_[g_rows], 0.0)
        csum = np.cumsum(b)
        before_group = csum[heads] - b[heads]
        cum = base[gid] + (csum - before_group[gid])
        over = cum > self.threshold_[r]
        self._update_hours(rows, start, nbytes, learn=False)
        return order[over], cum[over]


__all__ = ["DAY", "EDGE_ARRAYS", "HOUR", "EdgeBaseline", "dilate24", "edge_keys", "popcount24",
           "unpack_keys"]
