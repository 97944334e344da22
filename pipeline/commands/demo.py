"""``segflow demo``: generate a small estate, replay it into the embedded store, show results."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.commands.evaluate import load_truth
from pipeline.commands.replay import replay
from pipeline.commands.report import inputs_from_summary, write_report
from pipeline.commands.summary import print_replay_summary
from pipeline.core.inventory import load_inventory
from pipeline.core.settings import CoreSettings
from pipeline.generate import GenerateConfig, write_estate
from pipeline.storage import open_store


def run_demo(out: Path, store_url: str | None, seed: int,
             settings: CoreSettings | None = None) -> int:
    """The whole loop on generated data; returns the exit status. ``settings`` default to
    the core's, with the generated estate's audit length."""
    cfg = GenerateConfig(seed=seed)
    if settings is None:
        settings = CoreSettings(audit_days=cfg.audit_days)
    data = out / "data"
    results = out / "out"
    t0 = time.perf_counter()
    print(f"generating a synthetic estate ({cfg.apps} apps, {cfg.days} days, audit "
          f"{cfg.audit_days} days, seed {seed}) into {data} …", flush=True)
    write_estate(cfg, data)
    print(f"  done in {time.perf_counter() - t0:.1f} s", flush=True)
    url = store_url or f"chdb://{(out / 'store').as_posix()}"
    inventory = load_inventory(data / "inventory.jsonl", internal_cidrs=settings.internal_cidrs)
    store = open_store(url, migrate=True)
    try:
        summary = replay(
            [data / "flows.jsonl.gz"], inventory, settings,
            store=store,
            violations_path=results / "violations.jsonl",
            rules_path=results / "candidate-rules.jsonl",
            incidents_path=results / "incidents.jsonl",
            dead_letter_path=results / "dead-letter.jsonl",
            policies_dir=results / "policies",
            progress="auto",
        )
        top = store.query_rows(
            "SELECT concat(src_namespace, '/', src_app), concat(dst_namespace, '/', dst_app), "
            "service_port, sum(flows) AS f FROM edge_minute FINAL "
            "GROUP BY 1, 2, 3 ORDER BY f DESC LIMIT 5"
        )
        write_report(store, results / "report.html", inputs=inputs_from_summary(summary))
    finally:
        store.close()
    print_replay_summary(
        summary, store_url=url, truth=load_truth(data / "truth.jsonl"),
        outputs={"violations": results / "violations.jsonl",
                 "candidate rules": results / "candidate-rules.jsonl",
                 "incidents": results / "incidents.jsonl",
                 "policies": results / "policies",
                 "dead letters": results / "dead-letter.jsonl",
                 "report": results / "report.html"},
    )
    print()
    print("busiest edges in the store (SELECT … FROM edge_minute FINAL):")
    for src, dst, port, flows in top:
        print(f"  {src:>28} → {dst:<28} :{port:<5} {flows:>10,} flows")
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    return 0


__all__ = ["run_demo"]
