"""Raw Kafka messages of one partition → one parsed flow block, every row tied to its offset.

Collectors write one record per message or NDJSON of many; either way the values of a
``getmany`` batch are joined into one block of lines and parsed in a single parser call
(per-message parsing would cost more than the parsing itself). Parsers report rejects by
line number, so good rows map back to their message offsets by elimination. When that
mapping does not add up (formats with header lines or multi-flow documents) the messages
are parsed one at a time instead, which is always exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby, repeat
from operator import itemgetter
from typing import cast

import numpy as np
import pyarrow as pa

from pipeline.core.columns import Reject, empty_flows
from pipeline.sources import flatjson
from pipeline.sources.base import BlockParser, ParseResult

TOO_LARGE = "too_large"
EMPTY = "empty_message"


@dataclass(frozen=True, slots=True)
class RawReject:
    """A rejected record and the raw offset it came from."""

    reject: Reject
    offset: int
    raw: bytes  # the whole record (the parser's copy may be truncated)


@dataclass(slots=True)
class ParsedRaw:
    """Good rows (with their offsets) and rejects from one partition's messages."""

    flows: pa.Table = field(default_factory=empty_flows)
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rejects: list[RawReject] = field(default_factory=list)
    records_in: int = 0  # flows + rejects
    skipped: dict[str, int] = field(default_factory=dict)  # lines that are not flows, by reason

    def count(self, result: ParseResult) -> None:
        """Add a parser result's record and skip counts."""
        self.records_in += result.records_in
        for why, k in result.skipped.items():
            self.skipped[why] = self.skipped.get(why, 0) + k


