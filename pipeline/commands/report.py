"""``segflow report``: one self-contained HTML file over a store, for people without Grafana.

Why one file: SOCs are often air-gapped, so the page carries its own chart runtime (Plotly's
JavaScript inlined once) and makes no network request when opened. The data comes from the
same named views as ``segflow query`` (:mod:`pipeline.storage.queries`); this module only
turns their rows into Plotly figures and fills a Jinja2 template. Sections whose table a store
does not have yet are left out with a note, never an error.
"""

from __future__ import annotations

import html
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from jinja2 import Environment, select_autoescape
from plotly.offline import get_plotlyjs

from pipeline.errors import StorageError
from pipeline.storage.files import write_atomic
from pipeline.storage.queries import QueryFilter, run_view

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
            "#ff9da7", "#9c755f", "#bab0ac", "#17becf", "#bcbd22"]
_SEVERITY_ORDER = ["critical", "high", "medium", "low"]
_SEVERITY_COLOUR = {"critical": "#9d0208", "high": "#e85d04", "medium": "#faa307",
                    "low": "#90be6d"}
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
MAP_EDGES = 600  # the app map draws at most this many app pairs (busiest first)
INCIDENTS_LISTED = 50  # latest incidents listed with their member violations


def clean(text: Any) -> str:
    """Printable text: control characters shown as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


@dataclass
class InputCounts:
    """Input accounting shown in the report (from a replay summary)."""

    records: int = 0
    accepted: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def inputs_from_summary(summary: Any) -> InputCounts:
    """A replay summary's accounting (records, accepted, rejected by reason)."""
    return InputCounts(records=int(summary.records), accepted=int(summary.flows),
                       dead_lettered=dict(summary.reject_reasons),
                       skipped=dict(getattr(summary, "skip_reasons", {}) or {}))


def _app_key(ns: str, app: str) -> str:
    return f"{ns}/{app}" if ns else app


def _layout(nodes: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Deterministic layout: namespaces on a ring, each namespace's apps on a small ring
    around its centre (radius growing with the number of apps), so 50+ apps stay legible."""
    by_ns: dict[str, list[str]] = defaultdict(list)
    for key, ns in sorted(nodes.items()):
        by_ns[ns].append(key)
    spaces = sorted(by_ns)
    radius = {ns: 0.0 if len(by_ns[ns]) == 1 else 0.5 + 0.16 * len(by_ns[ns]) for ns in spaces}
    # the ring is long enough for every cluster's diameter plus a gap
    ring = max(3.0, sum(2 * r + 1.2 for r in radius.values()) / (2 * math.pi))
    pos: dict[str, tuple[float, float]] = {}
    angle = 0.0
    for ns in spaces:
        span = 2 * math.pi * (radius[ns] + 0.6) / (math.pi * ring)  # share of the ring
        a = angle + span / 2
        angle += span
        cx, cy = ring * math.cos(a), ring * math.sin(a)
        apps = by_ns[ns]
        for j, key in enumerate(apps):
            b = 2 * math.pi * j / len(apps) + a
            pos[key] = (cx + radius[ns] * math.cos(b), cy + radius[ns] * math.sin(b))
    return pos


def app_map_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Apps as nodes grouped (and coloured) by namespace; edges with ports, volume, status."""
    nodes: dict[str, str] = {}
    kinds: dict[str, str] = {}
    volume: dict[str, int] = defaultdict(int)
    for r in rows:
        for end in ("src", "dst"):
            key = _app_key(r[f"{end}_namespace"], r[f"{end}_app"])
            nodes[key] = r[f"{end}_namespace"] or "(none)"
            kinds[key] = r[f"{end}_kind"]
            volume[key] += int(r["flows"])
    pos = _layout(nodes)
    colours = {ns: _PALETTE[i % len(_PALETTE)] for i, ns in enumerate(sorted(set(nodes.values())))}
    fig = go.Figure()
    groups: dict[str, tuple[list[float | None], list[float | None], str]] = {
        "learned": ([], [], "#9aa5b1"), "new": ([], [], "#d62828")}
    mid_x: list[float] = []
    mid_y: list[float] = []
    mid_text: list[str] = []
    mid_colour: list[str] = []
    for r in rows:
        s = _app_key(r["src_namespace"], r["src_app"])
        d = _app_key(r["dst_namespace"], r["dst_app"])
        (x0, y0), (x1, y1) = pos[s], pos[d]
        status = "learned" if r["learned"] and not r["violating_flows"] else "new"
        xs, ys, _ = groups[status]
        xs.extend([x0, x1, None])
        ys.extend([y0, y1, None])
        mid_x.append(x0 + 0.55 * (x1 - x0))
        mid_y.append(y0 + 0.55 * (y1 - y0))
        mid_colour.append(groups[status][2])
        mid_text.append(
            f"<b>{html.escape(clean(s))} → {html.escape(clean(d))}</b><br>"
            f"ports: {html.escape(', '.join(r['ports'][:12]))}"
            f"{' …' if len(r['ports']) > 12 else ''}<br>"
            f"flows: {r['flows']:,} · bytes: {r['bytes']:,}<br>"
            f"rejected: {r['rejected_flows']:,} · violating: {r['violating_flows']:,}<br>"
            f"{'learned during the audit' if r['learned'] else 'never seen in the audit'}")
    for status, (xs, ys, colour) in groups.items():
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip",
                                     line={"color": colour, "width": 1.2},
                                     name=("learned edges" if status == "learned"
                                           else "edges with violations"), opacity=0.7))
    fig.add_trace(go.Scatter(x=mid_x, y=mid_y, mode="markers", hovertext=mid_text,
                             hoverinfo="text", marker={"size": 7, "color": mid_colour,
                                                       "symbol": "diamond"},
                             name="edge details (hover)", showlegend=False))
    for ns, colour in colours.items():
        keys = [k for k, n in nodes.items() if n == ns]
        fig.add_trace(go.Scatter(
            x=[pos[k][0] for k in keys], y=[pos[k][1] for k in keys], mode="markers+text",
            text=[clean(k.split("/", 1)[-1]) for k in keys], textposition="top center",
            hovertext=[f"<b>{html.escape(clean(k))}</b><br>kind: {html.escape(clean(kinds[k]))}"
                       f"<br>flows: {volume[k]:,}" for k in keys], hoverinfo="text",
            marker={"size": [8 + 4 * math.log10(1 + volume[k]) for k in keys],
                    "color": colour, "line": {"width": 1, "color": "#333"}},
            name=clean(ns), legendgroup="namespaces"))
    fig.update_layout(height=max(600, min(1400, 420 + 9 * len(nodes))),
                      margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis={"visible": False}, yaxis={"visible": False, "scaleanchor": "x"},
                      plot_bgcolor="white", hovermode="closest",
                      legend={"title": {"text": "namespace"}})
    return fig


