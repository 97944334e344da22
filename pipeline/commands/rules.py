"""``segflow rules list|show|accept|reject|diff|export``: the candidate-rule lifecycle.

Candidate rules come from the latest audit run in the store; each carries a status
(proposed → accepted / rejected) kept as a decision history (who, when) in ``rule_status``.
``diff`` shows what a new audit run changed against the accepted set; ``export`` renders
the chosen rules for an enforcement plane, with the render report beside the documents.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.core.events import iso, peer_text, proto_name
from pipeline.core.intents import CandidateRule
from pipeline.errors import ConfigError, InputError
from pipeline.storage.rules import StoredRule, diff_rules, load_rules, record_decisions

STATUSES = ("proposed", "accepted", "rejected")


def add_parser(sub: Any, store_default: str) -> None:
    """Register ``segflow rules`` and its actions."""
    from pipeline.policy import CLOUDS, FORMATS

    r = sub.add_parser("rules", help="list, review (accept/reject), diff and export "
                       "candidate rules kept in a store")
    acts = r.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", default=store_default,
                       help="chdb://PATH or http(s)://user:pass@host:port/db "
                            "(default %(default)s)")

    ls = acts.add_parser("list", help="candidate rules of the latest audit run")
    common(ls)
    ls.add_argument("--status", choices=STATUSES, help="only rules with this status")
    ls.add_argument("--app", default="",
                    help="only rules protecting this app ('ns/app'; default: every app)")
    ls.add_argument("--env", help="only rules of this environment")
    sh = acts.add_parser("show", help="one rule: intent, evidence, decision")
    common(sh)
    sh.add_argument("rule_id", help="a rule id from `segflow rules list`")
    for name, verb in (("accept", "accepted"), ("reject", "rejected")):
        a = acts.add_parser(name, help=f"mark rules {verb} (who and when are recorded)")
        common(a)
        a.add_argument("rule_ids", nargs="*", help="rule ids (see `segflow rules list`)")
        a.add_argument("--all-proposed", action="store_true",
                       help="every proposed rule of the latest audit run (optionally --app)")
        a.add_argument("--app", default="",
                       help="with --all-proposed: only this app (default: every app)")
        a.add_argument("--by", default=os.environ.get("USER", ""),
                       help="who decides (default: $USER)")
        a.add_argument("--note", default="", help="why (default: no note)")
    d = acts.add_parser("diff", help="the latest audit run against the accepted rules")
    common(d)
    e = acts.add_parser("export", help="render rules for an enforcement plane")
    common(e)
    e.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                   help="enforcement plane to render for")
    e.add_argument("--cloud", choices=CLOUDS, help="with --format terraform")
    e.add_argument("--out", type=Path, required=True, help="output folder")
    e.add_argument("--env", help="only rules of this environment (dev, staging, prod, ...)")
    e.add_argument("--status", choices=("accepted", "proposed", "all"), default="accepted",
                   help="which rules to render (default: accepted; 'all' = not rejected)")
    e.add_argument("--staged", action="store_true",
                   help="calico: StagedNetworkPolicy (audit mode, nothing enforced)")
    e.add_argument("--no-default-deny", action="store_true",
                   help="no namespace default-deny documents")
    e.add_argument("--no-dns", action="store_true", help="no DNS egress to kube-dns")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines) + "\n"


def _ports(r: CandidateRule) -> str:
    return f"{proto_name(r.proto)}/{','.join(map(str, r.ports)) or '*'}"


def _load(store: Any) -> list[StoredRule]:
    rules, missing = load_rules(store)
    if not rules and missing:
        raise InputError(f"the store's {missing} candidate rules carry no intent (written before "
                         "segflow stored intents); replay the flows again")
    return rules


def cmd_list(store: Any, args: argparse.Namespace) -> str:
    rules = _load(store)
    rows = [[s.rule.id, s.rule.status + (" (review)" if s.rule.provisional else ""),
             s.rule.app.key, s.rule.app.env, s.rule.direction, peer_text(s.rule.peer),
             _ports(s.rule), f"{s.rule.evidence.flows:,}", f"{s.rule.confidence:.2f}"]
            for s in rules
            if (args.status is None or s.rule.status == args.status)
            and (not args.app or s.rule.app.key == args.app or s.rule.app.app == args.app)
            and (args.env is None or s.rule.app.env == args.env)]
    counts: Counter[str] = Counter(s.rule.status for s in rules)
    head = ["id", "status", "app", "env", "direction", "peer", "ports", "flows", "conf"]
    return _table(rows, head) + (f"{len(rows)} shown; latest audit run: "
                                 + ", ".join(f"{counts[s]} {s}" for s in STATUSES) + "\n")


def cmd_show(store: Any, rule_id: str) -> str:
    for s in _load(store):
        if s.rule.id == rule_id:
            r, ev = s.rule, s.rule.evidence
            decided = (f"{r.status} by {s.actor} at {iso(s.decided_at)}"
                       if s.decided_at is not None else "proposed (no decision yet)")
            lines = [
                f"rule {r.id}: {r.direction} {'from' if r.direction == 'ingress' else 'to'}"
                f" {peer_text(r.peer)} on {_ports(r)}",
                f"  protects  {r.app.key} (kind {r.app.kind}, env {r.app.env or '-'},"
                f" tier {r.app.tier or '-'}, service account {r.app.service_account or '-'},"
                f" selector {dict(r.app.selector)})",
                f"  peer      {r.peer.kind}"
                + (f" {r.peer.workload.key}" if r.peer.workload else "")
                + (f" cidr {r.peer.cidr}" if r.peer.cidr else "")
                + (f" except {','.join(r.peer.except_cidrs)}" if r.peer.except_cidrs else "")
                + (f" dns {','.join(r.peer.fqdns)}" if r.peer.fqdns else ""),
                f"  evidence  {ev.flows:,} flows, {ev.bytes:,} bytes, {ev.days_observed} days,"
                f" {iso(ev.first_seen)} .. {iso(ev.last_seen)}; confidence {r.confidence:.2f}"
                + ("; provisional: listed for review" if r.provisional else ""),
                f"  status    {decided}",
            ]
            return "\n".join(lines) + "\n"
    raise InputError(f"no rule {rule_id!r} in the latest audit run; see `segflow rules list`")


def cmd_decide(store: Any, args: argparse.Namespace, status: str) -> str:
    known = {s.rule.id: s.rule for s in _load(store)}
    ids = list(args.rule_ids)
    if args.all_proposed:
        ids += [i for i, r in known.items() if r.status == "proposed"
                and (not args.app or r.app.key == args.app or r.app.app == args.app)]
    if not ids:
        raise ConfigError("name rule ids or pass --all-proposed")
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise InputError(f"not in the latest audit run: {', '.join(unknown[:5])}"
                         + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""))
    n = record_decisions(store, ids, status, args.by, args.note)
    return f"{n} rule(s) {status} by {args.by.strip()}\n"


def cmd_diff(store: Any) -> str:
    current = _load(store)
    every, _ = load_rules(store, latest_run=False)
    d = diff_rules(current, every)
    lines = [f"latest audit run against the accepted rules: {len(d.new)} new,"
             f" {len(d.widened)} widened, {len(d.narrowed)} narrowed, {len(d.gone)} gone"]
    for title, items in (("new (not accepted yet)", [(None, r) for r in d.new]),
                         ("widened (more ports than accepted)", d.widened),
                         ("narrowed (fewer ports than accepted)", d.narrowed),
                         ("gone (accepted, no longer seen)", [(r, None) for r in d.gone])):
        if items:
            lines.append(f"{title}:")
            for old, cur in items:
                r = cur or old
                assert r is not None
                change = f" (accepted {_ports(old)})" if old is not None and cur is not None \
                    else ""
                lines.append(f"  {r.id}  {r.app.key} {r.direction} {peer_text(r.peer)}"
                             f" {_ports(r)}{change}")
    return "\n".join(lines) + "\n"


def cmd_export(store: Any, args: argparse.Namespace) -> str:
    from pipeline.policy import render, write_rendered

    rules = [s.rule for s in _load(store)]
    if args.status == "accepted":
        chosen = [r for r in rules if r.status == "accepted"]
    elif args.status == "proposed":
        chosen = [r for r in rules if r.status == "proposed"]
    else:
        chosen = [r for r in rules if r.status != "rejected"]
    if args.env is not None and not any(r.app.env == args.env for r in chosen):
        envs = sorted({r.app.env for r in chosen if r.app.env})
        raise InputError(f"no {args.status} rule protects a workload of env {args.env!r}"
                         f" (envs present: {', '.join(envs) or 'none'})")
    if args.status == "proposed" or args.status == "all":
        # the operator asked for unreviewed rules: provisional ones still need a decision
        pass
    result = render(args.fmt, chosen, env=args.env, cloud=args.cloud,
                    allow_dns=not args.no_dns, default_deny=not args.no_default_deny,
                    staged=args.staged)
    write_rendered(result, args.out)
    blocked = sum(1 for e in result.report if e.get("effect") == "blocked")
    return (f"{len(result.files)} document(s) for {result.plane} written to {args.out}"
            f" from {len(chosen)} {args.status} rule(s); render report: {len(result.report)}"
            f" entr{'y' if len(result.report) == 1 else 'ies'} ({blocked} blocked when"
            f" enforced), see {args.out / 'render-report.txt'}\n")


def run(args: argparse.Namespace) -> str:
    from pipeline.storage import open_store

    with open_store(args.store, migrate=True) as store:
        if args.action == "list":
            return cmd_list(store, args)
        if args.action == "show":
            return cmd_show(store, args.rule_id)
        if args.action in ("accept", "reject"):
            return cmd_decide(store, args, "accepted" if args.action == "accept" else "rejected")
        if args.action == "diff":
            return cmd_diff(store)
        return cmd_export(store, args)


__all__ = ["add_parser", "run"]
