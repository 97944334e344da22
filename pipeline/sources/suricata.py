"""Suricata EVE JSON: ``event_type: flow`` records; other event types are counted and skipped.

Lines are pre-filtered on their bytes (``"event_type":"flow"``) so alert/dns/http/tls events
are never decoded. Bytes and packets are both directions summed (``flow.bytes_toserver`` +
``flow.bytes_toclient``). Action: ``flow.action`` when Suricata reports one (IPS), else TCP
SYN-ACK from the server → accept, RST without SYN-ACK → reject, other protocols with
packets back → accept, otherwise unknown. ``tcp.tcp_flags`` (hex) → tcp_flags.
"""

from __future__ import annotations

import re
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.columns import ACTION_ACCEPT, ACTION_REJECT, ACTION_UNKNOWN
from pipeline.core.normalize import ACTION_WORDS
from pipeline.sources.base import ParseResult
from pipeline.sources.columnar import (
    Path,
    Prepared,
    as_bool,
    bump,
    coalesce,
    is_text,
    json_object,
    line_locator,
    map_distinct,
    merge,
    num,
    text_or_none,
)
from pipeline.sources.jsonlines import JsonLinesParser, text_eq

_FLOW_LITERAL = b'"event_type":"flow"'  # how Suricata writes it; the regex covers other spacing
_FLOW_EVENT = re.compile(rb'"event_type"\s*:\s*"flow"')
_ANY_EVENT = re.compile(rb'"event_type"\s*:')
SYN, RST, ACK = 0x02, 0x04, 0x10
BAD_HEX = -2  # marks tcp flag text that is not hexadecimal


def _k(*path: str) -> tuple[Path, ...]:
    return (path,)


class SuricataParser(JsonLinesParser):
    """Suricata EVE JSON lines (flow events)."""

    format = "suricata"
    fields: ClassVar[dict[str, tuple[Path, ...]]] = {
        "event_type": _k("event_type"),
        "timestamp": _k("timestamp"),
        "start": _k("flow", "start"),
        "end": _k("flow", "end"),
        "src_ip": _k("src_ip"),
        "dst_ip": _k("dest_ip"),
        "src_port": _k("src_port"),
        "dst_port": _k("dest_port"),
        "proto": _k("proto"),
        "bytes_ts": _k("flow", "bytes_toserver"),
        "bytes_tc": _k("flow", "bytes_toclient"),
        "pkts_ts": _k("flow", "pkts_toserver"),
        "pkts_tc": _k("flow", "pkts_toclient"),
        "state": _k("flow", "state"),
        "reason": _k("flow", "reason"),
        "alerted": _k("flow", "alerted"),
        "flow_action": _k("flow", "action"),
        "tcp_flags": _k("tcp", "tcp_flags"),
        "tcp_flags_tc": _k("tcp", "tcp_flags_tc"),
        "app_proto": _k("app_proto"),
        "host": _k("host"),
        "in_iface": _k("in_iface"),
        "icmp_type": _k("icmp_type"),
        "icmp_code": _k("icmp_code"),
        "community_id": _k("community_id"),
    }

    def parse(self, block: bytes, source: str, first_line: int) -> ParseResult:
        lines = block.split(b"\n")
        if block.count(_FLOW_LITERAL) == block.count(b'"event_type"') == \
                sum(1 for ln in lines if ln.strip()):
            return self.parse_json(block, line_locator(block, source, first_line))  # all flows
        kept: list[bytes] = []
        numbers: list[int] = []
        skipped = 0
        for off, line in enumerate(lines):
            if _FLOW_LITERAL in line or (
                line.strip() and (_FLOW_EVENT.search(line) or not _ANY_EVENT.search(line))
            ):
                kept.append(line)  # flow events, and lines to explain as rejects
                numbers.append(first_line + off)
            elif line.strip():
                skipped += 1
        bump(self.counters, "skipped_event_type", skipped)
        before = ParseResult(skipped={"non_flow_event": skipped} if skipped else {})
        if not kept:
            return before
        sub = b"\n".join(kept)
        return merge([before, self.parse_json(sub, line_locator(sub, source, first_line,
                                                                  numbers))])

    def prepare(self, cols: dict[str, pa.Array | None], n: int) -> Prepared:
        event = text_or_none(cols["event_type"])
        is_flow = text_eq(event, n, "flow")
        other = np.asarray(pc.is_valid(event), dtype=bool) & ~is_flow if event is not None \
            else np.zeros(n, dtype=bool)
        bump(self.counters, "skipped_event_type", int(other.sum()))
        out: dict[str, pa.Array] = {}
        for name in ("src_ip", "dst_ip", "src_port", "dst_port", "proto"):
            if cols[name] is not None:
                out[name] = cols[name]
        start = coalesce([cols["start"], cols["timestamp"]])
        if start is not None:
            out["start"] = start
        end = coalesce([cols["end"], start])
        if end is not None:
            out["end"] = end
        bad: list[tuple[np.ndarray, str, str]] = [
            (~is_flow & ~other, "not_suricata", "no event_type: is this Suricata EVE JSON?")
        ]
        for name, a, b in (("bytes", "bytes_ts", "bytes_tc"), ("packets", "pkts_ts", "pkts_tc")):
            x, y = num(cols[a], n, 0.0), num(cols[b], n, 0.0)
            for key in (a, b):
                raw = cols[key]
                if raw is not None:
                    odd = np.asarray(pc.is_valid(raw), dtype=bool) & np.isnan(num(raw, n))
                    bad.append((odd, "bad_type", f"'flow.{key}' is not an integer"))
            out[name] = pa.array(x + y, pa.float64())

        flags = _hex_flags(cols["tcp_flags"], n)
        if flags is not None:
            out["tcp_flags"] = flags
            if pa.types.is_integer(flags.type):
                odd = np.asarray(pc.equal(flags, BAD_HEX).fill_null(False), dtype=bool)
                bad.append((odd, "bad_type", "'tcp.tcp_flags' is not hexadecimal"))
        out["action"] = _action(cols, n)
        host = text_or_none(cols["host"])
        if host is not None:
            out["exporter"] = host
        out["meta"] = json_object(
            [
                ("state", text_or_none(cols["state"])),
                ("reason", text_or_none(cols["reason"])),
                ("alerted", _bool(cols["alerted"])),
                ("app_proto", text_or_none(cols["app_proto"])),
                ("in_iface", text_or_none(cols["in_iface"])),
                ("icmp_type", _number(cols["icmp_type"])),
                ("icmp_code", _number(cols["icmp_code"])),
                ("community_id", text_or_none(cols["community_id"])),
            ],
            n,
        )
        return Prepared(out, n, skips=[(other, "non_flow_event")], bad=bad)


