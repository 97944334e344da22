"""The contract between pipeline/core/records.py and everything derived from it.

After every committed migration is applied on chdb, each table's ``system.columns`` (names,
order, types, codecs), ENGINE, ORDER BY and PARTITION BY equal the records; the committed
JSON schemas equal the generated ones; what the core produces fits both; every Grafana
ClickHouse query (expanded as tests/test_deploy.py expands it) reads only declared columns;
and the next migration that ``segflow migrate --print-ddl`` plans really brings a store in
line with a changed declaration. chdb hosts one path per process: one module-scoped store
(with scratch databases beside it) serves every test here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator

from pipeline.core import records as R
from pipeline.core.pipeline import Pipeline
from pipeline.core.settings import CoreSettings
from pipeline.errors import StorageError
from pipeline.storage import Store, ddl, open_store
from pipeline.storage.migrations import Migration, apply_migrations, load_migrations
from pipeline.storage.tables import normalize_edge_minutes
from tests.conftest import DAY, T0, flow, flows_table, make_inventory
from tests.test_deploy import (
    CH_QUERIES,
    _dashboards,
    _edge_rows,
    _rules,
    _variables,
    _violations,
    expand_backend,
    expand_frontend,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records-store") / "store"


@pytest.fixture(scope="module")
def store(store_path: Path) -> Iterator[Store]:
    with open_store(f"chdb://{store_path}", migrate=True) as s:
        yield s


@pytest.fixture
def scratch(store: Store, store_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """An empty database beside the module's store (same chdb path), dropped afterwards."""
    name = "scratch_" + re.sub(r"\W", "_", request.node.name)[:40]
    with open_store(f"chdb://{store_path}?database={name}") as s:
        yield s
        s.command(f"DROP DATABASE IF EXISTS {name}")


def _apply(store: Store, migrations: list[Migration]) -> list[str]:
    def record(mig: Migration) -> None:
        store.client.insert_arrow("schema_migrations", pa.table({
            "version": pa.array([mig.version], pa.uint32()), "name": [mig.path.name],
            "checksum": [mig.checksum]}))

    return apply_migrations(store.command, store.query_rows, record, migrations)


# -- the store ---------------------------------------------------------------------------------


def test_migrated_tables_equal_the_records(store: Store) -> None:
    tables = ddl.read_tables(store.query_rows)
    for rec in R.RECORDS:
        got = tables[rec.table]
        assert [(c.name, c.type, c.codec) for c in got.columns] == [
            (c.name, c.clickhouse, c.codec_sql) for c in rec.columns], rec.table
        assert (got.engine, got.sorting_key, got.partition_key) == (
            rec.engine, ", ".join(rec.order_by), rec.partition_by), rec.table
        assert ddl.differences(rec, got) == []
    plan = ddl.plan_migration(tables, load_migrations())
    assert (plan.statements, plan.problems) == ((), ())


def test_differences_name_what_a_migration_cannot_fix() -> None:
    rec = R.VIOLATION
    good = ddl.declared(rec)
    cols = list(good.columns)
    cols[1] = dataclasses.replace(cols[1], codec="")  # ts without its codec
    cols[4] = dataclasses.replace(cols[4], type="UInt16")  # score widened
    cols[2], cols[3] = cols[3], cols[2]  # type and severity swapped
    stored = dataclasses.replace(good, columns=(*cols, ddl.StoredColumn("legacy", "String")),
                                 sorting_key="id")
    problems = ddl.differences(rec, stored)
    assert problems == [
        "violations.ts: stored as DateTime64(3, 'UTC'), declared DateTime64(3, 'UTC') "
        "CODEC(Delta(8), ZSTD(1))",
        "violations.score: stored as UInt16, declared UInt8",
        "violations.legacy: stored but not declared in pipeline/core/records.py",
        "violations: column order ['id', 'ts', 'severity', 'type', 'score', 'src_ip', 'dst_ip', "
        "'dst_port', 'proto', 'src_namespace', 'src_app', 'dst_namespace', 'dst_app', 'mode', "
        "'reason', 'evidence', 'count', 'first_seen', 'last_seen', 'detector', 'version', "
        "'detected_at'] "
        "differs from the declared order",
        "violations: ORDER BY is 'id', declared 'type, id'",
    ]
    tables = {r.table: ddl.declared(r) for r in R.RECORDS} | {"violations": stored}
    plan = ddl.plan_migration(tables, load_migrations())
    assert plan.statements == () and plan.problems == tuple(problems)


# -- the next migration ------------------------------------------------------------------------

FINDINGS = R.Record(
    table="findings",  # not a real table (incidents is one now)
    doc="Test table: violations grouped into one finding.",
    fields=(
        R.Column("id", pa.string(), "String"),
        R.Column("ts", R.TS_MS, R.DATETIME_MS, "Delta(8), ZSTD(1)"),
        R.Column("violations", pa.list_(pa.string()), "Array(String)"),
        R.Column("summary", pa.string(), "String", R.TEXT, doc="one sentence; for people"),
        R.Column("version", pa.uint64(), "UInt64"),
    ),
    order_by=("ts", "id"),
    partition_by="toYYYYMM(ts)",
)


