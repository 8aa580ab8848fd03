"""Dashboards and InfluxDB checks read only metrics the worker writes.

Every Flux query in the Grafana dashboard and in the InfluxDB template is
parsed for the measurements (``r._measurement == "..."``), fields
(``r._field == "..."``), tag filters (``r.tag == "..."``, ``r["tag"] != "..."``),
grouping columns and ``schema.tagValues`` tags it uses, and each must appear in
the metric table (:data:`retrain.metrics.METRICS`, docs/design.md's "Metric names").
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


# -- Grafana's own types: the dashboard decodes into grafana-foundation-sdk's models, losing nothing ----------

GRAFANA_VERSION = "11.2"
"""The Grafana of docker-compose.yml; the SDK is pinned to the types generated for it (pyproject.toml)."""


def grafana_schema_problems(doc: dict[str, Any]) -> list[str]:
    """Where ``doc`` departs from Grafana's dashboard schema, as the Foundation SDK's types encode it
    (generated by Grafana from its CUE kinds): keys the types do not have (a decode-encode round
    trip drops them), values it changes, and values whose type or enum member is wrong."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()  # panel options and field configs decode into their plugin's types
    try:
        model = Dashboard.from_json(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return [f"does not decode into the SDK's Dashboard: {exc!r}"]
    back = json.loads(json.dumps(model, cls=JSONEncoder))
    return _round_trip_problems(doc, back, "dashboard") + _type_problems(model, "dashboard")


def _round_trip_problems(original: Any, back: Any, where: str) -> list[str]:
    if isinstance(original, dict):
        if not isinstance(back, dict):
            return [f"{where}: an object where the schema has {type(back).__name__}"]
        out = []
        for key, value in original.items():
            if key not in back:
                out.append(f"{where}.{key}: not in Grafana's schema")
            else:
                out.extend(_round_trip_problems(value, back[key], f"{where}.{key}"))
        return out
    if isinstance(original, list):
        if not isinstance(back, list) or len(back) != len(original):
            return [f"{where}: list changed by the round trip"]
        return [p for i, (a, b) in enumerate(zip(original, back)) for p in _round_trip_problems(a, b, f"{where}[{i}]")]
    return [] if original == back else [f"{where}: {original!r} comes back as {back!r}"]


def _type_problems(value: Any, where: str) -> list[str]:
    import typing

    hints = typing.get_type_hints(type(value))
    out = []
    for name, hint in hints.items():
        out.extend(_check_type(getattr(value, name, None), hint, f"{where}.{name}"))
    return out


def _check_type(value: Any, hint: Any, where: str) -> list[str]:
    import enum
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is object:  # e.g. a panel's options: decoded by its plugin's types
        is_model = hasattr(value, "to_json") and hasattr(type(value), "from_json")
        return _type_problems(value, where) if is_model else []
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return []
        attempts = [_check_type(value, a, where) for a in args if a is not type(None)]
        return [] if any(not a for a in attempts) else min(attempts, key=len)
    if origin is typing.Literal:
        return [] if value in args else [f"{where}: {value!r} is not one of {args}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {value!r}"]
        return [p for i, item in enumerate(value) for p in _check_type(item, args[0] if args else typing.Any,
                                                                          f"{where}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {value!r}"]
        return [p for k, item in value.items() for p in _check_type(item, args[1] if args else typing.Any,
                                                                        f"{where}.{k}")]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        members = [m.value for m in hint]
        return [] if value in members else [f"{where}: {value!r} is not one of {members}"]
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected a number, got {value!r}"]
    if hint in (int, str, bool):
        ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
        return [] if ok else [f"{where}: expected {hint.__name__}, got {value!r}"]
    if isinstance(hint, type):
        if not isinstance(value, hint):
            return [f"{where}: expected {hint.__name__}, got {value!r}"]
        return _type_problems(value, where) if hasattr(value, "to_json") and hasattr(type(value), "from_json") \
            else []
    return []


def test_grafana_sdk_is_the_one_for_compose_grafana():
    from importlib.metadata import version

    compose = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert f"image: grafana/grafana:{GRAFANA_VERSION}." in compose
    assert version("grafana-foundation-sdk").split("!")[-1].startswith(GRAFANA_VERSION + ".")


def test_grafana_dashboard_matches_grafanas_schema():
    assert grafana_schema_problems(grafana_dashboard()) == []


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(titel="x"), "dashboard.titel: not in Grafana's schema"),
    (lambda d: d.update(schemaVersion="39"), "dashboard.schema_version: expected int"),
    (lambda d: d.update(graphTooltip=7), "dashboard.graph_tooltip: 7 is not one of"),
    (lambda d: d["panels"][1].update(gridpos=d["panels"][1]["gridPos"]), ".gridpos: not in Grafana's schema"),
    (lambda d: d["panels"][1]["options"]["legend"].update(placement="middle"), "'middle' is not one of"),
    (lambda d: d["panels"][1]["gridPos"].update(w="wide"), "expected int, got 'wide'"),
    (lambda d: d["templating"]["list"][0].update(definition="x"), ".definition: not in Grafana's schema"),
])
def test_grafana_schema_check_catches_mistakes(change, expected):
    doc = grafana_dashboard()
    assert doc["panels"][1]["type"] == "timeseries"
    change(doc)
    found = grafana_schema_problems(doc)
    assert any(expected in p for p in found), found


