"""The changelog of the worker's state: what is logged, replayed (with or without compaction, and
after a crash at any record), gives back the join table and monitors' snapshot of a batch boundary."""

from __future__ import annotations

from typing import Any

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.state as state_module
from streams.config import MAX_FULL_SNAPSHOT_EVERY, JoinConfig
from streams.state import PartitionState

Log = list[tuple[bytes, bytes | None]]


def _record(log: Log) -> Any:
    return lambda partition, key, value: log.append((key, value))


def _replay(records: Log) -> PartitionState:
    state = PartitionState(0)
    for key, value in records:
        state.apply(key, value)
    state.finish_recovery()
    return state


def _compacted(records: Log) -> Log:
    """What a compacted topic keeps: the last record of each key, in offset order."""
    last = {key: i for i, (key, _) in enumerate(records)}
    return [record for i, record in enumerate(records) if last[record[0]] == i]


operations = st.lists(
    st.lists(st.tuples(st.sampled_from(["set", "delete"]), st.integers(0, 40), st.integers(0, 9)), max_size=12),
    min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(batches=operations, full_every=st.integers(1, 6), part=st.integers(1, 5), record=st.integers(1, 200))
def test_replaying_the_log_gives_back_every_batch_boundary(batches, full_every, part, record):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(state_module, "PART_ENTRIES", part)
        patch.setattr(state_module, "RECORD_BYTES", record)
        _check_batches(batches, full_every)


def _check_batches(batches: list[list[tuple[str, int, int]]], full_every: int) -> None:
    log: Log = []
    live = PartitionState(0, send=_record(log), full_every=full_every)
    boundaries: list[tuple[int, dict[str, Any]]] = []  # (records logged so far, joins then)
    for number, batch in enumerate(batches):
        for op, key, value in batch:
            if op == "set":
                live.set(f"p{key}", {"t": float(value), "m": "m"})
            else:
                live.delete(f"p{key}")
        live.save_snapshot({"batch": number})
        boundaries.append((len(log), list(live.joins.items())))

    # The table's order too: the join evicts oldest-first, so a recovered table must evict the same next.
    for records in (log, _compacted(log)):
        recovered = _replay(records)
        assert list(recovered.joins.items()) == list(live.joins.items())
        assert recovered.snapshot == {"batch": len(batches) - 1}
        assert recovered.seq == live.seq

    # A crash after any batch: the log up to that batch gives back that batch's table.
    for logged, joins in boundaries:
        assert list(_replay(log[:logged]).joins.items()) == joins


def test_a_snapshot_cut_short_by_a_crash_falls_back_to_the_previous_one(monkeypatch):
    monkeypatch.setattr(state_module, "RECORD_BYTES", 16)
    log: Log = []
    live = PartitionState(0, send=_record(log), full_every=2)
    for i in range(6):
        live.set(f"p{i}", {"t": float(i)})
        live.save_snapshot({"batch": i})
    expected = dict(live.joins)
    live.set("p9", {"t": 9.0})
    live.save_snapshot({"batch": 6})
    before_full = len(log)
    live.set("p10", {"t": 10.0})
    live.save_snapshot({"batch": 7})  # logs a delta, then a full snapshot in pieces, then its marker
    delta_end = next(i for i in range(before_full, len(log)) if log[i][0] == state_module.MONITORS_KEY) + 1
    assert [key[:2] for key, _ in log[delta_end:]].count(b"f:") > 3
    cut = log[: delta_end + 3]  # three pieces of the new snapshot written, no marker
    recovered = _replay(cut)
    assert recovered.joins == {**expected, "p9": {"t": 9.0}, "p10": {"t": 10.0}}
    # And nothing earlier than the last complete marker is needed once compacted.
    assert _replay(_compacted(cut)).joins == recovered.joins


def test_the_log_stays_bounded_on_a_compacted_topic(monkeypatch):
    log: Log = []
    live = PartitionState(0, send=_record(log))
    for i in range(3 * state_module.DELTA_SLOTS):
        live.set(f"p{i % 50}", {"t": float(i)})
        live.save_snapshot({})
    keys = {key for key, _ in log}
    assert len(keys) <= state_module.DELTA_SLOTS + 2 * 1 + 2
    assert _replay(_compacted(log)).joins == live.joins


def test_an_empty_join_table_is_still_state():
    # The worker picks ``recovered.pop(p, None) or PartitionState(p)``: a recovered partition whose
    # join table is empty must not be replaced by a fresh one (it carries the monitors' snapshot).
    state = PartitionState(0, snapshot={"monitors": {}})
    assert len(state) == 0 and state


def test_full_every_leaves_room_for_the_deltas_recovery_needs():
    # Recovery may need every delta since the previous complete snapshot: up to two intervals.
    assert state_module.FULL_EVERY * 2 < state_module.DELTA_SLOTS
    assert MAX_FULL_SNAPSHOT_EVERY * 2 < state_module.DELTA_SLOTS  # the largest join.full_snapshot_every
    assert JoinConfig().full_snapshot_every == state_module.FULL_EVERY
    PartitionState(0, full_every=MAX_FULL_SNAPSHOT_EVERY)
    for wrong in (0, state_module.DELTA_SLOTS // 2):
        with pytest.raises(ValueError, match="full_every"):
            PartitionState(0, full_every=wrong)


def test_the_default_full_every_is_the_module_constant_read_at_construction(monkeypatch):
    monkeypatch.setattr(state_module, "FULL_EVERY", 3)
    log: Log = []
    live = PartitionState(0, send=_record(log))
    for i in range(7):
        live.set(f"p{i}", {"t": float(i)})
        live.save_snapshot({})
    assert [key for key, _ in log].count(state_module.MARKER_KEY) == 2


def test_no_record_exceeds_the_size_limit_whatever_the_entries_hold(monkeypatch):
    # A join entry of 300 KB, a monitors' snapshot of 2 MB (unseen categories of 50 KB, say): every
    # record stays within RECORD_BYTES plus its small header, and recovery gives back both.
    log: Log = []
    live = PartitionState(0, send=_record(log))
    big = {"t": 1.0, "payload": "é" * 150_000}
    for i in range(8):
        live.set(f"p{i}", big)
    snapshot = {"unseen": {f"{i}-" + "x" * 50_000: i for i in range(40)}}
    live.save_snapshot(snapshot)
    live.save_full()
    assert max(len(value) for _, value in log if value is not None) <= state_module.RECORD_BYTES + 100
    assert sum(key.startswith(b"s:") and key != state_module.MONITORS_KEY for key, _ in log) >= 4
    for records in (log, _compacted(log)):
        recovered = _replay(records)
        assert recovered.joins == live.joins and recovered.snapshot == snapshot


def test_records_of_the_older_format_are_still_read():
    import orjson

    old: Log = [
        (b"f:1:0", orjson.dumps({"epoch": 1, "part": 0, "entries": {"a": [1.0]}})),
        (b"f:1:1", orjson.dumps({"epoch": 1, "part": 1, "entries": {"b": [2.0]}})),
        (b"m:join", orjson.dumps({"epoch": 1, "parts": 2, "seq": 3})),
        (b"d:4:0", orjson.dumps({"seq": 4, "part": 0, "parts": 1, "set": {"c": [3.0]}, "del": ["a"]})),
        (b"s:monitors", orjson.dumps({"seq": 4, "snapshot": {"x": 1}})),
    ]
    recovered = _replay(old)
    assert list(recovered.joins.items()) == [("b", [2.0]), ("c", [3.0])]
    assert recovered.snapshot == {"x": 1} and recovered.seq == 4


def test_a_state_read_ends_at_the_fetched_high_watermark_not_at_a_first_empty_poll(broker) -> None:
    """The embedded broker answers ListOffsets with a wrong end (0 or 1 for a partition written in
    one batch), and on a loaded machine the first poll comes back empty before any fetch has
    answered: a read that stopped there restarted a partition without its state (stage 2 then
    dropped the partition's partials as duplicates of sequence numbers it had merged)."""
    from kafka import KafkaProducer

    from streams.broker import create_topics
    from streams.kafka import close_producer

    topic = f"state-read-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, [topic], 2, compact=True)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=2_000_000)
    piece = b"x" * 400_000  # changelog pieces are up to 512 KiB: a fetch answers some of them
    for i in range(40):  # a batch each
        producer.send(topic, key=b"k%d" % i, value=b"%d:" % i + piece, partition=i % 2)
        producer.flush()
    close_producer(producer, 10.0)
    for _ in range(3):
        records = list(state_module.read_to_end(broker.bootstrap, topic, idle_seconds=0.001))
        assert sorted(int(r.value.split(b":")[0]) for r in records) == list(range(40))


# -- a waiting prediction's missing category, through the changelog's deltas ---------------------------------


def _missing_values_config() -> Any:
    import numpy as np
    import pandas as pd

    from detectors.profile import ReferenceProfile
    from streams.config import Config
    from streams.evaluation import Evaluation
    from streams.runtime import pipeline_factory

    features = {"x": "numeric", "c": "categorical"}
    cfg = Config.from_mapping({"models": [{"id": "m", "task": "binary", "positive_label": 1, "features": features,
                                           "window": {"events": 10}}]}, environ={})
    rng = np.random.default_rng(3)
    reference = pd.DataFrame({"x": rng.normal(3.0, 2.0, 400), "c": rng.choice(["a", "b"], 400)})
    profile = ReferenceProfile.from_frame(reference, model_id="m", features=features)
    return pipeline_factory(cfg, {"m": Evaluation(cfg.models["m"], profile)})


def _missing_values_messages() -> list[Any]:
    """Predictions whose category (every third) and number (every fifth) are missing, each label
    coming eight predictions later, so that some wait in the join table at any cut."""
    import orjson

    from streams.pipeline import FEEDBACK, PREDICTION, RawMessage

    out: list[Any] = []
    for i in range(60):
        features = {"x": None if i % 5 == 0 else float(i % 7), "c": None if i % 3 == 0 else "ab"[i % 2]}
        event = {"prediction_id": f"p{i}", "model_id": "m", "model_version": "1", "timestamp": float(i),
                 "features": features, "prediction": str(i % 2), "score": 0.25 + (i % 4) / 8}
        out.append(RawMessage(PREDICTION, orjson.dumps(event), None, "predictions", 0, i))
        if i >= 8:
            label = {"prediction_id": f"p{i - 8}", "model_id": "m", "timestamp": i + 0.5, "label": str(i % 3 % 2)}
            out.append(RawMessage(FEEDBACK, orjson.dumps(label), None, "feedback", 0, i - 8))
    return out


def _figures(points: list[Any]) -> list[tuple[Any, ...]]:
    return sorted((p.measurement, tuple(sorted(p.tags.items())), tuple(sorted(p.fields.items())), p.time_ns)
                  for p in points if not (p.measurement == "monitor" and p.tags.get("stat") in ("throughput", "lag")))


def _features(prediction: Any) -> dict[str, Any]:
    """A prediction's features, a missing number (NaN) told apart from a missing category (None)."""
    return {k: "NaN" if isinstance(v, float) and v != v else v for k, v in prediction.features.items()}


def test_a_missing_category_comes_back_from_the_deltas_as_none_and_the_figures_stay_the_same(monkeypatch):
    # A waiting prediction's missing category (None) was read back from the changelog as NaN, a float:
    # recovery then laid the model's columns out with that category as a number, and every later
    # prediction of the model failed to fit them (each kept as an object, four times the memory).
    import streams.join_store as join_store

    monkeypatch.setattr(join_store, "STAGED_ROWS", 2)  # rows written to the columns even in a short run
    build, messages, cut = _missing_values_config(), _missing_values_messages(), 50
    whole = build(PartitionState(0))
    expected = [whole.process([m]) for m in messages] + [whole.flush()]

    log: Log = []
    first = build(PartitionState(0, send=_record(log), full_every=499))  # deltas only: no full snapshot
    got = []
    for m in messages[:cut]:
        got.append(first.process([m]))
        first.join.store.save_snapshot(first.snapshot())
    live = first.join.store
    recovered = _replay(log)
    waiting = [(k, e[3]) for k, e in live.items() if e[2] == "p"]
    assert any(p.features["c"] is None for _, p in waiting) and any(p.features["x"] != p.features["x"]
                                                                   for _, p in waiting)
    assert [(k, _features(e[3])) for k, e in recovered.joins.items() if e[2] == "p"] == [
        (k, _features(p)) for k, p in waiting]

    second = build(recovered)
    second.restore(recovered.snapshot)
    got += [second.process([m]) for m in messages[cut:]] + [second.flush()]
    assert [(c.names, c.numeric) for c in recovered.joins._columns.values()] == [
        (c.names, c.numeric) for c in whole.join.store.joins._columns.values()]
    assert not recovered.joins._objects  # every waiting prediction in the columns, as without the restart
    pairs = [(p.prediction.prediction_id, _features(p.prediction)) for o in got for p in o.pairs]
    assert pairs == [(p.prediction.prediction_id, _features(p.prediction)) for o in expected for p in o.pairs]
    points = [p for o in got for p in o.points]
    assert {"data_quality", "feature_drift"} <= {p.measurement for p in points}
    assert _figures(points) == _figures([p for o in expected for p in o.points])
