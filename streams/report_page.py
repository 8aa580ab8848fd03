"""The figures page: a model's windows drawn with plotly, for ``replay``'s ``report.html`` and the demo.

One renderer for both. :class:`ReportData` collects, per model, the series the
page draws from the worker's own :class:`~detectors.points.Point` s (the replay
hands them over in memory; the demo reads the worker's line-protocol file with
:func:`parse_line`), the alerts and the retrain jobs. :meth:`ReportData.document`
turns them into plotly figures (JSON); :func:`page_html` wraps a document in one
HTML page whose script draws it — with plotly's JavaScript inside the page for
a file, or from a URL the demo serves, polling the document again while the
demo runs. Nothing is fetched from the network at view time.

Per model, six charts share the time axis (event time, UTC): drift per feature
(the window test, e.g. PSI), prediction drift and label shift, realised
performance with the label-free estimate beside it (same colour, dotted),
selection rate per group, the disparity figures (``group=all``), and
data-quality rates (series that stayed at 0 are left out and counted). Every
chart marks firing alerts and retrain jobs at their window's end and draws a
boundary where a new model version's first point appears.

>>> data = ReportData()
>>> data.add_points([Point("feature_drift", {"model_id": "m", "model_version": "1", "feature": "age",
...     "method": "psi"}, {"value": 0.02, "drift": False, "threshold": 0.1, "n": 500}, 1_700_000_000_000_000_000)])
>>> doc = data.document(title="t")
>>> [c["id"] for c in doc["models"][0]["charts"]][:2], doc["models"][0]["charts"][0]["figure"]["data"][0]["name"]
(['feature_drift', 'prediction'], 'age (psi)')
"""

from __future__ import annotations

import functools
import hashlib
import html
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from detectors.points import FieldValue, Point
from retrain.events import parse_time
from retrain.metrics import FAIRNESS_DISPARITY_METRICS

CHARTS: tuple[tuple[str, str], ...] = (
    ("feature_drift", "Feature drift per feature (window test; dotted: threshold)"),
    ("prediction", "Prediction drift and label shift"),
    ("performance", "Performance on joined labels (solid) and the label-free estimate (dotted)"),
    ("fairness_groups", "Selection rate per group"),
    ("fairness_disparity", "Fairness disparity (group = all)"),
    ("data_quality", "Data quality: violation rate"),
)
"""chart id -> title, in page order."""

SEQUENTIAL_METHODS = frozenset({"cusum", "adwin"})
"""Methods whose points are sequential-detector statistics, not the window test: not drawn as drift."""
PERFORMANCE_SHOWN = ("accuracy", "f1", "roc_auc", "mae", "rmse")
"""Performance metrics drawn (those a model writes); an estimate is drawn for each that has one."""

ALERT_COLOURS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
JOB_COLOUR = "#9467bd"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


@dataclass
class _Series:
    x: list[int] = field(default_factory=list)  # ns
    y: list[float] = field(default_factory=list)


@dataclass
class _Model:
    series: dict[str, dict[str, _Series]] = field(default_factory=lambda: {chart: {} for chart, _ in CHARTS})
    thresholds: dict[str, set[float]] = field(default_factory=dict)
    first_seen: dict[str, int] = field(default_factory=dict)  # version -> first point's time (ns)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)


def classify(point: Point) -> tuple[str, str, str] | None:
    """(chart id, series name, field) under which ``point`` is drawn, or ``None`` when it is not drawn."""
    tags, m = point.tags, point.measurement
    if m == "feature_drift" and tags.get("method") not in SEQUENTIAL_METHODS:
        return "feature_drift", f"{tags.get('feature')} ({tags.get('method')})", "value"
    if m == "prediction_drift" and tags.get("method") not in SEQUENTIAL_METHODS:
        return "prediction", f"{tags.get('target', 'prediction')} drift ({tags.get('method')})", "value"
    if m == "label_shift" and tags.get("class") == "all":
        source = "predicted" if tags.get("source") == "prediction" else "observed"
        return "prediction", f"label shift, {source} classes", "value"
    if m == "performance" and tags.get("metric") in PERFORMANCE_SHOWN:
        return "performance", str(tags["metric"]), "value"
    if m == "performance_estimate" and tags.get("metric") in PERFORMANCE_SHOWN:
        return "performance", f"{tags['metric']} (estimated)", "value"
    if m == "fairness" and tags.get("metric") == "selection_rate" and tags.get("group") != "all":
        return "fairness_groups", f"{tags.get('attribute')}={tags.get('group')}", "value"
    if m == "fairness" and tags.get("group") == "all" and tags.get("metric") in FAIRNESS_DISPARITY_METRICS:
        return "fairness_disparity", f"{tags['metric']} ({tags.get('attribute')})", "value"
    if m == "data_quality":
        return "data_quality", f"{tags.get('feature')}: {tags.get('check')}", "rate"
    return None


