"""Replays are repeatable: the same input never doubles the store, a failed run never
clobbers the previous run's files (issue 10 items 5 and 6)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import pytest

from pipeline.commands import cli
from pipeline.commands.replay import replay
from pipeline.core.inventory import load_inventory
from pipeline.core.settings import CoreSettings
from pipeline.errors import StorageError
from pipeline.sources import base
from pipeline.storage import open_store

TOTALS = "SELECT sum(flows), sum(bytes), count() FROM edge_minute FINAL"


@pytest.fixture(scope="module")
def plain_flows(estate_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The estate's flows uncompressed (so copies can differ in path, name and compression)."""
    out = tmp_path_factory.mktemp("plain") / "flows.jsonl"
    out.write_bytes(gzip.decompress((estate_dir / "flows.jsonl.gz").read_bytes()))
    return out


def _replay_into(store: Any, files: list[Path], estate_dir: Path) -> Any:
    inv = load_inventory(estate_dir / "inventory.jsonl")
    return replay(files, inv, CoreSettings(audit_days=10), store=store)


def test_same_flows_at_another_path_replace_not_double(
    plain_flows: Path, estate_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "BLOCK_BYTES", 1 << 20)  # several blocks per file
    elsewhere = tmp_path / "archive" / "2026-01" / "renamed.log"
    elsewhere.parent.mkdir(parents=True)
    shutil.copyfile(plain_flows, elsewhere)
    recompressed = tmp_path / "again.jsonl.gz"
    recompressed.write_bytes(gzip.compress(plain_flows.read_bytes(), compresslevel=1))
    with open_store(f"chdb://{tmp_path / 'store'}", migrate=True) as store:
        first = _replay_into(store, [plain_flows], estate_dir)
        once = store.query_rows(TOTALS)[0]
        v_once = store.query_rows("SELECT count() FROM violations FINAL")[0][0]
        for copy in (elsewhere, recompressed, estate_dir / "flows.jsonl.gz"):
            _replay_into(store, [copy], estate_dir)
            assert store.query_rows(TOTALS)[0] == once, copy
        v_again = store.query_rows("SELECT count() FROM violations FINAL")[0][0]
    assert once[0] == first.flows
    assert v_once == v_again == len(first.violations)


def test_files_sharing_blocks_after_different_beginnings_both_count(
    plain_flows: Path, estate_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block is keyed by the file's bytes up to its end, not by its own bytes alone: the
    same tail after another beginning is other input (a header earlier in a Zeek or AWS
    file changes what the same bytes mean), so both files count in full."""
    monkeypatch.setattr(base, "BLOCK_BYTES", 1 << 20)
    data = plain_flows.read_bytes()
    cut = data.index(b"\n", len(data) // 3) + 1
    head, tail = data[:cut], data[cut:]
    other_head = head.replace(b'"accept"', b'"ACCEPT"')  # same length: same block cuts
    assert other_head != head and len(other_head) == len(head)
    x, y = tmp_path / "x.jsonl", tmp_path / "y.jsonl"
    x.write_bytes(head + tail)
    y.write_bytes(other_head + tail)
    with open_store(f"chdb://{tmp_path / 'store'}", migrate=True) as store:
        sx = _replay_into(store, [x], estate_dir)
        sy = _replay_into(store, [y], estate_dir)
        total = store.query_rows(TOTALS)[0][0]
    assert sx.flows == sy.flows == data.count(b"\n")
    assert total == sx.flows + sy.flows


# -- item 6: a failed re-run keeps the previous outputs ------------------------------------


def _outputs(d: Path) -> dict[str, Path]:
    return {"--violations": d / "v.jsonl", "--rules": d / "r.jsonl", "--incidents": d / "i.jsonl",
            "--dead-letter": d / "dl.jsonl", "--policies": d / "policies",
            "--save-baseline": d / "baseline", "--report": d / "report.html"}


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def first_run(estate_dir: Path, tmp_path: Path) -> tuple[Path, list[str], dict[str, bytes]]:
    out = tmp_path / "out"
    data = tmp_path / "in.jsonl"
    raw = gzip.decompress((estate_dir / "flows.jsonl.gz").read_bytes())
    data.write_bytes(raw + b'{"start": 1767571200, "src_ip": "bad"}\n')
    args = ["replay", str(data), "--inventory", str(estate_dir / "inventory.jsonl"),
            "--audit-days", "10", "--store", f"chdb://{tmp_path / 'store'}"]
    for flag, path in _outputs(out).items():
        args += [flag, str(path)]
    assert cli.main(args) == 0
    before = _snapshot(out)
    for name in ("v.jsonl", "r.jsonl", "i.jsonl", "dl.jsonl", "report.html",
                 "baseline/baseline.npz"):
        assert before.get(name), f"{name} missing or empty after the first run"
    assert any(k.startswith("policies/") for k in before)
    return out, args, before


def test_rerun_failing_on_bad_input_keeps_previous_outputs(
    first_run: tuple[Path, list[str], dict[str, bytes]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    out, args, before = first_run
    unknown = tmp_path / "zz-unknown.bin"
    unknown.write_bytes(b"\x00\x01 not a flow format\n")
    assert cli.main([args[0], str(unknown), *args[1:]]) == 2
    assert "cannot tell its flow format" in capsys.readouterr().err
    assert _snapshot(out) == before


@pytest.mark.parametrize("failure", ["store", "interrupt"])
def test_rerun_failing_midway_keeps_previous_outputs(
    first_run: tuple[Path, list[str], dict[str, bytes]], monkeypatch: pytest.MonkeyPatch,
    failure: str
) -> None:
    out, args, before = first_run
    import pipeline.commands.replay as replay_mod

    real = replay_mod.Pipeline.process
    calls = {"n": 0}

    def failing(self: Any, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # after violations, rules and dead letters were written
            raise StorageError("store write failed: disk full") if failure == "store" \
                else KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(base, "BLOCK_BYTES", 1 << 20)
    monkeypatch.setattr(replay_mod.Pipeline, "process", failing)
    assert cli.main(args) == (2 if failure == "store" else 130)
    assert calls["n"] == 3
    assert _snapshot(out) == before


def test_rerun_failing_in_the_report_keeps_previous_outputs(
    first_run: tuple[Path, list[str], dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report is the last output written: its failure must not leave the others new."""
    out, args, before = first_run
    import pipeline.commands.report as report_mod

    def broken(*a: Any, **kw: Any) -> str:
        raise StorageError("cannot query the store: connection reset")

    monkeypatch.setattr(report_mod, "build_report", broken)
    # other settings change the outputs, so "unchanged" means "not replaced"
    assert cli.main([*args, "--audit-days", "5"]) == 2
    assert _snapshot(out) == before


def test_successful_rerun_replaces_outputs_and_leaves_no_temporary_files(
    first_run: tuple[Path, list[str], dict[str, bytes]]
) -> None:
    out, args, before = first_run
    assert cli.main([*args, "--audit-days", "5"]) == 0
    after = _snapshot(out)
    assert after["v.jsonl"] != before["v.jsonl"]
    assert not [k for k in after if ".tmp" in k]
