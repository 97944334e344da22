"""``segflow simulate``: what a rule set would have blocked, before it is enforced.

The observed traffic comes from the store's per-minute edge aggregates, summed per edge
(client workload → server workload, port, protocol) over ``[--from, --to)`` by *one*
ClickHouse query — 90 days of minutes collapse there, never in a Python loop per row — or
from flow files, replayed into a temporary store first. The rule set is either a folder of
hand-written NetworkPolicy / AuthorizationPolicy YAML (``--policy DIR``) or the stored
candidate rules (``--rules accepted``), rendered for a plane and simulated as rendered.
Each distinct edge is evaluated once with :mod:`pipeline.policy.semantics`; identities
(labels, namespaces, service accounts, addresses) come from the inventory when given, else
from the stored rules' intents, else from the names alone (``app=<name>``).

Output: the blocked edges (table), every verdict (``--jsonl``), the ``simulation_results``
table the dashboard reads, and coverage (share of flows and of edges allowed).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

from pipeline.core.events import iso, proto_name
from pipeline.core.intents import CandidateRule, Workload
from pipeline.core.inventory import DEFAULT_INTERNAL_CIDRS, Inventory
from pipeline.errors import ConfigError, InputError
from pipeline.policy.semantics import Connection, Endpoint, PolicySet

EDGES_SQL = """
SELECT src_namespace, src_app, any(src_kind), dst_namespace, dst_app, any(dst_kind),
       service_port, proto,
       toUInt64(greatest(toInt64(sum(flows)) - toInt64(sum(rejected_flows)), 0)) AS accepted,
       sum(bytes), toFloat64(min(minute)), toFloat64(max(minute)) + 60
