"""Every record segflow stores or emits, declared once.

Why: the edge-minute, violation and candidate-rule records used to be spelled out by hand in
the core, the storage adapter, the DDL, the JSON schemas, the dashboards and the tests, and
nothing checked that they agreed. Here each record is one :class:`Record`: its columns in
table order — each with its Arrow type, ClickHouse type and codec, the event path it is read
from, the default used when an event lacks it and the JSON schema of the event value — the
event-only fields (on the wire, not stored), and the table's ENGINE / PARTITION BY / ORDER BY.
Everything else is derived from :data:`RECORDS`:

- the Arrow schemas (:attr:`Record.schema`): the core builds ``edge_minute`` from it and the
  store inserts exactly it;
- the event → Arrow converters of ``pipeline/storage/tables.py`` (paths, defaults, fallbacks);
- the JSON schemas ``schemas/<event>.schema.json`` (:func:`json_schema`);
- the ClickHouse DDL and the next numbered migration (``pipeline/storage/ddl.py``,
  ``segflow migrate --print-ddl``).

``tests/test_records.py`` holds them together: the migrated chdb tables' ``system.columns``
(names, order, types, codecs), ORDER BY and PARTITION BY, the committed JSON schemas and
every dashboard query's columns must match these declarations.

Adding a column
    1. Declare it: a :class:`Column` in the record's ``fields``, where it belongs in table
       order (a new table: a new :class:`Record` appended to :data:`RECORDS`).
    2. ``segflow migrate --print-ddl`` prints the next migration (``ALTER TABLE … ADD COLUMN``
       or ``CREATE TABLE``) under its file name; save it as ``schemas/clickhouse/NNN_name.sql``
       and commit it. Applied migrations are checksummed: never edit one, add the next.
    3. ``python -m pipeline.storage.ddl`` rewrites the JSON schemas in ``schemas/``; commit them.
    4. Make the producer fill it: the core's ``_aggregate`` refuses a schema it does not fill,
       the store refuses a batch with an undeclared column, events are read by path.
    5. ``pytest tests/test_records.py`` passes.

The module is pure data (pyarrow only): converters are named here and implemented by the
storage adapter; DDL is rendered by the storage adapter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pyarrow as pa

Json = dict[str, Any]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final[Any] = _Required()
"""Default of a column whose event value must be present and not null."""

SCHEMA_URL = "https://segflow.dev/schemas/"
UTC_MS_REF: Final[Json] = {"$ref": "#/$defs/utc_ms"}
IP_REF: Final[Json] = {"$ref": "#/$defs/ip"}
CIDR_PATTERN = "^[0-9A-Fa-f:.]+/[0-9]{1,3}$"
DEFS: Final[Mapping[str, Json]] = {
    "utc_ms": {
        "type": "string",
        "description": "RFC 3339 UTC with milliseconds, e.g. 2026-02-05T03:00:00.000Z",
        "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
    },
    "ip": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
}

# Arrow / ClickHouse type pairs used below (the Arrow type is what the store inserts).
TS_S = pa.timestamp("s", tz="UTC")
TS_MS = pa.timestamp("ms", tz="UTC")
LABEL = "LowCardinality(String)"
DATETIME = "DateTime('UTC')"
DATETIME_MS = "DateTime64(3, 'UTC')"
T64 = "T64, ZSTD(1)"  # counters
TEXT = "ZSTD(3)"  # long free text and JSON


@dataclass(frozen=True, slots=True)
class From:
    """Fill a column whose event value is missing, null or "" from another column's value,
    optionally through a named converter (implemented by the storage adapter)."""

    column: str
    convert: str | None = None


@dataclass(frozen=True, slots=True)
class Column:
    """One stored column.

    ``path``: where the value sits in the event (dotted; "" = the column name; None = the
    record is not built from events). ``default``: the value when the event lacks the path
    (:data:`REQUIRED`: a missing value is an error). ``convert``: a named converter applied
    to the event value (``json_text``, ``peer_text``). ``json``: the JSON schema of the event
    value (None: derived from the Arrow type; a converted column describes nothing itself).
    ``required``: the path is required in the event's JSON schema.
    """

    name: str
    arrow: pa.DataType
    clickhouse: str
    codec: str = ""  # as ClickHouse reports it in system.columns, without CODEC(...)
    path: str | None = ""
    default: Any = REQUIRED
    fallback: From | None = None
    convert: str | None = None
    json: Json | None = None
    required: bool = True
    doc: str = ""

    @property
    def event_path(self) -> str | None:
        return self.name if self.path == "" else self.path

    @property
    def codec_sql(self) -> str:
        return f"CODEC({self.codec})" if self.codec else ""


@dataclass(frozen=True, slots=True)
class Field:
    """An event field that is not stored (``proto_name``), or extra JSON schema for an object
    whose members are columns (``peer``: its ``allOf`` conditions)."""

    path: str
    json: Json
    required: bool = True


@dataclass(frozen=True)
class Record:
    """One output record: a table, and when ``event`` is set, the event it is stored from."""

    table: str
    fields: tuple[Column | Field, ...]
    order_by: tuple[str, ...]
    engine: str = "ReplacingMergeTree(version)"
    partition_by: str = ""
    event: str = ""  # JSON schema name: schemas/<event>.schema.json ("" = not an event)
    title: str = ""
    description: str = ""
    doc: str = ""  # what a row is and how to read it (comment in generated DDL)
    columns: tuple[Column, ...] = field(init=False, repr=False)
    schema: pa.Schema = field(init=False, repr=False)

    def __post_init__(self) -> None:
        columns = tuple(f for f in self.fields if isinstance(f, Column))
        names = [c.name for c in columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{self.table}: columns declared twice: {', '.join(dupes)}")
        unknown = [k for k in self.order_by if k not in names]
        if unknown:
            raise ValueError(f"{self.table}: ORDER BY names undeclared {', '.join(unknown)}")
        for c in columns:
            if c.fallback is not None and c.fallback.column not in names:
                raise ValueError(f"{self.table}.{c.name}: fallback {c.fallback.column} undeclared")
            if self.event and c.event_path is None:
                raise ValueError(f"{self.table}.{c.name}: event records need a path per column")
        object.__setattr__(self, "columns", columns)
        object.__setattr__(
            self, "schema", pa.schema([(c.name, c.arrow) for c in columns], metadata=None))

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.table} has no column {name!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def table_of(self, columns: Mapping[str, pa.Array | pa.ChunkedArray]) -> pa.Table:
        """Rows of this record from arrays by column name, in the declared order and types.

        A declared column that is not given, or a given one that is not declared, raises
        ValueError: a producer and the declaration that disagree are a bug, and a column
        must never be dropped on the way to the store."""
        missing = [n for n in self.names if n not in columns]
        extra = [n for n in columns if n not in self.names]
        if missing or extra:
            raise ValueError(
                f"{self.table}: columns declared in pipeline/core/records.py but not produced: "
                f"{missing or 'none'}; produced but not declared: {extra or 'none'}")
        return pa.Table.from_arrays([columns[n] for n in self.names], schema=self.schema)


def _enum(*values: str) -> Json:
    return {"enum": list(values)}


def _str(min_length: int = 0, description: str = "") -> Json:
    out: Json = {"type": "string"}
    if min_length:
        out["minLength"] = min_length
    if description:
        out["description"] = description
    return out


# -- the records ---------------------------------------------------------------------------

EDGE_MINUTE = Record(
    table="edge_minute",
    doc="Per-minute edge aggregates from the core (one row per edge, minute, input block). "
        "Idempotent under replay: the same (edge, minute, source_id, block) written again "
        "replaces the earlier row (highest version wins); a different block adds to the sum. "
        "Read with FINAL (or argMax by version).",
    fields=(
        Column("minute", TS_S, DATETIME, "DoubleDelta, ZSTD(1)", path=None),
        Column("src_namespace", pa.string(), LABEL, path=None),
        Column("src_app", pa.string(), LABEL, path=None),
        Column("dst_namespace", pa.string(), LABEL, path=None),
        Column("dst_app", pa.string(), LABEL, path=None),
        Column("src_kind", pa.string(), LABEL, path=None),
        Column("dst_kind", pa.string(), LABEL, path=None),
        Column("service_port", pa.uint16(), "UInt16", path=None),
        Column("proto", pa.uint8(), "UInt8", path=None),
        Column("phase", pa.string(), LABEL, path=None, doc="audit | enforce"),
        Column("flows", pa.uint64(), "UInt64", T64, path=None),
        Column("bytes", pa.uint64(), "UInt64", T64, path=None),
        Column("packets", pa.uint64(), "UInt64", T64, path=None),
        Column("rejected_flows", pa.uint64(), "UInt64", T64, path=None),
        Column("violating_flows", pa.uint64(), "UInt64", T64, path=None),
        Column("source_id", pa.string(), LABEL, path=None, doc="file path or topic/partition"),
        Column("block", pa.uint64(), "UInt64", T64, path=None,
               doc="deterministic input block number"),
        Column("version", pa.uint64(), "UInt64", T64, path=None),
    ),
    partition_by="toYYYYMM(minute)",
    order_by=("src_namespace", "src_app", "dst_namespace", "dst_app", "service_port", "proto",
              "minute", "source_id", "block"),
)

VIOLATION_TYPES = ("new_edge", "new_port", "scan", "volume_spike", "off_hours", "fan_out",
                   "failed_connections", "host_volume", "beacon", "provisional_edge",
                   "behaviour_anomaly")

VIOLATION = Record(
    table="violations",
    event="violation",
    title="segflow violation event",
    description="Traffic that left the learned map, emitted on its first flow (ts) and "
                "re-emitted with a higher version as count and last_seen grow; the highest "
                "version of an id is its complete record.",
    doc="Violation events, emitted on the first flow (ts) and re-emitted with a higher version "
        "(count, last_seen grown) that replaces the row; ts moves only within the id's "
        "suppression window (so within one partition). Read with FINAL.",
    fields=(
        Field("schema_version", {"const": 1}),
        Column("id", pa.string(), "String", json=_str(1)),
        Column("ts", TS_MS, DATETIME_MS, "Delta(8), ZSTD(1)"),
        Column("type", pa.string(), LABEL, json=_enum(*VIOLATION_TYPES)),
        Column("severity", pa.string(), LABEL, path="severity.label",
               json=_enum("low", "medium", "high", "critical")),
        Column("score", pa.uint8(), "UInt8", path="severity.score",
               json={"type": "integer", "minimum": 0, "maximum": 100}),
        Column("src_ip", pa.string(), "String", json=IP_REF),
        Column("dst_ip", pa.string(), "String", json=IP_REF),
        Column("dst_port", pa.uint16(), "UInt16"),
        Column("proto", pa.uint8(), "UInt8"),
        Field("proto_name", _str()),
        Field("src_workload", _str(description="'ns/app'")),
        Column("src_namespace", pa.string(), LABEL, default=""),
        Column("src_app", pa.string(), LABEL, default=""),
        Field("dst_workload", _str(description="'ns/app'")),
        Column("dst_namespace", pa.string(), LABEL, default=""),
        Column("dst_app", pa.string(), LABEL, default=""),
        Column("mode", pa.string(), LABEL, json=_enum("audit", "enforce"),
               doc="enforce: after the audit; audit: an audit finding (e.g. a scan during the "
                   "audit, whose edges were not trusted)"),
        Column("reason", pa.string(), "String", TEXT, default="",
               json=_str(1, "one sentence")),
        Column("evidence", pa.string(), "String", TEXT, default={}, convert="json_text",
               json={"type": "object", "required": ["expected", "seen"],
                     "description": "what the baseline expected and what was seen; "
                                    "detectors may add fields"},
               doc="JSON object text"),
        Column("count", pa.uint64(), "UInt64", default=1,
               json={"type": "integer", "minimum": 1}),
        Column("first_seen", TS_MS, DATETIME_MS, default="", fallback=From("ts")),
        Column("last_seen", TS_MS, DATETIME_MS, default="", fallback=From("ts")),
        Column("detector", pa.string(), LABEL, default="", json=_str(1)),
        Column("version", pa.uint64(), "UInt64", default=0),
        Column("detected_at", TS_MS, DATETIME_MS, default="", fallback=From("ts"), required=False,
               doc="event-time watermark of the first emission: ts + detection lateness"),
    ),
    partition_by="toYYYYMM(ts)",
    order_by=("type", "id"),
)

_NULLABLE_STR: Json = {"type": ["string", "null"]}

CANDIDATE_RULE = Record(
    table="candidate_rules",
    event="candidate_rule",
    title="segflow candidate allow rule",
    description="One least-privilege allow rule for app in direction to/from peer, with the "
                "evidence behind it. Re-emitted with a higher version on new evidence or a "
                "status change.",
    doc="Candidate allow rules (intents). Re-emitting an id with a higher version replaces it "
        "(new evidence, status change). Read with FINAL.",
    fields=(
        Field("schema_version", {"const": 1}),
        Column("id", pa.string(), "String", json=_str(1)),
        Column("app", pa.string(), "String",
               json=_str(1, "the protected workload, 'ns/app'")),
        Column("namespace", pa.string(), LABEL, default="",
               fallback=From("app", "namespace_of")),
        Column("direction", pa.string(), LABEL, json=_enum("ingress", "egress")),
        Column("peer_kind", pa.string(), LABEL, path="peer.kind",
               json=_enum("workload", "namespace", "cidr", "world")),
        Column("peer", pa.string(), "String", convert="peer_text",
               doc="human text: 'ns/app', a CIDR or 'world'"),
        Column("peer_namespace", pa.string(), "String", path="peer.namespace", default="",
               json=_NULLABLE_STR, required=False),
        Column("peer_app", pa.string(), "String", path="peer.app", default="",
               json=_NULLABLE_STR, required=False),
        Column("peer_detail", pa.string(), "String", TEXT, path="peer", convert="json_text",
               doc="the event's peer object as JSON (selector, except)"),
        Field("peer.selector", {"type": ["object", "null"],
                                "additionalProperties": {"type": "string"}}, required=False),
        Field("peer.cidr", {"type": ["string", "null"], "pattern": CIDR_PATTERN},
              required=False),
        Field("peer.except", {"type": "array",
                              "items": {"type": "string", "pattern": CIDR_PATTERN}},
              required=False),
        Field("peer", {"allOf": [
            {"if": {"properties": {"kind": {"const": "workload"}}},
             "then": {"required": ["app"],
                      "properties": {"app": {"type": "string", "minLength": 1}}}},
            {"if": {"properties": {"kind": {"const": "cidr"}}},
             "then": {"required": ["cidr"], "properties": {"cidr": {"type": "string"}}}},
        ]}),
        Column("proto", pa.uint8(), "UInt8"),
        Field("proto_name", _str()),
        Column("ports", pa.list_(pa.uint16()), "Array(UInt16)", default=[],
               json={"type": "array", "uniqueItems": True,
                     "description": "service ports; empty means any port of proto (icmp)",
                     "items": {"type": "integer", "minimum": 1, "maximum": 65535}}),
        Column("flows", pa.uint64(), "UInt64", path="evidence.flows"),
        Column("bytes", pa.uint64(), "UInt64", path="evidence.bytes"),
        Column("first_seen", TS_MS, DATETIME_MS, path="evidence.first_seen"),
        Column("last_seen", TS_MS, DATETIME_MS, path="evidence.last_seen"),
        Column("days_observed", pa.uint16(), "UInt16", path="evidence.days_observed",
               default=0),
        Column("confidence", pa.float32(), "Float32",
               json={"type": "number", "minimum": 0, "maximum": 1}),
        Column("status", pa.string(), LABEL, default="proposed",
               json=_enum("proposed", "accepted", "rejected")),
        Field("notes", {"type": "array", "items": {"type": "string"}}, required=False),
        Column("provisional", pa.bool_(), "Bool", default=False, required=False,
               doc="weak audit evidence (too few days or flows, or an audit finding): no "
                   "allow rule until accepted, listed for review"),
        Column("intent", pa.string(), "String", TEXT, default={}, convert="json_text",
               json={"type": "object", "description": "the complete intent (protected "
                     "workload with selector, env, service account and tier; peer; ports; "
                     "provisional): what `segflow rules export` renders"},
               required=False, doc="JSON object text (pipeline.core.intents.intent_dict)"),
        Column("version", pa.uint64(), "UInt64", default=0),
    ),
    order_by=("id",),
)

RULE_DECISION = Record(
    table="rule_status",
    event="rule_decision",
    title="segflow rule decision",
    description="A person's decision on a candidate rule (accept, reject, or back to "
                "proposed), who made it and when. The latest decision per rule is its status.",
    doc="Rule lifecycle: one row per decision, kept as history. A rule's status is the "
        "decision with the greatest decided_at (argMax), proposed when it has none.",
    fields=(
        Column("rule_id", pa.string(), "String", json=_str(1)),
        Column("status", pa.string(), LABEL, json=_enum("proposed", "accepted", "rejected")),
        Column("actor", pa.string(), "String", json=_str(1, "who decided")),
        Column("decided_at", TS_MS, DATETIME_MS, "Delta(8), ZSTD(1)",
               doc="wall-clock time of the decision"),
        Column("note", pa.string(), "String", TEXT, default=""),
        Column("version", pa.uint64(), "UInt64", default=0),
    ),
    order_by=("rule_id", "decided_at"),
)

SIMULATION_RESULT = Record(
    table="simulation_results",
    event="simulation_result",
    title="segflow simulation result",
    description="What a rule set would have done to one observed edge over a time window: "
                "its verdict, the plane that blocks it and why, and the traffic it carried.",
    doc="Policy simulation results: one row per (run, edge). A run id hashes the policy set, "
        "the window and the environment, so simulating the same again replaces its rows.",
    fields=(
        Column("run_id", pa.string(), "String", json=_str(1)),
        Column("ran_at", TS_MS, DATETIME_MS, doc="wall-clock time of the run"),
        Column("policy_source", pa.string(), "String",
               json=_str(1, "'rules:accepted', 'rules:proposed' or the policy folder")),
        Column("env", pa.string(), LABEL, default=""),
        Column("window_from", TS_MS, DATETIME_MS),
        Column("window_to", TS_MS, DATETIME_MS),
        Column("src_namespace", pa.string(), LABEL, default=""),
        Column("src_app", pa.string(), LABEL),
        Column("dst_namespace", pa.string(), LABEL, default=""),
        Column("dst_app", pa.string(), LABEL),
        Column("service_port", pa.uint16(), "UInt16"),
        Column("proto", pa.uint8(), "UInt8"),
        Column("verdict", pa.string(), LABEL, json=_enum("allowed", "blocked")),
        Column("plane", pa.string(), LABEL, default="",
               json=_enum("", "networkpolicy", "istio")),
        Column("reason", pa.string(), "String", TEXT, default=""),
        Column("flows", pa.uint64(), "UInt64"),
        Column("bytes", pa.uint64(), "UInt64"),
        Column("first_seen", TS_MS, DATETIME_MS),
        Column("last_seen", TS_MS, DATETIME_MS),
        Column("version", pa.uint64(), "UInt64", default=0),
    ),
    order_by=("run_id", "src_namespace", "src_app", "dst_namespace", "dst_app", "service_port",
              "proto"),
)

_NAMES: Json = {"type": "array", "items": {"type": "string"}}

INCIDENT = Record(
    table="incidents",
    event="incident",
    title="segflow incident event",
    description="The violations of one source (client workload, or the client address when "
                "it has no identity) within one event-time window, as one finding with the "
                "strongest member severity raised by asset criticality. Re-emitted with a "
                "higher version whenever a member is added or updated; ts of an id never "
                "changes.",
    doc="Incidents (pipeline/core/incidents.py). An id is its source and window start; "
        "re-emitting it with a higher version (members added or updated) replaces it. "
        "Read with FINAL.",
    fields=(
        Field("schema_version", {"const": 1}),
        Column("id", pa.string(), "String", json=_str(1)),
        Column("ts", TS_MS, DATETIME_MS, "Delta(8), ZSTD(1)",
               doc="start of the incident window"),
        Column("severity", pa.string(), LABEL, path="severity.label",
               json=_enum("low", "medium", "high", "critical")),
        Column("score", pa.uint8(), "UInt8", path="severity.score",
               json={"type": "integer", "minimum": 0, "maximum": 100}),
        Column("source", pa.string(), "String",
               json=_str(1, "'ns/app', or 'world:<ip>' for a source without identity")),
        Column("src_namespace", pa.string(), LABEL, default=""),
        Column("src_app", pa.string(), LABEL, default=""),
        Column("src_ip", pa.string(), "String", default="",
               json=_str(description="the first member's client address")),
        Column("first_seen", TS_MS, DATETIME_MS, doc="the first member's ts"),
        Column("last_seen", TS_MS, DATETIME_MS),
        Column("detected_at", TS_MS, DATETIME_MS,
               doc="event-time watermark at which its first member was emitted"),
        Column("violations", pa.uint32(), "UInt32", json={"type": "integer", "minimum": 1}),
        Column("flows", pa.uint64(), "UInt64"),
        Column("types", pa.list_(pa.string()), "Array(String)", json=_NAMES),
        Column("dst_workloads", pa.list_(pa.string()), "Array(String)", default=[],
               json=_NAMES),
        Column("violation_ids", pa.list_(pa.string()), "Array(String)", json=_NAMES,
               doc="member violation ids, by ts"),
        Column("base_score", pa.uint8(), "UInt8",
               json={"type": "integer", "minimum": 0, "maximum": 100},
               doc="the strongest member's score"),
        Column("criticality", pa.uint8(), "UInt8", default=0,
               json={"type": "integer", "minimum": 0, "maximum": 100},
               doc="points added for the most critical asset involved"),
        Column("critical_assets", pa.list_(pa.string()), "Array(String)", default=[],
               json=_NAMES, doc="'ns/app (label=value)'"),
        Column("reason", pa.string(), "String", TEXT, default="",
               json=_str(1, "one sentence")),
        Column("version", pa.uint64(), "UInt64", default=0),
    ),
    partition_by="toYYYYMM(ts)",
    order_by=("id",),
)

APP_READINESS = Record(
    table="app_readiness",
    doc="Audit readiness per app: one row per (app, audit day, source) from the app's first "
        "day on, with the edges first seen that day with the app at either end. A streaming "
        "partition reports its own clients' edges: sum the sources per (app, day). Read with "
        "FINAL, or through the readiness view (segflow query readiness).",
    fields=(
        Column("namespace", pa.string(), LABEL, path=None),
        Column("app", pa.string(), LABEL, path=None),
        Column("day", TS_S, DATETIME, path=None, doc="start of the audit day"),
        Column("source", pa.string(), LABEL, path=None,
               doc="'' for replay, the flows topic/partition for a worker"),
        Column("new_edges", pa.uint32(), "UInt32", path=None),
        Column("edges", pa.uint32(), "UInt32", path=None, doc="edges so far (this source)"),
        Column("audit_start", TS_S, DATETIME, path=None),
        Column("audit_end", TS_S, DATETIME, path=None),
        Column("max_new_edges", pa.uint32(), "UInt32", path=None,
               doc="a day with at most this many new edges is quiet"),
        Column("quiet_days_needed", pa.uint16(), "UInt16", path=None),
        Column("version", pa.uint64(), "UInt64", path=None),
    ),
    order_by=("namespace", "app", "day", "source"),
)

RECORDS: Final[tuple[Record, ...]] = (EDGE_MINUTE, VIOLATION, CANDIDATE_RULE, RULE_DECISION,
                                      SIMULATION_RESULT, INCIDENT, APP_READINESS)
"""Every output record, in migration order (a new table goes last)."""


def record(table: str) -> Record:
    """The record stored in ``table`` (KeyError when none is declared)."""
    for r in RECORDS:
        if r.table == table:
            return r
    raise KeyError(f"no record declares table {table!r}")


# -- JSON schemas ----------------------------------------------------------------------------

_INT_RANGES = {
    pa.uint8(): (0, 255), pa.uint16(): (0, 65535), pa.uint32(): (0, 2**32 - 1),
    pa.int8(): (-128, 127), pa.int16(): (-32768, 32767), pa.int32(): (-(2**31), 2**31 - 1),
}


def json_of_arrow(kind: pa.DataType) -> Json:
    """The JSON schema an event value of this Arrow type follows (64-bit: no upper bound)."""
    if pa.types.is_integer(kind):
        if kind in _INT_RANGES:
            lo, hi = _INT_RANGES[kind]
            return {"type": "integer", "minimum": lo, "maximum": hi}
        return {"type": "integer", "minimum": 0} if pa.types.is_unsigned_integer(kind) \
            else {"type": "integer"}
    if pa.types.is_floating(kind):
        return {"type": "number"}
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return {"type": "string"}
    if pa.types.is_timestamp(kind):
        return dict(UTC_MS_REF)
    if pa.types.is_boolean(kind):
        return {"type": "boolean"}
    if pa.types.is_list(kind):
        return {"type": "array", "items": json_of_arrow(kind.value_type)}
    raise TypeError(f"no JSON schema for Arrow type {kind}; declare json= on the column")


@dataclass
class _Node:
    fragments: list[Json] = field(default_factory=list)
    children: dict[str, _Node] = field(default_factory=dict)
    required: bool = False
    declared: bool = False  # some entry names this exact path


def _entries(rec: Record) -> Iterator[tuple[str, Json | None, bool]]:
    for f in rec.fields:
        if isinstance(f, Field):
            yield f.path, f.json, f.required
        else:
            path = f.event_path
            assert path is not None
            if f.json is not None:
                yield path, f.json, f.required
            else:
                yield path, None if f.convert else json_of_arrow(f.arrow), f.required


def _render(node: _Node, where: str) -> Json:
    out: Json = {}
    if node.children:
        out = {"type": "object", "additionalProperties": False,
               "required": [k for k, c in node.children.items() if c.required],
               "properties": {k: _render(c, f"{where}.{k}" if where else k)
                              for k, c in node.children.items()}}
    for frag in node.fragments:
        clash = [k for k in frag if k in out and out[k] != frag[k]]
        if clash:
            raise ValueError(f"{where}: JSON schema declared twice ({', '.join(clash)})")
        out.update(frag)
    if not out:
        raise ValueError(f"{where}: no JSON schema (give a column or Field json=)")
    return out


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            yield ref.removeprefix("#/$defs/")
        for v in value.values():
            yield from _refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _refs(v)


def json_schema(rec: Record) -> Json:
    """The JSON schema (draft 2020-12) of ``rec``'s event, from its columns and fields."""
    if not rec.event:
        raise ValueError(f"{rec.table} is not an event record")
    root = _Node()
    for path, frag, required in _entries(rec):
        node = root
        for key in path.split("."):
            node = node.children.setdefault(key, _Node())
            node.required |= required
        node.declared = True
        if frag is not None:
            node.fragments.append(frag)
    body = _render(root, "")
    out: Json = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_URL}{rec.event}.schema.json",
        "title": rec.title,
        "description": rec.description,
        **body,
    }
    used = sorted(set(_refs(body)), key=list(DEFS).index)
    if used:
        out["$defs"] = {name: DEFS[name] for name in used}
    return out


def json_schema_text(rec: Record) -> str:
    """The committed form of :func:`json_schema` (``schemas/<event>.schema.json``)."""
    return json.dumps(json_schema(rec), indent=2, ensure_ascii=False) + "\n"


def event_records(records: Sequence[Record] = RECORDS) -> list[Record]:
    """The records that are events (have a JSON schema)."""
    return [r for r in records if r.event]


__all__ = [
    "APP_READINESS",
    "CANDIDATE_RULE",
    "EDGE_MINUTE",
    "INCIDENT",
    "RECORDS",
    "REQUIRED",
    "RULE_DECISION",
    "SIMULATION_RESULT",
    "VIOLATION",
    "VIOLATION_TYPES",
    "Column",
    "Field",
    "From",
    "Record",
    "event_records",
    "json_of_arrow",
    "json_schema",
    "json_schema_text",
    "record",
]
