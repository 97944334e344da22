"""Fixtures of the streaming tests: one small generated estate and its replay reference."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from pipeline.commands.replay import replay
from pipeline.core.inventory import load_inventory
from pipeline.core.settings import CoreSettings
from pipeline.generate import GenerateConfig, write_estate
from pipeline.stream.outputs import latest_by_id
from tests.stream.harness import Totals, totals_of
from tests.stream.own_broker import own_broker  # noqa: F401 - fixture for outage/soak tests

ESTATE = GenerateConfig(seed=5, apps=6, days=9, audit_days=6, flows_per_day=6000)


def sentinel(cfg: GenerateConfig, after: float = 0.0) -> bytes:
    """A rejected attempt from the internet a day after the estate ends. It moves event time
    past every open window — what replay's end-of-input flush does — and raises no event
    (rejected external traffic is not alerted), so stream and replay can be compared."""
    t = cfg.end + 86_400 + after
    return orjson.dumps({"start": t, "end": t + 1,
                         "src_ip": "192.0.2.77", "dst_ip": "10.1.0.4", "src_port": 40_000,
                         "dst_port": 9, "proto": 6, "bytes": 60, "packets": 1,
                         "action": "reject"})


@dataclass(frozen=True)
class Reference:
    """The estate as raw lines, and what ``segflow replay`` makes of them."""

    inventory: Path
    flows_file: Path
    lines: list[bytes]
    audit_start: float
    audit_days: float
    totals: Totals
    violations: dict[str, dict[str, Any]]
    rules: dict[str, dict[str, Any]]
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)


def replay_reference(inventory: Path, lines: list[bytes], flows_file: Path, *,
                     audit_start: float, audit_days: float) -> Reference:
    """``lines`` written to ``flows_file`` and replayed with this audit start."""
    flows_file.write_bytes(b"\n".join(lines) + b"\n")
    settings = CoreSettings(audit_days=audit_days, audit_start=audit_start)
    tables: list[pa.Table] = []
    summary = replay([flows_file], load_inventory(inventory), settings, fmt="canonical",
                     on_batch=lambda o: tables.append(o.edge_minutes))
    assert summary.violations and summary.rules
    return Reference(inventory, flows_file, lines, audit_start, audit_days, totals_of(tables),
                     latest_by_id(summary.violations), latest_by_id(summary.rules),
                     dict(summary.incidents))


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    out = tmp_path_factory.mktemp("stream-estate")
    s = write_estate(ESTATE, out)
    assert b"192.0.2." not in s.inventory_path.read_bytes()  # the sentinel stays "world"
    lines = gzip.decompress(s.flows_path.read_bytes()).splitlines()
    lines.append(sentinel(ESTATE))
    return replay_reference(s.inventory_path, lines, out / "flows-with-sentinel.jsonl",
                            audit_start=ESTATE.start, audit_days=ESTATE.audit_days)
