"""Raw Kafka messages → one parsed block: the bulk paths equal parsing message by message."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.sources import get_parser
from pipeline.stream.rawblock import EMPTY, TOO_LARGE, ParsedRaw, parse_messages

LIMIT = 400


def record(i: int) -> bytes:
    return orjson.dumps({"start": 1767571200 + i, "src_ip": f"10.0.0.{i % 250 + 1}",
                         "dst_ip": "10.0.1.1", "dst_port": 443, "proto": 6, "bytes": i})


def one_by_one(values: list[bytes], offsets: list[int]) -> ParsedRaw:
    """Reference: every message parsed on its own (what the stage did before batching)."""
    out = ParsedRaw()
    for v, off in zip(values, offsets, strict=True):
        part = parse_messages(get_parser("canonical"), [v], [off], max_record_bytes=LIMIT)
        out.records_in += part.records_in
        out.rejects.extend(part.rejects)
        if part.flows.num_rows:
            out.flows = pa.concat_tables([out.flows, part.flows])
            out.offsets = np.concatenate([out.offsets, part.offsets])
    return out


def summary(p: ParsedRaw) -> tuple[object, ...]:
    return (p.records_in, p.flows.to_pylist(), p.offsets.tolist(),
            [(r.offset, r.reject.reason, r.raw) for r in p.rejects])


@pytest.mark.parametrize("per_message", [1, 3, 100])
def test_ndjson_messages_map_every_row_to_its_offset(per_message: int) -> None:
    lines = [record(i) for i in range(300)]
    values = [b"\n".join(lines[i:i + per_message]) for i in range(0, 300, per_message)]
    offsets = [1000 + 2 * i for i in range(len(values))]
    got = parse_messages(get_parser("canonical"), values, offsets, max_record_bytes=LIMIT)
    assert got.records_in == 300 and not got.rejects
    assert got.offsets.tolist() == [1000 + 2 * (i // per_message) for i in range(300)]
    assert summary(got) == summary(one_by_one(values, offsets))


_message = st.one_of(
    st.integers(0, 999).map(record),
    st.lists(st.integers(0, 999).map(record), min_size=2, max_size=4).map(b"\n".join),
    st.just(b""), st.just(b"   "), st.just(b"\n"), st.just(b"{bad"),
    st.integers(0, 999).map(lambda i: record(i) + b"\n"),
    st.integers(0, 999).map(lambda i: record(i) + b"\n\n" + record(i + 1)),
    st.just(b"{" + b" " * LIMIT + b"}"),
)


@pytest.mark.parametrize("no_ext", ["", "1"], ids=["C", "pure-python"])
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(_message, min_size=1, max_size=12))
def test_batched_equals_one_by_one(values: list[bytes], no_ext: str) -> None:
    offsets = list(range(50, 50 + len(values)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGFLOW_NO_EXT", no_ext)
        got = parse_messages(get_parser("canonical"), values, offsets, max_record_bytes=LIMIT)
    assert summary(got) == summary(one_by_one(values, offsets))
    reasons = {r.reject.reason for r in got.rejects}
    if b"" in values or b"   " in values:
        assert EMPTY in reasons
    if any(len(v) > LIMIT for v in values):
        assert TOO_LARGE in reasons
