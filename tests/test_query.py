"""``segflow query``: results read back from a store agree with what the replay produced."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from pipeline.commands.query import render
from pipeline.storage import open_store
from pipeline.storage.queries import QueryFilter, run_view
from tests.conftest import replay_into_store


@pytest.fixture(scope="module")
def stored(estate_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("query")
    summary, url = replay_into_store(estate_dir, out)
    return summary, url


def segflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.commands.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_edges_account_for_every_flow(stored):
    summary, url = stored
    with open_store(url) as store:
        edges = run_view(store, "edges", QueryFilter(limit=1_000_000)).to_pylist()
    assert sum(e["flows"] for e in edges) == summary.flows
    flows = [e["flows"] for e in edges]
    assert flows == sorted(flows, reverse=True)
    assert len({(e["src_app"], e["dst_app"], e["service_port"], e["proto"]) for e in edges}) \
        == len(edges)


def test_app_filter_keeps_rows_touching_the_app(stored):
    _, url = stored
    with open_store(url) as store:
        every = run_view(store, "edges", QueryFilter(limit=1_000_000)).to_pylist()
        app = every[0]["dst_app"]
        ns = every[0]["dst_namespace"]
        some = run_view(store, "edges", QueryFilter(app=app, limit=1_000_000)).to_pylist()
        qualified = run_view(store, "edges", QueryFilter(app=f"{ns}/{app}", limit=1_000_000))
        wrong_ns = run_view(store, "edges", QueryFilter(app=f"no-such-ns/{app}"))
    expected = [e for e in every if app in (e["src_app"], e["dst_app"])]
    assert 0 < len(some) == len(expected) < len(every)
    assert all(app in (e["src_app"], e["dst_app"]) for e in some)
    assert 0 < qualified.num_rows <= len(some)
    assert wrong_ns.num_rows == 0


def test_violations_in_a_time_range(stored):
    summary, url = stored
    stamps = sorted(datetime.fromisoformat(v["ts"].replace("Z", "+00:00")).timestamp()
                    for v in summary.violations)
    assert len(stamps) >= 2
    cut = stamps[len(stamps) // 2]
    with open_store(url) as store:
        every = run_view(store, "violations", QueryFilter(limit=10_000))
        late = run_view(store, "violations", QueryFilter(start=cut, limit=10_000))
    assert every.num_rows == len({v["id"] for v in summary.violations})
    assert late.num_rows == sum(1 for t in stamps if t >= cut) > 0
    assert all(r["ts"].timestamp() >= cut for r in late.to_pylist())


def test_cli_outputs_json_csv_and_table(stored):
    summary, url = stored
    js = segflow("query", "rules", "--store", url, "-o", "json", "--limit", "100000")
    assert js.returncode == 0, js.stderr
    rules = orjson.loads(js.stdout)
    assert len(rules) == len({r["id"] for r in summary.rules}) > 0
    cs = segflow("query", "violations", "--store", url, "-o", "csv")
    assert cs.returncode == 0, cs.stderr
    rows = list(csv.DictReader(io.StringIO(cs.stdout)))
    assert {r["id"] for r in rows} == {v["id"] for v in summary.violations}
    tb = segflow("query", "edges", "--store", url, "--limit", "3")
    assert tb.returncode == 0, tb.stderr
    lines = tb.stdout.splitlines()
    assert lines[0].split()[:2] == ["src_namespace", "src_app"] and len(lines) == 2 + 3


def test_incidents_as_table_json_and_csv(stored):
    summary, url = stored
    incidents = summary.incidents
    assert incidents
    js = segflow("query", "incidents", "--store", url, "-o", "json", "--limit", "1000")
    assert js.returncode == 0, js.stderr
    got = {r["id"]: r for r in orjson.loads(js.stdout)}
    assert set(got) == set(incidents)
    for k, r in got.items():
        want = incidents[k]
        assert (r["severity"], r["score"], r["source"], r["violations"], r["types"],
                r["violation_ids"], r["first_seen"]) == (
            want["severity"]["label"], want["severity"]["score"], want["source"],
            want["violations"], want["types"], want["violation_ids"], want["first_seen"])
    cs = segflow("query", "incidents", "--store", url, "-o", "csv")
    assert cs.returncode == 0, cs.stderr
    rows = list(csv.DictReader(io.StringIO(cs.stdout)))
    assert {r["id"] for r in rows} == set(incidents)
    assert all(r["types"] == ",".join(incidents[r["id"]]["types"]) for r in rows)
    tb = segflow("query", "incidents", "--store", url)
    assert tb.returncode == 0, tb.stderr
    lines = tb.stdout.splitlines()
    assert lines[0].split()[:3] == ["first_seen", "severity", "score"]
    assert len(lines) == 2 + len(incidents)
    # one source's incidents by app; the members of the latest ones; counts per day
    one = next(iter(incidents.values()))
    with open_store(url) as store:
        mine = run_view(store, "incidents", QueryFilter(app=one["src_app"])).to_pylist()
        members = run_view(store, "incident-violations", QueryFilter(limit=1000)).to_pylist()
        counts = run_view(store, "incident-counts", QueryFilter(limit=1000)).to_pylist()
    assert one["id"] in {r["id"] for r in mine}
    assert all(one["src_app"] == r["source"].split("/")[-1]
               or any(d.endswith("/" + one["src_app"]) for d in r["dst_workloads"])
               for r in mine)
    assert sorted((m["incident_id"], m["id"]) for m in members) == sorted(
        (k, v) for k, i in incidents.items() for v in i["violation_ids"])
    assert sum(c["incidents"] for c in counts) == len(incidents)


def test_table_output_escapes_control_characters():
    t = pa.table({"app": ["ok\x1b[2J\rall clear"], "n": [1]})
    text = render(t, "table")
    assert "\x1b" not in text and "\r" not in text and "\\x1b" in text


def test_missing_store_is_one_line(tmp_path: Path):
    r = segflow("query", "edges", "--store", f"chdb://{tmp_path / 'nothing'}")
    assert r.returncode == 2 and "no store at" in r.stderr and len(r.stderr.splitlines()) == 1


def test_readiness_view_equals_the_replay_summary(stored):
    """The ``readiness`` view (SQL over app_readiness) computes what the core's
    :func:`~pipeline.core.audit.readiness` does on the same rows."""
    summary, url = stored
    with open_store(url) as store:
        rows = run_view(store, "readiness", QueryFilter(limit=1_000_000)).to_pylist()
    assert rows and len(rows) == len(summary.readiness)
    mine = {r.key: r for r in summary.readiness}
    for row in rows:
        r = mine[f"{row['namespace']}/{row['app']}" if row["namespace"] else row["app"]]
        assert (row["edges"], row["quiet_days"], bool(row["ready"]),
                list(row["new_edges_per_day"])) == (
            r.edges, r.quiet_days, r.ready, list(r.new_edges_per_day)), r.key
        since = row["ready_since"]  # DateTime: epoch seconds in Arrow
        assert (float(since) if since is not None else None) == r.ready_since
    assert [bool(r["ready"]) for r in rows] == sorted(bool(r["ready"]) for r in rows)
