"""``segflow generate --to-kafka``: stream a generated estate into a raw topic.

Flows go out in event-time order as canonical JSON, ``per_message`` records per message
(1 = one flow per message, as most collectors write; more = NDJSON). ``rate`` paces the
stream at that many flows per second; without it the producer runs as fast as it can. The
estate's inventory is published to the inventory topic first, so workers enrich from the
start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from pipeline.config import KafkaSettings
from pipeline.core.inventory import entry_from_record
from pipeline.errors import BrokerError, ConfigError
from pipeline.generate import GenerateConfig, build_estate, flow_records_to_jsonl, iter_flow_chunks
from pipeline.stream.clients import (
    MAX_MESSAGE_BYTES,
    ensure_topics,
    kafka_python_kwargs,
    unreachable,
)
from pipeline.stream.clients import inventory_topic as inventory_spec
from pipeline.stream.inventory_topic import key_text


@dataclass(frozen=True, slots=True)
class ProduceSummary:
    """What :func:`produce_estate` sent."""

    flows: int
    messages: int
    inventory_entries: int
    seconds: float

    @property
    def flows_per_second(self) -> float:
        return self.flows / self.seconds if self.seconds > 0 else 0.0


def produce_estate(
    cfg: GenerateConfig,
    kafka: KafkaSettings,
    topic: str,
    *,
    per_message: int = 1,
    rate: float | None = None,
    inventory_topic: str | None = "segflow-inventory",
    progress: Callable[[int], None] | None = None,
) -> ProduceSummary:
    """Generate the estate for ``cfg`` and produce its flows to ``topic``."""
    from kafka.errors import KafkaError, KafkaTimeoutError
    from kafka.producer import KafkaProducer

    if per_message < 1:
        raise ConfigError("--per-message must be at least 1")
    if rate is not None and rate <= 0:
        raise ConfigError("--rate must be a positive number of flows per second")
    estate = build_estate(cfg)
    if inventory_topic:  # compacted, as workers expect (the broker would auto-create it plain)
        ensure_topics(kafka, [inventory_spec(inventory_topic)], [])
    try:
        producer = KafkaProducer(**kafka_python_kwargs(kafka), acks="all", linger_ms=20,
                                 batch_size=1 << 20, max_request_size=MAX_MESSAGE_BYTES,
                                 bootstrap_timeout_ms=int(kafka.connect_timeout * 1000))
    except (KafkaTimeoutError, OSError) as exc:
        raise unreachable(kafka) from exc
    flows = messages = 0
    failures: list[BaseException] = []
    t0 = time.monotonic()
    try:
        entries = 0
        if inventory_topic:
            for rec in estate.inventory:
                key = key_text(entry_from_record(rec)).encode()
                producer.send(inventory_topic, key=key, value=orjson.dumps(rec))
                entries += 1
            producer.flush()
        t0 = time.monotonic()
        for table in iter_flow_chunks(estate):
            lines = flow_records_to_jsonl(table)
            for i in range(0, len(lines), per_message):
                chunk = lines[i:i + per_message]
                value = chunk[0] if len(chunk) == 1 else b"\n".join(chunk)
                producer.send(topic, value=value).add_errback(failures.append)
                flows += len(chunk)
                messages += 1
                if rate is not None:
                    ahead = t0 + flows / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
            if progress is not None:
                progress(flows)
        producer.flush()
        if failures:
            raise failures[0]
    except KafkaError as exc:
        raise BrokerError(f"producing to {topic} on {kafka.bootstrap} failed: {exc}") from exc
    finally:
        producer.close()
    return ProduceSummary(flows, messages, entries, time.monotonic() - t0)


__all__ = ["ProduceSummary", "produce_estate"]
