"""Pickle-free snapshots of a :class:`Pipeline`'s learned state.

A snapshot is an ``.npz`` archive (``allow_pickle=False``) of :meth:`Pipeline.state`: every
numpy array in it as an array named by its path (``baseline.keys_``, ``listeners.hi``), and
everything else (workloads, open violation windows, counters) as one JSON document stored
as bytes (``meta``). This module only encodes; each part of the pipeline owns what its state
holds. Workers write snapshots to a compacted Kafka topic together with the input offsets
they cover, and restore them on partition assignment; the same bytes serve as a baseline
artifact for notebooks (see ``models/``).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson

from pipeline.core.inventory import Inventory
from pipeline.core.pipeline import Pipeline
from pipeline.core.settings import CoreSettings

FORMAT = "segflow-pipeline-state/1"


def _split(tree: dict[str, Any], path: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """``tree`` without its numpy arrays, which go into ``arrays`` by dotted path."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, np.ndarray):
            arrays[f"{path}{k}"] = v
        elif isinstance(v, dict) and any(isinstance(x, np.ndarray | dict) for x in v.values()):
            rest = _split(v, f"{path}{k}.", arrays)
            if rest:
                out[k] = rest
        else:
            out[k] = v
    return out


def _join(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`_split`."""
    for name, arr in arrays.items():
        *parents, leaf = name.split(".")
        node = meta
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = arr
    return meta


def dump_state(p: Pipeline) -> bytes:
    """Serialise the learned state of ``p`` (not its settings or inventory)."""
    arrays: dict[str, np.ndarray] = {}
    meta = {"format": FORMAT, **_split(p.state(), "", arrays)}
    arrays["meta"] = np.frombuffer(orjson.dumps(meta), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def load_state(data: bytes, settings: CoreSettings, inventory: Inventory) -> Pipeline:
    """A pipeline with the state from :func:`dump_state`; ``inventory`` must be fresh
    (its workloads registry is replaced so that ids match the snapshot)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = orjson.loads(arrays.pop("meta").tobytes())
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a segflow pipeline state (format {meta.get('format')!r})")
    return Pipeline.from_state(_join(meta, arrays), settings, inventory)


__all__ = ["FORMAT", "dump_state", "load_state"]
