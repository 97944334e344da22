"""The one definition of a normalised flow batch.

Every source parser produces a :data:`FLOW_SCHEMA` Arrow table plus a list of
:class:`Reject`; every later stage (enrich, score, aggregate, storage) reads these
column names. Times are event time in float epoch seconds (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# action codes (int8)
ACTION_UNKNOWN = 0
ACTION_ACCEPT = 1
ACTION_REJECT = 2
ACTION_NAMES = {ACTION_UNKNOWN: "unknown", ACTION_ACCEPT: "accept", ACTION_REJECT: "reject"}

NO_TCP_FLAGS = -1  # tcp_flags value when the source does not report flags

FLOW_SCHEMA = pa.schema(
    [
        pa.field("start", pa.float64(), nullable=False),  # epoch seconds, UTC
        pa.field("end", pa.float64(), nullable=False),  # epoch seconds, UTC, >= start
        pa.field("src_ip", pa.string(), nullable=False),  # canonical text (ipaddress compressed)
        pa.field("dst_ip", pa.string(), nullable=False),
        pa.field("src_port", pa.int32(), nullable=False),  # 0..65535 (0 when none, e.g. ICMP)
        pa.field("dst_port", pa.int32(), nullable=False),
        pa.field("proto", pa.int16(), nullable=False),  # IANA protocol number 0..255
        pa.field("bytes", pa.int64(), nullable=False),  # >= 0, already scaled by sampling rate
        pa.field("packets", pa.int64(), nullable=False),  # >= 0
        pa.field("action", pa.int8(), nullable=False),  # ACTION_* code
        pa.field("tcp_flags", pa.int16(), nullable=False),  # OR of flags; NO_TCP_FLAGS if unknown
        pa.field("exporter", pa.string()),  # who observed it (host, node, VPC, collector)
        # identity the source already knows (Hubble, GCP GKE details, ...): wins over inventory
        pa.field("src_app", pa.string()),
        pa.field("src_namespace", pa.string()),
        pa.field("src_labels", pa.string()),  # JSON object text
        pa.field("dst_app", pa.string()),
        pa.field("dst_namespace", pa.string()),
        pa.field("dst_labels", pa.string()),
        pa.field("meta", pa.string()),  # JSON object of format extras (vpc_id, verdict, ...)
    ]
)
FLOW_COLUMNS: tuple[str, ...] = tuple(FLOW_SCHEMA.names)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(f.name for f in FLOW_SCHEMA if not f.nullable)


@dataclass(frozen=True, slots=True)
class Reject:
    """One input record that could not be used, and why (goes to the dead-letter sink)."""

    reason: str  # short machine-friendly code, e.g. "bad_json", "bad_ip", "port_range"
    detail: str  # one human sentence
    raw: bytes  # the record as received (truncated to 4 KiB by writers)
    source: str = ""  # file:line or topic/partition@offset


DEAD_LETTER_REASONS: tuple[str, ...] = (
    # any format
    "bad_json", "bad_record", "missing_field", "bad_type", "bad_time", "time_order",
    "time_range", "time_relative", "bad_ip", "bad_proto", "port_range", "negative_counter",
    "bad_tuple", "bad_line", "field_count",
    # a block that is not the declared format
    "not_aws_vpc", "not_azure_flow_log", "not_gcp_vpc", "not_goflow2", "not_hubble",
    "not_suricata", "not_zeek", "not_zeek_conn",
    # Kafka messages
    "empty_message", "too_large", "bad_inventory",
)
"""Every :attr:`Reject.reason` a parser or the ingest stage can give (a test checks the code
against it): metrics start each at 0, so a first dead letter is a rate, not a new series."""

SKIP_REASONS: tuple[str, ...] = ("header", "nodata", "skipdata", "non_flow_event")
"""Why a non-blank input line is neither a flow nor a reject (:attr:`ParseResult.skipped`):
a header or comment line (AWS field header, Zeek ``#`` lines), an AWS ``NODATA``/``SKIPDATA``
record, an event that is not a flow (Suricata non-flow event types, Hubble agent events)."""


def empty_flows() -> pa.Table:
    """An empty, correctly typed flow table."""
    return FLOW_SCHEMA.empty_table()


__all__ = [
    "ACTION_ACCEPT",
    "ACTION_NAMES",
    "ACTION_REJECT",
    "ACTION_UNKNOWN",
    "DEAD_LETTER_REASONS",
    "FLOW_COLUMNS",
    "FLOW_SCHEMA",
    "NO_TCP_FLAGS",
    "REQUIRED_COLUMNS",
    "SKIP_REASONS",
    "Reject",
    "empty_flows",
]
