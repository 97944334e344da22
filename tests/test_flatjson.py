"""The C fast path for flat NDJSON (pipeline._flatjson) against the per-record canonical path.

Differential: a block the fast path takes (few odd lines) must parse exactly as the per-record
path (orjson + coercion, one line at a time) parses it, and a block with many odd lines exactly
as with the extension disabled: flows, rejects (reason, detail, raw, line) and record counts.
The decoder itself is also checked on the lines it must take and the lines it must leave.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.sources import flatjson
from pipeline.sources.base import ParseResult
from pipeline.sources.canonical import _FAST, ODD_SHARE, CanonicalParser

EXAMPLES = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_the_extension_is_built() -> None:
    """`pip install` compiles it wherever a C compiler exists, as on every CI machine; a silent
    build failure would turn every other test here into a comparison of the slow path with
    itself."""
    assert flatjson.available(), "pipeline._flatjson is not built: pip install -e . with gcc"


def both(block: bytes, monkeypatch: pytest.MonkeyPatch, *, first_line: int = 1
         ) -> tuple[ParseResult, ParseResult]:
    """(the parser's result, the reference it must equal)."""
    fast = CanonicalParser().parse(block, "f.jsonl", first_line)
    got = flatjson.decode(block, _FAST)
    assert got is not None
    if len(got.bad_lines) <= max(8, got.records * ODD_SHARE):
        return fast, CanonicalParser()._parse_slow(block, "f.jsonl", first_line)
    monkeypatch.setenv("SEGFLOW_NO_EXT", "1")
    try:
        general = CanonicalParser().parse(block, "f.jsonl", first_line)
    finally:
        monkeypatch.delenv("SEGFLOW_NO_EXT")
    return fast, general


def assert_same(a: ParseResult, b: ParseResult) -> None:
    assert a.records_in == b.records_in
    assert a.flows.equals(b.flows), (a.flows.to_pylist()[:3], b.flows.to_pylist()[:3])
    assert [(r.reason, r.detail, r.raw, r.source) for r in a.rejects] == \
        [(r.reason, r.detail, r.raw, r.source) for r in b.rejects]


def record(**over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"start": 1767571206.38, "end": 1767571206.414, "src_ip": "10.1.0.136",
                         "dst_ip": "10.1.0.67", "src_port": 51070, "dst_port": 5432, "proto": 6,
                         "bytes": 2213, "packets": 3, "action": "accept", "tcp_flags": 31,
                         "exporter": "node-3"}
    r.update(over)
    return {k: v for k, v in r.items() if v is not ...}


# -- the decoder on its own ----------------------------------------------------------------
def test_decoder_takes_usual_records_exactly() -> None:
    lines = [orjson.dumps(record(start=1767571206.0 + i / 7, bytes=i)) for i in range(50)]
    got = flatjson.decode(b"\n".join(lines), _FAST)
    assert got is not None and got.rows == 50 and got.records == 50 and not len(got.bad_lines)
    assert got.columns["start"].to_pylist() == [1767571206.0 + i / 7 for i in range(50)]
    assert got.columns["bytes"].to_pylist() == list(range(50))
    assert got.columns["src_ip"].to_pylist() == ["10.1.0.136"] * 50


@pytest.mark.parametrize("line", [
    b'{"start": 1, "src_ip": "10.0.0.1", "foo": 1}',          # unknown key
    b'{"start": 1, "start": 2}',                              # repeated key
    b'{"src_ip": "10.0.0.\\u0031"}',                          # escape
    b'{"exporter": "n\xc3\xb6de"}',                           # non-ASCII
    b'{"bytes": 1.5}', b'{"bytes": 1e3}', b'{"bytes": "12"}',  # not an int literal
    b'{"bytes": 99999999999999999999}',                       # over int64
    b'{"start": 1e400}',                                      # not finite
    b'{"start": "2026-01-05T00:00:00Z"}',
    b'{"proto": "tcp"}', b'{"action": true}', b'{"src_ip": ["a"]}', b'{"src_ip": {}}',
    b'{"start": 01}', b'{"start": -}', b'{"start": 1.}', b'{"start": .5}',
    b'{"start": 1} x', b'{"start": 1', b'[1, 2]', b'"start"', b'{"start" 1}', b'{,}',
    b'{"start": nul}', b'{"start": 1,}',
])
def test_decoder_leaves_what_it_cannot_decode_exactly(line: bytes) -> None:
    got = flatjson.decode(line, _FAST)
    assert got is not None and got.rows == 0 and got.bad_lines.tolist() == [0]


@pytest.mark.parametrize("text", [
    "1767571206.1428571", "1.0000000000000000001", "0.1", "123456789012345678901234567890",
    "-2.2250738585072014e-308", "9007199254740993", "1e23", "4.35", "1767571206.380000000001"])
def test_decoder_rounds_floats_correctly(text: str) -> None:
    got = flatjson.decode(b'{"start": %s}' % text.encode(), _FAST)
    assert got is not None and got.rows == 1
    assert got.columns["start"].to_pylist() == [float(text)]


def test_decoder_numbers_lines_and_skips_blank_ones() -> None:
    block = b'\n  \r\n{"start": 1}\nnot json\n\n{"start": -2.5e-3, "bytes": -9223372036854775808}\n'
    got = flatjson.decode(block, _FAST)
    assert got is not None
    assert got.line_of_row.tolist() == [2, 5] and got.bad_lines.tolist() == [3]
    assert got.records == 3
    assert got.columns["start"].to_pylist() == [1.0, -0.0025]
    assert got.columns["bytes"].to_pylist() == [None, -(2**63)]
    assert got.columns["end"].null_count == 2


def test_disabled_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGFLOW_NO_EXT", "1")
    assert flatjson.decode(b'{"start": 1}', _FAST) is None


# -- fast path == general path ------------------------------------------------------------
def test_usual_block_with_a_few_odd_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [orjson.dumps(record(bytes=i, src_port=40000 + i)) for i in range(400)]
    lines[7] = b"{not json"
    lines[50] = orjson.dumps(record(start="2026-01-05T00:00:00Z"))  # general path decodes it
    lines[51] = orjson.dumps(record(proto="udp"))
    lines[90] = orjson.dumps(record(src_ip="999.1.1.1"))  # fast decode, normalize rejects
    lines[91] = b""
    lines[200] = orjson.dumps(record(src_workload={"app": "a", "namespace": "n"}))
    lines[300] = orjson.dumps(record(bytes=-5))
    fast, general = both(b"\n".join(lines), monkeypatch, first_line=10)
    assert_same(fast, general)
    assert fast.records_in == 399 and {r.source for r in fast.rejects} >= {"f.jsonl:17"}
    assert fast.flows.column("proto").to_pylist()[50] == 17  # the odd rows kept their place


def test_mostly_odd_block_goes_general(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [orjson.dumps(record(start=f"2026-01-05T00:00:{i % 60:02d}Z", end=...))
             for i in range(100)]
    fast, general = both(b"\n".join(lines), monkeypatch)
    assert_same(fast, general)
    assert fast.flows.num_rows == 100


_number = st.one_of(
    st.integers(-(2**64), 2**64), st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(places=6, allow_nan=False, allow_infinity=False).map(lambda d: float(d)),
    st.integers(1_500_000_000_000, 1_900_000_000_000).map(lambda ms: ms / 1000),
)
_value = st.one_of(st.none(), _number, st.sampled_from(["tcp", "udp", "accept", "reject", "x"]),
                   st.text(max_size=12), st.booleans(),
                   st.ip_addresses().map(str), st.just({"app": "a"}))
_keys = st.sampled_from(["start", "end", "src_ip", "dst_ip", "src_port", "dst_port", "proto",
                         "bytes", "packets", "action", "tcp_flags", "exporter", "meta", "x"])


def _render(obj: dict[str, Any], style: int) -> bytes:
    text = orjson.dumps(obj)
    if style == 1:
        text = text.replace(b",", b", ").replace(b":", b": ")
    elif style == 2:
        text = b"  " + text + b" \r"
    return text


@EXAMPLES
@given(st.lists(st.tuples(
    st.one_of(st.builds(lambda o: record(**o), st.dictionaries(_keys, _value, max_size=4)),
              st.dictionaries(_keys, _value, max_size=8)),
    st.integers(0, 3)), min_size=1, max_size=30),
    st.lists(st.binary(max_size=30), max_size=3))
def test_fast_equals_general_on_random_blocks(rows: list[tuple[dict[str, Any], int]],
                                               junk: list[bytes]) -> None:
    lines = []
    for obj, style in rows:
        if any(isinstance(v, float) and not math.isfinite(v) for v in obj.values()):
            continue
        try:
            lines.append(_render(obj, style) if style < 3 else orjson.dumps(obj)[:-1])
        except orjson.JSONEncodeError:  # integers beyond 64 bits
            lines.append(str(obj).encode())
    lines.extend(j.replace(b"\n", b" ") for j in junk)
    with pytest.MonkeyPatch.context() as mp:
        fast, general = both(b"\n".join(lines), mp)
    assert_same(fast, general)


def test_table_types_match_the_general_path() -> None:
    got = flatjson.decode(orjson.dumps(record()), _FAST)
    assert got is not None
    assert {k: v.type for k, v in got.columns.items()} == {f.name: f.type for f in _FAST.schema}
    assert pa.Table.from_pydict(got.columns).num_rows == 1
