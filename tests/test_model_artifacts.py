"""Behaviour-model artifacts: skops file + manifest, verified before loading."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import orjson
import pytest

from pipeline.core.behaviour import FEATURES, BehaviourModel
from pipeline.errors import ConfigError
from pipeline.storage.models import MODEL_FILE, load_model, save_model

# a worktree venv made before skops became a dependency lacks it until `make` reinstalls
sio = pytest.importorskip("skops.io", reason="skops not installed: run make")


class Gadget:
    """Stands for any type a crafted model file could ask skops to build."""

    def __init__(self) -> None:
        self.payload = "anything"


def _fitted(scorer: str = "iforest") -> tuple[BehaviourModel, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, len(FEATURES)))
    apps = np.array(["ns/a", "ns/b", "ns/c"])[rng.integers(0, 3, 300)]
    return BehaviourModel(scorer, n_estimators=20).fit(X, apps=apps), X, apps


@pytest.mark.parametrize("scorer", ["iforest", "lof", "robust_z"])
def test_round_trip(tmp_path: Path, scorer: str) -> None:
    m, X, apps = _fitted(scorer)
    manifest_path = save_model(m, tmp_path / "m", training={"source": "test", "windows": 300})
    manifest = orjson.loads(manifest_path.read_bytes())
    assert manifest["features"] == list(FEATURES)
    assert manifest["threshold"]["offset"] == m.offset_
    assert manifest["estimator"]["params"]["scorer"] == scorer
    assert manifest["libraries"]["scikit-learn"] and manifest["libraries"]["skops"]
    assert manifest["sha256"] == hashlib.sha256((tmp_path / "m" / MODEL_FILE).read_bytes()
                                                ).hexdigest()
    loaded, man = load_model(tmp_path / "m")
    assert man == manifest
    assert np.array_equal(loaded.score_samples(X, apps), m.score_samples(X, apps))
    assert load_model(manifest_path)[0].get_params() == m.get_params()


def _rewrite(folder: Path, data: bytes, **changes: object) -> None:
    (folder / MODEL_FILE).write_bytes(data)
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), **changes)
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))


def test_refusals(tmp_path: Path) -> None:
    m, _, _ = _fitted()
    folder = tmp_path / "m"
    save_model(m, folder)
    good = (folder / MODEL_FILE).read_bytes()
    (folder / MODEL_FILE).write_bytes(good[:-10] + b"0123456789")
    with pytest.raises(ConfigError, match="sha256"):
        load_model(folder)
    # a file whose checksum was updated but that holds an untrusted type
    m.evil_ = Gadget()
    _rewrite(folder, sio.dumps(m))
    with pytest.raises(ConfigError, match=r"untrusted types \(tests\.test_model_artifacts\.Gadget"):
        load_model(folder)
    del m.evil_
    _rewrite(folder, good, features=list(FEATURES[::-1]))
    with pytest.raises(ConfigError, match="names and order"):
        load_model(folder)
    _rewrite(folder, sio.dumps(BehaviourModel()), features=list(FEATURES))
    with pytest.raises(ConfigError, match="not a fitted behaviour model"):
        load_model(folder)
    with pytest.raises(ConfigError, match="not a segflow behaviour model"):
        load_model(tmp_path / "nowhere")
    _rewrite(folder, good, file="../elsewhere.skops")
    with pytest.raises(ConfigError, match="bad model file name"):
        load_model(folder)


def test_unfitted_is_not_saved(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not fitted"):
        save_model(BehaviourModel(), tmp_path)
