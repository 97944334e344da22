"""Identity from the flow source: an inventory is optional for sources that name workloads,
the source's identity wins over the inventory's, and replay refuses to run blind."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from pipeline.commands.replay import replay
from pipeline.commands.summary import identity_text
from pipeline.core.inventory import Inventory, entry_from_record, load_inventory
from pipeline.core.settings import CoreSettings
from pipeline.errors import InputError
from pipeline.stream.inventory_topic import InventoryFeed
from pipeline.stream.metrics import Metrics
from tests.conftest import T0, flow
from tests.test_cli import segflow

FIXTURES = Path(__file__).parent / "fixtures" / "sources"
HUBBLE = FIXTURES / "hubble" / "basic-sample-10-flows.json"
AWS = FIXTURES / "aws" / "v2-default.log"
SETTINGS = CoreSettings(audit_days=1)


def _unnamed_hubble_flows() -> int:
    """Flows of the Hubble sample with an end Cilium does not name as a workload (the node
    itself, ``reserved:host``); ``reserved:world`` ends are outside, not unidentified."""
    lines = [orjson.loads(x)["flow"] for x in HUBBLE.read_bytes().splitlines() if x.strip()]
    return sum(any("reserved:host" in f[end].get("labels", []) for end in ("source", "destination"))
               for f in lines)


def _edges(tables: list[pa.Table]) -> set[tuple[str, str, int]]:
    t = pa.concat_tables(tables)
    return {(f"{r['src_namespace']}/{r['src_app']}", f"{r['dst_namespace']}/{r['dst_app']}",
             r["service_port"]) for r in t.to_pylist()}


def test_hubble_replays_without_an_inventory_and_counts_unnamed_flows() -> None:
    tables: list[pa.Table] = []
    s = replay([HUBBLE], None, SETTINGS, on_batch=lambda o: tables.append(o.edge_minutes))
    assert s.flows == s.records == 10 and s.inventory_entries == 0
    assert s.source_identity_flows == 10
    unnamed = _unnamed_hubble_flows()
    assert 0 < unnamed < s.flows
    assert s.unidentified_flows == unnamed
    assert ("istio-system/prometheus", "bookinfo/reviews", 15090) in _edges(tables)
    text = identity_text(s)
    assert "no inventory" in text and f"{unnamed:,} flows ({unnamed / 10:.1%})" in text


def test_the_source_identity_wins_and_the_inventory_names_the_rest() -> None:
    # 10.0.2.16 is bookinfo/reviews in the Hubble records; the inventory says otherwise.
    # 10.0.2.1 is the node (reserved:host), which Hubble does not name: the inventory does.
    inv = Inventory([entry_from_record({"ip": "10.0.2.16", "app": "impostor", "namespace": "x"}),
                     entry_from_record({"ip": "10.0.2.1", "app": "node", "namespace": "kube"})])
    tables: list[pa.Table] = []
    s = replay([HUBBLE], inv, SETTINGS, on_batch=lambda o: tables.append(o.edge_minutes))
    edges = _edges(tables)
    assert ("istio-system/prometheus", "bookinfo/reviews", 15090) in edges
    assert ("kube/node", "bookinfo/reviews", 15020) in edges
    assert not any("impostor" in a or "impostor" in b for a, b, _ in edges)
    assert s.unidentified_flows == 0 and s.inventory_entries == 2
    assert "it wins over the inventory" in identity_text(s)


def test_formats_without_identities_need_a_non_empty_inventory(tmp_path: Path) -> None:
    out = tmp_path / "violations.jsonl"
    with pytest.raises(InputError, match=r"v2-default.log: aws-vpc flows carry no workload "
                       r"identity and no --inventory was given; pass --inventory FILE"):
        replay([AWS], None, SETTINGS, violations_path=out)
    with pytest.raises(InputError, match="and the inventory is empty; pass --inventory"):
        replay([AWS], Inventory(), SETTINGS, violations_path=out)
    assert not out.exists()  # refused before anything was written
    inv = Inventory([entry_from_record({"cidr": "172.31.0.0/16", "app": "vpc"})])
    assert replay([AWS], inv, SETTINGS).flows > 0


def test_canonical_flows_without_workload_fields_are_refused_without_inventory(
        tmp_path: Path) -> None:
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(orjson.dumps(flow(T0, "10.0.0.1", "10.0.0.2", 40000, 5432)) + b"\n")
    with pytest.raises(InputError, match=r"plain\.jsonl: its canonical flows name no workload"):
        replay([plain], None, SETTINGS)
    named = tmp_path / "named.jsonl"
    rec = flow(T0, "10.0.0.1", "10.0.0.2", 40000, 5432)
    rec["src_workload"] = {"app": "web", "namespace": "shop"}
    rec["dst_workload"] = {"app": "db", "namespace": "shop"}
    named.write_bytes(orjson.dumps(rec) + b"\n")
    s = replay([named], None, SETTINGS)
    assert s.flows == 1 and s.source_identity_flows == 1 and s.unidentified_flows == 0


def test_an_empty_inventory_file_loads_empty_and_the_cli_warns(tmp_path: Path) -> None:
    empty = tmp_path / "inventory.jsonl"
    empty.write_text("\n")
    assert len(load_inventory(empty)) == 0
    r = segflow("replay", str(HUBBLE), "--inventory", str(empty), "--no-store",
                "--audit-days", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"warning: inventory {empty} has no entries" in r.stderr
    assert "had an internal end with no identity" in r.stdout
    r = segflow("replay", str(AWS), "--inventory", str(empty), "--no-store", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("segflow: error: ")
    assert "the inventory is empty; pass --inventory FILE" in r.stderr


def test_an_empty_inventory_topic_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    empty = tmp_path / "seed.jsonl"
    empty.write_text("")
    feed = InventoryFeed("segflow-inventory", {}, Metrics(), internal_cidrs=("10.0.0.0/8",),
                         seed=empty)
    with caplog.at_level(logging.WARNING, logger="pipeline.stream.inventory_topic"):
        assert feed.warn_if_empty()
    assert "inventory is empty (topic segflow-inventory has no entries" in caplog.text
    feed.apply([(b"10.0.0.1@", orjson.dumps({"ip": "10.0.0.1", "app": "a"}))])
    caplog.clear()
    assert not feed.warn_if_empty() and not caplog.text


def test_a_worker_reading_an_empty_inventory_topic_warns(
        kafka_topic, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from pipeline.config import KafkaSettings
    from pipeline.stream.clients import aiokafka_kwargs

    topic = kafka_topic(1, compacted=True, prefix="inv-empty")
    feed = InventoryFeed(topic, aiokafka_kwargs(KafkaSettings(bootstrap=kafka_bootstrap)),
                         Metrics(), internal_cidrs=("10.0.0.0/8",))

    async def start_and_stop() -> None:
        try:
            await feed.start(1, timeout=30)
        finally:
            await feed.stop()

    with caplog.at_level(logging.WARNING, logger="pipeline.stream.inventory_topic"):
        asyncio.run(start_and_stop())
    assert f"inventory is empty (topic {topic} has no entries" in caplog.text
