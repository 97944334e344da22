"""Deployment settings for the streaming worker: one frozen object, env vars over a file.

Env vars use the ``SEGFLOW_`` prefix and ``__`` for nesting, e.g. ``SEGFLOW_KAFKA__BOOTSTRAP``,
``SEGFLOW_STORE``, ``SEGFLOW_CORE__AUDIT_DAYS``. A JSON or TOML file (``segflow worker
--config``) gives the same keys. Sections: ``kafka``, ``topics``, ``core`` (every core
setting, generated from :mod:`pipeline.core.settings`), ``writer`` (the store writer) and
``stream`` (the stages' batching and snapshots); each component receives only its own
section. ``docs/settings.md`` is generated from these declarations
(``python -m pipeline.config > docs/settings.md``).

Renamed keys (``audit.days``, ``suppress_window``, ``sink.max_rows``, …) are refused with
one line naming the new key, so an old config never runs with silently ignored values.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.core.settings import SETTINGS, CoreSettings, SettingInfo
from pipeline.errors import ConfigError

ENV_PREFIX = "SEGFLOW_"


class KafkaSettings(BaseModel, frozen=True):
    """Broker connection; security settings pass through to aiokafka / kafka-python."""

    bootstrap: str = Field("127.0.0.1:9092", description="broker addresses, comma-separated")
    security_protocol: str = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str | None = Field(
        None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str | None = Field(None, description="SASL user")
    sasl_password: str | None = Field(None, description="SASL password")
    ssl_cafile: str | None = Field(None, description="CA bundle (PEM) to verify the brokers")
    ssl_certfile: str | None = Field(None, description="client certificate (PEM)")
    ssl_keyfile: str | None = Field(None, description="client key (PEM)")
    client_id: str = Field("segflow", description="Kafka client id")
    connect_timeout: float = Field(
        10.0, gt=0, description="seconds to reach the broker at start before a BrokerError")
    session_timeout: float = Field(
        10.0, gt=0, description="consumer-group session in seconds (short: fast joins and "
        "failover; faust uses at least 6)")


class TopicSettings(BaseModel, frozen=True):
    """Topic names; `raw` maps each input topic to its flow format."""

    raw: dict[str, str] = Field(
        default_factory=lambda: {"segflow-flows-raw": "canonical"},
        description="raw topics and their flow format (JSON map topic → format)")
    flows: str = Field("segflow-flows",
                       description="internal: normalised batches keyed by client workload")
    flows_partitions: int = Field(
        8, ge=1, description="partitions of flows and state (fixed for the life of the state)")
    dead_letter: str = Field("segflow-dead-letter", description="rejected raw records")
    violations: str = Field("segflow-violations", description="violation events")
    violations_format: Literal["segflow", "ocsf"] = Field(
        "segflow", description="segflow events or OCSF 1.5 Detection Findings")
    candidate_rules: str = Field("segflow-candidate-rules", description="candidate-rule events")
    incidents: str = Field("segflow-incidents",
                           description="incident events (violations grouped by source)")
    inventory: str = Field("segflow-inventory", description="inventory records (compacted)")
    state: str = Field("segflow-state",
                       description="per-partition pipeline snapshots (compacted)")
    control: str = Field("segflow-control",
                         description="agreed audit start and service maps (compacted, 1 "
                         "partition)")


class WriterSettings(BaseModel, frozen=True):
    """The store writer (pipeline/storage/writer.py): batch size, backlog bound (back-pressure)
    and retry backoff. Transient store errors are retried until the store is back."""

    max_rows: int = Field(200_000, ge=1,
                          description="rows (aggregates + events) per insert at most")
    max_seconds: float = Field(5.0, gt=0,
                               description="insert a non-empty batch at least this often")
    max_pending_rows: int = Field(
        1_000_000, ge=1, description="rows waiting for the store at most; beyond, the "
        "stateful stage stops consuming until the store catches up (back-pressure)")
    retry_base_delay: float = Field(0.5, gt=0,
                                    description="seconds before the first retry of a write")
    retry_max_delay: float = Field(30.0, gt=0,
                                   description="backoff cap in seconds (doubling, jittered)")


class StreamSettings(BaseModel, frozen=True):
    """Batching, snapshot and watermark knobs of the streaming stages."""

    poll_timeout_ms: int = Field(200, ge=1, description="ingest: wait this long for raw records")
    max_messages: int = Field(20_000, ge=1, description="ingest: raw messages per batch at most")
    message_rows: int = Field(
        40_000, ge=1, le=100_000,
        description="ingest: flows per internal message (~4 MB of canonical flows; the worker "
        "sets the flows topic's max.message.bytes to 16 MiB)")
    max_record_bytes: int = Field(1 << 20, ge=1024,
                                  description="ingest: longer raw records are dead-lettered")
    watermark_step: float = Field(
        60.0, ge=0, description="ingest: event-time seconds between idle progress broadcasts")
    snapshot_every_messages: int = Field(
        50, ge=1, description="stateful: snapshot (and commit) a partition every this many "
        "messages")
    in_process: bool = Field(
        True, description="role all: hand batches for the internal partitions this process "
        "owns to its stateful stage in memory, not through the flows topic")
    snapshot_idle_seconds: float = Field(
        2.0, gt=0, description="stateful: snapshot a partition quiet this long")


# -- the core section, generated from pipeline.core.settings --------------------------------

_ANNOTATIONS: dict[str, Any] = {
    "float": float, "int": int, "bool": bool, "time": float | None,
    "cidrs": Annotated[tuple[str, ...], NoDecode],  # text is parsed by SettingInfo.parse
    "labels": Annotated[tuple[str, ...], NoDecode],
    "text": str,
}


def _validator(info: SettingInfo) -> Any:
    def convert(cls: type, value: Any) -> Any:
        return info.parse(value) if isinstance(value, str) else info.check(value)

    convert.__name__ = f"_convert_{info.name}"
    return field_validator(info.name, mode="before")(convert)


def _core_section() -> type[BaseModel]:
    fields: dict[str, Any] = {
        i.name: (_ANNOTATIONS[i.kind], Field(i.default, description=i.help)) for i in SETTINGS}
    return create_model(  # type: ignore[call-overload, no-any-return]
        "CoreSection", __config__=ConfigDict(frozen=True, extra="forbid"),
        __doc__="Every core setting (pipeline/core/settings.py).",
        __validators__={f"_convert_{i.name}": _validator(i) for i in SETTINGS}, **fields)


if TYPE_CHECKING:
    CoreSection = BaseModel
else:
    CoreSection = _core_section()


class WorkerSettings(BaseSettings):
    """Everything ``segflow worker`` needs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__",
                                      frozen=True, extra="forbid")

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    core: CoreSection = Field(default_factory=CoreSection)
    writer: WriterSettings = WriterSettings()
    stream: StreamSettings = StreamSettings()
    store: str = Field("chdb://var/segflow",
                       description="chdb://PATH or http(s)://user:pass@host:port/db")
    inventory_file: Path | None = Field(
        None, description="optional seed inventory loaded at start (the topic overrides it)")
    # "all": ingest and stateful stages in this process; "ingest" / "stateful": one stage, so
    # the two run as separate processes (each on its own core, scaled on their own)
    role: Literal["all", "ingest", "stateful"] = Field(
        "all", description="stages in this process: all, ingest or stateful")
    metrics_port: int = Field(9464, ge=0, le=65535,
                              description="Prometheus /metrics port; 0 disables")
    app_id: str = Field("segflow",
                        description="consumer groups <app_id> and <app_id>-ingest")

    def core_settings(self) -> CoreSettings:
        """The core's section as the core takes it."""
        return CoreSettings(**self.core.model_dump())