class ReportData:
    """What the page draws, collected from points, alerts and jobs as they come; bounded by
    models × drawn series × windows (a few numbers per window), not by events."""

    def __init__(self) -> None:
        self._models: dict[str, _Model] = {}
        self.untimed = 0
        """Points left out because they carry no event time (stamped 0) or no model."""
        self.revision = 0
        """Incremented by every call that adds something: a server re-renders only when it moved."""

    def _model(self, model_id: str) -> _Model:
        return self._models.setdefault(model_id, _Model())

    def add_points(self, points: Iterable[Point]) -> None:
        for point in points:
            model_id = point.tags.get("model_id")
            if model_id is None or point.time_ns <= 0:  # no event time to draw it at
                self.untimed += 1
                continue
            model = self._model(model_id)
            version = point.tags.get("model_version", "")
            seen = model.first_seen.get(version)
            if seen is None or point.time_ns < seen:
                model.first_seen[version] = point.time_ns
            where = classify(point)
            if where is None:
                continue
            chart, name, field_name = where
            value = _number(point.fields.get(field_name))
            if value is None:
                continue
            series = model.series[chart].setdefault(name, _Series())
            series.x.append(point.time_ns)
            series.y.append(value)
            threshold = _number(point.fields.get("threshold"))
            if threshold is not None and chart == "feature_drift":
                model.thresholds.setdefault(chart, set()).add(threshold)
        self.revision += 1

    def add_alert(self, alert: Mapping[str, Any]) -> None:
        """An alert event (docs/design.md's shape); firing ones are marked at ``window_end``."""
        self._model(str(alert.get("model_id", ""))).alerts.append(dict(alert))
        self.revision += 1

    def add_job(self, job: Mapping[str, Any]) -> None:
        """A retrain job event; marked at ``window_end``."""
        self._model(str(job.get("model_id", ""))).jobs.append(dict(job))
        self.revision += 1

    def document(self, *, title: str, subtitle: str = "") -> dict[str, Any]:
        """Everything the page shows, as JSON-able data: per model its charts (plotly figures as
        dicts), versions, and the alerts and jobs listed under the charts."""
        models = []
        for model_id in sorted(self._models):
            models.append(_model_document(model_id, self._models[model_id]))
        return {"title": title, "subtitle": subtitle, "models": models}


# -- figures ---------------------------------------------------------------------------------------


def _model_document(model_id: str, model: _Model) -> dict[str, Any]:
    versions = sorted(model.first_seen, key=lambda v: model.first_seen[v])
    boundaries = [(v, model.first_seen[v]) for v in versions[1:]]
    alerts = sorted((a for a in model.alerts if a.get("state") == "firing"), key=lambda a: _event_ns(a) or 0)
    jobs = sorted(model.jobs, key=lambda j: _event_ns(j) or 0)
    times = [t for chart in model.series.values() for s in chart.values() for t in s.x]
    times += [t for e in alerts + jobs if (t := _event_ns(e)) is not None]
    span = (_x(min(times)), _x(max(times))) if times else None
    charts = []
    for chart, title in CHARTS:
        figure = _figure(chart, title, model, boundaries, alerts, jobs, span)
        charts.append({"id": chart, "div": f"{_key(model_id)}-{chart}", "title": title, "figure": figure})
    return {
        "model_id": model_id,
        "key": _key(model_id),
        "versions": versions,
        "charts": charts,
        "events": [_event_row("alert", a) for a in alerts] + [_event_row("retrain job", j) for j in jobs],
    }


