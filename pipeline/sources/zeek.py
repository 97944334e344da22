"""Zeek conn.log: TSV with ``#separator``/``#fields``/``#types`` headers, or JSON lines.

TSV: header directives may appear anywhere (rotated or concatenated logs carry one header
section each); data between them is read with Arrow's CSV reader using the current
separator, ``-`` (``#unset_field``) as null and ``(empty)`` as empty. Headerless TSV with
the default conn.log columns (21, or 22 with ``ip_proto``) is accepted. JSON: ``id.orig_h``
keys, the ``id_orig_h`` variant, or a nested ``id`` object.

Mapping: ``ts`` → start, ``ts + duration`` → end; bytes are IP-level
(``orig_ip_bytes + resp_ip_bytes``) when logged, else payload (``orig_bytes + resp_bytes``);
packets ``orig_pkts + resp_pkts``; ICMP type/code (logged as ports) go to ``meta`` and
ports become 0. Action from ``conn_state`` (see :data:`STATE_ACTIONS`), falling back to
``history``; TCP flags are the union of the flags named in ``history``.
"""

from __future__ import annotations

import io
import re
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from pipeline.core.columns import ACTION_ACCEPT, ACTION_REJECT, ACTION_UNKNOWN
from pipeline.sources.base import ParseResult
from pipeline.sources.columnar import (
    Locator,
    Path,
    Prepared,
    TextLines,
    bump,
    chunk,
    coalesce,
    count_lines,
    epoch_seconds,
    finish_csv,
    first_char,
    json_object,
    leading_line,
    map_distinct,
    merge,
    num,
    reject_all,
    text_lines,
    text_or_none,
)
from pipeline.sources.jsonlines import JsonLinesParser

DEFAULT_FIELDS = [
    "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
    "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp",
    "missed_bytes", "history", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes",
    "tunnel_parents",
]
DEFAULT_LAYOUTS = {len(DEFAULT_FIELDS): DEFAULT_FIELDS, len(DEFAULT_FIELDS) + 1: [
    *DEFAULT_FIELDS, "ip_proto"]}
USED = (
    "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
    "duration", "orig_bytes", "resp_bytes", "conn_state", "history", "orig_pkts",
    "orig_ip_bytes", "resp_pkts", "resp_ip_bytes", "ip_proto", "_system_name", "_node_name",
)
_NUMERIC_TYPES = {"time": pa.float64(), "interval": pa.float64(), "count": pa.int64(),
                  "port": pa.int64(), "int": pa.int64(), "double": pa.float64()}
TRANSPORTS = {"tcp": 6, "udp": 17, "icmp": 1}

# conn_state → action; None means "depends" (see _actions)
STATE_ACTIONS: dict[str, int | None] = {
    "SF": ACTION_ACCEPT, "S1": ACTION_ACCEPT, "S2": ACTION_ACCEPT, "S3": ACTION_ACCEPT,
    "RSTO": ACTION_ACCEPT,  # established, then the originator aborted
    "RSTR": ACTION_ACCEPT,  # established, then the responder aborted
    "REJ": ACTION_REJECT,  # SYN answered by RST
    "RSTOS0": ACTION_REJECT,  # SYN then originator RST, no SYN-ACK seen
    "S0": None,  # no reply: reject for TCP, unknown for UDP/ICMP (one-way traffic is normal)
    "SH": None,  # SYN then FIN, no SYN-ACK: reject for TCP
    "OTH": None,  # midstream: accept when both sides sent packets
    "RSTRH": ACTION_UNKNOWN, "SHR": ACTION_UNKNOWN,
}
_HISTORY_FLAGS = {"s": 0x02, "h": 0x12, "a": 0x10, "f": 0x01, "r": 0x04}
_DIRECTIVE_LINE = re.compile(rb"\n#")  # literal prefix: the regex engine skips to newlines
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def _j(name: str) -> tuple[Path, ...]:
    if name.startswith("id."):
        return ((name,), (name.replace(".", "_"),), ("id", name[3:]))
    return ((name,),)


class _ZeekJson(JsonLinesParser):
    """JSON-lines reader producing raw Zeek columns (the TSV path produces the same)."""

    format = "zeek"
    fields: ClassVar[dict[str, tuple[Path, ...]]] = {name: _j(name) for name in USED}

    def __init__(self, owner: ZeekParser) -> None:
        super().__init__()
        self.owner = owner

    def prepare(self, cols: dict[str, pa.Array | None], n: int) -> Prepared:
        return self.owner.conn_columns({k: v for k, v in cols.items() if v is not None}, n)