# old key → new key ('' when removed), with the reason shown for removed ones
MOVED: dict[str, str] = {
    "audit.days": "core.audit_days",
    "audit.start": "core.audit_start",
    "suppress_window": "core.suppress_window",
    "scan_threshold": "core.scan_threshold",
    "internal_cidrs": "core.internal_cidrs",
    "snapshot_every_messages": "stream.snapshot_every_messages",
    "sink.max_rows": "writer.max_rows",
    "sink.max_seconds": "writer.max_seconds",
    "web_port": "",
}


def env_name(key: str) -> str:
    """``core.audit_days`` → ``SEGFLOW_CORE__AUDIT_DAYS``."""
    return ENV_PREFIX + key.replace(".", "__").upper()


def _moved(key: str, source: str) -> ConfigError:
    new = MOVED[key]
    if not new:
        return ConfigError(f"setting '{key}' ({source}) was removed: the worker serves no web "
                           "UI; its metrics are on metrics_port")
    return ConfigError(f"setting '{key}' ({source}) is now '{new}' ({env_name(new)}); "
                       "rename it (docs/settings.md)")


def _check_keys(data: Mapping[str, Any], env: Mapping[str, str], where: str) -> None:
    """ConfigError for a renamed key in the file or env, or an unknown nested env var."""
    for key in MOVED:
        section, _, name = key.rpartition(".")
        value = data.get(section) if section else data
        if isinstance(value, Mapping) and name in value:
            raise _moved(key, where)
    sections = {n for n, f in WorkerSettings.model_fields.items()
                if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    by_env = {env_name(k): k for k in MOVED}
    for var in env:
        upper = var.upper()
        if upper in by_env:
            raise _moved(by_env[upper], var)
        if not upper.startswith(ENV_PREFIX) or "__" not in upper:
            continue
        section, _, name = upper[len(ENV_PREFIX):].lower().partition("__")
        if section in sections:
            model = WorkerSettings.model_fields[section].annotation
            assert model is not None
            if name not in model.model_fields:
                raise ConfigError(f"{var}: '{section}' has no setting '{name}'; known: "
                                  f"{', '.join(model.model_fields)} (docs/settings.md)")


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
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a table/object of settings")
    _check_keys({**data, **overrides}, os.environ, f"in {path}" if path else "")
    try:
        file_settings = WorkerSettings.model_validate(data) if data else None
        base = WorkerSettings()  # env vars
        merged = _merge(file_settings.model_dump(exclude_unset=True) if file_settings else {},
                        base.model_dump(exclude_unset=True))
        settings = WorkerSettings.model_validate({**merged, **overrides})
        settings.core_settings()
        return settings
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"setting '{where}': {msg}") from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """``high`` over ``low``, key by key within each section (an env var overrides one key
    of a section the file sets, not the whole section)."""
    out = dict(low)
    for k, v in high.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# -- docs/settings.md ------------------------------------------------------------------------

