"""Time-aware inventory: which workload owned an address (or CIDR) at a given event time.

Pod IPs are reused: 10.1.0.7 may be ``shop/orders-api`` on Monday and ``identity/auth`` on
Tuesday. Each entry has a validity interval ``[valid_from, valid_to)``; a flow is enriched
with the entry valid at the flow's own timestamp. When several entries cover an address at
the same time, the most specific prefix wins, then the latest ``valid_from``.

Resolution is per distinct address: the address's entries are flattened once into a
timeline of non-overlapping segments (cached, bounded), and flows are mapped onto those
segments with one vectorized ``searchsorted``. Addresses no entry covers become
``unknown:<ip>`` workloads when inside the internal CIDRs and ``world`` otherwise, except
broadcast, multicast, link-local and unspecified addresses, which become the identity of
their scope (``multicast``, …; kind = scope): not hosts, so not learned or alerted on.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pipeline.core.addresses import int_to_ip, local_scope, network_to_int
from pipeline.core.normalize import MAX_EPOCH, parse_time_text
from pipeline.core.text import excerpt, identity_problem, labels_problem
from pipeline.core.workloads import WORLD, WorkloadInfo, Workloads
from pipeline.errors import InputError

DEFAULT_INTERNAL_CIDRS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
)
_TIMELINE_CACHE_MAX = 1 << 18  # distinct addresses whose timelines are kept (cleared when full)
UNRESOLVED = -2  # timeline gap: resolved to unknown/world only when a flow falls into it


@dataclass(frozen=True, slots=True)
class InventoryEntry:
    """One address or CIDR owned by a workload during [valid_from, valid_to)."""

    net: int  # network address as a 128-bit int (IPv4 mapped)
    plen: int  # prefix length in the 128-bit space (IPv4 /32 → 128)
    info: WorkloadInfo
    valid_from: float = -math.inf
    valid_to: float = math.inf

    @property
    def key(self) -> tuple[int, int, float]:
        """Identity of the entry for updates: same network and start replace each other."""
        return (self.net, self.plen, self.valid_from)


@dataclass(frozen=True, slots=True)
class Timeline:
    """Piecewise-constant owner of one address: ``wids[i]`` from ``starts[i]`` on."""

    starts: tuple[float, ...]
    wids: tuple[int, ...]


def _labels(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), str(v)) for k, v in value.items()))
    if isinstance(value, str):
        pairs = []
        for part in value.replace(",", ";").split(";"):
            if "=" in part:
                k, v = part.split("=", 1)
                pairs.append((k.strip(), v.strip()))
        return tuple(sorted(pairs))
    raise ValueError("labels must be an object or 'k=v;k=v' text")


def _time(name: str, value: Any, default: float) -> float:
    """Epoch seconds of ``valid_from``/``valid_to``; absent means open. Only a finite time
    in 1970..2100 is one: NaN, infinities, out-of-range numbers and other types are refused."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError(f"{name} must be epoch seconds or RFC 3339")
    if not isinstance(value, int | float | str):
        raise ValueError(f"{name} {excerpt(value)} is not epoch seconds or RFC 3339")
    try:
        t = float(value) if not isinstance(value, str) else (
            None if "_" in value else parse_time_text(value))  # float() reads "1_000"
    except OverflowError:
        t = math.inf
    if t is None:
        raise ValueError(f"{name} {excerpt(value)} is not epoch seconds or RFC 3339")
    if not math.isfinite(t):
        raise ValueError(f"{name} {excerpt(value)} is not a finite time; leave it out for an "
                         "open interval")
    if not 0 <= t < MAX_EPOCH:
        raise ValueError(f"{name} {excerpt(value)} is outside 1970..2100 (epoch seconds "
                         "expected, not milliseconds)")
    return t


_IDENTITY_FIELDS = ("namespace", "app", "kind", "env", "service_account")