def _with_new_columns(rec: R.Record) -> R.Record:
    """``rec`` with a column declared after its second one and another at the end."""
    fields = list(rec.fields)
    cols = [i for i, f in enumerate(fields) if isinstance(f, R.Column)]
    fields.insert(cols[1] + 1, R.Column("tenant", pa.string(), R.LABEL, default=""))
    fields.append(R.Column("model_score", pa.float32(), "Float32", default=0.0))
    return dataclasses.replace(rec, fields=tuple(fields))


def test_next_migration_brings_a_store_in_line_with_new_declarations(scratch: Store) -> None:
    scratch.migrate()
    existing = load_migrations()
    changed = (R.EDGE_MINUTE, _with_new_columns(R.VIOLATION), R.CANDIDATE_RULE, FINDINGS)
    plan = ddl.plan_migration(ddl.read_tables(scratch.query_rows), existing, changed)
    assert plan.filename == (f"{existing[-1].version + 1:03d}_violations_add_columns_"
                             "create_findings.sql")
    assert plan.statements[:2] == (
        "ALTER TABLE violations ADD COLUMN IF NOT EXISTS tenant LowCardinality(String) AFTER ts",
        "ALTER TABLE violations ADD COLUMN IF NOT EXISTS model_score Float32 AFTER detected_at")
    assert plan.statements[2].startswith("-- Test table") and plan.problems == ()
    # the printed file goes through the real migration path (split, checksum, record)
    mig = Migration(plan.version, plan.name, Path(plan.filename), plan.sql())
    assert len(mig.statements()) == 3
    assert _apply(scratch, [*existing, mig]) == [plan.filename]
    tables = ddl.read_tables(scratch.query_rows)
    assert all(ddl.differences(r, tables[r.table]) == [] for r in changed)
    again = ddl.plan_migration(tables, [*existing, mig], changed)
    assert (again.needed, again.version) == (False, mig.version + 1)


def test_a_store_part_way_gets_the_missing_tables(scratch: Store) -> None:
    first = load_migrations()[:1]
    _apply(scratch, first)
    with pytest.raises(StorageError, match=r"not applied yet .*002_violations\.sql"):
        ddl.next_migration(scratch)
    plan = ddl.plan_migration(ddl.read_tables(scratch.query_rows), first)
    assert plan.filename.startswith("002_create_violations_create_candidate_rules")
    mig = Migration(plan.version, plan.name, Path(plan.filename), plan.sql())
    _apply(scratch, [*first, mig])
    tables = ddl.read_tables(scratch.query_rows)
    assert all(ddl.differences(r, tables[r.table]) == [] for r in R.RECORDS)


