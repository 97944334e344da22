"""A seeded synthetic estate (workloads, pod churn, traffic, attacks) for demos and tests.

    cfg = GenerateConfig(seed=7)
    estate = build_estate(cfg)             # inventory, plan and ground truth
    for table in iter_flow_chunks(estate): # one FLOW_SCHEMA table per day, time-ordered
        lines = flow_records_to_jsonl(table)
    write_estate(cfg, Path("var/demo"))    # inventory.jsonl, flows.jsonl.gz, truth.jsonl
"""

from __future__ import annotations

from pipeline.generate.config import DEFAULT_START, GenerateConfig
from pipeline.generate.estate import Estate, build_estate, iter_flow_chunks
from pipeline.generate.records import flow_records_to_jsonl
from pipeline.generate.writer import GenerateSummary, write_estate

__all__ = [
    "DEFAULT_START",
    "Estate",
    "GenerateConfig",
    "GenerateSummary",
    "build_estate",
    "flow_records_to_jsonl",
    "iter_flow_chunks",
    "write_estate",
]
