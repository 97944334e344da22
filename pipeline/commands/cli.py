"""``segflow`` command line: replay | generate | demo | migrate | worker.

Every error a user can cause (wrong file, bad flag, unreachable server) ends as one line on
stderr and exit status 2; set SEGFLOW_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pipeline.commands.progress import DEFAULT_EVERY, MODES
from pipeline.errors import ConfigError, InputError, SegflowError

DEFAULT_STORE = "chdb://var/segflow"
DESCRIPTION = ("segflow learns which workloads talk to which from network flow records, "
               "alerts when traffic leaves that map, and proposes the allow rules that would "
               "enforce it.")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not a usage dump
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def _time_arg(text: str) -> float:
    from pipeline.core.normalize import parse_time_text

    t = parse_time_text(text)
    if t is None:
        raise argparse.ArgumentTypeError(f"'{text}' is not epoch seconds or an RFC 3339 time")
    return t


def _core_flags(p: argparse.ArgumentParser) -> None:
    """One flag per core setting (pipeline/core/settings.py): name, help, default, range."""
    from pipeline.core.settings import SETTINGS, SettingInfo

    def parser(info: SettingInfo) -> Any:
        def parse(text: str) -> Any:
            try:
                return info.parse(text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        parse.__name__ = info.name  # argparse names the type in its messages
        return parse

    g = p.add_argument_group("core settings (docs/settings.md)")
    for info in SETTINGS:
        rng = info.describe_range()
        text = f"{info.help} (default {info.describe_default()}{'; ' + rng if rng else ''})"
        text = text.replace("%", "%%")  # argparse formats help with %
        if info.kind == "bool":
            g.add_argument(info.flag, *info.aliases, dest=info.name, default=info.default,
                           action=argparse.BooleanOptionalAction, help=text)
        else:
            g.add_argument(info.flag, *info.aliases, dest=info.name, default=info.default,
                           type=parser(info), metavar=info.metavar, help=text)


def _settings(args: argparse.Namespace) -> Any:
    """The core settings the flags give."""
    from pipeline.core.settings import SETTINGS, CoreSettings

    try:
        return CoreSettings(**{i.name: getattr(args, i.name) for i in SETTINGS})
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    from pipeline.sources import FORMATS

    p = _Parser(prog="segflow", description=DESCRIPTION,
                epilog="`segflow COMMAND --help` shows a command's options and their defaults.")
    p.add_argument("--version", action="version", version=f"segflow {_version()}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser,
                           metavar="COMMAND")

    r = sub.add_parser("replay", help="replay flow files through the pipeline")
    r.add_argument("files", nargs="+", type=Path,
                   help="flow files (plain or .gz) or folders of them, replayed in order")
    r.add_argument("--inventory", type=Path,
                   help="inventory JSONL/CSV (ip or cidr → app, namespace, labels); optional "
                   "when the flows name their workloads (Hubble, GKE details, goflow2 "
                   "Kubernetes fields, canonical src_workload), whose identity then wins over "
                   "the inventory's for the same address (default: none)")
    r.add_argument("--format", default="auto", choices=["auto", *FORMATS],
                   help="input format (default: detect)")
    r.add_argument("--fields", help="field list for headerless AWS custom formats or Zeek TSV, "
                   "space-separated, e.g. 'version srcaddr dstaddr ...' (default: from the "
                   "file's header or the format's default layout)")
    r.add_argument("--store", default=os.environ.get("SEGFLOW_STORE", DEFAULT_STORE),
                   help="chdb://PATH or http(s)://user:pass@host:port/db (default %(default)s)")
    r.add_argument("--no-store", action="store_true", help="do not write to ClickHouse")
    r.add_argument("--violations", type=Path,
                   help="write violation events (JSONL) here (default: not written)")
    r.add_argument("--violations-format", choices=["segflow", "ocsf"], default="segflow",
                   help="segflow events (schemas/violation.schema.json) or OCSF 1.5 Detection "
                   "Findings for SIEMs (default %(default)s)")
    r.add_argument("--rules", type=Path,
                   help="write candidate-rule events (JSONL) here (default: not written)")
    r.add_argument("--incidents", type=Path,
                   help="write incident events (JSONL, schemas/incident.schema.json; every "
                   "version, keep the highest per id) here (default: not written)")
    r.add_argument("--policies", type=Path,
                   help="write the candidate rules as policies (with the render report) into "
                        "this folder (default: not written)")
    from pipeline.policy import CLOUDS
    from pipeline.policy import FORMATS as POLICY_FORMATS

    r.add_argument("--policy-format", choices=POLICY_FORMATS, default="networkpolicy",
                   help="plane of --policies (default %(default)s)")
    r.add_argument("--policy-cloud", choices=CLOUDS,
                   help="with --policy-format terraform: aws, gcp or azure")
    r.add_argument("--dead-letter", type=Path,
                   help="write rejected records (JSONL) here (default: only counted)")
    r.add_argument("--report", type=Path, metavar="HTML",
                   help="write the self-contained HTML report of the store here "
                   "(default: not written)")
    r.add_argument("--truth", type=Path,
                   help="ground-truth file to score violations against (default: none)")
    r.add_argument("--save-baseline", type=Path, metavar="DIR",
                   help="write the learned baseline + manifest here, e.g. models/prod-2026-01 "
                   "(default: not saved)")
    r.add_argument("--time-offset", type=_time_arg, default=0.0, metavar="SECONDS|TIME",
                   help="add this to every flow time: for captures that log times relative to "
                   "their start (e.g. Zeek on a pcap: pass its '#open' time, 2017-03-08T13:47:04Z "
                   "or epoch seconds); rejected as time_relative otherwise (default 0)")
    r.add_argument("--progress", choices=MODES, default="auto",
                   help="bar: a progress bar; log: a line every --progress-every seconds "
                   "(flows, rate, event time, ETA); auto: bar on a terminal, else log "
                   "(default %(default)s)")
    r.add_argument("--progress-every", type=float, default=DEFAULT_EVERY, metavar="SECONDS",
                   help="seconds between progress log lines (default %(default)g)")
    _core_flags(r)

    g = sub.add_parser("generate", help="write a seeded synthetic estate (or stream it to Kafka)")
    g.add_argument("--out", type=Path, help="output folder (required unless --to-kafka)")
    g.add_argument("--seed", type=int, default=7,
                   help="random seed: the same seed gives the same estate (default %(default)s)")
    g.add_argument("--apps", type=int, default=12,
                   help="applications in the estate (default %(default)s)")
    g.add_argument("--days", type=int, default=35,
                   help="days of traffic (default %(default)s)")
    g.add_argument("--audit-days", type=int, default=30,
                   help="days before attacks and churn start (default %(default)s)")
    g.add_argument("--flows-per-day", type=int, default=30_000,
                   help="flows per day across the estate (default %(default)s)")
    g.add_argument("--no-attacks", action="store_true",
                   help="benign traffic only (default: attacks injected after the audit)")
    g.add_argument("--workstations", type=int, default=0,
                   help="add a flat office network of this many workstations (default 0)")
    g.add_argument("--attack-kinds", default="classic",
                   help="comma-separated attack kinds, 'classic' or 'all' (default %(default)s; "
                   "kinds: " + ", ".join(_attack_kinds()) + ")")
    k = g.add_argument_group("kafka")
    k.add_argument("--to-kafka", metavar="BOOTSTRAP",
                   help="produce the flows to this broker instead of writing files")
    k.add_argument("--topic", default="segflow-flows-raw", help="raw topic (default %(default)s)")
    k.add_argument("--inventory-topic", default="segflow-inventory",
                   help="publish the inventory here first; '' to skip (default %(default)s)")
    k.add_argument("--per-message", type=int, default=1, metavar="K",
                   help="records per Kafka message, NDJSON when > 1 (default 1)")
    pace = k.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, metavar="N",
                      help="flows per second (default: as fast as possible)")
    pace.add_argument("--fast", action="store_true", help="as fast as possible (default)")

    d = sub.add_parser("demo", help="generate a small estate, replay it, show what was found")
    d.add_argument("--out", type=Path, default=Path("var/demo"),
                   help="folder for the data, the store and the outputs (default %(default)s)")
    d.add_argument("--store", default=None,
                   help="chdb://PATH or http(s)://user:pass@host:port/db "
                   "(default: chdb://<out>/store)")
    d.add_argument("--seed", type=int, default=7,
                   help="random seed of the generated estate (default %(default)s)")
    _core_flags(d)

    ev = sub.add_parser("eval", help="detection quality on labeled data: generated estates "
                        "(or real labeled Zeek captures), segflow vs two naive detectors")
    ev.add_argument("--seeds", default="1,2,3",
                    help="comma-separated estate seeds (default %(default)s)")
    ev.add_argument("--sizes", default="small,medium",
                    help="comma-separated estate sizes: small, medium, large (default %(default)s)")
    ev.add_argument("--audit-days", default=None,
                    help="comma-separated audit lengths in days (default 7,14; with --capture "
                    "one length, fractions allowed, default 1)")
    ev.add_argument("--post-days", type=int, default=7,
                    help="days checked after the audit (default %(default)s)")
    ev.add_argument("--kinds", default="all",
                    help="attack kinds, comma-separated, 'classic' or 'all' (default %(default)s)")
    ev.add_argument("--json", type=Path, help="also write every score as JSON here")
    ev.add_argument("--behaviour-model", default="", metavar="PATH|off",
                    help="the behaviour model (core setting behaviour_model; default: fit on "
                    "each estate's audit), 'off' to compare without it")
    cap = ev.add_argument_group("real labeled captures")
    cap.add_argument("--capture", type=Path, nargs="+", metavar="CONN_LOG",
                     help="labeled Zeek conn logs (label/detailedlabel columns, e.g. the "
                     "Stratosphere datasets) instead of generated estates")
    cap.add_argument("--internal-cidrs", default=None,
                     help="comma-separated internal ranges (default RFC 1918, CGNAT, ULA)")
    cap.add_argument("--inventory", type=Path, help="inventory for the capture (default: none)")
    cap.add_argument("--time-offset", type=_time_arg, default=0.0, metavar="SECONDS|TIME",
                     help="added to every time of a capture logged relative to its start "
                     "(default 0)")

    m = sub.add_parser("migrate", help="apply ClickHouse migrations to a store")
    m.add_argument("--store", default=None,
                   help="chdb://PATH or http(s)://user:pass@host:port/db (default: "
                        f"$SEGFLOW_STORE or {DEFAULT_STORE}; with --print-ddl: a fresh store "
                        "with every committed migration applied)")
    m.add_argument("--print-ddl", action="store_true",
                   help="change nothing; print the next numbered migration "
                        "(schemas/clickhouse/NNN_name.sql) that brings the store in line "
                        "with pipeline/core/records.py")

    from pipeline.storage.queries import describe

    rp = sub.add_parser("report", help="write a self-contained HTML report of a store "
                        "(no network needed to open it)")
    _read_flags(rp)
    rp.add_argument("--out", type=Path, default=Path("segflow-report.html"),
                    help="HTML file to write (default %(default)s)")

    views = describe()
    q = sub.add_parser("query", help="read results back from a store: "
                       + ", ".join(views) + " (table, JSON or CSV)")
    q.add_argument("view", choices=list(views), help="; ".join(f"{k}: {v}" for k, v in
                                                                views.items()))
    _read_flags(q)
    q.add_argument("--limit", type=int, default=50, help="rows at most (default %(default)s)")
    q.add_argument("--output", "-o", choices=("table", "json", "csv"), default="table",
                   help="output format (default %(default)s)")

    from pipeline.commands import rules as rules_cmd

    rules_cmd.add_parser(sub, os.environ.get("SEGFLOW_STORE", DEFAULT_STORE))

    sim = sub.add_parser("simulate", help="what a rule set would have blocked: evaluate "
                         "policies against the stored traffic (or flow files)")
    sim.add_argument("--store", default=os.environ.get("SEGFLOW_STORE", DEFAULT_STORE),
                     help="chdb://PATH or http(s)://user:pass@host:port/db (default %(default)s)")
    src = sim.add_mutually_exclusive_group(required=True)
    src.add_argument("--policy", type=Path, metavar="DIR",
                     help="NetworkPolicy / AuthorizationPolicy YAML files under this folder")
    src.add_argument("--rules", choices=("accepted", "proposed", "all"),
                     help="the store's candidate rules with this status, rendered for --plane")
    sim.add_argument("--plane", choices=("networkpolicy", "istio"), default="networkpolicy",
                     help="with --rules: the rendering to simulate (default %(default)s)")
    sim.add_argument("--from", dest="start", type=_time_arg, default=None,
                     help="event time from (epoch s or RFC 3339; default: everything)")
    sim.add_argument("--to", dest="end", type=_time_arg, default=None,
                     help="event time to, exclusive (default: everything)")
    sim.add_argument("--env", help="only edges touching workloads of this environment")
    sim.add_argument("--flows", type=Path, nargs="+",
                     help="simulate these flow files instead of the store (needs --inventory)")
    sim.add_argument("--inventory", type=Path,
                     help="inventory: labels, service accounts and addresses of workloads")
    sim.add_argument("--jsonl", type=Path, help="write every edge's verdict (JSONL) here")
    sim.add_argument("--limit", type=int, default=30, help="blocked edges shown (default 30)")
    sim.add_argument("--no-store-results", action="store_true",
                     help="do not write the simulation_results table")

    w = sub.add_parser("worker", help="run the Kafka streaming worker (faust)")
    w.add_argument("--config", type=Path,
                   help="config file (TOML/JSON); env vars override (default: env vars only)")
    w.add_argument("--role", choices=("all", "ingest", "stateful"),
                   help="stages to run (default: role setting, all): run ingest and stateful "
                        "as two processes to use two cores")
    return p


def _open_store(url: str | None) -> Any:
    if url is None:
        return None
    from pipeline.storage import open_store

    return open_store(url, migrate=True)


def cmd_replay(args: argparse.Namespace) -> int:
    from pipeline.commands.replay import replay
    from pipeline.commands.summary import print_replay_summary
    from pipeline.core.inventory import load_inventory
    from pipeline.storage.files import Outputs
    from pipeline.storage.queries import QueryFilter

    settings = _settings(args)
    if args.report and args.no_store:
        raise ConfigError("--report reads the store: drop --no-store or --report")
    inventory = None
    if args.inventory is not None:
        inventory = load_inventory(args.inventory, internal_cidrs=settings.internal_cidrs)
        if not len(inventory):
            print(f"segflow: warning: inventory {args.inventory} has no entries: workloads "
                  "come only from identities the flows carry", file=sys.stderr)
    store = None if args.no_store else _open_store(args.store)
    try:
        with Outputs() as outputs:  # every output file in place only if all of them succeed
            summary = replay(
                args.files, inventory, settings, fmt=args.format,
                format_options={"fields": args.fields} if args.fields else None, store=store,
                violations_path=args.violations, violations_format=args.violations_format,
                rules_path=args.rules, incidents_path=args.incidents,
                dead_letter_path=args.dead_letter, policies_dir=args.policies,
                policy_format=args.policy_format,
                policy_cloud=args.policy_cloud, baseline_dir=args.save_baseline,
                progress=args.progress, progress_every=args.progress_every, outputs=outputs,
                time_offset=args.time_offset,
            )
            if args.report and summary.flows:
                from pipeline.commands.report import build_report, inputs_from_summary

                page = build_report(store, QueryFilter(), inputs=inputs_from_summary(summary))
                outputs.stage(args.report, page.encode("utf-8"))
    finally:
        if store is not None:
            store.close()
    if not summary.flows:  # the outputs are in place: the dead letters say why
        raise InputError(nothing_accepted(summary, args.dead_letter, args.format))
    truth = None
    if args.truth:
        from pipeline.commands.evaluate import load_truth

        truth = load_truth(args.truth)
    print_replay_summary(summary, store_url=None if args.no_store else args.store, truth=truth,
                         outputs={"violations": args.violations, "rules": args.rules,
                                  "incidents": args.incidents,
                                  "policies": args.policies, "dead letters": args.dead_letter,
                                  "baseline": args.save_baseline, "report": args.report})
    return 0


def nothing_accepted(summary: Any, dead_letter: Path | None, fmt: str = "auto") -> str:
    """The one line for a replay that accepted no flow at all."""
    if not summary.flows and not summary.rejected:  # at most skipped lines (headers, ...)
        read_as = f" read as {fmt}" if fmt != "auto" else ""
        skipped = ", ".join(f"{k} {v:,}" for k, v in summary.skip_reasons.most_common(3))
        return (f"no flow record found in {summary.files} file(s){read_as}, nothing accepted: "
                "check --format" + (f" (lines skipped: {skipped})" if skipped else ""))
    reasons = ", ".join(f"{k} {v:,}" for k, v in summary.reject_reasons.most_common(3))
    where = f"rejects in {dead_letter}" if dead_letter else "see them with --dead-letter FILE"
    if summary.reject_reasons.get("time_relative"):
        return (f"none of the {summary.records:,} records was accepted ({reasons}): the times "
                "look relative to the capture's start; pass --time-offset with when it began "
                f"(e.g. Zeek's '#open' time); {where}")
    return (f"none of the {summary.records:,} records was accepted ({reasons}): check --format "
            f"and --fields; {where}")


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.generate import GenerateConfig, write_estate

    cfg = GenerateConfig(seed=args.seed, apps=args.apps, days=args.days,
                         audit_days=args.audit_days, flows_per_day=args.flows_per_day,
                         attacks=not args.no_attacks, workstations=args.workstations,
                         attack_kinds=_kinds(args.attack_kinds))
    if args.to_kafka:
        return _generate_to_kafka(cfg, args)
    if args.out is None:
        raise ConfigError("generate needs --out or --to-kafka (see `segflow generate --help`)")
    s = write_estate(cfg, args.out)
    print(f"wrote {args.out}: {s.flows:,} flows ({s.rejected:,} rejected), "
          f"{s.inventory_entries} inventory entries, {s.episodes} truth episodes "
          f"({s.attacks} attacks, {s.ip_reuses} IP reuses)")
    print(f"  replay it: segflow replay {s.flows_path} --inventory {s.inventory_path} "
          f"--audit-days {cfg.audit_days} --truth {s.truth_path}")
    return 0


def _generate_to_kafka(cfg: Any, args: argparse.Namespace) -> int:
    from pipeline.config import KafkaSettings
    from pipeline.stream.producer import produce_estate

    s = produce_estate(cfg, KafkaSettings(bootstrap=args.to_kafka), args.topic,
                       per_message=args.per_message, rate=args.rate,
                       inventory_topic=args.inventory_topic or None)
    print(f"produced {s.flows:,} flows in {s.messages:,} messages to {args.topic} on "
          f"{args.to_kafka} ({s.flows_per_second:,.0f} flows/s); "
          f"{s.inventory_entries} inventory entries to {args.inventory_topic or '-'}")
    return 0


def _attack_kinds() -> tuple[str, ...]:
    from pipeline.generate.config import ATTACK_KINDS

    return ATTACK_KINDS


def _kinds(text: str) -> tuple[str, ...]:
    from pipeline.generate.config import ATTACK_KINDS, CLASSIC_KINDS

    if text.strip() in ("all", ""):
        return ATTACK_KINDS
    if text.strip() == "classic":
        return CLASSIC_KINDS
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in ATTACK_KINDS]
    if bad:
        raise ConfigError(f"unknown attack kind(s) {', '.join(bad)}; choose from "
                          f"{', '.join(ATTACK_KINDS)}, 'classic' or 'all'")
    return kinds


def _list(text: str, kind: type, flag: str) -> list[Any]:
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: '{text}' is not a comma-separated list of "
                          f"{kind.__name__} values") from None


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.commands import evaluate as ev

    results: list[Any] = []
    if args.capture:
        from pipeline.core.inventory import DEFAULT_INTERNAL_CIDRS, Inventory, load_inventory

        cidrs = tuple(_list(args.internal_cidrs, str, "--internal-cidrs")) \
            if args.internal_cidrs else DEFAULT_INTERNAL_CIDRS
        inventory = (load_inventory(args.inventory, internal_cidrs=cidrs) if args.inventory
                     else Inventory(internal_cidrs=cidrs))
        days = _list(args.audit_days or "1", float, "--audit-days")[0]
        results.append(ev.run_capture(list(args.capture), audit_days=days, inventory=inventory,
                                      internal_cidrs=cidrs, offset=args.time_offset))
    else:
        sizes = _list(args.sizes, str, "--sizes")
        bad = [x for x in sizes if x not in ev.SIZES]
        if bad:
            raise ConfigError(f"--sizes: unknown size(s) {', '.join(bad)}; choose from "
                              f"{', '.join(ev.SIZES)}")
        specs = [ev.EstateSpec(seed, size, audit, args.post_days)
                 for seed in _list(args.seeds, int, "--seeds") for size in sizes
                 for audit in _list(args.audit_days or "7,14", int, "--audit-days")]

        def progress(res: Any) -> None:
            print(f"  {res.label}: {res.flows:,} flows in {res.seconds:.0f} s", file=sys.stderr,
                  flush=True)

        results = ev.run_eval(specs, _kinds(args.kinds), progress=progress,
                              core={"behaviour_model": args.behaviour_model})
    sys.stdout.write(ev.format_results(results))
    if args.json:
        import orjson

        args.json.write_bytes(orjson.dumps([r.as_dict() for r in results],
                                           option=orjson.OPT_INDENT_2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.commands.demo import run_demo

    return run_demo(args.out, args.store, args.seed, _settings(args))


def cmd_migrate(args: argparse.Namespace) -> int:
    from pipeline.storage import open_store
    from pipeline.storage.url import redact

    if args.print_ddl:
        return _print_ddl(args.store)
    url = args.store or os.environ.get("SEGFLOW_STORE", DEFAULT_STORE)
    with open_store(url) as store:
        applied = store.migrate()
    print(f"{redact(url)}: applied {len(applied)} migration(s) {' '.join(applied)}".rstrip())
    return 0


def _print_ddl(url: str | None) -> int:
    from pipeline.storage import ddl, open_store

    if url is None:
        plan = ddl.next_migration_for_fresh_store()
    else:
        with open_store(_existing_store(url)) as store:
            plan = ddl.next_migration(store)
    for problem in plan.problems:
        print(f"segflow: not fixed by a migration: {problem}", file=sys.stderr)
    if plan.needed:
        sys.stdout.write(plan.sql())
        print(f"segflow: save as schemas/clickhouse/{plan.filename} and commit it",
              file=sys.stderr)
    elif not plan.problems:
        print("segflow: the store matches pipeline/core/records.py; no migration needed",
              file=sys.stderr)
    return 1 if plan.problems else 0


def _read_flags(p: argparse.ArgumentParser) -> None:
    """--store, --from, --to, --app: what every command reading a store filters by."""
    p.add_argument("--store", default=os.environ.get("SEGFLOW_STORE", DEFAULT_STORE),
                   help="chdb://PATH or http(s)://user:pass@host:port/db (default %(default)s)")
    p.add_argument("--from", dest="start", type=_time_arg, default=None,
                   help="event time from (epoch s or RFC 3339; default: everything)")
    p.add_argument("--to", dest="end", type=_time_arg, default=None,
                   help="event time to, exclusive (default: everything)")
    p.add_argument("--app", default="", help="only rows where either end is this app "
                   "('app' or 'namespace/app'; default: every app)")


def _existing_store(text: str) -> Any:
    from pipeline.storage import parse_store_url

    url = parse_store_url(text)
    if url.is_embedded and (url.path is None or not url.path.is_dir()):
        raise ConfigError(f"no store at {url.path}; replay into it first or pass --store")
    return url


def _filter(args: argparse.Namespace, limit: int = 50) -> Any:
    from pipeline.storage.queries import FAR_FUTURE, FAR_PAST, QueryFilter

    return QueryFilter(start=FAR_PAST if args.start is None else args.start,
                       end=FAR_FUTURE if args.end is None else args.end,
                       app=args.app, limit=limit)


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.commands.report import write_report
    from pipeline.storage import open_store

    with open_store(_existing_store(args.store)) as store:
        out = write_report(store, args.out, _filter(args))
    print(f"report written to {out}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from pipeline.commands.query import query
    from pipeline.storage import open_store

    with open_store(_existing_store(args.store)) as store:
        sys.stdout.write(query(store, args.view, _filter(args, args.limit), args.output))
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    from pipeline.commands.rules import run

    args.store = _existing_store(args.store)
    sys.stdout.write(run(args))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from pipeline.commands.simulate import run

    if not args.flows:
        args.store = _existing_store(args.store)
    sys.stdout.write(run(args))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    try:
        from pipeline.stream.worker import run_worker
    except ImportError as exc:
        raise ConfigError(f"the streaming worker is not available: {exc}") from exc
    return run_worker(args.config, args.role)


COMMANDS = {"eval": cmd_eval, "rules": cmd_rules, "simulate": cmd_simulate,
            "replay": cmd_replay, "generate": cmd_generate, "demo": cmd_demo,
            "migrate": cmd_migrate, "query": cmd_query, "report": cmd_report, "worker": cmd_worker}


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("segflow")
    except metadata.PackageNotFoundError:  # pragma: no cover - source tree without install
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    # drivers log their own copy of errors we already report in one line
    logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except SegflowError as exc:
        if os.environ.get("SEGFLOW_DEBUG"):
            raise
        from pipeline.core.text import printable
        from pipeline.storage.url import redact

        print(f"segflow: error: {printable(redact(str(exc)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
