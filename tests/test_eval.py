"""segflow eval: scoring definitions, the generated-estate run, real labeled captures, the CLI."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from pipeline.commands.cli import main
from pipeline.commands.evaluate import (
    EstateSpec,
    RunResult,
    capture_episodes,
    read_zeek_labels,
    run_capture,
    run_estate,
    target_lines,
)
from pipeline.commands.scoring import Alert, Episode, TypeScore, incidents, matches, score
from pipeline.core.inventory import DEFAULT_INTERNAL_CIDRS, Inventory
from pipeline.errors import InputError
from pipeline.generate.config import ATTACK_KINDS

CAPTURES = Path(__file__).parent / "fixtures" / "captures"
NJRAT = CAPTURES / "ctu-botnet-230-1-first-1000.labeled-conn.log.gz"
NORMAL = CAPTURES / "ctu-normal-40-day1.conn.log.labeled.gz"
NJRAT_OPEN = 1_488_980_824.0  # its '#open 2017-03-08-13-47-04'


def alert(src: str, first: float, *, detected: float | None = None, workload: str = "",
          incident: str = "") -> Alert:
    return Alert("x", frozenset([src]) if src else frozenset(), workload, first, first + 10,
                 first if detected is None else detected, incident=incident)


EP = Episode("e1", "worm", True, 1000.0, 2000.0, frozenset(["10.0.0.5"]), "corp/ws")


def test_an_alert_matches_by_source_address_and_overlapping_time():
    assert matches(alert("10.0.0.5", 1500), EP)
    assert matches(alert("10.0.0.5", 2200), EP)  # within the slack after the end
    assert not matches(alert("10.0.0.5", 2400), EP)
    assert not matches(alert("10.0.0.6", 1500, workload="corp/ws"), EP)  # a fleet sibling
    assert matches(alert("", 1500, workload="corp/ws"), EP)  # no address: the workload


def test_incidents_group_per_source_within_the_gap_or_by_the_detectors_id():
    alerts = [alert("10.0.0.5", 0), alert("10.0.0.5", 3000), alert("10.0.0.5", 9000),
              alert("10.0.0.6", 100), alert("10.0.0.7", 0, incident="i-1"),
              alert("10.0.0.8", 50_000, incident="i-1")]
    sizes = sorted(len(g) for g in incidents(alerts))
    assert sizes == [1, 1, 2, 2]


def test_score_counts_recall_precision_false_rate_and_time_to_detect():
    benign = Episode("b", "rollout", False, 0, 10, frozenset(["10.9.9.9"]))
    alerts = [alert("10.0.0.5", 1200, detected=1045), alert("10.0.0.5", 1300, detected=1400),
              alert("10.0.0.9", 50_000), alert("10.0.0.10", 90_000)]
    other = Episode("e2", "beacon", True, 5000, 6000, frozenset(["10.0.0.1"]))
    s = score("d", alerts, [EP, other, benign], workloads=200, eval_days=2.0)
    assert (s.by_type["worm"].caught, s.by_type["beacon"].caught) == (1, 0)
    assert s.overall.recall == 0.5
    assert s.by_type["worm"].ttd == [45.0]
    assert (s.incidents, s.true_incidents, s.false_incidents) == (3, 1, 2)
    assert s.false_per_100_day == pytest.approx(2 / 2 / 2)


@pytest.fixture(scope="module")
def small_run():
    return run_estate(EstateSpec(seed=2, size="small", audit_days=7, post_days=3),
                      ATTACK_KINDS)


def test_a_generated_run_scores_segflow_and_two_naive_detectors(small_run):
    names = [s.detector for s in small_run.scores]
    assert names == ["segflow", "naive-new-pair", "naive-rate"]
    segflow, pairs, _ = small_run.scores
    kinds = set(segflow.by_type)
    assert {"lateral_movement", "worm", "beacon", "slow_scan"} <= kinds
    assert all(ts.episodes >= 1 for ts in segflow.by_type.values())
    assert all(len(ts.ttd) == ts.caught for ts in segflow.by_type.values())
    # identity-aware segflow raises far fewer incidents than an address allowlist
    assert segflow.incidents < pairs.incidents / 5
    assert segflow.overall.caught >= 1 and pairs.overall.caught >= 1


def test_segflow_is_scored_by_the_cores_incidents(small_run):
    segflow = small_run.scores[0]
    # one core incident per source and hour: never more incidents than violations, and
    # at least one incident groups several violations on this estate
    assert 0 < segflow.incidents < segflow.alerts


def test_targets_say_pass_or_fail_with_the_types_that_miss_them():
    good = score("segflow", [], [], workloads=100, eval_days=1.0)
    good.by_type = {"worm": TypeScore(2, 2, [30.0, 50.0]), "scan": TypeScore(1, 1, [10.0])}
    bad = score("segflow", [], [], workloads=100, eval_days=1.0)
    bad.by_type = {"beacon": TypeScore(4, 1, [4000.0])}
    bad.incidents = 3  # none matched an episode: 3 false incidents per 100 workloads per day
    lines = target_lines([RunResult("a", 1, [good]), RunResult("b", 1, [bad])])
    text = "\n".join(lines)
    assert "episode recall >= 95%: 57% FAIL (below: beacon 25%)" in text
    assert "worst 3.00 FAIL" in text
    assert "median time to detect <= 60 s: 40s PASS (slower: beacon 4000s)" in text
    assert "PASS" in "\n".join(target_lines([RunResult("a", 1, [good])])).split("recall")[1]


def test_zeek_labels_give_episodes_per_label_and_internal_host():
    records = read_zeek_labels(NJRAT)
    assert len(records) == 992
    inv = Inventory(internal_cidrs=DEFAULT_INTERNAL_CIDRS)
    episodes, hosts = capture_episodes(records, inv, NJRAT_OPEN)
    assert [(e.type, sorted(e.hosts)) for e in episodes] == [("CC", ["192.168.1.115"])]
    assert episodes[0].start > NJRAT_OPEN
    assert "192.168.1.115" in hosts and not any(h.startswith("fe80") for h in hosts)


def test_a_capture_with_relative_times_needs_an_offset():
    inv = Inventory(internal_cidrs=DEFAULT_INTERNAL_CIDRS)
    with pytest.raises(InputError, match=r"time_relative 992.*--time-offset"):
        run_capture([NJRAT], audit_days=0.01, inventory=inv, internal_cidrs=DEFAULT_INTERNAL_CIDRS)
    res = run_capture([NJRAT], audit_days=0.01, inventory=inv,
                      internal_cidrs=DEFAULT_INTERNAL_CIDRS, offset=NJRAT_OPEN)
    assert res.flows == 992
    assert res.scores[0].overall.episodes == 1


def test_eval_cli_on_a_real_capture_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "eval.json"
    assert main(["eval", "--capture", str(NORMAL), "--audit-days", "0.25",
                 "--internal-cidrs", "147.32.0.0/16", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "External-Attack-to-Device" in text and "naive-rate" in text
    data = orjson.loads(out.read_bytes())
    assert data[0]["scores"][0]["detector"] == "segflow"
    assert data[0]["scores"][0]["by_type"]["External-Attack-to-Device"]["episodes"] >= 1


def test_replay_points_at_time_offset_for_relative_captures(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]):
    conn = tmp_path / "conn.log"
    conn.write_bytes(gzip.decompress(NJRAT.read_bytes()))
    args = ["replay", str(conn), "--no-store", "--internal-cidrs", "192.168.0.0/16"]
    inv = tmp_path / "inv.jsonl"
    inv.write_text('{"ip": "192.168.1.115", "app": "pc", "namespace": "lab"}\n')
    assert main([*args, "--inventory", str(inv)]) == 2
    assert "--time-offset" in capsys.readouterr().err
    assert main([*args, "--inventory", str(inv), "--time-offset", "2017-03-08T13:47:04Z",
                 "--audit-days", "0.01"]) == 0
    assert "992" in capsys.readouterr().out
