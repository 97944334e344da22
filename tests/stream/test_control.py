"""The audit-start agreement: the "first record in the log wins" rule, and the agreement
itself against the real broker (racing instances, an instance that starts later)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from pipeline.config import KafkaSettings
from pipeline.errors import ConfigError
from pipeline.stream.clients import (
    MAX_MESSAGE_BYTES,
    TopicSpec,
    admin_client,
    aiokafka_kwargs,
    control_topic,
    ensure_topics,
)
from pipeline.stream.control import (
    AuditStartAgreement,
    parse_proposal,
    proposal_value,
    winner,
)
from pipeline.stream.reader import PartitionReader
from tests.stream.harness import read_topic

T = 1_767_571_203.954


def rec(offset: int, start: float, key: str = "audit-start/x") -> tuple[int, bytes, bytes]:
    return offset, key.encode(), proposal_value(start, by=f"w{offset}", at=1.0)


def test_the_first_proposal_in_the_log_wins_whatever_the_read_order() -> None:
    records = [rec(7, T + 1, "audit-start/b"), rec(3, T + 50, "audit-start/a"),
               rec(9, T - 99, "audit-start/c")]
    w = winner(records)
    assert w is not None and (w.offset, w.key, w.start, w.by) == (3, "audit-start/a", T + 50, "w3")
    assert winner(reversed(records)) == w
    assert winner([]) is None


def test_other_records_tombstones_and_malformed_proposals_are_skipped() -> None:
    records: list[tuple[int, bytes | None, bytes | None]] = [
        (0, b"something-else/1", proposal_value(T - 5, by="x", at=0)),  # another key
        (1, b"audit-start/dead", None),  # tombstone
        (2, b"audit-start/junk", b"not json"),
        (3, b"audit-start/nostart", orjson.dumps({"by": "x"})),
        (4, b"audit-start/nan", b'{"start": "nan"}'),
        (5, None, proposal_value(T - 4, by="x", at=0)),  # no key
        (6, b"audit-start/ok", proposal_value(T, by="w", at=2.5)),
        (8, b"audit-start/later", proposal_value(T - 1, by="v", at=1)),
    ]
    w = winner(records)
    assert w is not None and (w.offset, w.start, w.by, w.at) == (6, T, "w", 2.5)
    assert winner(records[:6]) is None


def test_proposal_value_round_trip() -> None:
    p = parse_proposal(4, b"audit-start/k", proposal_value(T, by="app@host:1", at=5.0))
    assert p is not None and (p.offset, p.key, p.start, p.by, p.at) == (
        4, "audit-start/k", T, "app@host:1", 5.0)
    value = orjson.loads(proposal_value(T, by="x", at=0))
    assert value["start_utc"] == "2026-01-05T00:00:03.954Z" and math.isclose(value["start"], T)


# -- against the broker --------------------------------------------------------------------

class _Racing(AuditStartAgreement):
    """Waits after its first read until every racer has read: all see an empty topic."""

    def __init__(self, *args: Any, barrier: asyncio.Barrier, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.barrier = barrier
        self.reads = 0

    async def _current(self, reader: PartitionReader) -> Any:
        found = await super()._current(reader)
        self.reads += 1
        if self.reads == 1:
            await self.barrier.wait()
        return found


async def _with_producers(bootstrap: str, n: int, fn: Any) -> Any:
    client = aiokafka_kwargs(KafkaSettings(bootstrap=bootstrap))
    producers = [AIOKafkaProducer(**client, acks="all", enable_idempotence=True)
                 for _ in range(n)]
    for p in producers:
        await p.start()
    try:
        return await fn(client, producers)
    finally:
        for p in producers:
            await p.stop()


def _proposals(bootstrap: str, topic: str) -> list[tuple[int, float, str]]:
    out = []
    for r in read_topic(bootstrap, topic):
        v = orjson.loads(r.value)
        out.append((r.offset, v["start"], v["by"]))
    return out


@pytest.mark.kafka
def test_racing_instances_all_adopt_the_first_proposal(kafka_topic: Any,
                                                       kafka_bootstrap: str) -> None:
    topic = kafka_topic(1, compacted=True, prefix="control")
    proposals = [T + 300, T, T + 60, T + 7]

    async def run(client: dict[str, Any], producers: list[Any]) -> list[float]:
        barrier = asyncio.Barrier(len(proposals))
        racers = [_Racing(topic, client, p, who=f"w{i}", timeout=30, barrier=barrier)
                  for i, p in enumerate(producers)]
        return list(await asyncio.gather(*(r.agree(t) for r, t in zip(racers, proposals,
                                                                       strict=True))))

    agreed = asyncio.run(_with_producers(kafka_bootstrap, len(proposals), run))
    log = _proposals(kafka_bootstrap, topic)
    assert len(log) == len(proposals)  # every racer proposed: none saw another's first
    first = min(log)
    assert agreed == [first[1]] * len(proposals), (agreed, log)
    assert first[2] == f"w{proposals.index(first[1])}"


@pytest.mark.kafka
def test_an_instance_started_later_adopts_the_first_start(kafka_topic: Any,
                                                          kafka_bootstrap: str) -> None:
    topic = kafka_topic(1, compacted=True, prefix="control")

    async def run(client: dict[str, Any], producers: list[Any]) -> tuple[Any, ...]:
        first = AuditStartAgreement(topic, client, producers[0], who="first", timeout=30)
        before = await first.current()
        a = await first.agree(T + 3600)
        later = AuditStartAgreement(topic, client, producers[1], who="later", timeout=30)
        b = await later.agree(T)  # an earlier first flow does not matter any more
        return before, a, b, await later.current()

    before, a, b, now = asyncio.run(_with_producers(kafka_bootstrap, 2, run))
    assert before is None and a == b == T + 3600
    assert now is not None and (now.start, now.by) == (T + 3600, "first")
    assert [(s, by) for _, s, by in _proposals(kafka_bootstrap, topic)] == [(T + 3600, "first")]


@pytest.mark.kafka
def test_a_control_topic_with_several_partitions_is_one_config_error(
        kafka_topic: Any, kafka_bootstrap: str) -> None:
    topic = kafka_topic(2, compacted=True, prefix="control")
    with pytest.raises(ConfigError) as err:
        ensure_topics(KafkaSettings(bootstrap=kafka_bootstrap), [control_topic(topic)], [])
    msg = str(err.value)
    assert "\n" not in msg
    assert f"topic {topic} has 2 partitions, not 1: its first record decides" in msg
    assert "topics.control" in msg


@pytest.mark.kafka
def test_existing_topics_get_the_message_size_the_worker_writes(
        kafka_topic: Any, kafka_bootstrap: str) -> None:
    """A flows topic created by hand (1 MiB messages) is raised to the worker's size; the
    topic's other settings stay (incremental change)."""
    flows = kafka_topic(2, configs={"max.message.bytes": str(1 << 20), "retention.ms": "3600000"})
    big = TopicSpec(flows, 2, {"max.message.bytes": str(MAX_MESSAGE_BYTES)})
    k = KafkaSettings(bootstrap=kafka_bootstrap)
    ensure_topics(k, [big], [])
    admin = admin_client(k)
    try:
        got = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, flows)])["topic"]
    finally:
        admin.close()
    assert got[flows]["max.message.bytes"]["value"] == str(MAX_MESSAGE_BYTES)
    assert got[flows]["retention.ms"]["value"] == "3600000"
    ensure_topics(k, [big], [])  # already right: nothing to change
