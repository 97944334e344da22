"""Arrow shapes of the stored tables, and event dicts → Arrow rows.

The DDL lives in ``schemas/clickhouse/NNN_*.sql``; the schemas here mirror it column for
column so inserts send exactly what the tables hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import StorageError

EDGE_MINUTE = "edge_minute"
VIOLATIONS = "violations"
CANDIDATE_RULES = "candidate_rules"

_TS_MS = pa.timestamp("ms", tz="UTC")
_LABEL = pa.string()

EDGE_MINUTE_SCHEMA = pa.schema(
    [
        ("minute", pa.timestamp("s", tz="UTC")),
        ("src_namespace", _LABEL),
        ("src_app", _LABEL),
        ("dst_namespace", _LABEL),
        ("dst_app", _LABEL),
        ("src_kind", _LABEL),
        ("dst_kind", _LABEL),
        ("service_port", pa.uint16()),
        ("proto", pa.uint8()),
        ("phase", _LABEL),
        ("flows", pa.uint64()),
        ("bytes", pa.uint64()),
        ("packets", pa.uint64()),
        ("rejected_flows", pa.uint64()),
        ("violating_flows", pa.uint64()),
        ("source_id", _LABEL),
        ("block", pa.uint64()),
        ("version", pa.uint64()),
    ]
)
EDGE_MINUTE_COLUMNS: tuple[str, ...] = tuple(EDGE_MINUTE_SCHEMA.names)

VIOLATION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("ts", _TS_MS),
        ("type", _LABEL),
        ("severity", _LABEL),
        ("score", pa.uint8()),
        ("src_ip", pa.string()),
        ("dst_ip", pa.string()),
        ("dst_port", pa.uint16()),
        ("proto", pa.uint8()),
        ("src_namespace", _LABEL),
        ("src_app", _LABEL),
        ("dst_namespace", _LABEL),
        ("dst_app", _LABEL),
        ("mode", _LABEL),
        ("reason", pa.string()),
        ("evidence", pa.string()),
        ("count", pa.uint64()),
        ("first_seen", _TS_MS),
        ("last_seen", _TS_MS),
        ("detector", _LABEL),
        ("version", pa.uint64()),
    ]
)

RULE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("app", pa.string()),
        ("namespace", _LABEL),
        ("direction", _LABEL),
        ("peer_kind", _LABEL),
        ("peer", pa.string()),
        ("peer_namespace", pa.string()),
        ("peer_app", pa.string()),
        ("peer_detail", pa.string()),
        ("proto", pa.uint8()),
        ("ports", pa.list_(pa.uint16())),
        ("flows", pa.uint64()),
        ("bytes", pa.uint64()),
        ("first_seen", _TS_MS),
        ("last_seen", _TS_MS),
        ("days_observed", pa.uint16()),
        ("confidence", pa.float32()),
        ("status", _LABEL),
        ("version", pa.uint64()),
    ]
)


def _cast(name: str, column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise StorageError(
            f"column {name!r} of type {column.type} does not fit {target}: {exc}".splitlines()[0]
        ) from exc


def _minute_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """timestamp (any unit, naive = UTC) or int/float epoch seconds → timestamp[s, UTC]."""
    target = EDGE_MINUTE_SCHEMA.field("minute").type
    kind = column.type
    if pa.types.is_timestamp(kind):
        if kind.tz is None:
            column = column.cast(pa.timestamp(kind.unit, tz="UTC"))
        return column.cast(target, safe=False)
    if pa.types.is_floating(kind):
        column = pc.floor(column).cast(pa.int64())
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return _cast("minute", column.cast(pa.int64()), target)
    raise StorageError(
        f"column 'minute' has type {kind}; send timestamp[s, tz=UTC] or epoch seconds"
    )


def normalize_edge_minutes(table: pa.Table) -> pa.Table:
    """Select and type the ``edge_minute`` columns; StorageError if any is missing or unfit."""
    missing = [c for c in EDGE_MINUTE_COLUMNS if c not in table.column_names]
    if missing:
        raise StorageError(
            f"edge_minute batch lacks columns {', '.join(missing)}; "
            "emit pipeline.storage.tables.EDGE_MINUTE_COLUMNS"
        )
    arrays: list[pa.ChunkedArray] = []
    for field in EDGE_MINUTE_SCHEMA:
        column = table.column(field.name)
        if field.name == "minute":
            column = _minute_column(column)
        elif field.type == _LABEL and pa.types.is_dictionary(column.type):
            pass  # dictionary strings map onto LowCardinality as they are
        elif column.type != field.type:
            column = _cast(field.name, column, field.type)
        if column.null_count:
            raise StorageError(
                f"edge_minute column {field.name!r} has nulls; send empty strings or 0"
            )
        arrays.append(column)
    return pa.Table.from_arrays(arrays, names=list(EDGE_MINUTE_COLUMNS))


# -- event dicts → Arrow ---------------------------------------------------------------


def _timestamps(name: str, values: list[Any]) -> pa.Array:
    """RFC 3339 strings (vectorised) or epoch seconds → timestamp[ms, UTC]."""
    if all(isinstance(v, str) for v in values):
        try:
            return pc.cast(pa.array(values, pa.string()), _TS_MS)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # fall through for a precise per-value message
    millis: list[int] = []
    for v in values:
        try:
            if isinstance(v, bool):
                raise TypeError
            if isinstance(v, int | float):
                millis.append(round(v * 1000))
            else:
                stamp = datetime.fromisoformat(str(v))
                if stamp.tzinfo is None:
                    raise ValueError("no UTC offset")
                millis.append(round(stamp.timestamp() * 1000))
        except (TypeError, ValueError) as exc:
            raise StorageError(
                f"field {name!r} value {v!r} is not an RFC 3339 time with zone or epoch seconds"
            ) from exc
    return pa.array(millis, pa.int64()).cast(_TS_MS)


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()


_REQUIRED: Any = object()  # marker: the field must be present and not null


@dataclass(frozen=True, slots=True)
class _Col:
    """Where a column's value sits in an event, and what to do when it is absent."""

    name: str
    path: tuple[str, ...]
    default: Any = _REQUIRED
    convert: Callable[[Any], Any] | None = None


