"""Kafka client settings, the start-up reachability check, and the worker's topics.

One place maps :class:`~pipeline.config.KafkaSettings` (security included) onto aiokafka,
kafka-python and faust, and turns "no broker" or a mis-shaped topic into one-line
:class:`~pipeline.errors.BrokerError` / :class:`~pipeline.errors.ConfigError` messages.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from pipeline.config import KafkaSettings, TopicSettings
from pipeline.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)

MiB = 1 << 20
MAX_MESSAGE_BYTES = 16 * MiB  # internal topics accept messages up to this size
SNAPSHOT_CHUNK_BYTES = 900 * 1024  # below any broker's default 1 MiB message limit


def _ssl_context(k: KafkaSettings) -> ssl.SSLContext | None:
    if not k.security_protocol.endswith("SSL"):
        return None
    ctx = ssl.create_default_context(cafile=k.ssl_cafile)
    if k.ssl_certfile:
        ctx.load_cert_chain(k.ssl_certfile, k.ssl_keyfile)
    return ctx


def _common_kwargs(k: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments aiokafka and kafka-python spell the same way."""
    kw: dict[str, Any] = {"bootstrap_servers": k.bootstrap, "client_id": k.client_id,
                          "security_protocol": k.security_protocol}
    if k.sasl_mechanism:
        kw.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username,
                  sasl_plain_password=k.sasl_password)
    return kw


def aiokafka_kwargs(k: KafkaSettings) -> dict[str, Any]:
    """Connection keyword arguments for aiokafka clients."""
    kw = _common_kwargs(k)
    ctx = _ssl_context(k)
    if ctx is not None:
        kw["ssl_context"] = ctx
    return kw


def kafka_python_kwargs(k: KafkaSettings) -> dict[str, Any]:
    """Connection keyword arguments for kafka-python clients."""
    kw = _common_kwargs(k)
    if k.security_protocol.endswith("SSL"):
        kw.update(ssl_cafile=k.ssl_cafile, ssl_certfile=k.ssl_certfile,
                  ssl_keyfile=k.ssl_keyfile)
    return kw


def faust_credentials(k: KafkaSettings) -> Any:
    """faust ``broker_credentials`` for the security settings (None for PLAINTEXT)."""
    import faust

    ctx = _ssl_context(k)
    if k.sasl_mechanism:
        return faust.SASLCredentials(username=k.sasl_username, password=k.sasl_password,
                                     mechanism=k.sasl_mechanism, ssl_context=ctx)
    return faust.SSLCredentials(ctx) if ctx is not None else None


def unreachable(k: KafkaSettings) -> BrokerError:
    return BrokerError(
        f"cannot reach Kafka at {k.bootstrap} within {k.connect_timeout:g} s; is the broker "
        "running? set SEGFLOW_KAFKA__BOOTSTRAP (or kafka.bootstrap in the config file)")


def admin_client(k: KafkaSettings) -> KafkaAdminClient:
    """A kafka-python admin client, or BrokerError when the broker does not answer in time."""
    timeout_ms = int(k.connect_timeout * 1000)
    try:
        return KafkaAdminClient(**kafka_python_kwargs(k), request_timeout_ms=timeout_ms,
                                bootstrap_timeout_ms=timeout_ms)
    except (KafkaTimeoutError, OSError) as exc:
        raise unreachable(k) from exc
    except KafkaError as exc:
        raise BrokerError(f"Kafka at {k.bootstrap} refused the connection: {exc}; check "
                          "kafka.security_protocol and the credentials") from exc


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic the worker needs, and how to create it when it is missing."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    exact: str = ""  # non-empty: the count must match; how to fix it when it does not


_COMPACT = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
            "segment.ms": str(10 * 60 * 1000)}


def inventory_topic(name: str) -> TopicSpec:
    """The compacted inventory topic (one partition: updates stay in order)."""
    return TopicSpec(name, 1, dict(_COMPACT))


def control_topic(name: str) -> TopicSpec:
    """The compacted control topic: one partition, so "first in the log" is well defined."""
    return TopicSpec(name, 1, dict(_COMPACT),
                     exact="its first record decides the audit start; point topics.control "
                           "at a new topic")