# -- Flux: every query parses and passes the semantic check of InfluxData's own Flux implementation ---------

FLUX_CHECK = ROOT / "dashboards" / "checks" / "flux-check.js"
GRAFANA_FLUX_PRELUDE = ('v = {timeRangeStart: -1h, timeRangeStop: now(), windowPeriod: 1m, '
                        'defaultBucket: "monitoring", organization: "ml"}')
"""The ``v`` record Grafana's Flux datasource injects (its macros)."""
INFLUX_V = {"timeRangeStart": "-1h", "timeRangeStop": "now()", "windowPeriod": "1m"}
"""What the InfluxDB UI (dashboard cells) and a check's task put in ``v``, besides the template's variables."""
SAMPLE_MODEL = "credit-risk"
"""A value for query variables, whose values come from the data."""


def grafana_variable_values() -> dict[str, str]:
    out = {}
    for variable in grafana_dashboard()["templating"]["list"]:
        current = variable.get("current", {}).get("value")
        out[variable["name"]] = current if isinstance(current, str) and current else SAMPLE_MODEL
    return out


def grafana_interpolated(query: str, values: dict[str, str]) -> str:
    """The query as Grafana sends it: ``${name}`` replaced by the variable's value (in Flux, ``${...}``
    inside a string is interpolation, so the raw text would not check)."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"${{{name}}} names no dashboard variable")
        return values[name]

    return re.sub(r"\$\{(\w+)\}", value, query)


def influx_prelude() -> str:
    fields = dict(INFLUX_V)
    for doc in template_docs():
        if doc["kind"] == "Variable":
            spec = doc["spec"]
            sample = spec["values"][0] if spec.get("type") == "constant" else SAMPLE_MODEL
            fields[spec["name"]] = json.dumps(sample)
    return "v = {" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"


def flux_check(items: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Run ``dashboards/checks/flux-check.js`` (InfluxData's parser, from npm) over ``items``."""
    import shutil
    import subprocess

    node = shutil.which("node")
    modules = FLUX_CHECK.parent / "node_modules" / "@influxdata" / "flux-lsp-node"
    if node is None or not modules.is_dir():
        pytest.fail("the Flux checks need Node.js and InfluxData's parser: run `npm ci` in dashboards/checks "
                    "(bash .ci/run does)")
    done = subprocess.run([node, str(FLUX_CHECK)], input=json.dumps(items), capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def all_flux_items() -> list[dict[str, str]]:
    values = grafana_variable_values()
    items = [{"where": w, "query": grafana_interpolated(q, values), "prelude": GRAFANA_FLUX_PRELUDE}
             for w, q in grafana_queries()]
    prelude = influx_prelude()
    items += [{"where": w, "query": q, "prelude": prelude} for w, q in template_queries()]
    return items


@pytest.fixture(scope="module")
def flux_results() -> dict[str, dict[str, Any]]:
    return {r["where"]: r for r in flux_check(all_flux_items())}


@pytest.mark.parametrize("where", [w for w, _ in ALL_QUERIES])
def test_flux_query_parses_and_checks(where, flux_results):
    result = flux_results[where]
    assert result["syntax"] == [] and result["valid"], (result, dict(ALL_QUERIES)[where])


def test_flux_checker_catches_mistakes():
    good = grafana_interpolated(GOOD.replace("v.bucket", '"${bucket}"'), grafana_variable_values())
    cases = {
        "good": (good, GRAFANA_FLUX_PRELUDE),
        "unclosed": (good.replace("range(start: v.timeRangeStart)", "range(start: v.timeRangeStart"),
                     GRAFANA_FLUX_PRELUDE),
        "unknown function": (good.replace("|> group(", "|> grop("), GRAFANA_FLUX_PRELUDE),
        "wrong argument": (good.replace("columns:", "colums:"), GRAFANA_FLUX_PRELUDE),
        "no such macro": (good.replace("v.timeRangeStart", "v.timeStart"), GRAFANA_FLUX_PRELUDE),
        "raw grafana variable": ('from(bucket: "${bucket}") |> range(start: -1h)', GRAFANA_FLUX_PRELUDE),
        "influxdb's v in grafana": (GOOD, GRAFANA_FLUX_PRELUDE),  # Grafana has no v.bucket
    }
    results = {r["where"]: r for r in flux_check(
        [{"where": k, "query": q, "prelude": p} for k, (q, p) in cases.items()])}
    assert results["good"]["valid"] and results["good"]["syntax"] == []
    assert any("RPAREN" in m for m in results["unclosed"]["syntax"]), results["unclosed"]
    for name in ("unknown function", "wrong argument", "no such macro", "raw grafana variable",
                 "influxdb's v in grafana"):
        assert results[name]["syntax"] == [] and not results[name]["valid"], (name, results[name])
    with pytest.raises(KeyError, match="names no dashboard variable"):
        grafana_interpolated('"${nope}"', grafana_variable_values())
