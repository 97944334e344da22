"""Shared engine for JSON-lines formats (GCP, Hubble, goflow2, Zeek JSON, Suricata EVE).

A format declares which nested paths it reads (``fields``: name → candidate paths, first
non-null wins) and how to turn those columns into canonical ones (:meth:`prepare`).
Fast path: Arrow's JSON reader decodes the whole block and paths become struct-field
lookups. If Arrow refuses the block (a malformed line, a type that varies between
records), every line is decoded with orjson and the same paths are walked per record,
so a bad record costs only its own line.
"""

from __future__ import annotations

import io
import re
from typing import Any, ClassVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from pipeline.core.columns import Reject
from pipeline.sources.base import ParseResult
from pipeline.sources.columnar import (
    Locator,
    Path,
    Prepared,
    ShapeError,
    coalesce,
    column_or_odd,
    dict_path,
    finish,
    first_char,
    json_rows_are_lines,
    line_locator,
    merge,
    table_path,
)

PRESENCE_PREFIX = "has_"  # fields named has_* only record whether the path exists
_TYPE_CHANGE = re.compile(r"Column\(/([^/)]+)\) changed from")
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
# what a vectorised step may raise on a value shape it did not expect
RECORD_ERRORS = (pa.ArrowException, ShapeError, ValueError, TypeError, OverflowError)


def read_json_checked(block: bytes, **options: Any) -> pa.Table:
    """``pyarrow.json.read_json`` of a block (1 MiB parse blocks, so both cores work), with the
    block's UTF-8 and the result's structure validated: Arrow keeps invalid UTF-8 in string
    values, and Arrow 26 drops a ``null`` that opens a list whose item type is not known yet
    and returns offsets past the values (reading them crashes), so such blocks raise
    ArrowInvalid like any other block Arrow cannot read."""
    if not block.isascii():  # Arrow keeps invalid UTF-8 in strings (a crash further on)
        try:
            block.decode()
        except UnicodeDecodeError as exc:
            raise pa.ArrowInvalid(f"invalid UTF-8 at byte {exc.start}") from None
    table = pj.read_json(io.BytesIO(block), read_options=pj.ReadOptions(block_size=1 << 20),
                         **options)
    table.validate()
    return table


