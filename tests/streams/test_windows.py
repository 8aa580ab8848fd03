"""ModelMonitor windows through the Pipeline: event-time windows, sliding panes, where pairs land.

Oracles: hand-built message sequences with hand counts (which window each
event and each labelled pair belongs to, its accuracy); for sliding windows a
fresh tumbling summary over exactly the same 100 events (a second pipeline,
and the detectors directly); for batching, the same messages split differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.points import Point
from streams.commands import prepare_workspace
from streams.config import Config
from streams.evaluation import Evaluation
from streams.events import Prediction, parse_predictions
from streams.join import DictStore, LabelledPair
from streams.windows import WindowOutput
from streams.pipeline import FEEDBACK, PREDICTION, Pipeline, RawMessage
from streams.runtime import pipeline_factory
from streams.simulate import SimulatedStream

NS = 1_000_000_000
T0 = 1_700_000_000.0  # a whole multiple of 10 s
MODEL = "credit-risk"
WALL_CLOCK_STATS = {"throughput", "lag"}


# -- helpers ---------------------------------------------------------------------------------------


def credit_prediction(pid: str, t: float, prediction: int = 1, *, age: float = 40.0) -> dict[str, Any]:
    return {"prediction_id": pid, "model_id": MODEL, "model_version": "1", "timestamp": t,
            "features": {"age": age, "income": 50_000.0, "debt_ratio": 0.3, "tenure_months": 30.0,
                         "num_accounts": 3.0, "channel": "web", "region": "north", "employment": "salaried"},
            "prediction": prediction, "score": 0.7, "attributes": {"sex": "F", "race": "White"}}


def feedback(pid: str, t: float, label: Any, model: str = MODEL) -> dict[str, Any]:
    return {"prediction_id": pid, "model_id": model, "timestamp": t, "label": label}


def msg(kind: str, event: dict[str, Any], offset: int = 0) -> RawMessage:
    return RawMessage(kind, orjson.dumps(event), event["prediction_id"].encode(), kind, 0, offset)


@dataclass
class Run:
    windows: list[WindowOutput]
    points: list[Point]
    per_call: list[int]  # windows closed by each process() call


def run(pipeline: Pipeline, messages: Sequence[RawMessage], sizes: Iterable[int] | None = None,
        flush: bool = True) -> Run:
    """Process messages in batches of the given sizes (one message per batch by default)."""
    out = Run([], [], [])
    it = iter(sizes) if sizes is not None else None
    i = 0
    while i < len(messages):
        size = max(next(it, 1) if it is not None else 1, 1)
        outcome = pipeline.process(messages[i:i + size])
        out.windows.extend(outcome.windows)
        out.points.extend(outcome.points)
        out.per_call.append(len(outcome.windows))
        i += size
    if flush:
        outcome = pipeline.flush()
        out.windows.extend(outcome.windows)
        out.points.extend(outcome.points)
    return out


def monitor_stat(points: Iterable[Point], name: str) -> float | None:
    values = [p.fields["value"] for p in points if p.measurement == "monitor" and p.tags["stat"] == name]
    assert len(values) <= 1
    return values[0] if values else None


def accuracy(points: Iterable[Point]) -> tuple[float, int] | None:
    found = [(p.fields["value"], p.fields["n"]) for p in points
             if p.measurement == "performance" and p.tags["metric"] == "accuracy"]
    assert len(found) <= 1
    return found[0] if found else None


def comparable(points: Iterable[Point]) -> list[tuple[Any, ...]]:
    """Points as sortable tuples; floats rounded to 12 significant digits (a sum of scores added in a
    different grouping differs in the last bit); wall-clock monitor stats left out."""
    def rounded(value: Any) -> Any:
        return float(f"{value:.12g}") if isinstance(value, float) else value

    return sorted((p.measurement, tuple(sorted(p.tags.items())),
                   tuple((k, rounded(v)) for k, v in sorted(p.fields.items())), p.time_ns)
                  for p in points if not (p.measurement == "monitor" and p.tags["stat"] in WALL_CLOCK_STATS))


def workspace_config(root: Path, window: dict[str, Any]) -> Config:
    path = prepare_workspace(root, bootstrap="127.0.0.1:1", overrides={"models.*.window": window})
    return Config.load(path)


@pytest.fixture(scope="module")
def time_cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return workspace_config(tmp_path_factory.mktemp("time-window"), {"seconds": 10})


def time_pipeline(cfg: Config) -> Pipeline:
    return pipeline_factory(cfg)(DictStore())


# -- time windows ------------------------------------------------------------------------------------


def late_sequence() -> list[RawMessage]:
    p = credit_prediction
    return [
        msg(PREDICTION, p("a", T0 + 1)),
        msg(PREDICTION, p("b", T0 + 3)),
        msg(PREDICTION, p("c", T0 + 14)),  # within the 5 s grace of [T0, T0+10): nothing closes
        msg(PREDICTION, p("d", T0 + 16)),  # 5 s past T0+10: closes [T0, T0+10)
        msg(PREDICTION, p("e", T0 + 4)),   # for the window that closed: late
        msg(PREDICTION, p("f", T0 + 12)),
        msg(PREDICTION, p("g", T0 + 27)),  # 5 s past T0+20: closes [T0+10, T0+20)
    ]


def test_time_windows_close_by_event_time_and_count_late_events(time_cfg: Config) -> None:
    got = run(time_pipeline(time_cfg), late_sequence())
    # windows close on the event 5 s past their end, not before (per-message batches)
    assert got.per_call == [0, 0, 0, 1, 0, 0, 1]
    bounds = [(w.start_ns, w.end_ns) for w in got.windows]
    assert bounds == [(int(T0) * NS, int(T0 + 10) * NS), (int(T0 + 10) * NS, int(T0 + 20) * NS),
                      (int(T0 + 20) * NS, int(T0 + 30) * NS)]  # the last one flushed
    for window in got.windows:
        assert window.points
        assert {p.time_ns for p in window.points} == {window.end_ns}  # stamped at the end boundary
    events = [monitor_stat(w.points, "events") for w in got.windows]
    late = [monitor_stat(w.points, "late") for w in got.windows]
    assert events == [2.0, 3.0, 1.0]  # a, b | c, d, f | g  (e is left out)
    assert late == [None, 1.0, None]  # e is reported with the next window to close
    assert [w.n for w in got.windows] == [2, 3, 1]
    # the figures are those of the window's own events: n of the drift test
    for window, n in zip(got.windows, (2, 3, 1)):
        psi = [p for p in window.points if p.measurement == "feature_drift" and p.tags["method"] == "psi"]
        assert psi and {p.fields["n"] for p in psi} == {n}


def test_time_window_lateness_does_not_depend_on_batching(time_cfg: Config) -> None:
    messages = late_sequence()
    one_by_one = run(time_pipeline(time_cfg), messages)
    one_batch = run(time_pipeline(time_cfg), messages, [len(messages)])

    def counts(got: Run) -> list[tuple[float | None, float | None]]:
        return [(monitor_stat(w.points, "events"), monitor_stat(w.points, "late")) for w in got.windows]

    assert counts(one_by_one) == [(2.0, None), (3.0, 1.0), (1.0, None)]
    assert counts(one_batch) == counts(one_by_one)
    # ADWIN runs on per-micro-batch means by design, and the CUSUM streams see a batch's events
    # pane by pane (event-time order across panes): the figures that depend on batching
    def windowed(points: list[Point]) -> list[Point]:
        return [p for p in points if p.tags.get("method") not in ("adwin", "cusum")
                and p.tags.get("detector") != "cusum" and p.tags.get("metric") != "selection_rate_cusum"]

    assert comparable(windowed(one_batch.points)) == comparable(windowed(one_by_one.points))


def test_time_window_pairs_land_in_the_window_open_when_joined_whatever_the_batching(time_cfg: Config) -> None:
    p = credit_prediction
    messages = [
        msg(PREDICTION, p("a", T0 + 1, prediction=1)),
        msg(FEEDBACK, feedback("a", T0 + 3, 1)),  # joined while [T0, T0+10) is the open window
        msg(PREDICTION, p("b", T0 + 20)),        # closes it
    ]
    one_by_one = run(time_pipeline(time_cfg), messages)
    assert [monitor_stat(w.points, "pairs") for w in one_by_one.windows] == [1.0, 0.0]
    one_batch = run(time_pipeline(time_cfg), messages, [3])
    assert [monitor_stat(w.points, "pairs") for w in one_batch.windows] == [1.0, 0.0]


# -- sliding count windows ------------------------------------------------------------------------------

SIZE, SLIDE, N_SLIDING = 100, 50, 600
CHANGE_AT = N_SLIDING // 2 + 25  # inside a pane, so that some windows are part drifted


@dataclass
class SlidingCase:
    cfg: Config
    tumbling_cfg: Config
    messages: list[RawMessage]
    predictions: list[RawMessage]
    pane_of_pair: dict[str, int]  # prediction_id -> pane in which its pair was joined (hand count)


@pytest.fixture(scope="module")
def sliding(tmp_path_factory: pytest.TempPathFactory) -> SlidingCase:
    root = tmp_path_factory.mktemp("sliding")
    cfg = workspace_config(root / "sliding", {"events": SIZE, "slide": SLIDE})
    tumbling = workspace_config(root / "tumbling", {"events": SIZE})
    # drift half-way so that windows differ from each other; labels arrive ~50 predictions later
    sim = SimulatedStream(start=T0, seed=3, change_after=CHANGE_AT, changes=("drift", "concept"),
                          feedback_delay=0.5)
    messages: list[RawMessage] = []
    predictions: list[RawMessage] = []
    seen: set[str] = set()
    pane_of_pair: dict[str, int] = {}
    for i, (kind, event) in enumerate(sim.events(N_SLIDING)):
        message = msg(PREDICTION if kind == "prediction" else FEEDBACK, event, offset=i)
        messages.append(message)
        pid = event["prediction_id"]
        if kind == "prediction":
            predictions.append(message)
            seen.add(pid)
        elif pid in seen and pid not in pane_of_pair:
            # joined with len(predictions) predictions already in: the pane open then
            pane_of_pair[pid] = len(predictions) // SLIDE
    assert len(predictions) == N_SLIDING
    return SlidingCase(cfg, tumbling, messages, predictions, pane_of_pair)


def test_sliding_windows_emit_every_slide_and_hold_the_last_window_of_events(sliding: SlidingCase) -> None:
    pipeline = pipeline_factory(sliding.cfg)(DictStore())
    got = run(pipeline, sliding.messages, flush=False)
    # a window closes exactly at every SLIDE-th prediction
    closed_at = []
    preds = 0
    for message, closed in zip(sliding.messages, got.per_call):
        preds += message.kind == PREDICTION
        closed_at.extend([preds] * closed)
    assert closed_at == list(range(SLIDE, N_SLIDING + 1, SLIDE))
    events = [monitor_stat(w.points, "events") for w in got.windows]
    assert events == [SLIDE] + [SIZE] * (N_SLIDING // SLIDE - 1)
    pairs = [monitor_stat(w.points, "pairs") for w in got.windows]
    per_pane = [sum(1 for pane in sliding.pane_of_pair.values() if pane == k) for k in range(N_SLIDING // SLIDE)]
    assert pairs == [per_pane[0]] + [per_pane[k - 1] + per_pane[k] for k in range(1, len(per_pane))]
    assert sum(per_pane) > 300


def _key(p: Point) -> tuple[str, tuple[tuple[str, str], ...]]:
    return p.measurement, tuple(sorted(p.tags.items()))


def _key_of(measurement: str, **tags: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return measurement, tuple(sorted({"model_id": MODEL, "model_version": "1", **tags}.items()))


def _same_fields(got: Point, want: Point) -> None:
    for name, value in want.fields.items():
        if isinstance(value, float):
            assert got.fields[name] == pytest.approx(value, rel=1e-9, abs=1e-12), (got, want)
        else:
            assert got.fields[name] == value, (got, want)


def test_sliding_window_figures_equal_a_fresh_tumbling_summary_of_the_same_events(sliding: SlidingCase) -> None:
    pipeline = pipeline_factory(sliding.cfg)(DictStore())
    pairs_by_id: dict[str, LabelledPair] = {}
    windows: list[WindowOutput] = []
    for message in sliding.messages:
        outcome = pipeline.process([message])
        windows.extend(outcome.windows)
        pairs_by_id.update({pair.prediction.prediction_id: pair for pair in outcome.pairs})
    assert set(pairs_by_id) == set(sliding.pane_of_pair)
    evaluation: Evaluation = pipeline.monitors[MODEL].evaluation
    oracle_build = pipeline_factory(sliding.tumbling_cfg)
    checked_drift = checked_perf = 0
    for j in range(1, len(windows)):
        window = windows[j]
        chunk = sliding.predictions[SLIDE * (j - 1): SLIDE * (j + 1)]
        assert len(chunk) == SIZE
        got = {_key(p): p for p in window.points}

        # oracle 1: a tumbling {events: 100} pipeline fed only these 100 predictions
        oracle = run(oracle_build(DictStore()), chunk, [SIZE], flush=False)
        assert len(oracle.windows) == 1 and oracle.windows[0].n == SIZE
        for want in oracle.windows[0].points:
            # the figures that depend on the predictions only (not on pairs, not sequential: ADWIN, CUSUM)
            if want.measurement in ("feature_drift", "prediction_drift", "data_quality", "label_shift") \
                    and want.tags.get("method") not in ("adwin", "cusum") and want.tags.get("source") != "feedback":
                _same_fields(got[_key(want)], want)
                checked_drift += want.measurement == "feature_drift"

        # oracle 2: the detectors directly, on the window's events and the pairs joined during it
        summary = evaluation.new_window()
        summary.add_predictions(evaluation.columns([parse(pipeline, m) for m in chunk]))
        mine = [pairs_by_id[pid] for pid, pane in sliding.pane_of_pair.items() if pane in (j - 1, j)]
        if mine:
            summary.add_pairs(evaluation.pair_columns(mine))
        tags = {"model_id": MODEL, "model_version": "1"}
        expected = summary.points(tags=tags, time_ns=window.end_ns)
        assert {_key(p) for p in expected} <= set(got)
        for want in expected:
            _same_fields(got[_key(want)], want)
            checked_perf += want.measurement == "performance"
        assert monitor_stat(window.points, "pairs") == len(mine)
    assert checked_drift >= 8 * (len(windows) - 1)
    assert checked_perf > 0
    # the windows differ: age's PSI after the injected change is above every value before it
    age = [next(p.fields["value"] for p in w.points if _key(p) == _key_of("feature_drift", feature="age", method="psi"))
           for w in windows]
    before = [v for j, v in enumerate(age) if SLIDE * (j + 1) <= CHANGE_AT]
    after = [v for j, v in enumerate(age) if SLIDE * (j - 1) >= CHANGE_AT]
    assert before and after and min(after) > max(before)


def test_sliding_windows_do_not_depend_on_batching(sliding: SlidingCase) -> None:
    build = pipeline_factory(sliding.cfg)
    one_by_one = run(build(DictStore()), sliding.messages)
    batched = run(build(DictStore()), sliding.messages, [37, 1, 120, 3] * 200)

    def windowed(points: Iterable[Point]) -> list[tuple[Any, ...]]:
        # River's ADWIN on per-feature (and score) means runs on per-micro-batch means by design
        # (detectors/sequential.py), so it is the one figure that depends on batch sizes
        return comparable(p for p in points if p.tags.get("method") != "adwin")

    assert len(batched.windows) == len(one_by_one.windows)
    # every SLIDE predictions a window; at the end, possibly one more for the labels that came late
    assert len(batched.windows) in (N_SLIDING // SLIDE, N_SLIDING // SLIDE + 1)
    assert windowed(batched.points) == windowed(one_by_one.points)


def parse(pipeline: Pipeline, message: RawMessage) -> Prediction:
    """The parser's own result, so the oracle sees exactly the values the pipeline saw."""
    events, rejections = parse_predictions(message.value, pipeline.schemas)
    assert not rejections and len(events) == 1
    return events[0]


