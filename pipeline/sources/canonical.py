"""segflow's canonical flow record, one JSON object per line (files and Kafka messages).

Fast path: the C decoder of :mod:`pipeline.sources.flatjson` takes every line that is a flat
record of the usual fields and types (one pass, no Python objects per record). The lines it
leaves — other fields, RFC 3339 times, escapes, malformed JSON — are decoded one by one as in
the per-record path below; a block where such lines are common takes the general path. General
path: Arrow's multithreaded
JSON reader decodes the whole block into columns. If Arrow refuses the block (a malformed
line, or a field whose JSON type varies between records, e.g. ``"proto": "tcp"`` next to
``"proto": 6``), the block is decoded line by line with orjson and coerced per record, so one
bad record costs only its own line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from pipeline.core.columns import Reject
from pipeline.core.normalize import PROTO_NAMES, normalize, parse_time_text
from pipeline.sources import flatjson
from pipeline.sources.base import RAW_KEEP, ParseResult
from pipeline.sources.columnar import json_rows_are_lines
from pipeline.sources.jsonlines import read_json_checked

_IDENTITY_SIDES = ("src", "dst")
_INT_FIELDS = ("src_port", "dst_port", "bytes", "packets", "tcp_flags")


def labels_to_json(value: Any) -> str | None:
    """Labels as JSON object text; accepts an object or ``"k=v;k=v"`` / ``"k=v,k=v"`` text."""
    if value is None:
        return None
    if isinstance(value, dict):
        return orjson.dumps({str(k): str(v) for k, v in value.items()}).decode()
    if isinstance(value, str):
        pairs = {}
        for part in value.replace(",", ";").split(";"):
            if "=" in part:
                k, v = part.split("=", 1)
                pairs[k.strip()] = v.strip()
        return orjson.dumps(pairs).decode()
    return None


# Types of the flat fields when producers write them the usual way (epoch numbers, proto as
# a number): Arrow converts straight into them, ~1.5x faster than inferring types.
_TYPED = pa.schema([
    ("start", pa.float64()), ("end", pa.float64()), ("src_ip", pa.string()),
    ("dst_ip", pa.string()), ("src_port", pa.int64()), ("dst_port", pa.int64()),
    ("proto", pa.int64()), ("bytes", pa.int64()), ("packets", pa.int64()),
    ("action", pa.string()), ("tcp_flags", pa.int64()), ("exporter", pa.string()),
])
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
_FAST = flatjson.FlatSchema(_TYPED)
ODD_SHARE = 0.05  # more lines than this (and 8) left by the fast path: whole block goes general


def _line_number(r: Reject) -> int:
    return int(r.source.rsplit(":", 1)[1])


class CanonicalParser:
    """Parser for canonical JSONL. Tries typed decoding first; an input whose values don't fit
    (RFC 3339 times, protocol names) falls back to type inference for the rest of the input,
    and a block Arrow cannot read at all to per-line decoding."""

    format = "canonical"
    whole_document = False

    def __init__(self) -> None:
        self._typed = True

    def _read(self, block: bytes) -> pa.Table:
        if self._typed:
            try:
                return read_json_checked(block, parse_options=pj.ParseOptions(
                    explicit_schema=_TYPED, unexpected_field_behavior="infer"))
            except _ARROW_ERRORS:
                self._typed = False
        return read_json_checked(block)

    def parse(self, block: bytes, source: str, first_line: int) -> ParseResult:
        fast = flatjson.decode(block, _FAST)
        if fast is None or len(fast.bad_lines) > max(8, fast.records * ODD_SHARE):
            return self._parse_general(block, source, first_line)
        return self._parse_fast(fast, block, source, first_line)

    def _parse_fast(self, fast: flatjson.FlatRows, block: bytes, source: str,
                    first_line: int) -> ParseResult:
        """Normalise the fast rows; the lines it left are decoded one by one (orjson, as in
        the per-record path) and their rows merged back in input order."""
        flows, errors = normalize(fast.columns, fast.rows)
        line_of = fast.line_of_row
        rejects: list[Reject] = []
        split: list[bytes] = []
        if errors:
            split = block.split(b"\n")
            failed = np.zeros(fast.rows, dtype=bool)
            for e in errors:
                i = int(line_of[e.row])
                failed[e.row] = True
                rejects.append(Reject(e.reason, e.detail, split[i].removesuffix(b"\r")[:RAW_KEEP],
                                      f"{source}:{first_line + i}"))
            line_of = line_of[~failed]
        if len(fast.bad_lines):
            split = split or block.split(b"\n")
            odd = fast.bad_lines.tolist()
            rest = self._parse_slow(b"\n".join([split[i] for i in odd]), source, 0)
            rejected = set()
            for r in rest.rejects:
                k = _line_number(r)
                rejected.add(k)
                rejects.append(Reject(r.reason, r.detail, r.raw, f"{source}:{first_line + odd[k]}"))
            kept = [i for k, i in enumerate(odd) if k not in rejected]
            if len(kept) != rest.flows.num_rows:  # cannot tell which line is which row
                return self._parse_general(block, source, first_line)
            if kept:
                line_of = np.concatenate([line_of, np.asarray(kept, dtype=np.int32)])
                order = np.argsort(line_of, kind="stable")
                flows = pa.concat_tables([flows, rest.flows]).take(pa.array(order))
            rejects.sort(key=_line_number)
        return ParseResult(flows, rejects, fast.records)

    def _parse_general(self, block: bytes, source: str, first_line: int) -> ParseResult:
        try:
            table = self._read(block)
        except _ARROW_ERRORS:
            return self._parse_slow(block, source, first_line)
        if not json_rows_are_lines(block, table.num_rows):  # an object not alone on its line
            return self._parse_slow(block, source, first_line)
        if table.num_rows == 0:
            return ParseResult(records_in=0)
        cols: dict[str, Any] = {}
        names = set(table.column_names)
        for name in table.column_names:
            if not name.endswith("_workload"):
                cols[name] = table.column(name)
        for side in _IDENTITY_SIDES:
            key = f"{side}_workload"
            if key in names:
                col = table.column(key)
                if pa.types.is_struct(col.type):
                    arr = col.combine_chunks()
                    fields = {arr.type.field(i).name for i in range(arr.type.num_fields)}
                    for sub in ("app", "namespace"):
                        if sub in fields:
                            cols[f"{side}_{sub}"] = pc.struct_field(arr, sub)
                    if "labels" in fields:
                        cols[f"{side}_labels"] = pa.array(
                            [labels_to_json(v) for v in pc.struct_field(arr, "labels").to_pylist()],
                            pa.string(),
                        )
                else:  # wrong shape: let the slow path explain per record
                    return self._parse_slow(block, source, first_line)
        flows, errors = normalize(cols, table.num_rows)
        rejects: list[Reject] = []
        if errors:  # row i is the i-th non-blank line
            split = block.split(b"\n")
            line = [i for i, ln in enumerate(split) if ln.strip()]
            rejects = [Reject(e.reason, e.detail,
                              split[line[e.row]].removesuffix(b"\r")[:RAW_KEEP],
                              f"{source}:{first_line + line[e.row]}") for e in errors]
        return ParseResult(flows, rejects, table.num_rows)

    def _parse_slow(self, block: bytes, source: str, first_line: int) -> ParseResult:
        rejects: list[Reject] = []
        rows: list[dict[str, Any]] = []
        kept_lines: list[bytes] = []
        kept_numbers: list[int] = []
        seen = 0
        for offset, line in enumerate(block.split(b"\n")):
            if not line.strip():
                continue
            line = line.removesuffix(b"\r")
            seen += 1
            where = f"{source}:{first_line + offset}"
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                rejects.append(Reject("bad_json", f"not JSON: {exc}", line[:RAW_KEEP], where))
                continue
            if not isinstance(obj, dict):
                detail = "a flow record must be a JSON object"
                rejects.append(Reject("bad_json", detail, line[:RAW_KEEP], where))
                continue
            row, problem = coerce_record(obj)
            if problem is not None:
                rejects.append(Reject(problem[0], problem[1], line[:RAW_KEEP], where))
                continue
            rows.append(row)
            kept_lines.append(line)
            kept_numbers.append(first_line + offset)
        if not rows:
            return ParseResult(rejects=rejects, records_in=seen)
        cols = columns_from_rows(rows)
        flows, errors = normalize(cols, len(rows))
        for e in errors:
            where = f"{source}:{kept_numbers[e.row]}"
            rejects.append(Reject(e.reason, e.detail, kept_lines[e.row][:RAW_KEEP], where))
        rejects.sort(key=lambda r: int(r.source.rsplit(":", 1)[1]))  # input order
        return ParseResult(flows, rejects, seen)


_TYPES: dict[str, pa.DataType] = {
    "start": pa.float64(),
    "end": pa.float64(),
    "src_ip": pa.string(),
    "dst_ip": pa.string(),
    "proto": pa.int64(),
    "action": pa.string(),
    "exporter": pa.string(),
    "src_app": pa.string(),
    "src_namespace": pa.string(),
    "src_labels": pa.string(),
    "dst_app": pa.string(),
    "dst_namespace": pa.string(),
    "dst_labels": pa.string(),
    "meta": pa.string(),
    **{k: pa.int64() for k in _INT_FIELDS},
}


def columns_from_rows(rows: list[dict[str, Any]]) -> dict[str, pa.Array]:
    """Arrow columns from coerced rows (see :func:`coerce_record`)."""
    return {name: pa.array([r.get(name) for r in rows], typ) for name, typ in _TYPES.items()}


_INT64 = range(-(2**63), 2**63)


def _as_int(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError
    out: int | None = None
    if isinstance(v, int):
        out = v
    elif isinstance(v, float) and v.is_integer():
        out = int(v)
    elif isinstance(v, str):
        f = float(v)
        if f.is_integer():
            out = int(f)
    if out is None or out not in _INT64:
        raise ValueError
    return out


def _as_time(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        t = parse_time_text(v)
        if t is None:
            raise ValueError
        return t
    raise ValueError


def coerce_record(obj: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """Coerce one decoded canonical record to uniform Python types, or say why not."""
    row: dict[str, Any] = {}
    for name in ("start", "end"):
        try:
            row[name] = _as_time(obj.get(name))
        except (ValueError, OverflowError):
            return row, ("bad_time", f"'{name}' is not epoch seconds or an RFC 3339 time")
    for name in ("src_ip", "dst_ip"):
        v = obj.get(name)
        if v is not None and not isinstance(v, str):
            return row, ("bad_ip", f"'{name}' must be a string")
        row[name] = v
    for name in _INT_FIELDS:
        try:
            row[name] = _as_int(obj.get(name))
        except (ValueError, OverflowError):
            return row, ("bad_type", f"'{name}' is not an integer")
    p = obj.get("proto")
    if isinstance(p, str):
        key = p.strip().lower()
        p = PROTO_NAMES.get(key, key)
    try:
        row["proto"] = _as_int(p)
    except (ValueError, OverflowError):
        return row, ("bad_proto", "'proto' is not an IANA number 0..255 or a known name")
    a = obj.get("action")
    row["action"] = a if isinstance(a, str) else None
    e = obj.get("exporter")
    row["exporter"] = None if e is None else str(e)
    for side in _IDENTITY_SIDES:
        w = obj.get(f"{side}_workload")
        if w is None:
            continue
        if not isinstance(w, dict):
            return row, ("bad_type", f"'{side}_workload' must be an object")
        for sub in ("app", "namespace"):
            v = w.get(sub)
            row[f"{side}_{sub}"] = None if v is None else str(v)
        row[f"{side}_labels"] = labels_to_json(w.get("labels"))
    return row, None


__all__ = ["CanonicalParser", "coerce_record", "columns_from_rows", "labels_to_json"]
