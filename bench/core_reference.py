"""Everything the core emits over a few generated estates, to check that a speed change
changes nothing: every violation event (id, version, all fields, in emission order),
incident, edge-minute aggregate, host window, rule and readiness row, per estate and batch
size. Not a test (minutes of CPU); run it before and after a change and compare.

    .venv/bin/python bench/core_reference.py record ref.pkl
    .venv/bin/python bench/core_reference.py check ref.pkl     # exit 1 and the first diff
    .venv/bin/python bench/core_reference.py check ref.pkl --loose  # counts read only
                                                    # when scoring may differ (see _traced)
"""

from __future__ import annotations

import hashlib
import itertools
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.inventory import Inventory, entry_from_record  # noqa: E402
from pipeline.core.pipeline import BatchOutput, Pipeline  # noqa: E402
from pipeline.core.settings import CoreSettings  # noqa: E402
from pipeline.generate import GenerateConfig, build_estate, iter_flow_chunks  # noqa: E402
from pipeline.generate.config import ATTACK_KINDS  # noqa: E402

# (seed, apps, workstations, flows per day, days, audit days, batch sizes)
CASES = [
    (5, 3, 4, 300, 3, 2, (997, 5_000)),
    (11, 6, 20, 3_000, 4, 2, (2_048, 20_000)),
    (2, 12, 60, 10_000, 5, 3, (7_777, 60_000)),
    (9, 8, 40, 5_000, 3, 1, (3_001,)),  # a short audit: violation-heavy
]


_TRACE: list[str] = []  # digests of the per-flow running values the detectors compare


def _digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _traced() -> None:
    """Record what the per-host state returns per flow (not only what crossed a threshold)."""
    from pipeline.core import beacon, hosts, hostsets

    def wrap(cls: Any, name: str, pick: Any, tag: str = "") -> None:
        orig = getattr(cls, name)

        def f(self: Any, *a: Any, **k: Any) -> Any:
            r = orig(self, *a, **k)
            _TRACE.append(f"{cls.__name__}.{name}{tag}:{_digest(*pick(r))}")
            return r
        setattr(cls, name, f)

    wrap(hosts.HostWindows, "add", lambda r: (r.tracked, r.row_key, r.win, r.port_peers))
    # the flow and failure counts are read only when scoring: traced apart (--loose skips)
    wrap(hosts.HostWindows, "add", lambda r: (r.flows, r.failures, r.known_failures),
         ".counts")
    wrap(hostsets.RunningSums, "add", lambda r: r)
    wrap(beacon.BeaconSeries, "add", lambda r: r)


def _canon(out: BatchOutput) -> dict[str, Any]:
    return {
        "violations": out.violations,
        "incidents": out.incidents,
        "rules": out.rules,
        "edge_minutes": out.edge_minutes.to_pylist(),
        "readiness": out.readiness.to_pylist(),
        "host_windows": {k: np.asarray(v).tolist() for k, v in out.host_windows.items()},
        "counts": [out.flows, out.audit_flows, out.enforce_flows, out.late_audit_flows],
    }


def run_case(seed: int, apps: int, ws: int, fpd: int, days: int, audit: int,
             batch: int) -> list[dict[str, Any]]:
    cfg = GenerateConfig(seed=seed, apps=apps, workstations=ws, flows_per_day=fpd, days=days,
                         audit_days=audit, attack_kinds=ATTACK_KINDS)
    est = build_estate(cfg)
    flows = pa.concat_tables(list(iter_flow_chunks(est)))
    p = Pipeline(CoreSettings(audit_days=audit),
                 Inventory([entry_from_record(r) for r in est.inventory]))
    outs = []
    for lo, hi in itertools.pairwise([*range(0, flows.num_rows, batch), flows.num_rows]):
        outs.append(_canon(p.process(flows.slice(lo, hi - lo))))
    outs.append(_canon(p.flush()))
    outs.append({"counts": dict(sorted(p.counts.items()))})
    outs.append({"trace": list(_TRACE)})
    _TRACE.clear()
    return outs


def record_all() -> dict[str, list[dict[str, Any]]]:
    res = {}
    for seed, apps, ws, fpd, days, audit, batches in CASES:
        for b in batches:
            name = f"seed={seed} apps={apps} ws={ws} fpd={fpd} days={days} batch={b}"
            res[name] = run_case(seed, apps, ws, fpd, days, audit, b)
            n = sum(len(o.get("violations", [])) for o in res[name])
            digest = hashlib.sha256(pickle.dumps(res[name])).hexdigest()[:12]
            print(f"{name}: {n} violation events, {digest}", flush=True)
    return res


def _first_diff(a: Any, b: Any, path: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{path}: type {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return f"{path}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            d = _first_diff(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: len {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _first_diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if a != b and not (isinstance(a, float) and a != a and b != b):
        return f"{path}: {a!r} != {b!r}"
    return None


def main() -> None:
    cmd, path = sys.argv[1], Path(sys.argv[2])
    _traced()
    res = record_all()
    if cmd == "record":
        path.write_bytes(pickle.dumps(res))
        return
    ref = pickle.loads(path.read_bytes())
    if "--loose" in sys.argv:  # leave out the traced values a change may zero when unread
        for r in (ref, res):
            for outs in r.values():
                outs[-1]["trace"] = [t for t in outs[-1]["trace"] if ".counts:" not in t]
    bad = 0
    for name, outs in ref.items():
        d = _first_diff(outs, res[name])
        if d:
            bad += 1
            print(f"DIFF {name}: {d}")
    print("identical" if not bad else f"{bad} case(s) differ")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