# -- where labelled pairs land (count windows), by hand ------------------------------------------------------

W = 4


def tiny_config(window: int = W) -> Config:
    return Config.from_mapping({"models": [{
        "id": "m", "task": "binary", "positive_label": 1, "features": {"x": "numeric"},
        "window": {"events": window}}]}, environ={})


def tiny_pipeline(cfg: Config) -> Pipeline:
    evaluations = {"m": Evaluation(cfg.models["m"], None)}
    return pipeline_factory(cfg, evaluations)(DictStore())


def tiny_prediction(pid: str, t: float, prediction: int) -> RawMessage:
    return msg(PREDICTION, {"prediction_id": pid, "model_id": "m", "model_version": "1", "timestamp": t,
                            "features": {"x": t}, "prediction": prediction})


def tiny_feedback(pid: str, t: float, label: int) -> RawMessage:
    return msg(FEEDBACK, feedback(pid, t, label, model="m"))


P, F = tiny_prediction, tiny_feedback
HAND_SEQUENCE = [
    P("p1", 1, 1),
    P("p2", 2, 0),
    F("p1", 3, 1),  # joined in window 0 (2 predictions in): correct
    F("p3", 4, 0),  # label first: waits
    P("p3", 5, 1),  # joins on arrival, window 0: wrong
    F("p4", 6, 1),  # waits
    P("p4", 7, 1),  # fills window 0, which closes right after it; its pair joins after that: window 1, correct
    F("p2", 8, 0),  # window 1: correct
    F("p2", 9, 1),  # duplicate feedback: ignored
    P("p5", 10, 1),
    F("p5", 11, 0),  # window 1: wrong
    P("p6", 12, 0),
    P("p7", 13, 0),
    F("p6", 14, 1),  # window 1: wrong
    F("p7", 15, 0),  # window 1: correct
    P("p8", 16, 1),  # fills window 1
    P("p9", 17, 1),
    F("p8", 18, 1),  # window 2: correct
    F("px", 19, 1),  # feedback for a prediction that never comes: waits, not a pair
    P("p9", 20, 0),  # redelivered prediction: ignored
]
# per window: (events, pairs, accuracy)
HAND_COUNTS = [(4, 2, 1 / 2), (4, 5, 3 / 5), (1, 1, 1.0)]


