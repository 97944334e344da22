"""Baseline artifacts: the learned state plus a manifest saying what it was trained on.

``<dir>/baseline.npz`` is :func:`pipeline.core.snapshot.dump_state` (pickle-free, loads with
``allow_pickle=False``); ``<dir>/manifest.json`` records the training window, settings, counts
and library versions so a notebook or a worker can tell what it is loading.
"""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.events import iso
from pipeline.core.inventory import Inventory
from pipeline.core.pipeline import Pipeline
from pipeline.core.settings import CoreSettings
from pipeline.core.snapshot import dump_state, load_state
from pipeline.errors import InputError
from pipeline.storage.files import write_atomic

MANIFEST_VERSION = 1
_LIBS = ("segflow", "numpy", "pyarrow", "scikit-learn", "orjson")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def save_baseline(p: Pipeline, out_dir: Path, *, inputs: list[str]) -> Path:
    """Write baseline.npz + manifest.json into ``out_dir``; returns the manifest path."""
    for name, data in baseline_files(p, inputs=inputs).items():
        write_atomic(out_dir / name, data)
    return out_dir / "manifest.json"


def baseline_files(p: Pipeline, *, inputs: list[str]) -> dict[str, bytes]:
    """The artifact's files by name (``baseline.npz``, ``manifest.json``), not yet written."""
    state = dump_state(p)
    b = p.baseline
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "kind": "segflow-edge-baseline",
        "state_sha256": hashlib.sha256(state).hexdigest(),
        "training_window": {
            "audit_start": iso(p.audit_start) if p.audit_start is not None else None,
            "audit_end": iso(p.audit_end) if p.audit_end is not None else None,
            "complete": b.frozen_,
        },
        "settings": p.settings.to_dict(),
        "features": ["edge(client workload, server workload, service port, proto)", "first_seen",
                     "last_seen", "flows", "bytes", "packets", "days_observed",
                     "hour_of_day_mask_utc", "log2_hourly_bytes_histogram"],
        "counts": {"edges": len(b), "workloads": len(p.workloads), "refused_edges": b.refused_,
                   "saturated_workloads": len(b.saturated_), **dict(p.counts)},
        "inputs": inputs,
        "libraries": {name: _version(name) for name in _LIBS},
        "python": platform.python_version(),
    }
    return {"baseline.npz": state,
            "manifest.json": orjson.dumps(manifest,
                                          option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)}


def load_baseline(in_dir: Path, inventory: Inventory,
                  settings: CoreSettings | None = None) -> Pipeline:
    """A pipeline restored from :func:`save_baseline` output (settings from the manifest)."""
    try:
        manifest = orjson.loads((in_dir / "manifest.json").read_bytes())
        state = (in_dir / "baseline.npz").read_bytes()
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InputError(f"{in_dir} is not a segflow baseline artifact: {exc}") from exc
    if hashlib.sha256(state).hexdigest() != manifest.get("state_sha256"):
        raise InputError(f"{in_dir}/baseline.npz does not match its manifest (checksum)")
    if settings is None:
        try:
            settings = CoreSettings.from_mapping(manifest["settings"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{in_dir}/manifest.json: bad settings: {exc}") from exc
    return load_state(state, settings, inventory)


__all__ = ["baseline_files", "load_baseline", "save_baseline"]
