"""Assembling a running monitor from a configuration: profiles, monitors, pipelines, sinks.

``worker`` and ``replay`` both start here, so they run the same detectors with
the same settings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable

from retrain.policy import PolicyEngine, PolicyError, default_rules, rules_from_config
from streams.config import Config, ConfigError, ModelConfig
from streams.evaluation import Evaluation
from streams.join import JoinStore
from streams.monitor import ModelMonitor
from streams.pipeline import Merger, Pipeline, SourcePipeline
from streams.windows import ModelWindows

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


def pipeline_factory(cfg: Config, evaluations: dict[str, Evaluation] | None = None, *,
                     registry: Any = None) -> Callable[..., Pipeline]:
    """A factory of in-process two-stage pipelines (stage 1 of one source partition, whose
    partials go through the internal topic's codec into each model's stage 2), sharing the
    loaded profiles. No window figure reads a clock (the worker stamps ``throughput``/``lag``)."""
    evaluations = evaluations if evaluations is not None else load_evaluations(cfg)
    rules = {model_id: policy_rules(cfg, model_id) for model_id in evaluations}

    def build(store: JoinStore, partition: int = 0) -> Pipeline:
        return Pipeline(source_pipeline(cfg, evaluations, store, partition=partition, registry=registry),
                        model_windows(cfg, evaluations, rules, sources=(partition,), registry=registry))

    return build


def worker_factories(cfg: Config, evaluations: dict[str, Evaluation], *, sources: int, registry: Any = None
                     ) -> tuple[Callable[[JoinStore, int], SourcePipeline], Callable[[], Merger]]:
    """The worker's two stages: stage 1 of a source partition (given its join store and number),
    and stage 2 of a partition of the internal topic (every model's windows, expecting partials
    from ``sources`` source partitions), sharing the loaded profiles."""
    rules = {model_id: policy_rules(cfg, model_id) for model_id in evaluations}

    def stage_one(store: JoinStore, partition: int) -> SourcePipeline:
        return source_pipeline(cfg, evaluations, store, partition=partition, registry=registry)

    def stage_two() -> Merger:
        return Merger(model_windows(cfg, evaluations, rules, sources=range(sources), registry=registry))

    return stage_one, stage_two


def source_pipeline(cfg: Config, evaluations: dict[str, Evaluation], store: JoinStore, *, partition: int = 0,
                    registry: Any = None) -> SourcePipeline:
    """Stage 1 of one source partition."""
    monitors = {model_id: ModelMonitor(cfg.models[model_id], evaluation, registry=registry)
                for model_id, evaluation in evaluations.items()}
    return SourcePipeline(cfg, monitors, store, partition=partition)


def model_windows(cfg: Config, evaluations: dict[str, Evaluation], rules: dict[str, list[Any]] | None = None, *,
                  sources: Iterable[int] = (0,), registry: Any = None) -> dict[str, ModelWindows]:
    """Stage 2 of every model, expecting partials from ``sources`` (source partitions)."""
    rules = rules if rules is not None else {model_id: policy_rules(cfg, model_id) for model_id in evaluations}
    sources = tuple(sources)
    return {model_id: ModelWindows(cfg.models[model_id], evaluation, sources=sources,
                                   policy=PolicyEngine(rules[model_id]), registry=registry,
                                   label_ttl=cfg.join.ttl_seconds)
            for model_id, evaluation in evaluations.items()}


MMAP_THRESHOLD_BYTES = 1024 * 1024
"""Allocations at least this large get their own pages from the kernel (:func:`release_large_blocks`)."""


def release_large_blocks() -> bool:
    """Make glibc give every allocation of 1 MiB or more its own mapping, returned to the kernel when
    freed; false where there is no glibc (the setting is then the platform's).

    glibc raises its ``mmap`` threshold each time such a block is freed (up to 32 MiB), so after the
    first the join table's periodic arrays — a rebuilt index, a grown column, a full snapshot's
    buffers, tens of MB at a million entries — come from the heap, and the heap keeps the peak:
    RSS grew ~60 bytes per prediction more than the table holds (``python -m bench.memory``).
    A fixed threshold (``mallopt(M_MMAP_THRESHOLD)``, which also stops the raising) keeps RSS to what
    is live. Called once when a worker (or replay, or the memory benchmark) starts: it is
    process-wide, so a library import must not do it."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(-3, MMAP_THRESHOLD_BYTES))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False

