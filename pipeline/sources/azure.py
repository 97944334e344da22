"""Azure Network Watcher flow logs: NSG flow logs (v1/v2) and VNet flow logs (v4).

Both are one JSON document per blob, ``{"records": [...]}``; concatenated documents or one
record document per line are read too. Each record carries comma-separated flow tuples:

* NSG v2: ``ts,src,dst,sport,dport,T|U,I|O,A|D,B|C|E,pkts_s2d,bytes_s2d,pkts_d2s,bytes_d2s``
  (``properties.flows[].flows[].flowTuples``; v1 stops after ``A|D``). Begin (B) tuples have
  no counters; continuing (C) and end (E) tuples count traffic since the previous tuple.
* VNet v4: ``ts_ms,src,dst,sport,dport,proto,I|O,B|C|E|D,encryption,pkts_s2d,...``
  (``flowRecords.flows[].flowGroups[].flowTuples``); state D is a denied flow.

Every tuple becomes a flow (B tuples with zero counters, so denied flows, which only ever
have a B tuple, are kept); bytes and packets are both directions summed. The tuples of a
document are read in one pass by Arrow's CSV reader.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from pipeline.core.columns import ACTION_ACCEPT, ACTION_REJECT, Reject
from pipeline.sources.base import RAW_KEEP, ParseResult
from pipeline.sources.columnar import (
    Prepared,
    bump,
    chunk,
    finish_csv,
    json_object,
    map_distinct,
    merge,
    num,
)

COUNTERS = ["pkts_s2d", "bytes_s2d", "pkts_d2s", "bytes_d2s"]
LAYOUTS: dict[str, list[str]] = {
    "nsg1": ["ts", "src", "dst", "sport", "dport", "proto", "direction", "decision"],
    "nsg2": ["ts", "src", "dst", "sport", "dport", "proto", "direction", "decision", "state",
             *COUNTERS],
    "vnet4": ["ts", "src", "dst", "sport", "dport", "proto", "direction", "state", "encryption",
              *COUNTERS],
}
_PROTO_LETTERS = {"T": 6, "U": 17}
_CONTEXT_KEYS = ("rule", "mac", "resource")


@dataclass(slots=True)
class _Group:
    """Tuples of one layout with the index of their context (record, rule, mac)."""

    tuples: list[str] = field(default_factory=list)
    context: list[int] = field(default_factory=list)


class AzureFlowLogParser:
    """NSG and VNet flow log documents (``whole_document``); ``format`` names the variant."""

    whole_document = True

    def __init__(self, format: str = "azure-nsg") -> None:
        self.format = format
        self.counters: dict[str, int] = {}

    def parse(self, block: bytes, source: str, first_line: int) -> ParseResult:
        rejects: list[Reject] = []
        groups: dict[str, _Group] = {}
        contexts: list[dict[str, Any]] = []
        records = 0
        for where, doc, raw in _documents(block, source, first_line, rejects):
            recs = doc.get("records") if isinstance(doc, dict) else None
            if not isinstance(recs, list):
                rejects.append(Reject("not_azure_flow_log", "no 'records' array: is this an "
                                      "Azure NSG or VNet flow log blob?", raw[:RAW_KEEP], where))
                continue
            for i, rec in enumerate(recs):
                records += 1
                if not _collect(rec, f"{where} records[{i}]", groups, contexts):
                    rejects.append(Reject(
                        "not_azure_flow_log",
                        "record has neither properties.flows (NSG) nor flowRecords (VNet)",
                        orjson.dumps(rec)[:RAW_KEEP], f"{where} records[{i}]"))
        bump(self.counters, "records", records)
        results = [ParseResult(rejects=rejects, records_in=len(rejects))]
        for layout, group in groups.items():
            bump(self.counters, f"{layout}_tuples", len(group.tuples))
            results.append(self._read_group(layout, group, contexts))
        return merge(results)

    def _read_group(self, layout: str, group: _Group, contexts: list[dict[str, Any]]
                    ) -> ParseResult:
        names = LAYOUTS[layout]
        data = "\n".join(group.tuples).encode()
        invalid: list[str] = []

        def on_invalid(row: Any) -> str:
            invalid.append(row.text)
            return "skip"

        def locate(row: int) -> tuple[str, bytes]:
            ctx = contexts[group.context[row]]
            return ctx["where"], group.tuples[row].encode()[:RAW_KEEP]

        try:
            table = pcsv.read_csv(
                io.BytesIO(data),
                read_options=pcsv.ReadOptions(column_names=names),
                parse_options=pcsv.ParseOptions(delimiter=",", quote_char=False,
                                                invalid_row_handler=on_invalid),
                convert_options=pcsv.ConvertOptions(
                    column_types={n: pa.string() for n in names}, null_values=[""],
                    strings_can_be_null=True),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            rej = []
            for i in range(len(group.tuples)):
                where, raw = locate(i)
                rej.append(Reject("bad_tuple", "unreadable flow tuple", raw, where))
            return ParseResult(rejects=rej, records_in=len(rej))
        cols = {k: chunk(table.column(k)) for k in table.column_names}
        n = table.num_rows
        if invalid:  # keep context aligned with the rows the reader kept
            wrong = set(invalid)
            keep = [i for i, t in enumerate(group.tuples) if t not in wrong]
        else:
            keep = list(range(len(group.tuples)))
        ctx_idx = pa.array([group.context[i] for i in keep], pa.int64())
        prep = self._prepare(layout, cols, n, contexts, ctx_idx)
        return finish_csv(prep, data, invalid, locate, "bad_tuple",
                          f"expected {len(names)} comma-separated tuple fields")

    def _prepare(self, layout: str, cols: dict[str, pa.Array], n: int,
                 contexts: list[dict[str, Any]], ctx_idx: pa.Array) -> Prepared:
        ts = num(cols["ts"], n)
        if layout == "vnet4":
            ts = ts / 1000.0  # milliseconds
        bad = [(np.asarray(pc.is_valid(cols["ts"]), dtype=bool) & np.isnan(ts), "bad_time",
                "tuple time stamp is not a number")]
        out: dict[str, Any] = {
            "start": pa.array(ts, pa.float64(), mask=np.isnan(ts)),
            "src_ip": cols["src"], "dst_ip": cols["dst"],
            "src_port": cols["sport"], "dst_port": cols["dport"],
            "proto": map_distinct(cols["proto"], _proto, pa.string()),
        }
        if "state" in cols:
            state = cols["state"]
            for name, a, b in (("packets", "pkts_s2d", "pkts_d2s"),
                               ("bytes", "bytes_s2d", "bytes_d2s")):
                x, y = num(cols[a], n), num(cols[b], n)
                for key, vals in ((a, x), (b, y)):
                    odd = np.asarray(pc.is_valid(cols[key]), dtype=bool) & np.isnan(vals)
                    bad.append((odd, "bad_type", f"tuple field '{key}' is not a number"))
                out[name] = pa.array(np.nan_to_num(x) + np.nan_to_num(y), pa.float64())
        else:
            state = pa.nulls(n, pa.string())
        if layout == "vnet4":
            denied = np.asarray(pc.equal(state, "D").fill_null(False), dtype=bool)
            out["action"] = pa.array(np.where(denied, ACTION_REJECT, ACTION_ACCEPT).astype(np.int8))
        else:
            out["action"] = cols["decision"]  # A / D
        ctx = {k: pa.array([c.get(k) for c in contexts], pa.string()).take(ctx_idx)
               for k in _CONTEXT_KEYS}
        out["exporter"] = ctx["resource"]
        out["meta"] = json_object(
            [("rule", ctx["rule"]), ("mac", ctx["mac"]), ("direction", cols["direction"]),
             ("flow_state", state), ("encryption", cols.get("encryption"))],
            n,
        )
        return Prepared(out, n, bad=bad)


def _documents(block: bytes, source: str, first_line: int, rejects: list[Reject]
               ) -> Iterator[tuple[str, Any, bytes]]:
    """(where, decoded JSON, raw) for the whole block, or for each line if it is not one JSON."""
    try:
        yield source, orjson.loads(block), block
        return
    except orjson.JSONDecodeError:
        pass
    for off, line in enumerate(block.split(b"\n")):
        if not line.strip():
            continue
        where = f"{source}:{first_line + off}"
        try:
            yield where, orjson.loads(line), line
        except orjson.JSONDecodeError as exc:
            rejects.append(Reject("bad_json", f"not JSON: {exc}", line[:RAW_KEEP], where))


def _collect(rec: Any, where: str, groups: dict[str, _Group], contexts: list[dict[str, Any]]
             ) -> bool:
    """Add a record's tuples to ``groups``; False when the record is not a flow log record."""
    if not isinstance(rec, dict):
        return False
    if isinstance(rec.get("flowRecords"), dict):  # VNet flow log
        resource = _last(rec.get("targetResourceID") or rec.get("flowLogResourceID"))
        mac = rec.get("macAddress")
        for flow in _dicts(rec["flowRecords"].get("flows")):
            for fg in _dicts(flow.get("flowGroups")):
                _add(groups, contexts, fg.get("flowTuples"), "vnet4",
                     {"rule": fg.get("rule"), "mac": mac, "resource": resource, "where": where})
        return True
    props = rec.get("properties")
    if isinstance(props, dict) and isinstance(props.get("flows"), list):  # NSG flow log
        resource = _last(rec.get("resourceId"))
        version = props.get("Version", 2)
        layout = "nsg1" if version == 1 else "nsg2"
        for rule in _dicts(props["flows"]):
            for flow in _dicts(rule.get("flows")):
                _add(groups, contexts, flow.get("flowTuples"), layout,
                     {"rule": rule.get("rule"), "mac": flow.get("mac"), "resource": resource,
                      "where": where})
        return True
    return False


