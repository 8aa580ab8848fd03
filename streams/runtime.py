"""Assembling a running monitor from a configuration: profiles, monitors, pipelines, sinks.

``worker`` and ``replay`` both start here, so they run the same detectors with
the same settings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from retrain.policy import PolicyEngine, PolicyError, default_rules, rules_from_config
from streams.config import Config, ConfigError, ModelConfig
from streams.evaluation import Evaluation
from streams.join import JoinStore
from streams.monitor import ModelMonitor
from streams.pipeline import Pipeline

log = logging.getLogger(__name__)


def read_profile(path: str | Path, features: Any) -> Any:
    """The reference profile in the file ``path``, checked against a model's ``features``: the one
    way the worker loads a profile (the configured reference, and a new version's from an update).

    Raises ``OSError`` (cannot read) or ``ValueError`` naming the file (not a profile, or one of
    other features: ``ProfileMismatch``)."""
    from detectors.profile import ProfileMismatch, ReferenceProfile

    path = Path(path)
    try:
        profile = ReferenceProfile.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a driftwarden profile: {exc}") from None
    try:
        profile.check_features(features)
    except ProfileMismatch as exc:
        raise ValueError(f"{path} does not match the config: {exc}") from None
    return profile


def load_profile(model: ModelConfig) -> Any | None:
    """Load and check the model's reference profile; ``None`` when the config names none."""
    if model.reference is None:
        return None
    path = Path(model.reference)
    if not path.exists():
        raise ConfigError(
            f"models[{model.id}].reference: profile not found: {path} "
            f"(build it with: driftwarden baseline --data TRAINING.csv --model {model.id} -o {path})")
    try:
        return read_profile(path, model.features)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"models[{model.id}].reference: {exc}") from None


def load_evaluations(cfg: Config) -> dict[str, Evaluation]:
    """One :class:`Evaluation` per model (loads every reference profile once)."""
    return {model_id: Evaluation(model, load_profile(model)) for model_id, model in cfg.models.items()}


def policy_rules(cfg: Config, model_id: str) -> list[Any]:
    """The model's rules: its own ``policies``, else the config's, else the documented defaults."""
    model = cfg.models[model_id]
    entries = model.policies if model.policies is not None else cfg.policies
    if entries is None:
        return default_rules()
    where = f"models[{model_id}].policies" if model.policies is not None else "policies"
    try:
        return rules_from_config(list(entries), where=where)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None


def pipeline_factory(cfg: Config, evaluations: dict[str, Evaluation] | None = None, *, registry: Any = None,
                     **monitor_options: Any) -> Callable[[JoinStore], Pipeline]:
    """A factory of per-partition pipelines sharing the loaded profiles."""
    evaluations = evaluations if evaluations is not None else load_evaluations(cfg)

    rules = {model_id: policy_rules(cfg, model_id) for model_id in evaluations}

    def build(store: JoinStore) -> Pipeline:
        monitors = {model_id: ModelMonitor(cfg.models[model_id], evaluation, registry=registry, **monitor_options)
                    for model_id, evaluation in evaluations.items()}
        policies = {model_id: PolicyEngine(rules[model_id]) for model_id in evaluations}
        return Pipeline(cfg, monitors, store, policies=policies)

    return build
