"""Violations as OCSF Detection Findings: valid OCSF 1.5, faithful to the event."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.commands.replay import replay
from pipeline.config import TopicSettings
from pipeline.core.inventory import load_inventory
from pipeline.core.ocsf import to_ocsf, violation_formatter
from pipeline.core.settings import CoreSettings
from tests.ocsf_schema import validate


@pytest.fixture(scope="module")
def replayed(estate_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ocsf")
    inv = load_inventory(estate_dir / "inventory.jsonl")
    summary = replay([estate_dir / "flows.jsonl.gz"], inv, CoreSettings(audit_days=10),
                     violations_path=out / "v.jsonl", violations_format="ocsf")
    findings = [orjson.loads(x) for x in (out / "v.jsonl").read_bytes().splitlines()]
    return summary.violations, findings


def test_every_finding_of_a_replay_is_valid_ocsf(replayed):
    events, findings = replayed
    assert len(findings) == len(events) > 0
    assert {e["type"] for e in events} >= {"new_edge", "scan"}
    for f in findings:
        assert validate(f) == [], f


def test_findings_carry_the_event(replayed):
    events, findings = replayed
    for e, f in zip(events, findings, strict=True):
        assert f["finding_info"]["uid"] == e["id"]
        assert f["finding_info"]["types"] == [e["type"]] + (
            ["audit_finding"] if e["mode"] == "audit" else [])
        assert f["finding_info"]["desc"] == e["reason"] == f["message"]
        assert f["risk_score"] == e["severity"]["score"]
        assert f["severity"].lower() == e["severity"]["label"]
        assert f["count"] == e["count"]
        assert f["start_time"] <= f["end_time"]
        ev = f["evidences"][0]
        assert ev["src_endpoint"]["ip"] == e["src_ip"]
        assert ev["dst_endpoint"]["port"] == e["dst_port"]
        assert ev["src_endpoint"]["name"] == e["src_workload"]
        assert ev["connection_info"]["protocol_num"] == e["proto"]
        assert f["unmapped"]["segflow"]["evidence"] == e["evidence"]
        assert f["type_uid"] == 200400 + f["activity_id"]


def test_first_emission_creates_and_later_ones_update(replayed):
    events, _ = replayed
    e = copy.deepcopy(events[0])
    e["count"], e["last_seen"] = 1, e["first_seen"]
    assert to_ocsf(e)["activity_id"] == 1
    e["count"], e["last_seen"] = 5, "2099-01-01T00:00:00.000Z"
    grown = to_ocsf(e)
    assert grown["activity_id"] == 2 and validate(grown) == []


@pytest.mark.parametrize(("mutate", "complaint"), [
    (lambda f: f["finding_info"].pop("uid"), "finding_info.uid: required"),
    (lambda f: f.update(severity_id=9), "severity_id"),
    (lambda f: f["evidences"][0]["dst_endpoint"].update(port=70000), "range"),
    (lambda f: f["evidences"][0]["src_endpoint"].update(ip="10.0.0.999"), "not an IP"),
    (lambda f: f.update(flows=3), "not an attribute"),
    (lambda f: f.update(type_uid=200499), "type_uid"),
    (lambda f: f["metadata"].pop("product"), "metadata.product: required"),
])
def test_the_validator_rejects_broken_findings(replayed, mutate: Any, complaint: str):
    _, findings = replayed
    broken = copy.deepcopy(findings[0])
    mutate(broken)
    errors = validate(broken)
    assert any(complaint in err for err in errors), errors


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="ocsf"):
        violation_formatter("cef")


def test_the_violations_topic_carries_ocsf(kafka_topic, kafka_bootstrap, replayed):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from pipeline.stream.metrics import Metrics
    from pipeline.stream.outputs import EventPublisher

    events, _ = replayed
    topic = kafka_topic(partitions=1)
    topics = TopicSettings(violations=topic, violations_format="ocsf")

    async def run() -> list[dict[str, Any]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            publisher = EventPublisher(producer, topics, Metrics())
            await publisher.publish(events[:3], [])
            await publisher.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            got: list[dict[str, Any]] = []
            while len(got) < 3:
                batch = await consumer.getmany(timeout_ms=5000)
                if not batch:
                    break
                got.extend(orjson.loads(m.value) for ms in batch.values() for m in ms)
            return got
        finally:
            await consumer.stop()

    got = asyncio.run(run())
    assert [g["finding_info"]["uid"] for g in got] == [e["id"] for e in events[:3]]
    assert all(validate(g) == [] for g in got)


def test_audit_findings_and_provisional_edges_are_valid_ocsf(replayed):
    """The audit's own kinds: a scan found during the audit (mode audit) and a flow on a
    provisional edge."""
    events, _ = replayed
    base = copy.deepcopy(events[0])
    audit = {**base, "type": "scan", "mode": "audit", "detector": "audit"}
    weak = {**base, "type": "provisional_edge",
            "evidence": {"expected": {"min_days": 3, "min_flows": 3},
                         "seen": {"audit_days": 1, "audit_flows": 2}}}
    for e in (audit, weak):
        f = to_ocsf(e)
        assert validate(f) == [], f
        assert f["unmapped"]["segflow"]["mode"] == e["mode"]
    assert to_ocsf(audit)["finding_info"]["types"] == ["scan", "audit_finding"]
    assert to_ocsf(weak)["finding_info"]["types"] == ["provisional_edge"]
