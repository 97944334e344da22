"""End to end on a generated estate: attacks caught, churn quiet, idempotent, bad input kept."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import jsonschema
import orjson
import pytest
import yaml

from pipeline.commands.evaluate import evaluate, load_truth
from pipeline.commands.replay import replay
from pipeline.core.inventory import load_inventory
from pipeline.core.settings import CoreSettings
from pipeline.storage import open_store

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def _schema(name: str) -> jsonschema.Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.fixture(scope="module")
def replayed(estate_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("replay")
    inv = load_inventory(estate_dir / "inventory.jsonl")
    store_url = f"chdb://{out / 'store'}"
    with open_store(store_url, migrate=True) as store:
        summary = replay([estate_dir / "flows.jsonl.gz"], inv, CoreSettings(audit_days=10),
                         store=store, violations_path=out / "v.jsonl", rules_path=out / "r.jsonl",
                         policies_dir=out / "policies")
    return summary, out, store_url


@pytest.mark.xfail(reason="false beacon fluent-bit->loki since 3679156; issue 9", strict=False)
def test_injected_attacks_are_caught_and_benign_churn_is_not(replayed, estate_dir):
    summary, _, _ = replayed
    truth = load_truth(estate_dir / "truth.jsonl")
    attacks = [t for t in truth if t["malicious"]]
    assert len(attacks) == 5
    ev = evaluate(summary.violations, truth)
    assert [e["type"] for e in ev.missed] == []
    assert ev.unexplained == [], [v["reason"] for v in ev.unexplained]
    # churn was really there: IP reuse across apps and scale-outs happened during the run
    assert {t["type"] for t in truth if not t["malicious"]} >= {"ip_reuse", "scale_out"}


def test_events_validate_against_their_schemas(replayed):
    summary, out, _ = replayed
    vs, rs = _schema("violation.schema.json"), _schema("candidate_rule.schema.json")
    lines = (out / "v.jsonl").read_bytes().splitlines()
    assert len(lines) == len(summary.violations) > 0
    for line in lines:
        vs.validate(orjson.loads(line))
    rules = [orjson.loads(x) for x in (out / "r.jsonl").read_bytes().splitlines()]
    assert rules
    for r in rules:
        rs.validate(r)
    assert len({r["id"] for r in rules}) == len(rules)


def test_policies_are_valid_networkpolicies(replayed):
    import kubernetes_validate

    _, out, _ = replayed
    files = sorted((out / "policies").rglob("*.yaml"))
    assert any(f.name == "00-default-deny.yaml" for f in files)
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_replaying_twice_does_not_double_anything(replayed, estate_dir):
    summary, _, store_url = replayed
    q = ("SELECT sum(flows), sum(bytes), count() FROM edge_minute FINAL")
    with open_store(store_url) as store:
        before = store.query_rows(q)[0]
        v_before = store.query_rows("SELECT count() FROM violations FINAL")[0][0]
        inv = load_inventory(estate_dir / "inventory.jsonl")
        replay([estate_dir / "flows.jsonl.gz"], inv, CoreSettings(audit_days=10), store=store)
        after = store.query_rows(q)[0]
        v_after = store.query_rows("SELECT count() FROM violations FINAL")[0][0]
    assert before == after
    assert before[0] == summary.flows
    assert v_before == v_after == len(summary.violations)


def test_malformed_records_go_to_the_dead_letter_file(estate_dir, tmp_path):
    lines = gzip.decompress((estate_dir / "flows.jsonl.gz").read_bytes()).splitlines()[:2000]
    bad = [b"{not json", b'{"start": 1767571200, "src_ip": "10.0.0.1"}',
           b'{"start": 1767571200, "src_ip": "x", "dst_ip": "10.0.0.2", "proto": 6}',
           b'"just a string"']
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines[:1000] + bad + lines[1000:]) + b"\n")
    inv = load_inventory(estate_dir / "inventory.jsonl")
    s = replay([path], inv, CoreSettings(audit_days=10), dead_letter_path=tmp_path / "dl.jsonl")
    assert s.flows == 2000 and s.rejected == 4
    dead = [orjson.loads(x) for x in (tmp_path / "dl.jsonl").read_bytes().splitlines()]
    assert [d["reason"] for d in dead] == ["bad_json", "missing_field", "bad_ip", "bad_json"]
    assert [d["source"].rsplit(":", 1)[1] for d in dead] == ["1001", "1002", "1003", "1004"]
    assert dead[0]["raw"] == "{not json"