class ZeekParser:
    """Zeek conn.log (TSV with headers, or JSON lines); header state persists across blocks."""

    format: str = "zeek"
    whole_document: bool = False

    def __init__(self, fields: str | list[str] | None = None) -> None:
        """``fields``: column names for headerless TSV (e.g. ``zeek-cut`` output)."""
        self.counters: dict[str, int] = {}
        self.separator = "\t"
        self.unset = "-"
        self.empty = "(empty)"
        self.path: str | None = None
        self.fields: list[str] | None = None
        self.types: list[str] | None = None
        if fields:
            self.fields = fields.split() if isinstance(fields, str) else list(fields)
        self._json = _ZeekJson(self)

    # ------------------------------------------------------------ block handling

    def parse(self, block: bytes, source: str, first_line: int) -> ParseResult:
        if self.fields is None and first_char(block) == b"{":
            return self._parse_json(block, source, first_line)
        results: list[ParseResult] = []
        pos = 0
        line = first_line
        starts = ([0] if block[:1] == b"#" else []) + [
            m.start() + 1 for m in _DIRECTIVE_LINE.finditer(block)]
        for start in starts:
            end = block.find(b"\n", start)
            end = len(block) if end == -1 else end
            if start > pos:
                results.append(self._segment(block[pos:start], source, line))
            line += block.count(b"\n", pos, start)  # now the directive's own line
            self._directive(block[start:end].decode("utf-8", "replace").removesuffix("\r"))
            results.append(ParseResult(skipped={"header": 1}))
            pos = end + 1
            line += 1
        if pos < len(block):
            results.append(self._segment(block[pos:], source, line))
        return merge(results)

    def _parse_json(self, block: bytes, source: str, first_line: int) -> ParseResult:
        res = self._json.parse(block, source, first_line)
        self.counters.update(self._json.counters)
        return res

    def _directive(self, text: str) -> None:
        bump(self.counters, "header_lines", 1)
        if text.startswith("#separator"):
            value = text[len("#separator"):].strip()
            self.separator = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value) or "\t"
            return
        key, _, value = text.partition(self.separator)
        if key == "#fields":
            self.fields = value.split(self.separator)
            self.types = None
            bump(self.counters, "header_sections", 1)
        elif key == "#types":
            self.types = value.split(self.separator)
        elif key == "#unset_field":
            self.unset = value
        elif key == "#empty_field":
            self.empty = value
        elif key == "#path":
            self.path = value

    def _segment(self, seg: bytes, source: str, first_line: int) -> ParseResult:
        if not first_char(seg):
            return ParseResult()
        if self.fields is None and first_char(seg) == b"{":
            return self._parse_json(seg, source, first_line)
        lines = text_lines(seg, source, first_line)
        return lines.add_rejects(self._records(lines))

    def _records(self, lines: TextLines) -> ParseResult:
        seg, locate = lines.data, lines.locate
        if not first_char(seg):
            return ParseResult()
        fields = self.fields
        if fields is None:
            first = leading_line(seg)
            fields = DEFAULT_LAYOUTS.get(first.count(self.separator.encode()) + 1)
            if fields is None:
                rows = lines.rows
                return ParseResult(rejects=reject_all(
                    rows, locate, "not_zeek",
                    "no #fields header and not the default conn.log columns: is this a Zeek "
                    "conn.log?"), records_in=rows)
        if self.path not in (None, "conn") or not {"ts", "id.orig_h", "id.resp_h"} <= set(fields):
            rows = lines.rows
            return ParseResult(rejects=reject_all(
                rows, locate, "not_zeek_conn",
                f"Zeek log '{self.path}' has no ts/id.orig_h/id.resp_h: only conn.log is read"),
                records_in=rows)
        if len(self.separator) != 1:
            rows = lines.rows
            return ParseResult(rejects=reject_all(
                rows, locate, "not_zeek", "multi-character #separator is not supported"),
                records_in=rows)
        return self._read_tsv(seg, fields, locate)

    def _read_tsv(self, seg: bytes, fields: list[str], locate: Locator) -> ParseResult:
        types = self.types if self.types and len(self.types) == len(fields) else []
        typed = {f: _NUMERIC_TYPES.get(t, pa.string()) for f, t in zip(fields, types, strict=False)}
        # typed read first; masked or malformed numbers make Arrow refuse: then all text
        for attempt in (typed, {}, None):
            if attempt is None:  # undecodable bytes: decode leniently
                seg = seg.decode("utf-8", "replace").encode()
                attempt = {}
            invalid: list[str] = []
            try:
                table = self._read_csv(seg, fields, attempt, invalid)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            return self._finish_table(table, seg, invalid, locate)
        rows = count_lines(seg)
        return ParseResult(rejects=reject_all(rows, locate, "not_zeek", "unreadable TSV block"),
                           records_in=rows)

    def _read_csv(self, seg: bytes, fields: list[str], types: dict[str, pa.DataType],
                  invalid: list[str]) -> pa.Table:
        def on_invalid(row: Any) -> str:
            invalid.append(row.text)
            return "skip"

        return pcsv.read_csv(
            io.BytesIO(seg),
            read_options=pcsv.ReadOptions(column_names=fields),
            parse_options=pcsv.ParseOptions(
                delimiter=self.separator, quote_char=False, double_quote=False,
                escape_char=False, invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(
                column_types={f: types.get(f, pa.string()) for f in fields},
                include_columns=[f for f in dict.fromkeys(fields) if f in USED],
                null_values=[self.unset, self.empty], strings_can_be_null=True),
        )

    def _finish_table(self, table: pa.Table, seg: bytes, invalid: list[str],
                      locate: Locator) -> ParseResult:
        cols = {name: chunk(table.column(name)) for name in table.column_names}
        detail = f"expected {len(self.fields or [])} fields separated by {self.separator!r}"
        return finish_csv(self.conn_columns(cols, table.num_rows), seg, invalid, locate,
                          "field_count", detail)

    # ------------------------------------------------------------ column mapping

    def conn_columns(self, cols: dict[str, pa.Array], n: int) -> Prepared:
        """Canonical columns from Zeek conn.log columns (TSV or JSON)."""
        get = cols.get
        start = epoch_seconds(get("ts"), n)
        duration = num(get("duration"), n, 0.0)
        end = np.where(np.isnan(start), np.nan, start + duration)
        out: dict[str, Any] = {
            "start": get("ts") if get("ts") is not None else pa.nulls(n, pa.string()),
            "end": pa.array(end, pa.float64(), mask=np.isnan(end)),
            "src_ip": get("id.orig_h"),
            "dst_ip": get("id.resp_h"),
        }
        orig_h = text_or_none(get("id.orig_h"))
        v6 = np.asarray(pc.match_substring(orig_h, ":").fill_null(False), dtype=bool) \
            if orig_h is not None else np.zeros(n, dtype=bool)
        transport = text_or_none(get("proto"))
        by_name = np.full(n, np.nan)
        if transport is not None:
            by_name = num(map_distinct(transport, lambda v: TRANSPORTS.get(str(v).lower()),
                                       pa.float64()), n)
        by_name = np.where((by_name == 1) & v6, 58, by_name)
        ip_proto = num(get("ip_proto"), n)
        proto = np.where(np.isnan(ip_proto), by_name, ip_proto)
        out["proto"] = pa.array(proto, pa.float64(), mask=np.isnan(proto))
        icmp = np.isin(proto, (1.0, 58.0))
        for key, side in (("src_port", "id.orig_p"), ("dst_port", "id.resp_p")):
            port = get(side)
            if port is not None:
                out[key] = _zero_where(icmp, port)

        bad: list[tuple[np.ndarray, str, str]] = []
        ip_bytes = _sum(get("orig_ip_bytes"), get("resp_ip_bytes"), n, bad)
        payload = _sum(get("orig_bytes"), get("resp_bytes"), n, bad)
        total = np.where(np.isnan(ip_bytes), payload, ip_bytes)
        out["bytes"] = pa.array(total, pa.float64(), mask=np.isnan(total))
        packets = _sum(get("orig_pkts"), get("resp_pkts"), n, bad)
        out["packets"] = pa.array(packets, pa.float64(), mask=np.isnan(packets))

        state = text_or_none(get("conn_state"))
        history = text_or_none(get("history"))
        tcp = proto == 6
        out["action"] = _actions(state, history, tcp, num(get("orig_pkts"), n, 0.0),
                                 num(get("resp_pkts"), n, 0.0), n)
        if history is not None:
            flags = num(map_distinct(history, _history_flags, pa.float64()), n, 0.0)
            out["tcp_flags"] = pa.array(np.where(tcp, flags, -1).astype(np.int64))
        exporter = coalesce([text_or_none(get("_system_name")), text_or_none(get("_node_name"))])
        if exporter is not None:
            out["exporter"] = exporter
        out["meta"] = json_object(
            [
                ("uid", text_or_none(get("uid"))),
                ("conn_state", state),
                ("history", history),
                ("service", text_or_none(get("service"))),
                ("icmp_type", _only(icmp, get("id.orig_p"))),
                ("icmp_code", _only(icmp, get("id.resp_p"))),
            ],
            n,
        )
        out = {k: v for k, v in out.items() if v is not None}
        return Prepared(out, n, bad=bad)


def _zero_where(mask: np.ndarray, arr: pa.Array) -> pa.Array:
    """``arr`` with 0 in the masked rows (ICMP ports carry type/code)."""
    if not mask.any():
        return arr
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        return pc.if_else(pa.array(mask), pa.scalar(0, arr.type), arr)
    if pa.types.is_string(arr.type):
        return pc.if_else(pa.array(mask), "0", arr)
    return arr


def _sum(a: pa.Array | None, b: pa.Array | None, n: int,
         bad: list[tuple[np.ndarray, str, str]]) -> np.ndarray:
    """a + b per row (a missing side counts 0); NaN when both are missing."""
    if a is None and b is None:
        return np.full(n, np.nan)
    parts = []
    for arr in (a, b):
        if arr is None:
            parts.append(np.full(n, np.nan))
            continue
        vals = num(arr, n)
        valid = np.asarray(pc.is_valid(arr), dtype=bool)
        bad.append((valid & np.isnan(vals), "bad_type", "a byte or packet count is not a number"))
        parts.append(vals)
    x, y = parts
    both_missing = np.isnan(x) & np.isnan(y)
    return np.where(both_missing, np.nan, np.nan_to_num(x) + np.nan_to_num(y))


def _actions(state: pa.Array | None, history: pa.Array | None, tcp: np.ndarray,
             orig_pkts: np.ndarray, resp_pkts: np.ndarray, n: int) -> pa.Array:
    action = np.full(n, ACTION_UNKNOWN, dtype=np.int8)
    if history is not None:
        by_history = np.asarray(map_distinct(history, _history_action, pa.int8()).fill_null(0))
        action = np.where(tcp, by_history, action).astype(np.int8)
    if state is None:
        return pa.array(action)
    codes = np.asarray(map_distinct(state, lambda v: _state_code(v), pa.int8()).fill_null(-1))
    fixed = codes >= 0
    action = np.where(fixed, codes, action)
    s = state
    is_ = {k: np.asarray(pc.equal(s, k).fill_null(False), dtype=bool) for k in ("S0", "SH", "OTH")}
    no_reply = resp_pkts <= 0
    action = np.where((is_["S0"] | is_["SH"]) & tcp & no_reply, ACTION_REJECT, action)
    action = np.where((is_["S0"] | is_["SH"]) & ~(tcp & no_reply), ACTION_UNKNOWN, action)
    both = (orig_pkts > 0) & (resp_pkts > 0)
    action = np.where(is_["OTH"], np.where(both, ACTION_ACCEPT, ACTION_UNKNOWN), action)
    return pa.array(action.astype(np.int8))


def _state_code(state: str | None) -> int:
    if state is None:
        return -1
    code = STATE_ACTIONS.get(state, ACTION_UNKNOWN)
    return -1 if code is None else code


def _history_action(history: str | None) -> int:
    """TCP action from history alone: SYN-ACK seen → accept; SYN answered by RST → reject."""
    if not history:
        return ACTION_UNKNOWN
    if "h" in history:
        return ACTION_ACCEPT
    if "S" in history and "r" in history:
        return ACTION_REJECT
    return ACTION_UNKNOWN


def _history_flags(history: str | None) -> int:
    bits = 0
    for ch in history or "":
        bits |= _HISTORY_FLAGS.get(ch.lower(), 0)
    return bits


def _only(mask: np.ndarray, arr: pa.Array | None) -> pa.Array | None:
    if arr is None or not mask.any():
        return None
    vals = num(arr, len(arr))
    keep = mask & (np.abs(np.nan_to_num(vals, nan=np.inf)) < 2**62)
    return pa.array(np.where(keep, vals, 0).astype(np.int64), pa.int64(), mask=~keep)


__all__ = ["DEFAULT_FIELDS", "STATE_ACTIONS", "ZeekParser"]
