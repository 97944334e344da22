"""Fast path for flat NDJSON records: the C decoder in :mod:`pipeline._flatjson`, as Arrow.

The decoder takes only lines it can decode exactly (one object of known scalar fields, plain
ASCII strings, exactly representable numbers) and names every other non-blank line as *bad*;
a parser decodes those with its general path, which also explains rejects. Without the
compiled extension (``SEGFLOW_NO_EXT=1``, or a build without a C compiler) :func:`decode`
returns None and parsers use their general path for everything.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import pyarrow as pa

_ext: ModuleType | None
try:
    _ext = importlib.import_module("pipeline._flatjson")
except ImportError:  # pragma: no cover - built by `pip install` wherever a C compiler exists
    _ext = None

_KINDS = {pa.float64(): "f", pa.int64(): "i", pa.string(): "s"}


def available() -> bool:
    """True when the compiled decoder is present and not disabled."""
    return _ext is not None and os.environ.get("SEGFLOW_NO_EXT", "") in ("", "0")


@dataclass(frozen=True, slots=True)
class FlatSchema:
    """Field names and Arrow types (float64, int64 or string) the fast path decodes."""

    schema: pa.Schema

    @property
    def names(self) -> tuple[bytes, ...]:
        return tuple(f.name.encode() for f in self.schema)

    @property
    def kinds(self) -> bytes:
        return "".join(_KINDS[f.type] for f in self.schema).encode()


@dataclass(frozen=True, slots=True)
class FlatRows:
    """Decoded rows of a block, where they came from, and the lines left to the caller."""

    columns: dict[str, pa.Array]
    rows: int
    line_of_row: np.ndarray  # int32, 0-based line number of every row
    bad_lines: np.ndarray  # int32, 0-based numbers of the non-blank lines not decoded
    records: int  # non-blank lines


def decode(block: bytes, schema: FlatSchema) -> FlatRows | None:
    """Decode ``block``; None when the fast path is unavailable for it."""
    if not available():
        return None
    assert _ext is not None
    out = _ext.decode(block, schema.names, schema.kinds)
    if out is None:
        return None
    rows, line_of_row, bad, records, raw_cols = out
    columns: dict[str, pa.Array] = {}
    for f, col in zip(schema.schema, raw_cols, strict=True):
        valid = pa.py_buffer(np.packbits(np.frombuffer(col[-1], np.uint8), bitorder="little"))
        if f.type == pa.string():
            buffers = [valid, pa.py_buffer(col[0]), pa.py_buffer(col[1])]
        else:
            buffers = [valid, pa.py_buffer(col[0])]
        columns[f.name] = pa.Array.from_buffers(f.type, rows, buffers)
    return FlatRows(columns, rows, np.frombuffer(line_of_row, np.int32),
                    np.frombuffer(bad, np.int32), records)


def count_lines(block: bytes) -> int:
    """Number of b"\\n" in ``block``: one memchr pass in C (``bytes.count`` without it, or
    with a decoder built before this function existed)."""
    fast = getattr(_ext, "count_lines", None)
    return int(fast(block)) if fast is not None else block.count(b"\n")


def join_lines(values: tuple[bytes, ...], max_bytes: int) -> tuple[bytes, np.ndarray] | None:
    """Kafka message values joined with newlines into one block, and the message index of
    every line; None when some value is empty, over ``max_bytes`` or holds an empty line.
    Only call when :func:`available`."""
    assert _ext is not None
    out = _ext.join_lines(values, max_bytes)
    if out is None:
        return None
    block, message_of_line = out
    return block, np.frombuffer(message_of_line, np.int32)


__all__ = ["FlatRows", "FlatSchema", "available", "count_lines", "decode", "join_lines"]
