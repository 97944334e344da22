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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from jinja2 import Environment, select_autoescape
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

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
    around its centre (radius growing with the number of apps; a big namespace alternates
    two rings so neighbours' labels are not side by side), so 50+ apps stay legible."""
    by_ns: dict[str, list[str]] = defaultdict(list)
    for key, ns in sorted(nodes.items()):
        by_ns[ns].append(key)
    spaces = sorted(by_ns)
    radius = {ns: 0.0 if len(by_ns[ns]) == 1 else 0.5 + 0.16 * len(by_ns[ns]) for ns in spaces}
    # the ring is long enough for every cluster's diameter plus a gap, and wide enough
    # that a big cluster does not reach over the centre into the others
    ring = max(3.0, sum(2 * r + 1.2 for r in radius.values()) / (2 * math.pi),
               1.3 * max(radius.values()) + 1.0 if len(spaces) > 1 else 0.0)
    taken = [2 * (radius[ns] + 0.6) / ring for ns in spaces]  # arc: diameter + gap
    gap = (2 * math.pi - sum(taken)) / len(spaces)
    pos: dict[str, tuple[float, float]] = {}
    angle = 0.0
    for ns, span in zip(spaces, taken, strict=True):
        a = angle + span / 2
        angle += span + gap
        cx, cy = ring * math.cos(a), ring * math.sin(a)
        apps = by_ns[ns]
        for j, key in enumerate(apps):
            b = 2 * math.pi * j / len(apps) + a
            r = radius[ns] * (0.8 if j % 2 and len(apps) > 12 else 1.0)
            pos[key] = (cx + r * math.cos(b), cy + r * math.sin(b))
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


@dataclass
class AppProgress:
    """One app's audit progress: new edges per audit day, readiness, candidate-rule coverage.

    ``ready`` is None when the store has no readiness for the app (an older store, or an app
    first seen after the audit); ``coverage`` is None when the app had no inbound flows."""

    namespace: str
    app: str
    first_day: date | None = None
    new_edges: list[int] = field(default_factory=list)  # per day from first_day on
    edges: int = 0
    ready: bool | None = None
    quiet_days: int = 0
    quiet_days_needed: int = 0
    max_new_edges: int = 0
    ready_since: date | None = None
    last_busy_day: date | None = None
    last_busy_new_edges: int = 0
    coverage: float | None = None
    allowed_edges: int = 0
    inbound_edges: int = 0
    inbound_flows: int = 0

    @property
    def key(self) -> str:
        return _app_key(self.namespace, self.app)

    @property
    def status(self) -> str:
        """Why (not) ready, in one line."""
        if self.ready is None:
            return "no audit traffic" if self.coverage is not None else ""
        if self.ready:
            since = self.ready_since.isoformat() if self.ready_since else "?"
            return (f"ready since {since}: {self.quiet_days} quiet day(s) in a row "
                    f"(≤ {self.max_new_edges} new edge(s) a day)")
        why = (f"{self.last_busy_new_edges} new edge(s) on {self.last_busy_day.isoformat()} "
               f"(a quiet day has ≤ {self.max_new_edges}); " if self.last_busy_day else "")
        return (f"not ready: {why}{self.quiet_days} of {self.quiet_days_needed} quiet days "
                "needed")


def _day(value: Any) -> date | None:
    """A view's Date, DateTime or epoch seconds (a nullable DateTime reads as an int)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return value.date() if isinstance(value, datetime) else value  # type: ignore[no-any-return]


def app_progress(readiness: list[dict[str, Any]], coverage: list[dict[str, Any]],
                 audit: Sequence[dict[str, Any]] = ()) -> list[AppProgress]:
    """One :class:`AppProgress` per app, from the ``readiness`` and ``rule-coverage`` views
    (``audit-progress`` rows fill the new edges per day for a store without readiness).
    Not-ready apps first, then ready ones, then apps without readiness; by name within."""
    apps: dict[tuple[str, str], AppProgress] = {}

    def get(ns: str, app: str) -> AppProgress:
        return apps.setdefault((ns, app), AppProgress(ns, app))

    for r in readiness:  # the view's rows are contiguous days from the app's first day on
        a = get(r["namespace"], r["app"])
        a.first_day, a.new_edges = _day(r["first_day"]), [int(n) for n in r["new_edges_per_day"]]
        a.edges, a.ready = int(r["edges"]), bool(r["ready"])
        a.quiet_days, a.quiet_days_needed = int(r["quiet_days"]), int(r["quiet_days_needed"])
        a.max_new_edges, a.ready_since = int(r["max_new_edges"]), _day(r["ready_since"])
        a.last_busy_day = _day(r.get("last_busy_day"))
        a.last_busy_new_edges = int(r.get("last_busy_new_edges") or 0)
    if not readiness:
        per_day: dict[tuple[str, str], dict[date, int]] = defaultdict(dict)
        for r in audit:
            per_day[(r["namespace"], r["app"])][_day(r["day"])] = int(r["new_edges"])  # type: ignore[index]
        for (ns, app), days in per_day.items():
            a = get(ns, app)
            a.first_day = min(days)
            span = (max(days) - a.first_day).days + 1
            a.new_edges = [days.get(a.first_day + timedelta(days=i), 0) for i in range(span)]
            a.edges = sum(a.new_edges)
    for r in coverage:
        a = get(r["namespace"], r["app"])
        a.coverage, a.allowed_edges = float(r["coverage"]), int(r["allowed_edges"])
        a.inbound_edges, a.inbound_flows = int(r["edges"]), int(r["flows"])
    rank = {None: 2, False: 0, True: 1}
    return sorted(apps.values(), key=lambda a: (rank[a.ready], a.namespace, a.app))


def audit_figure(apps: list[AppProgress]) -> go.Figure:
    """One row per app, read across: new edges per audit day (heatmap), quiet days in a row
    against the days needed (green when ready) and the share of its inbound flows its
    candidate rules allow. Every app gets its own labelled row (20 px), so 50+ apps stay
    legible; hover gives the numbers."""
    dated = [a for a in apps if a.first_day is not None]
    first = min((a.first_day for a in dated), default=None)  # type: ignore[type-var]
    n_days = max(((a.first_day - first).days + len(a.new_edges) for a in dated),  # type: ignore[operator]
                 default=0)
    days = [first + timedelta(days=i) for i in range(n_days)] if first else []
    names = [clean(a.key) for a in apps]
    z: list[list[int | None]] = []
    for a in apps:
        row: list[int | None] = [None] * n_days
        if a.first_day is not None and first is not None:
            off = (a.first_day - first).days
            row[off:off + len(a.new_edges)] = a.new_edges
        z.append(row)
    with_ready = any(a.ready is not None for a in apps)
    with_cover = any(a.coverage is not None for a in apps)
    cols = 1 + with_ready + with_cover
    widths = [0.6] + [0.2] * (cols - 1) if cols > 1 else [1.0]
    titles = ["new edges per audit day"] + (["quiet days in a row / needed"] if with_ready
                                              else []) + (["candidate-rule coverage"]
                                                          if with_cover else [])
    fig = make_subplots(rows=1, cols=cols, shared_yaxes=True, column_widths=widths,
                        horizontal_spacing=0.015, subplot_titles=titles)
    # the first days' many new edges would wash out the later ones: the colour saturates
    # a little above a quiet day's allowance, every non-zero cell shows its number
    quiet = max((a.max_new_edges for a in apps), default=0)
    fig.add_trace(go.Heatmap(
        z=z, x=[d.isoformat() for d in days], y=names, colorscale="Blues", hoverongaps=False,
        zmin=0, zmax=max(4, 3 * (quiet + 1)),
        text=[["" if not v else str(v) for v in row] for row in z], texttemplate="%{text}",
        textfont={"size": 10},
        colorbar={"title": {"text": "new edges", "side": "top"}, "orientation": "h",
                  "x": 0.3, "xanchor": "center", "y": 0, "yref": "container",
                  "yanchor": "bottom", "len": 0.3, "thickness": 10},
        hovertemplate="%{y}<br>%{x}: %{z} new edge(s)<extra></extra>"), row=1, col=1)
    col = 2
    if with_ready:
        ready = [a for a in apps if a.ready is not None]
        fig.add_trace(go.Bar(
            x=[min(a.quiet_days, a.quiet_days_needed) for a in ready],
            y=[clean(a.key) for a in ready], orientation="h",
            marker_color=["#59a14f" if a.ready else "#e15759" for a in ready],
            text=[f"{a.quiet_days}/{a.quiet_days_needed}" for a in ready],
            textposition="auto", hovertext=[html.escape(a.status) for a in ready],
            hovertemplate="%{y}<br>%{hovertext}<extra></extra>", name="readiness",
            showlegend=False), row=1, col=col)
        fig.update_xaxes(range=[0, max(a.quiet_days_needed for a in ready) or 1], row=1,
                         col=col, title={"text": "green: ready to enforce"})
        col += 1
    if with_cover:
        covered = [a for a in apps if a.coverage is not None]
        fig.add_trace(go.Bar(
            x=[100 * (a.coverage or 0.0) for a in covered], y=[clean(a.key) for a in covered],
            orientation="h", marker_color="#4e79a7",
            text=[f"{100 * (a.coverage or 0.0):.0f}%" for a in covered], textposition="auto",
            customdata=[[a.allowed_edges, a.inbound_edges, a.inbound_flows] for a in covered],
            hovertemplate="%{y}: %{x:.1f}% of inbound flows allowed<br>%{customdata[0]} of "
                          "%{customdata[1]} edges, %{customdata[2]:,} flows<extra></extra>",
            name="coverage", showlegend=False), row=1, col=col)
        fig.update_xaxes(range=[0, 100], row=1, col=col,
                         title={"text": "% of inbound flows allowed"})
    fig.update_yaxes(categoryorder="array", categoryarray=names, autorange="reversed",
                     tickmode="array", tickvals=names, ticktext=names, tickfont={"size": 11})
    fig.update_layout(height=max(300, 20 * len(apps) + 150), bargap=0.25,
                      margin={"l": 10, "r": 10, "t": 40, "b": 110}, plot_bgcolor="white")
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
    ready = _try(store, "readiness", big, notes)
    audit = [] if ready else _try(store, "audit-progress", big, notes)
    coverage = _try(store, "rule-coverage", big, notes)
    progress = app_progress(ready, coverage, audit)
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
    if progress:
        charts["audit"] = _div(audit_figure(progress), "audit")
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
        latest=latest, incidents=incidents, members=members, progress=progress,
        blocked=blocked, inputs=inputs, notes=notes,
        map_limit=MAP_EDGES, plotly_js=get_plotlyjs(),
    )


def write_report(store: Any, out: Path, flt: QueryFilter | None = None,
                 inputs: InputCounts | None = None) -> Path:
    """Write the report atomically (temporary file renamed into place)."""
    page = build_report(store, flt or QueryFilter(), inputs=inputs)
    write_atomic(out, page.encode("utf-8"))
    return out


__all__ = ["AppProgress", "InputCounts", "app_map_figure", "app_progress", "audit_figure",
           "build_report", "clean", "inputs_from_summary", "write_report"]
