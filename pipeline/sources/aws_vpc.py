"""AWS VPC and Transit Gateway flow log records (space-separated text).

The field layout comes from, in order: a header line in the data (S3 delivery writes one
per file, so concatenated files switch layout at each header), the ``fields`` option
(``"${version} ${vpc-id} ..."``, plain names, or comma-separated), or the record's field
count when it matches a documented default layout (v2 default, all fields up to v3/v4/v5/
v7/v8 in documented order, Transit Gateway default). Lines prefixed with a CloudWatch
export timestamp are accepted. ``NODATA``/``SKIPDATA`` records are not flows: counted in
``counters`` (``nodata``/``skipdata``), neither emitted nor rejected.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from pipeline.errors import ConfigError
from pipeline.sources.base import ParseResult
from pipeline.sources.columnar import (
    Locator,
    Prepared,
    TextLines,
    bump,
    chunk,
    coalesce,
    count_lines,
    finish_csv,
    first_char,
    is_text,
    json_object,
    leading_line,
    merge,
    num,
    reject_all,
    text_lines,
)

V2 = [
    "version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport",
    "protocol", "packets", "bytes", "start", "end", "action", "log-status",
]
V3 = ["vpc-id", "subnet-id", "instance-id", "tcp-flags", "type", "pkt-srcaddr", "pkt-dstaddr"]
V4 = ["region", "az-id", "sublocation-type", "sublocation-id"]
V5 = ["pkt-src-aws-service", "pkt-dst-aws-service", "flow-direction", "traffic-path"]
V7 = [
    "ecs-cluster-arn", "ecs-cluster-name", "ecs-container-instance-arn",
    "ecs-container-instance-id", "ecs-container-id", "ecs-second-container-id",
    "ecs-service-name", "ecs-task-definition-arn", "ecs-task-arn", "ecs-task-id",
]
V8 = ["reject-reason"]
TGW = [
    "version", "resource-type", "account-id", "tgw-id", "tgw-attachment-id",
    "tgw-src-vpc-account-id", "tgw-dst-vpc-account-id", "tgw-src-vpc-id", "tgw-dst-vpc-id",
    "tgw-src-subnet-id", "tgw-dst-subnet-id", "tgw-src-eni", "tgw-dst-eni", "tgw-src-az-id",
    "tgw-dst-az-id", "tgw-pair-attachment-id", "srcaddr", "dstaddr", "srcport", "dstport",
    "protocol", "packets", "bytes", "start", "end", "log-status", "type",
    "packets-lost-no-route", "packets-lost-blackhole", "packets-lost-mtu-exceeded",
    "packets-lost-ttl-expired", "tcp-flags", "region", "flow-direction", "pkt-src-aws-service",
    "pkt-dst-aws-service",
]
_VPC_LAYOUTS = [V2, V2 + V3, V2 + V3 + V4, V2 + V3 + V4 + V5, V2 + V3 + V4 + V5 + V7,
                V2 + V3 + V4 + V5 + V7 + V8]
DEFAULT_LAYOUTS: dict[int, list[str]] = {len(f): f for f in [*_VPC_LAYOUTS, TGW]}
KNOWN_FIELDS = frozenset(V2 + V3 + V4 + V5 + V7 + V8 + TGW)
INT_FIELDS = ("version", "srcport", "dstport", "protocol", "packets", "bytes", "start", "end",
              "tcp-flags", "traffic-path")
CW_PREFIX = "cloudwatch-timestamp"
# extras kept in meta (AWS name → meta key); pkt-* only when they differ from srcaddr/dstaddr
META_FIELDS = {
    "account-id": "account_id", "vpc-id": "vpc_id", "subnet-id": "subnet_id",
    "instance-id": "instance_id", "action": "action", "tcp-flags": "tcp_flags",
    "flow-direction": "flow_direction", "traffic-path": "traffic_path", "type": "type",
    "pkt-src-aws-service": "pkt_src_aws_service", "pkt-dst-aws-service": "pkt_dst_aws_service",
    "reject-reason": "reject_reason", "resource-type": "resource_type", "tgw-id": "tgw_id",
    "tgw-attachment-id": "tgw_attachment_id", "tgw-src-vpc-id": "tgw_src_vpc_id",
    "tgw-dst-vpc-id": "tgw_dst_vpc_id", "ecs-cluster-name": "ecs_cluster_name",
    "ecs-service-name": "ecs_service_name",
}
_FIELD_TOKEN = re.compile(r"^\$?\{?([a-z][a-z0-9-]*)\}?$")
_LETTER_LINE = re.compile(rb"\n[a-z]")  # literal prefix: the regex engine skips to newlines
_CW_TIMESTAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\S+ ")


def parse_fields(spec: str | Sequence[str]) -> list[str]:
    """Field names from ``"${a} ${b}"``, ``"a b"``, ``"a,b"`` or a list; ConfigError if odd."""
    tokens = spec.replace(",", " ").split() if isinstance(spec, str) else list(spec)
    names = []
    for tok in tokens:
        m = _FIELD_TOKEN.match(tok.strip())
        if not m:
            raise ConfigError(f"aws-vpc fields: {tok!r} is not a flow log field name; "
                              "use names like 'srcaddr' or '${srcaddr}'")
        names.append(m.group(1))
    missing = [f for f in ("srcaddr", "dstaddr", "start") if f not in names]
    if missing:
        raise ConfigError(f"aws-vpc fields must include {', '.join(missing)}")
    return names


class AwsVpcParser:
    """AWS VPC / Transit Gateway flow logs; a header line's layout persists across blocks."""

    format: str = "aws-vpc"
    whole_document: bool = False

    def __init__(self, fields: str | Sequence[str] | None = None,
                 pkt_addresses: bool = False) -> None:
        """``fields``: custom format; ``pkt_addresses``: prefer pkt-srcaddr/pkt-dstaddr."""
        self.counters: dict[str, int] = {}
        self.layout: list[str] | None = parse_fields(fields) if fields else None
        self.pkt_addresses = pkt_addresses

    def parse(self, block: bytes, source: str, first_line: int) -> ParseResult:
        results = []
        pos = 0
        line = first_line
        for start, end, names in _header_lines(block):
            if start > pos:
                results.append(self._segment(block[pos:start], source, line))
            line += block.count(b"\n", pos, start) + 1
            self.layout = names
            bump(self.counters, "header_lines", 1)
            results.append(ParseResult(skipped={"header": 1}))
            pos = end + 1
        if pos < len(block):
            results.append(self._segment(block[pos:], source, line))
        return merge(results)

    def _segment(self, seg: bytes, source: str, first_line: int) -> ParseResult:
        if not first_char(seg):
            return ParseResult()
        lines = text_lines(seg, source, first_line)
        return lines.add_rejects(self._records(lines))

    def _records(self, lines: TextLines) -> ParseResult:
        seg, locate = lines.data, lines.locate
        if not first_char(seg):
            return ParseResult()
        first = leading_line(seg)
        count = len(first.split(b" "))
        layout = self.layout
        if layout is not None and count == len(layout) + 1 and _CW_TIMESTAMP.match(first):
            layout = [CW_PREFIX, *layout]
        if layout is None:
            layout = DEFAULT_LAYOUTS.get(count)
            if layout is None and _CW_TIMESTAMP.match(first):
                base = DEFAULT_LAYOUTS.get(count - 1)
                layout = [CW_PREFIX, *base] if base else None
        if layout is None:
            rows = lines.rows
            sizes = ", ".join(str(k) for k in sorted(DEFAULT_LAYOUTS))
            return ParseResult(rejects=reject_all(
                rows, locate, "not_aws_vpc",
                f"{count} space-separated fields match no default layout ({sizes}); give the "
                "custom format with a header line or --fields"), records_in=rows)
        return self._read(seg, layout, locate)

    def _read(self, seg: bytes, layout: list[str], locate: Locator) -> ParseResult:
        typed = {f: pa.int64() for f in INT_FIELDS if f in layout}
        for attempt in (typed, {}, None):
            if attempt is None:
                seg = seg.decode("utf-8", "replace").encode()
                attempt = {}
            invalid: list[str] = []
            try:
                table = _read_csv(seg, layout, attempt, invalid)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            return self._finish(table, seg, layout, invalid, locate)
        rows = count_lines(seg)
        return ParseResult(rejects=reject_all(rows, locate, "not_aws_vpc", "unreadable block"),
                           records_in=rows)

    def _finish(self, table: pa.Table, seg: bytes, layout: list[str], invalid: list[str],
                locate: Locator) -> ParseResult:
        cols = {name: chunk(table.column(name)) for name in table.column_names}
        return finish_csv(self._prepare(cols, table.num_rows), seg, invalid, locate,
                          "not_aws_vpc",
                          f"expected {len(layout)} space-separated fields like the first record")

    def _prepare(self, cols: dict[str, pa.Array], n: int) -> Prepared:
        get = cols.get
        status = get("log-status")
        skips: list[tuple[np.ndarray, str]] = []
        if status is not None:
            for word in ("NODATA", "SKIPDATA"):
                hit = np.asarray(pc.equal(status, word).fill_null(False), dtype=bool)
                bump(self.counters, word.lower(), int(hit.sum()))
                skips.append((hit, word.lower()))
        else:  # no log-status column: an all-dash address pair is a NODATA record
            empty = np.asarray(pc.and_(pc.is_null(_col(get("srcaddr"), n)),
                                       pc.is_null(_col(get("dstaddr"), n))), dtype=bool)
            bump(self.counters, "nodata", int(empty.sum()))
            skips.append((empty, "nodata"))
        src, dst = get("srcaddr"), get("dstaddr")
        if self.pkt_addresses:
            src = coalesce([get("pkt-srcaddr"), src])
            dst = coalesce([get("pkt-dstaddr"), dst])
        out: dict[str, Any] = {
            "start": get("start"), "end": get("end"), "src_ip": src, "dst_ip": dst,
            "src_port": get("srcport"), "dst_port": get("dstport"), "proto": get("protocol"),
            "bytes": get("bytes"), "packets": get("packets"), "action": get("action"),
            "tcp_flags": get("tcp-flags"),
            "exporter": coalesce([get("interface-id"), get("tgw-attachment-id"),
                                  get("instance-id")]),
        }
        meta = [(key, _as_int(get(name), n) if name in INT_FIELDS else get(name))
                for name, key in META_FIELDS.items() if get(name) is not None]
        for pkt, addr, key in (("pkt-srcaddr", "srcaddr", "pkt_srcaddr"),
                               ("pkt-dstaddr", "dstaddr", "pkt_dstaddr")):
            if get(pkt) is not None and get(addr) is not None:
                same = pc.equal(get(pkt), get(addr)).fill_null(False)
                meta.append((key, pc.if_else(same, pa.scalar(None, pa.string()), get(pkt))))
        out["meta"] = json_object(meta, n)
        return Prepared({k: v for k, v in out.items() if v is not None}, n, skips=skips)


