"""Streaming workers on Apache Kafka: raw topics → ingest → internal ``flows`` topic →
stateful stage (core pipelines) → ClickHouse and event topics. See docs/streaming.md.

Modules: ``ingest`` (batching raw consumer), ``rawblock`` (messages → parsed block),
``routing`` (client-workload partitioning), ``flowbatch`` (the internal wire format),
``partition`` (one partition's state, pure), ``stateful`` (the stage around it),
``snapshots`` (the state topic), ``sink`` (ClickHouse), ``outputs`` (event topics),
``inventory_topic``, ``metrics``, ``clients`` (Kafka settings and topics), ``app`` (faust),
``worker`` (lifecycle, ``run_worker``), ``producer`` (``generate --to-kafka``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["latest_by_id", "produce_estate", "publish_inventory", "run_worker"]

_WHERE = {
    "latest_by_id": "pipeline.stream.outputs",
    "produce_estate": "pipeline.stream.producer",
    "publish_inventory": "pipeline.stream.inventory_topic",
    "run_worker": "pipeline.stream.worker",
}


def __getattr__(name: str) -> Any:  # lazy: importing faust costs ~0.5 s
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(name)
