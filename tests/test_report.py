"""The HTML report: built from a real replay, opened in a real headless Chromium.

The browser checks are what an analyst on an air-gapped laptop depends on: the page loads
without console errors, requests nothing but itself, and every chart has drawn marks. A
screenshot lands in ``var/test-artifacts/`` for a human to look at.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from plotly.offline import get_plotlyjs

from pipeline.commands.report import (
    AppProgress,
    InputCounts,
    _layout,
    app_map_figure,
    app_progress,
    audit_figure,
    build_report,
    write_report,
)
from pipeline.storage import open_store
from pipeline.storage.queries import QueryFilter, run_view
from tests.conftest import replay_into_store

ARTIFACTS = Path(__file__).resolve().parents[1] / "var" / "test-artifacts"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sources"


@pytest.fixture(scope="module")
def stored(estate_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("report")
    summary, url = replay_into_store(estate_dir, out)
    sim = subprocess.run([sys.executable, "-m", "pipeline.commands.cli", "simulate", "--store",
                          url, "--rules", "proposed"], capture_output=True, text=True, timeout=300)
    assert sim.returncode == 0, sim.stderr
    return summary, url, out


@pytest.fixture(scope="module")
def report(stored) -> Path:
    summary, url, out = stored
    inputs = InputCounts(records=summary.records, accepted=summary.flows,
                         dead_lettered=dict(summary.reject_reasons))
    with open_store(url) as store:
        return write_report(store, out / "report.html", inputs=inputs)


def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture(scope="module")
def browser():
    paths = _browser_paths()
    if paths is None:
        if os.environ.get("SEGFLOW_REQUIRE_BROWSER"):
            pytest.fail("chromium/chromedriver missing: run scripts/install-test-tools")
        pytest.skip("chromium/chromedriver not installed (scripts/install-test-tools)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(paths[1]), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_report_is_self_contained(report: Path):
    page = report.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert '<script src="http' not in page and '<link rel="stylesheet" href="http' not in page
    for section in ('id="map"', 'id="violations"', 'id="audit"', 'id="readiness-table"',
                    'id="input"', 'id="would-block"', 'id="incidents"', 'id="latest-incidents"'):
        assert section in page


def test_report_escapes_hostile_names(stored, tmp_path: Path):
    _, url, _ = stored
    inputs = InputCounts(records=1, accepted=0,
                         dead_lettered={"<script>alert(1)</script>\x1b[2J": 1})
    with open_store(url) as store:
        page = build_report(store, QueryFilter(), inputs=inputs)
    assert "<script>alert(1)</script>" not in page and "\x1b" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[2J" in page


def test_report_renders_in_chromium(report: Path, browser, stored) -> None:
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    marks = {
        "map nodes": "#chart-map .scatterlayer .trace .points path",
        "violation bars by type": "#chart-by-type .barlayer .point path",
        "violation bars by severity": "#chart-by-severity .barlayer .point path",
        "incident bars by severity": "#chart-incidents .barlayer .point path",
        "audit heatmap": "#chart-audit .heatmaplayer image",
    }
    _open_with_marks(browser, report, marks)
    _check_audit_progress(browser, stored)
    rows = browser.find_elements(By.CSS_SELECTOR, "#latest-violations tr")
    assert len(rows) > 1
    # the latest incidents, each with its member violations (as stored)
    summary = stored[0]
    incidents = browser.find_elements(By.CSS_SELECTOR, "#latest-incidents tr.incident")
    assert len(incidents) == len(summary.incidents) > 0
    members = browser.find_elements(By.CSS_SELECTOR, "#latest-incidents ul.members li")
    assert len(members) == sum(i["violations"] for i in summary.incidents.values())
    text = browser.find_element(By.ID, "latest-incidents").text
    assert all(i["source"] in text for i in summary.incidents.values())
    blocked = browser.find_elements(By.CSS_SELECTOR, "#would-block tr")
    assert len(blocked) > 1  # the attacks' new edges, blocked by the proposed rules

    # hovering an edge marker shows its evidence
    from selenium.webdriver.common.action_chains import ActionChains

    diamond = browser.find_elements(By.CSS_SELECTOR, "#chart-map .scatterlayer .trace .points path")
    ActionChains(browser).move_to_element(diamond[0]).perform()
    WebDriverWait(browser, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-map .hoverlayer .hovertext"))

    shot = _full_page_screenshot(browser, "report.png", max_height=8000)
    print(f"screenshot: {shot}")

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    requested = []
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            requested.append(msg["params"]["request"]["url"])
    assert requested and all(u.startswith(("file:", "data:", "blob:")) for u in requested), \
        [u for u in requested if not u.startswith(("file:", "data:", "blob:"))]


def _open_with_marks(browser: Any, page: Path, marks: dict[str, str]) -> None:
    """Open ``page``, wait for its Plotly charts, and assert every CSS selector in ``marks``
    found at least one drawn mark."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page.as_uri())
    WebDriverWait(browser, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg")) >= 6)
    drawn = {name: len(browser.find_elements(By.CSS_SELECTOR, css)) for name, css in marks.items()}
    assert all(n > 0 for n in drawn.values()), drawn


def _full_page_screenshot(browser: Any, name: str, max_height: int) -> Path:
    """Save the whole page (up to ``max_height`` px) as a test artifact; assert it is not blank."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, min(int(height), max_height))
    shot = ARTIFACTS / name
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
    return shot


def _check_audit_progress(browser: Any, stored: Any) -> None:
    """The audit-progress section against the replay's own readiness and the store's
    coverage: one labelled row per app, a readiness bar per app (green = ready), a coverage bar
    per app with inbound flows, and the table's verdicts and reasons."""
    from selenium.webdriver.common.by import By

    summary, url, _ = stored
    with open_store(url) as store:
        coverage = run_view(store, "rule-coverage", QueryFilter(limit=1_000_000)).to_pylist()
    ready = {r.key: r for r in summary.readiness}
    covered = {f"{r['namespace']}/{r['app']}" if r["namespace"] else r["app"] for r in coverage}
    apps = set(ready) | covered
    assert any(r.ready for r in ready.values()) and not all(r.ready for r in ready.values())
    ticks = [t.text for t in browser.find_elements(
        By.CSS_SELECTOR, "#chart-audit .yaxislayer-above .ytick text")]
    assert set(ticks) == apps and len(ticks) == len(apps)  # every app's row is labelled
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart-audit .barlayer .trace")
    assert len(bars) == 2
    readiness_bars = bars[0].find_elements(By.CSS_SELECTOR, ".point path")
    assert len(readiness_bars) == len(ready)
    green = [b for b in readiness_bars if "89, 161, 79" in b.get_attribute("style")]
    assert len(green) == sum(r.ready for r in ready.values())
    assert len(bars[1].find_elements(By.CSS_SELECTOR, ".point path")) == len(covered)
    rows = browser.find_elements(By.CSS_SELECTOR, "#readiness-table tbody tr")
    assert len(rows) == len(apps)
    seen = set()
    for row in rows:
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        key = cells[0]
        seen.add(key)
        if key not in ready:
            assert cells[1] == "—"
            continue
        r = ready[key]
        assert cells[1] == ("yes" if r.ready else "no"), key
        assert cells[4].split() == [str(n) for n in r.new_edges_per_day], key
        if r.ready:
            since = datetime.fromtimestamp(r.ready_since or 0, UTC).date().isoformat()
            assert cells[2].startswith(f"ready since {since}"), cells
        else:
            assert cells[2].startswith("not ready") and re.search(
                rf"\b{r.quiet_days} of \d+ quiet days needed", cells[2]), cells
        assert ("no inbound flows" in cells[5]) == (key not in covered), cells
    assert seen == apps
    # not-ready apps first: what to look at before enforcing
    verdicts = [row.find_elements(By.TAG_NAME, "td")[1].text for row in rows]
    assert verdicts == sorted(verdicts, key=["no", "yes", "—"].index)


def test_audit_progress_stays_legible_at_60_apps(browser: Any, tmp_path: Path) -> None:
    """60 apps over a 30-day audit: every app keeps its own labelled row, labels do not
    overlap, every bar is drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    start = date(2026, 1, 5)
    apps = [AppProgress(f"ns{i % 7}", f"service-with-a-long-name-{i}", first_day=start
                        + timedelta(days=i % 5), new_edges=[(i * j) % 4 for j in range(30 - i % 5)],
                        edges=10, ready=i % 3 > 0, quiet_days=i % 9, quiet_days_needed=7,
                        max_new_edges=1, coverage=(i % 10) / 10 if i % 4 else None)
            for i in range(60)]
    page = tmp_path / "sixty.html"
    page.write_text(f"<html><head><script>{get_plotlyjs()}</script></head><body>"
                    f"{audit_figure(apps).to_html(full_html=False, include_plotlyjs=False)}"
                    "</body></html>", encoding="utf-8")
    browser.set_window_size(1400, 1000)
    browser.get(page.as_uri())
    WebDriverWait(browser, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".heatmaplayer image"))
    ticks = browser.find_elements(By.CSS_SELECTOR, ".yaxislayer-above .ytick text")
    assert sorted(t.text for t in ticks) == sorted(a.key for a in apps)
    boxes = sorted((t.rect["y"], t.rect["y"] + t.rect["height"]) for t in ticks)
    assert all(b[0] >= a[1] - 0.5 for a, b in pairwise(boxes)), boxes
    traces = browser.find_elements(By.CSS_SELECTOR, ".barlayer .trace")
    assert [len(t.find_elements(By.CSS_SELECTOR, ".point path")) for t in traces] == [
        60, sum(a.coverage is not None for a in apps)]


def _map_rows(apps: int, namespaces: int) -> list[dict[str, Any]]:
    """app-map rows: ``apps`` apps spread over ``namespaces``, each calling three others."""
    rng = random.Random(apps * 100 + namespaces)
    names = [(f"team-{i % namespaces}", f"service-{i}-{'api' if i % 3 else 'db'}")
             for i in range(apps)]
    rows = []
    for src in names:
        for dst in rng.sample([n for n in names if n != src], 3):
            rows.append({"src_namespace": src[0], "src_app": src[1], "src_kind": "pod",
                         "dst_namespace": dst[0], "dst_app": dst[1], "dst_kind": "pod",
                         "ports": ["tcp/443"], "flows": rng.randrange(1, 10_000),
                         "bytes": 1_000, "rejected_flows": 0, "violating_flows": 0,
                         "learned": True})
    return rows


@pytest.mark.parametrize(("apps", "namespaces"), [(55, 2), (60, 3), (70, 5), (60, 8),
                                                   (120, 12)])
def test_map_keeps_each_namespace_apart_at_50_plus_apps(apps: int, namespaces: int) -> None:
    """Every app sits nearer its own namespace's centre than any other's, at least a node
    spacing away from other namespaces' apps (big namespaces used to reach over the
    ring's centre into the others)."""
    nodes = {f"team-{i % namespaces}/svc-{i}": f"team-{i % namespaces}" for i in range(apps)}
    pos = _layout(nodes)
    members: dict[str, list[tuple[float, float]]] = {}
    for key, ns in nodes.items():
        members.setdefault(ns, []).append(pos[key])
    centre = {ns: (sum(x for x, _ in p) / len(p), sum(y for _, y in p) / len(p))
              for ns, p in members.items()}
    for key, ns in nodes.items():
        own = math.dist(pos[key], centre[ns])
        assert all(own < math.dist(pos[key], c) for o, c in centre.items() if o != ns), key
    apart = min(math.dist(pos[a], pos[b]) for a in nodes for b in nodes if nodes[a] != nodes[b])
    assert apart >= 1.0, apart


@pytest.mark.parametrize("namespaces", [1, 8])
def test_map_stays_legible_at_60_apps(browser: Any, tmp_path: Path, namespaces: int) -> None:
    """60 apps (one namespace, or eight): every app is drawn with its name, and few names
    touch another (one in ten at most; a single 60-app namespace put neighbours' names
    side by side before it alternated two rings)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = tmp_path / "map.html"
    figure = app_map_figure(_map_rows(60, namespaces))
    page.write_text(f"<html><head><script>{get_plotlyjs()}</script></head><body>"
                    f"{figure.to_html(full_html=False, include_plotlyjs=False)}"
                    "</body></html>", encoding="utf-8")
    browser.set_window_size(1400, 1000)
    browser.get(page.as_uri())
    WebDriverWait(browser, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace text"))
    labels = [t for t in browser.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace text")
              if t.text]
    assert len(labels) == 60
    boxes = [(t.rect["x"], t.rect["y"], t.rect["x"] + t.rect["width"],
              t.rect["y"] + t.rect["height"]) for t in labels]
    touching = sum(1 for i, a in enumerate(boxes) for b in boxes[i + 1:]
                   if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
    assert touching <= len(labels) // 10, touching


def test_app_progress_without_readiness_uses_audit_rows() -> None:
    """An older store (no app_readiness): new edges per day from the audit-progress view,
    days without new edges filled with 0; no readiness verdict."""
    audit = [{"namespace": "shop", "app": "web", "day": date(2026, 1, 5), "new_edges": 4},
             {"namespace": "shop", "app": "web", "day": date(2026, 1, 8), "new_edges": 1}]
    cover = [{"namespace": "shop", "app": "db", "coverage": 0.5, "allowed_edges": 1,
              "edges": 2, "flows": 10}]
    got = {a.key: a for a in app_progress([], cover, audit)}
    assert got["shop/web"].new_edges == [4, 0, 0, 1] and got["shop/web"].ready is None
    assert got["shop/db"].coverage == 0.5 and got["shop/db"].status == "no audit traffic"
    assert list(got) == ["shop/db", "shop/web"]


def test_report_counts_dead_letters_and_skips_by_reason(tmp_path: Path) -> None:
    """``replay --report`` on input with rejected and skipped lines: the input section lists
    the accepted flows and each dead-letter and skip reason with its count."""
    lines = (FIXTURES / "aws/v5-header.log").read_bytes().splitlines()
    lines[2] = lines[2].replace(b" 6 ", b" 6\r ", 1)
    flows = tmp_path / "flows.log"
    flows.write_bytes(b"\n".join([*lines, b"junk"]) + b"\n")
    inv = tmp_path / "inv.jsonl"
    inv.write_text('{"cidr": "10.0.0.0/8", "app": "a", "namespace": "n"}\n')
    out = tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-m", "pipeline.commands.cli", "replay", str(flows),
                        "--inventory", str(inv), "--audit-days", "1", "--report", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    page = out.read_text(encoding="utf-8")
    table = page[page.index('<table id="input-counts">'):]
    table = table[:table.index("</table>")]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", table)
    assert rows == [("accepted", "", "3"), ("dead-lettered", "bad_line", "1"),
                    ("dead-lettered", "not_aws_vpc", "1"), ("skipped", "header", "1"),
                    ("skipped", "nodata", "1")]


def test_report_command_keeps_to_the_time_range(stored, tmp_path: Path) -> None:
    """``segflow report --from``: every listed violation and incident is in the range, and
    the page counts fewer violations than the whole store."""
    summary, url, _ = stored
    stamps = sorted(datetime.fromisoformat(v["ts"].replace("Z", "+00:00")).timestamp()
                    for v in summary.violations)
    cut = stamps[len(stamps) // 2]
    pages = {}
    for name, extra in (("all", []), ("late", ["--from", str(cut)])):
        out = tmp_path / f"{name}.html"
        r = subprocess.run([sys.executable, "-m", "pipeline.commands.cli", "report", "--store",
                            url, "--out", str(out), *extra],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        pages[name] = out.read_text(encoding="utf-8")

    def listed(page: str, table: str) -> list[float]:
        body = page[page.index(f'<table id="{table}">'):]
        body = body[:body.index("</table>")]
        return [datetime.strptime(t, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
                for t in re.findall(r"<tr[^>]*><td>(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)",
                                    body)]

    late = listed(pages["late"], "latest-violations")
    assert late and min(late) >= cut - 1  # shown to the second
    assert min(listed(pages["all"], "latest-violations")) < cut

    def violations(page: str) -> int:
        return int(re.search(r"<b>([\d,]+)</b>violations", page).group(1).replace(",", ""))

    assert 0 < violations(pages["late"]) < violations(pages["all"])


@pytest.mark.slow
def test_demo_report_renders_in_chromium(browser: Any, tmp_path: Path) -> None:
    """``segflow demo`` writes the report of its estate; in Chromium every chart has marks,
    the audit-progress table has a row per app and nothing errs. Its screenshot is the demo
    picture (``var/test-artifacts/demo-report.png``)."""
    from selenium.webdriver.common.by import By

    r = subprocess.run([sys.executable, "-m", "pipeline.commands.cli", "demo", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    page = tmp_path / "out" / "report.html"
    assert str(page) in r.stdout
    browser.set_window_size(1400, 1000)
    browser.get_log("browser")  # only this page's messages below
    marks = {
        "map nodes": "#chart-map .scatterlayer .trace .points path",
        "violation bars": "#chart-by-type .barlayer .point path",
        "incident bars": "#chart-incidents .barlayer .point path",
        "audit heatmap": "#chart-audit .heatmaplayer image",
        "readiness and coverage bars": "#chart-audit .barlayer .point path",
    }
    _open_with_marks(browser, page, marks)
    apps = browser.find_elements(By.CSS_SELECTOR, "#readiness-table tbody tr")
    ticks = browser.find_elements(By.CSS_SELECTOR, "#chart-audit .yaxislayer-above .ytick text")
    assert len(apps) == len(ticks) > 0
    _full_page_screenshot(browser, "demo-report.png", max_height=12000)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_report_command_writes_the_file(stored, tmp_path: Path):
    _, url, _ = stored
    out = tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-m", "pipeline.commands.cli", "report", "--store", url,
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 1_000_000 and str(out) in r.stdout
