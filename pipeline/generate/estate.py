"""The estate: inventory, communication plan and ground truth, and its flows day by day."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from pipeline.generate.config import GenerateConfig
from pipeline.generate.edges import EdgePlan, build_plan
from pipeline.generate.episodes import build_attacks, churn_truth, number, scheduled_jobs
from pipeline.generate.population import Population, build_population
from pipeline.generate.records import to_table
from pipeline.generate.traffic import SimFlows, exporter_names, synth_day


@dataclass
class Estate:
    """Everything planned for one seed; flows are synthesised lazily by :func:`iter_flow_chunks`."""

    cfg: GenerateConfig
    population: Population
    plan: EdgePlan
    attack_flows: SimFlows
    truth: list[dict[str, object]]  # episodes, time-ordered, as written to truth.jsonl

    @property
    def inventory(self) -> list[dict[str, object]]:
        """Entries as written to inventory.jsonl."""
        return self.population.inventory

    @property
    def external_cidrs(self) -> tuple[str, ...]:
        """Outside ranges flows may use: the inventory's external entries and unlisted ones."""
        return tuple(w.cidr for w in self.population.workloads if w.kind == "external" and w.cidr)

    @property
    def unlisted_cidrs(self) -> tuple[str, ...]:
        """Outside ranges that send traffic but are deliberately absent from the inventory."""
        return tuple(w.cidr for w in self.population.workloads if not w.listed and w.cidr)


def build_estate(cfg: GenerateConfig) -> Estate:
    """Inventory, plan and truth for ``cfg``; deterministic for ``cfg.seed``."""
    pop = build_population(cfg)
    plan = build_plan(cfg, pop)
    attacks, attack_flows = build_attacks(cfg, pop, plan)
    truth = number(churn_truth(pop) + scheduled_jobs(pop, plan) + attacks)
    return Estate(cfg, pop, plan, attack_flows, truth)


def iter_flow_chunks(estate: Estate) -> Iterator[pa.Table]:
    """One :data:`~pipeline.core.columns.FLOW_SCHEMA` table per day, time-ordered within and
    across chunks. Identity columns are null: flows carry addresses only, as flow logs do."""
    ips = pa.array(estate.population.ips, pa.string())
    exporters = pa.array(exporter_names(estate.population), pa.string())
    for day in range(estate.cfg.days):
        batch = synth_day(estate.cfg, estate.population, estate.plan, day, estate.attack_flows)
        yield to_table(batch, ips, exporters)


__all__ = ["Estate", "build_estate", "iter_flow_chunks"]