def entry_from_record(rec: Mapping[str, Any]) -> InventoryEntry:
    """Build an entry from one inventory record (JSON object or CSV row). ValueError if bad."""
    where = rec.get("ip") or rec.get("cidr")
    if not where:
        raise ValueError("needs 'ip' or 'cidr'")
    app = rec.get("app")
    if not app:
        raise ValueError("needs 'app'")
    try:
        net, plen = network_to_int(str(where))
    except ValueError as exc:
        raise ValueError(f"{excerpt(where)} is not an IP address or CIDR") from exc
    for name in _IDENTITY_FIELDS:
        value = rec.get(name)
        if value is not None and (problem := identity_problem(name, str(value))):
            raise ValueError(problem)
    labels = _labels(rec.get("labels"))
    if problem := labels_problem(dict(labels)):
        raise ValueError(problem)
    info = WorkloadInfo(
        namespace=str(rec.get("namespace") or ""),
        app=str(app),
        kind=str(rec.get("kind") or "pod"),
        env=str(rec.get("env") or ""),
        service_account=str(rec.get("service_account") or ""),
        labels=labels,
    )
    vf = _time("valid_from", rec.get("valid_from"), -math.inf)
    vt = _time("valid_to", rec.get("valid_to"), math.inf)
    if vt <= vf:
        raise ValueError(f"valid_to {vt!r} must be after valid_from {vf!r}")
    return InventoryEntry(net, plen, info, vf, vt)


