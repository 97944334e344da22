"""What every flow source parser returns, and the file reader that feeds parsers blocks.

A parser turns a block of bytes (whole lines) into a :data:`FLOW_SCHEMA` table plus
:class:`Reject` records; it never raises on bad records. Parser objects are created per
input (file, topic partition) so formats with headers (Zeek, AWS custom formats) can keep
header state between blocks.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from pipeline.core.columns import Reject, empty_flows
from pipeline.core.normalize import RowError
from pipeline.errors import InputError
from pipeline.sources.flatjson import count_lines

BLOCK_BYTES = 8 << 20  # bytes handed to a parser at once (cut at a line end)
MAX_DOCUMENT_BYTES = 1 << 30  # whole-document formats (Azure blobs) larger than this are refused
RAW_KEEP = 4096  # bytes of a rejected record kept for the dead-letter sink


@dataclass(slots=True)
class ParseResult:
    """Good rows plus rejects from one block."""

    flows: pa.Table = field(default_factory=empty_flows)
    rejects: list[Reject] = field(default_factory=list)
    records_in: int = 0  # records seen in the block (good + rejected)
    # lines that are not flow records (headers, NODATA, other event types), by reason; every
    # non-blank line of a block is a flow, a reject or one of these
    skipped: dict[str, int] = field(default_factory=dict)
    content_key: bytes = b""  # set by parse_file: digest of the input's bytes up to this block


class BlockParser(Protocol):
    """A per-input parser. ``whole_document`` parsers get the entire input in one call."""

    format: str
    whole_document: bool

    def parse(self, block: bytes, source: str, first_line: int) -> ParseResult: ...


def rejects_from_rows(
    errors: list[RowError], lines: list[bytes], source: str, first_line: int
) -> list[Reject]:
    """Map normalisation row errors back to their raw lines (``lines[i]`` is row ``i``)."""
    out = []
    for e in errors:
        raw = lines[e.row] if e.row < len(lines) else b""
        out.append(Reject(e.reason, e.detail, raw[:RAW_KEEP], f"{source}:{first_line + e.row}"))
    return out


def open_binary(path: Path, on_read: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """Yield raw chunks of a plain or gzip file; unreadable files raise InputError.

    ``on_read(offset)`` gets the position reached in the file as stored (compressed) after
    each chunk, for progress displays."""
    try:
        with path.open("rb") as fh:
            magic = fh.read(2)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}; check the path") from exc
    opener: Callable[..., object] = gzip.open if magic == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as fh:  # type: ignore[operator,attr-defined]
            stored = getattr(fh, "fileobj", fh)  # gzip: the compressed file underneath
            while True:
                chunk = fh.read(BLOCK_BYTES)  # type: ignore[attr-defined]
                if not chunk:
                    return
                if on_read is not None:
                    on_read(stored.tell())
                yield chunk
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read {path}: {exc}; is it a complete gzip or text file?") from exc


def iter_line_blocks(
    path: Path, on_read: Callable[[int], None] | None = None
) -> Iterator[tuple[bytes, int]]:
    """Yield (block of whole lines, number of its first line, 1-based) from a file; a UTF-8
    byte-order mark at the file's start is left out (it is not part of the first record).

    Each block is copied once after the read (the previous chunk's partial last line joined
    to this chunk's whole lines), or not at all when a chunk ends at a line end."""
    pending = b""
    line_no = 1
    first = True
    for chunk in open_binary(path, on_read):
        if first:
            chunk = chunk.removeprefix(b"\xef\xbb\xbf")
            first = False
        cut = chunk.rfind(b"\n")
        if cut == -1:
            pending += chunk
            if len(pending) > 4 * BLOCK_BYTES:
                raise InputError(f"{path}: a line is longer than {4 * BLOCK_BYTES} bytes; "
                                 "is this a line-oriented flow file?")
            continue
        if pending:
            block = b"".join((pending, memoryview(chunk)[: cut + 1]))
        else:
            block = chunk if cut + 1 == len(chunk) else chunk[: cut + 1]
        pending = chunk[cut + 1 :]
        yield block, line_no
        line_no += count_lines(block)
    if pending.strip():
        yield pending, line_no


def read_document(path: Path, on_read: Callable[[int], None] | None = None) -> bytes:
    """The whole (decompressed) file, for formats that are one JSON document."""
    parts: list[bytes] = []
    size = 0
    for chunk in open_binary(path, on_read):
        size += len(chunk)
        if size > MAX_DOCUMENT_BYTES:
            raise InputError(f"{path}: larger than {MAX_DOCUMENT_BYTES} bytes as one document")
        parts.append(chunk)
    return b"".join(parts)


def parse_file(path: Path, parser: BlockParser, *, seed: bytes = b"",
               on_read: Callable[[int], None] | None = None) -> Iterator[ParseResult]:
    """Run ``parser`` over a file block by block (``on_read``: see :func:`open_binary`).

    Each result carries a ``content_key``: SHA-256 chained over ``seed`` and the file's
    (decompressed) bytes up to the end of its block. It names the block by what was read,
    not where from, so a copy of a file at another path, name or compression gets the same
    keys, and the same bytes after a different beginning (another header) get other keys.
    """
    source = str(path)
    chain = hashlib.sha256(seed)
    if parser.whole_document:
        doc = read_document(path, on_read)
        chain.update(doc)
        result = parser.parse(doc, source, 1)
        result.content_key = chain.digest()
        yield result
        return
    with ThreadPoolExecutor(1, thread_name_prefix="segflow-hash") as hasher:
        for block, first_line in iter_line_blocks(path, on_read):
            # hashlib releases the GIL: the block is hashed while it is parsed
            hashed = hasher.submit(chain.update, block)  # block i's key covers blocks 0..i
            result = parser.parse(block, source, first_line)
            hashed.result()
            result.content_key = chain.digest()
            yield result


__all__ = [
    "BLOCK_BYTES",
    "BlockParser",
    "ParseResult",
    "count_lines",
    "iter_line_blocks",
    "open_binary",
    "parse_file",
    "read_document",
    "rejects_from_rows",
]
