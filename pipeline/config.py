"""Deployment settings for the streaming worker: one frozen object, env vars over a file.

Env vars use the ``SEGFLOW_`` prefix and ``__`` for nesting, e.g. ``SEGFLOW_KAFKA__BOOTSTRAP``,
``SEGFLOW_STORE``, ``SEGFLOW_AUDIT__DAYS``. A JSON or TOML file (``segflow worker --config``)
gives the same keys. Each component receives only its own section.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.core.inventory import DEFAULT_INTERNAL_CIDRS
from pipeline.core.normalize import parse_time_text
from pipeline.core.pipeline import CoreSettings
from pipeline.errors import ConfigError


class KafkaSettings(BaseModel, frozen=True):
    """Broker connection; security settings pass through to aiokafka / kafka-python."""

    bootstrap: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "segflow"
    connect_timeout: float = 10.0  # seconds to reach the broker at start before BrokerError
    session_timeout: float = 10.0  # consumer-group session (short: fast joins and failover)


class TopicSettings(BaseModel, frozen=True):
    """Topic names. ``raw`` maps each input topic to its flow format."""

    raw: dict[str, str] = Field(default_factory=lambda: {"segflow-flows-raw": "canonical"})
    flows: str = "segflow-flows"  # internal: normalised batches keyed by client workload
    flows_partitions: int = 8
    dead_letter: str = "segflow-dead-letter"
    violations: str = "segflow-violations"
    violations_format: Literal["segflow", "ocsf"] = "segflow"  # ocsf: OCSF Detection Findings
    candidate_rules: str = "segflow-candidate-rules"
    inventory: str = "segflow-inventory"  # compacted
    state: str = "segflow-state"  # compacted: per-partition pipeline snapshots
    control: str = "segflow-control"  # compacted, 1 partition: the agreed audit start


class AuditSettings(BaseModel, frozen=True):
    days: float = 30.0
    start: float | None = None  # epoch s or RFC 3339; None = agreed on the control topic

    @field_validator("start", mode="before")
    @classmethod
    def _time(cls, v: Any) -> Any:
        if isinstance(v, str):
            t = parse_time_text(v)
            if t is None:
                raise ValueError(f"'{v}' is not epoch seconds or an RFC 3339 time")
            return t
        return v


class SinkSettings(BaseModel, frozen=True):
    """ClickHouse sink batching."""

    max_rows: int = 200_000
    max_seconds: float = 5.0


class StreamSettings(BaseModel, frozen=True):
    """Batching, snapshot and watermark knobs of the streaming worker."""

    poll_timeout_ms: int = Field(200, ge=1)  # ingest: wait this long for raw records
    max_messages: int = Field(20_000, ge=1)  # ingest: raw messages per batch at most
    message_rows: int = Field(8_000, ge=1)  # flows per internal message (< 1 MiB)
    max_record_bytes: int = Field(1 << 20, ge=1024)  # longer raw records are dead-lettered
    snapshot_idle_seconds: float = Field(2.0, gt=0)  # snapshot a quiet partition this soon
    watermark_step: float = Field(60.0, ge=0)  # event-time seconds between idle broadcasts


class WorkerSettings(BaseSettings):
    """Everything ``segflow worker`` needs."""

    model_config = SettingsConfigDict(env_prefix="SEGFLOW_", env_nested_delimiter="__",
                                      frozen=True, extra="forbid")

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    audit: AuditSettings = AuditSettings()
    sink: SinkSettings = SinkSettings()
    stream: StreamSettings = StreamSettings()
    store: str = "chdb://var/segflow"
    inventory_file: Path | None = None  # optional seed inventory loaded at start
    internal_cidrs: tuple[str, ...] = DEFAULT_INTERNAL_CIDRS
    # "all": ingest and stateful stages in this process; "ingest" / "stateful": one stage, so
    # the two run as separate processes (each on its own core, scaled on their own)
    role: Literal["all", "ingest", "stateful"] = "all"
    metrics_port: int = 9464  # Prometheus /metrics; 0 disables
    app_id: str = "segflow"  # faust app id / consumer group prefix
    web_port: int = 6066
    suppress_window: float = 3600.0
    scan_threshold: int = 20
    snapshot_every_messages: int = 50

    def core(self) -> CoreSettings:
        """The core's section."""
        return CoreSettings(
            audit_days=self.audit.days,
            audit_start=self.audit.start,
            suppress_window=self.suppress_window,
            scan_threshold=self.scan_threshold,
            internal_cidrs=tuple(self.internal_cidrs),
        )


def load_settings(path: Path | None = None, **overrides: Any) -> WorkerSettings:
    """Settings from an optional JSON/TOML file, then env vars, then ``overrides``.

    Any problem → ConfigError with one line naming the field.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"config {path} is not valid {path.suffix[1:] or 'JSON'}: {exc}") \
                from exc
    try:
        file_settings = WorkerSettings.model_validate(data) if data else None
        base = WorkerSettings()  # env vars
        merged = {**(file_settings.model_dump(exclude_unset=True) if file_settings else {}),
                  **base.model_dump(exclude_unset=True), **overrides}
        settings = WorkerSettings.model_validate(merged)
        settings.core()
        return settings
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"setting '{where}': {err['msg']}") from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


__all__ = ["AuditSettings", "KafkaSettings", "SinkSettings", "StreamSettings", "TopicSettings",
           "WorkerSettings", "load_settings"]