def _figure(chart: str, title: str, model: _Model, boundaries: list[tuple[str, int]],
            alerts: list[dict[str, Any]], jobs: list[dict[str, Any]], span: tuple[str, str] | None) -> dict[str, Any]:
    traces: list[dict[str, Any]] = []
    series = model.series[chart]
    names = sorted(series)
    hidden = 0
    if chart == "data_quality":
        shown = [n for n in names if any(series[n].y)]
        hidden, names = len(names) - len(shown), shown
    colours = _colours(chart, names)
    for name in names:
        s = series[name]
        order = sorted(range(len(s.x)), key=s.x.__getitem__)
        traces.append({
            "type": "scatter", "x": [_x(s.x[i]) for i in order], "y": [s.y[i] for i in order], "name": name,
            "mode": "lines",
            "line": {"color": colours[name], "dash": "dot" if name.endswith("(estimated)") else "solid", "width": 1.5},
            "hovertemplate": "%{y:.4g}<extra>" + html.escape(name) + "</extra>"})
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for threshold in sorted(model.thresholds.get(chart, ())):
        shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": threshold,
                       "y1": threshold, "line": {"color": "#555", "width": 1, "dash": "dot"}})
    for version, t in boundaries:
        shapes.append(_vline(t, "#222", "solid", 2))
        annotations.append({"x": _x(t), "xref": "x", "y": 1.0, "yref": "paper", "yanchor": "bottom",
                            "text": f"v{version}", "showarrow": False, "font": {"size": 11}})
    for alert in alerts:
        t = _event_ns(alert)
        if t is not None:
            shapes.append(_vline(t, ALERT_COLOURS.get(str(alert.get("severity")), "#d62728"), "dot", 1))
    for job in jobs:
        t = _event_ns(job)
        if t is not None:
            shapes.append(_vline(t, JOB_COLOUR, "dash", 1.5))
    traces += _marker_traces("alerts (firing)", alerts, 0.97, "triangle-down", ALERT_COLOURS["critical"])
    traces += _marker_traces("retrain jobs", jobs, 0.90, "star", JOB_COLOUR)
    if hidden:
        annotations.append({"xref": "paper", "yref": "paper", "x": 1.0, "y": 1.0, "xanchor": "right",
                            "yanchor": "bottom", "showarrow": False, "font": {"size": 10, "color": "#555"},
                            "text": f"{hidden} series at 0 throughout not drawn"})
    if not names:
        annotations.append({"xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "showarrow": False,
                            "text": "no violations" if chart == "data_quality" and hidden else "no points yet"})
    layout = {
        "title": {"text": title, "font": {"size": 14}}, "height": 320,
        "margin": {"l": 50, "r": 10, "t": 50, "b": 40}, "shapes": shapes, "annotations": annotations,
        "uirevision": chart, "hovermode": "x unified", "template": _template(), "legend": {"font": {"size": 10}},
        "xaxis": {"type": "date", "title": {"text": "event time (UTC)"}, **({"range": list(span)} if span else {})},
        "yaxis2": {"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True},
    }
    return {"data": traces, "layout": layout}


@functools.cache
def _template() -> dict[str, Any]:
    """plotly's ``plotly_white`` template, as plotly.js takes it (figures are plain dicts: building
    ``go.Figure`` objects, which validate every value, costs ~1 s per page after a few hundred windows)."""
    import plotly.io as pio

    return pio.templates["plotly_white"].to_plotly_json()


def _marker_traces(name: str, events: list[dict[str, Any]], y: float, symbol: str, colour: str) -> list[dict[str, Any]]:
    """Hoverable markers at the top of a chart for events (the shapes beneath cannot be hovered)."""
    timed = [(t, e) for e in events if (t := _event_ns(e)) is not None]
    if not timed:
        return []
    return [{"type": "scatter", "x": [_x(t) for t, _ in timed], "y": [y] * len(timed), "yaxis": "y2", "name": name,
             "mode": "markers",
             "marker": {"symbol": symbol, "size": 10, "color": [_event_colour(e, colour) for _, e in timed]},
             "hovertext": [_describe(e) for _, e in timed], "hoverinfo": "text"}]


def _colours(chart: str, names: list[str]) -> dict[str, str]:
    """A colour per series; an estimate shares its realised metric's colour."""
    if chart != "performance":
        return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    bases = sorted({n.removesuffix(" (estimated)") for n in names})
    by_base = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(bases)}
    return {n: by_base[n.removesuffix(" (estimated)")] for n in names}


