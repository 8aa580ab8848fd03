"""The worker imports Evidently ahead of a first retrain job's report, in the background, only when
a rule can request a job: the import (about 10 s of a loaded machine) was most of the wait from a
drift alert to its retrain job."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

import detectors.report
from bench.world import write_workspace
from streams.actions import Actions
from streams.config import Config

NO_RETRAIN = ({"name": "feature-drift", "severity": "warning",
               "conditions": [{"measurement": "feature_drift", "tags": {"method": "psi"}, "field": "drift",
                               "op": "==", "threshold": True}]},)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return Config.load(str(write_workspace(tmp_path_factory.mktemp("preload") / "ws", bootstrap="127.0.0.1:9",
                                           influx_url=None)))


def test_a_rule_that_retrains_starts_the_import_in_a_background_thread(config: Config,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    imported = threading.Event()
    monkeypatch.setattr(detectors.report, "import_evidently", imported.set)
    thread = Actions(config, {}).preload_reports()
    assert thread is not None and thread.daemon and thread is not threading.current_thread()
    thread.join(timeout=60)
    assert imported.is_set()


def test_without_a_rule_that_retrains_nothing_is_imported(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    imported = threading.Event()
    monkeypatch.setattr(detectors.report, "import_evidently", imported.set)
    models = {model_id: replace(model, policies=None) for model_id, model in config.models.items()}
    assert Actions(replace(config, policies=NO_RETRAIN, models=models), {}).preload_reports() is None
    assert not imported.is_set()


def test_a_failed_import_is_logged_not_raised(config: Config, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise ImportError("no evidently here")

    monkeypatch.setattr(detectors.report, "import_evidently", broken)
    thread = Actions(config, {}).preload_reports()
    assert thread is not None
    thread.join(timeout=60)
    assert "retrain jobs will have no report" in caplog.text


def test_import_evidently_imports_what_a_report_uses() -> None:
    import sys

    detectors.report.import_evidently()
    assert {"evidently", "evidently.presets", "evidently.core.metric_types",
            "evidently.legacy.renderers.html_widgets"} <= set(sys.modules)
