"""The internal ``flows`` topic's message: one Arrow IPC stream per (target partition, batch).

Columns are :data:`~pipeline.core.columns.FLOW_SCHEMA` plus where each row came from
(``raw_source`` = ``"topic/partition"``, dictionary-encoded, and ``raw_offset``), so the
stateful stage can drop rows it already applied. Columns that are entirely null are left
out on the wire and restored on decode. Schema metadata carries the ingest side's event-time
progress: the newest flow start per raw partition (``wm``), raw partitions that are caught up
and quiet (``idle``) and each raw topic's partition count (``parts``) — with them every
internal partition, even one that receives no flows, advances its event-time watermark — and
the audit start all workers agreed on (``audit_start``, see :mod:`pipeline.stream.control`;
format-1 messages of older workers carried ``first`` instead, read the same way).

The router enriches every flow to route it, so a message also carries that identity
(:class:`Identity`): per row the client and server workload as indices into a list of workload
descriptors in the metadata (``wl``, rows of :meth:`Workloads.state`), and whether the record
was server → client (``swapped``). The stateful stage interns the descriptors into its own
registry and hands the core wids instead of enriching again. Messages without these columns
(older workers) are enriched by the core as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from pipeline.core.columns import FLOW_COLUMNS, FLOW_SCHEMA
from pipeline.core.workloads import WorkloadInfo, Workloads

RAW_SOURCE = "raw_source"
RAW_OFFSET = "raw_offset"
CLIENT_WL, SERVER_WL, SWAPPED = "client_wl", "server_wl", "swapped"
_META_KEY = b"segflow"
_FORMAT = 1


@dataclass(slots=True)
class Identity:
    """The router's enrichment of each row: client and server as indices into ``workloads``
    (descriptors ``[namespace, app, kind, env, service_account, labels]``), and whether the
    record was server → client."""

    client: np.ndarray  # int32 per row
    server: np.ndarray  # int32 per row
    swapped: np.ndarray  # bool per row
    workloads: list[list[Any]]

    @classmethod
    def of(cls, client_wid: np.ndarray, server_wid: np.ndarray, swapped: np.ndarray,
           registry: Workloads) -> Identity:
        """The identity of rows enriched against ``registry`` (only the workloads they use)."""
        mark = np.zeros(int(max(client_wid.max(initial=-1), server_wid.max(initial=-1))) + 1,
                        dtype=bool)  # no sort: wids are small integers
        mark[client_wid] = True
        mark[server_wid] = True
        used = np.flatnonzero(mark)
        remap = (np.cumsum(mark, dtype=np.int32) - 1).astype(np.int32, copy=False)
        infos = registry.infos
        return cls(remap[client_wid], remap[server_wid], np.asarray(swapped, dtype=bool), [
            [w.namespace, w.app, w.kind, w.env, w.service_account, [list(x) for x in w.labels]]
            for w in (infos[i] for i in used.tolist())])

    def columns(self, registry: Workloads) -> dict[str, np.ndarray]:
        """The core's identity columns (``client_wid``, ``server_wid``, ``swapped``) in
        ``registry``'s wids; the descriptors are interned there."""
        lut = np.fromiter((registry.intern(WorkloadInfo(
            str(ns), str(app), str(kind), str(env), str(sa),
            tuple((str(k), str(v)) for k, v in labels)))
            for ns, app, kind, env, sa, labels in self.workloads),
            dtype=np.int64, count=len(self.workloads))
        return {"client_wid": lut[self.client], "server_wid": lut[self.server],
                "swapped": self.swapped}


@dataclass(slots=True)
class FlowBatch:
    """A decoded internal message."""

    flows: pa.Table  # FLOW_SCHEMA
    sources: list[str]  # raw "topic/partition" names; ``source_index`` points into it
    source_index: np.ndarray  # int32 per row
    offsets: np.ndarray  # int64 raw offset per row
    watermarks: dict[str, float] = field(default_factory=dict)  # raw source → newest start
    partitions: dict[str, int] = field(default_factory=dict)  # raw topic → partition count
    idle: list[str] = field(default_factory=list)  # raw sources caught up and quiet
    audit_start: float | None = None  # the agreed (or configured) audit start, if known
    identity: Identity | None = None  # the router's enrichment (None: older workers)

    @property
    def num_rows(self) -> int:
        return self.flows.num_rows

    def enriched_flows(self, registry: Workloads) -> pa.Table:
        """:attr:`flows` plus the core's identity columns in ``registry``'s wids (the core
        then skips enrichment), or :attr:`flows` alone when the message carries none."""
        if self.identity is None:
            return self.flows
        table = self.flows
        for name, values in self.identity.columns(registry).items():
            table = table.append_column(name, pa.array(values))
        return table


