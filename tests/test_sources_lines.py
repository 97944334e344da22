"""Line accounting of the line formats, for any bytes (issue 10 item 3).

A line ends at ``\\n`` (``\\r\\n`` too); a blank line (whitespace only) is not a record.
Every other line is exactly one of: an accepted flow, a reject (dead letter) located at its
own ``file:line`` with its own bytes, or a skipped line counted by reason (header, NODATA,
SKIPDATA, non-flow event). The same holds when a file is read in blocks and when the
lines arrive as Kafka messages (then each reject names its message's offset).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.commands.replay import replay
from pipeline.commands.summary import print_replay_summary
from pipeline.core.columns import DEAD_LETTER_REASONS, SKIP_REASONS
from pipeline.core.inventory import Inventory, entry_from_record
from pipeline.core.settings import CoreSettings
from pipeline.sources import base as source_base
from pipeline.sources import get_parser
from pipeline.sources.base import RAW_KEEP, ParseResult, parse_file
from pipeline.stream.rawblock import EMPTY, parse_messages

FIX = Path(__file__).parent / "fixtures" / "sources"
AWS_V2 = (FIX / "aws/v2-default.log").read_bytes()  # 8 lines: 6 flows, NODATA, SKIPDATA
AWS_V5 = (FIX / "aws/v5-header.log").read_bytes()  # a header line, 4 flows, NODATA
ZEEK = (FIX / "zeek/scripts.base.protocols.ssh.basic.conn.log").read_bytes().replace(
    b"XXXXXXXXXX.XXXXXX", b"1700000000.250000")
LINES = {
    "aws-vpc": AWS_V2.splitlines() + AWS_V5.splitlines(),
    "zeek": ZEEK.splitlines(),
}
ODD = [b"\r", b"\r\n", b"\n", b"\x00", b"\x0b", b"\x0c", b"\xff", b"\xef\xbb\xbf", b" ",
       b"\t", b"#", b"{", b"  \t ", b"\xc3\xa9", b"\x1c", b"\x85"]


def records_of(data: bytes, first_line: int = 1) -> dict[int, bytes]:
    """The reference: line number → line (without its ending) of every non-blank line."""
    out = {}
    for i, line in enumerate(data.split(b"\n")):
        line = line.removesuffix(b"\r")
        if line.strip():
            out[first_line + i] = line
    return out


def check_accounting(results: list[ParseResult], data: bytes, source: str) -> None:
    records = records_of(data)
    flows = sum(r.flows.num_rows for r in results)
    rejects = [x for r in results for x in r.rejects]
    skipped: Counter[str] = Counter()
    for r in results:
        assert r.records_in == r.flows.num_rows + len(r.rejects)
        skipped.update(r.skipped)
    assert flows + len(rejects) + sum(skipped.values()) == len(records), (
        flows, [(x.reason, x.source) for x in rejects], skipped, len(records))
    assert set(skipped) <= set(SKIP_REASONS)
    seen = set()
    for x in rejects:
        assert x.reason in DEAD_LETTER_REASONS
        where, _, n = x.source.rpartition(":")
        assert where == source and int(n) in records, (x.source, x.reason)
        assert x.raw == records[int(n)][:RAW_KEEP], (x.source, x.raw, records[int(n)])
        assert int(n) not in seen
        seen.add(int(n))


# ---------------------------------------------------------------- the reported cases


def test_aws_bare_cr_is_one_rejected_record_and_later_rejects_keep_their_line() -> None:
    lines = AWS_V2.splitlines()
    lines[0] = lines[0].replace(b" 6 ", b" 6\r ", 1)  # a \r inside a valid line
    lines[2] = b"garbage"  # was NODATA
    res = get_parser("aws-vpc").parse(b"\n".join(lines) + b"\n", "f", 1)
    assert res.flows.num_rows == 5
    assert [(r.reason, r.source) for r in res.rejects] == [("bad_line", "f:1"),
                                                          ("not_aws_vpc", "f:3")]
    assert res.rejects[0].raw == lines[0]
    assert res.skipped == {"skipdata": 1}
    check_accounting([res], b"\n".join(lines) + b"\n", "f")


def test_aws_bare_cr_in_a_valid_line_is_not_two_records() -> None:
    """8 lines, one with a \\r after its last field: 8 records, not 9."""
    lines = AWS_V2.splitlines()
    lines[3] = lines[3] + b"\rjunk"
    res = get_parser("aws-vpc").parse(b"\n".join(lines), "f", 1)
    assert res.flows.num_rows == 5 and res.skipped == {"nodata": 1, "skipdata": 1}
    assert [(r.reason, r.source) for r in res.rejects] == [("bad_line", "f:4")]


def test_zeek_bare_cr_is_one_rejected_record_and_later_rejects_keep_their_line() -> None:
    lines = ZEEK.splitlines()
    data_rows = [i for i, ln in enumerate(lines) if ln[:1].isdigit()]
    a, b = data_rows[0], data_rows[3]
    lines[a] = lines[a].replace(b"\t", b"\r", 2)
    lines[b] = b"garbage\tline"
    block = b"\n".join(lines) + b"\n"
    res = get_parser("zeek").parse(block, "z", 1)
    assert [(r.reason, r.source) for r in res.rejects] == [("bad_line", f"z:{a + 1}"),
                                                          ("field_count", f"z:{b + 1}")]
    assert res.flows.num_rows == len(data_rows) - 2
    assert res.skipped == {"header": len(lines) - len(data_rows)}
    check_accounting([res], block, "z")


@pytest.mark.parametrize("fmt", ["aws-vpc", "zeek"])
def test_crlf_line_ends_read_like_lf(fmt: str) -> None:
    data = b"\n".join(LINES[fmt]) + b"\n"
    lf = get_parser(fmt).parse(data, "f", 1)
    crlf = get_parser(fmt).parse(data.replace(b"\n", b"\r\n"), "f", 1)
    assert crlf.flows.to_pylist() == lf.flows.to_pylist() and lf.flows.num_rows > 4
    assert crlf.skipped == lf.skipped and not crlf.rejects


def test_blank_and_whitespace_lines_are_not_records_and_do_not_shift_lines() -> None:
    lines = AWS_V2.splitlines()
    block = b"\n".join([lines[0], b"   ", b"\x0c", b"", b"\t", b"x y", lines[1]]) + b"\n"
    res = get_parser("aws-vpc").parse(block, "f", 10)
    assert res.flows.num_rows == 2
    assert [(r.reason, r.source, r.raw) for r in res.rejects] == [("not_aws_vpc", "f:15", b"x y")]


def test_byte_order_mark_at_a_files_start_is_not_part_of_the_first_record(
        tmp_path: Path) -> None:
    path = tmp_path / "bom.log"
    path.write_bytes(b"\xef\xbb\xbf" + AWS_V5)
    results = list(parse_file(path, get_parser("aws-vpc")))
    assert sum(r.flows.num_rows for r in results) == 4
    assert not [x for r in results for x in r.rejects]


# ---------------------------------------------------------------- any bytes


@st.composite
def mutated(draw: st.DrawFn, fmt: str) -> bytes:
    """Lines of real samples, shuffled and repeated, with odd bytes inserted or replaced."""
    pool = LINES[fmt]
    lines = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=24))
    if fmt == "zeek" and draw(st.booleans()):  # keep the header first most of the time
        lines = [ln for ln in pool if ln.startswith(b"#")] + lines
    out = bytearray(b"\n".join(lines) + draw(st.sampled_from([b"", b"\n", b"\r\n"])))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(out)))
        piece = draw(st.one_of(st.sampled_from(ODD), st.binary(min_size=1, max_size=4)))
        if draw(st.booleans()) and pos < len(out):
            out[pos:pos + len(piece)] = piece
        else:
            out[pos:pos] = piece
    return bytes(out)


PROPS = settings(max_examples=120, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("fmt", ["aws-vpc", "zeek"])
@PROPS
@given(data=st.data())
def test_every_line_is_a_flow_a_located_reject_or_a_counted_skip(fmt: str,
                                                                   data: st.DataObject) -> None:
    block = data.draw(mutated(fmt))
    check_accounting([get_parser(fmt).parse(block, "p", 1)], block, "p")


@pytest.mark.parametrize("fmt", ["aws-vpc", "zeek"])
@PROPS
@given(data=st.data(), block_bytes=st.integers(256, 1200))
def test_line_accounting_holds_across_file_blocks(fmt: str, data: st.DataObject,
                                                  block_bytes: int) -> None:
    content = data.draw(mutated(fmt))
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(source_base, "BLOCK_BYTES", block_bytes)
        path = Path(tmp) / "in.log"
        path.write_bytes(content)
        results = list(parse_file(path, get_parser(fmt)))
        check_accounting(results, content.removeprefix(b"\xef\xbb\xbf"), str(path))


@pytest.mark.parametrize("fmt", ["aws-vpc", "zeek"])
@pytest.mark.parametrize("no_ext", ["", "1"], ids=["C", "pure-python"])
@PROPS
@given(data=st.data())
def test_line_accounting_holds_for_kafka_messages(fmt: str, no_ext: str,
                                                  data: st.DataObject) -> None:
    """Lines as raw messages (one or several per message): every line is counted once and
    every reject names the offset of the message that holds its line."""
    lines = data.draw(mutated(fmt)).split(b"\n")
    values: list[bytes] = []
    while lines:
        k = data.draw(st.integers(1, 3))
        values.append(b"\n".join(lines[:k]))
        lines = lines[k:]
    offsets = list(range(100, 100 + len(values)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGFLOW_NO_EXT", no_ext)
        got = parse_messages(get_parser(fmt), values, offsets, max_record_bytes=1 << 20)
    expected = sum(len(records_of(v)) or 1 for v in values)  # a blank message: one reject
    assert got.records_in == got.flows.num_rows + len(got.rejects)
    assert got.records_in + sum(got.skipped.values()) == expected
    assert len(got.offsets) == got.flows.num_rows
    by_offset = dict(zip(offsets, values, strict=True))
    for r in got.rejects:
        value = by_offset[r.offset]
        if r.reject.reason == EMPTY:
            assert not value.strip()
        else:
            assert r.raw in records_of(value).values(), (r.reject.reason, r.raw, value)


# ---------------------------------------------------------------- the replay summary


def test_replay_counts_every_line_and_prints_skips_by_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = AWS_V5.splitlines()
    lines[2] = lines[2].replace(b" 6 ", b" 6\r ", 1)
    path = tmp_path / "flows.log"
    path.write_bytes(b"\r\n".join([*lines, b"", b"junk"]) + b"\r\n")
    dead = tmp_path / "dead.jsonl"
    inv = Inventory([entry_from_record({"cidr": "10.0.0.0/8", "app": "a", "namespace": "n"})])
    s = replay([path], inv, CoreSettings(audit_days=1), dead_letter_path=dead)
    assert (s.flows, s.rejected, dict(s.skip_reasons)) == (3, 2, {"header": 1, "nodata": 1})
    assert s.records == s.flows + s.rejected + sum(s.skip_reasons.values()) == 7
    letters = [orjson.loads(x) for x in dead.read_bytes().splitlines()]
    assert [(d["reason"], d["source"]) for d in letters] == [
        ("bad_line", f"{path}:3"), ("not_aws_vpc", f"{path}:8")]
    print_replay_summary(s, store_url=None)
    out = capsys.readouterr().out
    assert "7 records, 3 flows, 2 rejected, 2 skipped" in out
    assert "  skipped (not flows)    header 1, nodata 1\n" in out


# ---------------------------------------------------------------- JSON line formats


def _canonical_lines() -> list[bytes]:
    rows = [{"start": 1767571200 + i, "end": 1767571201 + i, "src_ip": f"10.0.0.{i + 1}",
             "dst_ip": "10.0.1.1", "src_port": 40000 + i, "dst_port": 443, "proto": 6,
             "bytes": 100 * i, "packets": 2} for i in range(6)]
    rows.append({"start": "2026-01-05T00:00:00Z", "src_ip": "10.0.0.9", "dst_ip": "10.0.1.1",
                 "dst_port": 80, "proto": "tcp", "src_workload": {"app": "a", "namespace": "n"}})
    return [orjson.dumps(r) for r in rows]


JSON_LINES = {
    "gcp-vpc": (FIX / "gcp/vpc-flows.jsonl").read_bytes().splitlines(),
    "hubble": (FIX / "hubble/basic-sample-10-flows.json").read_bytes().splitlines(),
    "goflow2": (FIX / "goflow/goflow2-snake.json").read_bytes().splitlines(),
    "suricata": (FIX / "suricata/eve.json").read_bytes().splitlines(),
    "zeek": (FIX / "zeek/conn.json").read_bytes().splitlines(),
    "canonical": _canonical_lines(),
}
JSON_ODD = [*ODD, b"}", b'"', b",", b"[", b"null", b"}\n{"]


@st.composite
def mutated_json(draw: st.DrawFn, fmt: str) -> bytes:
    lines = draw(st.lists(st.sampled_from(JSON_LINES[fmt]), min_size=1, max_size=16))
    out = bytearray(b"\n".join(lines) + draw(st.sampled_from([b"", b"\n", b"\r\n"])))
    for _ in range(draw(st.integers(0, 5))):
        pos = draw(st.integers(0, len(out)))
        piece = draw(st.one_of(st.sampled_from(JSON_ODD), st.binary(min_size=1, max_size=3)))
        if draw(st.booleans()) and pos < len(out):
            out[pos:pos + len(piece)] = piece
        else:
            out[pos:pos] = piece
    return bytes(out)


def test_json_objects_spread_over_lines_or_sharing_one_are_not_misread() -> None:
    """Arrow's JSON reader ignores line ends: ``{`` + newline + the rest read as one record
    for two lines, two objects on one line as two; each line is one record (rejected)."""
    good = JSON_LINES["hubble"]
    block = b"\n".join([good[0], b"{\r", good[1][1:], good[2] + b" " + good[3], good[4]])
    res = get_parser("hubble").parse(block, "h", 1)
    assert res.flows.num_rows == 2
    assert [(r.reason, r.source) for r in res.rejects] == [
        ("bad_json", "h:2"), ("bad_json", "h:3"), ("bad_json", "h:4")]
    check_accounting([res], block, "h")
    canon = JSON_LINES["canonical"]
    block = b"\n".join([canon[6], b"{", canon[0][1:], canon[1] + canon[2]])
    res = get_parser("canonical").parse(block, "c", 1)
    assert res.flows.num_rows == 1 and [r.source for r in res.rejects] == ["c:2", "c:3", "c:4"]


@pytest.mark.parametrize("fmt", list(JSON_LINES))
@PROPS
@given(data=st.data())
def test_every_json_line_is_a_flow_a_located_reject_or_a_counted_skip(
        fmt: str, data: st.DataObject) -> None:
    block = data.draw(mutated_json(fmt))
    check_accounting([get_parser(fmt).parse(block, "p", 1)], block, "p")
