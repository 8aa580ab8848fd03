"""``driftwarden broker``, ``baseline`` and ``init``, and the workspace (config and reference profile)
that ``init``, the demo and the tests write the same way (:func:`prepare_workspace`)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import yaml

from streams.broker import EmbeddedBroker, all_topics, create_topics
from streams.config import Config, ConfigError, Topics, example_config_path
from streams.errors import NoValidInput, UsageError

log = logging.getLogger(__name__)


def run_broker(port: int, config_path: str | None, partitions: int | None) -> int:
    """Run Tansu on loopback until Ctrl-C/SIGTERM; create the configured topics."""
    cfg = Config.load(config_path) if config_path else None
    topics = cfg.kafka.topics if cfg else Topics()
    parts = partitions or (cfg.kafka.partitions if cfg else 1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedBroker(port=port) as broker:
        created = create_topics(broker.bootstrap, all_topics(topics), parts)
        print(f"embedded broker (Tansu) listening on {broker.bootstrap}; topics: {', '.join(all_topics(topics))}"
              f" ({len(created)} created, {parts} partition(s) each). Ctrl-C stops it.", flush=True)
        try:
            while not stop.wait(0.5):
                if not broker.running:
                    print("driftwarden: the broker exited unexpectedly", flush=True)
                    return 1
        except KeyboardInterrupt:
            pass
    print("broker stopped", flush=True)
    return 0


def read_table(path: str | Path) -> pd.DataFrame:
    """Read training data from CSV or Parquet (by extension); errors name ``--data``."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--data: file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt", ".gz"):
            return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise NoValidInput(f"--data: {path} is empty") from None
    except (ValueError, OSError) as exc:
        raise UsageError(f"--data: cannot read {path}: {exc}") from None
    raise UsageError(f"--data: expected a .csv or .parquet file, got {path.name}")


def check_columns(frame: pd.DataFrame, data: str | Path, flags: Mapping[str, list[str]]) -> None:
    """Raise a data error naming the first flag (``--target``, ...) whose column ``frame`` lacks, with
    the columns it has."""
    for flag, names in flags.items():
        missing = [name for name in names if name not in frame.columns]
        if missing:
            quoted = ", ".join(repr(m) for m in missing)
            raise UsageError(
                f"data error: {flag} names {'a column' if len(missing) == 1 else 'columns'} {quoted} that "
                f"{Path(data).name} does not have; pass {flag} one of its columns: "
                f"{', '.join(map(str, frame.columns))}")


def build_profile(frame: pd.DataFrame, *, model_id: str, features: Mapping[str, str] | None = None,
                  target: str | None = None, prediction: str | None = None, score: str | None = None,
                  attributes: tuple[str, ...] = (), task: str = "binary", bins: int = 10) -> Any:
    from detectors.profile import ProfileMismatch, ReferenceProfile

    try:
        return ReferenceProfile.from_frame(frame, model_id=model_id, features=features, target=target,
                                           prediction=prediction, score=score, attributes=attributes,
                                           task=task, bins=bins)
    except ProfileMismatch as exc:
        raise ConfigError(str(exc)) from None


def write_profile(profile: Any, output: str | Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(profile.to_dict(), indent=1, allow_nan=False), encoding="utf-8")
    return output


def run_baseline(args: Any) -> int:
    frame = read_table(args.data)
    if frame.empty:
        raise NoValidInput(f"--data: {args.data} has a header but no rows")
    attributes = tuple(a for a in args.attributes.split(",") if a)
    feature_items = [item.partition(":") for item in args.features.split(",") if item] if args.features else []
    check_columns(frame, args.data, {
        "--target": [args.target] if args.target else [],
        "--prediction": [args.prediction] if args.prediction else [],
        "--score": [args.score] if args.score else [],
        "--attributes": list(attributes),
        "--features": [name for name, _, _ in feature_items],
    })
    features: dict[str, str] | None = None
    if feature_items:
        features = {}
        for name, _, kind in feature_items:
            if kind and kind not in ("numeric", "categorical"):
                raise UsageError(f"--features: {name}:{kind}: the type is numeric or categorical")
            features[name] = kind or ("numeric" if pd.api.types.is_numeric_dtype(frame[name]) else "categorical")
    profile = build_profile(frame, model_id=args.model, features=features, target=args.target,
                            prediction=args.prediction, score=args.score, attributes=attributes,
                            task=args.task, bins=args.bins)
    path = write_profile(profile, args.output)
    kinds = profile.feature_types
    print(f"wrote {path}: model {args.model}, {profile.n} rows, {len(kinds)} features "
          f"({sum(k == 'numeric' for k in kinds.values())} numeric, "
          f"{sum(k == 'categorical' for k in kinds.values())} categorical)")
    print("features for the config:\n  features: {" + ", ".join(f"{k}: {v}" for k, v in kinds.items()) + "}")
    return 0


INIT_MODEL = "credit-risk"
"""The model ``driftwarden init`` writes a config and a profile for: the simulator's."""


