"""Interned workload identities: (namespace, app) → a small integer id (wid).

Edges are keyed by wids so the hot path stays in numpy. The registry is bounded
(:data:`MAX_WORKLOADS`); past the bound new identities collapse into the ``overflow``
workload and are counted, so spoofed or scanning addresses cannot grow memory without limit.
An interned address (an ``unknown:<ip>`` identity, e.g. a spoofed internal destination) costs
≈ 1.7 KB of process memory across this registry, the inventory's timeline cache, confirmed
listeners and violation windows (measured: 200k spoofed destinations add ~350 MB); each of
those is bounded too (see README, Bounded state).
Ids are process-local: anything that leaves the process (event ids, storage rows) uses the
workload's *names*, never its wid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

MAX_WORKLOADS = 1 << 19  # 524,288 identities: 19 bits each side of an edge key
WORLD = 0  # addresses outside the internal CIDRs
OVERFLOW = 1  # identities past MAX_WORKLOADS
EXTERNAL_KINDS = frozenset({"external", "world"})


@dataclass(frozen=True, slots=True)
class WorkloadInfo:
    """What segflow knows about a workload (from the inventory or the flow source)."""

    namespace: str
    app: str
    kind: str = "pod"
    env: str = ""
    service_account: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.app}" if self.namespace else self.app


@dataclass
class Workloads:
    """Bounded intern table of workloads."""

    max_size: int = MAX_WORKLOADS
    infos: list[WorkloadInfo] = field(default_factory=list)
    _index: dict[tuple[str, str], int] = field(default_factory=dict)
    overflowed: int = 0  # identities that could not be interned
    _columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.infos:
            self.infos.append(WorkloadInfo("", "world", "external"))
            self.infos.append(WorkloadInfo("", "overflow", "unknown"))
            self._index[("", "world")] = WORLD
            self._index[("", "overflow")] = OVERFLOW

    def intern(self, info: WorkloadInfo) -> int:
        """The wid of ``info``'s (namespace, app); first registration keeps its attributes,
        except that a richer description (labels, kind) replaces a bare one."""
        k = (info.namespace, info.app)
        wid = self._index.get(k)
        if wid is not None:
            old = self.infos[wid]
            if (not old.labels and info.labels) or (old.kind == "pod" and info.kind != "pod"
                                                    and not old.labels):
                self.infos[wid] = info
                self._columns.clear()
            return wid
        if len(self.infos) >= self.max_size:
            self.overflowed += 1
            return OVERFLOW
        wid = len(self.infos)
        self.infos.append(info)
        self._index[k] = wid
        return wid

    def state(self) -> list[list[Any]]:
        """Every identity in wid order, as JSON values (the wids are the list positions)."""
        return [[w.namespace, w.app, w.kind, w.env, w.service_account, [list(x) for x in w.labels]]
                for w in self.infos]

    @classmethod
    def from_state(cls, state: Iterable[Sequence[Any]], *, max_size: int = MAX_WORKLOADS
                   ) -> Self:
        """A registry with the identities (and so the wids) of :meth:`state`."""
        reg = cls(max_size=max_size, infos=[WorkloadInfo(
            ns, app, kind, env, sa, tuple((str(k), str(v)) for k, v in labels))
            for ns, app, kind, env, sa, labels in state])
        reg._index.update(((w.namespace, w.app), wid) for wid, w in enumerate(reg.infos))
        return reg

    def lookup(self, namespace: str, app: str) -> int | None:
        return self._index.get((namespace, app))

    def __len__(self) -> int:
        return len(self.infos)

    def keys(self) -> np.ndarray:
        """Workload key strings indexed by wid (object array)."""
        return np.array([i.key for i in self.infos], dtype=object)

    def column(self, name: str) -> np.ndarray:
        """One attribute for every wid, e.g. ``column("namespace")`` (cached until it grows)."""
        cached = self._columns.get(name)
        if cached is not None and len(cached) == len(self.infos):
            return cached
        col = np.array([getattr(i, name) for i in self.infos], dtype=object)
        self._columns[name] = col
        return col


__all__ = ["EXTERNAL_KINDS", "MAX_WORKLOADS", "OVERFLOW", "WORLD", "WorkloadInfo", "Workloads"]
