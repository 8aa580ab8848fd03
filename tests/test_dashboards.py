"""Dashboards and InfluxDB checks read only metrics the worker writes.

Every Flux query in the Grafana dashboard and in the InfluxDB template is
parsed for the measurements (``r._measurement == "..."``), fields
(``r._field == "..."``), tag filters (``r.tag == "..."``, ``r["tag"] != "..."``),
grouping columns and ``schema.tagValues`` tags it uses, and each must appear in
the metric table (:data:`retrain.metrics.METRICS`, DESIGN.md's "Metric names").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from retrain.metrics import COMMON_TAGS, METRICS, MONITOR_STATS, TAG_VALUES
from retrain.policy import default_rules

ROOT = Path(__file__).resolve().parents[1]
GRAFANA_DASHBOARD = ROOT / "dashboards" / "grafana" / "driftwarden.json"
GRAFANA_DATASOURCE = ROOT / "dashboards" / "grafana" / "provisioning" / "datasources" / "influxdb.yaml"
GRAFANA_PROVIDER = ROOT / "dashboards" / "grafana" / "provisioning" / "dashboards" / "driftwarden.yaml"
INFLUX_TEMPLATE = ROOT / "dashboards" / "influxdb" / "driftwarden-template.yml"

FLUX_COLUMNS = frozenset({"_time", "_value", "_field", "_measurement", "_start", "_stop"})
TEMPLATE_KINDS = frozenset({
    "Bucket", "CheckDeadman", "CheckThreshold", "Dashboard", "Label", "NotificationEndpointHTTP",
    "NotificationEndpointPagerDuty", "NotificationEndpointSlack", "NotificationRule", "Task", "Telegraf",
    "Variable",
})

_STR = r'"([^"]*)"'
_MEASUREMENT = re.compile(r'(?<![\w.])r(?:\._measurement|\["_measurement"\])\s*(?:==|!=)\s*' + _STR)
_FIELD = re.compile(r'(?<![\w.])r(?:\._field|\["_field"\])\s*(?:==|!=)\s*' + _STR)
_TAG_FILTER = re.compile(
    r'r(?:\.([A-Za-z][A-Za-z0-9_]*)|\["([^"]+)"\])\s*(==|!=|=~|!~)\s*(?:"([^"]*)"|(/(?:[^/\\]|\\.)*/)|([A-Za-z_][\w.]*))'
)
_COLUMN_LISTS = re.compile(r'(?:columns|rowKey|columnKey)\s*:\s*\[([^\]]*)\]')
_SCHEMA_TAG = re.compile(r'schema\.(?:tagValues|measurementTagValues)\(([^)]*)\)')
_ARG = re.compile(r'(\w+)\s*:\s*' + _STR)
_SET_FIELDS = re.compile(r'contains\(\s*value:\s*r\._field')


@dataclass
class Usage:
    """What one Flux query reads."""

    measurements: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    tags: dict[str, set[str | None]] = field(default_factory=dict)  # tag -> literal values (None: not literal)
    columns: set[str] = field(default_factory=set)


def parse_flux(query: str) -> Usage:
    usage = Usage()
    usage.measurements.update(_MEASUREMENT.findall(query))
    usage.fields.update(_FIELD.findall(query))
    for key, bracket_key, _op, literal, _regex, _ident in _TAG_FILTER.findall(query):
        key = key or bracket_key
        if key.startswith("_"):
            continue
        value = literal if literal and "${" not in literal else None
        usage.tags.setdefault(key, set()).add(value)
    for names in _COLUMN_LISTS.findall(query):
        usage.columns.update(re.findall(_STR, names))
    for args in _SCHEMA_TAG.findall(query):
        parsed = dict(_ARG.findall(args))
        if "measurement" in parsed:
            usage.measurements.add(parsed["measurement"])
        if "tag" in parsed:
            usage.tags.setdefault(parsed["tag"], set()).add(None)
    return usage


def problems(query: str) -> list[str]:
    """Everything in ``query`` that the worker does not write; empty when the query is sound."""
    usage = parse_flux(query)
    out: list[str] = []
    if _SET_FIELDS.search(query):
        out.append("fields chosen with contains(); write r._field == \"...\" so they can be checked")
    reads_bucket = "from(bucket" in query
    if reads_bucket and not usage.measurements:
        out.append("query reads a bucket without filtering r._measurement == \"...\"")
    unknown = sorted(m for m in usage.measurements if m not in METRICS)
    out.extend(f"unknown measurement {m!r}" for m in unknown)
    known = [m for m in usage.measurements if m in METRICS]
    if reads_bucket and known and not usage.fields:
        out.append("query does not select a field with r._field == \"...\"")
    if not known:
        tag_sets = [tags for tags, _ in METRICS.values()]  # schema queries over every measurement
        known_tags = set().union(*tag_sets)
        for tag in usage.tags:
            if tag not in known_tags:
                out.append(f"unknown tag {tag!r}")
        return out
    for name in sorted(usage.fields):
        if not any(name in METRICS[m][1] for m in known):
            out.append(f"unknown field {name!r} for {sorted(known)}")
    for tag, values in sorted(usage.tags.items()):
        owners = [m for m in known if tag in METRICS[m][0]]
        if not owners:
            out.append(f"unknown tag {tag!r} for {sorted(known)}")
            continue
        for value in values:
            if value is None:
                continue
            closed = [TAG_VALUES.get((m, tag)) for m in owners]
            if all(c is not None and value not in c for c in closed):
                out.append(f"tag {tag}={value!r} is never written for {sorted(owners)}")
    for column in sorted(usage.columns):
        if column not in FLUX_COLUMNS and not any(column in METRICS[m][0] for m in known):
            out.append(f"unknown column {column!r} for {sorted(known)}")
    return out


# -- collecting queries -------------------------------------------------------------------


def walk_queries(node: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string under a ``query`` key, with a path for messages."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "query" and isinstance(value, str):
                if "from(" in value or "schema." in value or "buckets()" in value:
                    yield f"{where}.{key}", value
            else:
                yield from walk_queries(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk_queries(value, f"{where}[{i}]")


def grafana_dashboard() -> dict:
    return json.loads(GRAFANA_DASHBOARD.read_text(encoding="utf-8"))


def template_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(INFLUX_TEMPLATE.read_text(encoding="utf-8")) if d]


def grafana_queries() -> list[tuple[str, str]]:
    return list(walk_queries(grafana_dashboard(), "grafana"))


def template_queries(kinds: frozenset[str] | None = None) -> list[tuple[str, str]]:
    out = []
    for doc in template_docs():
        if kinds is None or doc["kind"] in kinds:
            out.extend(walk_queries(doc, f"{doc['kind']}:{doc['metadata']['name']}"))
    return out


ALL_QUERIES = grafana_queries() + template_queries()


def test_there_are_queries_to_check():
    assert len(grafana_queries()) >= 15
    assert len(template_queries(frozenset({"Dashboard"}))) >= 10
    assert len(template_queries(frozenset({"CheckThreshold"}))) >= 10


@pytest.mark.parametrize("where, query", ALL_QUERIES, ids=[w for w, _ in ALL_QUERIES])
def test_query_reads_only_written_metrics(where, query):
    assert problems(query) == [], f"{where}:\n{query}"


# -- the checker itself catches mistakes ---------------------------------------------------------------

GOOD = '''from(bucket: v.bucket)
  |> range(start: v.timeRangeStart)
  |> filter(fn: (r) => r._measurement == "fairness" and r._field == "value")
  |> filter(fn: (r) => r.group == "all" and r.metric == "demographic_parity_ratio")
  |> group(columns: ["attribute", "metric"])'''


@pytest.mark.parametrize(
    "bad, expected",
    [
        (GOOD.replace('"fairness"', '"fairnes"'), "unknown measurement 'fairnes'"),
        (GOOD.replace('_field == "value"', '_field == "ratio"'), "unknown field 'ratio'"),
        (GOOD.replace("r.group ==", "r.segment =="), "unknown tag 'segment'"),
        (GOOD.replace('"demographic_parity_ratio"', '"dp_ratio"'), "metric='dp_ratio'"),
        (GOOD.replace('["attribute", "metric"]', '["attribute", "feature"]'), "unknown column 'feature'"),
        (GOOD.replace('r._measurement == "fairness" and ', ""), "without filtering r._measurement"),
        (GOOD.replace(' and r._field == "value"', ""), "does not select a field"),
        ('import "influxdata/influxdb/schema"\nschema.tagValues(bucket: "monitoring", tag: "modelid")',
         "unknown tag 'modelid'"),
        ('schema.measurementTagValues(bucket: "monitoring", measurement: "label_shift", tag: "klass")',
         "unknown tag 'klass'"),
    ],
)
def test_checker_rejects_unknown_names(bad, expected):
    assert problems(GOOD) == []
    assert any(expected in p for p in problems(bad)), problems(bad)


def test_checker_accepts_template_variables_and_bracket_tags():
    query = ('from(bucket: "${bucket}") |> range(start: -1h)\n'
             '  |> filter(fn: (r) => r._measurement == "label_shift" and r._field == "current_share")\n'
             '  |> filter(fn: (r) => r.model_id == "${model_id}" and r["class"] != "all" and r.source == v.src)')
    assert problems(query) == []
    assert "class" in parse_flux(query).tags


# -- coverage -------------------------------------------------------------------------------------------


def measurements_of(queries: list[tuple[str, str]]) -> set[str]:
    return set().union(*(parse_flux(q).measurements for _, q in queries))


@pytest.mark.parametrize("source", ["grafana", "influxdb"])
def test_dashboards_cover_every_measurement(source):
    queries = grafana_queries() if source == "grafana" else template_queries(frozenset({"Dashboard"}))
    assert measurements_of(queries) == set(METRICS)


def test_grafana_covers_the_monitor_stats_and_realised_vs_estimated():
    stats = set().union(*(parse_flux(q).tags.get("stat", set()) for _, q in grafana_queries()))
    assert {"throughput", "lag", "dead_letters", "join_rate"} <= stats <= set(MONITOR_STATS)
    together = [q for _, q in grafana_queries()
                if {"performance", "performance_estimate"} <= parse_flux(q).measurements]
    assert together, "one panel should plot realised and estimated performance together"


def test_model_panels_filter_by_the_model_variable():
    for where, query in grafana_queries():
        usage = parse_flux(query)
        if "from(bucket" in query and usage.measurements - {"monitor"}:
            assert "model_id" in usage.tags, where


def test_bucket_comes_from_the_variable_or_defaults_to_monitoring():
    for where, query in ALL_QUERIES:
        for bucket in re.findall(r'from\(bucket:\s*([^)]+)\)', query):
            assert bucket.strip() in ('"${bucket}"', "v.bucket", '"monitoring"'), where
    variables = {v["name"]: v for v in grafana_dashboard()["templating"]["list"]}
    assert variables["bucket"]["current"]["value"] == "monitoring"
    (bucket_var,) = [d for d in template_docs() if d["kind"] == "Variable" and d["spec"]["name"] == "bucket"]
    assert bucket_var["spec"]["values"] == ["monitoring"]


def test_checks_cover_the_default_policies():
    checks = {d["metadata"]["name"]: d for d in template_docs() if d["kind"] == "CheckThreshold"}
    single_measurement_rules = [r for r in default_rules() if len(r.conditions) == 1]
    for rule in single_measurement_rules:
        assert rule.name in checks, f"no InfluxDB check for default policy {rule.name}"
        usage = parse_flux(checks[rule.name]["spec"]["query"])
        condition = rule.conditions[0]
        assert usage.measurements == {condition.measurement}, rule.name
        assert condition.field in usage.fields, rule.name
        for tag, value in condition.tags.items():
            assert value in usage.tags.get(tag, set()), (rule.name, tag)


def test_template_is_well_formed():
    docs = template_docs()
    names: set[tuple[str, str]] = set()
    for doc in docs:
        assert doc["apiVersion"] == "influxdata.com/v2alpha1"
        assert doc["kind"] in TEMPLATE_KINDS, doc["kind"]
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in names, key
        names.add(key)
        for association in doc.get("spec", {}).get("associations", []):
            assert ("Label", association["name"]) in names or any(
                d["kind"] == "Label" and d["metadata"]["name"] == association["name"] for d in docs)
        if doc["kind"] == "CheckThreshold":
            spec = doc["spec"]
            assert spec["every"] and spec["statusMessageTemplate"] and spec["thresholds"]
            for threshold in spec["thresholds"]:
                assert threshold["level"] in {"OK", "INFO", "WARN", "CRIT"}
                assert threshold["type"] in {"greater", "lesser", "inside_range", "outside_range"}
    endpoints = {d["metadata"]["name"] for d in docs if d["kind"].startswith("NotificationEndpoint")}
    rules = [d for d in docs if d["kind"] == "NotificationRule"]
    assert rules and all(r["spec"]["endpointName"] in endpoints for r in rules)
    check_tags = [{(t["key"], t["value"]) for t in d["spec"].get("tags", [])}
                  for d in docs if d["kind"] == "CheckThreshold"]
    for rule in rules:
        wanted = {(t["key"], t["value"]) for t in rule["spec"]["tagRules"]}
        assert all(wanted <= tags for tags in check_tags), "the notification rule must match every check"


def test_grafana_panels_use_the_provisioned_datasource():
    datasource = yaml.safe_load(GRAFANA_DATASOURCE.read_text(encoding="utf-8"))["datasources"][0]
    assert datasource["type"] == "influxdb"
    assert datasource["jsonData"]["version"] == "Flux"
    assert datasource["jsonData"]["organization"] == "ml"
    assert datasource["jsonData"]["defaultBucket"] == "monitoring"
    uid = datasource["uid"]
    dashboard = grafana_dashboard()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid


def test_grafana_dashboard_provider_points_at_the_mounted_folder():
    provider = yaml.safe_load(GRAFANA_PROVIDER.read_text(encoding="utf-8"))["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/driftwarden"


def test_every_measurement_has_the_common_tags():
    for measurement, (tags, fields) in METRICS.items():
        assert COMMON_TAGS <= tags, measurement
        assert fields, measurement
