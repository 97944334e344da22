"""Bounded, vectorised keyed state for the per-host detectors: hashes, distinct counters,
running sums and log-scale histograms, all sorted numpy arrays (no Python dict per key).

Why sorted arrays: a batch is merged with one ``np.unique`` plus ``searchsorted``/``insert``
(memcpy-cheap), state snapshots are plain arrays, and every bound is a length check.

Keys are 64-bit hashes (:func:`mix`) of the parts they stand for (host address key, window
index, port, workload id …); two different keys colliding is a 2^-64 event per pair and
costs at most one miscounted member.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import numpy as np

_C1 = np.uint64(0x9E3779B97F4A7C15)
_C2 = np.uint64(0xBF58476D1CE4E5B9)
_C3 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix(x: np.ndarray | int) -> np.ndarray:
    """splitmix64 of each value (ints wrap into uint64).

    >>> int(mix(np.array([1]))[0]) != int(mix(np.array([2]))[0])
    True
    """
    z = np.asarray(x).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + _C1
        z = (z ^ (z >> _S30)) * _C2
        z = (z ^ (z >> _S27)) * _C3
    return np.asarray(z ^ (z >> _S31))


def combine(*parts: np.ndarray | int) -> np.ndarray:
    """One 64-bit key from several integer columns (order matters)."""
    h = mix(parts[0])
    for p in parts[1:]:
        h = mix(h ^ mix(np.asarray(p).astype(np.uint64) + np.uint64(0x632BE59BD9B4E019)))
    return h


def sorted_find(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in the sorted unique ``keys``, -1 where absent."""
    if not len(keys) or not len(values):
        return np.full(len(values), -1, dtype=np.int64)
    pos = np.searchsorted(keys, values)
    pos_c = np.minimum(pos, len(keys) - 1)
    return np.where(keys[pos_c] == values, pos_c, -1).astype(np.int64)


def take_at(arr: np.ndarray, pos: np.ndarray, fill: float | int = 0) -> np.ndarray:
    """``arr[pos]`` where ``pos >= 0``, ``fill`` elsewhere (``arr`` may be empty)."""
    if not len(arr):
        return np.full(len(pos), fill, dtype=arr.dtype)
    return np.where(pos >= 0, arr[np.maximum(pos, 0)], fill)