def _vline(t: int, colour: str, dash: str, width: float) -> dict[str, Any]:
    return {"type": "line", "xref": "x", "x0": _x(t), "x1": _x(t), "yref": "paper", "y0": 0, "y1": 1,
            "line": {"color": colour, "dash": dash, "width": width}, "layer": "below"}


def _event_colour(event: Mapping[str, Any], default: str) -> str:
    return ALERT_COLOURS.get(str(event.get("severity")), default) if "alert_id" in event else default


def _describe(event: Mapping[str, Any]) -> str:
    if "job_id" in event:
        return f"retrain job v{event.get('model_version')}: {event.get('reason', '')}"
    threshold = event.get("threshold")
    return (f"{event.get('severity')} v{event.get('model_version')} {event.get('rule')}: "
            f"{event.get('metric')}={_short(event.get('value'))}"
            + (f" (threshold {_short(threshold)})" if threshold is not None else ""))


def _event_row(kind: str, event: Mapping[str, Any]) -> dict[str, str]:
    t = _event_ns(event)
    return {"time": _x(t) if t is not None else "", "kind": kind, "version": str(event.get("model_version", "")),
            "what": _describe(event)}


def _event_ns(event: Mapping[str, Any]) -> int | None:
    try:
        return parse_time(str(event.get("window_end")))
    except ValueError:
        return None


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _x(ns: int) -> str:
    """Nanoseconds to the time text plotly reads (UTC, milliseconds)."""
    return datetime.fromtimestamp(ns // 1_000_000 / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _number(value: FieldValue | None) -> float | None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _key(model_id: str) -> str:
    """A DOM id for a model (model ids may hold any character)."""
    return "m" + hashlib.sha1(model_id.encode()).hexdigest()[:10]


# -- the page --------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.5em; }
#subtitle, .summary { color: #555; font-size: 0.9em; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 0.8em; }
.chart { border: 1px solid #e5e5e5; min-height: 320px; }
table { border-collapse: collapse; font-size: 0.85em; margin-top: 0.8em; }
td, th { border-bottom: 1px solid #eee; padding: 2px 8px; text-align: left; vertical-align: top; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var LIVE = __LIVE__;
  function make(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function section(model) {
    var found = document.getElementById(model.key);
    if (found) return found;
    var s = make("section", "model");
    s.id = model.key;
    s.appendChild(make("h2", "", "model " + model.model_id));
    s.appendChild(make("p", "summary"));
    s.appendChild(make("div", "charts"));
    s.appendChild(make("table", "events"));
    document.getElementById("models").appendChild(s);
    return s;
  }
  function table(node, rows) {
    node.textContent = "";
    if (!rows.length) return;
    var head = make("tr");
    ["time (UTC)", "event", "version", "what"].forEach(function (h) { head.appendChild(make("th", "", h)); });
    node.appendChild(head);
    rows.forEach(function (r) {
      var tr = make("tr");
      [r.time, r.kind, r.version, r.what].forEach(function (v) { tr.appendChild(make("td", "", v)); });
      node.appendChild(tr);
    });
  }
  function draw(doc) {
    document.title = doc.title;
    document.getElementById("title").textContent = doc.title;
    document.getElementById("subtitle").textContent = doc.subtitle;
    document.getElementById("empty").style.display = doc.models.length ? "none" : "block";
    doc.models.forEach(function (model) {
      var s = section(model);
      var alerts = model.events.filter(function (e) { return e.kind === "alert"; }).length;
      s.querySelector(".summary").textContent = "versions " + model.versions.join(", ") + " \u00b7 " +
        alerts + " firing alerts \u00b7 " + (model.events.length - alerts) + " retrain jobs";
      var grid = s.querySelector(".charts");
      var divs = model.charts.map(function (chart) {  // all placed before any is drawn: each gets its width
        var div = document.getElementById(chart.div);
        if (!div) {
          div = make("div", "chart");
          div.id = chart.div;
          div.setAttribute("data-chart", chart.id);
          grid.appendChild(div);
        }
        return div;
      });
      model.charts.forEach(function (chart, i) {
        Plotly.react(divs[i], chart.figure.data, chart.figure.layout, {responsive: true, displaylogo: false});
      });
      table(s.querySelector(".events"), model.events);
    });
    document.body.setAttribute("data-drawn", String(doc.models.length));
  }
  draw(JSON.parse(document.getElementById("document").textContent));
  if (LIVE) {
    var busy = false;
    setInterval(function () {
      if (busy) return;
      busy = true;
      fetch(LIVE, {cache: "no-store"}).then(function (r) { return r.json(); }).then(draw)
        .catch(function () { document.getElementById("subtitle").textContent = "the demo is not answering"; })
        .then(function () { busy = false; });
    }, __INTERVAL__);
  }
})();
"""


def plotly_js() -> str:
    """plotly.js as shipped inside the plotly package (no network at view time)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def page_html(document: Mapping[str, Any], *, plotly_src: str | None = None, live_url: str | None = None,
              interval_ms: int = 2000) -> str:
    """One HTML page drawing ``document``: plotly's JavaScript inline (a file that works offline)
    or from ``plotly_src`` (a URL the demo serves); with ``live_url`` it polls that URL for a new
    document every ``interval_ms``."""
    from plotly.io.json import to_json_plotly

    data = to_json_plotly(document).replace("</", "<\\/")
    library = (f'<script src="{html.escape(plotly_src)}"></script>' if plotly_src
               else f"<script>{plotly_js()}</script>")
    script = _SCRIPT.replace("__LIVE__", to_json_plotly(live_url)).replace("__INTERVAL__", str(int(interval_ms)))
    title = html.escape(str(document.get("title", "driftwarden")))
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>\n'
            '<link rel="icon" href="data:,">\n'
            f"<style>{_STYLE}</style>\n{library}\n</head><body>\n"
            f'<h1 id="title">{title}</h1><p id="subtitle"></p>\n'
            '<p id="empty" style="display:none">No window has closed yet.</p>\n<div id="models"></div>\n'
            f'<script id="document" type="application/json">{data}</script>\n<script>{script}</script>\n'
            "</body></html>\n")


# -- reading the worker's line-protocol file ---------------------------------------------------------

_SPACE = re.compile(r"(?<!\\) ")
_COMMA = re.compile(r"(?<!\\),")
_EQUALS = re.compile(r"(?<!\\)=")
_ESCAPE = re.compile(r"\\(.)")


def parse_line(line: str) -> Point:
    """One line as :meth:`Point.to_line_protocol` writes it (string fields without spaces or commas:
    the worker writes none). Raises ``ValueError`` on anything else."""
    parts = _SPACE.split(line.strip())
    if len(parts) != 3:
        raise ValueError(f"not 'measurement,tags fields time': {line!r}")
    head, fields_text, time_text = parts
    measurement, *tag_parts = _COMMA.split(head)
    tags: dict[str, str] = {}
    for part in tag_parts:
        key, value = _EQUALS.split(part, maxsplit=1)
        tags[_unescape(key)] = _unescape(value)
    fields: dict[str, FieldValue] = {}
    for part in _COMMA.split(fields_text):
        key, value = _EQUALS.split(part, maxsplit=1)
        fields[_unescape(key)] = _field(value)
    return Point(_unescape(measurement), tags, fields, int(time_text))


def _unescape(text: str) -> str:
    return _ESCAPE.sub(r"\1", text)


def _field(text: str) -> FieldValue:
    if text in ("true", "false"):
        return text == "true"
    if text.endswith("i"):
        return int(text[:-1])
    if text.startswith('"') and text.endswith('"'):
        return _unescape(text[1:-1])
    return float(text)


class LineFollower:
    """Reads the complete lines appended to a line-protocol file since the last call."""

    def __init__(self, path: Any) -> None:
        from pathlib import Path

        self.path = Path(path)
        self._offset = 0
        self._partial = b""
        self.malformed = 0

    def read(self) -> list[Point]:
        """Points of the lines completed since the last call (none while the file does not exist)."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        complete, _, self._partial = data.rpartition(b"\n")
        points = []
        for line in complete.decode("utf-8", errors="replace").splitlines():
            if line.strip():
                try:
                    points.append(parse_line(line))
                except ValueError:
                    self.malformed += 1
        return points
