"""Replay says loudly when the audit leaves (almost) nothing to check, and reports trust,
audit findings and readiness in its summary."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.commands.replay import replay
from pipeline.commands.summary import print_replay_summary
from pipeline.core.settings import CoreSettings
from tests.conftest import DAY, T0, flow, make_inventory

INV = [{"ip": "10.0.0.1", "app": "web", "namespace": "shop"},
       {"ip": "10.0.0.2", "app": "db", "namespace": "shop"},
       {"ip": "10.0.0.4", "app": "intruder", "namespace": "x"}]


def write(tmp: Path, records: list[dict[str, Any]]) -> Path:
    path = tmp / "flows.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n"
                              for r in sorted(records, key=lambda r: r["start"])))
    return path


def days_of(n: int) -> list[dict[str, Any]]:
    return [flow(T0 + d * DAY + h * 3600 + 5, "10.0.0.1", "10.0.0.2", 40000 + h, 5432)
            for d in range(n) for h in range(24)]


def run(tmp: Path, records: list[dict[str, Any]], audit_days: float) -> tuple[Any, list[str],
                                                                              str]:
    warned: list[str] = []
    summary = replay([write(tmp, records)], make_inventory(INV),
                     CoreSettings(audit_days=audit_days), warn=warned.append)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        print_replay_summary(summary, store_url=None)
    return summary, warned, text.getvalue()


def test_an_audit_longer_than_the_data_warns_loudly(tmp_path: Path) -> None:
    summary, warned, text = run(tmp_path, days_of(3), audit_days=30)
    assert summary.enforce_flows == 0
    [message] = summary.audit_warnings
    assert message in warned and message.startswith("NO FLOW WAS CHECKED AFTER THE AUDIT")
    assert "30-day audit covers all of the data (3.0 days)" in message
    assert "WARNING" in text and "NO FLOW WAS CHECKED" in text


def test_an_audit_over_nearly_all_of_the_data_warns(tmp_path: Path) -> None:
    summary, warned, text = run(tmp_path, days_of(10), audit_days=9.5)
    assert summary.enforce_flows > 0
    [message] = summary.audit_warnings
    assert message.startswith("THE AUDIT COVERS 95% OF THE DATA") and message in warned
    assert "THE AUDIT COVERS" in text


@pytest.mark.parametrize("audit_days", [3, 5])
def test_a_fair_audit_does_not_warn(tmp_path: Path, audit_days: float) -> None:
    summary, warned, _ = run(tmp_path, days_of(10), audit_days=audit_days)
    assert summary.audit_warnings == [] and warned == []


def test_the_summary_reports_trust_findings_and_readiness(tmp_path: Path) -> None:
    poison = [flow(T0 + DAY + 7200 + i, "10.0.0.4", "10.0.0.2", 43000 + i, 5432)
              for i in range(2)]
    scan = [flow(T0 + 2 * DAY + 3600 + i, "10.0.0.4", "10.0.0.1", 50000, 2000 + i)
            for i in range(25)]
    summary, _, text = run(tmp_path, days_of(6) + poison + scan, audit_days=4)
    assert summary.provisional_edges == 26 and summary.audit_findings == 1
    assert "1 edges trusted, 26 provisional" in text and "1 audit finding(s)" in text
    assert {r.key for r in summary.readiness} == {"shop/web", "shop/db", "x/intruder"}
    assert "apps ready to enforce" in text
