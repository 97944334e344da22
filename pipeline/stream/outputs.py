"""Violation, candidate-rule and incident events on Kafka, and how a consumer reads them.

Events are orjson-encoded JSON, keyed by app (violation: ``src_workload``; rule: ``app``;
incident: ``source``) so one app's events stay in order on one partition. Delivery is
at-least-once: after a restart a worker may emit an event again — always with the same
deterministic ``id`` — and a later event for the same finding carries a higher ``version``.
Consumers therefore keep, per ``id``, the event with the highest ``version``
(:func:`latest_by_id`); ClickHouse's ReplacingMergeTree tables do the same.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from pipeline.config import TopicSettings
from pipeline.core.events import latest_by_id
from pipeline.core.ocsf import violation_formatter
from pipeline.stream.metrics import Metrics


class EventPublisher:
    """Produces events and remembers their delivery futures until :meth:`flush`."""

    def __init__(self, producer: AIOKafkaProducer, topics: TopicSettings,
                 metrics: Metrics) -> None:
        self.producer = producer
        self.topics = topics
        self.metrics = metrics
        self._futures: list[asyncio.Future[Any]] = []
        self._format = violation_formatter(topics.violations_format)

    async def publish(self, violations: list[dict[str, Any]], rules: list[dict[str, Any]],
                      incidents: list[dict[str, Any]] | None = None) -> None:
        for v in violations:
            self._futures.append(await self.producer.send(
                self.topics.violations, value=orjson.dumps(self._format(v)),
                key=str(v.get("src_workload", "")).encode()))
            self.metrics.violations.labels(v.get("type", ""),
                                           v.get("severity", {}).get("label", "")).inc()
        for r in rules:
            self._futures.append(await self.producer.send(
                self.topics.candidate_rules, value=orjson.dumps(r),
                key=str(r.get("app", "")).encode()))
        for i in incidents or ():
            self._futures.append(await self.producer.send(
                self.topics.incidents, value=orjson.dumps(i),
                key=str(i.get("source", "")).encode()))
        if incidents:
            self.metrics.records_out.labels(self.topics.incidents).inc(len(incidents))
        if violations:
            self.metrics.records_out.labels(self.topics.violations).inc(len(violations))
        if rules:
            self.metrics.records_out.labels(self.topics.candidate_rules).inc(len(rules))
            self.metrics.rules.inc(len(rules))

    async def flush(self) -> None:
        """Wait until every event published so far is acknowledged by the broker."""
        futures, self._futures = self._futures, []
        if futures:
            await asyncio.gather(*futures)


__all__ = ["EventPublisher", "latest_by_id"]
