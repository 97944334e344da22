from __future__ import annotations

import orjson
import pytest

from pipeline.core.columns import ACTION_ACCEPT, ACTION_REJECT, FLOW_SCHEMA, NO_TCP_FLAGS
from pipeline.core.normalize import canonical_ip, parse_time_text
from pipeline.sources.canonical import CanonicalParser

GOOD = {"start": 1767571200.5, "end": 1767571201, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2",
        "src_port": 40000, "dst_port": 5432, "proto": 6, "bytes": 100, "packets": 2}


def parse(*records: object):
    data = b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records)
    return CanonicalParser().parse(data, "f.jsonl", 1)


def test_good_record_is_typed_to_the_flow_schema():
    r = parse(GOOD)
    assert r.flows.schema == FLOW_SCHEMA
    row = r.flows.to_pylist()[0]
    assert row["start"] == 1767571200.5 and row["dst_port"] == 5432 and row["proto"] == 6
    assert row["action"] == 0 and row["tcp_flags"] == NO_TCP_FLAGS
    assert r.records_in == 1 and not r.rejects


def test_mixed_types_take_the_slow_path_without_losing_records():
    other = {**GOOD, "start": "2026-01-05T00:00:01.250Z", "end": "2026-01-05T00:00:02Z",
             "proto": "udp", "action": "REJECT",
             "src_ip": "::ffff:10.0.0.9", "dst_ip": "FD00::1"}
    r = parse(GOOD, other)
    rows = r.flows.to_pylist()
    assert len(rows) == 2
    assert rows[1]["start"] == pytest.approx(1767571201.25)
    assert rows[1]["proto"] == 17 and rows[1]["action"] == ACTION_REJECT
    assert rows[1]["src_ip"] == "10.0.0.9" and rows[1]["dst_ip"] == "fd00::1"
    assert rows[0]["action"] == 0


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (b"not json", "bad_json"),
        (b"[1, 2]", "bad_json"),
        ({**GOOD, "src_ip": "10.0.0.300"}, "bad_ip"),
        ({**GOOD, "dst_port": 70000}, "port_range"),
        ({**GOOD, "proto": "carrier-pigeon"}, "bad_proto"),
        ({**GOOD, "proto": 300}, "bad_proto"),
        ({**GOOD, "bytes": -5}, "negative_counter"),
        ({**GOOD, "start": 1767571200500}, "time_range"),
        ({**GOOD, "start": "yesterday"}, "bad_time"),
        ({**GOOD, "end": 1767571100}, "time_order"),
        ({k: v for k, v in GOOD.items() if k != "dst_ip"}, "missing_field"),
        ({**GOOD, "packets": "many"}, "bad_type"),
    ],
)
def test_bad_records_become_rejects_with_a_reason(record, reason):
    r = parse(GOOD, record, GOOD)
    assert r.flows.num_rows == 2
    assert [x.reason for x in r.rejects] == [reason]
    assert r.rejects[0].source == "f.jsonl:2"
    assert r.rejects[0].raw  # the raw record is kept for the dead-letter sink


def test_source_identity_objects_are_flattened():
    rec = {**GOOD, "src_workload": {"app": "web", "namespace": "shop", "labels": "tier=web;a=b"}}
    row = parse(rec).flows.to_pylist()[0]
    assert (row["src_app"], row["src_namespace"]) == ("web", "shop")
    assert orjson.loads(row["src_labels"]) == {"tier": "web", "a": "b"}


def test_action_words():
    r = parse({**GOOD, "action": "ACCEPT"}, {**GOOD, "action": "reject"})
    assert [x["action"] for x in r.flows.to_pylist()] == [ACTION_ACCEPT, ACTION_REJECT]


def test_helpers():
    assert canonical_ip(" 2001:DB8:0:0::1 ") == "2001:db8::1"
    assert canonical_ip("nope") is None
    assert parse_time_text("2026-01-05T00:00:00.123456789Z") == pytest.approx(1767571200.123456)
    assert parse_time_text("2026-01-05T01:00:00+01:00") == 1767571200.0
    assert parse_time_text("garbage") is None


def test_capture_relative_times_get_their_own_reason_and_an_offset_fixes_them():
    from pipeline.core.normalize import time_offset

    rel = {**GOOD, "start": 19.98, "end": 20.1}
    r = parse(rel)
    assert [x.reason for x in r.rejects] == ["time_relative"]
    assert "--time-offset" in r.rejects[0].detail
    with time_offset(1_488_980_824):  # the capture's '#open' time
        shifted = parse(rel)
    assert not shifted.rejects
    row = shifted.flows.to_pylist()[0]
    assert (row["start"], row["end"]) == pytest.approx((1_488_980_843.98, 1_488_980_844.1))
    assert not parse(rel).flows.num_rows  # the offset ends with the block
