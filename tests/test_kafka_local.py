"""The local Apache Kafka broker (scripts/kafka-local) and the clients the pipeline uses."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.consumer import KafkaConsumer
from kafka.producer import KafkaProducer
from kafka.structs import TopicPartition

from tests.kafka_broker import kafka_local, new_topic, state_dir

# Also registered in tests/conftest.py under the same name (then this is a no-op).
pytest_plugins = ["tests.kafka_broker"]
pytestmark = pytest.mark.kafka

KEYS = [f"workload-{i:02d}" for i in range(20)]
PER_KEY = 20
MiB = 1024 * 1024

# (partition, offset, key, seq) of every record in the keyed topic.
Record = tuple[int, int, str, int]


@pytest.fixture(scope="module")
def keyed_topic(kafka_bootstrap: str) -> tuple[str, list[Record]]:
    """A 4-partition topic holding PER_KEY records for each of KEYS; returns what was sent."""
    topic = new_topic(kafka_bootstrap, partitions=4, prefix="keyed")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    futures = [
        (key, seq, producer.send(topic, key=key.encode(), value=f"{key}:{seq}".encode()))
        for seq in range(PER_KEY)
        for key in KEYS
    ]
    producer.flush()
    sent = []
    for key, seq, fut in futures:
        md = fut.get(timeout=30)
        sent.append((md.partition, md.offset, key, seq))
    producer.close()
    return topic, sent


def check_consumed(consumed: list[Record], sent: list[Record]) -> None:
    """Everything sent was read once; per partition in offset order; per key in send order."""
    assert sorted(consumed) == sorted(sent)
    assert {p for p, *_ in sent} == {0, 1, 2, 3}
    by_partition: dict[int, list[int]] = defaultdict(list)
    by_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for partition, offset, key, seq in consumed:
        by_partition[partition].append(offset)
        by_key[key].append((partition, seq))
    for offsets in by_partition.values():
        assert offsets == sorted(offsets)
    for key, items in by_key.items():
        assert len({p for p, _ in items}) == 1, f"{key} spread over partitions"
        assert [s for _, s in items] == list(range(PER_KEY))


def test_kafka_python_round_trip(
    kafka_bootstrap: str, keyed_topic: tuple[str, list[Record]]
) -> None:
    topic, sent = keyed_topic
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"kp-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    consumed: list[Record] = []
    deadline = time.monotonic() + 60
    try:
        while len(consumed) < len(sent) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    key, seq = r.value.decode().split(":")
                    assert r.key.decode() == key
                    consumed.append((tp.partition, r.offset, key, int(seq)))
        consumer.commit()
    finally:
        consumer.close()
    check_consumed(consumed, sent)


def test_aiokafka_getmany(kafka_bootstrap: str, keyed_topic: tuple[str, list[Record]]) -> None:
    topic, sent = keyed_topic

    async def consume() -> list[Record]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=f"aio-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        consumed: list[Record] = []
        try:
            deadline = time.monotonic() + 60
            while len(consumed) < len(sent) and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500, max_records=100)
                for tp, records in batches.items():
                    for r in records:
                        key, seq = r.value.decode().split(":")
                        consumed.append((tp.partition, r.offset, key, int(seq)))
        finally:
            await consumer.stop()
        return consumed

    check_consumed(asyncio.run(consume()), sent)


def test_compacted_topic_config(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap, partitions=2, compacted=True, prefix="compacted")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        (meta,) = admin.describe_topics([topic])
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    assert len(meta["partitions"]) == 2
    assert configs["topic"][topic]["cleanup.policy"]["value"] == "compact"


def test_broker_settings(kafka_bootstrap: str) -> None:
    wanted = {
        "message.max.bytes": "16777216",
        "num.partitions": "4",
        "auto.create.topics.enable": "true",
        "group.initial.rebalance.delay.ms": "0",
        "log.retention.ms": "-1",
    }
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        broker_id = str(admin.describe_cluster()["brokers"][0]["broker_id"])
        resource = ConfigResource(ConfigResourceType.BROKER, broker_id, dict.fromkeys(wanted))
        got = admin.describe_configs([resource], config_filter="all")["broker"][broker_id]
    finally:
        admin.close()
    assert {k: got[k]["value"] for k in wanted} == wanted


def test_auto_created_topic_has_four_partitions(kafka_bootstrap: str) -> None:
    topic = f"auto-{uuid.uuid4().hex[:12]}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        producer.send(topic, b"x").get(timeout=30)
        assert producer.partitions_for(topic) == {0, 1, 2, 3}
    finally:
        producer.close()


def test_five_mib_message(kafka_bootstrap: str, kafka_topic: Callable[..., str]) -> None:
    topic = kafka_topic(partitions=1)
    payload = os.urandom(5 * MiB)  # incompressible
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=16 * MiB)
    try:
        md = producer.send(topic, key=b"big", value=payload).get(timeout=60)
    finally:
        producer.close()
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, fetch_max_bytes=16 * MiB
    )
    tp = TopicPartition(topic, 0)
    try:
        consumer.assign([tp])
        consumer.seek(tp, md.offset)
        records = []
        deadline = time.monotonic() + 60
        while not records and time.monotonic() < deadline:
            records = consumer.poll(timeout_ms=1000).get(tp, [])
    finally:
        consumer.close()
    assert records, "the 5 MiB record was not consumed back"
    assert hashlib.sha256(records[0].value).digest() == hashlib.sha256(payload).digest()


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_script_lifecycle(tmp_path: Path) -> None:
    """start/status/stop/bootstrap on a second broker with its own state dir and ports."""
    port, controller_port, spare_port = free_ports(3)
    env = {
        **os.environ,
        "KAFKA_STATE_DIR": str(tmp_path / "kafka"),
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller_port),
    }
    env.pop("KAFKA_KEEP_DATA", None)
    main_lib = state_dir({}) / "lib"
    if (main_lib / ".complete").exists():  # reuse the jars instead of copying them again
        env["KAFKA_LIB_DIR"] = str(main_lib)
    bootstrap = f"127.0.0.1:{port}"
    pid_file = tmp_path / "kafka" / "kafka.pid"

    def run(command: str, **extra: str):
        return kafka_local(command, env={**env, **extra})

    def topics() -> set[str]:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            return set(admin.list_topics())
        finally:
            admin.close()

    assert run("status").returncode == 1
    assert run("stop").returncode == 0
    assert run("bootstrap").stdout.strip() == bootstrap
    try:
        started = run("start")
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip().splitlines()[-1] == bootstrap
        pid = pid_file.read_text().strip()
        assert run("status").returncode == 0
        assert run("bootstrap").stdout.strip() == bootstrap

        again = run("start")  # idempotent: same broker
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip().splitlines()[-1] == bootstrap
        assert pid_file.read_text().strip() == pid

        other = run("start", KAFKA_PORT=str(spare_port))
        assert other.returncode != 0
        assert "already running" in other.stderr

        # Another state dir on the same port fails fast with a clear message.
        clash = run("start", KAFKA_STATE_DIR=str(tmp_path / "clash"))
        assert clash.returncode != 0
        assert f"port {port} is already in use" in clash.stderr

        topic = new_topic(bootstrap, partitions=1, prefix="lifecycle")
        assert run("stop").returncode == 0
        assert run("status").returncode == 1
        assert not pid_file.exists()
        assert run("stop").returncode == 0  # stopping twice is fine

        kept = run("start", KAFKA_KEEP_DATA="1")
        assert kept.returncode == 0, kept.stderr
        assert topic in topics()
        assert run("stop").returncode == 0

        fresh = run("start")
        assert fresh.returncode == 0, fresh.stderr
        assert topic not in topics()
    finally:
        run("stop")
    assert run("status").returncode == 1