def _header_lines(block: bytes) -> Iterator[tuple[int, int, list[str]]]:
    """(start, end, field names) of each header line: only known-looking field names."""
    starts = ([0] if block[:1].islower() else []) + [
        m.start() + 1 for m in _LETTER_LINE.finditer(block)]
    for start in starts:
        end = block.find(b"\n", start)
        end = len(block) if end == -1 else end
        text = block[start:end].removesuffix(b"\r")
        if b"\r" in text:
            continue  # not a header: a data line (rejected for its bare carriage return)
        tokens = text.decode("ascii", "replace").split()
        if not tokens or tokens[0] not in KNOWN_FIELDS:
            continue
        names = [m.group(1) for m in map(_FIELD_TOKEN.match, tokens) if m]
        if len(names) == len(tokens):
            yield start, end, names


def _read_csv(seg: bytes, layout: list[str], types: dict[str, pa.DataType],
              invalid: list[str]) -> pa.Table:
    def on_invalid(row: Any) -> str:
        invalid.append(row.text)
        return "skip"

    names = [f if f not in layout[:i] else f"{f}#{i}" for i, f in enumerate(layout)]
    return pcsv.read_csv(
        io.BytesIO(seg),
        read_options=pcsv.ReadOptions(column_names=names),
        parse_options=pcsv.ParseOptions(delimiter=" ", quote_char=False, double_quote=False,
                                        escape_char=False, invalid_row_handler=on_invalid),
        convert_options=pcsv.ConvertOptions(
            column_types={f: types.get(f, pa.string()) for f in names},
            include_columns=[f for f in names if f in KNOWN_FIELDS],
            null_values=["-"], strings_can_be_null=True),
    )


def _as_int(arr: pa.Array, n: int) -> pa.Array:
    """An integer field for ``meta``: a number whether the block was read typed or as text
    (another record's bad value makes the whole block text); unreadable values are left out."""
    if not is_text(arr.type):
        return arr
    vals = num(arr, n)
    ok = np.isfinite(vals) & (np.floor(vals) == vals) & (np.abs(vals) < 2**62)
    return pa.array(np.where(ok, vals, 0).astype(np.int64), pa.int64(), mask=~ok)


def _col(arr: pa.Array | None, n: int) -> pa.Array:
    return arr if arr is not None else pa.nulls(n, pa.string())


__all__ = ["DEFAULT_LAYOUTS", "KNOWN_FIELDS", "AwsVpcParser", "parse_fields"]
