"""Flow sources: one parser per input format, all producing :data:`FLOW_SCHEMA` batches.

``get_parser(name, **options)`` builds a fresh parser for one input (parsers keep header
state); ``detect_format(first_bytes)`` names the format of an input when that is
unambiguous; ``FORMATS`` lists the names for the CLI.
"""

from __future__ import annotations

import inspect
import re
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import ConfigError, InputError
from pipeline.sources.aws_vpc import DEFAULT_LAYOUTS as AWS_LAYOUTS
from pipeline.sources.aws_vpc import KNOWN_FIELDS as AWS_FIELDS
from pipeline.sources.aws_vpc import AwsVpcParser
from pipeline.sources.azure import AzureFlowLogParser
from pipeline.sources.base import BlockParser, ParseResult, parse_file
from pipeline.sources.canonical import CanonicalParser
from pipeline.sources.gcp_vpc import GcpVpcParser
from pipeline.sources.goflow import GoflowParser
from pipeline.sources.hubble import HubbleParser
from pipeline.sources.suricata import SuricataParser
from pipeline.sources.zeek import ZeekParser

ParserFactory = Callable[..., BlockParser]

PARSERS: dict[str, ParserFactory] = {
    "canonical": CanonicalParser,
    "aws-vpc": AwsVpcParser,
    "gcp-vpc": GcpVpcParser,
    "azure-nsg": partial(AzureFlowLogParser, "azure-nsg"),
    "azure-vnet": partial(AzureFlowLogParser, "azure-vnet"),
    "hubble": HubbleParser,
    "goflow2": GoflowParser,
    "zeek": ZeekParser,
    "suricata": SuricataParser,
}
ALIASES: dict[str, str] = {"goflow": "goflow2", "eve": "suricata", "cilium": "hubble"}
FORMATS: list[str] = list(PARSERS)
DETECT_BYTES = 64 << 10  # how much of an input detect_format needs at most
_CW_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\S+$")


def get_parser(name: str, **options: Any) -> BlockParser:
    """A new parser for one input; unknown names raise InputError, bad options ConfigError."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    factory = PARSERS.get(key)
    if factory is None:
        raise InputError(f"unknown flow format {name!r}; choose one of: {', '.join(FORMATS)}")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError:
        accepted = [p for p in inspect.signature(factory).parameters if p != "format"]
        raise ConfigError(
            f"format {key!r} takes {'options ' + ', '.join(accepted) if accepted else 'no options'}"
            f"; got {', '.join(sorted(options))}"
        ) from None
    return factory(**options)


def detect_format(first_bytes: bytes) -> str | None:
    """Format name for an input's first bytes (plain or gzip), or None when not unambiguous."""
    data = _gunzip_prefix(first_bytes) if first_bytes[:2] == b"\x1f\x8b" else first_bytes
    data = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not data:
        return None
    if data[:1] == b"#":
        return _detect_zeek_header(data)
    if data[:1] in (b"{", b"["):
        return _detect_json(data)
    first = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    return _detect_aws(first)


def detect_file_format(path: Path) -> str | None:
    """:func:`detect_format` over the start of a file (reads at most :data:`DETECT_BYTES`)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(DETECT_BYTES)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}; check the path") from exc
    return detect_format(head)


def _gunzip_prefix(data: bytes) -> bytes:
    try:
        return zlib.decompressobj(wbits=31).decompress(data, DETECT_BYTES)
    except zlib.error:
        return b""


def _detect_zeek_header(data: bytes) -> str | None:
    head = data[:8192]
    if b"#fields" in head:
        fields_line = head.split(b"#fields", 1)[1].split(b"\n", 1)[0]
        return "zeek" if b"id.orig_h" in fields_line and b"conn_state" in fields_line else None
    if b"#separator" in head and (b"#path\tconn" in head or b"#path conn" in head):
        return "zeek"
    return None


def _detect_json(data: bytes) -> str | None:
    head = data[:DETECT_BYTES]
    if b'"records"' in head[:200] or head[:1] == b"[":
        if b'"flowRecords"' in head or b'"FlowLogFlowEvent"' in head or b'"flowLogVersion"' in head:
            return "azure-vnet"
        if b'"NetworkSecurityGroupFlowEvent"' in head or b'"flowTuples"' in head:
            return "azure-nsg"
        return None
    line = head.split(b"\n", 1)[0]
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    keys = set(obj)
    if isinstance(obj.get("flow"), dict) and ("IP" in obj["flow"] or "verdict" in obj["flow"]):
        return "hubble"
    if {"IP", "verdict"} <= keys:
        return "hubble"
    payload = obj.get("jsonPayload")
    if isinstance(payload, dict) and "connection" in payload:
        return "gcp-vpc"
    if "event_type" in keys and ("src_ip" in keys or "flow_id" in keys):
        return "suricata"
    if keys & {"id.orig_h", "id_orig_h"} or (isinstance(obj.get("id"), dict) and "conn_state"
                                             in keys):
        return "zeek"
    if {"src_addr", "dst_addr"} <= keys or {"SrcAddr", "DstAddr"} <= keys:
        return "goflow2"
    if {"src_ip", "dst_ip", "start"} <= keys:
        return "canonical"
    return None


def _detect_aws(first: str) -> str | None:
    tokens = first.split(" ")
    if len(tokens) > 1 and _CW_TIMESTAMP.match(tokens[0]):
        tokens = tokens[1:]  # CloudWatch Logs export prefix
    if tokens and all(t in AWS_FIELDS for t in tokens) and {"srcaddr", "dstaddr"} <= set(tokens):
        return "aws-vpc"  # header line
    layout = AWS_LAYOUTS.get(len(tokens))
    if layout is None or not tokens[0].isdigit():
        return None
    row = dict(zip(layout, tokens, strict=True))
    if row.get("start", "").isdigit() and row.get("log-status") in ("OK", "NODATA", "SKIPDATA"):
        return "aws-vpc"
    return None


__all__ = [
    "ALIASES",
    "FORMATS",
    "PARSERS",
    "BlockParser",
    "ParseResult",
    "ParserFactory",
    "detect_file_format",
    "detect_format",
    "get_parser",
    "parse_file",
]
