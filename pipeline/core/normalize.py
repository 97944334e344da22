"""Turn loosely typed, canonically named columns into a strict :data:`FLOW_SCHEMA` table.

Every source parser maps its format onto the canonical column names and calls
:func:`normalize`; the checks (time range, IP syntax, port and protocol ranges, counters)
live here once. Bad rows are returned as ``(row_index, reason, detail)`` — never raised.

Vectorized: Arrow compute for numbers; IPs and string timestamps are parsed once per
*distinct* value (flows repeat addresses heavily), with a bounded cache across batches.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.addresses import ipv4_canonical
from pipeline.core.columns import (
    ACTION_ACCEPT,
    ACTION_REJECT,
    ACTION_UNKNOWN,
    FLOW_SCHEMA,
    NO_TCP_FLAGS,
)
from pipeline.core.text import MAX_IDENTITY_CHARS, MAX_LABELS, UNSAFE_RE2, labels_problem

# Event times outside this window are rejected as implausible (2000-01-01 .. 2100-01-01).
MIN_EPOCH = 946_684_800.0
MAX_EPOCH = 4_102_444_800.0

PROTO_NAMES: dict[str, int] = {
    "icmp": 1,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "icmp6": 58,
    "sctp": 132,
}

ACTION_WORDS: dict[str, int] = {
    "accept": ACTION_ACCEPT,
    "accepted": ACTION_ACCEPT,
    "allow": ACTION_ACCEPT,
    "allowed": ACTION_ACCEPT,
    "forwarded": ACTION_ACCEPT,
    "pass": ACTION_ACCEPT,
    "a": ACTION_ACCEPT,
    "reject": ACTION_REJECT,
    "rejected": ACTION_REJECT,
    "deny": ACTION_REJECT,
    "denied": ACTION_REJECT,
    "drop": ACTION_REJECT,
    "dropped": ACTION_REJECT,
    "block": ACTION_REJECT,
    "blocked": ACTION_REJECT,
    "d": ACTION_REJECT,
    "error": ACTION_REJECT,
}

# Seconds added to every flow time before the checks (``--time-offset``): captures that log
# times relative to their start (1970-01-01 + a few seconds) are shifted to when they ran.
T = TypeVar("T")
_TIME_OFFSET: ContextVar[float] = ContextVar("segflow_time_offset", default=0.0)


@contextlib.contextmanager
def time_offset(seconds: float) -> Iterator[None]:
    """Within the block (this thread), :func:`normalize` adds ``seconds`` to every time."""
    token = _TIME_OFFSET.set(float(seconds))
    try:
        yield
    finally:
        _TIME_OFFSET.reset(token)


def shifted(items: Iterator[T], seconds: float) -> Iterator[T]:
    """``items`` (e.g. a file's parse results) with each one produced under
    :func:`time_offset` ``(seconds)``."""
    while True:
        with time_offset(seconds):
            try:
                item = next(items)
            except StopIteration:
                return
        yield item


_IP_CACHE_MAX = 1 << 18  # distinct non-canonical address strings remembered (cleared when full)
_ip_cache: dict[str, str | None] = {}


@dataclass(frozen=True, slots=True)
class RowError:
    """A row that failed normalisation."""

    row: int
    reason: str
    detail: str


def canonical_ip(text: str) -> str | None:
    """Canonical text of an IPv4/IPv6 address (v4-mapped v6 becomes v4), or None if invalid.

    >>> canonical_ip("::ffff:10.0.0.1"), canonical_ip("2001:DB8::1"), canonical_ip("10.0.0.300")
    ('10.0.0.1', '2001:db8::1', None)
    """
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def parse_time_text(text: str) -> float | None:
    """Epoch seconds from RFC 3339 / ISO 8601 text or a numeric string; None if unparseable.

    Fractions are read to the nanosecond and rounded as Arrow's timestamp cast does (integer
    nanoseconds / 1e9), so a value gets the same seconds on the vectorised path and here.

    >>> parse_time_text("2023-11-14T22:13:20.123456789Z")
    1700000000.1234567
    """
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    frac_ns = 0
    dot = s.find(".")
    if dot != -1:
        end = dot + 1
        while end < len(s) and s[end].isdigit():
            end += 1
        digits = s[dot + 1 : end]
        if digits:  # Python's fromisoformat takes at most 6 digits: the fraction is ours
            frac_ns = int(digits[:9].ljust(9, "0"))
            s = s[:dot] + s[end:]
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        whole = int(dt.timestamp())
    except (OverflowError, OSError, ValueError):
        return None
    return float(whole * 1_000_000_000 + frac_ns) / 1e9


def _chunked(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        return arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return arr


def _epoch(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(seconds float64, ok mask) for a numeric or string time column."""
    n = len(arr)
    if pa.types.is_null(arr.type):
        return np.zeros(n), np.zeros(n, dtype=bool)
    if pa.types.is_timestamp(arr.type):
        secs = pc.divide(pc.cast(pc.cast(arr, pa.timestamp("us", arr.type.tz)), pa.int64()), 1e6)
        ok = ~np.asarray(pc.is_null(arr))
        return np.asarray(secs.fill_null(0.0), dtype=np.float64), ok
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        as_float = pc.cast(arr, pa.float64(), safe=False)  # ns-sized ints lose precision only
        vals = np.asarray(as_float.fill_null(np.nan), dtype=np.float64)
        return np.nan_to_num(vals, nan=0.0), ~np.isnan(vals)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        try:
            # ns resolution: RFC 3339 text with nanoseconds (Hubble, GCP) stays on the fast path
            ts = pc.cast(arr, pa.timestamp("ns", "UTC"))
            vals = np.asarray(
                pc.divide(pc.cast(pc.cast(ts, pa.int64()), pa.float64(), safe=False), 1e9)
                .fill_null(np.nan),
                dtype=np.float64,
            )
            return np.nan_to_num(vals, nan=0.0), ~np.isnan(vals)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        enc = arr.dictionary_encode()
        parsed = [parse_time_text(s) if s is not None else None for s in enc.dictionary.to_pylist()]
        lut = np.array([np.nan if p is None else p for p in parsed] + [np.nan], dtype=np.float64)
        idx = np.asarray(enc.indices.fill_null(len(parsed)), dtype=np.int64)
        vals = lut[idx]
        return np.nan_to_num(vals, nan=0.0), ~np.isnan(vals)
    return np.zeros(n), np.zeros(n, dtype=bool)


