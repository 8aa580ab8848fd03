"""The feedback/prediction join: either order, exactly once, TTL on event time."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import Feedback, Prediction
from streams.join import DictStore, FeedbackJoin, JoinCounts, LabelledPair

TTL = 100.0
NOT_EVICTED = {"evicted_predictions": 0, "evicted_feedback": 0, "evicted_tombstones": 0}


def pred(pid: str, t: float = 0.0, *, model: str = "m", version: str = "1", prediction: str = "1",
         score: float | None = 0.7, attributes: dict[str, str] | None = None) -> Prediction:
    return Prediction(prediction_id=pid, model_id=model, model_version=version, timestamp=t,
                      features={"x": 1.5, "c": "a"}, prediction=prediction, score=score,
                      attributes=attributes if attributes is not None else {"sex": "F"})


def fb(pid: str, t: float = 0.0, label: str = "1", *, model: str = "m") -> Feedback:
    return Feedback(prediction_id=pid, model_id=model, timestamp=t, label=label)


def new_join(ttl: float = TTL) -> FeedbackJoin:
    return FeedbackJoin(DictStore(), ttl_seconds=ttl)


def counts(join: FeedbackJoin) -> dict[str, int]:
    return join.counts.as_dict()


def offer(join: FeedbackJoin, event: Prediction | Feedback) -> LabelledPair | None:
    """What the pipeline does: skip a duplicate prediction, else add it."""
    if isinstance(event, Prediction):
        if join.is_duplicate_prediction(event):
            return None
        return join.add_prediction(event)
    return join.add_feedback(event)


def test_prediction_then_feedback() -> None:
    join = new_join()
    p = pred("a", 10.0, attributes={"sex": "F", "race": "X"})
    assert join.add_prediction(p) is None
    pair = join.add_feedback(fb("a", 50.0, "0"))
    assert pair == LabelledPair(prediction=p, label="0", feedback_timestamp=50.0)
    assert counts(join) == {"pairs": 1, "duplicate_feedback": 0, "duplicate_predictions": 0,
                            "orphan_feedback": 0, "expired_predictions": 0, **NOT_EVICTED}


def test_feedback_then_prediction() -> None:
    join = new_join()
    assert join.add_feedback(fb("a", 5.0, "0")) is None
    p = pred("a", 3.0)
    pair = join.add_prediction(p)
    assert pair == LabelledPair(prediction=p, label="0", feedback_timestamp=5.0)
    assert join.counts.pairs == 1


def test_prediction_without_attributes_comes_back_equal() -> None:
    join = new_join()
    p = pred("a", 1.0, attributes={}, score=None)
    join.add_prediction(p)
    assert join.add_feedback(fb("a", 2.0)).prediction == p


@pytest.mark.parametrize("first", ["prediction", "feedback"])
def test_duplicate_feedback_counts_once(first: str) -> None:
    join = new_join()
    if first == "prediction":
        join.add_prediction(pred("a", 1.0))
        pairs = [join.add_feedback(fb("a", 2.0, "0")), join.add_feedback(fb("a", 3.0, "1")),
                 join.add_feedback(fb("a", 4.0, "0"))]
    else:
        pairs = [join.add_feedback(fb("a", 2.0, "0")), join.add_feedback(fb("a", 3.0, "1")),
                 join.add_prediction(pred("a", 1.0)), join.add_feedback(fb("a", 4.0, "0"))]
    made = [p for p in pairs if p is not None]
    assert len(made) == 1 and made[0].label == "0"  # the first feedback's label wins
    assert join.counts.pairs == 1
    assert join.counts.duplicate_feedback == 2


def test_duplicate_prediction_detected_and_not_restored() -> None:
    join = new_join()
    original = pred("a", 1.0, version="1")
    redelivered = pred("a", 2.0, version="2")
    assert not join.is_duplicate_prediction(original)
    join.add_prediction(original)
    assert join.is_duplicate_prediction(redelivered)
    assert join.counts.duplicate_predictions == 1
    # the pipeline skips it; the stored prediction is still the first one
    pair = join.add_feedback(fb("a", 3.0))
    assert pair is not None and pair.prediction == original
    # a redelivery after the join is a duplicate too
    assert join.is_duplicate_prediction(redelivered)
    assert join.counts.duplicate_predictions == 2
    assert join.counts.pairs == 1


def test_prediction_redelivered_after_feedback_first_join_is_a_duplicate() -> None:
    join = new_join()
    join.add_feedback(fb("a", 1.0))
    assert join.add_prediction(pred("a", 2.0)) is not None
    assert join.is_duplicate_prediction(pred("a", 2.0))
    assert offer(join, fb("a", 3.0)) is None
    assert counts(join)["duplicate_feedback"] == 1 and counts(join)["pairs"] == 1


def test_feedback_waiting_is_not_a_duplicate_prediction() -> None:
    join = new_join()
    join.add_feedback(fb("a", 1.0))
    assert not join.is_duplicate_prediction(pred("a", 2.0))
    assert join.counts.duplicate_predictions == 0


def test_feedback_for_unknown_prediction_waits_until_ttl_then_is_an_orphan() -> None:
    join = new_join()
    join.add_feedback(fb("lost", 10.0))
    join.add_prediction(pred("other", 10.0 + TTL))  # horizon = 10.0: not older than the TTL yet
    assert join.expire() == {}
    assert join.store.get("lost") is not None
    join.add_prediction(pred("other2", 10.0 + TTL + 0.5))
    assert join.expire() == {"m": 1}
    assert join.store.get("lost") is None
    assert join.counts.orphan_feedback == 1
    assert join.counts.expired_predictions == 0
    # late prediction for the expired label: waits as a fresh prediction, no pair
    assert join.add_prediction(pred("lost", 200.0)) is None


def test_prediction_never_labelled_expires() -> None:
    join = new_join()
    join.add_prediction(pred("a", 0.0, model="m1"))
    join.add_prediction(pred("b", 5.0, model="m2"))
    join.add_feedback(fb("b", 6.0, model="m2"))
    join.add_feedback(fb("z", TTL + 7.0, model="m2"))  # watermark moves; "a" (t=0) and the joined "b" are past the TTL
    assert join.expire() == {"m1": 1}
    assert counts(join) == {"pairs": 1, "duplicate_feedback": 0, "duplicate_predictions": 0,
                            "orphan_feedback": 0, "expired_predictions": 1, **NOT_EVICTED}
    assert set(dict(join.store.items())) == {"z"}


def test_expiry_is_driven_by_event_time_not_by_calls() -> None:
    join = new_join()
    join.add_prediction(pred("a", 1000.0))
    for _ in range(5):
        assert join.expire() == {}
    # an old event does not move the watermark back
    join.add_prediction(pred("old", 1.0))
    assert join.watermark == 1000.0
    assert join.expire() == {"m": 1} and join.counts.expired_predictions == 1
    assert join.store.get("old") is None and join.store.get("a") is not None


def test_feedback_after_its_prediction_expired_is_an_orphan() -> None:
    join = new_join()
    join.add_prediction(pred("a", 0.0))
    join.add_prediction(pred("b", TTL + 1.0))
    assert join.expire() == {"m": 1}
    assert join.add_feedback(fb("a", TTL + 2.0)) is None
    join.add_prediction(pred("c", 2 * TTL + 3.0))
    join.expire()
    assert join.counts.pairs == 0
    assert join.counts.expired_predictions == 2  # a, b
    assert join.counts.orphan_feedback == 1


def test_feedback_past_the_ttl_is_an_orphan_even_before_expire_runs() -> None:
    join = new_join()
    join.add_prediction(pred("a", 0.0))
    assert join.add_feedback(fb("a", TTL + 50.0)) is None
    join.expire()
    assert join.counts.pairs == 0 and join.counts.expired_predictions == 1


def test_joined_entry_keeps_duplicates_out_until_its_ttl() -> None:
    join = new_join()
    join.add_prediction(pred("a", 0.0))
    assert join.add_feedback(fb("a", 1.0)) is not None
    join.add_feedback(fb("tick", TTL))      # watermark = TTL: the joined entry (t=0) still lives
    join.expire()
    assert join.add_feedback(fb("a", TTL, "0")) is None
    assert join.is_duplicate_prediction(pred("a", TTL))
    assert join.counts.duplicate_feedback == 1 and join.counts.duplicate_predictions == 1
    # past the TTL the tombstone goes, silently (a joined entry is neither orphan nor expired)
    join.add_feedback(fb("tick2", TTL + 1.0))
    assert join.expire() == {}
    assert join.store.get("a") is None
    assert join.counts.orphan_feedback == 0 and join.counts.expired_predictions == 0
    # after that, a redelivered feedback is no longer recognised: it waits like a new label
    assert join.add_feedback(fb("a", TTL + 1.0)) is None
    assert join.counts.duplicate_feedback == 1
    assert join.waiting_label("a") == "1"


def test_entry_at_exactly_the_horizon_is_kept() -> None:
    join = new_join()
    join.add_prediction(pred("a", 0.0))
    join.add_prediction(pred("b", TTL))
    assert join.expire() == {}
    assert join.store.get("a") is not None


def test_counts_as_dict() -> None:
    c = JoinCounts(pairs=3, orphan_feedback=1)
    assert c.as_dict() == {"pairs": 3, "duplicate_feedback": 0, "duplicate_predictions": 0,
                           "orphan_feedback": 1, "expired_predictions": 0, **NOT_EVICTED}


def test_dict_store_over_a_given_mapping() -> None:
    data: dict[str, Any] = {}
    join = FeedbackJoin(DictStore(data), ttl_seconds=TTL)
    join.add_prediction(pred("a", 1.0))
    assert set(data) == {"a"}
    assert len(join.store) == 1  # type: ignore[arg-type]


# -- property: any interleaving ---------------------------------------------------------------


@st.composite
def streams_of_events(draw: Any) -> list[Prediction | Feedback]:
    n = draw(st.integers(1, 12))
    events: list[Prediction | Feedback] = []
    for i in range(n):
        pid = f"p{i}"
        for copy in range(draw(st.integers(0, 3))):
            events.append(pred(pid, float(draw(st.integers(0, 50))), version=f"v{copy}",
                               prediction=draw(st.sampled_from(["0", "1"]))))
        for _ in range(draw(st.integers(0, 3))):
            events.append(fb(pid, float(draw(st.integers(0, 50))), draw(st.sampled_from(["0", "1", "2"]))))
    return draw(st.permutations(events))


@settings(max_examples=300, deadline=None)
@given(events=streams_of_events())
def test_any_interleaving_joins_each_labelled_prediction_exactly_once(events: list[Prediction | Feedback]) -> None:
    join = new_join(ttl=1e9)
    pairs = [pair for event in events if (pair := offer(join, event)) is not None]

    first_prediction: dict[str, Prediction] = {}
    first_label: dict[str, str] = {}
    n_predictions = n_feedback = 0
    for event in events:
        if isinstance(event, Prediction):
            n_predictions += 1
            first_prediction.setdefault(event.prediction_id, event)
        else:
            n_feedback += 1
            first_label.setdefault(event.prediction_id, event.label)
    joined = set(first_prediction) & set(first_label)

    assert sorted(p.prediction.prediction_id for p in pairs) == sorted(joined)
    for pair in pairs:
        pid = pair.prediction.prediction_id
        assert pair.label == first_label[pid]
        assert pair.prediction == first_prediction[pid]
    c = join.counts
    assert c.pairs == len(joined)
    assert c.duplicate_predictions == n_predictions - len(first_prediction)
    # every feedback but the first of each id is a duplicate, except feedback for an id whose
    # prediction never came: the first waits, later ones are duplicates of it
    assert c.duplicate_feedback == n_feedback - len(first_label)

    # far in the future, everything expires: waiting labels are orphans, waiting predictions expired
    join.add_feedback(fb("clock", 1e10))
    join.expire()
    assert c.orphan_feedback == len(set(first_label) - set(first_prediction))
    assert c.expired_predictions == len(set(first_prediction) - set(first_label))
    assert c.pairs == len(joined)
    assert set(dict(join.store.items())) == {"clock"}


def test_a_quick_sweep_expires_from_the_oldest_and_leaves_out_of_order_entries_to_a_full_one() -> None:
    join = new_join()
    join.add_prediction(pred("a", 0.0))
    join.add_prediction(pred("b", 2 * TTL))  # newer, arrived before "late"
    join.add_prediction(pred("late", 1.0))   # older than b: behind it in arrival order
    join.add_prediction(pred("c", 2 * TTL + 2.0))
    assert join.expire(full=False) == {"m": 1}  # a only: the sweep stops at b, still within the TTL
    assert join.store.get("late") is not None
    assert join.expire(full=True) == {"m": 1} and join.store.get("late") is None
    assert join.counts.expired_predictions == 2 and join.store.get("b") is not None
