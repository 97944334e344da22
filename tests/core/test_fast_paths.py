"""The core's fast paths (issue 12) against slow obvious references on random inputs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core.addresses import encode_ips
from pipeline.core.baseline import DAY, HOUR, edge_keys, whole_units
from pipeline.core.enrich import enrich
from pipeline.core.pipeline import Pipeline
from pipeline.core.settings import CoreSettings
from pipeline.errors import InputError
from pipeline.sources import base
from tests.conftest import T0, flow, flows_table, make_inventory


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whole_units_equal_float_floor_division(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.concatenate([
        rng.uniform(-1e6, 4e9, 20_000),
        np.round(rng.uniform(9.4e8, 4e9, 5_000), 3),
        np.arange(-5, 5) * HOUR, np.arange(-5, 5) * DAY,  # exact boundaries
    ])
    t = np.concatenate([t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf)])
    for unit in (60, HOUR, DAY):
        assert np.array_equal(whole_units(t, unit), (t // unit).astype(np.int64))


def _reference_rows(core: Pipeline, e, keys, in_audit, violating, source_id, block, version):
    """Edge-minute rows the obvious way: a dict per (key, minute), sorted by it."""
    cells: dict[tuple[int, int], list] = defaultdict(lambda: [0, 0, 0, 0, 0, False])
    for i in range(len(keys)):
        c = cells[(int(keys[i]), int(e.start[i] // 60))]
        c[0] += 1
        c[1] += int(e.bytes[i])
        c[2] += int(e.packets[i])
        c[3] += int(e.rejected[i])
        c[4] += int(violating[i])
        c[5] |= bool(in_audit[i])
    infos = core.workloads.infos
    rows = []
    for (key, minute), (n, nb, npk, rej, vio, aud) in sorted(cells.items()):
        cl, sv = infos[(key >> 43) & 0x7FFFF], infos[(key >> 24) & 0x7FFFF]
        rows.append({
            "minute": minute * 60, "src_namespace": cl.namespace, "src_app": cl.app,
            "dst_namespace": sv.namespace, "dst_app": sv.app, "src_kind": cl.kind,
            "dst_kind": sv.kind, "service_port": (key >> 8) & 0xFFFF, "proto": key & 0xFF,
            "phase": "audit" if aud else "enforce", "flows": n, "bytes": nb, "packets": npk,
            "rejected_flows": rej, "violating_flows": vio, "source_id": source_id,
            "block": block, "version": version})
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_aggregate_equals_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    inv = make_inventory([{"ip": f"10.0.0.{i}", "app": f"a{i % 5}", "namespace": f"n{i % 3}"}
                          for i in range(1, 9)])
    core = Pipeline(CoreSettings(audit_days=1), inv)
    n = int(rng.integers(1, 3000))
    t = np.sort(T0 + rng.uniform(0, 3 * HOUR, n)) if seed % 2 else T0 + rng.uniform(0, DAY, n)
    recs = [flow(float(t[i]), f"10.0.{int(rng.integers(0, 2))}.{int(rng.integers(1, 12))}",
                 f"10.0.0.{int(rng.integers(1, 12))}", int(rng.integers(1, 65536)),
                 int(rng.choice([80, 443, 5432, 40000])), proto=int(rng.choice([6, 17])),
                 nbytes=int(rng.integers(0, 10**9)), packets=int(rng.integers(0, 1000)),
                 action=str(rng.choice(["accept", "reject"]))) for i in range(n)]
    e = enrich(flows_table(recs), inv, core.orienter)
    keys = edge_keys(e.client_wid, e.server_wid, e.service_port, e.proto)
    in_audit, violating = rng.random(n) < 0.5, rng.random(n) < 0.2
    got = core._aggregate(e, keys, in_audit, violating, "sha256:x", 7, 9).to_pylist()
    want = _reference_rows(core, e, keys, in_audit, violating, "sha256:x", 7, 9)
    for row in got:
        row["minute"] = int(row["minute"].timestamp())
    assert got == want


@pytest.mark.parametrize("block_bytes", [7, 64, 1000])
def test_line_blocks_cut_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  block_bytes: int) -> None:
    monkeypatch.setattr(base, "BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(block_bytes)
    lines = [b"x" * int(rng.integers(0, 3 * block_bytes + 2)) for _ in range(300)]
    data = b"\n".join(lines) + b"\npartial last line"
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    got = list(base.iter_line_blocks(path))
    assert b"".join(b for b, _ in got) == data
    line = 1
    for block, first in got:
        assert first == line
        assert base.count_lines(block) == block.count(b"\n")
        line += block.count(b"\n")
    assert all(b.endswith(b"\n") for b, _ in got[:-1])


def test_line_longer_than_four_blocks_is_refused(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "BLOCK_BYTES", 16)
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"ok\n" + b"y" * 100 + b"\n")
    with pytest.raises(InputError, match="longer than 64 bytes"):
        list(base.iter_line_blocks(path))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assign_in_time_slices_equals_one_batch(seed: int) -> None:
    """Rows of an address whose owner does not change within the batch are assigned at once;
    the result equals assigning the rows one by one and all in one batch."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(40):
        ip = f"10.0.0.{int(rng.integers(1, 12))}"
        vf = T0 + float(rng.integers(0, 20)) * HOUR + float(rng.choice([0.0, 0.25, 17.5]))
        rec = {"ip": ip, "app": f"a{i}", "namespace": "n", "valid_from": vf}
        if rng.random() < 0.6:
            rec["valid_to"] = vf + float(rng.integers(1, 8)) * HOUR
        records.append(rec)
    records.append({"cidr": "10.0.0.0/28", "app": "net", "namespace": "n"})
    inv = make_inventory(records)
    n = 2000
    ips = [f"10.0.0.{int(rng.integers(1, 20))}" for _ in range(n)]
    times = np.sort(T0 + rng.uniform(-HOUR, 24 * HOUR, n))
    idx, addrs = encode_ips(pa.array(ips))
    whole = inv.assign(idx, addrs, times)
    one_by_one = [int(inv.assign(idx[i:i + 1], addrs, times[i:i + 1])[0]) for i in range(n)]
    assert whole.tolist() == one_by_one
    for size in (7, 100, 333):  # batches spanning minutes to hours
        sliced = np.concatenate([inv.assign(idx[i:i + size], addrs, times[i:i + size])
                                 for i in range(0, n, size)])
        assert sliced.tolist() == one_by_one


