"""Issue 10 items 1, 10, 11: hostile identity values (control characters, NUL, huge names) in
every identity field of every source and of the inventory cost only their own record, and
nothing a person reads (summary, errors, progress, logs) prints them raw or whole."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.commands import cli
from pipeline.commands.progress import Progress
from pipeline.commands.replay import ReplaySummary, replay
from pipeline.commands.summary import print_replay_summary
from pipeline.core.enrich import Orienter, enrich
from pipeline.core.inventory import Inventory, entry_from_record, load_inventory
from pipeline.core.normalize import IDENTITY_COLUMNS, normalize
from pipeline.core.settings import CoreSettings
from pipeline.core.text import MAX_IDENTITY_CHARS, excerpt, has_unsafe_chars, printable
from pipeline.errors import InputError
from pipeline.sources import get_parser

HOSTILE = ["a\x00b", "\x1b[2J\x1b[Hall clear", "x\u202ey", "a\x85b", "a\rb", "\x7f",
           "x\u2028y", "a" * (MAX_IDENTITY_CHARS + 1), "b" * 10_000]
T0 = 1_700_000_000


def _canonical(app: str) -> dict[str, Any]:
    return {"start": T0, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "src_port": 40000,
            "dst_port": 80, "proto": 6, "src_workload": {"app": app, "namespace": "shop"}}


def _hubble(ns: str) -> dict[str, Any]:
    return {"flow": {"time": "2023-11-14T22:13:20Z", "verdict": "FORWARDED",
                     "IP": {"source": "10.0.0.1", "destination": "10.0.0.2"},
                     "l4": {"TCP": {"source_port": 40000, "destination_port": 80}},
                     "source": {"namespace": ns, "labels": ["k8s:app=web"]},
                     "destination": {"namespace": "shop", "labels": ["k8s:app=db"]}}}


def _hubble_label(value: str) -> dict[str, Any]:
    rec = _hubble("shop")
    rec["flow"]["destination"]["labels"] = ["k8s:app=db", f"k8s:tier={value}"]
    return rec


def _goflow(ns: str) -> dict[str, Any]:
    return {"TimeFlowStart": T0, "SrcAddr": "10.0.0.1", "DstAddr": "10.0.0.2", "SrcPort": 40000,
            "DstPort": 80, "Proto": 6, "Bytes": 10, "Packets": 1, "SrcK8S_Namespace": ns,
            "SrcK8S_OwnerName": "web"}


def _gcp(workload: str) -> dict[str, Any]:
    pod = {"pod_name": "web-1", "pod_namespace": "shop",
           "pod_workload": {"workload_name": workload, "workload_type": "DEPLOYMENT"}}
    return {"jsonPayload": {"connection": {"src_ip": "10.0.0.1", "src_port": 40000,
                                           "dest_ip": "10.0.0.2", "dest_port": 80,
                                           "protocol": 6},
                            "start_time": "2023-11-14T22:13:20Z", "bytes_sent": "10",
                            "packets_sent": "1", "src_gke_details": {"pod": pod}}}


SOURCES = {"canonical": _canonical, "hubble": _hubble, "hubble-labels": _hubble_label,
           "goflow2": _goflow, "gcp-vpc": _gcp}


def _block(fmt: str, value: str) -> bytes:
    make = SOURCES[fmt]
    return b"\n".join(orjson.dumps(make(v)) for v in ("web", value, "web")) + b"\n"


def _assert_clean_identities(flows: pa.Table) -> None:
    for name in IDENTITY_COLUMNS:
        for v in flows.column(name).to_pylist():
            if v is not None:
                assert not has_unsafe_chars(v), (name, v)


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: ascii(v)[:12])
@pytest.mark.parametrize("fmt", list(SOURCES))
def test_hostile_identity_costs_only_its_record(fmt: str, value: str) -> None:
    res = get_parser(fmt.split("-labels")[0]).parse(_block(fmt, value), "f", 1)
    assert res.flows.num_rows == 2 and res.records_in == 3
    assert [(r.reason, r.source) for r in res.rejects] == [
        ("identity_too_long" if len(value) > MAX_IDENTITY_CHARS else "bad_identity", "f:2")]
    _assert_clean_identities(res.flows)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(list(SOURCES)),
       value=st.text(min_size=1, max_size=300).filter(lambda v: "=" not in v and "\\" not in v))
def test_any_identity_value_is_accepted_clean_or_rejected_with_a_reason(fmt: str,
                                                                       value: str) -> None:
    res = get_parser(fmt.split("-labels")[0]).parse(_block(fmt, value), "f", 1)
    assert res.records_in == res.flows.num_rows + len(res.rejects) == 3
    _assert_clean_identities(res.flows)
    if has_unsafe_chars(value) or len(value) > MAX_IDENTITY_CHARS:
        assert [r.reason for r in res.rejects] in (["bad_identity"], ["identity_too_long"])


def test_nul_identity_never_stops_a_replay(tmp_path: Path) -> None:
    flows = tmp_path / "flows.jsonl"
    recs = [_canonical("web"), _canonical("a\x00b"), _canonical("x" * 10_000), _canonical("web")]
    flows.write_bytes(b"\n".join(orjson.dumps(r) for r in recs) + b"\n")
    hubble = tmp_path / "hubble.json"
    hubble.write_bytes(b"\n".join(orjson.dumps(_hubble(ns)) for ns in ("shop", "s\x00p")))
    inv = Inventory(internal_cidrs=("10.0.0.0/8",))
    s = replay([flows, hubble], inv, CoreSettings(audit_days=1))
    assert (s.records, s.flows, s.rejected) == (6, 3, 3)
    assert s.reject_reasons == {"bad_identity": 2, "identity_too_long": 1}


def test_enrich_tolerates_any_identity_text() -> None:
    """Even past normalisation, identity text cannot break enrichment's keys."""
    cols = {"start": pa.array([T0, T0]), "src_ip": pa.array(["10.0.0.1", "10.0.0.3"]),
            "dst_ip": pa.array(["10.0.0.2"] * 2), "proto": pa.array([6, 6]),
            "src_port": pa.array([40000] * 2), "dst_port": pa.array([80] * 2)}
    table, errors = normalize(cols, 2)
    assert not errors
    table = table.set_column(table.schema.get_field_index("src_app"), "src_app",
                             pa.array(["a\x00b\x00c", "a"]))
    table = table.set_column(table.schema.get_field_index("src_namespace"), "src_namespace",
                             pa.array(["n\x00", "n\x00"]))
    inv = Inventory(internal_cidrs=("10.0.0.0/8",))
    out = enrich(table, inv, Orienter())
    names = [inv.workloads.infos[w] for w in out.client_wid]
    assert [(i.namespace, i.app) for i in names] == [("n\x00", "a\x00b\x00c"), ("n\x00", "a")]