def worker_topics(t: TopicSettings) -> list[TopicSpec]:
    """Internal and output topics (raw topics belong to the collectors)."""
    big = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    compact = _COMPACT
    n = t.flows_partitions
    rekey = (f"topics.flows_partitions is {n}; set them equal (changing it re-keys all "
             "state)")
    return [
        TopicSpec(t.flows, n, big, exact=rekey),
        TopicSpec(t.state, n, {**compact, "max.message.bytes": str(2 * MiB)}, exact=rekey),
        inventory_topic(t.inventory),
        control_topic(t.control),
        TopicSpec(t.dead_letter, 1, {"max.message.bytes": str(2 * MiB)}),
        TopicSpec(t.violations, n),
        TopicSpec(t.candidate_rules, n),
        TopicSpec(t.incidents, n),
    ]


def ensure_topics(k: KafkaSettings, specs: list[TopicSpec], raw: list[str]) -> dict[str, int]:
    """Create missing topics; ConfigError when an existing one has the wrong partition count.
    Returns the partition count of every topic that exists (raw topics included)."""
    admin = admin_client(k)
    try:
        existing = _partition_counts(admin, [s.name for s in specs] + raw)
        missing = [s for s in specs if s.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was faster
                admin.create_topics(
                    [NewTopic(s.name, s.partitions, -1, topic_configs=s.configs) for s in missing],
                    timeout_ms=int(k.connect_timeout * 1000))
            _wait_for_leaders(admin, [s.name for s in missing], k.connect_timeout)
        for s in specs:
            have = existing.get(s.name)
            if s.exact and have is not None and have != s.partitions:
                raise ConfigError(f"topic {s.name} has {have} partitions, not {s.partitions}: "
                                  f"{s.exact}")
        _ensure_message_bytes(admin, [s for s in specs if s.name in existing])
        for name in raw:
            if name not in existing:
                log.warning("raw topic %s does not exist yet; waiting for collectors", name)
        return {**existing, **{s.name: s.partitions for s in missing}}
    except KafkaError as exc:
        raise BrokerError(f"Kafka at {k.bootstrap} rejected a topic request: {exc}") from exc
    finally:
        admin.close()


MESSAGE_BYTES = "max.message.bytes"


def _ensure_message_bytes(admin: KafkaAdminClient, specs: list[TopicSpec]) -> None:
    """Raise ``max.message.bytes`` of existing topics that accept smaller messages than the
    worker writes (a topic created by hand or by an older version keeps the broker's default,
    1 MiB); ConfigError, naming the fix, when the broker refuses."""
    wanted = {s.name: int(s.configs[MESSAGE_BYTES]) for s in specs if MESSAGE_BYTES in s.configs}
    if not wanted:
        return
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, configs=[MESSAGE_BYTES])
         for name in wanted], config_filter="all").get("topic", {})
    have = {name: int(described.get(name, {}).get(MESSAGE_BYTES, {}).get("value", 0))
            for name in wanted}
    low = {name: need for name, need in wanted.items() if have[name] < need}
    if not low:
        return
    try:
        result = admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, configs={MESSAGE_BYTES: str(need)})
             for name, need in low.items()], incremental=True).get("topic", {})
        refused = {n: r for n, r in result.items() if r != "OK"}
    except (KafkaError, ValueError) as exc:
        refused = {n: str(exc) for n in low}
    if refused:
        name, why = next(iter(sorted(refused.items())))
        raise ConfigError(
            f"topic {name} accepts messages up to {have[name]} bytes and the worker cannot "
            f"raise max.message.bytes to {low[name]} ({why}); set it "
            f"with kafka-configs.sh --alter --entity-type topics --entity-name {name} "
            f"--add-config {MESSAGE_BYTES}={low[name]}")
    for name, need in low.items():
        log.info("topic %s: raised %s to %d (the worker's messages are up to that size)",
                 name, MESSAGE_BYTES, need)


def _partition_counts(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    listed = set(admin.list_topics())
    out = {}
    for meta in admin.describe_topics([n for n in names if n in listed]):
        parts = meta.get("partitions") or []
        if parts:
            out[meta.get("name") or meta.get("topic")] = len(parts)
    return out


def _wait_for_leaders(admin: KafkaAdminClient, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        metas = admin.describe_topics(names)
        ready = all(
            m.get("partitions") and all(p.get("leader_id", p.get("leader", -1)) >= 0
                                        for p in m["partitions"])
            for m in metas)
        if ready:
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"topics {', '.join(names)} have no leader after {timeout:g} s; "
                              "check the broker's health")
        time.sleep(0.1)


__all__ = [
    "MAX_MESSAGE_BYTES",
    "SNAPSHOT_CHUNK_BYTES",
    "TopicSpec",
    "admin_client",
    "aiokafka_kwargs",
    "control_topic",
    "ensure_topics",
    "faust_credentials",
    "inventory_topic",
    "kafka_python_kwargs",
    "unreachable",
    "worker_topics",
]
