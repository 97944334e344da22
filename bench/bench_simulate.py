"""Policy simulation at estate scale: 90 days of a ~500-workload estate's aggregates.

Generates the estate, replays it into chdb, then simulates its own candidate rules over the
whole window and prints: the edge_minute rows, the aggregate query's time against its floor
(a plain ``count()`` over the same rows with FINAL), the per-edge evaluation's time and the
verdicts. Not a test: speed is machine-dependent, so compare the ratio.

    .venv/bin/python bench/bench_simulate.py [--apps 200] [--days 90] [--flows-per-day N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.commands.replay import replay  # noqa: E402
from pipeline.commands.simulate import Catalog, policies_from_rules, simulate  # noqa: E402
from pipeline.core.inventory import DEFAULT_INTERNAL_CIDRS, load_inventory  # noqa: E402
from pipeline.core.settings import CoreSettings  # noqa: E402
from pipeline.generate import GenerateConfig, write_estate  # noqa: E402
from pipeline.storage import open_store  # noqa: E402
from pipeline.storage.rules import load_rules  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--apps", type=int, default=200)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--audit-days", type=int, default=30)
    ap.add_argument("--flows-per-day", type=int, default=30_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="segflow-bench-sim-") as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        s = write_estate(GenerateConfig(apps=args.apps, days=args.days,
                                        audit_days=args.audit_days,
                                        flows_per_day=args.flows_per_day), out / "data")
        print(f"generated {s.flows:,} flows in {time.perf_counter() - t0:.1f} s")
        inv = load_inventory(s.inventory_path)
        with open_store(f"chdb://{out / 'store'}", migrate=True) as store:
            t0 = time.perf_counter()
            summary = replay([s.flows_path], inv, CoreSettings(audit_days=args.audit_days),
                             store=store)
            print(f"replayed in {time.perf_counter() - t0:.1f} s: {summary.workloads} workloads,"
                  f" {summary.edges} learned edges, {summary.edge_minute_rows:,} edge-minute rows")
            rules = [r.rule for r in load_rules(store)[0]]
            catalog = Catalog()
            catalog.add_inventory(inv)
            catalog.add_rules(rules)
            t0 = time.perf_counter()
            policies = policies_from_rules(rules, "networkpolicy", DEFAULT_INTERNAL_CIDRS)
            render_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            floor = store.query_rows("SELECT count() FROM edge_minute FINAL")[0][0]
            floor_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            sim = simulate(store, policies, catalog, source="rules:all", start=0.0,
                           end=4_102_444_800.0)
            total = time.perf_counter() - t0
            flows_ok, edges_ok = sim.coverage()
            print(f"{len(rules)} rules rendered to {len(policies.networkpolicies)} "
                  f"NetworkPolicies in {render_s:.2f} s")
            print(f"simulation of {floor:,} edge-minute rows ({args.days} days): {total:.2f} s"
                  f" = aggregate query {sim.query_seconds:.2f} s ({sim.rows_scanned:,} edges)"
                  f" + evaluation {sim.eval_seconds:.2f} s;"
                  f" floor count() FINAL {floor_s:.2f} s → query/floor"
                  f" {sim.query_seconds / max(floor_s, 1e-9):.1f}")
            print(f"verdicts: {len(sim.blocked)} of {len(sim.results)} edges blocked;"
                  f" coverage {flows_ok:.2%} of flows, {edges_ok:.2%} of edges")


if __name__ == "__main__":
    main()