def source_name(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def encode(
    flows: pa.Table,
    sources: list[str],
    source_index: np.ndarray,
    offsets: np.ndarray,
    *,
    watermarks: dict[str, float],
    partitions: dict[str, int],
    idle: list[str] | None = None,
    audit_start: float | None = None,
    identity: Identity | None = None,
) -> bytes:
    """Arrow IPC stream bytes for one message (``flows`` may be empty: a watermark only)."""
    arrays: list[pa.Array | pa.ChunkedArray] = []
    names: list[str] = []
    for name in FLOW_COLUMNS:
        col = flows.column(name)
        if col.null_count == len(col) and FLOW_SCHEMA.field(name).nullable:
            continue
        arrays.append(col)
        names.append(name)
    arrays.append(pa.DictionaryArray.from_arrays(
        pa.array(source_index, pa.int32()), pa.array(sources, pa.string())))
    names.append(RAW_SOURCE)
    arrays.append(pa.array(offsets, pa.int64()))
    names.append(RAW_OFFSET)
    head: dict[str, Any] = {"v": _FORMAT, "wm": watermarks, "parts": partitions,
                            "idle": idle or [], "audit_start": audit_start}
    if identity is not None:
        arrays += [pa.array(identity.client, pa.int32()), pa.array(identity.server, pa.int32()),
                   pa.array(identity.swapped, pa.bool_())]
        names += [CLIENT_WL, SERVER_WL, SWAPPED]
        head["wl"] = identity.workloads
    meta = orjson.dumps(head)
    table = pa.Table.from_arrays(arrays, names=names).replace_schema_metadata({_META_KEY: meta})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _descriptor(d: Any) -> bool:
    """``[namespace, app, kind, env, service_account, [[label, value], ...]]``."""
    return (isinstance(d, list) and len(d) == 6 and all(isinstance(x, str) for x in d[:5])
            and isinstance(d[5], list)
            and all(isinstance(kv, list) and len(kv) == 2 for kv in d[5]))


def decode(data: bytes) -> FlowBatch:
    """The :class:`FlowBatch` in ``data``; ValueError if it is not one."""
    try:
        table = pa.ipc.open_stream(data).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"not a segflow flow batch: {exc}") from exc
    meta_raw = (table.schema.metadata or {}).get(_META_KEY)
    if meta_raw is None:
        raise ValueError("not a segflow flow batch: no segflow metadata")
    meta = orjson.loads(meta_raw)
    if meta.get("v") != _FORMAT:
        raise ValueError(f"unsupported flow batch format {meta.get('v')!r}")
    n = table.num_rows
    index_of = {name: i for i, name in enumerate(table.schema.names)}
    if RAW_SOURCE not in index_of or RAW_OFFSET not in index_of:
        raise ValueError("not a segflow flow batch: no raw source/offset columns")
    columns = table.columns
    flows = pa.Table.from_arrays(
        [columns[index_of[f.name]] if f.name in index_of else pa.nulls(n, f.type)
         for f in FLOW_SCHEMA], schema=FLOW_SCHEMA)
    src = columns[index_of[RAW_SOURCE]].combine_chunks()
    if isinstance(src, pa.DictionaryArray):
        sources = src.dictionary.to_pylist()
        index = src.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    else:  # an empty table may lose its dictionary
        sources, index = [], np.zeros(0, dtype=np.int32)
    offsets = columns[index_of[RAW_OFFSET]].to_numpy().astype(np.int64, copy=False)
    start = meta.get("audit_start", meta.get("first"))
    identity = None
    if CLIENT_WL in index_of and SERVER_WL in index_of and SWAPPED in index_of:
        wl = meta.get("wl")
        ends = [columns[index_of[c]].to_numpy() for c in (CLIENT_WL, SERVER_WL)]
        if not isinstance(wl, list) or not all(_descriptor(d) for d in wl):
            raise ValueError("not a segflow flow batch: bad workload descriptors")
        if any(len(e) and (int(e.min()) < 0 or int(e.max()) >= len(wl)) for e in ends):
            raise ValueError("not a segflow flow batch: workload indices out of range")
        identity = Identity(ends[0].astype(np.int32, copy=False),
                            ends[1].astype(np.int32, copy=False),
                            columns[index_of[SWAPPED]].to_numpy(zero_copy_only=False)
                            .astype(bool, copy=False), wl)
    return FlowBatch(
        flows, sources, index, offsets,
        watermarks={str(k): float(v) for k, v in meta.get("wm", {}).items()},
        partitions={str(k): int(v) for k, v in meta.get("parts", {}).items()},
        idle=[str(s) for s in meta.get("idle", [])],
        audit_start=None if start is None else float(start),
        identity=identity,
    )


__all__ = ["RAW_OFFSET", "RAW_SOURCE", "FlowBatch", "Identity", "decode", "encode",
           "source_name"]