_SECTIONS = ("kafka", "topics", "writer", "stream")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _default(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, dict):
        return "`" + json.dumps(value) + "`"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,}" if abs(value) >= 10_000 else f"{value:g}"
    return f"`{value}`"


def _bounds(field: Any) -> str:
    out = []
    for m in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sym} {v:g}")
    return ", ".join(out)


def _model_rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, f in model.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            continue  # a section: its own table
        key = f"{prefix}{name}"
        rng = _bounds(f)
        meaning = (f.description or "") + (f" ({rng})" if rng else "")
        rows.append(f"| `{key}` | `{env_name(key)}` | {_default(f)} | {_cell(meaning)} |")
    return rows


def settings_markdown() -> str:
    """docs/settings.md, generated from :mod:`pipeline.core.settings` and the models here."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated by `python -m pipeline.config > docs/settings.md` from",
        "pipeline/core/settings.py and pipeline/config.py; tests/test_settings.py checks that",
        "it is current. Do not edit by hand. -->",
        "",
        "Each setting is declared once, with its default, range and help text. The core's",
        "settings are in `pipeline/core/settings.py`: `segflow replay` and `segflow demo` take",
        "them as flags, `segflow worker` as its `core` section. The worker's own settings are",
        "in `pipeline/config.py`. A new setting added there appears in the flags, the env vars",
        "and this page with nothing else to change.",
        "",
        "## Core settings",
        "",
        "Flags of `segflow replay` and `segflow demo`; for `segflow worker` the `[core]`",
        "section of its config file or the `SEGFLOW_CORE__*` env vars. Lists are",
        "comma-separated (or JSON), times epoch seconds or RFC 3339.",
        "",
        "| setting | flag | worker env var | default | allowed | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for i in SETTINGS:
        flag = (f"`{i.flag}` / `--no-{i.flag[2:]}`" if i.kind == "bool"
                else " ".join(f"`{f}`" for f in (i.flag, *i.aliases)))
        note = f"; {i.note}" if i.note else ""
        lines.append(f"| `{i.name}` | {flag} | `{env_name('core.' + i.name)}` | "
                     f"{i.describe_default()} | {_cell(i.describe_range() or '-')} | "
                     f"{_cell(i.help + note)} |")
    lines += [
        "",
        "## Worker settings",
        "",
        "`segflow worker --config FILE` reads a TOML or JSON file with these keys (sections as",
        "tables); `SEGFLOW_*` env vars override it key by key (`__` separates a section from",
        "its key). An unknown key in a section, or a key under its old name, stops the worker",
        "with one line naming the right key.",
        "",
        "| key | env var | default | meaning |",
        "|---|---|---|---|",
        *_model_rows(WorkerSettings, ""),
        "",
        "`[core]`: the core settings above.",
    ]
    for section in _SECTIONS:
        model = WorkerSettings.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        doc = " ".join(line.strip() for line in (model.__doc__ or "").splitlines())
        lines += ["", f"### `[{section}]`", "", doc.strip(), "",
                  "| key | env var | default | meaning |", "|---|---|---|---|",
                  *_model_rows(model, f"{section}.")]
    lines += ["", "## Renamed settings", "",
              "Refused with a one-line error naming the new key:", "",
              "| old key | now |", "|---|---|"]
    for old, new in MOVED.items():
        lines.append(f"| `{old}` | {f'`{new}`' if new else 'removed (unused)'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(settings_markdown())


__all__ = ["MOVED", "CoreSection", "KafkaSettings", "StreamSettings", "TopicSettings",
           "WorkerSettings", "WriterSettings", "env_name", "load_settings", "settings_markdown"]