FROM edge_minute FINAL
WHERE minute >= toDateTime({from:Float64}, 'UTC') AND minute < toDateTime({to:Float64}, 'UTC')
GROUP BY src_namespace, src_app, dst_namespace, dst_app, service_port, proto
HAVING accepted > 0
ORDER BY src_namespace, src_app, dst_namespace, dst_app, service_port, proto
"""
MAX_POLICY_FILE = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class EdgeResult:
    src: Endpoint
    dst: Endpoint
    port: int
    proto: int
    flows: int
    bytes: int
    first_seen: float
    last_seen: float
    allowed: bool
    plane: str
    reason: str
    env: str


@dataclass
class Simulation:
    """Verdicts for every observed edge, with the totals the summary prints."""

    run_id: str
    source: str
    window: tuple[float, float]
    env: str | None
    results: list[EdgeResult] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    query_seconds: float = 0.0
    eval_seconds: float = 0.0
    rows_scanned: int = 0

    @property
    def blocked(self) -> list[EdgeResult]:
        return sorted((r for r in self.results if not r.allowed),
                      key=lambda r: (-r.flows, r.src.key, r.dst.key, r.port))

    def coverage(self) -> tuple[float, float]:
        """(share of flows allowed, share of edges allowed)."""
        flows = sum(r.flows for r in self.results)
        ok_flows = sum(r.flows for r in self.results if r.allowed)
        edges = len(self.results)
        ok_edges = sum(1 for r in self.results if r.allowed)
        return (ok_flows / flows if flows else 1.0, ok_edges / edges if edges else 1.0)


# -- identities ------------------------------------------------------------------------


@dataclass
class Catalog:
    """What is known about each workload, by (namespace, app)."""

    labels: dict[tuple[str, str], tuple[tuple[str, str], ...]] = field(default_factory=dict)
    kinds: dict[tuple[str, str], str] = field(default_factory=dict)
    accounts: dict[tuple[str, str], str] = field(default_factory=dict)
    envs: dict[tuple[str, str], str] = field(default_factory=dict)
    addresses: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    namespace_labels: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    _cache: dict[tuple[str, str, str], Endpoint] = field(default_factory=dict)

    def add_inventory(self, inventory: Inventory) -> None:
        from pipeline.core.inventory import _cidr_text

        for e in inventory.entries():
            info = e.info
            key = (info.namespace, info.app)
            if info.labels:
                self.labels.setdefault(key, info.labels)
            self.kinds.setdefault(key, info.kind)
            if info.service_account:
                self.accounts.setdefault(key, info.service_account)
            if info.env:
                self.envs.setdefault(key, info.env)
            if info.kind not in ("pod", "service"):
                self.addresses.setdefault(key, set()).add(_cidr_text(e.net, e.plen))

    def add_workload(self, w: Workload) -> None:
        key = (w.namespace, w.app)
        labels = dict(w.selector)
        if w.tier:
            labels.setdefault("tier", w.tier)
        if labels:
            self.labels.setdefault(key, tuple(sorted(labels.items())))
        self.kinds.setdefault(key, w.kind)
        if w.service_account:
            self.accounts.setdefault(key, w.service_account)
        if w.env:
            self.envs.setdefault(key, w.env)

    def add_rules(self, rules: Iterable[CandidateRule]) -> None:
        for r in rules:
            self.add_workload(r.app)
            if r.peer.workload is not None:
                self.add_workload(r.peer.workload)
                if r.peer.cidr and r.peer.workload.kind not in ("pod", "service"):
                    key = (r.peer.workload.namespace, r.peer.workload.app)
                    self.addresses.setdefault(key, set()).add(r.peer.cidr)

    def endpoint(self, namespace: str, app: str, kind: str) -> Endpoint:
        cached = self._cache.get((namespace, app, kind))
        if cached is not None:
            return cached
        key = (namespace, app)
        kind = self.kinds.get(key, kind) or "pod"
        if app == "world" and not namespace:
            ep = Endpoint("", "world", "world")
        elif app.startswith("unknown:"):
            ip = app.split(":", 1)[1]
            ep = Endpoint(namespace, app, "unknown",
                          addresses=(f"{ip}/{128 if ':' in ip else 32}",))
        else:
            labels = self.labels.get(key) or ((("app", app),) if kind in ("pod", "service")
                                              else ())
            ep = Endpoint(namespace, app, kind, labels, self.namespace_labels.get(namespace, ()),
                          self.accounts.get(key, ""), tuple(sorted(self.addresses.get(key, ()))))
        self._cache[(namespace, app, kind)] = ep
        return ep


# -- policy sources --------------------------------------------------------------------


def policies_from_dir(folder: Path, internal: Iterable[str]) -> PolicySet:
    """Every NetworkPolicy / AuthorizationPolicy in the YAML files under ``folder``."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of policy YAML files")
    docs: list[tuple[str, Any]] = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml")):
        if path.stat().st_size > MAX_POLICY_FILE:
            raise InputError(f"{path}: larger than {MAX_POLICY_FILE // 2**20} MiB")
        try:
            for i, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
                docs.append((f"{path}#{i}", doc))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not YAML: {str(exc).splitlines()[0]}") from None
    ps = PolicySet.from_documents(docs, internal)
    if not ps.networkpolicies and not ps.authz:
        raise InputError(f"{folder}: no NetworkPolicy or AuthorizationPolicy found")
    return ps


def policies_from_rules(rules: Iterable[CandidateRule], plane: str, internal: Iterable[str],
                        env: str | None = None) -> PolicySet:
    """Render the rules for ``plane`` (networkpolicy or istio) and parse the rendering."""
    from pipeline.policy import render

    if plane not in ("networkpolicy", "istio"):
        raise ConfigError("--plane must be networkpolicy or istio")
    result = render(plane, rules, env=env)
    docs = [(path, yaml.safe_load(text)) for path, text in sorted(result.files.items())]
    return PolicySet.from_documents(docs, internal)


def _digest(ps: PolicySet) -> str:
    text = repr((ps.networkpolicies, ps.authz))
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


# -- the simulation --------------------------------------------------------------------


