"""The HTML report: built from a real replay, opened in a real headless Chromium.

The browser checks are what an analyst on an air-gapped laptop depends on: the page loads
without console errors, requests nothing but itself, and every chart has drawn marks. A
screenshot lands in ``var/test-artifacts/`` for a human to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.commands.report import InputCounts, build_report, write_report
from pipeline.storage import open_store
from pipeline.storage.queries import QueryFilter
from tests.conftest import replay_into_store

ARTIFACTS = Path(__file__).resolve().parents[1] / "var" / "test-artifacts"


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
    for section in ('id="map"', 'id="violations"', 'id="audit"', 'id="coverage"', 'id="input"',
                    'id="would-block"', 'id="incidents"', 'id="latest-incidents"'):
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

    browser.get(report.as_uri())
    WebDriverWait(browser, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg")) >= 6)
    marks = {
        "map nodes": "#chart-map .scatterlayer .trace .points path",
        "violation bars by type": "#chart-by-type .barlayer .point path",
        "violation bars by severity": "#chart-by-severity .barlayer .point path",
        "incident bars by severity": "#chart-incidents .barlayer .point path",
        "audit heatmap": "#chart-audit .heatmaplayer image",
        "coverage bars": "#chart-coverage .barlayer .point path",
    }
    drawn = {name: len(browser.find_elements(By.CSS_SELECTOR, css)) for name, css in marks.items()}
    assert all(n > 0 for n in drawn.values()), drawn
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

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, min(int(height), 8000))
    shot = ARTIFACTS / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
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


def test_report_command_writes_the_file(stored, tmp_path: Path):
    _, url, _ = stored
    out = tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-m", "pipeline.commands.cli", "report", "--store", url,
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 1_000_000 and str(out) in r.stdout
