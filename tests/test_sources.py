"""Flow source parsers on real samples (Hubble, goflow, Zeek) and documented layouts (cloud)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from pipeline.core.columns import (
    ACTION_ACCEPT,
    ACTION_REJECT,
    ACTION_UNKNOWN,
    FLOW_SCHEMA,
)
from pipeline.core.normalize import MAX_EPOCH, MIN_EPOCH
from pipeline.errors import ConfigError, InputError
from pipeline.sources import (
    FORMATS,
    PARSERS,
    BlockParser,
    ParseResult,
    detect_file_format,
    detect_format,
    get_parser,
    parse_file,
)
from pipeline.sources import base as source_base

FIX = Path(__file__).parent / "fixtures" / "sources"


def run(path: Path, fmt: str, **options: object) -> tuple[pa.Table, ParseResult, BlockParser]:
    parser = get_parser(fmt, **options)
    results = list(parse_file(path, parser))
    merged = ParseResult(
        pa.concat_tables([r.flows for r in results]) if results else FLOW_SCHEMA.empty_table(),
        [x for r in results for x in r.rejects],
        sum(r.records_in for r in results),
    )
    check(merged)
    return merged.flows, merged, parser


def run_bytes(data: bytes, fmt: str, **options: object) -> tuple[ParseResult, BlockParser]:
    parser = get_parser(fmt, **options)
    res = parser.parse(data, "t", 1)
    check(res)
    return res, parser


def check(res: ParseResult) -> None:
    t = res.flows
    assert t.schema == FLOW_SCHEMA
    assert res.records_in == t.num_rows + len(res.rejects)
    if t.num_rows:
        d = t.to_pydict()
        assert all(MIN_EPOCH <= s < MAX_EPOCH for s in d["start"])
        assert all(s <= e < MAX_EPOCH for s, e in zip(d["start"], d["end"], strict=True))
        for col in ("meta", "src_labels", "dst_labels"):
            assert all(v is None or isinstance(orjson.loads(v), dict) for v in d[col])


def meta(t: pa.Table, i: int = 0) -> dict[str, object]:
    value = t.column("meta")[i].as_py()
    return {} if value is None else json.loads(value)


# ------------------------------------------------------------------ registry


def test_registry_lists_every_format_and_builds_fresh_parsers() -> None:
    assert list(PARSERS) == FORMATS
    assert {"aws-vpc", "gcp-vpc", "azure-nsg", "azure-vnet", "hubble", "goflow2", "zeek",
            "suricata", "canonical"} <= set(FORMATS)
    for name in FORMATS:
        p1, p2 = get_parser(name), get_parser(name)
        assert p1 is not p2
        assert p1.format == name
    assert get_parser("goflow").format == "goflow2"
    assert get_parser(" Hubble ").format == "hubble"


def test_get_parser_errors_are_clear() -> None:
    with pytest.raises(InputError, match=r"unknown flow format 'netflow9'.*aws-vpc"):
        get_parser("netflow9")
    with pytest.raises(ConfigError, match="takes options fields, pkt_addresses; got colour"):
        get_parser("aws-vpc", colour="red")
    with pytest.raises(ConfigError, match="must include dstaddr"):
        get_parser("aws-vpc", fields="srcaddr start")


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("aws/v2-default.log", "aws-vpc"),
        ("aws/v5-header.log", "aws-vpc"),
        ("aws/tgw-default.log", "aws-vpc"),
        ("aws/v8-all-fields.log", "aws-vpc"),
        ("aws/cloudwatch-export.log", "aws-vpc"),
        ("gcp/vpc-flows.jsonl", "gcp-vpc"),
        ("azure/nsg-v2.json", "azure-nsg"),
        ("azure/vnet-v4.json", "azure-vnet"),
        ("hubble/basic-sample-10-flows.json", "hubble"),
        ("hubble/basic-sample-400-tcp-flows.json.gz", "hubble"),
        ("goflow/ocp-ipfix-flowlogs-short.json", "goflow2"),
        ("goflow/goflow2-snake.json", "goflow2"),
        ("zeek/core.tunnels.teredo.conn.log", "zeek"),
        ("zeek/conn.json", "zeek"),
        ("suricata/eve.json", "suricata"),
    ],
)
def test_detect_format(path: str, fmt: str) -> None:
    assert detect_file_format(FIX / path) == fmt


def test_detect_format_refuses_ambiguous_input() -> None:
    assert detect_format(b"") is None
    assert detect_format(b"hello world\n") is None
    assert detect_format(b'{"some": "json"}\n') is None
    assert detect_format(b"#fields\tts\tuid\tquery\n") is None  # a Zeek log, but not conn.log
    assert detect_format(b"1 2 3 4 5 6 7 8 9 10 11 12 13 14\n") is None
    assert detect_format(gzip.compress(b'{"src_ip":"10.0.0.1","dst_ip":"10.0.0.2","start":1}\n')) \
        == "canonical"


# ------------------------------------------------------------------ Hubble (real samples)


def test_hubble_400_tcp_sample() -> None:
    t, res, parser = run(FIX / "hubble/basic-sample-400-tcp-flows.json.gz", "hubble")
    assert t.num_rows == 400 and not res.rejects
    pairs = Counter(zip(t["src_namespace"].to_pylist(), t["dst_namespace"].to_pylist(),
                        strict=True))
    assert pairs[("bookinfo", "bookinfo")] == 273
    assert pairs[(None, "bookinfo")] == 84
    assert pairs[("bookinfo", None)] == 29
    assert set(t["proto"].to_pylist()) == {6}
    verdicts = Counter(meta(t, i)["verdict"] for i in range(t.num_rows))
    assert verdicts == {"FORWARDED": 373, "REDIRECTED": 27}
    assert set(t["action"].to_pylist()) == {ACTION_ACCEPT}
    apps = Counter(t["src_app"].to_pylist())
    assert apps["productpage"] > 0 and apps["reviews"] > 0
    first = t.slice(0, 1).to_pylist()[0]
    assert first["src_ip"] == "10.244.0.177" and first["dst_port"] == 9080
    assert first["exporter"] == "kind-control-plane"
    assert json.loads(first["dst_labels"]) == {
        "app": "reviews", "sidecar.opentelemetry.io/injected": "bookinfo.otelcol-bookinfo",
        "version": "v2"}
    assert parser.counters == {}


def test_hubble_udp_icmp_http_samples() -> None:
    udp, res, _ = run(FIX / "hubble/basic-sample-400-udp-flows.json.gz", "hubble")
    assert udp.num_rows == 400 and not res.rejects
    assert set(udp["proto"].to_pylist()) == {17}
    assert Counter(udp["dst_app"].to_pylist())["kube-dns"] > 0  # from k8s:k8s-app=kube-dns
    icmp, res, _ = run(FIX / "hubble/basic-sample-400-icmpv4-flows.json", "hubble")
    assert icmp.num_rows == 18 and not res.rejects
    assert set(icmp["proto"].to_pylist()) == {1}
    assert set(icmp["src_port"].to_pylist()) == {0} and set(icmp["tcp_flags"].to_pylist()) == {-1}
    assert meta(icmp, 0)["icmp_type"] == 8
    http, res, _ = run(FIX / "hubble/basic-sample-348-http-flows.json.gz", "hubble")
    assert http.num_rows == 348 and not res.rejects
    assert {meta(http, i)["l7"] for i in range(http.num_rows)} == {"http"}
    assert {meta(http, i)["type"] for i in range(http.num_rows)} == {"L7"}


def test_hubble_flags_replies_labels_and_reserved_identities() -> None:
    t, _, _ = run(FIX / "hubble/basic-sample-10-flows.json", "hubble")
    row = t.slice(0, 1).to_pylist()[0]
    assert row["tcp_flags"] == 0x11  # {"FIN": true, "ACK": true}
    assert row["src_app"] == "reviews" and row["src_namespace"] == "bookinfo"
    labels = json.loads(row["src_labels"])
    assert labels == {"app": "reviews", "security.istio.io/tlsMode": "istio", "version": "v1"}
    assert json.loads(row["dst_labels"]) == {"reserved:host": ""}
    assert row["dst_app"] is None and row["dst_namespace"] is None
    assert meta(t, 0)["is_reply"] is True  # from the deprecated "reply" field
    assert row["start"] == pytest.approx(1623862333.136834446)


HUBBLE_EDGE = b"\n".join([
    # dropped, with workloads and ICMPv6, wrapped
    orjson.dumps({"flow": {
        "time": "2024-01-02T03:04:05.123456789Z", "verdict": "DROPPED",
        "drop_reason_desc": "POLICY_DENIED", "IP": {"source": "fd00::a", "destination": "fd00::b"},
        "l4": {"ICMPv6": {"type": 128}},
        "source": {"namespace": "shop", "labels": ["k8s:app=web"],
                   "workloads": [{"name": "web-frontend", "kind": "Deployment"}],
                   "pod_name": "web-frontend-6d8f7c9b5d-abcde"},
        "destination": {"namespace": "db", "labels": [], "pod_name": "pg-0"},
        "Type": "L3_L4", "node_name": "node-1", "is_reply": False}}),
    # bare flow object (older CLI), TCP SYN
    orjson.dumps({"time": "2024-01-02T03:04:06Z", "verdict": "FORWARDED",
                  "IP": {"source": "10.0.0.1", "destination": "10.0.0.2"},
                  "l4": {"TCP": {"source_port": 1234, "destination_port": 80,
                                 "flags": {"SYN": True}}},
                  "source": {"namespace": "a", "pod_name": "api-7f8d9c6b5a-zzzzz"},
                  "destination": {"namespace": "b", "labels": ["k8s:k8s-app=dns"]}}),
    orjson.dumps({"node_status": {"state_change": "NODE_CONNECTED"}, "node_name": "node-1"}),
    orjson.dumps({"lost_events": {"num_events_lost": 3}}),
    b'{"something": "else"}',
    b"not json at all",
])


def test_hubble_edge_cases() -> None:
    res, parser = run_bytes(HUBBLE_EDGE, "hubble")
    rows = res.flows.to_pylist()
    assert len(rows) == 2
    dropped, syn = rows
    assert dropped["action"] == ACTION_REJECT and dropped["proto"] == 58
    assert dropped["src_app"] == "web-frontend"  # workloads[].name beats labels
    assert dropped["dst_app"] == "pg-0" and dropped["dst_namespace"] == "db"
    assert json.loads(dropped["meta"])["drop_reason"] == "POLICY_DENIED"
    assert syn["tcp_flags"] == 0x02 and syn["action"] == ACTION_ACCEPT
    assert syn["src_app"] == "api"  # Deployment pod name without its hashes
    assert syn["dst_app"] == "dns"
    assert parser.counters == {"skipped_non_flow": 2}
    assert [(r.reason, r.source) for r in res.rejects] == [("not_hubble", "t:5"),
                                                           ("bad_json", "t:6")]


def test_unexpected_value_shape_costs_only_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.sources.columnar import Prepared
    from pipeline.sources.hubble import HubbleParser

    prepare = HubbleParser.prepare

    def fragile(self: HubbleParser, cols: dict[str, pa.Array | None], n: int) -> Prepared:
        if "6.6.6.6" in (cols["src_ip"].to_pylist() if cols["src_ip"] is not None else []):
            raise ValueError("unexpected shape")
        return prepare(self, cols, n)

    monkeypatch.setattr(HubbleParser, "prepare", fragile)
    lines = (FIX / "hubble/basic-sample-10-flows.json").read_bytes().split(b"\n")[:3]
    lines[1] = lines[1].replace(b'"10.0.2.1"', b'"6.6.6.6"')
    res, _ = run_bytes(b"\n".join(lines), "hubble")
    assert res.flows.num_rows == 2
    assert [(r.reason, r.source) for r in res.rejects] == [("bad_record", "t:2")]


# ------------------------------------------------------------------ goflow


def test_goflow_camelcase_flowlogs_pipeline_sample() -> None:
    t, res, _ = run(FIX / "goflow/ocp-ipfix-flowlogs-short.json", "goflow")
    assert t.num_rows == 50 and not res.rejects
    row = t.slice(0, 1).to_pylist()[0]
    assert row["start"] == 1637501832.0  # TimeFlowStart is 0: falls back to TimeReceived
    assert row["exporter"] == "100.64.0.8"  # SamplerAddress "ZEAACA==" is base64 bytes
    assert (row["src_ip"], row["src_port"], row["dst_ip"], row["dst_port"]) == (
        "10.130.2.13", 3100, "10.130.2.2", 36936)
    assert (row["bytes"], row["packets"], row["proto"]) == (20800, 400, 6)
    assert meta(t, 0)["src_pod"] == "observatorium-loki-ingester-0"


def test_goflow2_snake_case_sampling_and_addresses() -> None:
    t, res, _ = run(FIX / "goflow/goflow2-snake.json", "goflow2")
    assert t.num_rows == 4 and not res.rejects
    rows = t.to_pylist()
    assert rows[0]["start"] == 1700000000.0 and rows[0]["end"] == 1700000001.0
    assert rows[0]["tcp_flags"] == 27 and rows[0]["proto"] == 6
    assert (rows[1]["bytes"], rows[1]["packets"]) == (1500 * 512, 512)
    assert meta(t, 1)["sampling_rate"] == 512
    assert (rows[2]["src_ip"], rows[2]["dst_ip"], rows[2]["exporter"]) == (
        "192.0.2.10", "198.51.100.20", "192.0.2.3")
    assert meta(t, 2) == {"type": "NETFLOW_V9", "icmp_type": 8, "icmp_code": 0}
    assert rows[3]["start"] == 1700000004.0  # zero flow times: time received


def test_goflow_mixed_keys_in_one_block_and_bad_lines() -> None:
    block = b"\n".join([
        b'{"SrcAddr":"10.0.0.1","DstAddr":"10.0.0.2","Proto":17,"TimeFlowStartMs":1700000000500,'
        b'"Bytes":10,"Packets":1,"SrcK8S_Namespace":"shop","SrcK8S_OwnerName":"cart"}',
        b'{"src_addr":"10.0.0.3","dst_addr":"10.0.0.4","proto":"UDP","time_flow_start_ns":'
        b'1700000001000000000,"bytes":"12","packets":1}',
        b'{"src_addr":"10.0.0.3","dst_addr":"10.0.0.4","proto":"TCP","time_received_ns":'
        b'"2024-01-01T00:00:00.5Z","bytes":5}',
        b'{"src_addr":"10.0.0.3","dst_addr":"10.0.0.4","proto":6,"time_flow_start_ns":1,'
        b'"bytes":-5}',
        b'{"hello":"world"}',
        b"[1,2,3]",
    ])
    res, _ = run_bytes(block, "goflow2")
    rows = res.flows.to_pylist()
    assert [r["start"] for r in rows] == [1700000000.5, 1700000001.0, 1704067200.5]
    assert rows[0]["src_namespace"] == "shop" and rows[0]["src_app"] == "cart"
    assert rows[1]["bytes"] == 12
    assert [(r.reason, r.source) for r in res.rejects] == [
        ("time_relative", "t:4"), ("not_goflow2", "t:5"), ("bad_json", "t:6")]


# ------------------------------------------------------------------ Zeek


def test_zeek_masked_timestamps_become_bad_time_rejects() -> None:
    t, res, parser = run(FIX / "zeek/core.cisco-fabric-path.conn.log", "zeek")
    assert t.num_rows == 0 and len(res.rejects) == 64
    assert {r.reason for r in res.rejects} == {"bad_time"}
    assert res.rejects[0].source.endswith("core.cisco-fabric-path.conn.log:10")
    assert res.rejects[0].raw.startswith(b"XXXXXXXXXX.XXXXXX\tC7fIlMZDuRiqjpYbb\t1.1.1.6")
    assert parser.counters["header_sections"] == 1


def _unmasked(name: str, tmp_path: Path, ts: str = "1700000000.250000") -> Path:
    text = (FIX / "zeek" / name).read_text().replace("XXXXXXXXXX.XXXXXX", ts)
    out = tmp_path / name
    out.write_text(text)
    return out


def test_zeek_tsv_mapping(tmp_path: Path) -> None:
    t, res, _ = run(_unmasked("core.tunnels.teredo.conn.log", tmp_path), "zeek")
    assert t.num_rows == 21 and not res.rejects
    rows = t.to_pylist()
    http = next(r for r in rows if meta(t, rows.index(r))["uid"] == "CpmdRlaUoJLN3uIRa")
    assert http["end"] == pytest.approx(1700000000.25 + 0.466677)
    assert http["bytes"] == 757 + 4164 and http["packets"] == 13  # IP-level bytes
    assert http["action"] == ACTION_ACCEPT  # SF
    assert http["tcp_flags"] == 0x02 | 0x12 | 0x10 | 0x01  # ShADadFf
    icmp6 = [r for r in rows if r["proto"] == 58]
    assert len(icmp6) == 3 and {r["src_port"] for r in icmp6} == {0}
    dhcp = next(r for r in rows if r["dst_port"] == 67)
    assert dhcp["src_ip"] == "0.0.0.0" and dhcp["action"] == ACTION_UNKNOWN  # UDP S0
    unmasked, res, _ = run(_unmasked("core.cisco-fabric-path.conn.log", tmp_path), "zeek")
    by_proto = Counter(zip(unmasked["proto"].to_pylist(), unmasked["action"].to_pylist(),
                           strict=True))
    assert by_proto == {(6, ACTION_REJECT): 16, (17, ACTION_UNKNOWN): 16,
                        (99, ACTION_UNKNOWN): 16, (132, ACTION_UNKNOWN): 16}


def test_zeek_concatenated_sections_gzip_and_small_blocks(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    a = _unmasked("scripts.base.protocols.ssh.basic.conn.log", tmp_path).read_bytes()
    b = _unmasked("scripts.base.frameworks.logging.field-extension-complex.conn.log",
                  tmp_path).read_bytes()
    joined = tmp_path / "rotated.conn.log.gz"
    joined.write_bytes(gzip.compress(a + b))
    t, res, parser = run(joined, "zeek")
    assert t.num_rows == 25 + 34 and not res.rejects
    assert parser.counters["header_sections"] == 2
    monkeypatch.setattr(source_base, "BLOCK_BYTES", 1024)  # header state across many blocks
    small, res, _ = run(joined, "zeek")
    assert small.to_pylist() == t.to_pylist() and not res.rejects


def test_zeek_json_variants() -> None:
    t, res, _ = run(FIX / "zeek/conn.json", "zeek")
    assert t.num_rows == 6 and not res.rejects
    rows = t.to_pylist()
    assert [r["action"] for r in rows] == [ACTION_ACCEPT, ACTION_REJECT, ACTION_REJECT,
                                           ACTION_ACCEPT, ACTION_ACCEPT, ACTION_ACCEPT]
    assert rows[4]["proto"] == 58 and meta(t, 4)["icmp_type"] == 128
    assert rows[5]["src_ip"] == "10.1.0.5" and rows[5]["start"] == 1700000005.0  # id_orig_h, ISO


def test_zeek_headerless_wrong_columns_and_other_logs() -> None:
    row = ("1700000000.5\tCx\t10.0.0.1\t5000\t10.0.0.2\t443\ttcp\tssl\t1.5\t100\t200\tSF\tT\tT\t0"
           "\tShADadFf\t5\t400\t4\t500\t-")
    res, _ = run_bytes((row + "\n" + row + "\tEXTRA\tCOLS\n").encode(), "zeek")
    assert res.flows.num_rows == 1 and res.flows["end"][0].as_py() == 1700000002.0
    assert [(r.reason, r.source) for r in res.rejects] == [("field_count", "t:2")]
    res, _ = run_bytes(b"#separator \\x09\n#path\tdns\n#fields\tts\tuid\tquery\n1\tC\tx\n", "zeek")
    assert [r.reason for r in res.rejects] == ["not_zeek_conn"]
    res, _ = run_bytes(b"a b c\n", "zeek")
    assert [r.reason for r in res.rejects] == ["not_zeek"]


# ------------------------------------------------------------------ AWS


def test_aws_v2_default_and_nodata() -> None:
    t, res, parser = run(FIX / "aws/v2-default.log", "aws-vpc")
    assert t.num_rows == 6 and not res.rejects
    assert parser.counters == {"nodata": 1, "skipdata": 1}
    rows = t.to_pylist()
    assert rows[0] == {**rows[0], "src_ip": "10.0.1.15", "dst_port": 5432, "proto": 6,
                       "bytes": 4120, "packets": 12, "start": 1700000000.0, "end": 1700000060.0,
                       "action": ACTION_ACCEPT, "exporter": "eni-0a1b2c3d4e5f60001"}
    assert rows[2]["action"] == ACTION_REJECT
    assert rows[3]["src_ip"] == "2001:db8:10::5"
    assert meta(t, 0) == {"account_id": "111122223333", "action": "ACCEPT"}


def test_aws_custom_header_tgw_v8_and_cloudwatch() -> None:
    t, res, parser = run(FIX / "aws/v5-header.log", "aws-vpc")
    assert t.num_rows == 4 and not res.rejects
    assert parser.counters == {"header_lines": 1, "nodata": 1}
    assert t["tcp_flags"].to_pylist() == [19, 3, 2, 2]
    m = meta(t, 2)
    assert m["pkt_dstaddr"] == "192.0.2.10" and "pkt_srcaddr" not in m  # only when different
    assert (m["vpc_id"], m["flow_direction"], m["traffic_path"]) == (
        "vpc-0aa11bb22cc33dd44", "egress", 8)
    pkt, _, _ = run(FIX / "aws/v5-header.log", "aws-vpc", pkt_addresses=True)
    assert pkt["dst_ip"][2].as_py() == "192.0.2.10"

    tgw, res, parser = run(FIX / "aws/tgw-default.log", "aws-vpc")
    assert tgw.num_rows == 2 and parser.counters == {"nodata": 1}
    assert set(tgw["action"].to_pylist()) == {ACTION_UNKNOWN}  # TGW logs have no action
    assert tgw["exporter"][0].as_py() == "tgw-attach-0aaa1111bbbb2222c"
    assert meta(tgw)["tgw_dst_vpc_id"] == "vpc-0ee55ff66aa77bb88"

    v8, _, _ = run(FIX / "aws/v8-all-fields.log", "aws-vpc")
    assert meta(v8, 0)["ecs_service_name"] == "checkout"
    assert meta(v8, 1)["reject_reason"] == "BPA" and v8["action"][1].as_py() == ACTION_REJECT

    cw, res, _ = run(FIX / "aws/cloudwatch-export.log", "aws-vpc")
    assert cw.num_rows == 2 and not res.rejects and cw["bytes"][1].as_py() == 8800


def test_aws_fields_option_header_across_blocks_and_wrong_input() -> None:
    res, _ = run_bytes(b"10.0.0.1 10.0.0.2 1700000000 6 443\n",
                       "aws-vpc", fields="${srcaddr} ${dstaddr} ${start} ${protocol} ${dstport}")
    assert res.flows.to_pylist()[0]["dst_port"] == 443
    parser = get_parser("aws-vpc")
    head = b"version srcaddr dstaddr start end protocol bytes log-status\n"
    assert parser.parse(head, "t", 1).records_in == 0
    res = parser.parse(b"5 10.0.0.1 10.0.0.2 1700000000 1700000001 17 99 OK\n", "t", 2)
    assert res.flows["bytes"].to_pylist() == [99] and not res.rejects
    bad = (b'{"src_ip": "10.0.0.1"}\n'
           b"2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1700000000 1700000001 ACCEPT OK\n")
    res, _ = run_bytes(bad, "aws-vpc")
    assert [r.reason for r in res.rejects] == ["not_aws_vpc", "not_aws_vpc"]
    values = (b"2 1 eni-1 10.0.0.1 10.0.0.999 1 2 6 1 1 1700000000 1700000001 ACCEPT OK\n"
              b"2 1 eni-1 10.0.0.1 10.0.0.2 1 70000 6 1 1 1700000000 1700000001 ACCEPT OK\n"
              b"2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1700000000 1700000001 ACCEPT OK extra\n"
              b"2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 x 1 1700000000 1700000001 ACCEPT OK\n")
    res, _ = run_bytes(values, "aws-vpc")
    assert [(r.reason, r.source) for r in res.rejects] == [
        ("bad_ip", "t:1"), ("port_range", "t:2"), ("not_aws_vpc", "t:3"), ("bad_type", "t:4")]


# ------------------------------------------------------------------ GCP


def test_gcp_vpc_flow_logs() -> None:
    t, res, _ = run(FIX / "gcp/vpc-flows.jsonl", "gcp-vpc")
    assert t.num_rows == 5 and not res.rejects
    rows = t.to_pylist()
    assert (rows[0]["src_app"], rows[0]["src_namespace"], rows[0]["dst_app"]) == (
        "frontend", "shop", "cart")
    assert rows[0]["start"] == pytest.approx(1700000000.123456789)
    assert rows[0]["bytes"] == 5120 and rows[0]["exporter"] == "gke-shop-pool-1-abcd"
    assert rows[1]["dst_app"] == "frontend"  # no workload: Deployment name from the pod name
    assert rows[1]["exporter"] == "gke-shop-pool-1-abcd"  # reporter DEST → dest instance
    assert rows[3]["src_ip"] == "fd20:8::12" and rows[3]["proto"] == 17
    assert rows[4]["start"] == rows[4]["end"] == 1700000060.0 and rows[4]["proto"] == 1
    assert meta(t, 0)["src_cluster"] == "shop-gke"
    res, _ = run_bytes(b'{"jsonPayload": {"message": "hello"}}\n', "gcp-vpc")
    assert [r.reason for r in res.rejects] == ["not_gcp_vpc"]


# ------------------------------------------------------------------ Azure


def test_azure_nsg_v2() -> None:
    t, res, parser = run(FIX / "azure/nsg-v2.json", "azure-nsg")
    assert t.num_rows == 8 and not res.rejects
    assert parser.counters == {"records": 2, "nsg2_tuples": 8}
    rows = t.to_pylist()
    assert [meta(t, i)["flow_state"] for i in range(3)] == ["B", "C", "E"]
    assert (rows[0]["bytes"], rows[1]["bytes"], rows[1]["packets"]) == (0, 3120 + 9800, 26)
    assert rows[3]["proto"] == 17 and rows[4]["action"] == ACTION_REJECT
    assert rows[5]["src_ip"] == "2001:db8:1::7"
    assert rows[0]["exporter"] == "SHOP-APP-NSG" and meta(t)["rule"] == "UserRule_AllowAppToDb"


def test_azure_vnet_v4() -> None:
    t, res, _ = run(FIX / "azure/vnet-v4.json", "azure-vnet")
    assert t.num_rows == 4 and not res.rejects
    rows = t.to_pylist()
    assert rows[1]["start"] == 1700000400.25  # milliseconds
    assert rows[1]["bytes"] == 6600 and rows[1]["packets"] == 14
    assert [r["action"] for r in rows] == [ACTION_ACCEPT] * 3 + [ACTION_REJECT]
    assert rows[0]["exporter"] == "shop-vnet" and meta(t)["encryption"] == "NX"


def test_azure_wrong_documents_and_record_lines() -> None:
    res, _ = run_bytes(b"not json\n{\"a\": 1}\n", "azure-nsg")
    assert [r.reason for r in res.rejects] == ["bad_json", "not_azure_flow_log"]
    lines = b"\n".join(orjson.dumps({"records": [r]}) for r in
                       json.loads((FIX / "azure/nsg-v2.json").read_bytes())["records"])
    res, _ = run_bytes(lines, "azure-nsg")
    assert res.flows.num_rows == 8
    tuples = {"records": [{"properties": {"Version": 2, "flows": [{"rule": "r", "flows": [
        {"mac": "m", "flowTuples": ["1,2,3", "1700000000,10.0.0.1,10.0.0.2,1,2,T,O,A,E,1,x,1,1",
                                    "1700000000,10.0.0.1,10.0.0.2,1,2,T,O,A,E,1,1,1,1"]}]}]}}]}
    res, _ = run_bytes(orjson.dumps(tuples), "azure-nsg")
    assert res.flows.num_rows == 1
    assert sorted(r.reason for r in res.rejects) == ["bad_tuple", "bad_type"]


# ------------------------------------------------------------------ Suricata


def test_suricata_eve() -> None:
    t, res, parser = run(FIX / "suricata/eve.json", "suricata")
    assert t.num_rows == 4 and not res.rejects
    assert parser.counters == {"skipped_event_type": 3}
    rows = t.to_pylist()
    assert rows[0]["bytes"] == 2200 and rows[0]["packets"] == 11 and rows[0]["tcp_flags"] == 0x1B
    assert rows[0]["start"] == pytest.approx(1700000000.123456)
    assert [r["action"] for r in rows] == [ACTION_ACCEPT, ACTION_REJECT, ACTION_ACCEPT,
                                           ACTION_UNKNOWN]
    assert rows[1]["start"] == pytest.approx(1700000008.000001 - 7200)  # +0200 offset
    assert meta(t, 0)["app_proto"] == "pgsql" and meta(t, 3)["alerted"] is True
    res, _ = run_bytes(b'{"src_ip": "10.0.0.1"}\n', "suricata")
    assert [r.reason for r in res.rejects] == ["not_suricata"]


# ------------------------------------------------------------------ all formats


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "canonical"])
def test_wrong_format_input_is_rejected_not_raised(fmt: str) -> None:
    other = (FIX / ("aws/v2-default.log" if fmt != "aws-vpc" else "zeek/conn.json")).read_bytes()
    res, _ = run_bytes(other, fmt)
    assert res.flows.num_rows == 0
    assert res.rejects and all(r.reason and r.detail for r in res.rejects)