class JsonLinesParser:
    """Base for line-oriented JSON formats; subclasses set ``format``/``fields`` and ``prepare``."""

    format: str = ""
    whole_document: bool = False
    fields: ClassVar[dict[str, tuple[Path, ...]]] = {}
    # keys whose value is a number in some records and text in others (goflow2 "proto": 6 or
    # "TCP"): numbers are quoted before Arrow sees the block, which keeps it on the fast path
    # top-level keys whose value is a number in some records and text in others (goflow2
    # "proto": 6 next to "TCP"); when Arrow refuses a block over one of them, its numbers are
    # quoted and the block read again, which keeps it off the per-line slow path
    mixed_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    def prepare(self, cols: dict[str, pa.Array | None], n: int) -> Prepared:
        """Canonical columns from the extracted ``fields`` (absent fields are None)."""
        raise NotImplementedError

    def parse(self, block: bytes, source: str, first_line: int) -> ParseResult:
        return self.parse_json(block, line_locator(block, source, first_line))

    def parse_json(self, block: bytes, locate: Locator) -> ParseResult:
        """Parse a block whose i-th non-blank line is reported by ``locate(i)``."""
        if not first_char(block):
            return ParseResult()
        table = self._read_table(block)
        if table is None or not json_rows_are_lines(block, table.num_rows):
            return self._parse_slow(block, locate)
        if table.num_rows == 0:
            return ParseResult()
        saved = dict(self.counters)
        try:
            cols = {name: self._from_table(table, name) for name in self.fields}
            prep = self.prepare(cols, table.num_rows)
        except RECORD_ERRORS:
            self.counters.clear()
            self.counters.update(saved)
            return self._parse_slow(block, locate)
        return finish(prep, locate)

    def _read_table(self, block: bytes) -> pa.Table | None:
        """The block as an Arrow table (1 MiB parse blocks, so both cores work), None if refused."""
        for _ in range(len(self.mixed_keys) + 1):
            try:
                return read_json_checked(block)
            except _ARROW_ERRORS as exc:
                m = _TYPE_CHANGE.search(str(exc))
                if m is None or m.group(1) not in self.mixed_keys:
                    return None
                key = m.group(1).encode()
                number = re.compile(rb'("' + re.escape(key) + rb'":\s*)(-?[0-9][0-9.eE+-]*)')
                block = number.sub(rb'\1"\2"', block)
        return None

    def _from_table(self, table: pa.Table, name: str) -> pa.Array | None:
        found = [table_path(table, p) for p in self.fields[name]]
        if name.startswith(PRESENCE_PREFIX):
            masks = [pc.is_valid(a) for a in found if a is not None]
            if not masks:
                return None
            present = masks[0]
            for m in masks[1:]:
                present = pc.or_(present, m)
            return pc.if_else(present, True, pa.scalar(None, pa.bool_()))
        return coalesce(found)

    def _parse_slow(self, block: bytes, locate: Locator) -> ParseResult:
        objs: list[dict[str, Any] | None] = []
        not_json: list[int] = []
        not_object: list[int] = []
        for line in block.split(b"\n"):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                not_json.append(len(objs))
                objs.append(None)
                continue
            if not isinstance(obj, dict):
                not_object.append(len(objs))
                objs.append(None)
                continue
            objs.append(obj)
        n = len(objs)
        bad = []
        if not_json:
            bad.append((_mask(n, not_json), "bad_json", "line is not valid JSON"))
        if not_object:
            bad.append((_mask(n, not_object), "bad_json", "a record must be a JSON object"))
        try:
            return self._finish_objects(objs, bad, locate)
        except RECORD_ERRORS:
            pass  # a value shape no vectorised step expected: isolate it, line by line
        results = []
        for i, obj in enumerate(objs):
            one = [(m[i : i + 1], reason, detail) for m, reason, detail in bad]
            try:
                results.append(self._finish_objects([obj], one, _single(locate, i)))
            except RECORD_ERRORS as exc:
                where, raw = locate(i)
                detail = f"unusable {self.format} record ({type(exc).__name__}: {exc})"[:200]
                results.append(ParseResult(rejects=[Reject("bad_record", detail, raw, where)],
                                           records_in=1))
        return merge(results)

    def _finish_objects(self, objs: list[dict[str, Any] | None],
                        bad: list[tuple[np.ndarray, str, str]], locate: Locator) -> ParseResult:
        saved = dict(self.counters)
        try:
            n = len(objs)
            cols: dict[str, pa.Array | None] = {}
            odd_shapes: list[tuple[np.ndarray, str, str]] = []
            for name, paths in self.fields.items():
                values = [_first(o, paths) for o in objs]
                if name.startswith(PRESENCE_PREFIX):
                    values = [True if v is not None else None for v in values]
                if all(v is None for v in values):
                    cols[name] = None
                    continue
                cols[name], odd = column_or_odd(values)
                if odd is not None and odd.any():
                    where = "/".join(".".join(p) for p in paths)
                    odd_shapes.append((odd, "bad_type", f"'{where}' has an unexpected shape"))
            prep = self.prepare(cols, n)
            prep.bad = bad + odd_shapes + prep.bad
            if prep.skips and bad:
                # malformed lines are rejects, not skipped records
                malformed = np.logical_or.reduce([b[0] for b in bad])
                prep.skips = [(mask & ~malformed, why) for mask, why in prep.skips]
            return finish(prep, locate)
        except RECORD_ERRORS:
            self.counters.clear()
            self.counters.update(saved)
            raise


def _single(locate: Locator, line: int) -> Locator:
    """Locator for a one-row batch made of line ``line``."""

    def at(_row: int) -> tuple[str, bytes]:
        return locate(line)

    return at


def _first(obj: dict[str, Any] | None, paths: tuple[Path, ...]) -> Any:
    if obj is None:
        return None
    for p in paths:
        v = dict_path(obj, p)
        if v is not None:
            return v
    return None


def _mask(n: int, rows: list[int]) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[rows] = True
    return m


def present(arr: pa.Array | None, n: int) -> np.ndarray:
    """Boolean mask: the value exists (not null)."""
    if arr is None:
        return np.zeros(n, dtype=bool)
    return np.asarray(pc.is_valid(arr), dtype=bool)


def text_eq(arr: pa.Array | None, n: int, *words: str) -> np.ndarray:
    """Mask of rows whose text value (case-insensitive) is one of ``words``."""
    if arr is None or not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return np.zeros(n, dtype=bool)
    low = pc.utf8_lower(arr)
    return np.asarray(pc.is_in(low, pa.array([w.lower() for w in words])).fill_null(False))


__all__ = ["PRESENCE_PREFIX", "JsonLinesParser", "present", "read_json_checked", "text_eq"]