def _ips(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(canonical IP strings, ok mask)."""
    n = len(arr)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return pa.nulls(n, pa.string()), np.zeros(n, dtype=bool)
    enc = arr.dictionary_encode()
    v4, _ = ipv4_canonical(enc.dictionary)  # canonical already: no Python work, no cache
    odd = np.flatnonzero(~v4).tolist()
    if not odd and arr.type == pa.string():
        mapped = arr  # the usual case: every address canonical IPv4 text, no copy
    else:
        uniq = enc.dictionary.to_pylist()
        if len(_ip_cache) > _IP_CACHE_MAX:
            _ip_cache.clear()
        out: list[str | None] = list(uniq)
        for i in odd:
            s = uniq[i]
            c = _ip_cache.get(s, "")
            if c == "":
                c = canonical_ip(s)
                _ip_cache[s] = c
            out[i] = c
        if arr.type == pa.string() and out == uniq:
            mapped = arr  # every address already canonical: no copy
        else:
            mapped = pa.array(out, pa.string()).take(enc.indices)
    ok = ~np.asarray(pc.is_null(mapped))
    return mapped, ok


def _ints(arr: pa.Array | None, n: int, default: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, ok mask); nulls take ``default``; non-integral or non-numeric → not ok."""
    if arr is None or pa.types.is_null(arr.type):
        return np.full(n, default, dtype=np.int64), np.ones(n, dtype=bool)
    if pa.types.is_unsigned_integer(arr.type) and arr.type.bit_width == 64:
        big = np.asarray(pc.greater(arr, 2**63 - 1).fill_null(False), dtype=bool)
        vals = np.asarray(pc.cast(arr, pa.int64(), safe=False).fill_null(default))
        return np.where(big, default, vals), ~big
    if pa.types.is_integer(arr.type):
        return np.asarray(pc.cast(arr, pa.int64()).fill_null(default)), np.ones(n, dtype=bool)
    if pa.types.is_floating(arr.type):
        f = np.asarray(arr.fill_null(float(default)), dtype=np.float64)
        ok = np.isfinite(f) & (np.floor(f) == f) & (np.abs(f) < 2**62)
        return np.where(ok, f, default).astype(np.int64), ok
    if pa.types.is_boolean(arr.type):
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        # a null is an absent value (its default) wherever the other rows hold text
        arr = arr.fill_null(str(default))
        f = np.asarray(
            pc.cast(arr, pa.float64(), safe=False)
            if _all_numeric(arr)
            else map_text(arr, _num_or_nan),
            dtype=np.float64,
        )
        ok = np.isfinite(f) & (np.floor(f) == f) & (np.abs(f) < 2**62)
        return np.where(ok, f, default).astype(np.int64), ok
    return np.full(n, default, dtype=np.int64), np.zeros(n, dtype=bool)


def map_text(arr: pa.Array, fn: Callable[[str], float]) -> np.ndarray:
    """``fn`` of every (non-null) text value, computed once per distinct value."""
    enc = arr.dictionary_encode()
    lut = np.array([fn(v) for v in enc.dictionary.to_pylist()], dtype=np.float64)
    return lut[np.asarray(enc.indices, dtype=np.int64)]


def _all_numeric(arr: pa.Array) -> bool:
    try:
        pc.cast(arr.fill_null("0"), pa.float64())
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


def _num_or_nan(s: str | None) -> float:
    if s is None:
        return float("nan")
    try:
        return float(s)
    except ValueError:
        return float("nan")


def _proto(arr: pa.Array | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    if arr is None:
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        enc = arr.dictionary_encode()
        lut: list[float] = []
        for s in enc.dictionary.to_pylist():
            key = s.strip().lower()
            if key in PROTO_NAMES:
                lut.append(PROTO_NAMES[key])
            else:
                lut.append(_num_or_nan(key))
        table = np.array([*lut, np.nan], dtype=np.float64)
        vals = table[np.asarray(enc.indices.fill_null(len(lut)), dtype=np.int64)]
        ok = np.isfinite(vals) & (np.floor(vals) == vals) & (vals >= 0) & (vals <= 255)
        return np.where(ok, vals, 0).astype(np.int64), ok
    vals, ok = _ints(arr, n, -1)
    return vals, ok & (vals >= 0)


def _action(arr: pa.Array | None, n: int) -> np.ndarray:
    if arr is None or pa.types.is_null(arr.type):
        return np.full(n, ACTION_UNKNOWN, dtype=np.int8)
    if pa.types.is_integer(arr.type):
        v = np.asarray(pc.cast(arr, pa.int64(), safe=False).fill_null(ACTION_UNKNOWN))
        return np.where((v >= 0) & (v <= 2), v, ACTION_UNKNOWN).astype(np.int8)
    if pa.types.is_boolean(arr.type):  # "allowed": true/false
        b = np.asarray(arr.fill_null(True), dtype=bool)
        return np.where(b, ACTION_ACCEPT, ACTION_REJECT).astype(np.int8)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return np.full(n, ACTION_UNKNOWN, dtype=np.int8)
    enc = arr.dictionary_encode()
    lut = [ACTION_WORDS.get(s.strip().lower(), ACTION_UNKNOWN) for s in enc.dictionary.to_pylist()]
    table = np.array([*lut, ACTION_UNKNOWN], dtype=np.int8)
    return table[np.asarray(enc.indices.fill_null(len(lut)), dtype=np.int64)]


def _text(arr: pa.Array | None, n: int) -> pa.Array:
    if arr is None or pa.types.is_null(arr.type):
        return pa.nulls(n, pa.string())
    if pa.types.is_string(arr.type):
        return arr
    if pa.types.is_large_string(arr.type) or pa.types.is_dictionary(arr.type):
        return pc.cast(arr, pa.string())
    if pa.types.is_struct(arr.type) or pa.types.is_map(arr.type) or pa.types.is_list(arr.type):
        return pa.array(
            [None if v is None else orjson.dumps(v).decode() for v in arr.to_pylist()], pa.string()
        )
    return pc.cast(arr, pa.string())


IDENTITY_COLUMNS = ("src_app", "src_namespace", "src_labels", "dst_app", "dst_namespace",
                    "dst_labels")


def _identity_checks(name: str, text: pa.Array) -> list[tuple[np.ndarray, str, str]]:
    """(rows, reason, detail) for identity values with control characters or over the length
    bound (labels: JSON object text, every key and value checked). Checked once per distinct
    value."""
    if text.null_count == len(text):
        return []
    enc = text.dictionary_encode()
    values = enc.dictionary
    if name.endswith("_labels"):
        codes = [_labels_code(v) for v in values.to_pylist()]
        unsafe = np.array([c == "bad_identity" for c in codes] + [False])
        long = np.array([c == "identity_too_long" for c in codes] + [False])
        bad_text = f"'{name}' has a key or value with control characters"
        long_text = (f"'{name}' has a key or value longer than {MAX_IDENTITY_CHARS} characters "
                     f"or more than {MAX_LABELS} labels")
    else:
        unsafe = np.append(np.asarray(pc.match_substring_regex(values, UNSAFE_RE2), bool), False)
        long = np.append(np.asarray(pc.greater(pc.utf8_length(values), MAX_IDENTITY_CHARS),
                                    bool), False)
        bad_text = f"'{name}' contains control characters"
        long_text = f"'{name}' is longer than {MAX_IDENTITY_CHARS} characters"
    if not (unsafe.any() or long.any()):
        return []
    idx = np.asarray(enc.indices.fill_null(len(values)), dtype=np.int64)
    return [(unsafe[idx], "bad_identity", bad_text), (long[idx], "identity_too_long", long_text)]


def _labels_code(text: str) -> str | None:
    if len(text) > (MAX_IDENTITY_CHARS + 8) * 2 * MAX_LABELS:
        return "identity_too_long"
    try:
        labels = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None  # not an object: enrichment ignores it
    if not isinstance(labels, dict):
        return None
    problem = labels_problem(labels)
    if problem is None:
        return None
    return "bad_identity" if "control characters" in problem else "identity_too_long"


def normalize(
    columns: Mapping[str, pa.Array | pa.ChunkedArray], num_rows: int
) -> tuple[pa.Table, list[RowError]]:
    """Validate and type canonical columns; returns (good rows as FLOW_SCHEMA, row errors).

    Missing optional columns become nulls/defaults. Row indices in errors refer to the input.
    """
    n = num_rows
    cols = {k: _chunked(v) for k, v in columns.items()}
    errors: list[tuple[np.ndarray, str, str]] = []
    bad = np.zeros(n, dtype=bool)

    def flag(mask: np.ndarray, reason: str, detail: str) -> None:
        new = mask & ~bad
        if new.any():
            errors.append((np.flatnonzero(new), reason, detail))
            bad[new] = True

    for name in ("start", "src_ip", "dst_ip", "proto"):
        if name not in cols:
            flag(np.ones(n, dtype=bool), "missing_field", f"required field '{name}' is missing")
        else:
            flag(
                np.asarray(pc.is_null(cols[name]), dtype=bool),
                "missing_field",
                f"required field '{name}' is missing or null",
            )

    start, ok_s = _epoch(cols["start"]) if "start" in cols else (np.zeros(n), np.zeros(n, bool))
    flag(~ok_s, "bad_time", "'start' is not epoch seconds or an RFC 3339 time")
    if "end" in cols:
        end, ok_e = _epoch(cols["end"])
        null_end = np.asarray(pc.is_null(cols["end"]), dtype=bool)
        end = np.where(null_end, start, end)
        flag(~ok_e & ~null_end, "bad_time", "'end' is not epoch seconds or an RFC 3339 time")
    else:
        end = start.copy()
    shift = _TIME_OFFSET.get()
    if shift:
        start, end = start + shift, end + shift
    flag(
        (start >= 0) & (start < MIN_EPOCH),
        "time_relative",
        "'start' is before 2000: a time relative to the capture's start? pass --time-offset "
        "with the capture's start (e.g. the Zeek '#open' time)",
    )
    flag(
        (start < MIN_EPOCH) | (start >= MAX_EPOCH),
        "time_range",
        "'start' is outside 2000..2100 (epoch seconds expected, not ms/ns)",
    )
    flag(end < start, "time_order", "'end' is before 'start'")
    flag(end >= MAX_EPOCH, "time_range", "'end' is outside 2000..2100 (epoch seconds expected)")

    ips = {}
    for side in ("src_ip", "dst_ip"):
        if side in cols:
            ips[side], ok = _ips(cols[side])
            flag(~ok, "bad_ip", f"'{side}' is not an IPv4 or IPv6 address")
        else:
            ips[side] = pa.nulls(n, pa.string())

    proto, ok_p = _proto(cols.get("proto"), n)
    flag(~ok_p | (proto > 255), "bad_proto", "'proto' is not an IANA number 0..255 or a known name")
    ports = {}
    for side in ("src_port", "dst_port"):
        v, ok = _ints(cols.get(side), n, 0)
        flag(~ok, "bad_type", f"'{side}' is not an integer")
        flag((v < 0) | (v > 65535), "port_range", f"'{side}' is outside 0..65535")
        ports[side] = v
    counters = {}
    for name in ("bytes", "packets"):
        v, ok = _ints(cols.get(name), n, 0)
        flag(~ok, "bad_type", f"'{name}' is not an integer")
        flag(v < 0, "negative_counter", f"'{name}' is negative")
        counters[name] = v
    flags, ok_f = _ints(cols.get("tcp_flags"), n, NO_TCP_FLAGS)
    flag(~ok_f | (flags > 0x1FF) | (flags < NO_TCP_FLAGS), "bad_type", "'tcp_flags' is not 0..511")
    for name in IDENTITY_COLUMNS:
        if name in cols:
            for mask, reason, detail in _identity_checks(name, _text(cols[name], n)):
                flag(mask, reason, detail)

    good = ~bad
    keep = pa.array(good)
    out = {
        "start": pa.array(start, pa.float64()),
        "end": pa.array(end, pa.float64()),
        "src_ip": ips["src_ip"],
        "dst_ip": ips["dst_ip"],
        "src_port": pa.array(ports["src_port"].astype(np.int32)),
        "dst_port": pa.array(ports["dst_port"].astype(np.int32)),
        "proto": pa.array(proto.astype(np.int16)),
        "bytes": pa.array(counters["bytes"]),
        "packets": pa.array(counters["packets"]),
        "action": pa.array(_action(cols.get("action"), n)),
        "tcp_flags": pa.array(np.where(ok_f, flags, NO_TCP_FLAGS).astype(np.int16)),
    }
    for name in FLOW_SCHEMA.names:
        if name not in out:
            out[name] = _text(cols.get(name), n)
    table = pa.Table.from_arrays([out[f] for f in FLOW_SCHEMA.names], schema=FLOW_SCHEMA)
    if not good.all():
        table = table.filter(keep)
    row_errors = [
        RowError(int(i), reason, detail) for idx, reason, detail in errors for i in idx
    ]
    row_errors.sort(key=lambda e: e.row)
    return table, row_errors


__all__ = ["PROTO_NAMES", "RowError", "canonical_ip", "normalize", "parse_time_text",
           "shifted", "time_offset"]
