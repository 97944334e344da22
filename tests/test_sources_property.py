"""Property tests: no parser raises on any input, and no parser emits an out-of-range value."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.columns import FLOW_SCHEMA, NO_TCP_FLAGS
from pipeline.core.normalize import MAX_EPOCH, MIN_EPOCH, canonical_ip
from pipeline.core.text import MAX_IDENTITY_CHARS, has_unsafe_chars
from pipeline.sources import FORMATS, get_parser
from pipeline.sources.base import RAW_KEEP, ParseResult

FIX = Path(__file__).parent / "fixtures" / "sources"
SAMPLES = {
    "aws-vpc": ["aws/v5-header.log", "aws/tgw-default.log"],
    "gcp-vpc": ["gcp/vpc-flows.jsonl"],
    "azure-nsg": ["azure/nsg-v2.json"],
    "azure-vnet": ["azure/vnet-v4.json"],
    "hubble": ["hubble/basic-sample-10-flows.json"],
    "goflow2": ["goflow/goflow2-snake.json"],
    "zeek": ["zeek/scripts.base.protocols.ssh.basic.conn.log", "zeek/conn.json"],
    "suricata": ["suricata/eve.json"],
}
PARSED = [f for f in FORMATS if f != "canonical"]
FEW = settings(max_examples=100, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _sample(fmt: str, i: int = 0) -> bytes:
    path = FIX / SAMPLES[fmt][i % len(SAMPLES[fmt])]
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def assert_sane(res: ParseResult) -> None:
    """The invariants every parser promises, whatever its input."""
    t = res.flows
    assert t.schema == FLOW_SCHEMA
    assert res.records_in == t.num_rows + len(res.rejects)
    for r in res.rejects:
        assert r.reason and r.detail and len(r.raw) <= RAW_KEEP
    d = t.to_pydict()
    for i in range(t.num_rows):
        assert MIN_EPOCH <= d["start"][i] <= d["end"][i] < MAX_EPOCH
        assert 0 <= d["src_port"][i] <= 65535 and 0 <= d["dst_port"][i] <= 65535
        assert 0 <= d["proto"][i] <= 255
        assert d["bytes"][i] >= 0 and d["packets"][i] >= 0
        assert d["action"][i] in (0, 1, 2)
        assert NO_TCP_FLAGS <= d["tcp_flags"][i] <= 0x1FF
        for side in ("src_ip", "dst_ip"):
            assert canonical_ip(d[side][i]) == d[side][i]
        for col in ("meta", "src_labels", "dst_labels"):
            v = d[col][i]
            assert v is None or isinstance(orjson.loads(v), dict)
        for col in ("src_app", "src_namespace", "dst_app", "dst_namespace"):
            v = d[col][i]
            assert v is None or (not has_unsafe_chars(v) and len(v) <= MAX_IDENTITY_CHARS)


def parse(fmt: str, data: bytes) -> ParseResult:
    res = get_parser(fmt).parse(data, "p", 1)
    assert_sane(res)
    return res


@pytest.mark.parametrize("fmt", PARSED)
@FEW
@given(data=st.binary(max_size=600))
def test_random_bytes_never_crash(fmt: str, data: bytes) -> None:
    parse(fmt, data)


@pytest.mark.parametrize("fmt", PARSED)
@FEW
@given(cut=st.integers(min_value=0, max_value=1 << 20), which=st.integers(0, 1),
       drop=st.integers(min_value=0, max_value=50))
def test_truncated_and_spliced_valid_input(fmt: str, cut: int, which: int, drop: int) -> None:
    data = _sample(fmt, which)
    cut %= len(data) + 1
    parse(fmt, data[:cut])
    if fmt.startswith("azure"):
        return
    lines = data.split(b"\n")
    if drop < len(lines):  # a line missing in the middle, the rest shifted
        parse(fmt, b"\n".join(lines[:drop] + lines[drop + 1 :]))


# random field values: any JSON scalar, including ones that are far out of range
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["10.0.0.1", "fd00::1", "::ffff:10.1.2.3", "1700000000", "-1", "65536",
                     "TCP", "udp", "2024-01-01T00:00:00Z", "1e300", "nan", "0x1b", "1b", "-"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.sampled_from(["a", "name", "SYN"]), scalars, max_size=2))


def _mutate(obj: Any, draw: st.DrawFn, depth: int = 0) -> Any:
    """Replace some leaves of a decoded record with random values."""
    if isinstance(obj, dict):
        return {k: (draw(values) if draw(st.integers(0, 3)) == 0 else _mutate(v, draw, depth + 1))
                for k, v in obj.items()}
    if isinstance(obj, list) and depth < 6:
        return [_mutate(v, draw, depth + 1) for v in obj]
    return obj


@st.composite
def mutated_json_lines(draw: st.DrawFn, fmt: str) -> bytes:
    lines = [ln for ln in _sample(fmt, draw(st.integers(0, 1))).split(b"\n") if ln.strip()]
    picked = draw(st.lists(st.sampled_from(lines), min_size=1, max_size=4))
    return b"\n".join(orjson.dumps(_mutate(orjson.loads(ln), draw)) for ln in picked)


@pytest.mark.parametrize("fmt", ["gcp-vpc", "hubble", "goflow2", "suricata"])
@FEW
@given(data=st.data())
def test_random_field_values_json_lines(fmt: str, data: st.DataObject) -> None:
    parse(fmt, data.draw(mutated_json_lines(fmt)))


@FEW
@given(data=st.data())
def test_random_field_values_zeek_json(data: st.DataObject) -> None:
    lines = (FIX / "zeek/conn.json").read_bytes().split(b"\n")
    picked = data.draw(st.lists(st.sampled_from([ln for ln in lines if ln]), min_size=1,
                                max_size=4))
    block = b"\n".join(orjson.dumps(_mutate(orjson.loads(ln), data.draw)) for ln in picked)
    parse("zeek", block)


@pytest.mark.parametrize("fmt", ["azure-nsg", "azure-vnet"])
@FEW
@given(data=st.data())
def test_random_field_values_azure(fmt: str, data: st.DataObject) -> None:
    doc = orjson.loads(_sample(fmt))
    tokens = st.one_of(st.sampled_from(["", "-1", "T", "U", "A", "D", "B", "E", "99999999999999",
                                        "10.0.0.1", "fd00::2", "1700000000", "1700000000000",
                                        "x", "1e3", "O", "I"]), st.text(max_size=6))
    for rec in doc["records"]:
        groups = (rec["flowRecords"]["flows"][0]["flowGroups"] if "flowRecords" in rec
                  else rec["properties"]["flows"][0]["flows"])
        count = data.draw(st.integers(1, 13))
        groups[0]["flowTuples"] = [",".join(data.draw(st.lists(tokens, min_size=count,
                                                               max_size=count)))
                                   for _ in range(data.draw(st.integers(1, 3)))]
    parse(fmt, orjson.dumps(_mutate(doc, data.draw)))


TEXT_TOKENS = st.one_of(
    st.sampled_from(["-", "(empty)", "0", "-5", "65536", "99999999999999999999", "1.5", "nan",
                     "10.0.0.1", "fd00::1", "300.1.1.1", "1700000000", "4102444800", "tcp",
                     "icmp", "ACCEPT", "REJECT", "OK", "NODATA", "SF", "S0", "REJ", "ShADadFf",
                     "XXXXXXXXXX.XXXXXX"]),
    st.text(alphabet=st.characters(blacklist_characters="\n\r\t "), max_size=8),
)


@FEW
@given(rows=st.lists(st.lists(TEXT_TOKENS, min_size=14, max_size=14), min_size=1, max_size=5),
       extra=st.integers(-1, 1))
def test_random_field_values_aws(rows: list[list[str]], extra: int) -> None:
    lines = [" ".join(r + ["x"] * extra if extra > 0 else r[: len(r) + extra]) for r in rows]
    parse("aws-vpc", "\n".join(lines).encode("utf-8", "surrogatepass"))  # may be invalid UTF-8


@FEW
@given(rows=st.lists(st.lists(TEXT_TOKENS, min_size=22, max_size=22), min_size=1, max_size=5))
def test_random_field_values_zeek_tsv(rows: list[list[str]]) -> None:
    header = b"\n".join(_sample("zeek").split(b"\n")[:9])
    body = "\n".join("\t".join(r) for r in rows).encode("utf-8", "surrogatepass")
    parse("zeek", header + b"\n" + body)


# ---------------------------------------------------------------- one reject, one record
# Issue 10 item 2: a bad value (a non-numeric port, a wrong type anywhere) in one record must
# cost that record only: every other record of the block parses exactly as without it.

CANONICAL = b"\n".join(orjson.dumps(r) for r in [
    {"start": 1.7e9 + i, "end": 1.7e9 + i + 1, "src_ip": f"10.0.0.{i + 1}", "dst_ip": "10.0.1.9",
     "src_port": 40000 + i, "dst_port": 443, "proto": 6, "bytes": 100 * i, "packets": i,
     "action": "accept", "tcp_flags": 27, "exporter": "n1"} for i in range(3)] + [
    {"start": "2023-11-14T22:13:20Z", "src_ip": "10.0.0.9", "dst_ip": "10.0.1.9", "proto": 1,
     "src_workload": {"app": "web", "namespace": "shop", "labels": {"tier": "fe"}}},
    {"start": 1.7e9, "src_ip": "fd00::1", "dst_ip": "fd00::2", "proto": "icmpv6"}])


def _header_and_records(fmt: str, which: int) -> tuple[bytes, list[bytes]]:
    """A sample's header lines and the records that parse alone to exactly one flow."""
    data = CANONICAL if fmt == "canonical" else _sample(fmt, which)
    data = data.replace(b"XXXXXXXXXX.XXXXXX", b"1700000000.250000")  # btest's masked times
    lines = [ln for ln in data.split(b"\n") if ln.strip()]
    header = [ln for ln in lines if ln.startswith(b"#") or ln.startswith(b"version ")]
    head = b"".join(h + b"\n" for h in header)
    good = [ln for ln in lines if ln not in header
            and (r := get_parser(fmt).parse(head + ln, "p", 1)).flows.num_rows == 1
            and not r.rejects]
    return head, good


