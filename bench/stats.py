"""Shared by the bench scripts: the machine's load and the median/spread of repeated ratios.

This machine is shared and its speed drifts within minutes, so a bench measures each path
and its floor alternately, several rounds, and reports the ratio of each round (path vs the
floor of the same round) as median and spread (min–max), with the load average before and
after.
"""

from __future__ import annotations

import os
import statistics


def load() -> str:
    """The 1/5/15-minute load average and the number of cores, e.g. ``load 3.1 2.8 2.5 / 2``."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} {five:.1f} {fifteen:.1f} / {os.cpu_count()} cores"


def spread(values: list[float]) -> str:
    """``median [min–max]`` of ``values`` (ratios), e.g. ``0.74 [0.69–0.80]``."""
    return f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"