def _dig(event: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        event = event[key]
    return event


def _column_values(kind: str, col: _Col, events: Sequence[Mapping[str, Any]]) -> list[Any]:
    """One list comprehension per column; a precise error names the first bad event."""
    try:
        if col.default is _REQUIRED:
            values = [_dig(e, col.path) for e in events]
            if None not in values:
                return values if col.convert is None else [col.convert(v) for v in values]
        else:
            values = []
            for e in events:
                try:
                    v = _dig(e, col.path)
                except (KeyError, TypeError):
                    v = None
                values.append(col.default if v is None else v)
            return values if col.convert is None else [col.convert(v) for v in values]
    except (KeyError, TypeError):
        pass
    for i, e in enumerate(events):
        try:
            if _dig(e, col.path) is not None:
                continue
        except (KeyError, TypeError):
            pass
        raise StorageError(
            f"{kind} event {i} lacks {'.'.join(col.path)!r}; "
            f"events must follow schemas/{kind}.schema.json"
        )
    raise StorageError(f"{kind} events: cannot read {'.'.join(col.path)!r}")  # pragma: no cover


def _build(
    kind: str,
    schema: pa.Schema,
    events: Sequence[Mapping[str, Any]],
    cols: Sequence[_Col],
    fixup: Callable[[dict[str, list[Any]]], None] | None = None,
) -> pa.Table:
    for i, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise StorageError(f"{kind} event {i} is a {type(event).__name__}, not a JSON object")
    lists = {col.name: _column_values(kind, col, events) for col in cols}
    if fixup is not None:
        fixup(lists)
    arrays: list[pa.Array] = []
    for field in schema:
        values = lists[field.name]
        if field.type == _TS_MS:
            arrays.append(_timestamps(field.name, values))
            continue
        try:
            arrays.append(pa.array(values, field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise StorageError(
                f"{kind} field {field.name!r} does not fit {field.type}: {exc}".splitlines()[0]
            ) from exc
    return pa.Table.from_arrays(arrays, schema=schema)


def _c(name: str, path: str | None = None, default: Any = _REQUIRED, convert: Any = None) -> _Col:
    return _Col(name, tuple((path or name).split(".")), default, convert)


_VIOLATION_COLS = (
    _c("id"),
    _c("ts"),
    _c("type"),
    _c("severity", "severity.label"),
    _c("score", "severity.score"),
    _c("src_ip"),
    _c("dst_ip"),
    _c("dst_port"),
    _c("proto"),
    _c("src_namespace", default=""),
    _c("src_app", default=""),
    _c("dst_namespace", default=""),
    _c("dst_app", default=""),
    _c("mode"),
    _c("reason", default=""),
    _c("evidence", default={}, convert=_json_text),
    _c("count", default=1),
    _c("first_seen", default=""),  # "" → ts, filled in below
    _c("last_seen", default=""),
    _c("detector", default=""),
    _c("version", default=0),
)


def violations_to_arrow(events: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Violation event dicts (``schemas/violation.schema.json``) → ``violations`` rows."""

    def seen_defaults_to_ts(lists: dict[str, list[Any]]) -> None:
        for name in ("first_seen", "last_seen"):
            pairs = zip(lists[name], lists["ts"], strict=True)
            lists[name] = [v if v != "" else ts for v, ts in pairs]

    return _build("violation", VIOLATION_SCHEMA, events, _VIOLATION_COLS, seen_defaults_to_ts)


def _peer_text(peer: Mapping[str, Any]) -> str:
    kind = peer.get("kind")
    if kind == "workload":
        ns, app = peer.get("namespace") or "", peer.get("app") or ""
        return f"{ns}/{app}" if ns else app
    if kind == "cidr":
        return str(peer.get("cidr") or "")
    return "world"


_RULE_COLS = (
    _c("id"),
    _c("app"),
    _c("namespace", default=""),
    _c("direction"),
    _c("peer_kind", "peer.kind"),
    _c("peer", convert=_peer_text),
    _c("peer_namespace", "peer.namespace", default=""),
    _c("peer_app", "peer.app", default=""),
    _c("peer_detail", "peer", convert=_json_text),
    _c("proto"),
    _c("ports", default=[]),
    _c("flows", "evidence.flows"),
    _c("bytes", "evidence.bytes"),
    _c("first_seen", "evidence.first_seen"),
    _c("last_seen", "evidence.last_seen"),
    _c("days_observed", "evidence.days_observed", default=0),
    _c("confidence"),
    _c("status", default="proposed"),
    _c("version", default=0),
)


def rules_to_arrow(events: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Candidate-rule event dicts (``schemas/candidate_rule.schema.json``) → rows."""

    def namespace_from_app(lists: dict[str, list[Any]]) -> None:
        lists["namespace"] = [
            ns or (str(app).split("/", 1)[0] if "/" in str(app) else "")
            for ns, app in zip(lists["namespace"], lists["app"], strict=True)
        ]

    return _build("candidate_rule", RULE_SCHEMA, events, _RULE_COLS, namespace_from_app)


__all__ = [
    "CANDIDATE_RULES",
    "EDGE_MINUTE",
    "EDGE_MINUTE_COLUMNS",
    "EDGE_MINUTE_SCHEMA",
    "RULE_SCHEMA",
    "VIOLATIONS",
    "VIOLATION_SCHEMA",
    "normalize_edge_minutes",
    "rules_to_arrow",
    "violations_to_arrow",
]