def hand_figures(got: Run) -> list[tuple[float | None, float | None, float | None]]:
    out = []
    for window in got.windows:
        acc = accuracy(window.points)
        if acc is not None:
            assert acc[1] == monitor_stat(window.points, "pairs")  # accuracy's n is the window's pairs
        out.append((monitor_stat(window.points, "events"), monitor_stat(window.points, "pairs"),
                    acc[0] if acc else None))
    return out


def test_pairs_land_in_the_window_open_when_joined() -> None:
    got = run(tiny_pipeline(tiny_config()), HAND_SEQUENCE)
    assert hand_figures(got) == [(float(e), float(p), pytest.approx(a)) for e, p, a in HAND_COUNTS]
    # cumulative figures run over every pair so far
    cumulative = [(p.fields["cumulative_value"], p.fields["cumulative_n"]) for w in got.windows for p in w.points
                  if p.measurement == "performance" and p.tags["metric"] == "accuracy"]
    assert cumulative == [(pytest.approx(1 / 2), 2), (pytest.approx(4 / 7), 7), (pytest.approx(5 / 8), 8)]


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.booleans(), min_size=len(HAND_SEQUENCE) - 1, max_size=len(HAND_SEQUENCE) - 1))
def test_pairs_land_in_the_same_window_whatever_the_batch_boundaries(cuts: list[bool]) -> None:
    sizes, size = [], 1
    for cut in cuts:
        if cut:
            sizes.append(size)
            size = 1
        else:
            size += 1
    sizes.append(size)
    assert sum(sizes) == len(HAND_SEQUENCE)
    got = run(tiny_pipeline(tiny_config()), HAND_SEQUENCE, sizes)
    assert hand_figures(got) == [(float(e), float(p), pytest.approx(a)) for e, p, a in HAND_COUNTS]


def test_flush_reports_pairs_joined_after_the_last_window_closed() -> None:
    messages = [P("a", 1, 1), P("b", 2, 0), F("a", 3, 1), F("b", 4, 1)]
    got = run(tiny_pipeline(tiny_config(window=2)), messages)
    assert sum(monitor_stat(w.points, "pairs") or 0 for w in got.windows) == 2