def _reject_line(r: Reject) -> int | None:
    try:
        return int(r.source.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def parse_messages(
    parser: BlockParser,
    values: Sequence[bytes | None],
    offsets: Sequence[int],
    *,
    max_record_bytes: int,
) -> ParsedRaw:
    """Parse the message ``values`` (with their ``offsets``) of one partition."""
    if parser.whole_document:
        return _documents(parser, values, offsets)
    if values:
        bulk = _plain_block(values, offsets, max_record_bytes)
        if bulk is not None:
            block, line_offsets = bulk
            return _parse_block(parser, block, line_offsets, ParsedRaw())
    chunks: list[bytes] = []  # runs of whole, non-empty lines
    chunk_offsets: list[int] = []
    chunk_lines: list[int] = []
    out = ParsedRaw()
    for value, off in zip(values, offsets, strict=True):
        if not value or value.isspace():
            raw = value or b""
            out.rejects.append(RawReject(Reject(EMPTY, "the message holds no record", raw[:4096]),
                                         off, raw))
            continue
        v = value.rstrip(b"\r\n")
        if len(v) <= max_record_bytes and b"\n\n" not in v and v[:1] != b"\n":
            chunks.append(v)  # one record, or NDJSON without oddities: no split needed
            chunk_offsets.append(off)
            chunk_lines.append(v.count(b"\n") + 1)
            continue
        for line in v.split(b"\n"):
            if not line or line.isspace():
                continue
            if len(line) > max_record_bytes:
                detail = f"record of {len(line)} bytes is over the {max_record_bytes}-byte limit"
                out.rejects.append(RawReject(Reject(TOO_LARGE, detail, line[:4096]), off, line))
                continue
            chunks.append(line)
            chunk_offsets.append(off)
            chunk_lines.append(1)
    out.records_in = len(out.rejects)
    if not chunks:
        return out
    line_offsets = np.repeat(np.asarray(chunk_offsets, dtype=np.int64), chunk_lines)
    out = _parse_block(parser, b"\n".join(chunks), line_offsets, out)
    out.rejects.sort(key=lambda r: r.offset)  # dead letters in input order
    return out


def _plain_block(values: Sequence[bytes | None], offsets: Sequence[int], max_record_bytes: int
                 ) -> tuple[bytes, np.ndarray] | None:
    """The common case without a Python loop over messages: every message is one record or
    NDJSON with no empty line and no record over the limit. Returns (the messages joined
    into one block, the raw offset of each of its lines), or None for the per-message path."""
    if flatjson.available():  # one pass in C, without the GIL
        joined = flatjson.join_lines(tuple(values), max_record_bytes)  # type: ignore[arg-type]
        if joined is None:
            return None
        block, message_of_line = joined
        return block, np.asarray(offsets, dtype=np.int64)[message_of_line]
    if None in values:
        return None
    vals = cast(Sequence[bytes], values)
    sizes = list(map(len, vals))
    if min(sizes) == 0 or max(sizes) > max_record_bytes:
        return None
    block = b"\n".join(vals)
    if b"\n\n" in block or block[:1] == b"\n" or block[-1:] == b"\n":
        return None
    lines = block.count(b"\n") + 1
    if lines == len(vals):  # one record per message
        return block, np.asarray(offsets, dtype=np.int64)
    per_message = np.fromiter(map(bytes.count, vals, repeat(b"\n")), dtype=np.int64,
                              count=len(vals)) + 1
    return block, np.repeat(np.asarray(offsets, dtype=np.int64), per_message)


def _parse_block(parser: BlockParser, block: bytes, line_offsets: np.ndarray,
                 out: ParsedRaw) -> ParsedRaw:
    """Parse a block of one-record lines (``line_offsets[i]`` is line ``i``'s message) in
    one call; map rows and rejects back to their offsets by elimination."""
    result = parser.parse(block, "", 0)
    n = len(line_offsets)
    good = np.ones(n, dtype=bool)
    mapped: list[tuple[int, Reject]] = []
    for r in result.rejects:
        i = _reject_line(r)
        if i is None or not 0 <= i < n or not good[i]:
            return _by_message(parser, block.split(b"\n"), line_offsets.tolist(), out)
        good[i] = False
        mapped.append((i, r))
    if int(good.sum()) != result.flows.num_rows:  # skipped or blank lines: which ones?
        return _by_message(parser, block.split(b"\n"), line_offsets.tolist(), out)
    out.count(result)
    out.flows = result.flows
    out.offsets = line_offsets[good]
    if mapped:
        lines = block.split(b"\n")
        out.rejects.extend(RawReject(r, int(line_offsets[i]), lines[i].removesuffix(b"\r"))
                           for i, r in mapped)
    return out


def _by_message(
    parser: BlockParser, lines: list[bytes], line_offsets: list[int], out: ParsedRaw
) -> ParsedRaw:
    """Exact fallback: each message's lines parsed on their own (its rows get its offset)."""
    tables: list[pa.Table] = []
    offs: list[np.ndarray] = []
    for off, group in groupby(zip(line_offsets, lines, strict=True), key=itemgetter(0)):
        value = b"\n".join(line for _, line in group)
        result = parser.parse(value, "", 0)
        out.count(result)
        out.rejects.extend(RawReject(r, off, r.raw) for r in result.rejects)
        if not result.flows.num_rows and not result.rejects and value.isspace():
            out.rejects.append(RawReject(Reject(EMPTY, "the message holds no record", value),
                                         off, value))
            out.records_in += 1
        if result.flows.num_rows:
            tables.append(result.flows)
            offs.append(np.full(result.flows.num_rows, off, dtype=np.int64))
    return _with_flows(out, tables, offs)


def _with_flows(out: ParsedRaw, tables: list[pa.Table], offs: list[np.ndarray]) -> ParsedRaw:
    """Attach the per-message tables (and each row's raw offset) to ``out``."""
    if tables:
        out.flows = pa.concat_tables(tables)
        out.offsets = np.concatenate(offs)
    return out


def _documents(
    parser: BlockParser, values: Sequence[bytes | None], offsets: Sequence[int]
) -> ParsedRaw:
    """Whole-document formats: every message is one document."""
    out = ParsedRaw()
    tables: list[pa.Table] = []
    offs: list[np.ndarray] = []
    for value, off in zip(values, offsets, strict=True):
        if not value or value.isspace():
            out.rejects.append(RawReject(Reject(EMPTY, "the message holds no document", b""),
                                         off, b""))
            out.records_in += 1
            continue
        result = parser.parse(value, "", 0)
        out.count(result)
        out.rejects.extend(RawReject(r, off, r.raw) for r in result.rejects)
        if result.flows.num_rows:
            tables.append(result.flows)
            offs.append(np.full(result.flows.num_rows, off, dtype=np.int64))
    return _with_flows(out, tables, offs)


__all__ = ["EMPTY", "TOO_LARGE", "ParsedRaw", "RawReject", "parse_messages"]
