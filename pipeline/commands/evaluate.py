"""Match violations against a ground-truth file (generated estates carry one).

An episode is *caught* when a violation of one of its expected types overlaps its time span
(± one suppression window) and names its source address or source workload. Violations that
match no malicious episode are *unexplained* (false positives on generated data).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.normalize import parse_time_text
from pipeline.errors import InputError


@dataclass
class Evaluation:
    caught: list[dict[str, Any]] = field(default_factory=list)
    missed: list[dict[str, Any]] = field(default_factory=list)
    unexplained: list[dict[str, Any]] = field(default_factory=list)
    benign_episodes: int = 0

    @property
    def recall(self) -> float:
        total = len(self.caught) + len(self.missed)
        return len(self.caught) / total if total else 1.0


def load_truth(path: Path) -> list[dict[str, Any]]:
    try:
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InputError(f"cannot read ground truth {path}: {exc}") from exc


def _t(v: Any) -> float:
    if isinstance(v, int | float):
        return float(v)
    t = parse_time_text(str(v))
    return 0.0 if t is None else t


def _matches(v: dict[str, Any], ep: dict[str, Any], slack: float, any_type: bool = False) -> bool:
    if not any_type and v["type"] not in ep.get("expected", []):
        return False
    first, last = _t(v["first_seen"]), _t(v["last_seen"])
    if last < _t(ep["start"]) - slack or first > _t(ep["end"]) + slack:
        return False
    ips = set(v["evidence"]["seen"].get("src_ips", [])) | {v.get("src_ip")}
    return ep.get("src_ip") in ips or ep.get("src_workload") == v.get("src_workload")


def evaluate(
    violations: Iterable[dict[str, Any]], truth: Iterable[dict[str, Any]], *, slack: float = 3600
) -> Evaluation:
    vs = list(violations)
    res = Evaluation()
    explained: set[str] = set()
    for ep in truth:
        if not ep.get("malicious"):
            res.benign_episodes += 1
            continue
        hits = [v for v in vs if _matches(v, ep, slack)]
        explained.update(v["id"] for v in vs if _matches(v, ep, slack, any_type=True))
        entry = {**ep, "violations": [v["id"] for v in hits],
                 "types": sorted({v["type"] for v in hits})}
        (res.caught if hits else res.missed).append(entry)
    res.unexplained = [v for v in vs if v["id"] not in explained]
    return res


__all__ = ["Evaluation", "evaluate", "load_truth"]
