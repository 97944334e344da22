"""Flow batches as canonical Arrow tables, and tables as canonical JSON lines.

JSON lines are assembled column-wise with Arrow string kernels (no per-flow Python work);
tables whose strings would need JSON escaping, or whose times are not finite, go through
orjson record by record instead. Both paths give equal parsed records.
"""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.columns import ACTION_NAMES, FLOW_SCHEMA, NO_TCP_FLAGS
from pipeline.generate.traffic import SimFlows

WIRE_FIELDS = ("start", "end", "src_ip", "dst_ip", "src_port", "dst_port", "proto", "bytes",
               "packets", "action", "tcp_flags", "exporter")
SLICE_ROWS = 1_000_000  # keeps one slice's text below Arrow's 2 GiB string limit
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'
_ACTIONS = pa.array([ACTION_NAMES.get(i, "unknown") for i in range(max(ACTION_NAMES) + 1)])


def to_table(batch: SimFlows, ips: pa.Array, exporters: pa.Array) -> pa.Table:
    """A :data:`FLOW_SCHEMA` table (identity and meta columns null) for a flow batch."""
    n = len(batch)
    arrays = [
        pa.array(batch.start, pa.float64()),
        pa.array(batch.end, pa.float64()),
        ips.take(pa.array(batch.src)),
        ips.take(pa.array(batch.dst)),
        pa.array(batch.sport, pa.int32()),
        pa.array(batch.dport, pa.int32()),
        pa.array(batch.proto, pa.int16()),
        pa.array(batch.bytes, pa.int64()),
        pa.array(batch.packets, pa.int64()),
        pa.array(batch.action, pa.int8()),
        pa.array(batch.flags, pa.int16()),
        exporters.take(pa.array(batch.exporter)),
    ]
    arrays += [pa.nulls(n, pa.string()) for _ in FLOW_SCHEMA.names[len(arrays) :]]
    return pa.Table.from_arrays(arrays, schema=FLOW_SCHEMA)


def flow_records_to_jsonl(table: pa.Table) -> list[bytes]:
    """One canonical JSON record per flow (no trailing newline), for files and Kafka messages.

    Writes the wire fields only: ``action`` as its name, ``tcp_flags`` only for TCP flows that
    report flags, ``exporter`` only when known. Identity and ``meta`` columns are not written.
    """
    out: list[bytes] = []
    for part in _slices(table):
        lines = _vector_lines(part, "")
        if lines is None:
            out.extend(_orjson_lines(part))
        else:
            out.extend(lines.cast(pa.binary()).to_pylist())
    return out


def flow_records_to_jsonl_bytes(table: pa.Table) -> bytes:
    """The same records as one newline-terminated block, ready for a file."""
    blocks: list[bytes] = []
    for part in _slices(table):
        lines = _vector_lines(part, "\n")
        if lines is None:
            blocks.append(b"".join(line + b"\n" for line in _orjson_lines(part)))
            continue
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset :]
        blocks.append(lines.buffers()[2].to_pybytes()[offsets[0] : offsets[len(lines)]])
    return b"".join(blocks)


def _slices(table: pa.Table) -> list[pa.Table]:
    return [table.slice(i, SLICE_ROWS) for i in range(0, table.num_rows, SLICE_ROWS)]


def _vector_lines(table: pa.Table, end: str) -> pa.StringArray | None:
    """JSON text per row built with Arrow kernels, or None when that would not be exact."""
    if table.num_rows == 0:
        return pa.array([], pa.string())
    col = {name: table.column(name).combine_chunks() for name in WIRE_FIELDS}
    for name in ("src_ip", "dst_ip", "exporter"):
        if pc.any(pc.match_substring_regex(col[name], _NEEDS_ESCAPE)).as_py():
            return None
    for name in ("start", "end"):
        if not pc.all(pc.is_finite(col[name])).as_py():
            return None

    def text(name: str) -> pa.Array:
        return pc.cast(col[name], pa.string())

    def real(name: str) -> pa.Array:  # shortest round-trip text that JSON reads as a float
        s = text(name)
        whole = pc.and_(pc.equal(col[name], pc.floor(col[name])),
                        pc.invert(pc.match_substring_regex(s, "[.e]")))
        return pc.if_else(whole, pc.binary_join_element_wise(s, ".0", ""), s)

    tcp = pc.and_(pc.equal(col["proto"], 6), pc.not_equal(col["tcp_flags"], NO_TCP_FLAGS))
    flags = pc.if_else(tcp, pc.binary_join_element_wise(',"tcp_flags":', text("tcp_flags"), ""), "")
    exporter = pc.if_else(pc.is_valid(col["exporter"]), pc.binary_join_element_wise(
        ',"exporter":"', pc.fill_null(col["exporter"], ""), '"', ""), "")
    action = _ACTIONS.take(pc.cast(pc.max_element_wise(
        pc.min_element_wise(col["action"], len(_ACTIONS) - 1), 0), pa.int32()))
    parts = [
        '{"start":', real("start"), ',"end":', real("end"),
        ',"src_ip":"', col["src_ip"], '","dst_ip":"', col["dst_ip"],
        '","src_port":', text("src_port"), ',"dst_port":', text("dst_port"),
        ',"proto":', text("proto"), ',"bytes":', text("bytes"), ',"packets":', text("packets"),
        ',"action":"', action, '"', flags, exporter, "}" + end,
    ]
    return pc.binary_join_element_wise(*parts, "")


def _orjson_lines(table: pa.Table) -> list[bytes]:
    col = {name: table.column(name).to_pylist() for name in WIRE_FIELDS}
    names = _ACTIONS.to_pylist()
    dumps = orjson.dumps
    out: list[bytes] = []
    for s, e, si, di, sp, dp, pr, by, pk, ac, fl, ex in zip(*(col[f] for f in WIRE_FIELDS),
                                                         strict=True):
        rec = {"start": s, "end": e, "src_ip": si, "dst_ip": di, "src_port": sp, "dst_port": dp,
               "proto": pr, "bytes": by, "packets": pk,
               "action": names[min(max(ac, 0), len(names) - 1)]}
        if pr == 6 and fl != NO_TCP_FLAGS:
            rec["tcp_flags"] = fl
        if ex is not None:
            rec["exporter"] = ex
        out.append(dumps(rec))
    return out


__all__ = ["WIRE_FIELDS", "flow_records_to_jsonl", "flow_records_to_jsonl_bytes", "to_table"]