def simulate(store: Any, policies: PolicySet, catalog: Catalog, *, source: str,
             start: float, end: float, env: str | None = None) -> Simulation:
    """Evaluate ``policies`` on every edge observed in ``[start, end)``."""
    run_id = "sim-" + hashlib.blake2b(
        f"{_digest(policies)}|{source}|{start}|{end}|{env}".encode(), digest_size=8).hexdigest()
    sim = Simulation(run_id, source, (start, end), env, ignored=list(policies.ignored))
    t0 = time.perf_counter()
    rows = store.query_rows(EDGES_SQL, {"from": start, "to": end})
    sim.query_seconds = time.perf_counter() - t0
    sim.rows_scanned = len(rows)
    t0 = time.perf_counter()
    verdicts: dict[tuple[Any, ...], Any] = {}
    for (sns, sapp, skind, dns, dapp, dkind, port, proto, flows, nbytes, first,
         last) in rows:
        src = catalog.endpoint(sns, sapp, skind)
        dst = catalog.endpoint(dns, dapp, dkind)
        src_env, dst_env = catalog.envs.get((sns, sapp), ""), catalog.envs.get((dns, dapp), "")
        if env is not None and env not in (src_env, dst_env):
            continue
        key = (src, dst, int(proto), int(port))
        v = verdicts.get(key)
        if v is None:
            v = verdicts[key] = policies.evaluate(Connection(src, dst, int(proto), int(port)))
        blame = src_env if (not v.allowed and v.reason.startswith("egress")) else dst_env
        sim.results.append(EdgeResult(src, dst, int(port), int(proto), int(flows), int(nbytes),
                                      float(first), float(last), v.allowed, v.plane, v.reason,
                                      blame))
    sim.eval_seconds = time.perf_counter() - t0
    return sim


def result_events(sim: Simulation, ran_at: float) -> list[dict[str, Any]]:
    """``simulation_result`` events (schemas/simulation_result.schema.json), one per edge."""
    stamp = iso(ran_at)
    out = []
    for r in sim.results:
        out.append({
            "run_id": sim.run_id, "ran_at": stamp, "policy_source": sim.source,
            "env": r.env, "window_from": iso(sim.window[0]), "window_to": iso(sim.window[1]),
            "src_namespace": r.src.namespace, "src_app": r.src.app,
            "dst_namespace": r.dst.namespace, "dst_app": r.dst.app,
            "service_port": r.port, "proto": r.proto,
            "verdict": "allowed" if r.allowed else "blocked", "plane": r.plane,
            "reason": r.reason, "flows": r.flows, "bytes": r.bytes,
            "first_seen": iso(r.first_seen), "last_seen": iso(min(r.last_seen, sim.window[1])),
            "version": int(ran_at * 1000),
        })
    return out


def summary(sim: Simulation, limit: int = 30) -> str:
    flows_ok, edges_ok = sim.coverage()
    blocked = sim.blocked
    apps = sorted({r.src.key for r in blocked} | {r.dst.key for r in blocked})
    lines = [
        f"simulation {sim.run_id}: {sim.source} over {iso(sim.window[0])} .. "
        f"{iso(sim.window[1])}" + (f" (env {sim.env})" if sim.env else ""),
        f"  edges observed: {len(sim.results):,}; would be blocked: {len(blocked):,}"
        f" ({sum(r.flows for r in blocked):,} flows); apps affected: {len(apps)}",
        f"  coverage: {flows_ok:.2%} of flows and {edges_ok:.2%} of edges allowed",
    ]
    by_env = Counter(r.env or "-" for r in blocked)
    if by_env and (len(by_env) > 1 or "-" not in by_env):
        lines.append("  blocked edges per env: " + ", ".join(
            f"{e} {n}" for e, n in sorted(by_env.items())))
    if blocked:
        header = ["client", "server", "port", "flows", "first seen", "last seen", "plane"]
        rows = [[r.src.key, r.dst.key, f"{proto_name(r.proto)}/{r.port}", f"{r.flows:,}",
                 iso(r.first_seen)[:16], iso(r.last_seen)[:16], r.plane] for r in blocked[:limit]]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
        for row in [header, *rows]:
            lines.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths,
                                                                          strict=False)).rstrip())
        if len(blocked) > limit:
            lines.append(f"  ... {len(blocked) - limit} more (--jsonl FILE has every verdict)")
    for note in sim.ignored[:5]:
        lines.append(f"  note: {note}")
    return "\n".join(lines) + "\n"


