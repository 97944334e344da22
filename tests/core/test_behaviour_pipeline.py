"""The behaviour model inside the pipeline: fitted on the audit's host windows, it only
corroborates hosts that a rule-based detector flagged in the same window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.core.behaviour import BehaviourModel
from pipeline.core.pipeline import Pipeline
from pipeline.core.settings import CoreSettings
from pipeline.core.snapshot import dump_state, load_state
from tests.conftest import DAY, T0, flow, flows_table, make_inventory

WS = [f"10.0.1.{i}" for i in range(1, 9)]
FILES = [f"10.0.2.{i}" for i in range(1, 21)]
INV = [{"ip": ip, "app": "workstation", "namespace": "corp"} for ip in WS] + [
    {"ip": ip, "app": "files", "namespace": "corp"} for ip in FILES] + [
    {"ip": "10.0.0.2", "app": "db", "namespace": "shop"}]
AUDIT_DAYS = 4
AFTER = T0 + AUDIT_DAYS * DAY + 10 * 3600


def audit_traffic() -> list[dict]:
    """Each workstation reaches its own file server (and sometimes a second) every hour."""
    rng = np.random.default_rng(0)
    recs = []
    for h in range(AUDIT_DAYS * 24):
        for i, ws in enumerate(WS):
            t = T0 + h * 3600 + 60 * i
            for k in range(int(rng.integers(2, 6))):
                dst = FILES[i] if k or rng.random() < 0.7 else FILES[(i + 1) % len(FILES)]
                size = int(rng.integers(2e3, 9e3))
                recs.append(flow(t + k, ws, dst, 40000 + k, 445, nbytes=size))
    return recs


def attack() -> list[dict]:
    """After the audit: 10.0.1.3 sweeps every file server over the SMB edge its app knows
    and opens a new edge to the database (rule signal: new_edge); 10.0.1.5 makes many tiny
    flows to its usual server (anomalous, but nothing a rule flags)."""
    sweep = [flow(AFTER + 30 + i, WS[2], ip, 45000 + i, 445) for i, ip in enumerate(FILES)]
    new_edge = [flow(AFTER + 200, WS[2], "10.0.0.2", 46000, 5432)]
    chatty = [flow(AFTER + 300 + i, WS[4], FILES[4], 47000 + i, 445, nbytes=200)
              for i in range(300)]
    later = [flow(AFTER + 3 * 3600, WS[0], FILES[0], 40000, 445)]  # moves event time on
    return sweep + new_edge + chatty + later


def run(settings: CoreSettings, batches: int = 1, snapshot_at: int | None = None
        ) -> tuple[Pipeline, list[dict]]:
    recs = sorted(audit_traffic() + attack(), key=lambda r: r["start"])
    core = Pipeline(settings, make_inventory(INV))
    out: list[dict] = []
    size = -(-len(recs) // batches)
    for n, i in enumerate(range(0, len(recs), size)):
        out += core.process(flows_table(recs[i:i + size])).violations
        if snapshot_at == n:
            core = load_state(dump_state(core), settings, make_inventory(INV))
    return core, out + core.flush().violations


def latest(events: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for v in events:
        if v["id"] not in out or v["version"] >= out[v["id"]]["version"]:
            out[v["id"]] = v
    return out


def test_corroborates_a_flagged_host_and_adds_no_other_alert() -> None:
    core, events = run(CoreSettings(audit_days=AUDIT_DAYS))
    by_id = latest(events)
    beh = [v for v in by_id.values() if v["type"] == "behaviour_anomaly"]
    assert len(beh) == 1, [v["type"] for v in by_id.values()]
    b = beh[0]
    assert b["src_ip"] == WS[2] and b["detector"] == "behaviour_model"
    # the edge of one of the host's rule signals in the window (the new edge: type code 0)
    assert (b["dst_ip"], b["dst_port"]) == ("10.0.0.2", 5432)
    assert b["first_seen"] == b["ts"] == "2026-01-09T10:00:00.000Z"  # the host window
    assert b["detected_at"] == "2026-01-09T11:05:00.000Z"  # its end + lateness: judged then
    assert "peers" in b["evidence"]["seen"]["features"]
    assert "peers 20" in b["reason"] or "peers 21" in b["reason"]
    gate = core.behaviour
    assert gate is not None and gate.counts_["anomalous"] >= 2  # 10.0.1.5 too, uncorroborated
    assert gate.counts_["corroborated"] == 1
    _, off = run(CoreSettings(audit_days=AUDIT_DAYS, behaviour_model="off"))
    assert {k: v for k, v in by_id.items() if v["type"] != "behaviour_anomaly"} == latest(off)


def test_batches_and_snapshots_do_not_change_the_events() -> None:
    s = CoreSettings(audit_days=AUDIT_DAYS)
    _, one = run(s)
    _, many = run(s, batches=9)
    _, restored = run(s, batches=9, snapshot_at=8)  # after the audit, before scoring
    assert latest(one) == latest(many) == latest(restored)


def test_a_shipped_model_is_loaded_and_used(tmp_path: Path) -> None:
    pytest.importorskip("skops", reason="skops not installed: run make")
    from pipeline.storage.models import save_model

    core, _ = run(CoreSettings(audit_days=AUDIT_DAYS))
    gate = core.behaviour
    assert gate is not None and gate.fitted
    model = gate.model_
    save_model(model, tmp_path / "m")
    shipped, events = run(CoreSettings(audit_days=AUDIT_DAYS,
                                       behaviour_model=str(tmp_path / "m")))
    assert shipped.behaviour is not None and shipped.behaviour.shipped
    assert [v for v in latest(events).values() if v["type"] == "behaviour_anomaly"]
    loaded = shipped.behaviour.model_
    assert isinstance(loaded, BehaviourModel) and loaded.get_params() == model.get_params()
    X, apps = model.reservoir_X_, model.reservoir_apps_
    assert np.array_equal(loaded.score_samples(X, apps), model.score_samples(X, apps))
