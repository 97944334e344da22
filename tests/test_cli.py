"""The command line: one clear line and exit 2 for user mistakes, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def segflow(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.commands.cli", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "nope.jsonl", "--inventory", "missing.jsonl"], "cannot read inventory"),
        (["replay", "nope.jsonl", "--inventory", "INV"], "nope.jsonl: no such file"),
        (["replay", "x", "--inventory", "INV", "--audit-days", "0"],
         "argument --audit-days: must be in (0, 366], got 0; 30–90 is recommended"),
        (["replay", "x", "--inventory", "INV", "--audit-start", "nan"],
         "argument --audit-start: must be a finite number"),
        (["replay", "x", "--inventory", "INV", "--max-edges", "1.5"],
         "argument --max-edges: '1.5' is not an integer"),
        (["replay", "x", "--inventory", "INV", "--format", "pcap"], "invalid choice"),
        (["replay", "WRONG", "--inventory", "INV", "--no-store"], "cannot tell its flow format"),
        (["replay", "x", "--inventory", "INV", "--store", "ftp://x"], "store URL"),
        (["bogus"], "invalid choice"),
        (["replay", "x", "--inventory", "INV", "--store", "http://127.0.0.1:1/db"],
         "cannot reach ClickHouse at http://127.0.0.1:1/db (connection refused)"),
        (["replay", "x", "--inventory", "INV", "--format", "zeek", "--fields", "a b",
          "--no-store"], "x: no such file"),
        (["replay", "x", "--inventory", "INV", "--internal-cidrs", "10.0.0.0/33"],
         "is not a CIDR"),
    ],
)
def test_user_mistakes_give_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    inv = tmp_path / "inv.jsonl"
    inv.write_text('{"ip": "10.0.0.1", "app": "a"}\n')
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"\x00\x01\x02 definitely not flows\n")
    args = [str(inv) if a == "INV" else str(wrong) if a == "WRONG" else a for a in args]
    r = segflow(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert message in lines[0], lines[0]


def test_replay_prints_a_summary(estate_dir: Path, tmp_path: Path) -> None:
    r = segflow("replay", str(estate_dir / "flows.jsonl.gz"), "--inventory",
                str(estate_dir / "inventory.jsonl"), "--audit-days", "10", "--no-store",
                "--truth", str(estate_dir / "truth.jsonl"), "--violations",
                str(tmp_path / "v.jsonl"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "5/5 attack episodes caught" in r.stdout
    assert (tmp_path / "v.jsonl").stat().st_size > 0