def _add(groups: dict[str, _Group], contexts: list[dict[str, Any]], tuples: Any, layout: str,
         ctx: dict[str, Any]) -> None:
    if not isinstance(tuples, list) or not tuples:
        return
    idx = len(contexts)
    contexts.append({k: (None if v is None else str(v)) for k, v in ctx.items()})
    group = groups.setdefault(layout, _Group())
    texts = [t if isinstance(t, str) else orjson.dumps(t, default=str).decode() for t in tuples]
    texts = [t for t in texts if t.strip()]  # non-text tuples stay, and fail as bad_tuple
    if any("\n" in t or "\r" in t for t in texts):
        texts = [t.replace("\n", " ").replace("\r", " ") for t in texts]
    group.tuples.extend(texts)
    group.context.extend([idx] * len(texts))


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _last(resource_id: Any) -> str | None:
    """Resource name from an Azure resource ID (last path segment)."""
    if not isinstance(resource_id, str) or not resource_id:
        return None
    return resource_id.rstrip("/").rsplit("/", 1)[-1]


def _proto(v: str | None) -> str | None:
    if v is None:
        return None
    return str(_PROTO_LETTERS[v]) if v in _PROTO_LETTERS else v


__all__ = ["LAYOUTS", "AzureFlowLogParser"]
