"""The figures page in a real browser: headless Chromium loads it, the charts are drawn, nothing errs.

Three pages: ``replay``'s ``report.html`` from ``file://``; the demo's live page
(:class:`streams.live_page.LivePage`) over ``http://`` while its line-protocol
file grows and alerts arrive on a real broker's topic; and ``driftwarden demo``
itself, whose worker subprocess writes the file the page draws. Every test
checks the console, uncaught exceptions and the browser's error log (failed
loads) over the DevTools protocol, and that nothing was requested from outside
the machine: plotly's JavaScript travels with the page.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from streams.live_page import LivePage
from tests.browser.cdp import Browser, png_size
from tests.streams.test_replay import replay, workspace, write_inputs

REPO = Path(__file__).resolve().parents[2]
CHARTS_PER_MODEL = 6

CHART_STATE = """(() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => ({
  chart: d.getAttribute('data-chart'),
  traces: d.data.map(t => ({name: t.name, points: (t.x || []).length})),
  drawn: d.querySelectorAll('.scatterlayer .trace').length,
  annotations: (d.layout.annotations || []).map(a => a.text),
  shapes: (d.layout.shapes || []).length,
})))()"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser(width=1400, height=2000) as running:
        yield running


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A replay with drift, then a label shift, then a fairness regression: alerts and a job to mark."""
    root = tmp_path_factory.mktemp("page-replay")
    cfg = workspace(root / "ws")
    inputs = write_inputs(root / "in", 9000, seed=11, change_after=3000, stagger=2000,
                          changes=("drift", "label-shift", "fairness"))
    assert replay(cfg, inputs, root / "out") == 0
    return root / "out"


def local_only(requests: list[str], *allowed: str) -> list[str]:
    """Requests that left the page's own origin (file:, data:, blob: and the given prefixes are local)."""
    return [u for u in requests if not u.startswith(("file:", "data:", "blob:", "about:", *allowed))]


def charts(browser: Browser, models: int = 1) -> list[dict[str, Any]]:
    browser.wait_for(f"document.querySelectorAll('.js-plotly-plot').length >= {models * CHARTS_PER_MODEL}")
    return browser.evaluate(CHART_STATE)


def test_replay_report_draws_every_chart_offline(browser: Browser, replayed: Path, tmp_path: Path) -> None:
    browser.open((replayed / "report.html").as_uri())
    state = {c["chart"]: c for c in charts(browser)}
    browser.settle(1.0)  # late console messages, if any
    assert browser.log.errors() == []
    assert local_only(browser.log.requests) == []
    assert list(state) == ["feature_drift", "prediction", "performance", "fairness_groups", "fairness_disparity",
                           "data_quality"]
    windows = 9000 // 500
    for name in ("feature_drift", "prediction", "performance", "fairness_groups", "fairness_disparity"):
        lines = [t for t in state[name]["traces"] if t["name"] not in ("alerts (firing)", "retrain jobs")]
        assert lines and all(t["points"] >= windows - 1 for t in lines), (name, lines)
        assert state[name]["drawn"] == len(state[name]["traces"]), name  # plotly drew every trace
        names = {t["name"] for t in state[name]["traces"]}
        assert {"alerts (firing)", "retrain jobs"} <= names, name
    alerts = [a for a in map(orjson.loads, (replayed / "alerts.jsonl").read_bytes().splitlines())
              if a["state"] == "firing"]
    marker = [t for t in state["feature_drift"]["traces"] if t["name"] == "alerts (firing)"][0]
    assert marker["points"] == len(alerts)
    rows = browser.evaluate("document.querySelectorAll('table.events tr').length")
    jobs = len((replayed / "retrain_jobs.jsonl").read_bytes().splitlines())
    assert rows == 1 + len(alerts) + jobs


def test_screenshot_of_the_report_is_not_blank(browser: Browser, replayed: Path, tmp_path: Path) -> None:
    browser.open("about:blank")
    browser.wait_for("document.readyState === 'complete'")
    blank = browser.screenshot(tmp_path / "blank.png").read_bytes()
    browser.open((replayed / "report.html").as_uri())
    charts(browser)
    browser.wait_for("document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length > 30")
    shot = browser.screenshot(tmp_path / "report.png").read_bytes()
    assert png_size(shot) == png_size(blank) == (1400, 2000)
    # a white page compresses to a few kB; six charts of lines, legends and a table do not
    assert len(shot) > 100_000 and len(shot) > 10 * len(blank), (len(shot), len(blank))
    keep = os.environ.get("DRIFTWARDEN_SCREENSHOT_DIR")
    if keep:
        (Path(keep) / "report.png").write_bytes(shot)


def _lines(out: Path) -> list[str]:
    return (out / "metrics.lp").read_text(encoding="utf-8").splitlines()


