"""Google Cloud VPC flow logs: one Cloud Logging ``LogEntry`` JSON object per line.

Reads ``jsonPayload`` (or a bare payload): ``connection`` 5-tuple, ``start_time``/``end_time``,
``bytes_sent``/``packets_sent`` (int64 as text), ``reporter``, ``src_instance``/
``dest_instance`` and ``src_gke_details``/``dest_gke_details`` (pod namespace → namespace,
workload name, else pod name → app). Export with ``gcloud logging read ... --format=json``
produces one JSON array; convert it to lines first (``jq -c '.[]'``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.sources.columnar import (
    Path,
    Prepared,
    coalesce,
    json_object,
    map_distinct,
    text_or_none,
)
from pipeline.sources.jsonlines import JsonLinesParser, present, text_eq
from pipeline.sources.k8s_names import workload_from_pod


def _p(*path: str) -> tuple[Path, ...]:
    return (("jsonPayload", *path), path)


def _side(side: str, short: str) -> dict[str, tuple[Path, ...]]:
    gke = f"{side}_gke_details"
    return {
        f"{short}_vm": _p(f"{side}_instance", "vm_name"),
        f"{short}_vpc": _p(f"{side}_vpc", "vpc_name"),
        f"{short}_subnet": _p(f"{side}_vpc", "subnetwork_name"),
        f"{short}_cluster": _p(gke, "cluster", "cluster_name"),
        f"{short}_pod": _p(gke, "pod", "pod_name"),
        f"{short}_namespace": _p(gke, "pod", "pod_namespace"),
        f"{short}_workload": _p(gke, "pod", "pod_workload", "workload_name"),
    }


class GcpVpcParser(JsonLinesParser):
    """GCP VPC flow log entries (JSON lines)."""

    format = "gcp-vpc"
    fields: ClassVar[dict[str, tuple[Path, ...]]] = {
        "src_ip": _p("connection", "src_ip"),
        "dst_ip": _p("connection", "dest_ip"),
        "src_port": _p("connection", "src_port"),
        "dst_port": _p("connection", "dest_port"),
        "proto": _p("connection", "protocol"),
        "start_time": _p("start_time"),
        "end_time": _p("end_time"),
        "timestamp": (("timestamp",),),
        "bytes": _p("bytes_sent"),
        "packets": _p("packets_sent"),
        "reporter": _p("reporter"),
        "rtt_msec": _p("rtt_msec"),
        "has_connection": _p("connection"),
        "subnetwork": (("resource", "labels", "subnetwork_name"),),
        **_side("src", "src"),
        **_side("dest", "dst"),
    }

    def prepare(self, cols: dict[str, pa.Array | None], n: int) -> Prepared:
        out: dict[str, pa.Array] = {}
        for name in ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "bytes", "packets"):
            if cols[name] is not None:
                out[name] = cols[name]
        start = coalesce([cols["start_time"], cols["end_time"], cols["timestamp"]])
        if start is not None:
            out["start"] = start
        end = coalesce([cols["end_time"], start])
        if end is not None:
            out["end"] = end
        reporter = text_or_none(cols["reporter"])
        by_src = text_eq(reporter, n, "SRC")
        by_dst = text_eq(reporter, n, "DEST")
        vm = coalesce([_when(by_src, cols["src_vm"]), _when(by_dst, cols["dst_vm"])])
        exporter = coalesce([vm, text_or_none(cols["subnetwork"])])
        if exporter is not None:
            out["exporter"] = exporter
        for s in ("src", "dst"):
            ns = text_or_none(cols[f"{s}_namespace"])
            if ns is not None:
                out[f"{s}_namespace"] = ns
            pod = text_or_none(cols[f"{s}_pod"])
            app = coalesce([
                text_or_none(cols[f"{s}_workload"]),
                map_distinct(pod, workload_from_pod, pa.string()) if pod is not None else None,
            ])
            if app is not None:
                out[f"{s}_app"] = app
        meta = [("reporter", reporter), ("rtt_msec", text_or_none(cols["rtt_msec"]))]
        for s in ("src", "dst"):
            for key in ("vm", "vpc", "subnet", "cluster", "pod"):
                meta.append((f"{s}_{key}", text_or_none(cols[f"{s}_{key}"])))
        out["meta"] = json_object(meta, n)
        not_gcp = ~present(cols["has_connection"], n)
        return Prepared(out, n, bad=[(not_gcp, "not_gcp_vpc",
                                      "no jsonPayload.connection: is this a GCP VPC flow log?")])


def _when(mask: np.ndarray, arr: pa.Array | None) -> pa.Array | None:
    t = text_or_none(arr)
    if t is None:
        return None
    return pc.if_else(pa.array(mask), t, pa.scalar(None, pa.string()))


__all__ = ["GcpVpcParser"]