class Inventory:
    """Time-aware address → workload map, updatable while running (inventory topic)."""

    def __init__(
        self,
        entries: Iterable[InventoryEntry] = (),
        *,
        internal_cidrs: Iterable[str] = DEFAULT_INTERNAL_CIDRS,
        workloads: Workloads | None = None,
    ) -> None:
        self.workloads = workloads if workloads is not None else Workloads()
        self._entries: dict[tuple[int, int, float], InventoryEntry] = {}
        self._internal = [network_to_int(c) for c in internal_cidrs]
        self._timelines: dict[int, Timeline] = {}
        self._by_prefix: dict[int, dict[int, list[InventoryEntry]]] = {}
        self._wids: dict[tuple[int, int, float], int] = {}
        self.unknown_addresses = 0  # distinct internal addresses no entry covered
        self.update(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def update(self, entries: Iterable[InventoryEntry], removed: Iterable[tuple] = ()) -> None:
        """Add or replace entries (same network + valid_from), remove keys; clears caches."""
        for e in entries:
            self._entries[e.key] = e
        for k in removed:
            self._entries.pop(k, None)
        self._by_prefix = {}
        for e in self._entries.values():
            self._by_prefix.setdefault(e.plen, {}).setdefault(e.net, []).append(e)
            self._wids[e.key] = self.workloads.intern(e.info)
        self._prefixes = sorted(self._by_prefix, reverse=True)
        self._timelines.clear()

    def use_workloads(self, workloads: Workloads) -> None:
        """Intern into ``workloads`` from now on (e.g. a registry restored from a snapshot,
        so that wids match it); every entry is interned again."""
        self.workloads = workloads
        self.update(())

    def workload_cidrs(self) -> dict[int, list[str]]:
        """Address blocks of non-pod workloads (VMs, external systems), by wid."""
        out: dict[int, set[str]] = {}
        for e in self._entries.values():
            if e.info.kind not in ("pod", "service"):
                out.setdefault(self._wids[e.key], set()).add(_cidr_text(e.net, e.plen))
        return {w: sorted(c) for w, c in out.items()}

    def entries(self) -> Iterator[InventoryEntry]:
        return iter(self._entries.values())

    def is_internal(self, addr: int) -> bool:
        return any(addr >> (128 - plen) == net >> (128 - plen) for net, plen in self._internal)

    def _fallback(self, addr: int) -> int:
        scope = local_scope(addr)
        if scope is not None:  # broadcast, multicast, link-local: a scope, not a host
            return self.workloads.intern(WorkloadInfo("", scope, scope))
        if not self.is_internal(addr):
            return WORLD
        self.unknown_addresses += 1
        ip = int_to_ip(addr)
        return self.workloads.intern(WorkloadInfo("", f"unknown:{ip}", "unknown"))

    def timeline(self, addr: int) -> Timeline:
        """The owner of ``addr`` over time (cached per address)."""
        tl = self._timelines.get(addr)
        if tl is not None:
            return tl
        cands: list[InventoryEntry] = []
        for plen in self._prefixes:
            shift = 128 - plen
            net = (addr >> shift) << shift
            found = self._by_prefix[plen].get(net)
            if found:
                cands.extend(sorted(found, key=lambda e: -e.valid_from))
        if not cands:
            tl = Timeline((-math.inf,), (self._fallback(addr),))
        elif cands[0].valid_from == -math.inf and cands[0].valid_to == math.inf:
            tl = Timeline((-math.inf,), (self._wids[cands[0].key],))
        else:
            tl = _flatten(cands, self._wids, UNRESOLVED if _has_gaps(cands) else WORLD)
        if len(self._timelines) >= _TIMELINE_CACHE_MAX:
            self._timelines.clear()
        self._timelines[addr] = tl
        return tl

    def assign(self, index: np.ndarray, addrs: list[int], times: np.ndarray) -> np.ndarray:
        """wid per row: ``index`` maps rows to ``addrs`` (distinct addresses), at ``times``."""
        tls = [self.timeline(a) for a in addrs]
        single = np.fromiter((len(t.wids) == 1 for t in tls), dtype=bool, count=len(tls))
        lut = np.fromiter((t.wids[0] for t in tls), dtype=np.int64, count=len(tls))
        out = lut[index] if len(index) else np.zeros(0, dtype=np.int64)
        if single.all():
            return out
        multi = np.flatnonzero(~single)
        rank = np.full(len(tls), -1, dtype=np.int64)
        rank[multi] = np.arange(len(multi))
        seg_rank = np.repeat(np.arange(len(multi), dtype=np.int64),
                             [len(tls[u].starts) for u in multi])
        seg_start = np.fromiter((s for u in multi for s in tls[u].starts), dtype=np.float64,
                                count=len(seg_rank))
        seg_wids = np.fromiter((w for u in multi for w in tls[u].wids), dtype=np.int64,
                               count=len(seg_rank))
        # times become exact integer codes: the position of the latest segment start at or
        # before them among all distinct starts, so (timeline, code) keys compare exactly
        # like (timeline, time) for any finite time (no rounding to a clock resolution)
        starts = np.unique(seg_start)
        width = len(starts)
        seg_keys = seg_rank * width + np.searchsorted(starts, seg_start)
        rows = np.flatnonzero(rank[index] >= 0)
        if len(rows):
            row_rank = rank[index[rows]]
            t = times[rows]
            # a timeline whose segment is the same at the batch's earliest and latest time (the
            # usual case: a batch spans hours, owners change over days) holds for all its rows
            # at once; only rows of the others are searched one by one
            ends = np.maximum(np.searchsorted(starts, [t.min(), t.max()], side="right") - 1, 0)
            ranks = np.arange(len(multi), dtype=np.int64) * width
            first = np.searchsorted(seg_keys, ranks + ends[0], side="right") - 1
            last = np.searchsorted(seg_keys, ranks + ends[1], side="right") - 1
            steady = (first == last)[row_rank]
            out[rows[steady]] = seg_wids[first[row_rank[steady]]]
            if not steady.all():
                moving = ~steady
                codes = np.searchsorted(starts, t[moving], side="right") - 1
                keys = row_rank[moving] * width + np.maximum(codes, 0)
                pos = np.searchsorted(seg_keys, keys, side="right") - 1
                out[rows[moving]] = seg_wids[pos]
        gaps = np.flatnonzero(out == UNRESOLVED)
        if len(gaps):
            uniq, inv = np.unique(index[gaps], return_inverse=True)
            out[gaps] = np.array([self._fallback(addrs[u]) for u in uniq], dtype=np.int64)[inv]
        return out


def _cidr_text(net: int, plen: int) -> str:
    if net >> 32 == 0xFFFF and plen >= 96:
        return f"{int_to_ip(net)}/{plen - 96}"
    return f"{int_to_ip(net)}/{plen}"


def _has_gaps(cands: list[InventoryEntry]) -> bool:
    """Whether some time is covered by no candidate (then the fallback identity is needed)."""
    spans = sorted((c.valid_from, c.valid_to) for c in cands)
    if spans[0][0] != -math.inf:
        return True
    reach = spans[0][1]
    for a, b in spans[1:]:
        if a > reach:
            return True
        reach = max(reach, b)
    return reach != math.inf


def _flatten(
    cands: list[InventoryEntry], wids: Mapping[tuple[int, int, float], int], fallback: int
) -> Timeline:
    """Merge prioritised candidate intervals into non-overlapping segments."""
    bounds = sorted({b for c in cands for b in (c.valid_from, c.valid_to) if math.isfinite(b)})
    points = [-math.inf, *bounds]
    starts: list[float] = []
    out: list[int] = []
    for i, s in enumerate(points):
        nxt = points[i + 1] if i + 1 < len(points) else math.inf
        # every bound is a point, so an entry holds all of [s, nxt) or none of it
        w = fallback
        for c in cands:
            if c.valid_from <= s and nxt <= c.valid_to:
                w = wids[c.key]
                break
        if out and out[-1] == w:
            continue
        starts.append(s)
        out.append(w)
    return Timeline(tuple(starts), tuple(out))


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read inventory {path}: {exc.strerror or exc}") from exc
    if path.suffix == ".gz":
        import gzip

        raw = gzip.decompress(raw)
    text = raw.lstrip()
    if path.suffix.lower() == ".csv" or (text and text[:1] not in (b"{", b"[")):
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8", "replace")))
        if not reader.fieldnames or not ({"ip", "cidr"} & set(reader.fieldnames)):
            raise InputError(
                f"inventory {path}: not JSONL and its CSV header has no 'ip' or 'cidr' column"
            )
        n = 1
        try:
            for n, row in enumerate(reader, start=2):  # n names the failing row
                yield n, {k: v for k, v in row.items() if v not in (None, "")}
        except csv.Error as exc:
            raise InputError(f"inventory {path}: the row after line {n} is not readable as CSV "
                             f"({exc})") from exc
        return
    if text[:1] == b"[":
        try:
            items = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"inventory {path}: not valid JSON ({exc})") from exc
        for n, item in enumerate(items, start=1):
            yield n, item
        return
    for n, line in enumerate(raw.splitlines(), start=1):
        if line.strip():
            try:
                yield n, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InputError(f"inventory {path}:{n}: not valid JSON ({exc})") from exc


def load_inventory(
    path: Path, *, internal_cidrs: Iterable[str] = DEFAULT_INTERNAL_CIDRS
) -> Inventory:
    """Read a JSONL, JSON array or CSV inventory. Any bad entry → InputError naming its line.

    An empty file gives an empty inventory: callers warn, and replay refuses it unless the
    flows carry their own identities."""
    entries = []
    for n, rec in _records(path):
        if not isinstance(rec, dict):
            raise InputError(f"inventory {path}:{n}: each entry must be an object")
        try:
            entries.append(entry_from_record(rec))
        except ValueError as exc:
            raise InputError(f"inventory {path}:{n}: {exc}") from exc
    return Inventory(entries, internal_cidrs=internal_cidrs)


__all__ = [
    "DEFAULT_INTERNAL_CIDRS",
    "Inventory",
    "InventoryEntry",
    "Timeline",
    "entry_from_record",
    "load_inventory",
]
