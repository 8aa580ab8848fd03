"""``driftwarden replay`` end to end, in process (no Kafka): files in, metrics/alerts/jobs out.

Oracles: window counts and sizes from the number of predictions written; window
end times from the events' own timestamps; the pair count from the input files
(feedback whose prediction exists, counted once); metric names from
``retrain.metrics``; the change point from the simulator's ``change_after``;
job ids from ``retrain.events.job_id``; idempotency and snapshot/restore
against a second, uninterrupted run.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from retrain.events import job_id as expected_job_id
from retrain.events import parse_time
from retrain.metrics import BOOL_FIELDS, METRICS, is_known
from streams.cli import main
from streams.commands import prepare_workspace
from streams.config import Config
from streams.join import DictStore
from streams.state import record_json
from streams.pipeline import Pipeline
from streams.replay import merged_messages
from streams.runtime import pipeline_factory
from streams.simulate import SimulatedStream

WINDOW = 500
START = 1_700_000_000.0  # event time of the first prediction (a whole multiple of 10 s)
RATE = 100.0  # the simulator's predictions per second of event time
NS = 1_000_000_000
MODEL = "credit-risk"

N_DRIFT = 6237  # not a multiple of WINDOW: the final partial window (237) must be flushed
CHANGE_AFTER = 3000  # a window boundary: window 6 (predictions 3000..3499) is the first full drifted one


# -- helpers -----------------------------------------------------------------------------------


@dataclass
class Inputs:
    predictions: Path
    feedback: Path
    n_predictions: int
    prediction_ids: list[str]
    prediction_times: list[float]
    feedback_ids: list[str]


def write_inputs(directory: Path, n: int, **stream: Any) -> Inputs:
    """Write a simulated stream as two JSON-lines files (predictions, feedback), in event-time order."""
    directory.mkdir(parents=True, exist_ok=True)
    sim = SimulatedStream(start=START, rate=RATE, **stream)
    preds, fbs = directory / "predictions.jsonl", directory / "feedback.jsonl"
    ids: list[str] = []
    times: list[float] = []
    fb_ids: list[str] = []
    with preds.open("wb") as p, fbs.open("wb") as f:
        for kind, event in sim.events(n):
            if kind == "prediction":
                ids.append(event["prediction_id"])
                times.append(event["timestamp"])
                p.write(orjson.dumps(event) + b"\n")
            else:
                fb_ids.append(event["prediction_id"])
                f.write(orjson.dumps(event) + b"\n")
    assert len(ids) == n
    return Inputs(preds, fbs, n, ids, times, fb_ids)


def workspace(directory: Path, **overrides: Any) -> Path:
    return prepare_workspace(directory, bootstrap="127.0.0.1:1",
                             overrides={"models.*.window": {"events": WINDOW}, **overrides})


def replay(cfg: Path, inputs: Inputs, out: Path, *, predictions: Path | None = None,
           feedback: Path | None = None) -> int:
    return main(["replay", "-c", str(cfg), "--predictions", str(predictions or inputs.predictions),
                 "--feedback", str(feedback or inputs.feedback), "-o", str(out)])


@dataclass(frozen=True)
class Line:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, Any]
    time_ns: int


_UNESCAPED_SPACE = re.compile(r"(?<!\\) ")
_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_UNESCAPED_EQUALS = re.compile(r"(?<!\\)=")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _field_value(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    if text.endswith("i"):
        return int(text[:-1])
    if text.startswith('"'):
        assert text.endswith('"'), text
        return text[1:-1]
    value = float(text)
    assert math.isfinite(value), text
    return value


def parse_line(line: str) -> Line:
    """One line of InfluxDB line protocol; fails the test on anything malformed."""
    parts = _UNESCAPED_SPACE.split(line)
    assert len(parts) == 3, f"expected 'measurement,tags fields time': {line!r}"
    head, fields_text, time_text = parts
    measurement, *tag_parts = _UNESCAPED_COMMA.split(head)
    tags = {}
    for part in tag_parts:
        key, value = _UNESCAPED_EQUALS.split(part)
        tags[_unescape(key)] = _unescape(value)
    fields = {}
    for part in _UNESCAPED_COMMA.split(fields_text):
        key, value = _UNESCAPED_EQUALS.split(part, maxsplit=1)
        fields[_unescape(key)] = _field_value(value)
    assert fields, line
    return Line(_unescape(measurement), tags, fields, int(time_text))


def read_metrics(out: Path) -> list[Line]:
    return [parse_line(line) for line in (out / "metrics.lp").read_text(encoding="utf-8").splitlines()]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def stat(lines: list[Line], name: str) -> list[tuple[int, float]]:
    return [(ln.time_ns, ln.fields["value"]) for ln in lines if ln.measurement == "monitor" and ln.tags["stat"] == name]


def ns(t: float) -> int:
    """Event time (seconds, as written in the events) to the nanoseconds the worker stamps."""
    return int(round(t * NS))


def expected_pairs(inputs: Inputs) -> int:
    """Hand count: distinct feedback ids whose prediction exists (duplicates count once)."""
    return len(set(inputs.feedback_ids) & set(inputs.prediction_ids))


# -- the drift run, shared -----------------------------------------------------------------------


@dataclass
class DriftRun:
    cfg: Path
    inputs: Inputs
    out: Path
    metrics: list[Line]
    alerts: list[dict[str, Any]]
    jobs: list[dict[str, Any]]


@pytest.fixture(scope="module")
def drift_run(tmp_path_factory: pytest.TempPathFactory) -> DriftRun:
    root = tmp_path_factory.mktemp("replay-drift")
    cfg = workspace(root / "ws")
    inputs = write_inputs(root / "in", N_DRIFT, seed=7, change_after=CHANGE_AFTER, changes=("drift",))
    out = root / "out"
    assert replay(cfg, inputs, out) == 0
    return DriftRun(cfg, inputs, out, read_metrics(out), read_jsonl(out / "alerts.jsonl"),
                    read_jsonl(out / "retrain_jobs.jsonl"))


def test_replay_writes_its_files_and_flushes_the_final_partial_window(drift_run: DriftRun) -> None:
    out = drift_run.out
    for name in ("metrics.lp", "alerts.jsonl", "retrain_jobs.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / "dead_letters.jsonl").exists()  # only written when something was rejected

    events = stat(drift_run.metrics, "events")
    n = drift_run.inputs.n_predictions
    assert len(events) == math.ceil(n / WINDOW) == 13
    assert sum(v for _, v in events) == n
    assert [v for _, v in events] == [WINDOW] * (n // WINDOW) + [n % WINDOW]
    # a count window's points are stamped with the event time of its last prediction
    times = drift_run.inputs.prediction_times
    ends = [ns(times[min((k + 1) * WINDOW, n) - 1]) for k in range(len(events))]
    assert [t for t, _ in events] == ends
    # every point of the run belongs to one of those windows, except the CUSUM streams' detections,
    # written at once and stamped with the detecting event's time, after the change
    instant = [ln for ln in drift_run.metrics if ln.time_ns not in set(ends)]
    assert {ln.time_ns for ln in drift_run.metrics} - {ln.time_ns for ln in instant} == set(ends)
    assert instant, "the drift is seen between window closes"
    for ln in instant:
        assert "cusum" in (ln.tags.get("method"), ln.tags.get("detector"), ln.tags.get("metric", "").rsplit("_", 1)[-1])
        assert ln.fields.get("drift", True) is True and ln.fields.get("value", 1.0) >= 1.0
        assert ln.time_ns >= ns(times[CHANGE_AFTER])


def test_every_joined_pair_is_counted_in_some_window(drift_run: DriftRun) -> None:
    pairs = stat(drift_run.metrics, "pairs")
    assert len(pairs) == 13
    assert sum(v for _, v in pairs) == expected_pairs(drift_run.inputs) > 5000


def test_metrics_file_is_line_protocol_with_documented_names(drift_run: DriftRun) -> None:
    lines = drift_run.metrics
    assert len(lines) > 1000
    seen = set()
    for ln in lines:
        assert ln.measurement in METRICS, ln
        tag_keys, field_names = METRICS[ln.measurement]
        assert set(ln.tags) <= tag_keys, ln
        assert ln.tags["model_id"] == MODEL and ln.tags["model_version"] == "1", ln
        for name, value in ln.fields.items():
            if name in BOOL_FIELDS:
                assert isinstance(value, bool), ln
            else:
                assert not isinstance(value, bool), ln
        if ln.measurement == "performance":
            continue  # see test_performance_points_use_documented_names (known mismatch)
        assert is_known(ln.measurement, tags=ln.tags, fields=ln.fields), ln
        seen.add(ln.measurement)
    assert seen >= {"feature_drift", "prediction_drift", "label_shift", "data_quality", "performance_estimate",
                    "concept_drift", "fairness", "monitor"}
    assert any(ln.measurement == "performance" for ln in lines)


def test_performance_points_use_documented_names(drift_run: DriftRun) -> None:
    unknown = {(ln.tags["metric"], tuple(sorted(ln.fields))) for ln in drift_run.metrics
               if ln.measurement == "performance" and not is_known("performance", tags=ln.tags, fields=ln.fields)}
    assert not unknown


def test_feature_drift_alert_fires_once_inside_the_window_of_the_change(drift_run: DriftRun) -> None:
    times = drift_run.inputs.prediction_times
    first_drifted = CHANGE_AFTER // WINDOW
    end_ns = ns(times[(first_drifted + 1) * WINDOW - 1])

    # one change, one incident: the feature's CUSUM fires the rule at the detecting event, inside the
    # window the change falls in; the window's PSI of the same change is the same rule and adds nothing
    firing = [a for a in drift_run.alerts if a["rule"] == "feature-drift" and a["state"] == "firing"]
    assert len(firing) == 1, drift_run.alerts
    first = firing[0]
    assert first["model_id"] == MODEL and first["metric"] == "feature_drift"
    assert ns(times[CHANGE_AFTER]) <= parse_time(first["window_end"]) < end_ns
    assert parse_time(first["window_start"]) == parse_time(first["window_end"])
    assert first["value"] >= first["threshold"] == 1.0  # the CUSUM statistic over its threshold
    assert first["detail"]["method"] == "cusum" and first["detail"]["change"]
    assert all(parse_time(a["window_end"]) >= ns(times[CHANGE_AFTER]) for a in drift_run.alerts)

    drifted = [ln for ln in drift_run.metrics if ln.measurement == "feature_drift" and ln.fields["drift"] is True
               and ln.tags["method"] == "psi"]
    assert min(ln.time_ns for ln in drifted) == end_ns  # nothing drifted before the change
    # the injected change: age shifts by one sigma, the channel mix moves
    assert {ln.tags["feature"] for ln in drifted if ln.time_ns == end_ns} >= {"age", "channel"}


def test_retrain_job_from_retrain_on_drift_with_an_html_report(drift_run: DriftRun) -> None:
    assert len(drift_run.jobs) == 1  # cooldown_windows: 20 keeps it to one trigger in this run
    job = drift_run.jobs[0]
    assert job["rules"] == ["retrain-on-drift"]
    assert job["model_id"] == MODEL and job["model_version"] == "1"
    # fire_after: 3 -> the third consecutive window with drift on >= 2 features
    times = drift_run.inputs.prediction_times
    third = CHANGE_AFTER // WINDOW + 2
    start_ns, end_ns = ns(times[third * WINDOW]), ns(times[(third + 1) * WINDOW - 1])
    assert (parse_time(job["window_start"]), parse_time(job["window_end"])) == (start_ns, end_ns)
    assert job["job_id"] == expected_job_id(model_id=MODEL, model_version="1", rules=["retrain-on-drift"],
                                            window_start_ns=start_ns, window_end_ns=end_ns)
    assert any(a["rule"] == "retrain-on-drift" and a["state"] == "firing" for a in drift_run.alerts)

    report = Path(job["report_path"])
    assert report.is_file()
    assert report.parent == drift_run.cfg.parent / "reports" / MODEL
    html = report.read_text(encoding="utf-8")
    assert len(html) > 10_000
    assert "<html" in html.lower() and "</html>" in html.lower()


def test_retrain_job_offsets_cover_the_triggering_window(drift_run: DriftRun) -> None:
    # replay's offsets are line numbers of the predictions file: prediction k is on line k
    third = CHANGE_AFTER // WINDOW + 2
    first_line, last_line = third * WINDOW, (third + 1) * WINDOW - 1
    (low, high), = drift_run.jobs[0]["offsets"].values()
    assert low <= first_line and high >= last_line


def test_replaying_the_same_input_twice_gives_identical_jobs_and_alerts(drift_run: DriftRun, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert replay(drift_run.cfg, drift_run.inputs, out) == 0
    assert (out / "retrain_jobs.jsonl").read_bytes() == (drift_run.out / "retrain_jobs.jsonl").read_bytes()
    assert (out / "alerts.jsonl").read_bytes() == (drift_run.out / "alerts.jsonl").read_bytes()
    # and the same figures (throughput is wall-clock and differs)
    def figures(lines: list[Line]) -> list[Line]:
        return [ln for ln in lines if not (ln.measurement == "monitor" and ln.tags["stat"] == "throughput")]
    assert figures(read_metrics(out)) == figures(drift_run.metrics)


# -- the same run driven through Pipeline directly, cut by snapshot/restore ------------------------


BATCH = 500


def batches(run: DriftRun) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for message in merged_messages(run.inputs.predictions, run.inputs.feedback):
        batch.append(message)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class Decisions:
    alerts: list[str]
    jobs: list[str]
    first_alert_batch: int | None = None
    job_batch: int | None = None


def drive(pipeline: Pipeline, messages: list[list[Any]], into: Decisions, offset: int = 0) -> None:
    for i, batch in enumerate(messages, start=offset):
        outcome = pipeline.process(batch)
        into.alerts.extend(a.alert_id for a in outcome.alerts)
        into.jobs.extend(j.trigger.job_id for j in outcome.jobs)
        if outcome.alerts and into.first_alert_batch is None:
            into.first_alert_batch = i
        if outcome.jobs and into.job_batch is None:
            into.job_batch = i


def through_changelog(value: Any) -> Any:
    return orjson.loads(record_json(value))


@pytest.fixture(scope="module")
def uninterrupted(drift_run: DriftRun) -> tuple[Decisions, list[list[Any]]]:
    messages = list(batches(drift_run))
    cfg = Config.load(drift_run.cfg)
    pipeline = pipeline_factory(cfg)(DictStore())
    decisions = Decisions([], [])
    drive(pipeline, messages, decisions)
    final = pipeline.flush()
    decisions.alerts.extend(a.alert_id for a in final.alerts)
    decisions.jobs.extend(j.trigger.job_id for j in final.jobs)
    return decisions, messages


def test_pipeline_run_agrees_with_the_replay_command(drift_run: DriftRun,
                                                     uninterrupted: tuple[Decisions, list[list[Any]]]) -> None:
    decisions, _ = uninterrupted
    assert decisions.jobs == [j["job_id"] for j in drift_run.jobs]
    assert decisions.alerts == [a["alert_id"] for a in drift_run.alerts]
    assert decisions.first_alert_batch is not None and decisions.job_batch is not None
    assert decisions.job_batch > decisions.first_alert_batch  # fire_after: 3 needs later windows


@pytest.mark.parametrize("where", ["start", "before-change", "mid-streak", "job-batch", "after-job", "end"])
def test_snapshot_restore_mid_stream_gives_the_same_alert_and_job_ids(
        drift_run: DriftRun, uninterrupted: tuple[Decisions, list[list[Any]]], where: str) -> None:
    expected, messages = uninterrupted
    assert expected.first_alert_batch is not None and expected.job_batch is not None
    cut = {
        "start": 1,
        "before-change": expected.first_alert_batch - 1,
        "mid-streak": expected.first_alert_batch + 1,  # the feature-drift streak is under way
        "job-batch": expected.job_batch,  # cut just before the batch that triggers the job
        "after-job": expected.job_batch + 1,
        "end": len(messages),
    }[where]
    assert 0 < cut <= len(messages)
    cfg = Config.load(drift_run.cfg)
    build = pipeline_factory(cfg)
    first = build(DictStore())
    got = Decisions([], [])
    drive(first, messages[:cut], got)
    state = through_changelog(first.snapshot())
    joins = through_changelog(dict(first.join.store.items()))
    del first

    second = build(DictStore(joins))
    second.restore(state)
    drive(second, messages[cut:], got, offset=cut)
    final = second.flush()
    got.alerts.extend(a.alert_id for a in final.alerts)
    got.jobs.extend(j.trigger.job_id for j in final.jobs)

    assert got.jobs == expected.jobs
    assert len(got.jobs) == len(set(got.jobs)) == 1  # exactly one job for the one trigger
    assert got.alerts == expected.alerts


# -- stationary traffic, dead letters, flush ---------------------------------------------------------


def test_stationary_input_raises_no_feature_drift_alert(tmp_path: Path) -> None:
    cfg = workspace(tmp_path / "ws")
    inputs = write_inputs(tmp_path / "in", 20_000, seed=11)
    out = tmp_path / "out"
    assert replay(cfg, inputs, out) == 0
    lines = read_metrics(out)
    assert sum(v for _, v in stat(lines, "events")) == 20_000
    drift_points = [ln for ln in lines if ln.measurement == "feature_drift"]
    # every window, every feature: the per-window test (psi) ...
    assert sum(ln.tags["method"] == "psi" for ln in drift_points) == 40 * 8
    # ... and River's ADWIN on the numeric features' means
    assert sum(ln.tags["method"] == "adwin" for ln in drift_points) == 40 * 5
    assert [ln for ln in drift_points if ln.fields["drift"]] == []
    alerts = read_jsonl(out / "alerts.jsonl")
    assert [a for a in alerts if a["rule"] in ("feature-drift", "retrain-on-drift")] == []
    assert read_jsonl(out / "retrain_jobs.jsonl") == []


def test_bad_lines_go_to_dead_letters_with_their_reason(tmp_path: Path) -> None:
    cfg = workspace(tmp_path / "ws")
    inputs = write_inputs(tmp_path / "in", 1200, seed=5, feedback_delay=1.0)
    lines = inputs.predictions.read_bytes().splitlines(keepends=True)
    good = orjson.loads(lines[10])
    wrong_type = orjson.dumps({**good, "prediction_id": "bad-type", "features": {**good["features"], "age": "abc"}})
    unknown = orjson.dumps({**good, "prediction_id": "bad-model", "model_id": "nope"})
    not_json = b'{"prediction_id": "x", oops'
    # inserted after line 100 -> line numbers (the offsets replay reports) 101, 102, 103
    bad = [wrong_type + b"\n", unknown + b"\n", not_json + b"\n"]
    (inputs.predictions).write_bytes(b"".join(lines[:101] + bad + lines[101:]))
    fb_lines = inputs.feedback.read_bytes().splitlines(keepends=True)
    no_label = orjson.loads(fb_lines[0])
    del no_label["label"]
    inputs.feedback.write_bytes(b"".join([orjson.dumps(no_label) + b"\n"] + fb_lines))

    out = tmp_path / "out"
    assert replay(cfg, inputs, out) == 0
    dead = read_jsonl(out / "dead_letters.jsonl")
    by_offset = {(d["topic"], d["offset"]): d for d in dead}
    assert len(dead) == 4
    expectations = {
        (str(inputs.predictions), 101): ("feature 'age': expected number", wrong_type),
        (str(inputs.predictions), 102): ("unknown model 'nope'", unknown),
        (str(inputs.predictions), 103): ("not JSON", not_json),
        (str(inputs.feedback), 0): ("missing field 'label'", orjson.dumps(no_label)),
    }
    assert set(by_offset) == set(expectations)
    for key, (reason, payload) in expectations.items():
        letter = by_offset[key]
        assert reason in letter["reason"], letter
        assert base64.b64decode(letter["payload_b64"]) == payload
    # the good events are all processed; the rejected ones are counted, not windowed
    metrics = read_metrics(out)
    assert sum(v for _, v in stat(metrics, "events")) == 1200
    assert len(stat(metrics, "events")) == 3
    attributed = sum(v for _, v in stat(metrics, "dead_letters"))
    unattributed = sum(v for _, v in stat(metrics, "dead_letters_unattributed"))
    assert attributed + unattributed == 4
    assert unattributed == 2  # not JSON, unknown model: no model to charge them to


def test_pairs_joined_after_the_last_full_window_are_reported(tmp_path: Path) -> None:
    cfg = workspace(tmp_path / "ws")
    # 1000 predictions = exactly two windows; feedback arrives ~30 s (3000 predictions) later,
    # so most of it is joined after the second window closed
    inputs = write_inputs(tmp_path / "in", 1000, seed=3)
    out = tmp_path / "out"
    assert replay(cfg, inputs, out) == 0
    metrics = read_metrics(out)
    assert sum(v for _, v in stat(metrics, "events")) == 1000
    assert sum(v for _, v in stat(metrics, "pairs")) == expected_pairs(inputs)
