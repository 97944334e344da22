"""Cilium Hubble flows: ``hubble observe -o json`` and Hubble exporter lines.

Each line is ``{"flow": {...}, "node_name": ..., "time": ...}`` (older CLIs print the bare
flow object; both are read). A Hubble flow is one observed packet or L7 event, so packets
is 1 and bytes 0. The endpoints' own identity (namespace, labels, workload) fills
``src_*``/``dst_*``; ``verdict``, ``is_reply``, ``Type``, L7 protocol, traffic direction and
pod names go to ``meta``. Non-flow responses (``node_status``, ``lost_events``) are counted
as ``skipped_non_flow``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.columns import ACTION_ACCEPT, ACTION_REJECT, ACTION_UNKNOWN
from pipeline.sources.columnar import (
    Path,
    Prepared,
    as_bool,
    bump,
    coalesce,
    first_item,
    json_object,
    map_distinct,
    struct_child,
    text_or_none,
)
from pipeline.sources.jsonlines import JsonLinesParser, present
from pipeline.sources.k8s_names import workload_from_pod

TCP_FLAG_BITS = {
    "FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10,
    "URG": 0x20, "ECE": 0x40, "CWR": 0x80, "NS": 0x100,
}
VERDICT_ACTIONS = {
    "FORWARDED": ACTION_ACCEPT,
    "REDIRECTED": ACTION_ACCEPT,  # to a proxy (L7 policy): still allowed
    "TRANSLATED": ACTION_ACCEPT,
    "TRACED": ACTION_ACCEPT,
    "AUDIT": ACTION_ACCEPT,  # policy audit mode: would be dropped, was forwarded
    "DROPPED": ACTION_REJECT,
    "ERROR": ACTION_REJECT,
}
APP_LABELS = ("app", "k8s-app", "app.kubernetes.io/name")
# k8s label keys that describe the namespace, cluster or pod plumbing, not the workload
NOISE_PREFIXES = ("io.kubernetes.", "io.cilium.", "io.x-k8s.")


def _both(*path: str) -> tuple[Path, ...]:
    return (("flow", *path), path)


def _side(side: str) -> dict[str, tuple[Path, ...]]:
    return {
        f"{side}_namespace": _both(side, "namespace"),
        f"{side}_pod": _both(side, "pod_name"),
        f"{side}_labels": _both(side, "labels"),
        f"{side}_workloads": _both(side, "workloads"),
    }


def _l4(proto: str) -> dict[str, tuple[Path, ...]]:
    low = proto.lower()
    return {
        f"has_{low}": _both("l4", proto),
        f"{low}_sport": _both("l4", proto, "source_port"),
        f"{low}_dport": _both("l4", proto, "destination_port"),
    }


class HubbleParser(JsonLinesParser):
    """``hubble observe -o json`` / Hubble exporter JSON lines."""

    format = "hubble"
    fields: ClassVar[dict[str, tuple[Path, ...]]] = {
        "time": (("flow", "time"), ("time",)),
        "src_ip": _both("IP", "source"),
        "dst_ip": _both("IP", "destination"),
        **_l4("TCP"),
        **_l4("UDP"),
        **_l4("SCTP"),
        "has_icmpv4": _both("l4", "ICMPv4"),
        "has_icmpv6": _both("l4", "ICMPv6"),
        "icmp_type": (*_both("l4", "ICMPv4", "type"), *_both("l4", "ICMPv6", "type")),
        "icmp_code": (*_both("l4", "ICMPv4", "code"), *_both("l4", "ICMPv6", "code")),
        **{f"flag_{k}": _both("l4", "TCP", "flags", k) for k in TCP_FLAG_BITS},
        "verdict": _both("verdict"),
        "drop_reason": _both("drop_reason_desc"),
        "type": _both("Type"),
        "l7_type": _both("l7", "type"),
        "has_http": _both("l7", "http"),
        "has_dns": _both("l7", "dns"),
        "has_kafka": _both("l7", "kafka"),
        "is_reply": _both("is_reply"),
        "reply": _both("reply"),
        "traffic_direction": _both("traffic_direction"),
        "node": (("flow", "node_name"), ("node_name",)),
        **_side("source"),
        **_side("destination"),
        "has_flow": (("flow",), ("IP",), ("verdict",)),
        "has_other": (("node_status",), ("lost_events",), ("agent_event",), ("debug_event",)),
    }

    def prepare(self, cols: dict[str, pa.Array | None], n: int) -> Prepared:
        is_flow = present(cols["has_flow"], n)
        other = present(cols["has_other"], n) & ~is_flow
        bump(self.counters, "skipped_non_flow", int(other.sum()))
        out: dict[str, pa.Array] = {}
        out["start"] = cols["time"] if cols["time"] is not None else pa.nulls(n, pa.string())
        out["src_ip"] = _text(cols["src_ip"], n)
        out["dst_ip"] = _text(cols["dst_ip"], n)

        proto = np.full(n, -1, dtype=np.int64)
        sport: pa.Array | None = None
        dport: pa.Array | None = None
        for name, number in (("tcp", 6), ("udp", 17), ("sctp", 132)):
            has = present(cols[f"has_{name}"], n)
            proto = np.where(has & (proto < 0), number, proto)
            sport = coalesce([sport, _if(has, cols[f"{name}_sport"])])
            dport = coalesce([dport, _if(has, cols[f"{name}_dport"])])
        icmp4 = present(cols["has_icmpv4"], n)
        icmp6 = present(cols["has_icmpv6"], n)
        proto = np.where(icmp4 & (proto < 0), 1, proto)
        proto = np.where(icmp6 & (proto < 0), 58, proto)
        out["proto"] = pa.array(proto, pa.int64(), mask=proto < 0)
        if sport is not None:
            out["src_port"] = sport
        if dport is not None:
            out["dst_port"] = dport
        out["packets"] = pa.array(np.ones(n, dtype=np.int64))

        flags = np.zeros(n, dtype=np.int64)
        for k, bit in TCP_FLAG_BITS.items():
            v = as_bool(cols[f"flag_{k}"])
            if v is not None:
                flags |= np.where(np.asarray(v.fill_null(False), dtype=bool), bit, 0)
        has_tcp = present(cols["has_tcp"], n)
        out["tcp_flags"] = pa.array(np.where(has_tcp, flags, -1))

        verdict = _text(cols["verdict"], n)
        out["action"] = map_distinct(
            verdict, lambda v: VERDICT_ACTIONS.get(str(v).upper(), ACTION_UNKNOWN), pa.int8()
        )
        out["exporter"] = _text(cols["node"], n)
        for side, short in (("source", "src"), ("destination", "dst")):
            app, labels = _identity(cols, side, n)
            out[f"{short}_app"] = app
            out[f"{short}_labels"] = labels
            out[f"{short}_namespace"] = _text(cols[f"{side}_namespace"], n)

        reply = coalesce([_bool(cols["is_reply"]), _bool(cols["reply"])])
        l7 = pa.nulls(n, pa.string())
        for name in ("http", "dns", "kafka"):
            l7 = pc.if_else(present(cols[f"has_{name}"], n), name, l7)
        icmp = icmp4 | icmp6
        out["meta"] = json_object(
            [
                ("verdict", verdict),
                ("is_reply", reply),
                ("type", text_or_none(cols["type"])),
                ("l7", l7),
                ("l7_type", text_or_none(cols["l7_type"])),
                ("traffic_direction", text_or_none(cols["traffic_direction"])),
                ("drop_reason", text_or_none(cols["drop_reason"])),
                ("src_pod", text_or_none(cols["source_pod"])),
                ("dst_pod", text_or_none(cols["destination_pod"])),
                ("icmp_type", _if(icmp, cols["icmp_type"])),
                ("icmp_code", _if(icmp, cols["icmp_code"])),
            ],
            n,
        )
        return Prepared(
            out,
            n,
            skips=[(other, "non_flow_event")],
            bad=[(~is_flow & ~other, "not_hubble",
                  "no 'flow' object: is this `hubble observe -o json` output?")],
        )


def _text(arr: pa.Array | None, n: int) -> pa.Array:
    t = text_or_none(arr)
    return t if t is not None else pa.nulls(n, pa.string())


def _bool(arr: pa.Array | None) -> pa.Array | None:
    return as_bool(arr)


def _if(mask: np.ndarray, arr: pa.Array | None) -> pa.Array | None:
    if arr is None or pa.types.is_struct(arr.type) or pa.types.is_list(arr.type):
        return None
    return pc.if_else(pa.array(mask), arr, pa.scalar(None, arr.type))


def _identity(cols: dict[str, pa.Array | None], side: str, n: int) -> tuple[pa.Array, pa.Array]:
    """(app, labels JSON) for one endpoint side."""
    raw = cols[f"{side}_labels"]
    if raw is not None and pa.types.is_list(raw.type) and pa.types.is_string(raw.type.value_type):
        if raw.values.null_count:  # Arrow's binary_join misreads lists holding nulls
            raw = pa.ListArray.from_arrays(raw.offsets, raw.values.fill_null(""),
                                           mask=pc.is_null(raw))
        joined = pc.binary_join(raw, "\x1f")
        parsed = map_distinct(joined, _labels_info, pa.struct([("app", pa.string()),
                                                               ("labels", pa.string())]))
        label_app = pc.struct_field(parsed, "app")
        labels = pc.struct_field(parsed, "labels")
    else:
        label_app = pa.nulls(n, pa.string())
        labels = pa.nulls(n, pa.string())
    workload = struct_child(first_item(cols[f"{side}_workloads"], n), "name")
    pod = text_or_none(cols[f"{side}_pod"])
    pod_app = map_distinct(pod, workload_from_pod, pa.string()) if pod is not None else None
    app = coalesce([text_or_none(workload), label_app, pod_app])
    return (app if app is not None else pa.nulls(n, pa.string())), labels


def _labels_info(joined: str | None) -> dict[str, Any] | None:
    if joined is None:
        return None
    labels = cilium_labels(joined.split("\x1f") if joined else [])
    app = next((labels[k] for k in APP_LABELS if labels.get(k)), None)
    return {"app": app, "labels": orjson.dumps(labels).decode() if labels else None}


def cilium_labels(items: list[str]) -> dict[str, str]:
    """Cilium ``source:key=value`` labels as a dict: ``k8s:`` prefix dropped, plumbing dropped.

    >>> cilium_labels(["k8s:app=reviews", "k8s:io.kubernetes.pod.namespace=x", "reserved:host"])
    {'app': 'reviews', 'reserved:host': ''}
    """
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key.startswith("k8s:"):
            key = key[4:]
            if key.startswith(NOISE_PREFIXES):
                continue
        if key:
            out[key] = value
    return out


__all__ = ["HubbleParser", "cilium_labels"]
