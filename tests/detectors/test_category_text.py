"""One rule turns a value into class/category text, wherever the value comes from (regression: a
training profile stored a boolean category as ``'True'`` while a live JSON ``true`` became
``'true'``, so every boolean feature or label looked unseen)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detectors.profile import ReferenceProfile, as_class_labels, category_text
from retrain.job import ModelSpec
from retrain.trainers import prepare_frame
from streams.events import ModelSchema, parse_feedback, parse_predictions
from streams.join import LabelledPair
from streams.retrain_service import pairs_frame

EVENT = (b'{"prediction_id": "a", "model_id": "m", "model_version": "1", "timestamp": 1, '
         b'"features": {"member": true, "tier": 2.0}, "prediction": true, "attributes": {"vip": false}}')


def test_a_boolean_is_the_same_category_in_the_profile_the_parser_the_trainer_and_the_retrain_frame() -> None:
    train = pd.DataFrame({"member": np.array([True, False] * 50), "tier": [1, 2] * 50,
                          "label": [True, False] * 50})
    profile = ReferenceProfile.from_frame(train, model_id="m", features={"member": "categorical",
                                                                         "tier": "categorical"}, target="label")
    (event,), rejected = parse_predictions(EVENT, {"m": ModelSchema(features={"member": "categorical",
                                                                              "tier": "categorical"})})
    assert not rejected
    (feedback,), _ = parse_feedback(b'{"prediction_id": "a", "model_id": "m", "timestamp": 2, "label": false}',
                                    {"m": ModelSchema(features={})})
    # the live values are categories and classes the reference has
    assert event.features["member"] in profile.categorical["member"].counts
    assert event.features["tier"] in profile.categorical["tier"].counts
    assert event.prediction in profile.labels and feedback.label in profile.labels
    assert set(profile.labels) == {"true", "false"} and event.attributes == {"vip": "false"}
    # the trainer and the retrain worker's frame spell them the same way
    assert list(prepare_frame(train.head(2), [], ["member"])["member"]) == ["true", "false"]
    spec = ModelSpec(id="m", features={"member": "categorical", "tier": "categorical"})
    frame = pairs_frame([LabelledPair(event, feedback.label, 2.0)], spec)
    assert (frame["member"][0], frame["tier"][0], frame["label"][0], frame["prediction"][0]) == \
        ("true", "2", "false", "true")


def test_the_rule_by_hand() -> None:
    values = [True, np.bool_(False), 3, np.int64(4), 1.0, np.float64(2.5), "x", None, float("nan"), pd.NA]
    assert [category_text(v) for v in values] == ["true", "false", "3", "4", "1", "2.5", "x", None, None, None]
    for array in (np.array([True, False]), np.array([1.0, np.nan]), np.array([1, 2]),
                  np.array([True, None, 2.0, "y"], dtype=object)):
        assert list(as_class_labels(array)) == [category_text(v) for v in array.tolist()]