def violations_figure(rows: list[dict[str, Any]], by: str, value: str = "violations"
                      ) -> go.Figure:
    """Violations (or incidents: ``value``) per day, stacked by ``type`` or ``severity``."""
    days = sorted({r["day"] for r in rows})
    keys = sorted({r[by] for r in rows},
                  key=lambda k: _SEVERITY_ORDER.index(k) if k in _SEVERITY_ORDER else 9)
    counts: dict[tuple[Any, str], int] = defaultdict(int)
    for r in rows:
        counts[(r["day"], r[by])] += int(r[value])
    fig = go.Figure()
    for i, k in enumerate(keys):
        colour = _SEVERITY_COLOUR.get(k) if by == "severity" else _PALETTE[i % len(_PALETTE)]
        fig.add_trace(go.Bar(x=[str(d) for d in days], y=[counts[(d, k)] for d in days],
                             name=clean(k), marker_color=colour))
    fig.update_layout(barmode="stack", height=320, margin={"l": 40, "r": 10, "t": 30, "b": 40},
                      yaxis={"title": {"text": value}}, legend={"title": {"text": by}})
    return fig


def audit_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """New edges per app and audit day, as a heatmap (one row per app)."""
    apps = sorted({_app_key(r["namespace"], r["app"]) for r in rows})
    days = sorted({r["day"] for r in rows})
    if days:
        first, last = days[0], days[-1]
        days = [datetime.fromordinal(o).date() for o in range(first.toordinal(),
                                                                last.toordinal() + 1)]
    cell = {(_app_key(r["namespace"], r["app"]), r["day"]): int(r["new_edges"]) for r in rows}
    z = [[cell.get((a, d), 0) for d in days] for a in apps]
    fig = go.Figure(go.Heatmap(z=z, x=[str(d) for d in days], y=[clean(a) for a in apps],
                               colorscale="Blues", colorbar={"title": {"text": "new edges"}},
                               hovertemplate="%{y}<br>%{x}: %{z} new edge(s)<extra></extra>"))
    fig.update_layout(height=max(260, 18 * len(apps) + 80),
                      margin={"l": 10, "r": 10, "t": 30, "b": 40}, yaxis={"autorange": "reversed"})
    return fig


