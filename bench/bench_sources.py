"""Parser throughput per flow format vs the floor, on ~100k generated records each. Not a test.

Each input is synthesised by repeating a test fixture with varied addresses and ports (a few
thousand distinct hosts), written to a temporary file and read with ``parse_file``. The floor
is measured in the same run on the same bytes: ``orjson.loads`` per line for JSON formats,
``pyarrow.csv.read_csv`` (and plain ``split``) for space/tab separated formats, and
``orjson.loads`` of the document plus a split per tuple for Azure. Ratio = parser / floor.

    .venv/bin/python bench/bench_sources.py [--records N] [--only FORMAT ...]
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow.csv as pcsv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.sources import get_parser, parse_file  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "sources"


def _lines(rel: str) -> list[bytes]:
    data = (FIX / rel).read_bytes()
    if rel.endswith(".gz"):
        data = gzip.decompress(data)
    return [ln for ln in data.split(b"\n") if ln.strip() and not ln.startswith(b"#")]


def _host(k: int) -> str:
    return f"10.{(k >> 8) % 16}.{k % 256}.{(k * 7) % 250 + 1}"


def _json_lines(rel: str, vary: Callable[[dict[str, Any], int], None], n: int) -> bytes:
    base = [orjson.loads(ln) for ln in _lines(rel)]
    out = []
    for k in range(n):
        obj = orjson.loads(orjson.dumps(base[k % len(base)]))
        vary(obj, k)
        out.append(orjson.dumps(obj))
    return b"\n".join(out) + b"\n"


def _hubble(o: dict[str, Any], k: int) -> None:
    o["flow"]["IP"]["source"] = _host(k % 3000)
    for l4 in o["flow"]["l4"].values():
        if isinstance(l4, dict) and "source_port" in l4:
            l4["source_port"] = 1024 + k % 60000


def _goflow2(o: dict[str, Any], k: int) -> None:
    o["src_addr"] = _host(k % 3000)
    o["src_port"] = 1024 + k % 60000


def _goflow_camel(o: dict[str, Any], k: int) -> None:
    o["SrcAddr"] = _host(k % 3000)
    o["SrcPort"] = 1024 + k % 60000


def _gcp(o: dict[str, Any], k: int) -> None:
    o["jsonPayload"]["connection"]["src_ip"] = _host(k % 3000)
    o["jsonPayload"]["connection"]["src_port"] = 1024 + k % 60000


def _suricata(o: dict[str, Any], k: int) -> None:
    o["src_ip"] = _host(k % 3000)
    if "src_port" in o:
        o["src_port"] = 1024 + k % 60000


def _zeek_json(o: dict[str, Any], k: int) -> None:
    key = "id.orig_h" if "id.orig_h" in o else "id_orig_h"
    o[key] = _host(k % 3000)
    o[key.replace("_h", "_p")] = 1024 + k % 60000
    o["ts"] = 1700000000.0 + k * 0.01  # one type per column (the fixture mixes ISO text)


def aws(n: int) -> bytes:
    rows = [ln.split(b" ") for ln in _lines("aws/v2-default.log") if ln.endswith(b" OK")]
    out = []
    for k in range(n):
        t = list(rows[k % len(rows)])
        if b":" not in t[3]:
            t[3] = _host(k % 3000).encode()
        t[5] = str(1024 + k % 60000).encode()
        out.append(b" ".join(t))
    return b"\n".join(out) + b"\n"


def zeek_tsv(n: int) -> bytes:
    text = (FIX / "zeek/scripts.base.protocols.ssh.basic.conn.log").read_bytes()
    header = b"\n".join(ln for ln in text.split(b"\n") if ln.startswith(b"#") and
                        not ln.startswith(b"#close"))
    rows = [ln.split(b"\t") for ln in _lines("zeek/scripts.base.protocols.ssh.basic.conn.log")]
    out = [header]
    for k in range(n):
        t = list(rows[k % len(rows)])
        t[0] = f"{1700000000 + k * 0.01:.6f}".encode()
        t[2] = _host(k % 3000).encode()
        t[3] = str(1024 + k % 60000).encode()
        out.append(b"\t".join(t))
    return b"\n".join(out) + b"\n"


def azure(rel: str, n: int) -> bytes:
    doc = orjson.loads((FIX / rel).read_bytes())
    rec = doc["records"][0]
    vnet = "flowRecords" in rec
    groups = rec["flowRecords"]["flows"][0]["flowGroups"] if vnet else \
        rec["properties"]["flows"][0]["flows"]
    template = [t.split(",") for t in groups[0]["flowTuples"]]
    per_record = 500
    records = []
    for r in range(n // per_record):
        tuples = []
        for j in range(per_record):
            k = r * per_record + j
            t = list(template[k % len(template)])
            t[1] = _host(k % 3000)
            t[3] = str(1024 + k % 60000)
            tuples.append(",".join(t))
        copy = orjson.loads(orjson.dumps(rec))
        target = copy["flowRecords"]["flows"][0]["flowGroups"] if vnet else \
            copy["properties"]["flows"][0]["flows"]
        target[0]["flowTuples"] = tuples
        records.append(copy)
    return orjson.dumps({"records": records})


def floor_json_lines(data: bytes) -> float:
    t0 = time.perf_counter()
    for line in data.split(b"\n"):
        if line:
            orjson.loads(line)
    return time.perf_counter() - t0


def floor_csv(sep: str) -> Callable[[bytes], float]:
    def run(data: bytes) -> float:
        body = b"\n".join(ln for ln in data.split(b"\n") if ln and not ln.startswith(b"#"))
        t0 = time.perf_counter()
        pcsv.read_csv(io.BytesIO(body),
                      read_options=pcsv.ReadOptions(autogenerate_column_names=True),
                      parse_options=pcsv.ParseOptions(delimiter=sep, quote_char=False))
        return time.perf_counter() - t0
    return run


def floor_split(sep: bytes) -> Callable[[bytes], float]:
    def run(data: bytes) -> float:
        t0 = time.perf_counter()
        for line in data.split(b"\n"):
            if line and not line.startswith(b"#"):
                line.split(sep)
        return time.perf_counter() - t0
    return run


def floor_azure(data: bytes) -> float:
    t0 = time.perf_counter()
    for rec in orjson.loads(data)["records"]:
        holder = rec.get("flowRecords", {}).get("flows") or rec["properties"]["flows"]
        for flow in holder:
            for g in flow.get("flowGroups") or flow.get("flows"):
                for t in g["flowTuples"]:
                    t.split(",")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    n = args.records
    text_floors = {
        " ": [("pyarrow.csv", floor_csv(" ")), ("str.split", floor_split(b" "))],
        "\t": [("pyarrow.csv", floor_csv("\t")), ("str.split", floor_split(b"\t"))],
    }
    per_line = [("orjson/line", floor_json_lines)]
    Floors = list[tuple[str, Callable[[bytes], float]]]
    cases: list[tuple[str, str, Callable[[], bytes], Floors]] = [
        ("aws-vpc", "aws-vpc", lambda: aws(n), text_floors[" "]),
        ("zeek", "zeek", lambda: zeek_tsv(n), text_floors["\t"]),
        ("zeek (json)", "zeek", lambda: _json_lines("zeek/conn.json", _zeek_json, n), per_line),
        ("hubble", "hubble",
         lambda: _json_lines("hubble/basic-sample-400-tcp-flows.json.gz", _hubble, n), per_line),
        ("goflow2", "goflow2", lambda: _json_lines("goflow/goflow2-snake.json", _goflow2, n),
         per_line),
        ("goflow (CamelCase)", "goflow2",
         lambda: _json_lines("goflow/ocp-ipfix-flowlogs-short.json", _goflow_camel, n), per_line),
        ("gcp-vpc", "gcp-vpc", lambda: _json_lines("gcp/vpc-flows.jsonl", _gcp, n), per_line),
        ("suricata", "suricata", lambda: _json_lines("suricata/eve.json", _suricata, n),
         per_line),
        ("azure-nsg", "azure-nsg", lambda: azure("azure/nsg-v2.json", n),
         [("orjson+split", floor_azure)]),
        ("azure-vnet", "azure-vnet", lambda: azure("azure/vnet-v4.json", n),
         [("orjson+split", floor_azure)]),
    ]
    print(f"{'format':<20} {'records':>8} {'MB':>6} {'parser rec/s':>13}  "
          f"{'floor':<13}{'floor rec/s':>12} {'ratio':>6}")
    with tempfile.TemporaryDirectory(prefix="segflow-bench-sources-") as tmp:
        for label, fmt, make, floors in cases:
            if args.only and fmt not in args.only:
                continue
            data = make()
            path = Path(tmp) / "input"
            path.write_bytes(data)
            best = float("inf")
            for _ in range(2):  # best of two: the machine is shared
                parser = get_parser(fmt)
                t0 = time.perf_counter()
                flows = rejects = records = 0
                for res in parse_file(path, parser):
                    flows += res.flows.num_rows
                    rejects += len(res.rejects)
                    records += res.records_in
                best = min(best, time.perf_counter() - t0)
            counters = getattr(parser, "counters", {})
            records += sum(counters.get(k, 0) for k in
                           ("skipped_event_type", "skipped_non_flow", "nodata", "skipdata"))
            if rejects:
                print(f"  ({label}: {rejects} rejects)")
            for i, (floor_name, floor) in enumerate(floors):
                t_floor = min(floor(data) for _ in range(2))
                head = (f"{label:<20} {records:>8} {len(data) / 1e6:>6.1f} {records / best:>13,.0f}"
                        if i == 0 else " " * 50)
                print(f"{head}  {floor_name:<13}{records / t_floor:>12,.0f} "
                      f"{t_floor / best:>6.2f}")

if __name__ == "__main__":
    main()