def test_count_lines_without_the_compiled_function(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.sources import flatjson

    blocks = [b"", b"\n", b"a\nb", b"a\n\nb\n", b"x" * 1000 + b"\n" * 3]
    fast = [flatjson.count_lines(b) for b in blocks]
    monkeypatch.setattr(flatjson, "_ext", None)  # a build without the decoder
    assert [flatjson.count_lines(b) for b in blocks] == fast == [b.count(b"\n") for b in blocks]


def _random_ip_texts(rng: np.random.Generator, n: int) -> list[str]:
    out = []
    for _ in range(n):
        q = [int(x) for x in rng.integers(0, 256, 4)]
        kind = int(rng.integers(0, 9))
        if kind == 0:
            q[int(rng.integers(0, 4))] = int(rng.integers(256, 1000))  # out of range
        text = ".".join(str(x) for x in q)
        if kind == 1:
            text = text.replace(".", ".0", 1)  # a leading zero
        elif kind == 2:
            text = f" {text}"
        elif kind == 3:
            text = f"::ffff:{text}"
        elif kind == 4:
            text = f"2001:DB8::{q[0]:x}"
        elif kind == 5:
            text = text[: int(rng.integers(0, len(text)))]
        out.append(text)
    return out + ["0.0.0.0", "255.255.255.255", "1.2.3.4\n", "1.2.3", "1.2.3.4.5", "", "a.b.c.d"]


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_ipv4_equals_ipaddress(seed: int) -> None:
    from pipeline.core import normalize
    from pipeline.core.addresses import ip_to_int, ipv4_canonical

    texts = _random_ip_texts(np.random.default_rng(seed), 3000)
    ok, values = ipv4_canonical(pa.array(texts))
    for text, o, v in zip(texts, ok.tolist(), values.tolist(), strict=True):
        canon = normalize.canonical_ip(text)
        assert o == (canon == text and "." in text and ":" not in text), text
        if o:
            assert ip_to_int(text) == v | 0xFFFF_0000_0000
    mapped, good = normalize._ips(pa.array(texts))
    assert mapped.to_pylist() == [normalize.canonical_ip(t) for t in texts]
    assert good.tolist() == [normalize.canonical_ip(t) is not None for t in texts]
    valid = [c for c in mapped.to_pylist() if c is not None]
    idx, addrs = encode_ips(pa.array(valid))
    assert [addrs[i] for i in idx.tolist()] == [ip_to_int(c) for c in valid]