def unique_first(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(x, return_index=True, return_inverse=True)``, faster: one unstable
    (SIMD) argsort and the smallest row of each run, instead of a stable sort.

    >>> [a.tolist() for a in unique_first(np.array([5, 3, 5, 1]))]
    [[1, 3, 5], [3, 1, 0], [2, 1, 2, 0]]
    """
    n = len(x)
    if not n:
        return x[:0].copy(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    o = np.argsort(x)
    s = x[o]
    head = np.empty(n, dtype=bool)
    head[0] = True
    np.not_equal(s[1:], s[:-1], out=head[1:])
    starts = np.flatnonzero(head)
    first = np.minimum.reduceat(o, starts).astype(np.int64)
    inv = np.empty(n, dtype=np.int64)
    inv[o] = np.cumsum(head) - 1
    return s[starts], first, inv


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique(x)`` of integers by one sort (numpy's own first builds a hash table,
    several times slower on the batch sizes here).

    >>> sorted_unique(np.array([5, 3, 5, 1])).tolist()
    [1, 3, 5]
    """
    s = np.sort(x)
    if len(s) < 2:
        return s
    head = np.empty(len(s), dtype=bool)
    head[0] = True
    np.not_equal(s[1:], s[:-1], out=head[1:])
    return s[head]


def unique_inverse(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(x, return_inverse=True)`` of integers, by one unstable sort.

    >>> [a.tolist() for a in unique_inverse(np.array([5, 3, 5, 1]))]
    [[1, 3, 5], [2, 1, 2, 0]]
    """
    n = len(x)
    if not n:
        return x[:0].copy(), np.zeros(0, dtype=np.int64)
    o = np.argsort(x)
    s = x[o]
    head = np.empty(n, dtype=bool)
    head[0] = True
    np.not_equal(s[1:], s[:-1], out=head[1:])
    inv = np.empty(n, dtype=np.int64)
    inv[o] = np.cumsum(head) - 1
    return s[head], inv


class Repeats:
    """Rows grouped by a fine key (a hash of several columns), so that the grouping of any
    coarser key — one made of some of those columns — is computed on one row per distinct
    fine key: the first row of each fine key is also the first row of its coarse key.

    >>> r = Repeats(np.array([7, 9, 7, 4], dtype=np.uint64))
    >>> r.sel.tolist(), r.rep.tolist()
    ([0, 1, 3], [0, 1, 0, 2])
    >>> coarse = np.array([1, 1, 1, 0], dtype=np.uint64)  # per row
    >>> [a.tolist() for a in r.unique(coarse[r.sel])] == [
    ...     a.tolist() for a in unique_first(coarse)]
    True
    """

    def __init__(self, key: np.ndarray) -> None:
        _, first, inv = unique_first(key)
        self.sel = np.sort(first)  # the first row of each distinct key, in row order
        self.rep = np.searchsorted(self.sel, first)[inv]  # per row: its key's index in sel

    def unique(self, coarse_sel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`unique_first` of a coarse key per row, given it on the rows ``sel``."""
        gu, first, inv = unique_first(coarse_sel)
        return gu, self.sel[first], inv[self.rep]


def stable_order(group: np.ndarray) -> np.ndarray:
    """``np.argsort(group, kind="stable")`` of non-negative ints (group or row indices):
    (group, row) pairs are distinct, so an unstable sort of ``group × n + row`` gives the
    same order, faster (a stable sort when that product could overflow)."""
    n = len(group)
    if not n or int(group.min()) < 0 or int(group.max()) >= (1 << 62) // n:
        return np.argsort(group, kind="stable")
    return np.argsort(group.astype(np.int64) * n + np.arange(n, dtype=np.int64))


def group_cumsum(group: np.ndarray, values: np.ndarray,
                 order: np.ndarray | None = None) -> np.ndarray:
    """Running sum of ``values`` within each group, in row order (rows already ordered);
    ``order``, a stable argsort of ``group``, may be given to share one sort between calls."""
    if not len(group):
        return np.zeros(0, dtype=values.dtype)
    if order is None:
        order = stable_order(group)
    v = values[order]
    g = group[order]
    cs = np.cumsum(v)
    head = np.r_[True, g[1:] != g[:-1]]
    starts = np.flatnonzero(head)
    offset = (cs[starts] - v[starts])[np.cumsum(head) - 1]
    out = np.empty_like(cs)
    out[order] = cs - offset
    return out


class DistinctCounter:
    """Distinct (group, value) members and a count per group, for open windows.

    :meth:`add` takes rows in event-time order and returns, per row, its group's distinct
    count after that row, so a threshold crossing is found on the exact flow whatever the
    batch boundaries. Bounded: a group counts at most ``per_group`` members (then saturates),
    and at most ``max_members`` members are stored overall (past it new members are counted
    but not stored, and ``refused_`` grows); groups live until :meth:`prune` drops their
    window."""

    def __init__(self, *, per_group: int = 4096, max_members: int = 1 << 20) -> None:
        self.per_group = per_group
        self.max_members = max_members
        self.members_ = np.zeros(0, dtype=np.uint64)
        self.member_win_ = np.zeros(0, dtype=np.int64)
        self.groups_ = np.zeros(0, dtype=np.uint64)
        self.group_win_ = np.zeros(0, dtype=np.int64)
        self.count_ = np.zeros(0, dtype=np.int64)
        self.label_ = np.zeros(0, dtype=np.uint64)  # what a group stands for (optional)
        self.label2_ = np.zeros(0, dtype=np.uint64)
        self.refused_ = 0

    def add(self, group: np.ndarray, value: np.ndarray, win: np.ndarray,
            label: np.ndarray | None = None, label2: np.ndarray | None = None, *,
            running: bool = True,
            groups: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
            ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """Merge rows (time-ordered). Returns (the group's distinct count after each row, or
        None unless ``running``; rows that added a stored member; rows that created a
        group). ``label``/``label2`` (uint64 per row, the same for a group's rows) are kept
        per group for :meth:`prune`; ``groups``: :func:`unique_first` of ``group`` when the
        caller has it."""
        n = len(group)
        if not n:
            return (np.zeros(0, dtype=np.int64) if running else None,
                    np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        member = combine(group, value)
        uniq, first, _ = unique_first(member)
        fresh = first[sorted_find(self.members_, uniq) < 0]  # rows adding a new member
        gu, gfirst, ginv = groups if groups is not None else unique_first(group)
        gpos = sorted_find(self.groups_, gu)
        base = take_at(self.count_, gpos)
        added = np.bincount(ginv[fresh], minlength=len(gu))
        run: np.ndarray | None = None
        if running or (base + added > self.per_group).any():
            new = np.zeros(n, dtype=np.int64)
            new[fresh] = 1
            run = base[ginv] + group_cumsum(ginv, new)
            fresh = fresh[run[fresh] <= self.per_group]
            run = np.minimum(run, self.per_group)
        final = np.minimum(base + added, self.per_group)
        rows = np.sort(fresh)
        room = self.max_members - len(self.members_)
        if len(rows) > room:
            self.refused_ += len(rows) - max(room, 0)
            rows = rows[: max(room, 0)]
        if len(rows):
            m = member[rows]
            o = np.argsort(m)
            at = np.searchsorted(self.members_, m[o])
            self.members_ = np.insert(self.members_, at, m[o])
            self.member_win_ = np.insert(self.member_win_, at, win[rows][o])
        old = gpos >= 0
        self.count_[gpos[old]] = final[old]
        created = gfirst[~old]
        if len(created):
            at = np.searchsorted(self.groups_, gu[~old])
            self.groups_ = np.insert(self.groups_, at, gu[~old])
            self.group_win_ = np.insert(self.group_win_, at, win[created])
            self.count_ = np.insert(self.count_, at, final[~old])
            zeros = np.zeros(len(created), dtype=np.uint64)
            self.label_ = np.insert(self.label_, at,
                                    zeros if label is None else label[created])
            self.label2_ = np.insert(self.label2_, at,
                                     zeros if label2 is None else label2[created])
        return (run if running else None), rows, created

    def counts(self, groups: np.ndarray) -> np.ndarray:
        """Current count of each group (0 when unknown)."""
        pos = sorted_find(self.groups_, groups)
        return take_at(self.count_, pos)

    def prune(self, before_win: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Forget members and groups of windows before ``before_win``; the dropped groups'
        (labels, second labels, windows, counts)."""
        keep = self.member_win_ >= before_win
        if not keep.all():
            self.members_, self.member_win_ = self.members_[keep], self.member_win_[keep]
        keep = self.group_win_ >= before_win
        out = self.label_[~keep], self.label2_[~keep], self.group_win_[~keep], self.count_[~keep]
        if not keep.all():
            self.groups_ = self.groups_[keep]
            self.group_win_ = self.group_win_[keep]
            self.count_ = self.count_[keep]
            self.label_ = self.label_[keep]
            self.label2_ = self.label2_[keep]
        return out

    def state(self) -> dict[str, Any]:
        return {"members": self.members_, "member_win": self.member_win_,
                "groups": self.groups_, "group_win": self.group_win_, "count": self.count_,
                "label": self.label_, "label2": self.label2_, "refused": self.refused_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> Self:
        d = cls(**params)
        d.members_ = np.array(state["members"], dtype=np.uint64)
        d.member_win_ = np.array(state["member_win"], dtype=np.int64)
        d.groups_ = np.array(state["groups"], dtype=np.uint64)
        d.group_win_ = np.array(state["group_win"], dtype=np.int64)
        d.count_ = np.array(state["count"], dtype=np.int64)
        d.label_ = np.array(state["label"], dtype=np.uint64)
        d.label2_ = np.array(state["label2"], dtype=np.uint64)
        d.refused_ = int(state["refused"])
        return d


def group_cummax(group: np.ndarray, values: np.ndarray,
                 order: np.ndarray | None = None) -> np.ndarray:
    """Running maximum of non-negative ints (< 2^40) within each group, in row order
    (``order``: as for :func:`group_cumsum`)."""
    if not len(group):
        return np.zeros(0, dtype=np.int64)
    if order is None:
        order = stable_order(group)
    gs = group[order]
    g = np.cumsum(np.r_[False, gs[1:] != gs[:-1]]).astype(np.int64)
    v = np.clip(values[order].astype(np.int64), 0, (1 << 40) - 1)
    acc = np.maximum.accumulate((g << 40) | v) & ((1 << 40) - 1)
    out = np.empty(len(group), dtype=np.int64)
    out[order] = acc
    return out


class RunningSums:
    """A running sum and maximum per group key for open windows (per (host, edge, hour)
    bytes and its largest flow).

    :meth:`add` takes time-ordered rows and returns each row's group total and largest value
    after it. Bounded by ``max_groups`` (rows of groups past it are not summed; ``refused_``
    counts them)."""

    def __init__(self, *, max_groups: int = 1 << 18) -> None:
        self.max_groups = max_groups
        self.keys_ = np.zeros(0, dtype=np.uint64)
        self.win_ = np.zeros(0, dtype=np.int64)
        self.label_ = np.zeros(0, dtype=np.int64)  # what the group belongs to (an edge key)
        self.sum_ = np.zeros(0, dtype=np.float64)
        self.max_ = np.zeros(0, dtype=np.int64)
        self.n_ = np.zeros(0, dtype=np.int64)
        self.refused_ = 0

    def add(self, key: np.ndarray, label: np.ndarray, win: np.ndarray, values: np.ndarray,
            *, running: bool = True,
            groups: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(running total, running maximum, running row count, summed) per row; without
        ``running`` only the state is updated (the first three are empty). ``groups``:
        :func:`unique_first` of the keys when the caller has it (``key`` is then unused)."""
        n = len(values)
        if not n:
            return (np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                    np.zeros(0, dtype=bool))
        gu, first, ginv = groups if groups is not None else unique_first(key)
        pos = sorted_find(self.keys_, gu)
        new = np.flatnonzero(pos < 0)
        room = self.max_groups - len(self.keys_)
        ok_g = pos >= 0
        if len(new):
            take = new[np.argsort(first[new], kind="stable")][: max(room, 0)]
            ok_g[take] = True
            if len(new) > len(take):
                self.refused_ += int(np.isin(ginv, new).sum()) - int(np.isin(ginv, take).sum())
            if len(take):
                t = np.sort(take)
                at = np.searchsorted(self.keys_, gu[t])
                self.keys_ = np.insert(self.keys_, at, gu[t])
                self.win_ = np.insert(self.win_, at, win[first[t]])
                self.label_ = np.insert(self.label_, at, label[first[t]])
                self.sum_ = np.insert(self.sum_, at, 0.0)
                self.max_ = np.insert(self.max_, at, 0)
                self.n_ = np.insert(self.n_, at, 0)
                pos = sorted_find(self.keys_, gu)
        ok = ok_g[ginv]
        v = np.where(ok, values, 0).astype(np.float64)
        hit = pos >= 0
        vi = np.where(ok, values, 0).astype(np.int64)
        if not running:
            self.sum_[pos[hit]] += np.bincount(ginv, weights=v, minlength=len(gu))[hit]
            gmax = take_at(self.max_, pos)
            np.maximum.at(gmax, ginv, vi)
            self.max_[pos[hit]] = gmax[hit]
            self.n_[pos[hit]] += np.bincount(ginv, weights=ok, minlength=len(gu)).astype(
                np.int64)[hit]
            e = np.zeros(0)
            return e, e.astype(np.int64), e.astype(np.int64), ok
        base = take_at(self.sum_, pos, 0.0)
        order = stable_order(ginv)  # one grouping for the three running values
        running_sum = base[ginv] + group_cumsum(ginv, v, order)
        totals = np.bincount(ginv, weights=v, minlength=len(gu))
        self.sum_[pos[hit]] += totals[hit]
        run_max = np.maximum(take_at(self.max_, pos)[ginv], group_cummax(ginv, vi, order))
        gmax = np.zeros(len(gu), dtype=np.int64)
        np.maximum.at(gmax, ginv, run_max)
        self.max_[pos[hit]] = gmax[hit]
        run_n = take_at(self.n_, pos)[ginv] + group_cumsum(ginv, ok.astype(np.int64), order)
        self.n_[pos[hit]] += np.bincount(ginv, weights=ok, minlength=len(gu)).astype(
            np.int64)[hit]
        return running_sum, run_max, run_n, ok

    def pop(self, before_win: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Remove the groups of windows before ``before_win``: (labels, windows, sums,
        maxima)."""
        done = self.win_ < before_win
        out = self.label_[done], self.win_[done], self.sum_[done], self.max_[done]
        keep = ~done
        self.keys_, self.win_ = self.keys_[keep], self.win_[keep]
        self.label_, self.sum_, self.max_ = self.label_[keep], self.sum_[keep], self.max_[keep]
        self.n_ = self.n_[keep]
        return out

    def state(self) -> dict[str, Any]:
        return {"keys": self.keys_, "win": self.win_, "label": self.label_, "sum": self.sum_,
                "max": self.max_, "n": self.n_, "refused": self.refused_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> Self:
        s = cls(**params)
        s.keys_ = np.array(state["keys"], dtype=np.uint64)
        s.win_ = np.array(state["win"], dtype=np.int64)
        s.label_ = np.array(state["label"], dtype=np.int64)
        s.sum_ = np.array(state["sum"], dtype=np.float64)
        s.max_ = np.array(state["max"], dtype=np.int64)
        s.n_ = np.array(state["n"], dtype=np.int64)
        s.refused_ = int(state["refused"])
        return s


class LogHistograms:
    """A log-scale histogram per key (learned audit distributions), bounded by ``max_keys``.

    Bin ``b`` holds values ``x`` with ``floor(per_octave * log2(1 + x)) == b``; quantiles are
    read as the upper edge of their bin (a conservative, ≤ 2^(1/per_octave) overestimate)."""

    def __init__(self, *, bins: int = 64, per_octave: int = 4, max_keys: int = 1 << 16) -> None:
        self.bins = bins
        self.per_octave = per_octave
        self.max_keys = max_keys
        self.keys_ = np.zeros(0, dtype=np.uint64)
        self.counts_ = np.zeros((0, bins), dtype=np.uint32)
        self.refused_ = 0

    def _bin(self, values: np.ndarray) -> np.ndarray:
        b = np.floor(self.per_octave * np.log2(1.0 + np.maximum(values, 0.0)))
        return np.minimum(b, self.bins - 1).astype(np.int64)

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        """One sample per row."""
        if not len(keys):
            return
        gu = sorted_unique(keys)
        pos = sorted_find(self.keys_, gu)
        new = gu[pos < 0]
        room = self.max_keys - len(self.keys_)
        if len(new) > room:
            self.refused_ += len(new) - max(room, 0)
            new = new[: max(room, 0)]
        if len(new):
            at = np.searchsorted(self.keys_, new)
            self.keys_ = np.insert(self.keys_, at, new)
            self.counts_ = np.insert(self.counts_, at, 0, axis=0)
        rows = sorted_find(self.keys_, keys)
        ok = rows >= 0
        if not self.counts_.flags.c_contiguous:
            self.counts_ = np.ascontiguousarray(self.counts_)
        flat = rows[ok] * self.bins + self._bin(values[ok].astype(np.float64))
        np.add.at(self.counts_.reshape(-1), flat, 1)  # a view: 1-D add.at is the fast one

    def quantile(self, keys: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
        """(value at quantile ``q`` per key, samples per key); NaN and 0 for unknown keys."""
        rows = sorted_find(self.keys_, keys)
        out = np.full(len(keys), np.nan)
        n = np.zeros(len(keys), dtype=np.int64)
        ok = np.flatnonzero(rows >= 0)
        if len(ok):
            c = self.counts_[rows[ok]].astype(np.int64)
            cum = np.cumsum(c, axis=1)
            total = cum[:, -1]
            need = np.ceil(q * total).astype(np.int64)
            b = (cum < np.maximum(need, 1)[:, None]).sum(axis=1)
            out[ok] = np.exp2((b + 1) / self.per_octave) - 1.0
            n[ok] = total
        return out, n

    def state(self) -> dict[str, Any]:
        return {"keys": self.keys_, "counts": self.counts_, "refused": self.refused_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> Self:
        h = cls(**params)
        h.keys_ = np.array(state["keys"], dtype=np.uint64)
        h.counts_ = np.array(state["counts"], dtype=np.uint32).reshape(-1, h.bins)
        h.refused_ = int(state["refused"])
        return h


__all__ = ["DistinctCounter", "LogHistograms", "Repeats", "RunningSums", "combine", "group_cummax",
           "group_cumsum", "mix", "sorted_find", "sorted_unique", "stable_order", "take_at",
           "unique_first", "unique_inverse"]
