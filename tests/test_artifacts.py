from __future__ import annotations

import orjson
import pytest

from pipeline.core.pipeline import Pipeline
from pipeline.core.settings import CoreSettings
from pipeline.errors import InputError
from pipeline.storage.artifacts import load_baseline, save_baseline
from tests.conftest import DAY, T0, flow, flows_table, make_inventory

INV = [{"ip": "10.0.0.1", "app": "web", "namespace": "shop"},
       {"ip": "10.0.0.2", "app": "db", "namespace": "shop"},
       {"ip": "10.0.0.9", "app": "x", "namespace": "y"}]


def test_saved_baseline_loads_and_detects_the_same(tmp_path):
    learn = [flow(T0 + h * 3600, "10.0.0.1", "10.0.0.2", 40000, 5432) for h in range(48)]
    later = [flow(T0 + 3 * DAY, "10.0.0.9", "10.0.0.2", 40000, 5432),
             flow(T0 + 3 * DAY + 5, "10.0.0.1", "10.0.0.2", 40001, 5432)]
    p = Pipeline(CoreSettings(audit_days=2), make_inventory(INV))
    p.process(flows_table(learn))
    manifest = orjson.loads(save_baseline(p, tmp_path / "m", inputs=["x"]).read_bytes())
    assert manifest["counts"]["edges"] == 1
    assert manifest["settings"]["audit_days"] == 2
    q = load_baseline(tmp_path / "m", make_inventory(INV))
    a = p.process(flows_table(later)).violations + p.flush().violations
    b = q.process(flows_table(later)).violations + q.flush().violations
    assert a == b and [v["type"] for v in a] == ["new_edge"]


def test_tampered_artifact_is_refused(tmp_path):
    p = Pipeline(CoreSettings(audit_days=2), make_inventory(INV))
    p.process(flows_table([flow(T0, "10.0.0.1", "10.0.0.2", 40000, 5432)]))
    save_baseline(p, tmp_path / "m", inputs=[])
    data = bytearray((tmp_path / "m" / "baseline.npz").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "m" / "baseline.npz").write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum"):
        load_baseline(tmp_path / "m", make_inventory(INV))
    with pytest.raises(InputError, match="not a segflow baseline"):
        load_baseline(tmp_path / "nothing", make_inventory(INV))
