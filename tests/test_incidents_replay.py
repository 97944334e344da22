"""Incidents end to end through ``segflow replay``: the ``--incidents`` file follows its JSON
schema, groups every violation into exactly one incident, and the store holds the same latest
versions; a replay in other batch sizes gives the same incidents and ids."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from pipeline.commands import cli
from pipeline.commands.replay import replay
from pipeline.core.inventory import load_inventory
from pipeline.core.settings import CoreSettings
from pipeline.sources import base
from pipeline.storage import open_store
from pipeline.stream.outputs import latest_by_id

REPO = Path(__file__).resolve().parents[1]


def test_replay_writes_incidents_file_and_store(estate_dir: Path, tmp_path: Path) -> None:
    inc_path, vio_path = tmp_path / "incidents.jsonl", tmp_path / "violations.jsonl"
    store = f"chdb://{tmp_path / 'store'}"
    assert cli.main(["replay", str(estate_dir / "flows.jsonl.gz"), "--inventory",
                     str(estate_dir / "inventory.jsonl"), "--audit-days", "10", "--store", store,
                     "--incidents", str(inc_path), "--violations", str(vio_path),
                     "--progress", "off"]) == 0
    events = [orjson.loads(line) for line in inc_path.read_bytes().splitlines()]
    schema = json.loads((REPO / "schemas" / "incident.schema.json").read_text())
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for e in events:
        assert not list(validator.iter_errors(e)), e
    incidents = latest_by_id(events)
    violations = latest_by_id(orjson.loads(line) for line in vio_path.read_bytes().splitlines())
    assert incidents and len(incidents) <= len(violations)
    members = [vid for i in incidents.values() for vid in i["violation_ids"]]
    assert sorted(members) == sorted(violations)  # each violation in exactly one incident
    for i in incidents.values():
        vs = [violations[v] for v in i["violation_ids"]]
        assert i["base_score"] == max(v["severity"]["score"] for v in vs)
        assert i["severity"]["score"] == min(100, i["base_score"] + i["criticality"])
        assert {v["src_workload"] for v in vs} == {i["source"]} or i["source"].startswith(
            ("world:", "overflow:", "world->", "overflow->"))
    with open_store(store) as s:
        stored = dict(s.query_rows("SELECT id, version FROM incidents FINAL"))
    assert stored == {k: v["version"] for k, v in incidents.items()}


def test_incidents_do_not_depend_on_the_block_size(estate_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    flows = tmp_path / "flows.jsonl"
    flows.write_bytes(gzip.decompress((estate_dir / "flows.jsonl.gz").read_bytes()))
    settings = CoreSettings(audit_days=10)
    runs = []
    for block in (8 << 20, 64 << 10):  # one core batch per 8 MiB, then per 64 KiB
        monkeypatch.setattr(base, "BLOCK_BYTES", block)
        runs.append(replay([flows], load_inventory(estate_dir / "inventory.jsonl"),
                           settings).incidents)
    assert runs[0] and runs[0] == runs[1]
