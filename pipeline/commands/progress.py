"""Replay progress: a bar on a terminal (tqdm), periodic log lines anywhere else.

Position is measured in bytes of the input files as stored (compressed for .gz), so the
ETA holds for a 90-day replay under a scheduler as well as on a terminal. Each log line
carries flows, throughput, the event time reached and the ETA; the last line says done.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pipeline.core.text import printable

MODES = ("auto", "bar", "log", "off")
DEFAULT_EVERY = 30.0  # seconds between log lines
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar:12}| {n_fmt}/{total_fmt} ETA {remaining}{postfix}"


def resolve_mode(mode: str, stream: TextIO | None = None) -> str:
    """``auto`` → ``bar`` on a terminal, ``log`` elsewhere; other modes as given."""
    if mode != "auto":
        return mode
    stream = stream or sys.stderr
    return "bar" if stream.isatty() else "log"


def _event_time(t: float | None, *, short: bool = False) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M" if short
                                                      else "%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Tracks a replay over ``sizes`` (bytes per input file) and reports it in ``mode``."""

    def __init__(self, mode: str, sizes: list[int], *, every: float = DEFAULT_EVERY,
                 stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}")
        self.stream = stream or sys.stderr
        self.mode = resolve_mode(mode, self.stream)
        self.sizes = sizes
        self.total = sum(sizes)
        self.every = every
        self.clock = clock
        self.t0 = clock()
        self.last_line = self.t0
        self.file_index = -1
        self.name = ""
        self.base = 0  # bytes of the files already done
        self.offset = 0  # position within the current file
        self.flows = 0
        self.violations = 0
        self.event_time: float | None = None
        self.lines = 0
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm import tqdm

            # the size as shutil sees it (COLUMNS/LINES, the terminal, else 80x24): tqdm's own
            # probe gives -1 on a pseudo-terminal of size 0 and then draws nothing
            size = shutil.get_terminal_size()
            self._bar = tqdm(total=self.total, unit="B", unit_scale=True, unit_divisor=1024,
                             file=self.stream, ncols=size.columns, nrows=size.lines,
                             leave=False, desc="replay", bar_format=BAR_FORMAT)

    @property
    def done_bytes(self) -> int:
        return min(self.base + self.offset, self.total)

    def next_file(self, path: Path) -> None:
        """A new input file starts (files are reported in the order of ``sizes``)."""
        if self.file_index >= 0:
            self.base += self.sizes[self.file_index]
        self.file_index += 1
        self.offset = 0
        self.name = printable(path.name)  # file names may hold terminal control characters
        if self._bar is not None:
            self._bar.set_description_str(f"{self.file_index + 1}/{len(self.sizes)}",
                                          refresh=False)
            self._refresh_bar()

    def read(self, offset: int) -> None:
        """Position reached in the current file (bytes as stored)."""
        self.offset = offset

    def update(self, *, flows: int, violations: int, event_time: float | None) -> None:
        """After each block: totals so far and the newest event time reached."""
        self.flows = flows
        self.violations = violations
        if event_time is not None:
            self.event_time = event_time if self.event_time is None else max(
                self.event_time, event_time)
        if self._bar is not None:
            self._refresh_bar()
        elif self.mode == "log" and self.clock() - self.last_line >= self.every:
            self._line()

    def close(self) -> None:
        """The end of the replay: remove the bar, or write the last log line (when there
        were earlier ones: a replay shorter than one interval stays quiet)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "log" and self.lines:
            self.offset = self.total - self.base
            self._line(done=True)

    # -- output ---------------------------------------------------------------------------
    def _refresh_bar(self) -> None:
        self._bar.n = self.done_bytes
        self._bar.set_postfix_str(f"{_event_time(self.event_time, short=True)}, "
                                  f"{self.flows:,} flows, {self.violations:,} violations",
                                  refresh=False)
        self._bar.refresh()

    def text(self, *, done: bool = False) -> str:
        """One log line (without the time-of-day prefix)."""
        now = self.clock()
        elapsed = max(now - self.t0, 1e-9)
        rate = self.flows / elapsed
        parts = []
        if done:
            parts.append(f"done in {_duration(elapsed)}")
        else:
            pct = 100.0 * self.done_bytes / self.total if self.total else 0.0
            parts.append(f"{pct:.0f}%")
            parts.append(f"file {self.file_index + 1}/{len(self.sizes)} {self.name}")
        parts.append(f"{self.flows:,} flows")
        parts.append(f"{rate:,.0f} flows/s")
        parts.append(f"event time {_event_time(self.event_time)}")
        parts.append(f"{self.violations:,} violations")
        if not done:
            d = self.done_bytes
            eta = elapsed * (self.total - d) / d if d else None
            parts.append(f"ETA {_duration(eta) if eta is not None else 'unknown'}")
        return "progress " + ", ".join(parts)

    def _line(self, *, done: bool = False) -> None:
        self.last_line = self.clock()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.stream.write(f"{stamp} segflow: {self.text(done=done)}\n")
        self.stream.flush()
        self.lines += 1


__all__ = ["DEFAULT_EVERY", "MODES", "Progress", "resolve_mode"]
