"""The figures page's data: what each chart draws, from points, alerts and jobs; the line-protocol reader.

Oracles: :meth:`Point.to_line_protocol` (the writer) for the reader; the replay's
own ``metrics.lp`` read by ``test_replay``'s independent parser for the drawn
series; ``alerts.jsonl``/``retrain_jobs.jsonl`` for the marks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.points import Point
from retrain.events import format_time
from streams.report_page import CHARTS, LineFollower, ReportData, _x, page_html, parse_line
from tests.streams.test_replay import read_jsonl, read_metrics, replay, workspace, write_inputs

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000


def point(measurement: str, version: str, t: int, fields: dict[str, Any], **tags: str) -> Point:
    return Point(measurement, {"model_id": "m", "model_version": version, **tags}, fields, t)


def charts_of(doc: dict[str, Any], model: int = 0) -> dict[str, dict[str, Any]]:
    return {c["id"]: c["figure"] for c in doc["models"][model]["charts"]}


def traces(figure: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in figure["data"]}


# -- the line-protocol reader ----------------------------------------------------------------------


@pytest.mark.parametrize("p", [
    point("feature_drift", "1", T0, {"value": 0.25, "drift": True, "threshold": 0.1, "n": 500},
          feature="age", method="psi"),
    point("fairness", "12", T0 + 1, {"value": 0.5, "n": 31}, attribute="sex*race", group="F|Black",
          metric="selection_rate"),
    point("data_quality", "1", T0, {"rate": 0.0, "count": 0}, feature="a b,c=d\\e", check="missing"),
    point("monitor", "1", T0, {"value": -3.5e-7, "note": 'x"y\\z'}, stat="lag"),
])
def test_parse_line_reads_what_the_writer_writes(p: Point) -> None:
    back = parse_line(p.to_line_protocol())
    assert (back.measurement, dict(back.tags), dict(back.fields), back.time_ns) == \
        (p.measurement, dict(p.tags), dict(p.fields), p.time_ns)
    assert {k: type(v) for k, v in back.fields.items()} == {k: type(v) for k, v in p.fields.items()}


def test_line_follower_returns_only_completed_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.lp"
    follower = LineFollower(path)
    assert follower.read() == []  # no file yet
    a = point("monitor", "1", T0, {"value": 1.0}, stat="events").to_line_protocol()
    b = point("monitor", "1", T0 + S, {"value": 2.0}, stat="events").to_line_protocol()
    with path.open("w") as handle:
        handle.write(a + "\n" + b[:20])
    assert [p.fields["value"] for p in follower.read()] == [1.0]
    with path.open("a") as handle:
        handle.write(b[20:] + "\nnot line protocol\n")
    assert [p.fields["value"] for p in follower.read()] == [2.0]
    assert follower.malformed == 1 and follower.read() == []


# -- what the charts draw --------------------------------------------------------------------------


def two_versions() -> ReportData:
    data = ReportData()
    for k in range(6):
        version = "1" if k < 3 else "2"
        t = T0 + k * 10 * S
        data.add_points([
            point("feature_drift", version, t, {"value": 0.01 * k, "drift": False, "threshold": 0.1, "n": 500},
                  feature="age", method="psi"),
            point("feature_drift", version, t, {"value": 0.5, "drift": False, "threshold": 1.0, "n": 500},
                  feature="age", method="cusum"),
            point("performance", version, t, {"value": 0.7, "n": 40, "cumulative_value": 0.7, "cumulative_n": 40},
                  metric="accuracy"),
            point("performance_estimate", version, t, {"value": 0.72, "n": 500}, metric="accuracy"),
            point("label_shift", version, t, {"value": 0.05, "drift": False, "threshold": 0.1, "n": 500},
                  source="prediction", **{"class": "all"}),
            point("label_shift", version, t, {"reference_share": 0.4, "current_share": 0.5},
                  source="prediction", **{"class": "1"}),
            point("fairness", version, t, {"value": 0.6, "n": 300}, attribute="sex", group="F",
                  metric="selection_rate"),
            point("fairness", version, t, {"value": 0.9, "n": 500}, attribute="sex", group="all",
                  metric="demographic_parity_ratio"),
            point("data_quality", version, t, {"rate": 0.0, "count": 0}, feature="age", check="missing"),
            point("data_quality", version, t, {"rate": 0.01 if k == 4 else 0.0, "count": 5 if k == 4 else 0},
                  feature="income", check="out_of_range"),
        ])
    data.add_points([point("performance", "2", 0, {"value": 0.1, "n": 1}, metric="accuracy")])  # no event time
    data.add_alert({"alert_id": "a1", "model_id": "m", "model_version": "1", "rule": "feature-drift",
                    "state": "firing", "severity": "critical", "metric": "feature_drift", "value": 0.3,
                    "threshold": 0.1, "window_end": format_time(T0 + 20 * S)})
    data.add_alert({"alert_id": "a2", "model_id": "m", "model_version": "1", "rule": "feature-drift",
                    "state": "resolved", "severity": "critical", "window_end": format_time(T0 + 40 * S)})
    data.add_job({"job_id": "j1", "model_id": "m", "model_version": "1", "reason": "drift",
                  "window_end": format_time(T0 + 20 * S)})
    return data


def test_each_chart_draws_its_series_and_only_those() -> None:
    data = two_versions()
    doc = data.document(title="t")
    charts = charts_of(doc)
    assert list(charts) == [c for c, _ in CHARTS]
    drift = traces(charts["feature_drift"])
    assert set(drift) == {"age (psi)", "alerts (firing)", "retrain jobs"}  # the CUSUM statistic is not a drift value
    assert drift["age (psi)"]["y"] == [0.01 * k for k in range(6)]
    assert drift["age (psi)"]["x"] == [_x(T0 + k * 10 * S) for k in range(6)]  # one line across versions
    perf = traces(charts["performance"])
    assert perf["accuracy"]["y"] == [0.7] * 6 and perf["accuracy (estimated)"]["y"] == [0.72] * 6
    assert perf["accuracy (estimated)"]["line"]["dash"] == "dot"
    assert perf["accuracy (estimated)"]["line"]["color"] == perf["accuracy"]["line"]["color"]
    assert set(traces(charts["prediction"])) >= {"label shift, predicted classes"}
    assert traces(charts["fairness_groups"])["sex=F"]["y"] == [0.6] * 6
    assert traces(charts["fairness_disparity"])["demographic_parity_ratio (sex)"]["y"] == [0.9] * 6
    quality = traces(charts["data_quality"])
    assert "income: out_of_range" in quality and "age: missing" not in quality  # all-zero series left out
    assert any("1 series at 0" in a["text"] for a in charts["data_quality"]["layout"]["annotations"])
    assert data.untimed == 1


def test_versions_alerts_and_jobs_are_marked_on_every_chart() -> None:
    doc = two_versions().document(title="t")
    model = doc["models"][0]
    assert model["versions"] == ["1", "2"]
    boundary, alert_time = _x(T0 + 30 * S), _x(T0 + 20 * S)
    for chart, figure in charts_of(doc).items():
        layout = figure["layout"]
        lines = {(s["x0"], s["line"]["color"]) for s in layout["shapes"] if s["xref"] == "x"}
        assert (boundary, "#222") in lines, chart
        assert (alert_time, "#d62728") in lines and (alert_time, "#9467bd") in lines, chart
        assert [a["text"] for a in layout["annotations"] if a.get("x") == boundary] == ["v2"], chart
        markers = traces(figure)["alerts (firing)"]
        assert markers["x"] == [alert_time], chart  # the resolved alert is not marked
    assert [e["kind"] for e in model["events"]] == ["alert", "retrain job"]


def test_page_embeds_the_document_and_plotly_and_escapes_script_ends() -> None:
    data = ReportData()
    data.add_points([point("performance", "1", T0, {"value": 0.5, "n": 3}, metric="accuracy")])
    data.add_alert({"alert_id": "x", "model_id": "m", "model_version": "1", "rule": "</script><b>", "state": "firing",
                    "severity": "warning", "window_end": format_time(T0)})
    html = page_html(data.document(title="t"))
    assert "<script src=" not in html and "plotly.js v" in html  # the library is inside the file
    embedded = re.search(r'<script id="document" type="application/json">(.*?)</script>', html, re.S)
    assert embedded is not None
    doc = json.loads(embedded.group(1))
    assert doc["models"][0]["events"][0]["what"].startswith("warning v1 </script><b>")
    served = page_html(data.document(title="t"), plotly_src="plotly.min.js", live_url="figures.json")
    assert '<script src="plotly.min.js">' in served and '"figures.json"' in served and "plotly.js v" not in served


# -- replay writes report.html ------------------------------------------------------------------------


def test_replay_writes_a_report_of_its_own_outputs(tmp_path: Path) -> None:
    cfg = workspace(tmp_path / "ws")
    inputs = write_inputs(tmp_path / "in", 4000, seed=3, change_after=2000, changes=("drift",))
    out = tmp_path / "out"
    assert replay(cfg, inputs, out) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    for name in ("metrics.lp", "alerts.jsonl", "retrain_jobs.jsonl"):
        assert (out / name).is_file()  # the existing outputs stay
    embedded = re.search(r'<script id="document" type="application/json">(.*?)</script>', html, re.S)
    assert embedded is not None
    (model,) = json.loads(embedded.group(1))["models"]
    charts = {c["id"]: c["figure"] for c in model["charts"]}
    lines = read_metrics(out)
    for feature in ("age", "income"):
        written = sorted((ln.time_ns, ln.fields["value"]) for ln in lines if ln.measurement == "feature_drift"
                         and ln.tags["feature"] == feature and ln.tags["method"] == "psi")
        drawn = traces(charts["feature_drift"])[f"{feature} (psi)"]
        assert drawn["x"] == [_x(t) for t, _ in written] and drawn["y"] == [v for _, v in written]
    alerts = [a for a in read_jsonl(out / "alerts.jsonl") if a["state"] == "firing"]
    jobs = read_jsonl(out / "retrain_jobs.jsonl")
    assert alerts and jobs, "the injected drift raises alerts and a job"
    assert sorted(traces(charts["feature_drift"])["alerts (firing)"]["x"]) == \
        sorted(_x(_ns(a["window_end"])) for a in alerts)
    assert [e["kind"] for e in model["events"]].count("retrain job") == len(jobs)


def _ns(text: str) -> int:
    from retrain.events import parse_time

    return parse_time(text)


def test_document_is_plain_json() -> None:
    doc = two_versions().document(title="t")
    assert orjson.loads(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))["title"] == "t"


def test_figures_are_valid_plotly() -> None:
    """The figures are plain dicts (fast to build); plotly's own validation accepts every property."""
    import plotly.graph_objects as go

    for chart, figure in charts_of(two_versions().document(title="t")).items():
        go.Figure(figure)  # raises ValueError on a property plotly does not have
    with pytest.raises(ValueError):
        go.Figure({"data": [{"type": "scatter", "colour": "red"}]})