def coverage_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Share of each app's inbound flows its candidate ingress rules allow."""
    rows = sorted(rows, key=lambda r: (r["coverage"], r["namespace"], r["app"]))
    fig = go.Figure(go.Bar(
        x=[100 * r["coverage"] for r in rows], y=[clean(_app_key(r["namespace"], r["app"]))
                                                  for r in rows],
        orientation="h", marker_color="#4e79a7",
        customdata=[[r["allowed_edges"], r["edges"], r["flows"]] for r in rows],
        hovertemplate="%{y}: %{x:.1f}% of flows allowed<br>%{customdata[0]} of "
                      "%{customdata[1]} edges, %{customdata[2]:,} flows<extra></extra>"))
    fig.update_layout(height=max(260, 18 * len(rows) + 80), xaxis={"range": [0, 100],
                      "title": {"text": "% of inbound flows allowed"}},
                      margin={"l": 10, "r": 10, "t": 30, "b": 40})
    return fig


def _div(fig: go.Figure, name: str) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{name}",
                           config=_PLOT_CONFIG))


def _try(store: Any, view: str, flt: QueryFilter, notes: list[str]) -> list[dict[str, Any]]:
    try:
        return list(run_view(store, view, flt).to_pylist())
    except StorageError as exc:
        notes.append(f"{view}: {exc}")
        return []


def build_report(store: Any, flt: QueryFilter, *, title: str = "segflow report",
                 inputs: InputCounts | None = None) -> str:
    """The whole HTML page (a string) for the store's data within ``flt``."""
    notes: list[str] = []
    big = QueryFilter(start=flt.start, end=flt.end, app=flt.app, limit=1_000_000)
    edges = _try(store, "app-map", QueryFilter(start=flt.start, end=flt.end, app=flt.app,
                                                limit=MAP_EDGES), notes)
    counts = _try(store, "violation-counts", big, notes)
    latest = _try(store, "violations", QueryFilter(start=flt.start, end=flt.end, app=flt.app,
                                                    limit=100), notes)
    incident_counts = _try(store, "incident-counts", big, notes)
    recent = QueryFilter(start=flt.start, end=flt.end, app=flt.app, limit=INCIDENTS_LISTED)
    incidents = _try(store, "incidents", recent, notes)
    members: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in _try(store, "incident-violations", recent, notes) if incidents else []:
        members[m["incident_id"]].append(m)
    audit = _try(store, "audit-progress", big, notes)
    coverage = _try(store, "rule-coverage", big, notes)
    blocked = _try(store, "would-block", QueryFilter(start=flt.start, end=flt.end, app=flt.app,
                                                      limit=50), notes)
    charts: dict[str, str] = {}
    if edges:
        charts["map"] = _div(app_map_figure(edges), "map")
    if counts:
        charts["by_type"] = _div(violations_figure(counts, "type"), "by-type")
        charts["by_severity"] = _div(violations_figure(counts, "severity"), "by-severity")
    if incident_counts:
        charts["incidents"] = _div(violations_figure(incident_counts, "severity", "incidents"),
                                   "incidents")
    if audit:
        charts["audit"] = _div(audit_figure(audit), "audit")
    if coverage:
        charts["coverage"] = _div(coverage_figure(coverage), "coverage")
    apps = {_app_key(r[f"{e}_namespace"], r[f"{e}_app"]) for r in edges for e in ("src", "dst")}
    totals = {
        "edges": len(edges), "apps": len(apps),
        "flows": sum(int(r["flows"]) for r in edges),
        "violations": sum(int(r["violations"]) for r in counts),
        "incidents": sum(int(r["incidents"]) for r in incident_counts),
    }
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["clean"] = clean
    template = env.from_string(
        resources.files("pipeline.commands").joinpath("report.html.j2").read_text("utf-8"))
    return template.render(
        title=title, generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        store=str(getattr(store, "url", "")), flt=flt, totals=totals, charts=charts,
        latest=latest, incidents=incidents, members=members, coverage=coverage,
        blocked=blocked, inputs=inputs, notes=notes,
        map_limit=MAP_EDGES, plotly_js=get_plotlyjs(),
    )


def write_report(store: Any, out: Path, flt: QueryFilter | None = None,
                 inputs: InputCounts | None = None) -> Path:
    """Write the report atomically (temporary file renamed into place)."""
    page = build_report(store, flt or QueryFilter(), inputs=inputs)
    write_atomic(out, page.encode("utf-8"))
    return out


__all__ = ["InputCounts", "app_map_figure", "build_report", "clean", "inputs_from_summary",
           "write_report"]
