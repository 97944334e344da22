"""The worker's metrics are what the docs and alerts say (issue 10 item 15), without a broker."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from pipeline.core.columns import DEAD_LETTER_REASONS
from pipeline.stream.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
SNAKE = re.compile(r"^[a-z]+(_[a-z0-9]+)+$")
# calls whose argument at this position is a reject reason
REASON_ARG = {"Reject": 0, "RowError": 1, "flag": 1, "reject_all": 2, "finish_csv": 4}


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(m.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_every_dead_letter_reason_is_a_series_at_zero_before_the_first_reject() -> None:
    samples = _samples(Metrics())
    for reason in DEAD_LETTER_REASONS:
        assert samples.get(("segflow_dead_letter_total", (("reason", reason),))) == 0.0, reason


def _name(f: ast.expr) -> str:
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def reasons_in_code(root: Path) -> dict[str, str]:
    """Reject reasons written in the code: arguments of Reject/RowError/flag/reject_all (a
    literal or a module constant), and the middle of (mask, "reason", "detail") tuples."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                  and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                  for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            cands: list[ast.expr] = []
            if isinstance(node, ast.Tuple) and len(node.elts) == 3 \
                    and not isinstance(node.elts[0], ast.Constant) \
                    and isinstance(node.elts[2], ast.JoinedStr | ast.Constant) \
                    and isinstance(getattr(node.elts[2], "value", ""), str):
                cands.append(node.elts[1])
            if isinstance(node, ast.Call):
                pos = REASON_ARG.get(_name(node.func))
                if pos is not None and len(node.args) > pos:
                    cands.append(node.args[pos])
                if _name(node.func) == "labels" and isinstance(node.func, ast.Attribute) \
                        and _name(node.func.value) == "dead_letters" and node.args:
                    cands.append(node.args[0])
            for c in cands:
                v = c.value if isinstance(c, ast.Constant) else consts.get(getattr(c, "id", ""))
                if isinstance(v, str) and SNAKE.match(v):
                    found.setdefault(v, f"{path.relative_to(root.parent)}:{c.lineno}")
    return found


def test_the_known_reasons_cover_every_reason_the_code_gives() -> None:
    found = reasons_in_code(REPO / "pipeline")
    assert {"bad_json", "bad_ip", "not_zeek", "too_large", "empty_message"} <= set(found)
    missing = {r: where for r, where in found.items() if r not in DEAD_LETTER_REASONS}
    assert not missing, f"add to pipeline/core/columns.py DEAD_LETTER_REASONS: {missing}"


def test_the_reason_finder_sees_each_way_of_writing_a_reason(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        'GONE = "gone_away"\n'
        'Reject("one_reason", "d", b"")\n'
        'Reject(GONE, "d", b"")\n'
        'flag(mask, "two_reason", f"x {y}")\n'
        'bad.append((mask, "three_reason", "detail"))\n'
        'reject_all(n, loc, "four_reason", "d")\n'
        'self.metrics.dead_letters.labels("five_reason").inc()\n'
        'COLUMNS = [("src", "not_a_reason", "x")]\n')
    assert set(reasons_in_code(pkg)) == {"gone_away", "one_reason", "two_reason",
                                        "three_reason", "four_reason", "five_reason"}


def test_process_cpu_and_memory_are_exported() -> None:
    samples = _samples(Metrics())
    assert samples[("segflow_process_resident_memory_bytes", ())] > 10 << 20
    assert samples[("segflow_process_cpu_seconds_total", ())] > 0


def _documented() -> dict[str, set[str]]:
    """metric → labels from the table in docs/streaming.md ("Metrics")."""
    text = (REPO / "docs" / "streaming.md").read_text()
    table = text[text.index("| metric | labels |"):].split("\n\n", 1)[0]
    out: dict[str, set[str]] = {}
    for row in table.splitlines()[2:]:
        metrics_cell, labels_cell = row.strip("|").rsplit("|", 1)
        # "side (client/server), kind (world/unknown)": names, each with optional values
        labels = set(re.findall(r"(\w+)(?:\s*\([^)]*\))?", labels_cell))
        for name in re.findall(r"`(segflow_\w+)`", metrics_cell):
            out[name] = labels
    return out


def _exported() -> dict[str, set[str]]:
    """Exported family names (counters with ``_total``) → label names."""
    m = Metrics()
    out: dict[str, set[str]] = {}
    for value in vars(m).values():
        if isinstance(value, MetricWrapperBase):
            (fam,) = value.describe()
            name = fam.name + ("_total" if fam.type == "counter" else "")
            out[name] = set(value._labelnames)
    for fam in m.registry.collect():  # collectors that are not wrappers (process metrics)
        for sample in fam.samples:
            if not sample.name.endswith("_created"):
                out.setdefault(sample.name, set(sample.labels) - {"le"})
    return out


def test_documented_labels_are_the_exported_labels() -> None:
    docs, exported = _documented(), _exported()
    assert len(docs) >= 20
    wrong = {name: (labels, exported.get(name)) for name, labels in docs.items()
             if exported.get(name) != labels}
    assert not wrong, f"docs/streaming.md labels vs exported (docs, exported): {wrong}"
    undocumented = sorted(set(exported) - set(docs))
    assert not undocumented, f"exported but not in docs/streaming.md: {undocumented}"