def test_print_ddl_on_the_committed_migrations_has_nothing_to_add(tmp_path: Path) -> None:
    env = {**os.environ, "SEGFLOW_STORE": f"chdb://{tmp_path}/unused"}
    done = subprocess.run([sys.executable, "-m", "pipeline.commands.cli", "migrate",
                           "--print-ddl"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert "no migration needed" in done.stderr
    assert not (tmp_path / "unused").exists()  # --print-ddl changes no store


# -- JSON schemas and what the core produces ---------------------------------------------------


def test_committed_json_schemas_are_the_generated_ones() -> None:
    files = ddl.json_schema_files()
    assert set(files) == {"violation.schema.json", "candidate_rule.schema.json",
                          "rule_decision.schema.json", "simulation_result.schema.json",
                          "incident.schema.json"}
    for name, text in files.items():
        assert (REPO / "schemas" / name).read_text() == text, (
            f"schemas/{name} is stale: run python -m pipeline.storage.ddl and commit it")


def _core_output() -> tuple[pa.Table, list[dict[str, Any]], list[dict[str, Any]]]:
    """One audit day of web→db, then an intruder: edge minutes, a violation and rules."""
    inv = make_inventory([{"ip": "10.0.0.1", "app": "web", "namespace": "shop"},
                          {"ip": "10.0.0.2", "app": "db", "namespace": "shop"},
                          {"ip": "10.0.0.9", "app": "intruder", "namespace": "x"}])
    recs = [flow(T0 + h * 3600, "10.0.0.1", "10.0.0.2", 40000 + h, 5432) for h in range(24)]
    recs.append(flow(T0 + DAY + 600, "10.0.0.9", "10.0.0.2", 41000, 5432))
    core = Pipeline(CoreSettings(audit_days=1), inv)
    out = core.process(flows_table(recs), source_id="records-test", block=1, version=1)
    end = core.flush()
    return out.edge_minutes, out.violations + end.violations, out.rules + end.rules


def test_what_the_core_produces_fits_the_records_and_the_store(store: Store) -> None:
    minutes, violations, rules = _core_output()
    assert minutes.schema == R.EDGE_MINUTE.schema
    assert violations and rules
    for rec, events in ((R.VIOLATION, violations), (R.CANDIDATE_RULE, rules)):
        check = Draft202012Validator(R.json_schema(rec),
                                     format_checker=Draft202012Validator.FORMAT_CHECKER)
        for e in events:
            check.validate(e)
    assert store.write_edge_minutes(minutes) == minutes.num_rows
    assert store.write_violations(violations) == len(violations)
    assert store.write_rules(rules) == len(rules)
    rows = store.query_rows("SELECT count() FROM edge_minute FINAL "
                            "WHERE source_id = 'records-test'")
    assert rows == [(minutes.num_rows,)]


def test_events_reach_only_declared_tables(store: Store) -> None:
    _, violations, _ = _core_output()
    with pytest.raises(StorageError, match="no event record declares table 'findings'"):
        store.write_events("findings", violations)
    assert store.write_events("violations", violations) == len(violations)


def test_a_column_must_be_declared_to_reach_the_store() -> None:
    minutes = _core_output()[0]
    with pytest.raises(StorageError, match="columns tenant that no table holds"):
        normalize_edge_minutes(minutes.append_column("tenant", pa.array([""] * minutes.num_rows)))
    columns = {n: minutes.column(n) for n in minutes.column_names}
    with pytest.raises(ValueError, match=r"not produced: \['version'\]"):
        R.EDGE_MINUTE.table_of({k: v for k, v in columns.items() if k != "version"})
    with pytest.raises(ValueError, match=r"not declared: \['tenant'\]"):
        R.EDGE_MINUTE.table_of({**columns, "tenant": columns["phase"]})
    assert R.EDGE_MINUTE.table_of(columns).equals(minutes)


# -- dashboards --------------------------------------------------------------------------------


_NODE = re.compile(r"^\s*(COLUMN|TABLE|QUERY|UNION|TABLE_FUNCTION|ARRAY_JOIN|JOIN) id: (\d+)"
                   r"(?:, (.*))?$")


def columns_read(store: Store, sql: str) -> set[tuple[str, str]]:
    """(table, column) pairs a query reads from stored tables, from ClickHouse's analysed
    query tree (every COLUMN node whose source is a TABLE node)."""
    nodes: dict[str, tuple[str, dict[str, str]]] = {}
    for (line,) in store.query_rows(f"EXPLAIN QUERY TREE {sql}"):
        m = _NODE.match(line)
        if m:
            attrs = dict(re.findall(r"(\w+): ([^,]*)", m.group(3) or ""))
            nodes[m.group(2)] = (m.group(1), attrs)
    out: set[tuple[str, str]] = set()
    for kind, attrs in nodes.values():
        source = nodes.get(attrs.get("source_id", ""))
        if kind == "COLUMN" and source is not None and source[0] == "TABLE":
            out.add((source[1]["table_name"].split(".")[-1], attrs["column_name"]))
    return out


@pytest.fixture(scope="module")
def dashboard_store(store: Store) -> Store:
    store.write_edge_minutes(_edge_rows())
    store.write_violations(_violations())
    store.write_rules(_rules())
    return store


def test_every_dashboard_query_reads_declared_columns(dashboard_store: Store) -> None:
    declared = {(r.table, c) for r in R.RECORDS for c in r.names}
    seen: set[tuple[str, str]] = set()
    queries = [(d, p, t) for d, p, t in (param.values for param in CH_QUERIES)]
    assert queries
    for dashboard, panel, target in queries:
        variables = _variables(dashboard_store, dashboard, None)
        sql = expand_backend(expand_frontend(target["rawSql"], variables))
        used = columns_read(dashboard_store, sql)
        assert used, f"{panel['title']}: no stored column found in the query tree"
        assert used <= declared, f"{panel['title']} reads undeclared {used - declared}"
        seen |= used
    for var in (v for d in _dashboards() for v in d["templating"]["list"]
                if v["type"] == "query"):
        seen |= columns_read(dashboard_store, expand_backend(var["query"]))
    # the dashboards show every table (a check that the parsing above finds columns at all)
    assert {t for t, _ in seen} == {r.table for r in R.RECORDS}


def test_columns_read_follows_subqueries_and_aliases(store: Store) -> None:
    sql = ("SELECT e, n FROM (SELECT src_app AS e, sum(flows) AS n FROM edge_minute FINAL "
           "GROUP BY e) WHERE n > 0 ORDER BY e")
    assert columns_read(store, sql) == {("edge_minute", "src_app"), ("edge_minute", "flows")}
    with pytest.raises(StorageError, match="tenant"):
        columns_read(store, "SELECT tenant FROM violations")
