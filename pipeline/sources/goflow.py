"""goflow2 JSON (NetFlow v5/v9, IPFIX, sFlow) and the older CamelCase goflow JSON.

goflow2 v2 writes snake_case keys with nanosecond times (``time_flow_start_ns``); goflow2 v1
and flowlogs-pipeline write CamelCase keys (``TimeFlowStart`` seconds, ``TimeFlowStartMs``,
``SrcAddr``...). Both are read by the same parser, even mixed in one block. Addresses may be
text or base64 bytes (protobuf JSON). Bytes and packets are multiplied by ``sampling_rate``
when it is > 0 (the rate is kept in ``meta``). Flows without flow times fall back to the
time received. flowlogs-pipeline's Kubernetes enrichment (``SrcK8S_Namespace``,
``SrcK8S_OwnerName``) becomes the source identity; pod names go to ``meta``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.normalize import canonical_ip
from pipeline.sources.columnar import (
    Path,
    Prepared,
    epoch_seconds,
    is_text,
    json_object,
    map_distinct,
    num,
    text_or_none,
)
from pipeline.sources.jsonlines import JsonLinesParser


def _keys(*names: str) -> tuple[Path, ...]:
    return tuple((n,) for n in names)


# time fields: name -> seconds per unit
_TIMES = {
    "start_ns": 1e-9, "start_ms": 1e-3, "start_s": 1.0,
    "end_ns": 1e-9, "end_ms": 1e-3, "end_s": 1.0,
    "recv_ns": 1e-9, "recv_s": 1.0,
}


class GoflowParser(JsonLinesParser):
    """goflow2 (snake_case) and goflow/flowlogs-pipeline (CamelCase) JSON lines."""

    format = "goflow2"
    mixed_keys = ("proto", "Proto", "type", "Type", "etype", "Etype")
    fields: ClassVar[dict[str, tuple[Path, ...]]] = {
        "start_ns": _keys("time_flow_start_ns", "TimeFlowStartNs"),
        "start_ms": _keys("time_flow_start_ms", "TimeFlowStartMs"),
        "start_s": _keys("time_flow_start", "TimeFlowStart"),
        "end_ns": _keys("time_flow_end_ns", "TimeFlowEndNs"),
        "end_ms": _keys("time_flow_end_ms", "TimeFlowEndMs"),
        "end_s": _keys("time_flow_end", "TimeFlowEnd"),
        "recv_ns": _keys("time_received_ns", "TimeReceivedNs"),
        "recv_s": _keys("time_received", "TimeReceived"),
        "src_ip": _keys("src_addr", "SrcAddr"),
        "dst_ip": _keys("dst_addr", "DstAddr"),
        "src_port": _keys("src_port", "SrcPort"),
        "dst_port": _keys("dst_port", "DstPort"),
        "proto": _keys("proto", "Proto"),
        "bytes": _keys("bytes", "Bytes"),
        "packets": _keys("packets", "Packets"),
        "sampling_rate": _keys("sampling_rate", "SamplingRate"),
        "sampler": _keys("sampler_address", "SamplerAddress", "AgentIP"),
        "tcp_flags": _keys("tcp_flags", "TCPFlags", "Flags"),
        "type": _keys("type", "Type"),
        "icmp_type": _keys("icmp_type", "IcmpType"),
        "icmp_code": _keys("icmp_code", "IcmpCode"),
        "src_namespace": _keys("SrcK8S_Namespace"),
        "dst_namespace": _keys("DstK8S_Namespace"),
        "src_owner": _keys("SrcK8S_OwnerName"),
        "dst_owner": _keys("DstK8S_OwnerName"),
        "src_pod": _keys("SrcPod", "SrcK8S_Name"),
        "dst_pod": _keys("DstPod", "DstK8S_Name"),
        "src_kind": _keys("SrcWorkloadKind", "SrcK8S_OwnerType"),
        "dst_kind": _keys("DstWorkloadKind", "DstK8S_OwnerType"),
    }

    def prepare(self, cols: dict[str, pa.Array | None], n: int) -> Prepared:
        secs = {name: _seconds(cols[name], n, scale) for name, scale in _TIMES.items()}
        received = _first_finite(secs["recv_ns"], secs["recv_s"])
        start = _first_finite(secs["start_ns"], secs["start_ms"], secs["start_s"], received)
        end = _first_finite(secs["end_ns"], secs["end_ms"], secs["end_s"], start)
        no_time = np.isnan(start)
        out: dict[str, pa.Array] = {
            "start": pa.array(start, pa.float64(), mask=no_time),
            "end": pa.array(end, pa.float64(), mask=np.isnan(end)),
        }
        for side in ("src_ip", "dst_ip"):
            ip = text_or_none(cols[side])
            if ip is not None:
                out[side] = _addresses(ip)
        for name in ("src_port", "dst_port", "proto", "tcp_flags"):
            if cols[name] is not None:
                out[name] = cols[name]

        bad: list[tuple[np.ndarray, str, str]] = []
        rate = num(cols["sampling_rate"], n, 0.0)
        sampled = rate > 0
        for name in ("bytes", "packets"):
            raw = cols[name]
            if raw is None:
                continue
            if not sampled.any():
                out[name] = raw
                continue
            vals = num(raw, n)
            bad.append((np.asarray(pc.is_valid(raw), dtype=bool) & np.isnan(vals), "bad_type",
                        f"'{name}' is not an integer"))
            scaled = np.where(sampled, vals * rate, vals)
            out[name] = pa.array(scaled, pa.float64(), mask=np.isnan(scaled))

        sampler = text_or_none(cols["sampler"])
        if sampler is not None:
            out["exporter"] = _addresses(sampler)
        for side in ("src", "dst"):
            ns = text_or_none(cols[f"{side}_namespace"])
            owner = text_or_none(cols[f"{side}_owner"])
            if ns is not None:
                out[f"{side}_namespace"] = ns
            if owner is not None:
                out[f"{side}_app"] = owner
        proto_num = num(cols["proto"], n, -1.0)
        icmp = np.isin(proto_num, (1.0, 58.0)) | _icmp_names(cols["proto"], n)
        out["meta"] = json_object(
            [
                ("type", text_or_none(cols["type"])),
                ("sampling_rate", pa.array(rate, pa.float64(), mask=~sampled)
                 if sampled.any() else None),
                ("icmp_type", _only(icmp, cols["icmp_type"])),
                ("icmp_code", _only(icmp, cols["icmp_code"])),
                ("src_pod", text_or_none(cols["src_pod"])),
                ("dst_pod", text_or_none(cols["dst_pod"])),
                ("src_kind", text_or_none(cols["src_kind"])),
                ("dst_kind", text_or_none(cols["dst_kind"])),
            ],
            n,
        )
        no_addr = ~_valid(out.get("src_ip"), n) & ~_valid(out.get("dst_ip"), n)
        bad.insert(0, (no_addr, "not_goflow2", "no src_addr/SrcAddr: is this goflow2 JSON output?"))
        return Prepared(out, n, bad=bad)


def address(text: str | None) -> str | None:
    """Canonical IP from text or from base64 of 4/16 address bytes (protobuf JSON)."""
    if text is None:
        return None
    ip = canonical_ip(text)
    if ip is not None:
        return ip
    if len(text) in (8, 24) and text.endswith("="):
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return text
        if len(raw) in (4, 16):
            return canonical_ip(str(ipaddress.ip_address(raw)))
    return text


def _addresses(arr: pa.Array) -> pa.Array:
    """Decode base64 address bytes where present (text addresses contain '.' or ':')."""
    plain = pc.or_(pc.match_substring(arr, "."), pc.match_substring(arr, ":"))
    if pc.all(plain.fill_null(True)).as_py():
        return arr
    return map_distinct(arr, address, pa.string())


def _seconds(arr: pa.Array | None, n: int, scale: float) -> np.ndarray:
    """Epoch seconds (NaN when absent or 0) from a numeric field, or from RFC 3339 text."""
    vals = num(arr, n)
    scaled = np.where(vals > 0, vals * scale, np.nan)
    if arr is not None and is_text(arr.type):
        texts = np.isnan(vals) & np.asarray(pc.is_valid(arr), dtype=bool)
        if texts.any():
            return np.where(texts, epoch_seconds(arr, n), scaled)
    return scaled


def _valid(arr: pa.Array | None, n: int) -> np.ndarray:
    if arr is None:
        return np.zeros(n, dtype=bool)
    return np.asarray(pc.is_valid(arr), dtype=bool)


def _first_finite(*arrays: np.ndarray) -> np.ndarray:
    out = arrays[0].copy()
    for a in arrays[1:]:
        out = np.where(np.isnan(out), a, out)
    return out


def _icmp_names(arr: pa.Array | None, n: int) -> np.ndarray:
    if arr is None or not is_text(arr.type):
        return np.zeros(n, dtype=bool)
    return np.asarray(
        pc.is_in(pc.utf8_lower(arr), pa.array(["icmp", "icmpv6", "ipv6-icmp", "icmp6"]))
        .fill_null(False),
        dtype=bool,
    )


def _only(mask: np.ndarray, arr: pa.Array | None) -> pa.Array | None:
    if arr is None or not mask.any() or not (
        pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or is_text(arr.type)
    ):
        return None
    return pc.if_else(pa.array(mask), arr, pa.scalar(None, arr.type))


__all__ = ["GoflowParser", "address"]
