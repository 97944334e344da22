"""Shared fixtures: small hand-made flows and a generated estate (built once per session)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from pipeline.core.inventory import Inventory, entry_from_record
from pipeline.sources.canonical import CanonicalParser

pytest_plugins = ["tests.kafka_broker"]

T0 = 1_767_571_200.0  # 2026-01-05T00:00:00Z, a Monday
DAY = 86_400.0


def make_inventory(records: Iterable[dict[str, Any]]) -> Inventory:
    return Inventory([entry_from_record(r) for r in records])


def flows_table(records: Iterable[dict[str, Any]]) -> pa.Table:
    """Parse canonical records through the real parser (so tests use real normalisation)."""
    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
    result = CanonicalParser().parse(data, "test", 1)
    assert not result.rejects, result.rejects
    return result.flows


def flow(t: float, src: str, dst: str, sport: int, dport: int, *, proto: int = 6,
         nbytes: int = 1000, packets: int = 4, action: str = "accept",
         flags: int | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"start": t, "end": t + 1, "src_ip": src, "dst_ip": dst,
                           "src_port": sport, "dst_port": dport, "proto": proto,
                           "bytes": nbytes, "packets": packets, "action": action}
    if flags is not None:
        rec["tcp_flags"] = flags
    return rec


@pytest.fixture(scope="session")
def estate_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated estate with attacks after a 10-day audit."""
    from pipeline.generate import GenerateConfig, write_estate

    out = tmp_path_factory.mktemp("estate")
    write_estate(GenerateConfig(seed=11, apps=8, days=14, audit_days=10, flows_per_day=12_000),
                 out)
    return out


@pytest.fixture
def table_of() -> Callable[[Iterable[dict[str, Any]]], pa.Table]:
    return flows_table


def replay_into_store(estate_dir: Path, out: Path) -> tuple[Any, str]:
    """Replay the generated estate (10-day audit) into a new chdb store under ``out``;
    returns the replay summary and the store URL."""
    from pipeline.commands.replay import replay
    from pipeline.core.inventory import load_inventory
    from pipeline.core.settings import CoreSettings
    from pipeline.storage import open_store

    url = f"chdb://{out / 'store'}"
    inv = load_inventory(estate_dir / "inventory.jsonl")
    with open_store(url, migrate=True) as store:
        summary = replay([estate_dir / "flows.jsonl.gz"], inv, CoreSettings(audit_days=10),
                         store=store)
    return summary, url
