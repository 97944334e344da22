"""The render report: every rule a plane could not express (or expressed only approximately),
why, and what enforcing the rendered documents will therefore do to that traffic.

Each entry is one JSON object (``render-report.jsonl``); :func:`summary` is the human
version (``render-report.txt``). ``effect`` is one of:

- ``blocked``: the workload is isolated in that direction on this plane (default deny or an
  allow policy selecting it), so the traffic the rule describes will be dropped;
- ``not-enforced``: this plane does not isolate that workload/direction, so the traffic keeps
  flowing (nothing protects it there either);
- ``wider``: the rule was rendered, but broader than the intent (e.g. a security group
  cannot carve internal ranges out of ``0.0.0.0/0``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.events import peer_text, proto_name
from pipeline.core.intents import CandidateRule
from pipeline.policy.labels import show

REPORT_JSONL = "render-report.jsonl"
REPORT_TEXT = "render-report.txt"


def _safe(text: str, limit: int = 160) -> str:
    """Untrusted names in report text: printable ASCII, bounded."""
    if text.isascii() and text.isprintable() and len(text) <= limit:
        return text
    return show(text, limit)


def entries(
    plane: str,
    rules: Mapping[str, CandidateRule],
    skipped: Iterable[tuple[str, str]],
    isolated: Callable[[CandidateRule], bool],
    wider: Iterable[tuple[str, str]] = (),
) -> list[dict[str, Any]]:
    """Report entries for skipped rules (effect from ``isolated``) and widened ones."""
    out: list[dict[str, Any]] = []
    for rule_id, reason, forced in [*((i, r, None) for i, r in skipped),
                                    *((i, r, "wider") for i, r in wider)]:
        rule = rules.get(rule_id)
        entry: dict[str, Any] = {
            "plane": plane,
            "rule_id": _safe(rule_id),
            "category": category(reason),
            "reason": reason,
        }
        if rule is not None:
            effect = forced or ("blocked" if isolated(rule) else "not-enforced")
            entry.update(
                app=_safe(rule.app.key if isinstance(rule.app.key, str) else "?"),
                env=_safe(str(rule.app.env)),
                direction=_safe(str(rule.direction)),
                peer=_safe(str(peer_text(rule.peer))),
                proto=proto_name(rule.proto) if isinstance(rule.proto, int) else "?",
                ports=[p for p in rule.ports if isinstance(p, int)],
                flows=rule.evidence.flows,
                effect=effect,
                consequence=_consequence(effect, rule),
            )
        else:
            entry.update(effect=forced or "not-enforced", consequence="")
        out.append(entry)
    out.sort(key=lambda e: (e["plane"], e.get("app", ""), e["rule_id"], e["reason"]))
    return out


def category(reason: str) -> str:
    """``invalid``, ``unsupported``, ``non-pod``, ``review``, ``rejected``, ``wider``, ..."""
    return reason.split(":", 1)[0].split(" ", 1)[0]


def _consequence(effect: str, rule: CandidateRule) -> str:
    peer = _safe(str(peer_text(rule.peer)))
    what = (f"{rule.direction} {'from' if rule.direction == 'ingress' else 'to'} {peer}"
            f" on {proto_name(rule.proto)}"
            + (f"/{','.join(map(str, rule.ports))}" if rule.ports else ""))
    if effect == "blocked":
        return f"{what} will be dropped once {_safe(rule.app.key)} is enforced on this plane"
    if effect == "wider":
        return f"{what} is allowed, together with more than the rule asked for"
    return f"{what} is not restricted on this plane (neither allowed nor blocked)"


def jsonl(report: Iterable[Mapping[str, Any]]) -> str:
    return "".join(orjson.dumps(e, option=orjson.OPT_SORT_KEYS).decode() + "\n" for e in report)


def summary(plane: str, files: int, report: list[dict[str, Any]]) -> str:
    """A short human summary: counts per category and effect, then the blocked rules."""
    lines = [f"segflow render report: {plane}", f"  documents written: {files}"]
    if not report:
        lines.append("  every candidate rule was rendered as intended")
        return "\n".join(lines) + "\n"
    effects = Counter(e["effect"] for e in report)
    cats = Counter(e["category"] for e in report)
    lines.append("  not rendered as intended: " + ", ".join(
        f"{n} {c}" for c, n in sorted(cats.items())))
    lines.append("  effect when enforced: " + ", ".join(
        f"{n} {c}" for c, n in sorted(effects.items())))
    blocked = [e for e in report if e["effect"] == "blocked"]
    if blocked:
        lines.append("  traffic the default deny will block (review before enforcing):")
        for e in blocked[:200]:
            lines.append(f"    - {e.get('app', '?')} {e.get('consequence', '')}"
                         f" [{e['rule_id']}: {e['reason']}]")
        if len(blocked) > 200:
            lines.append(f"    ... {len(blocked) - 200} more in {REPORT_JSONL}")
    return "\n".join(lines) + "\n"


def write_report(plane: str, files: int, report: list[dict[str, Any]], out_dir: Path,
                 ) -> list[Path]:
    """Write ``render-report.jsonl`` and ``render-report.txt`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / REPORT_JSONL, out_dir / REPORT_TEXT]
    paths[0].write_text(jsonl(report), encoding="utf-8")
    paths[1].write_text(summary(plane, files, report), encoding="utf-8")
    return paths


__all__ = ["REPORT_JSONL", "REPORT_TEXT", "category", "entries", "jsonl", "summary", "write_report"]
