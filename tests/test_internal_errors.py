"""The tests' guard against silent bugs (tests/internal_errors.py): an exception that the pipeline's
guards catch and count fails the test in which it happened, with its traceback, unless the test is
marked ``expects_internal_errors``; and both stages' guards report through :mod:`streams.caught`."""

from __future__ import annotations

import os
from typing import Any

import pytest

import tests.internal_errors as plugin
from streams.config import Config
from streams.evaluation import Evaluation
from streams.join import DictStore
from streams.pipeline import PREDICTION, RawMessage
from streams.runtime import pipeline_factory
from tests.conftest import REPO

pytest_plugins = ["pytester"]

GUARDED = '''
import logging

import pytest

from streams import caught


def guarded():
    try:
        raise RuntimeError("a detector bug")
    except Exception:
        caught.report(logging.getLogger("x"), "model %s: a batch could not be evaluated", "m")


@pytest.fixture
def fixture_hits_one():
    guarded()
    yield


def test_unmarked():
    guarded()


def test_in_a_fixture(fixture_hits_one):
    pass


@pytest.mark.expects_internal_errors
def test_marked():
    guarded()


def test_clean():
    pass
'''


def test_a_caught_exception_fails_its_test_unless_the_test_expects_it(pytester: pytest.Pytester,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    pytester.makepyfile(test_guarded=GUARDED)
    result = pytester.runpytest_subprocess("-p", "tests.internal_errors", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*FAILED test_guarded.py::test_unmarked*", "*FAILED test_guarded.py::test_in_a_fixture*"],
                                consecutive=False)
    out = result.stdout.str()
    assert "1 exception(s) caught by the pipeline's guards during setup and call" in out
    assert "model m: a batch could not be evaluated" in out and "RuntimeError: a detector bug" in out


def _message(pid: str, t: int) -> RawMessage:
    event = (b'{"prediction_id": "%s", "model_id": "m", "model_version": "1", "timestamp": %d, '
             b'"features": {"x": 1.0}, "prediction": 1}' % (pid.encode(), t))
    return RawMessage(PREDICTION, event, topic="predictions", offset=t)


@pytest.mark.expects_internal_errors  # a detector made to fail in each stage
def test_both_stages_report_what_they_catch(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config.from_mapping({"models": [{"id": "m", "task": "binary", "features": {"x": "numeric"},
                                           "window": {"events": 2}}]}, environ={})
    pipeline = pipeline_factory(cfg, {"m": Evaluation(cfg.models["m"], None)})(DictStore())
    since = len(plugin.REPORTED)

    def fails_once(real: Any) -> Any:
        calls: list[int] = []

        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("stage bug")
            return real(*args, **kwargs)
        return call

    with monkeypatch.context() as patch:
        patch.setattr(pipeline.monitors["m"], "add_batch", fails_once(pipeline.monitors["m"].add_batch))
        pipeline.process([_message("a", 1)])
    with monkeypatch.context() as patch:
        patch.setattr(pipeline.windows["m"], "merge", fails_once(pipeline.windows["m"].merge))
        pipeline.process([_message("b", 2)])
    assert pipeline.internal_errors == 2
    reported = plugin.REPORTED[since:]
    assert [text.splitlines()[0] for text in reported] == [
        "model m: a batch of 1 items could not be evaluated", "model m: windows could not be merged"]
    assert all("Traceback (most recent call last)" in text and "RuntimeError: stage bug" in text for text in reported)