def _hex_flags(arr: pa.Array | None, n: int) -> pa.Array | None:
    if arr is None:
        return None
    if not is_text(arr.type):
        return arr
    return map_distinct(arr, _hex, pa.int64())


def _hex(v: str | None) -> int | None:
    if v is None:
        return None
    try:
        return int(v, 16)
    except ValueError:
        return BAD_HEX


def _action(cols: dict[str, pa.Array | None], n: int) -> pa.Array:
    proto = text_or_none(cols["proto"])
    tcp = text_eq(proto, n, "tcp", "006", "6")
    tc = _hex_flags(cols["tcp_flags_tc"], n)
    tc_bits = np.zeros(n, dtype=np.int64)
    if tc is not None and pa.types.is_integer(tc.type):
        tc_bits = np.maximum(np.asarray(tc.fill_null(0), dtype=np.int64), 0)
    answered = (tc_bits & (SYN | ACK)) == (SYN | ACK)
    refused = ((tc_bits & RST) != 0) & ~answered
    back = num(cols["pkts_tc"], n, 0.0) > 0
    action = np.full(n, ACTION_UNKNOWN, dtype=np.int8)
    action = np.where(tcp & answered, ACTION_ACCEPT, action)
    action = np.where(tcp & refused, ACTION_REJECT, action)
    action = np.where(~tcp & back, ACTION_ACCEPT, action)
    reported = text_or_none(cols["flow_action"])
    if reported is not None:
        words = map_distinct(reported, lambda v: ACTION_WORDS.get(str(v).lower(), -1), pa.int8())
        w = np.asarray(words.fill_null(-1), dtype=np.int8)
        action = np.where(w >= 0, w, action)
    return pa.array(action.astype(np.int8))


def _bool(arr: pa.Array | None) -> pa.Array | None:
    return as_bool(arr)


def _number(arr: pa.Array | None) -> pa.Array | None:
    if arr is None or not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        return None
    return arr


__all__ = ["SuricataParser"]
