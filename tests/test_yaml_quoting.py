"""Issue 10 item 9: values a YAML reader would take for another type are written quoted.

Kubernetes reads manifests with sigs.k8s.io/yaml, which resolves plain scalars like go-yaml v2
(YAML 1.1 plus a wider float syntax: ``1e3`` is 1000.0 there, ``y``/``n`` are booleans). The
documents are read back with PyYAML's YAML 1.1 loader and with that loader extended by go-yaml
v2's extra rules; every untrusted string must come back as the same string from both.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.intents import CandidateRule, Evidence, Peer, Workload
from pipeline.policy import render_cilium, render_networkpolicies
from pipeline.policy._common import dump
from pipeline.policy.labels import yaml_needs_quotes


class GoYamlV2Loader(yaml.SafeLoader):
    """PyYAML's YAML 1.1 loader plus the plain-scalar rules go-yaml v2 (resolve.go) adds."""


GoYamlV2Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))
GoYamlV2Loader.add_implicit_resolver(  # go-yaml v2's yamlStyleFloat
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"))
GoYamlV2Loader.add_constructor(
    "tag:yaml.org,2002:bool", lambda loader, node: loader.construct_scalar(node) in
    ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"))

READERS = (yaml.SafeLoader, GoYamlV2Loader)
AMBIGUOUS = ["1e3", "yes", "null", "0x1F", "y", "n", "No", "on", "OFF", "~", "true", "010",
             "0o17", "0b101", "1_000", "1:20", "+1", "-1", "1.", ".5", "1.5e-3", ".inf",
             "-.Inf", ".nan", "2024-01-02", "=", "<<", "1e+3", "0", "NULL", "True"]


def _read(text: str, loader: type[yaml.SafeLoader]) -> Any:
    return yaml.load(text, Loader=loader)  # SafeLoader subclasses only


def test_readers_really_read_these_values_as_other_types() -> None:
    """The reference readers see non-strings in plain scalars (else the test below is moot)."""
    for v in ("1e3", "y", "0x1F", "yes", "null"):
        assert any(not isinstance(_read(f"k: {v}\n", r)["k"], str) for r in READERS), v


def test_ambiguous_scalars_survive_a_yaml_1_1_round_trip() -> None:
    doc = {"metadata": {"namespace": "1e3", "labels": {v: v for v in AMBIGUOUS}},
           "list": AMBIGUOUS}
    text = dump(doc)
    for reader in READERS:
        assert _read(text, reader) == doc, reader.__name__
    assert all(yaml_needs_quotes(v) for v in AMBIGUOUS if v not in ("2024-01-02", "=", "<<"))


def test_rendered_policies_keep_namespace_and_label_types() -> None:
    ev = Evidence(flows=3, bytes=10, first_seen=1.7e9, last_seen=1.7e9 + 60, days_observed=1)
    app = Workload("1e3", "yes", "pod", (("app", "yes"), ("tier", "0x1F"), ("v", "null")))
    peer = Peer("workload", Workload("y", "n", "pod", (("app", "n"), ("rev", "010"))))
    rules = [CandidateRule("r-1", app, "ingress", peer, 6, (80,), ev, 0.9, "proposed"),
             CandidateRule("r-2", app, "egress", peer, 6, (443,), ev, 0.9, "proposed")]
    for rendered in (render_networkpolicies(rules), render_cilium(rules)):
        assert rendered.files, rendered.skipped
        for text in rendered.files.values():
            for reader in READERS:
                strict = _read(text, yaml.SafeLoader)
                assert _read(text, reader) == strict
                _no_non_string_leaves_except_numbers(strict, text)
        joined = "\n".join(rendered.files.values())
        assert "namespace: '1e3'" in joined and "app: 'yes'" in joined


def _no_non_string_leaves_except_numbers(node: Any, text: str) -> None:
    """Only ports/protocol numbers may be non-strings; no bool/None/float leaf anywhere."""
    if isinstance(node, dict):
        for k, v in node.items():
            assert isinstance(k, str), (k, text)
            _no_non_string_leaves_except_numbers(v, text)
    elif isinstance(node, list):
        for v in node:
            _no_non_string_leaves_except_numbers(v, text)
    else:
        assert isinstance(node, str | int) and not isinstance(node, bool), (node, text)


TRICKY = st.text(alphabet="0123456789+-._:eExXoObByYnN~", min_size=0, max_size=8)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(values=st.lists(st.one_of(TRICKY, st.sampled_from(AMBIGUOUS)), min_size=1, max_size=5))
def test_any_string_round_trips_through_both_readers(values: list[str]) -> None:
    doc = {"labels": {f"k{i}": v for i, v in enumerate(values)}, "items": values}
    text = dump(doc)
    for reader in READERS:
        assert _read(text, reader) == doc, (reader.__name__, text)
