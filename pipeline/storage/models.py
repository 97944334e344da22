"""Behaviour-model artifacts: a skops file plus a manifest, checked before anything is loaded.

Why skops and not pickle/joblib: unpickling runs whatever code the file names. skops stores
the estimator as data and refuses, on load, every type that is not on a trusted list; we
trust scikit-learn's defaults plus exactly :data:`TRUSTED` (our estimator and the compiled
tree/neighbour structures its scorers hold), so a tampered or foreign file is refused with
the names of the types it would have created.

``<dir>/behaviour.skops`` is the fitted :class:`~pipeline.core.behaviour.BehaviourModel`;
``<dir>/manifest.json`` says what it is: features (names and order) and their normalisation,
the estimator's parameters, the threshold, scikit-learn/skops/numpy versions, a summary of
the training windows, and the file's SHA-256 (checked on load).
"""

from __future__ import annotations

import hashlib
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.behaviour import FEATURES, BehaviourModel, normalisation_doc
from pipeline.errors import ConfigError
from pipeline.storage.files import write_atomic

KIND = "segflow-behaviour-model"
MANIFEST_VERSION = 1
MODEL_FILE = "behaviour.skops"
TRUSTED = (
    "pipeline.core.behaviour.BehaviourModel",
    "sklearn.tree._tree.Tree",  # IsolationForest's trees
    "sklearn.neighbors._kd_tree.KDTree",  # LOF's neighbour index
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
)
"""Types beyond skops' defaults that a behaviour model file may contain."""
_LIBS = ("segflow", "scikit-learn", "skops", "numpy")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def training_summary(model: BehaviourModel, **extra: Any) -> dict[str, Any]:
    """What the model was fitted on (windows, apps), plus ``extra`` (window length, time
    range, source of the data…)."""
    apps = sorted(set(model.reservoir_apps_.tolist()))
    return {"windows_seen": int(model.n_windows_seen_), "windows_kept": len(model.reservoir_X_),
            "apps": len(apps), "apps_with_own_normalisation": len(model.apps_), **extra}


def model_files(model: BehaviourModel, *, training: dict[str, Any] | None = None
                ) -> dict[str, bytes]:
    """The artifact's files by name (model file and ``manifest.json``), not yet written."""
    import skops.io as sio

    if not hasattr(model, "offset_"):
        raise ConfigError("the behaviour model is not fitted; fit it before saving")
    data = sio.dumps(model)
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "kind": KIND,
        "file": MODEL_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "features": list(FEATURES),
        "normalisation": normalisation_doc(),
        "estimator": {"class": "pipeline.core.behaviour.BehaviourModel",
                      "params": model.get_params()},
        "threshold": {"offset": model.offset_, "contamination": model.contamination,
                      "rule": "anomalous when score_samples < offset (decision_function < 0)"},
        "training": training if training is not None else training_summary(model),
        "libraries": {name: _version(name) for name in _LIBS},
    }
    text = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    return {MODEL_FILE: data, "manifest.json": text}


def save_model(model: BehaviourModel, out_dir: Path, *,
               training: dict[str, Any] | None = None) -> Path:
    """Write the model file and ``manifest.json`` into ``out_dir``; returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in model_files(model, training=training).items():
        write_atomic(out_dir / name, data)
    return out_dir / "manifest.json"


def load_model(path: Path) -> tuple[BehaviourModel, dict[str, Any]]:
    """(model, manifest) from a folder written by :func:`save_model` (or its manifest).

    Refused with a one-line :class:`ConfigError`: a missing or unreadable manifest, another
    kind, a file whose SHA-256 differs, other features or another feature order, any type
    outside skops' defaults and :data:`TRUSTED`, an unfitted estimator. A scikit-learn
    version other than the one that saved it is a warning."""
    import skops.io as sio

    folder = path.parent if path.name == "manifest.json" else path
    try:
        manifest = orjson.loads((folder / "manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{folder} is not a segflow behaviour model (manifest.json: {exc})"
                          ) from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise ConfigError(f"{folder}/manifest.json is not a {KIND} manifest")
    name = str(manifest.get("file", MODEL_FILE))
    if Path(name).name != name:
        raise ConfigError(f"{folder}/manifest.json: bad model file name {name!r}")
    try:
        data = (folder / name).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the behaviour model {folder / name}: {exc}") from None
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        raise ConfigError(f"{folder / name} does not match its manifest (sha256); refusing it")
    if manifest.get("features") != list(FEATURES):
        raise ConfigError(f"{folder}: the model's features {manifest.get('features')} are not "
                          f"this version's {list(FEATURES)} (names and order); refit it")
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # a damaged zip/schema: skops raises various types
        raise ConfigError(f"{folder / name} is not a skops file: {exc}") from None
    refused = sorted(set(untrusted) - set(TRUSTED))
    if refused:
        raise ConfigError(f"{folder / name} contains untrusted types "
                          f"({', '.join(refused)}); refusing to load it")
    try:
        model = sio.loads(data, trusted=list(untrusted))
    except Exception as exc:
        raise ConfigError(f"cannot load the behaviour model {folder / name}: {exc}") from None
    if not isinstance(model, BehaviourModel) or not hasattr(model, "offset_") \
            or getattr(model, "n_features_in_", None) != len(FEATURES):
        raise ConfigError(f"{folder / name} is not a fitted behaviour model with "
                          f"{len(FEATURES)} features")
    saved = (manifest.get("libraries") or {}).get("scikit-learn")
    here = _version("scikit-learn")
    if saved and here and saved.split(".")[:2] != here.split(".")[:2]:
        warnings.warn(f"behaviour model {folder} was saved with scikit-learn {saved}, this is "
                      f"{here}; refit it if its scores look wrong", stacklevel=2)
    return model, manifest


__all__ = ["KIND", "MODEL_FILE", "TRUSTED", "load_model", "model_files", "save_model",
           "training_summary"]
