"""The interval index (address → workload at time t) against a brute-force reference.

The reference reads the inventory's rule literally: among the entries whose network holds
the address and whose ``[valid_from, valid_to)`` holds t, the longest prefix wins, then the
latest ``valid_from``; no entry → the address's fallback (scope, ``unknown:<ip>``, world).
Hypothesis draws overlapping intervals on reused addresses and nested prefixes, with times
on, just before and just after every boundary, and far from the flow range.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.addresses import encode_ips, ip_to_int, local_scope, network_to_int
from pipeline.core.inventory import Inventory, InventoryEntry, entry_from_record, load_inventory
from pipeline.core.workloads import WorkloadInfo
from pipeline.errors import InputError

ADDRESSES = ["10.1.0.1", "10.1.0.2", "10.1.1.9", "8.8.8.8", "fd00::1"]
NETWORKS = ["10.1.0.1", "10.1.0.2", "10.1.0.0/24", "10.1.0.0/16", "10.0.0.0/8", "0.0.0.0/0",
            "fd00::1", "fd00::/64"]
# small integers make overlaps and shared bounds likely; the others test precision and range
TIMES = st.one_of(st.integers(0, 12).map(float),
                  st.sampled_from([1e-7, 1700000000.0, 1700000000.000001, 1700000000.0004,
                                   -5e9, 4.1e12, 1e18, -1e300, 1e300]))


def covers(e: InventoryEntry, addr: int) -> bool:
    shift = 128 - e.plen
    return addr >> shift == e.net >> shift


def reference(entries: list[InventoryEntry], addr: int, ip: str, t: float) -> str:
    live = [e for e in entries if covers(e, addr) and e.valid_from <= t < e.valid_to]
    if live:
        best = max(live, key=lambda e: (e.plen, e.valid_from))
        return best.info.key
    scope = local_scope(addr)
    if scope is not None:
        return scope
    return f"unknown:{ip}" if ip.startswith(("10.", "fd")) else "world"


@st.composite
def inventories(draw: st.DrawFn) -> list[InventoryEntry]:
    """Entries built directly: the index must be exact for any finite interval, including
    times :func:`entry_from_record` refuses (before 1970, after 2100)."""
    entries = []
    for i in range(draw(st.integers(0, 9))):
        net, plen = network_to_int(draw(st.sampled_from(NETWORKS)))
        a, b = sorted((draw(TIMES), draw(TIMES)))
        vf = a if draw(st.booleans()) else -math.inf
        vt = b if draw(st.booleans()) else math.inf
        if vt <= vf:
            vt = math.inf
        entries.append(InventoryEntry(net, plen, WorkloadInfo("", f"app{i}"), vf, vt))
    return entries


def probe_times(entries: list[InventoryEntry], extra: list[float]) -> list[float]:
    bounds = {b for e in entries for b in (e.valid_from, e.valid_to) if math.isfinite(b)}
    out = set(extra)
    for b in bounds:
        out |= {b, np.nextafter(b, -math.inf), np.nextafter(b, math.inf), b - 0.0005, b + 0.5}
    return sorted(float(t) for t in out if math.isfinite(t))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(records=inventories(), extra=st.lists(TIMES, max_size=4), data=st.data())
def test_assign_equals_the_brute_force_reference(records: list[InventoryEntry],
                                                 extra: list[float], data: st.DataObject) -> None:
    entries = {}
    for e in records:
        entries[e.key] = e  # same network and start: the later entry replaces the earlier
    inv = Inventory(entries.values(), internal_cidrs=["10.0.0.0/8", "fd00::/8"])
    times = probe_times(list(entries.values()), extra)
    ips = [ip for ip in ADDRESSES for _ in times]
    ts = np.asarray([t for _ in ADDRESSES for t in times], dtype=np.float64)
    order = data.draw(st.permutations(range(len(ips))))  # rows in any order
    ips = [ips[i] for i in order]
    ts = ts[order]
    idx, addrs = encode_ips(pa.array(ips))
    got = [inv.workloads.infos[w].key for w in inv.assign(idx, addrs, ts)]
    want = [reference(list(entries.values()), ip_to_int(ip), ip, float(t))
            for ip, t in zip(ips, ts, strict=True)]
    assert got == want


# ---------------------------------------------------------------- times an entry may hold

BAD_TIMES = ["nan", "NaN", "-nan", "inf", "-Infinity", "1e400", "abc", "1_700_000_000",
             "2026-13-01T00:00:00Z", "1767571200000", "-1", "1969-12-31T23:59:59Z", True,
             [1], {"t": 1}]


@pytest.mark.parametrize("value", BAD_TIMES, ids=[repr(v) for v in BAD_TIMES])
@pytest.mark.parametrize("field", ["valid_from", "valid_to"])
def test_a_time_that_is_not_finite_epoch_seconds_is_refused_naming_the_entry(
        tmp_path: Path, field: str, value: Any) -> None:
    good = {"ip": "10.1.0.7", "app": "a", "valid_from": 1767571200}
    bad = {"ip": "10.1.0.7", "app": "b", field: value}
    path = tmp_path / "inv.jsonl"
    path.write_bytes(orjson.dumps(good) + b"\n" + orjson.dumps(bad) + b"\n")
    with pytest.raises(InputError) as err:
        load_inventory(path)
    text = str(err.value)
    assert text.startswith(f"inventory {path}:2: {field} ") and "\n" not in text
    if isinstance(value, str | bool):
        csv = tmp_path / "inv.csv"
        csv.write_text(f"ip,app,{field}\n10.1.0.7,a,\n10.1.0.8,b,{value}\n")
        with pytest.raises(InputError, match=rf"inv.csv:3: {field} "):
            load_inventory(csv)


def test_valid_to_must_follow_valid_from() -> None:
    with pytest.raises(ValueError, match=r"valid_to 100\.0 must be after valid_from 200\.0"):
        entry_from_record({"ip": "10.0.0.1", "app": "a", "valid_from": 200, "valid_to": 100})
    with pytest.raises(ValueError, match="must be after"):
        entry_from_record({"ip": "10.0.0.1", "app": "a", "valid_from": 200, "valid_to": 200})


def test_replay_refuses_a_nan_inventory_time_in_one_line(estate_dir: Path, tmp_path: Path) -> None:
    """The reported case: ``valid_from: "nan"`` used to be accepted and crash the replay."""
    inv = tmp_path / "inv.jsonl"
    inv.write_text('{"ip": "10.0.0.1", "app": "a"}\n'
                   '{"ip": "10.0.0.2", "app": "b", "valid_from": "nan"}\n')
    r = subprocess.run([sys.executable, "-m", "pipeline.commands.cli", "replay",
                        str(estate_dir / "flows.jsonl.gz"), "--inventory", str(inv),
                        "--no-store"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"segflow: error: inventory {inv}:2: valid_from 'nan' is not a finite time; leave it "
        "out for an open interval"]