def _assert_costs_only_itself(fmt: str, head: bytes, lines: list[bytes], mutated: bytes,
                              i: int) -> None:
    first = head.count(b"\n") + 1
    base = get_parser(fmt).parse(head + b"\n".join(lines), "p", 1)
    assert base.flows.num_rows == len(lines) and not base.rejects
    block = head + b"\n".join(lines[:i] + [mutated] + lines[i + 1:])
    res = get_parser(fmt).parse(block, "p", 1)
    assert_sane(res)
    assert [r.source for r in res.rejects] in ([], [f"p:{first + i}"]), res.rejects
    before = base.flows.to_pylist()
    after = res.flows.to_pylist()
    others = before[:i] + before[i + 1:]
    if len(after) == len(lines):
        after = after[:i] + after[i + 1:]
    assert after == others


JSON_LINE_FORMATS = ["canonical", "gcp-vpc", "hubble", "goflow2", "suricata", "zeek"]


@pytest.mark.parametrize("fmt", JSON_LINE_FORMATS)
@FEW
@given(data=st.data())
def test_a_bad_value_costs_only_its_own_json_record(fmt: str, data: st.DataObject) -> None:
    head, lines = _header_and_records(fmt, 1 if fmt == "zeek" else 0)
    assert len(lines) >= 3
    i = data.draw(st.integers(0, len(lines) - 1))
    obj = orjson.loads(lines[i])
    leaves = list(_leaf_paths(obj))
    path = data.draw(st.sampled_from(leaves))
    _set(obj, path, data.draw(st.one_of(st.sampled_from(["abc", "", "-", "1e999", "12abc"]),
                                        values)))
    _assert_costs_only_itself(fmt, head, lines, orjson.dumps(obj), i)


