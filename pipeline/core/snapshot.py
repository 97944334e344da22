"""Pickle-free snapshots of a :class:`Pipeline`'s learned state.

A snapshot is an ``.npz`` archive (``allow_pickle=False``): numeric arrays as arrays, and
everything structured (workloads, open violation windows) as one JSON document stored as
bytes. Workers write snapshots to a compacted Kafka topic together with the input offsets
they cover, and restore them on partition assignment; the same bytes serve as a baseline
artifact for notebooks (see ``models/``).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson

from pipeline.core.baseline import EdgeBaseline
from pipeline.core.detect import Agg
from pipeline.core.inventory import Inventory
from pipeline.core.pipeline import CoreSettings, Pipeline
from pipeline.core.workloads import WorkloadInfo, Workloads

FORMAT = "segflow-pipeline-state/1"
_BASELINE_ARRAYS = (
    "keys_", "first_seen_", "last_seen_", "flows_", "bytes_", "packets_", "hour_mask_", "days_",
    "last_day_", "hist_", "peak_hour_bytes_", "cur_hour_", "cur_bytes_", "threshold_",
    "median_hour_bytes_",
)


def _agg_dict(a: Agg) -> dict[str, Any]:
    return {
        "type": a.type, "client": a.client, "server": a.server, "port": a.port, "proto": a.proto,
        "window": a.window, "count": a.count, "first": a.first, "last": a.last,
        "bytes": a.bytes, "rejected": a.rejected, "client_ips": a.client_ips,
        "server_ips": a.server_ips, "extra": a.extra,
    }


def dump_state(p: Pipeline) -> bytes:
    """Serialise the learned state of ``p`` (not its settings or inventory)."""
    b = p.baseline
    n = len(b)
    meta = {
        "format": FORMAT,
        "audit_start": p.audit_start,
        "rules_emitted": p.rules_emitted,
        "counts": dict(p.counts),
        "workloads": [
            [w.namespace, w.app, w.kind, w.env, w.service_account, [list(x) for x in w.labels]]
            for w in p.workloads.infos
        ],
        "baseline": {
            "n": n,
            "frozen": b.frozen_,
            "refused": b.refused_,
            "saturated": [[k, v] for k, v in b.saturated_.items()],
        },
        "windows": {
            "watermark": p.windows.watermark if np.isfinite(p.windows.watermark) else None,
            "open": [_agg_dict(a) for a in p.windows.open.values()],
            "recent": [_agg_dict(a) for a in p.windows.recent.values()],
            "targets": [[k[0], k[1], sorted(v)] for k, v in p.windows.targets.items()],
        },
    }
    arrays: dict[str, np.ndarray] = {
        f"baseline.{name}": getattr(b, name)[:n] for name in _BASELINE_ARRAYS
    }
    arrays["baseline.client_edges_"] = b.client_edges_
    arrays["baseline.server_edges_"] = b.server_edges_
    listeners = sorted(p.orienter.listeners)
    arrays["listeners.hi"] = np.array([a >> 64 for a, _ in listeners], dtype=np.uint64)
    arrays["listeners.lo"] = np.array([a & ((1 << 64) - 1) for a, _ in listeners],
                                      dtype=np.uint64)
    arrays["listeners.port"] = np.array([port for _, port in listeners], dtype=np.int32)
    arrays["meta"] = np.frombuffer(orjson.dumps(meta), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def load_state(data: bytes, settings: CoreSettings, inventory: Inventory) -> Pipeline:
    """A pipeline with the state from :func:`dump_state`; ``inventory`` must be fresh
    (its workloads registry is rebuilt so that ids match the snapshot)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = orjson.loads(arrays.pop("meta").tobytes())
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a segflow pipeline state (format {meta.get('format')!r})")
    reg = Workloads()
    reg.infos.clear()
    reg._index.clear()
    for ns, app, kind, env, sa, labels in meta["workloads"]:
        info = WorkloadInfo(ns, app, kind, env, sa, tuple(tuple(x) for x in labels))
        reg._index[(ns, app)] = len(reg.infos)
        reg.infos.append(info)
    entries = list(inventory.entries())
    inventory.workloads = reg
    inventory.update(entries)
    p = Pipeline(settings, inventory)
    p.audit_start = meta["audit_start"]
    p.rules_emitted = meta["rules_emitted"]
    p.counts.update(meta["counts"])
    b: EdgeBaseline = p.baseline
    bm = meta["baseline"]
    n = int(bm["n"])
    b._grow(max(n, 1))
    for name in _BASELINE_ARRAYS:
        getattr(b, name)[:n] = arrays[f"baseline.{name}"]
    b.client_edges_ = arrays["baseline.client_edges_"].copy()
    b.server_edges_ = arrays["baseline.server_edges_"].copy()
    b.n_ = n
    b.rows_ = {int(k): i for i, k in enumerate(b.keys_[:n].tolist())}
    b.frozen_ = bool(bm["frozen"])
    b.refused_ = int(bm["refused"])
    b.saturated_ = {int(k): int(v) for k, v in bm["saturated"]}
    if b.frozen_:
        p.rebuild_lookups()
    w = meta["windows"]
    p.windows.watermark = float("-inf") if w["watermark"] is None else float(w["watermark"])
    for d in w["open"]:
        a = Agg(**d)
        p.windows.open[a.key()] = a
    for d in w.get("recent", []):
        a = Agg(**d)
        p.windows.recent[a.key()] = a
    for client, window, targets in w["targets"]:
        p.windows.targets[(int(client), float(window))] = {tuple(t) for t in targets}
    hi, lo, ports = arrays["listeners.hi"], arrays["listeners.lo"], arrays["listeners.port"]
    p.orienter.listeners = {
        ((int(h) << 64) | int(low), int(pt)) for h, low, pt in zip(hi, lo, ports, strict=True)
    }
    return p


__all__ = ["dump_state", "load_state"]
