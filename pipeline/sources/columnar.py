"""Vectorised building blocks shared by the format parsers.

JSON text columns (``meta``, labels) built with Arrow compute, nested-path extraction from
Arrow tables and from decoded dicts, tolerant column construction, and :func:`finish`, which
runs :func:`~pipeline.core.normalize.normalize` on the usable rows and maps every problem
back to its raw record.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.columns import Reject
from pipeline.core.normalize import normalize, parse_time_text
from pipeline.sources.base import RAW_KEEP, ParseResult

Path = tuple[str, ...]
NULL_TEXT = pa.scalar(None, pa.string())
_NEEDS_ESCAPE = r'[\\"\x00-\x1f\x7f]'


class ShapeError(Exception):
    """A JSON value had an unexpected type for the columnar fast path."""


# ---------------------------------------------------------------- JSON text columns


def is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def as_text(arr: pa.Array) -> pa.Array:
    """Any scalar column as ``string`` (dictionary and large strings decoded)."""
    if pa.types.is_string(arr.type):
        return arr
    if pa.types.is_dictionary(arr.type):
        return as_text(arr.dictionary_decode())
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_floating(arr.type):
        arr = pc.if_else(pc.is_finite(arr), arr, pa.scalar(None, arr.type))
    try:
        return pc.cast(arr, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([_dumps(v) for v in _pylist(arr)], pa.string())


def json_string(arr: pa.Array) -> pa.Array:
    """JSON string literals (quoted, escaped); nulls stay null."""
    arr = as_text(arr)
    if pc.any(pc.match_substring_regex(arr, _NEEDS_ESCAPE)).as_py():
        enc = arr.dictionary_encode()
        quoted = pa.array(
            [orjson.dumps(v).decode() for v in enc.dictionary.to_pylist()], pa.string()
        )
        return quoted.take(enc.indices)
    return pc.binary_join_element_wise('"', arr, '"', "")


def json_value(arr: pa.Array) -> pa.Array:
    """JSON value text for each element (null when the element is null)."""
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_boolean(t):
        return pc.if_else(arr, "true", "false")
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return as_text(arr)
    if is_text(t) or pa.types.is_dictionary(t):
        return json_string(arr)
    return pa.array([_dumps(v) for v in _pylist(arr)], pa.string())


def _pylist(arr: pa.Array) -> list[Any]:
    """Python values; columns Arrow cannot convert back (e.g. list<null>) become nulls."""
    try:
        return arr.to_pylist()
    except (pa.ArrowException, ValueError):
        return [None] * len(arr)


def _dumps(v: Any) -> str | None:
    return None if v is None else orjson.dumps(v, default=str).decode()


def json_object(items: Sequence[tuple[str, pa.Array | None]], n: int) -> pa.Array:
    """One JSON object text per row from (key, column); null values are left out, ``{}`` is null.

    Each column becomes ``"key":value,`` fragments (built once per distinct value for text),
    the fragments are concatenated and the trailing comma trimmed.
    """
    parts = []
    for key, arr in items:
        if arr is None or pa.types.is_null(arr.type) or arr.null_count == len(arr):
            continue
        prefix = orjson.dumps(key).decode() + ":"
        if is_text(arr.type) or pa.types.is_dictionary(arr.type):
            enc = arr if pa.types.is_dictionary(arr.type) else arr.dictionary_encode()
            frag = pc.binary_join_element_wise(prefix, json_string(enc.dictionary), ",", "")
            parts.append(frag.take(enc.indices).fill_null(""))
        else:
            parts.append(pc.binary_join_element_wise(prefix, json_value(arr), ",", "")
                         .fill_null(""))
    if not parts or n == 0:
        return pa.nulls(n, pa.string())
    body = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "")
    # values never end with a comma, so trimming commas only removes the trailing separator
    obj = pc.binary_join_element_wise("{", pc.ascii_rtrim(body, ","), "}", "")
    empty = pc.equal(body, "")
    return pc.if_else(empty, NULL_TEXT, obj) if pc.any(empty).as_py() else obj


def map_distinct(arr: pa.Array, fn: Callable[[Any], Any], typ: pa.DataType) -> pa.Array:
    """Apply ``fn`` once per distinct value (flows repeat values heavily); nulls map to None."""
    if len(arr) == 0:
        return pa.array([], typ)
    enc = arr.dictionary_encode() if not pa.types.is_dictionary(arr.type) else arr
    out = pa.array([fn(v) for v in enc.dictionary.to_pylist()], typ)
    return out.take(enc.indices)


# ---------------------------------------------------------------- column helpers


def column(values: list[Any]) -> pa.Array:
    """An Arrow column from Python values; mixed or odd types fall back to text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError,
            TypeError, ValueError):
        out: list[str | None] = []
        for v in values:
            if v is None or isinstance(v, str):
                out.append(v)
            elif isinstance(v, dict | list):
                out.append(orjson.dumps(v, default=str).decode())
            else:
                out.append(str(v))
        return pa.array(out, pa.string())


