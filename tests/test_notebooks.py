"""Every notebook runs, top to bottom, on a small estate (code cells executed in order)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("skops", reason="skops not installed: run make")
    monkeypatch.setenv("SEGFLOW_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("SEGFLOW_NOTEBOOK_OUT", str(tmp_path))
    nb = json.loads(path.read_text())
    namespace: dict[str, object] = {"__name__": "__notebook__"}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{path.name}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "caught" in out and "MISSED" not in out
    assert (tmp_path / "models" / "tuned" / "manifest.json").exists()
    if path.name == "baseline_tuning.ipynb":  # the behaviour model: compared, saved, shipped
        assert "robust_z per app" in out and "behaviour_anomaly events with the shipped" in out
        assert (tmp_path / "models" / "behaviour" / "manifest.json").exists()
        assert (tmp_path / "precision_recall_by_type.html").exists()