def test_live_page_redraws_as_the_file_grows_and_alerts_arrive(browser: Browser, replayed: Path, tmp_path: Path,
                                                               broker: Any) -> None:
    lines = [ln for ln in _lines(replayed) if not ln.endswith(" 0")]
    half = len(lines) // 2
    metrics = tmp_path / "metrics.lp"
    metrics.write_text("\n".join(lines[:half]) + "\n", encoding="utf-8")
    page = LivePage(metrics_file=metrics, port=0, poll_seconds=0.2, refresh_ms=500)
    try:
        from kafka import KafkaProducer

        alerts_topic, jobs_topic = f"page-alerts-{os.getpid()}", f"page-jobs-{os.getpid()}"
        page.follow_topics(bootstrap=broker.bootstrap, alerts_topic=alerts_topic, jobs_topic=jobs_topic)
        browser.open(page.url)
        first = {c["chart"]: c for c in charts(browser)}
        before = max(t["points"] for t in first["feature_drift"]["traces"])
        # the worker goes on: the rest of the run, then a new version's windows
        later = lines[half:]
        last = max(int(ln.rsplit(" ", 1)[1]) for ln in lines)
        v2 = [ln.replace("model_version=1", "model_version=2").rsplit(" ", 1)[0] + f" {last + 5_000_000_000}"
              for ln in lines[:200]]
        with metrics.open("a", encoding="utf-8") as handle:
            handle.write("\n".join(later + v2) + "\n")
        alert = {"alert_id": "live-1", "model_id": "credit-risk", "model_version": "2", "rule": "live-check",
                 "state": "firing", "severity": "critical", "metric": "feature_drift", "value": 0.5,
                 "threshold": 0.1, "window_end": _rfc3339(last + 5_000_000_000)}
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        producer.send(alerts_topic, key=b"credit-risk", value=orjson.dumps(alert))
        producer.flush()
        producer.close()
        browser.wait_for("""(() => { const d = document.querySelector('[data-chart=feature_drift]');
            return d && (d.layout.annotations || []).some(a => a.text === 'v2'); })()""", timeout=60)
        browser.wait_for("Array.from(document.querySelectorAll('table.events td')).some(td => "
                         "td.textContent.includes('live-check'))", timeout=60)
        after = {c["chart"]: c for c in browser.evaluate(CHART_STATE)}
        assert max(t["points"] for t in after["feature_drift"]["traces"]) > before
        assert browser.log.errors() == []
        assert local_only(browser.log.requests, page.url) == []
        assert any(u.startswith(page.url + "figures.json") for u in browser.log.requests)
    finally:
        page.close()


def _rfc3339(ns: int) -> str:
    from retrain.events import format_time

    return format_time(ns)


@pytest.mark.integration
def test_demo_serves_the_page_while_it_runs(browser: Browser, tmp_path: Path) -> None:
    """``driftwarden demo``: its worker subprocess writes the points the page draws; Ctrl-C stops it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "demo", "--page-port", "0", "--workdir", str(tmp_path / "demo"),
         "--rate", "1000", "--change-after", "8000"],
        cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True)
    output: list[str] = []
    try:
        url = _wait_for_url(demo, output, timeout=120)
        threading.Thread(target=lambda: output.extend(line.rstrip() for line in demo.stdout), daemon=True).start()
        browser.open(url)
        browser.wait_for("""(() => { const d = document.querySelector('[data-chart=feature_drift]');
            return d && d.data.some(t => t.name.endsWith('(psi)') && t.x.length >= 10); })()""", timeout=180)
        # the drift injected after 8,000 predictions raises an alert, which the page marks
        browser.wait_for("""(() => { const d = document.querySelector('[data-chart=feature_drift]');
            return d.data.some(t => t.name === 'alerts (firing)'); })()""", timeout=180)
        state = {c["chart"]: c for c in browser.evaluate(CHART_STATE)}
        assert len(state) == CHARTS_PER_MODEL
        assert browser.log.errors() == []
        assert local_only(browser.log.requests, url) == []
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(timeout=90)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
    assert (tmp_path / "demo" / "metrics.lp").stat().st_size > 0, "\n".join(output[-30:])


def _wait_for_url(process: subprocess.Popen[str], output: list[str], timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line.rstrip())
        if line.startswith("figures: http://"):
            return line.split()[1]
    raise AssertionError("the demo printed no page URL:\n" + "\n".join(output[-30:]))


def test_the_browser_log_catches_console_errors_exceptions_and_failed_loads(browser: Browser, tmp_path: Path) -> None:
    """The checks above can fail: a page that errs in each way is seen to."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><head><link rel='icon' href='data:,'></head><body>"
                    "<img src='missing.png'><script>console.error('drawn badly');"
                    "setTimeout(function () { throw new Error('late failure'); }, 0);</script></body></html>")
    browser.open(page.as_uri())
    browser.wait_for("document.readyState === 'complete'")
    browser.settle(1.0)
    errors = "\n".join(browser.log.errors())
    assert "console.error: drawn badly" in errors
    assert "late failure" in errors
    assert "missing.png" in errors