_BUILD_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError,
                 TypeError, ValueError)


def column_or_odd(values: list[Any]) -> tuple[pa.Array, np.ndarray | None]:
    """:func:`column`, except that when objects or lists disagree in shape (a label list
    holding a number), the common shape wins and the rows that do not fit it come back as a
    mask (their values null) for the caller to reject: one odd record must not turn every
    record's value into text."""
    try:
        return pa.array(values), None
    except _BUILD_ERRORS:
        pass
    shapes: Counter[pa.DataType] = Counter()
    scalars = 0
    for v in values:
        if v is not None and not isinstance(v, dict | list):
            scalars += 1
        elif isinstance(v, dict | list):
            try:
                t = pa.array([v]).type
            except _BUILD_ERRORS:
                continue
            if "null" not in str(t):  # [] or {"a": null} fit any shape: they do not vote
                shapes[t] += 1
    if shapes and shapes.most_common(1)[0][1] > scalars:  # else scalars win, as text
        typ = shapes.most_common(1)[0][0]
        odd = np.zeros(len(values), dtype=bool)
        kept: list[Any] = []
        for i, v in enumerate(values):
            try:
                pa.array([v], type=typ)
                kept.append(v)
            except _BUILD_ERRORS:
                odd[i] = True
                kept.append(None)
        try:
            return pa.array(kept, type=typ), odd
        except _BUILD_ERRORS:
            pass
    return column(values), None