def run_init(args: Any) -> int:
    """``driftwarden init DIR``: the example config, the simulated model's training data and its
    reference profile, written by :func:`prepare_workspace` (as for the demo and the tests)."""
    directory = Path(args.directory)
    config = directory / "driftwarden.yaml"
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"DIR: {directory} exists and is not a directory")
    if config.exists() and not args.force:
        raise UsageError(f"{config} exists: pass --force to overwrite it (and the profile), or choose another DIR")
    written = prepare_workspace(directory, bootstrap=args.bootstrap, influx_url=args.influx_url,
                                models=(INIT_MODEL,))
    influx = f"points to {args.influx_url}" if args.influx_url else "influx.enabled: false (--influx-url sets one)"
    print(f"wrote {written}: the example configuration (kafka.bootstrap {args.bootstrap}; {influx})")
    print(f"wrote {directory / f'{INIT_MODEL}-train.csv'}: 20,000 rows of the simulated {INIT_MODEL} model's "
          "training data")
    print(f"wrote {directory / 'profiles' / f'{INIT_MODEL}.json'}: its reference profile, as\n  "
          + baseline_command(directory / f"{INIT_MODEL}-train.csv", INIT_MODEL,
                             directory / "profiles" / f"{INIT_MODEL}.json"))
    print("next (each in its own terminal):\n"
          f"  driftwarden broker -c {written}\n"
          f"  driftwarden worker -c {written}\n"
          f"  driftwarden retrain-worker -c {written}\n"
          f"  driftwarden simulate -c {written} --rate 500 --change-after 20000")
    return 0


def baseline_command(data: Path, model_id: str, output: Path) -> str:
    """The ``driftwarden baseline`` command that builds the simulated model's profile from ``data``."""
    from streams.simulate import ATTRIBUTES

    return (f"driftwarden baseline --data {data} --model {model_id} --target label --prediction prediction "
            f"--score score --attributes {','.join(ATTRIBUTES)} -o {output}")


def example_config(*, bootstrap: str, influx_url: str | None = None) -> dict[str, Any]:
    """The shipped example configuration as a mapping, pointed at ``bootstrap`` and, when given,
    at ``influx_url`` (else with the InfluxDB sink off)."""
    raw: dict[str, Any] = yaml.safe_load(example_config_path().read_text(encoding="utf-8"))
    raw["kafka"]["bootstrap"] = bootstrap
    if influx_url:
        raw["influx"]["url"] = influx_url
    else:
        raw["influx"]["enabled"] = False
    return raw


def prepare_workspace(
    workdir: Path,
    *,
    bootstrap: str,
    influx_url: str | None = None,
    models: tuple[str, ...] = ("credit-risk",),
    overrides: Mapping[str, Any] | None = None,
    seed: int = 7,
) -> Path:
    """Write a config (the shipped example, adapted) and reference profiles built from the
    simulator's training data into ``workdir``; return the config path. Used by the demo and the tests."""
    from streams.simulate import CreditRiskWorld

    workdir.mkdir(parents=True, exist_ok=True)
    raw = example_config(bootstrap=bootstrap, influx_url=influx_url)
    template = raw["models"][0]
    raw["models"] = []
    for i, model_id in enumerate(models):
        model = {**template, "id": model_id, "reference": f"profiles/{model_id}.json"}
        raw["models"].append(model)
        write_simulated_profile(workdir / "profiles" / f"{model_id}.json", model_id, seed + i)
        CreditRiskWorld(seed + i).training_frame(20_000).to_csv(workdir / f"{model_id}-train.csv", index=False)
    for key, value in (overrides or {}).items():
        _set_path(raw, key, value)
    path = workdir / "driftwarden.yaml"
    header = ("# Written from driftwarden's example configuration (streams/examples/driftwarden.yaml in the\n"
              "# package, with comments on every key); README \"Configuration\" explains the rest.\n"
              "# Each model's reference profile was built from its training data <model>-train.csv here:\n#   "
              + baseline_command(Path(f"{models[0]}-train.csv"), models[0], Path(f"profiles/{models[0]}.json"))
              + "\n")
    path.write_text(header + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested mapping; ``models.*.x`` sets ``x`` on every model."""
    head, _, rest = dotted.partition(".")
    if head == "*" and isinstance(raw, list):
        for item in raw:
            _set_path(item, rest, value)
        return
    if not rest:
        raw[head] = value
        return
    target = raw.setdefault(head, {})
    _set_path(target, rest, value)  # type: ignore[arg-type]


def write_simulated_profile(output: Path, model_id: str = "credit-risk", seed: int = 7) -> Path:
    """The reference profile of the simulator's model (its training data), for images and examples."""
    from streams.simulate import ATTRIBUTES, FEATURES, CreditRiskWorld

    frame = CreditRiskWorld(seed).training_frame(20_000)
    profile = build_profile(frame, model_id=model_id, features=FEATURES, target="label",
                            prediction="prediction", score="score", attributes=ATTRIBUTES)
    return write_profile(profile, output)


if __name__ == "__main__":  # python -m streams.commands PROFILE.json (used by the Dockerfile)
    import sys

    print(f"wrote {write_simulated_profile(Path(sys.argv[1]))}")