# ---------------------------------------------------------------- inventory


@pytest.mark.parametrize("field", ["app", "namespace", "env", "service_account", "kind",
                                   "labels"])
@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: ascii(v)[:12])
def test_inventory_refuses_hostile_identity_with_a_short_message(field: str, value: str,
                                                                 tmp_path: Path) -> None:
    rec: dict[str, Any] = {"ip": "10.0.0.1", "app": "web", "namespace": "shop"}
    rec[field] = {"tier": value} if field == "labels" else value
    path = tmp_path / "inv.jsonl"
    path.write_bytes(orjson.dumps(rec) + b"\n")
    with pytest.raises(InputError, match=r"inv\.jsonl:1: .*(control characters|longer than)") \
            as err:
        load_inventory(path)
    msg = str(err.value)
    assert len(msg) < 300 and not has_unsafe_chars(msg)


def test_inventory_echoes_at_most_an_excerpt_of_a_huge_value(tmp_path: Path) -> None:
    path = tmp_path / "inv.jsonl"
    path.write_bytes(orjson.dumps({"ip": "1" * 1_000_000, "app": "web"}))
    with pytest.raises(InputError, match=r"\(1000000 chars\) is not an IP address") as err:
        load_inventory(path)
    assert len(str(err.value)) < 300
    path = tmp_path / "inv.csv"
    path.write_text("ip,app\n10.0.0.1,web\n" + "1" * 1_000_000 + ",web\n")
    with pytest.raises(InputError, match=r"after line 2 is not readable as CSV") as err:
        load_inventory(path)
    assert len(str(err.value)) < 300
    with pytest.raises(ValueError, match="valid_from") as err2:
        entry_from_record({"ip": "10.0.0.1", "app": "a", "valid_from": "x" * 1_000_000})
    assert len(str(err2.value)) < 200


# ---------------------------------------------------------------- what people read


def test_summary_escapes_terminal_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    spoof = "web\x1b[2K\r  violations             0\x1b[8m"
    s = ReplaySummary(files=1, records=2, flows=2)
    s.violations = [{"type": "new_edge", "severity": {"label": "high", "score": 0.9},
                     "ts": "2026-01-01T00:00:00Z", "reason": f"{spoof} talked to db"}]
    s.rules = [{"app": spoof}]
    s.reject_reasons.update({"bad\x1bidentity": 1})
    print_replay_summary(s, store_url="chdb:///tmp/\x1b[31mx", outputs={"violations":
                                                                         Path("v\x07.jsonl")})
    out = capsys.readouterr().out
    assert not has_unsafe_chars(out.replace("\n", ""))
    assert "web\\x1b[2K\\x0d" in out


def test_cli_errors_and_progress_escape_control_characters(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    inv = tmp_path / "inv.jsonl"
    inv.write_bytes(orjson.dumps({"ip": "10.0.0.1", "app": "web"}) + b"\n")
    assert cli.main(["replay", str(tmp_path / "x\x1b[2Jy.jsonl"), "--inventory", str(inv),
                     "--no-store"]) == 2
    err = capsys.readouterr().err
    assert "x\\x1b[2Jy" in err and err.count("\n") == 1 and "\x1b" not in err
    buf = io.StringIO()
    bar = Progress("log", [10], every=0.0, stream=buf)
    bar.next_file(Path("a\x1b]0;pwned\x07.jsonl"))
    bar.update(flows=10, violations=0, event_time=None)
    assert "\x1b" not in buf.getvalue() and "\\x1b]0;pwned\\x07" in buf.getvalue()


def test_printable_and_excerpt() -> None:
    assert printable("plain ascii / ünïcode") == "plain ascii / ünïcode"
    assert printable("a\x00\u202e") == "a\\x00\\u202e"
    e = excerpt("z" * 10_000)
    assert len(e) < 100 and e.endswith("(10000 chars)")
    assert math.isfinite(len(excerpt(1e300)))