def chunk(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        return arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return arr


def is_scalar(t: pa.DataType) -> bool:
    return not (pa.types.is_nested(t) or pa.types.is_null(t))


def coalesce(arrs: Sequence[pa.Array | None]) -> pa.Array | None:
    """First non-null value per row across columns; mixed scalar types meet as text.

    Nested values (objects, lists) only survive when every candidate has that same type.
    """
    present = [a for a in arrs if a is not None and not pa.types.is_null(a.type)]
    if not present:
        return None
    if len({a.type for a in present}) > 1:
        present = [as_text(a) for a in present if is_scalar(a.type)]
        if not present:
            return None
    if len(present) == 1:
        return present[0]
    try:
        return pc.coalesce(*present)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return present[0]


def table_path(table: pa.Table, path: Path) -> pa.Array | None:
    """Nested field of a JSON-decoded table; None when absent, ShapeError if not an object.

    Walks the chunked struct columns and combines only the leaf, so a wide nested column is
    never copied as a whole.
    """
    if path[0] not in table.column_names:
        return None
    arr: pa.ChunkedArray = table.column(path[0])
    for key in path[1:]:
        if pa.types.is_null(arr.type):
            return None
        if not pa.types.is_struct(arr.type):
            raise ShapeError(f"{'.'.join(path)} is not an object")
        if arr.type.get_field_index(key) < 0:
            return None
        arr = pc.struct_field(arr, key)
    return chunk(arr)


def dict_path(obj: Any, path: Path) -> Any:
    """Nested value of a decoded JSON object, None when absent or not an object on the way."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
        if obj is None:
            return None
    return obj


def num(arr: pa.Array | None, n: int, default: float = np.nan) -> np.ndarray:
    """Float values of a numeric (or numeric text) column; other values become ``default``."""
    if arr is None or pa.types.is_null(arr.type):
        return np.full(n, default, dtype=np.float64)
    if pa.types.is_boolean(arr.type):
        return np.asarray(pc.cast(arr, pa.float64()).fill_null(default), dtype=np.float64)
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        if not is_text(arr.type):
            return np.full(n, default, dtype=np.float64)
        try:
            arr = pc.cast(arr, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            arr = map_distinct(arr, _float_or_none, pa.float64())
    vals = np.asarray(pc.cast(arr, pa.float64(), safe=False).fill_null(default), dtype=np.float64)
    return np.where(np.isfinite(vals), vals, default)


def epoch_seconds(arr: pa.Array | None, n: int) -> np.ndarray:
    """Epoch seconds from numbers, numeric text or RFC 3339 text; NaN where absent or unreadable."""
    if arr is None or not is_text(arr.type):
        return num(arr, n)
    try:
        return num(pc.cast(arr, pa.float64()), n)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        ts = pc.cast(pc.cast(arr, pa.timestamp("ns", "UTC")), pa.int64())
        return num(pc.divide(pc.cast(ts, pa.float64(), safe=False), 1e9), n)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return num(map_distinct(arr, _time_or_none, pa.float64()), n)


def _time_or_none(v: Any) -> float | None:
    return parse_time_text(v) if isinstance(v, str) else None


def _float_or_none(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def first_item(arr: pa.Array | None, n: int) -> pa.Array | None:
    """First element of each list (null for empty or null lists); None when not a list column."""
    if arr is None or not pa.types.is_list(arr.type):
        return None
    lengths = np.asarray(pc.list_value_length(arr).fill_null(0))
    offsets = np.asarray(arr.offsets)[:-1]
    values = arr.values
    has = lengths > 0
    idx = pa.array(np.where(has, offsets, 0), pa.int64(), mask=~has)
    if len(values) == 0:
        return pa.nulls(n, values.type)
    return values.take(idx)


def struct_child(arr: pa.Array | None, key: str) -> pa.Array | None:
    if arr is None or not pa.types.is_struct(arr.type) or arr.type.get_field_index(key) < 0:
        return None
    return pc.struct_field(arr, key)


def as_bool(arr: pa.Array | None) -> pa.Array | None:
    """A boolean column; ``true``/``false`` text (what a boolean becomes when another record
    holds text in the same field) is read as booleans, anything else as null."""
    if arr is None:
        return None
    if pa.types.is_boolean(arr.type):
        return arr
    if not is_text(arr.type):
        return None
    low = pc.utf8_lower(arr)
    return pc.if_else(pc.equal(low, "true"), True,
                      pc.if_else(pc.equal(low, "false"), False, pa.scalar(None, pa.bool_())))


def text_or_none(arr: pa.Array | None) -> pa.Array | None:
    """Text version of a scalar column, None when absent or not scalar."""
    if arr is None or pa.types.is_null(arr.type):
        return None
    t = arr.type
    if pa.types.is_struct(t) or pa.types.is_list(t) or pa.types.is_map(t):
        return None
    return as_text(arr)


# ---------------------------------------------------------------- batch finishing


@dataclass(slots=True)
class Prepared:
    """Canonical columns for :func:`normalize`, plus rows to drop silently or reject up front."""

    columns: dict[str, pa.Array]
    n: int
    # rows that are not flow records: (mask, skip reason), counted in ParseResult.skipped
    skips: list[tuple[np.ndarray, str]] = field(default_factory=list)
    bad: list[tuple[np.ndarray, str, str]] = field(default_factory=list)  # (mask, reason, detail)


Locator = Callable[[int], tuple[str, bytes]]


def line_locator(block: bytes, source: str, first_line: int,
                 numbers: Sequence[int] | None = None) -> Locator:
    """Row i ↔ i-th non-blank line of ``block`` (or ``numbers[i]``); the split happens lazily."""
    cache: list[tuple[int, bytes]] = []

    def locate(row: int) -> tuple[str, bytes]:
        if not cache:
            for off, ln in enumerate(block.split(b"\n")):
                if ln.strip():
                    cache.append((first_line + off, ln.removesuffix(b"\r")))
        if row >= len(cache):
            return f"{source}:?", b""
        line_no, raw = cache[row]
        if numbers is not None and row < len(numbers):
            line_no = numbers[row]
        return f"{source}:{line_no}", raw[:RAW_KEEP]

    return locate


def reject_all(n: int, locate: Locator, reason: str, detail: str) -> list[Reject]:
    out = []
    for i in range(n):
        where, raw = locate(i)
        out.append(Reject(reason, detail, raw, where))
    return out


def finish(prep: Prepared, locate: Locator) -> ParseResult:
    """Normalise the usable rows; everything else becomes a located reject or is dropped."""
    n = prep.n
    rejects: list[tuple[int, str, str]] = []
    drop = np.zeros(n, dtype=bool)
    by_reason: dict[str, int] = {}
    for mask, why in prep.skips:
        bump(by_reason, why, int((mask & ~drop).sum()))
        drop |= mask
    skipped = int(drop.sum())
    for mask, reason, detail in prep.bad:
        new = mask & ~drop
        rejects.extend((int(i), reason, detail) for i in np.flatnonzero(new))
        drop |= new
    keep = np.flatnonzero(~drop)
    cols: Mapping[str, pa.Array] = prep.columns
    if len(keep) != n:
        idx = pa.array(keep, pa.int64())
        cols = {k: chunk(v).take(idx) for k, v in prep.columns.items()}
    flows, errors = normalize(cols, len(keep))
    rejects.extend((int(keep[e.row]), e.reason, e.detail) for e in errors)
    rejects.sort(key=lambda r: r[0])
    out = []
    for row, reason, detail in rejects:
        where, raw = locate(row)
        out.append(Reject(reason, detail, raw, where))
    return ParseResult(flows, out, n - skipped, skipped=by_reason)


def finish_csv(prep: Prepared, block: bytes, skipped_texts: Sequence[str], locate: Locator,
               reason: str, detail: str) -> ParseResult:
    """:func:`finish` for a block read by Arrow's CSV reader, whose ``invalid_row_handler``
    skipped the rows in ``skipped_texts`` (wrong field count): those become rejects and the
    remaining rows are lined up with their lines again."""
    if not skipped_texts:
        return finish(prep, locate)
    wrong = {t.rstrip("\r") for t in skipped_texts}
    lines = [ln.rstrip(b"\r") for ln in block.split(b"\n") if ln.strip()]
    is_wrong = [ln.decode("utf-8", "replace") in wrong for ln in lines]
    good = [i for i, w in enumerate(is_wrong) if not w]
    res = finish(prep, lambda r: locate(good[r]))
    for i in (i for i, w in enumerate(is_wrong) if w):
        where, raw = locate(i)
        res.rejects.append(Reject(reason, detail, raw, where))
    res.rejects.sort(key=lambda r: _line_no(r.source))
    res.records_in += sum(is_wrong)
    return res


def _line_no(source: str) -> int:
    tail = source.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def merge(results: Sequence[ParseResult]) -> ParseResult:
    """One result from the results of consecutive parts of a block."""
    results = [r for r in results if r.records_in or r.rejects or r.flows.num_rows or r.skipped]
    if not results:
        return ParseResult()
    if len(results) == 1:
        return results[0]
    skipped: dict[str, int] = {}
    for r in results:
        for why, k in r.skipped.items():
            bump(skipped, why, k)
    return ParseResult(
        pa.concat_tables([r.flows for r in results]),
        [x for r in results for x in r.rejects],
        sum(r.records_in for r in results),
        skipped=skipped,
    )


# ---------------------------------------------------------------- delimited text lines

BOM = b"\xef\xbb\xbf"
BAD_LINE = "bad_line"
_SPACE_LINE = re.compile(rb"\n[ \t\x0b\x0c]+\r?(?=\n|\Z)")  # literal prefix: fast
_SPACE_HEAD = re.compile(rb"[ \t\x0b\x0c]+\r?(?:\n|\Z)")


@dataclass(slots=True)
class TextLines:
    """The records of a block of delimited text (AWS, Zeek TSV) as Arrow's CSV reader must
    see them: row ``i`` of ``data`` is the record ``locate(i)`` reports.

    A line ends at ``\\n`` (a ``\\r`` before it is part of the line ending) and a blank line
    (whitespace only) is not a record. Arrow's reader also ends a row at a bare ``\\r``, keeps
    whitespace-only rows and drops a leading byte-order mark, so a block where that would
    differ is rebuilt without its blank lines, and a line holding a bare ``\\r`` is rejected
    (``bad_line``) instead of being read as two records. Invalid UTF-8 is replaced up front
    (Arrow cannot report a malformed row holding it).
    """

    data: bytes
    locate: Locator
    rejects: list[Reject]

    @property
    def rows(self) -> int:
        return count_lines(self.data)

    def add_rejects(self, res: ParseResult) -> ParseResult:
        """``res`` with the lines rejected up front added, in line order."""
        if self.rejects:
            res.rejects = sorted([*res.rejects, *self.rejects], key=lambda r: _line_no(r.source))
            res.records_in += len(self.rejects)
        return res


def text_lines(block: bytes, source: str, first_line: int) -> TextLines:
    """Split ``block`` into records the way :class:`TextLines` describes."""
    if _plain_text(block):
        return TextLines(_valid_utf8(block), line_locator(block, source, first_line), [])
    kept: list[bytes] = []
    numbers: list[int] = []
    rejects: list[Reject] = []
    for off, ln in enumerate(block.split(b"\n")):
        if ln[-1:] == b"\r":
            ln = ln[:-1]
        if not ln.strip():
            continue
        if b"\r" in ln:
            rejects.append(Reject(BAD_LINE, "a carriage return inside the line (lines end at a "
                                  "line feed)", ln[:RAW_KEEP], f"{source}:{first_line + off}"))
            continue
        kept.append(ln)
        numbers.append(first_line + off)
    data = b"\n".join(kept)

    def locate(row: int) -> tuple[str, bytes]:
        if row >= len(kept):
            return f"{source}:?", b""
        return f"{source}:{numbers[row]}", kept[row][:RAW_KEEP]

    # a leading empty line keeps a byte-order mark in the first row, as in the raw line
    return TextLines(_valid_utf8(b"\n" + data if data[:3] == BOM else data), locate, rejects)


def _plain_text(block: bytes) -> bool:
    """Whether Arrow's rows are already the block's records (no rebuild needed)."""
    if block[:3] == BOM or (b"\r" in block and block.count(b"\r") != block.count(b"\r\n")):
        return False
    return not (_SPACE_HEAD.match(block) or _SPACE_LINE.search(block))


def _valid_utf8(data: bytes) -> bytes:
    if data.isascii():
        return data
    try:
        data.decode()
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace").encode()
    return data


_NON_SPACE = re.compile(rb"\S")


def first_char(block: bytes) -> bytes:
    """The first non-whitespace byte of a block (b"" when blank), without copying it."""
    m = _NON_SPACE.search(block)
    return block[m.start() : m.start() + 1] if m else b""


def leading_line(block: bytes) -> bytes:
    """The first non-blank line of a block, without its line ending."""
    m = _NON_SPACE.search(block)
    if m is None:
        return b""
    end = block.find(b"\n", m.start())
    return block[m.start() : len(block) if end == -1 else end].rstrip(b"\r")


def json_rows_are_lines(block: bytes, rows: int) -> bool:
    """Whether a JSON reader's ``rows`` rows of ``block`` are its non-blank lines, in order.

    Arrow's JSON reader ignores line ends (two objects on one line are two rows, an object
    spread over lines is one), so its row i is line i only when every non-blank line holds
    one object: the counts match and each such line starts with ``{`` and ends with ``}``
    (a line that does cannot continue the previous one nor be continued by the next). One
    vectorised pass when every line is plain; otherwise line by line."""
    arr = np.frombuffer(block, np.uint8)
    nl = np.flatnonzero(arr == 10)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [len(arr)]))
    if len(ends) and starts[-1] == ends[-1]:  # the block ends with a line feed
        starts, ends = starts[:-1], ends[:-1]
    ends = ends - (arr[np.maximum(ends - 1, 0)] == 13)  # a \r before the line feed
    if (len(starts) == rows and (ends > starts).all() and (arr[starts] == 123).all()
            and (arr[ends - 1] == 125).all()):
        return True
    n = 0
    for line in block.split(b"\n"):
        if not line.strip():
            continue
        body = line.strip(b" \t\r")
        if body[:1] != b"{" or body[-1:] != b"}":
            return False
        n += 1
    return n == rows


def count_lines(block: bytes) -> int:
    return sum(1 for ln in block.split(b"\n") if ln.strip())


def bump(counters: dict[str, int], key: str, by: int) -> None:
    if by:
        counters[key] = counters.get(key, 0) + by


__all__ = [
    "BAD_LINE",
    "BOM",
    "Locator",
    "Path",
    "Prepared",
    "ShapeError",
    "TextLines",
    "as_bool",
    "as_text",
    "bump",
    "chunk",
    "coalesce",
    "column",
    "column_or_odd",
    "count_lines",
    "dict_path",
    "epoch_seconds",
    "finish",
    "finish_csv",
    "first_char",
    "first_item",
    "is_scalar",
    "json_object",
    "json_rows_are_lines",
    "json_string",
    "json_value",
    "leading_line",
    "line_locator",
    "map_distinct",
    "merge",
    "num",
    "reject_all",
    "struct_child",
    "table_path",
    "text_lines",
    "text_or_none",
]