def write_jsonl(sim: Simulation, path: Path, ran_at: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for e in result_events(sim, ran_at):
            fh.write(orjson.dumps(e) + b"\n")


def _window(args: Any) -> tuple[float, float]:
    from pipeline.storage.queries import FAR_FUTURE, FAR_PAST

    start = FAR_PAST if args.start is None else args.start
    end = FAR_FUTURE if args.end is None else args.end
    if end <= start:
        raise ConfigError("--to must be after --from")
    return start, end


def run(args: Any) -> str:
    """The ``segflow simulate`` command (arguments from the CLI)."""
    from pipeline.core.inventory import load_inventory
    from pipeline.storage import open_store
    from pipeline.storage.rules import load_rules

    if (args.policy is None) == (args.rules is None):
        raise ConfigError("pass exactly one of --policy DIR or --rules accepted|proposed|all")
    internal = DEFAULT_INTERNAL_CIDRS
    start, end = _window(args)
    with tempfile.TemporaryDirectory(prefix="segflow-simulate-") as tmp:
        if args.flows:
            if args.inventory is None:
                raise ConfigError("--flows needs --inventory (to know who the addresses are)")
            from pipeline.commands.replay import replay
            from pipeline.core.settings import CoreSettings

            inv = load_inventory(args.inventory)
            with open_store(f"chdb://{tmp}/store", migrate=True) as flows_store:
                replay(args.flows, inv, CoreSettings(audit_days=366), store=flows_store)
        url = f"chdb://{tmp}/store" if args.flows else args.store
        with open_store(url, migrate=True) as store:
            catalog = Catalog()
            if args.inventory is not None:
                catalog.add_inventory(load_inventory(args.inventory))
            stored: list[CandidateRule] = []
            if args.rules is not None or not args.flows:
                try:
                    stored = [s.rule for s in load_rules(store, latest_run=False)[0]]
                except Exception:  # a store without rules: identities from the names only
                    stored = []
            catalog.add_rules(stored)
            if args.policy is not None:
                policies = policies_from_dir(args.policy, internal)
                source = str(args.policy)
            else:
                latest = [s.rule for s in load_rules(store)[0]]
                chosen = [r for r in latest
                          if (args.rules == "all" and r.status != "rejected")
                          or r.status == args.rules]
                if not chosen:
                    raise InputError(f"no {args.rules} rules in the store; see `segflow rules "
                                     "list`")
                policies = policies_from_rules(chosen, args.plane, internal, args.env)
                source = f"rules:{args.rules}:{args.plane}"
            sim = simulate(store, policies, catalog, source=source, start=start, end=end,
                           env=args.env)
            ran_at = datetime.now(UTC).timestamp()
            if args.jsonl is not None:
                write_jsonl(sim, args.jsonl, ran_at)
            if not args.flows and not args.no_store_results:
                store.write_events("simulation_results", result_events(sim, ran_at))
    out = summary(sim, args.limit)
    return out + (f"  timing: aggregate query {sim.query_seconds:.2f} s ({sim.rows_scanned:,} "
                  f"edges), evaluation {sim.eval_seconds:.2f} s\n")


__all__ = ["Catalog", "EdgeResult", "Simulation", "policies_from_dir", "policies_from_rules",
           "result_events", "run", "simulate", "summary"]