@pytest.mark.parametrize("fmt", ["aws-vpc", "zeek"])
@FEW
@given(data=st.data())
def test_a_bad_value_costs_only_its_own_text_record(fmt: str, data: st.DataObject) -> None:
    head, lines = _header_and_records(fmt, 0)
    assert len(lines) >= 3
    sep = b"\t" if fmt == "zeek" else b" "
    i = data.draw(st.integers(0, len(lines) - 1))
    tokens = lines[i].split(sep)
    k = data.draw(st.integers(0, len(tokens) - 1))
    token = data.draw(st.one_of(st.sampled_from(["abc", "-", "1e999", "12abc", "nan"]),
                                TEXT_TOKENS))
    if k == 0 and token.startswith("#"):  # a header directive changes the following lines
        token = "x" + token
    tokens[k] = token.encode("utf-8", "surrogatepass")
    _assert_costs_only_itself(fmt, head, lines, sep.join(tokens), i)


def _leaf_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Any:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaf_paths(v, (*prefix, k))
    elif isinstance(obj, list) and obj:
        for j, v in enumerate(obj):
            yield from _leaf_paths(v, (*prefix, j))
    else:
        yield prefix


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


PORTLESS_AND_BAD_PORT = {
    "suricata": [
        {"timestamp": "2023-11-14T22:13:20Z", "event_type": "flow", "src_ip": "10.0.0.1",
         "dest_ip": "10.0.0.2", "proto": "ICMP", "flow": {"pkts_toserver": 1}},
        {"timestamp": "2023-11-14T22:13:20Z", "event_type": "flow", "src_ip": "10.0.0.1",
         "dest_ip": "10.0.0.2", "src_port": 1, "dest_port": "abc", "proto": "TCP"}],
    "hubble": [
        {"flow": {"time": "2023-11-14T22:13:20Z", "IP": {"source": "10.0.0.1",
                                                         "destination": "10.0.0.2"},
                  "l4": {"ICMPv4": {"type": 8}}, "verdict": "FORWARDED"}},
        {"flow": {"time": "2023-11-14T22:13:20Z", "IP": {"source": "10.0.0.1",
                                                         "destination": "10.0.0.2"},
                  "l4": {"TCP": {"source_port": 1, "destination_port": "abc"}},
                  "verdict": "FORWARDED"}}],
    "goflow2": [
        {"time_flow_start_ns": 1_700_000_000_000_000_000, "src_addr": "10.0.0.1",
         "dst_addr": "10.0.0.2", "proto": "ICMP", "bytes": 1, "packets": 1},
        {"time_flow_start_ns": 1_700_000_000_000_000_000, "src_addr": "10.0.0.1",
         "dst_addr": "10.0.0.2", "proto": "TCP", "src_port": 1, "dst_port": "abc",
         "bytes": 1, "packets": 1}],
}


@pytest.mark.parametrize("fmt", list(PORTLESS_AND_BAD_PORT))
def test_non_numeric_port_rejects_only_its_record(fmt: str) -> None:
    """Issue 10 item 2: portless (ICMP) flows next to a ``"dest_port": "abc"`` record."""
    icmp, bad = PORTLESS_AND_BAD_PORT[fmt]
    block = b"\n".join(orjson.dumps(r) for r in (icmp, bad, icmp, icmp))
    res = parse(fmt, block)
    assert res.flows.num_rows == 3
    assert [(r.reason, r.source) for r in res.rejects] == [("bad_type", "p:2")]
