"""Replay progress: log lines off a terminal (flows, rate, event time, ETA), a bar on one."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from pipeline.commands.progress import Progress, resolve_mode
from pipeline.commands.replay import replay
from pipeline.core.inventory import load_inventory
from pipeline.core.settings import CoreSettings
from tests.conftest import T0
from tests.test_cli import segflow


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_log_lines_carry_position_rate_event_time_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("log", [100, 300], every=10, stream=out, clock=clock)
    p.next_file(Path("a.jsonl"))
    p.read(100)
    p.update(flows=500, violations=0, event_time=T0)
    assert out.getvalue() == ""  # not yet an interval
    clock.t += 10
    p.update(flows=1000, violations=2, event_time=T0 + 60)
    line = out.getvalue().splitlines()[-1]
    # 100 of 400 bytes in 10 s: 25 %, 30 s to go; 1000 flows in 10 s
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d segflow: progress 25%, file 1/2 "
                        r"a\.jsonl, 1,000 flows, 100 flows/s, event time "
                        r"2026-01-05T00:01:00Z, 2 violations, ETA 30s", line), line
    p.next_file(Path("b.jsonl"))
    p.read(150)  # 250 of 400 bytes
    clock.t += 5
    p.update(flows=1500, violations=2, event_time=T0 + 30)  # event time never goes back
    assert out.getvalue().count("\n") == 1  # 5 s: no line
    clock.t += 5
    p.update(flows=2500, violations=3, event_time=T0 + 120)
    assert "progress 62%, file 2/2 b.jsonl, 2,500 flows, 125 flows/s, event time " \
           "2026-01-05T00:02:00Z, 3 violations, ETA 12s" in out.getvalue().splitlines()[-1]
    clock.t += 100
    p.close()
    assert "progress done in 2m00s, 2,500 flows" in out.getvalue().splitlines()[-1]


def test_a_replay_shorter_than_an_interval_logs_nothing() -> None:
    out = io.StringIO()
    p = Progress("log", [10], every=30, stream=out, clock=Clock())
    p.next_file(Path("a"))
    p.update(flows=1, violations=0, event_time=T0)
    p.close()
    assert out.getvalue() == ""


def test_bar_draws_flows_and_event_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")  # the bar is cut to the terminal's width
    out = io.StringIO()
    p = Progress("bar", [2048], stream=out)
    p.next_file(Path("flows.jsonl"))
    p.read(1024)
    p.update(flows=12_345, violations=7, event_time=T0)
    p.close()
    text = out.getvalue()
    assert "50%" in text and "1/1" in text
    assert "2026-01-05 00:00, 12,345 flows, 7 violations" in text


def test_auto_is_a_bar_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_mode("auto", Tty()) == "bar"
    assert resolve_mode("auto", io.StringIO()) == "log"
    with pytest.raises(ValueError, match="progress mode must be one of"):
        Progress("fancy", [1])


def test_replay_logs_progress_per_block(estate_dir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    flows = estate_dir / "flows.jsonl.gz"
    s = replay([flows], load_inventory(estate_dir / "inventory.jsonl"),
               CoreSettings(audit_days=10), progress="log", progress_every=0)
    lines = [x for x in capsys.readouterr().err.splitlines() if "segflow: progress" in x]
    assert len(lines) >= 3 and "done in" in lines[-1]
    pcts = [int(m.group(1)) for x in lines if (m := re.search(r"progress (\d+)%", x))]
    assert pcts == sorted(pcts) and pcts[-1] == 100
    times = [m.group(1) for x in lines if (m := re.search(r"event time (\S+),", x))]
    assert times == sorted(times) and len(set(times)) > 1
    assert f"{s.flows:,} flows" in lines[-1]


def test_cli_progress_off_a_terminal_is_log_lines(estate_dir: Path, tmp_path: Path) -> None:
    r = segflow("replay", str(estate_dir / "flows.jsonl.gz"), "--inventory",
                str(estate_dir / "inventory.jsonl"), "--audit-days", "10", "--no-store",
                "--progress-every", "0", cwd=tmp_path)  # stderr is a pipe: auto → log
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines and all(" segflow: progress " in x for x in lines), r.stderr
    assert "ETA" in lines[0] and "\r" not in r.stderr
