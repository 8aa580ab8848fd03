"""The command line: help for every option, exit codes, error messages that name the flag or file,
``init``, the Kafka reachability check and the kafka-python log filter.

Oracles: argparse's own parser objects (every action, every subcommand), the
files ``init`` writes read back with the config loader and compared with what
``driftwarden baseline`` makes of the same training data, and sockets opened by
the test.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from streams.broker import DEFAULT_CONNECT_TIMEOUT, KafkaUnreachable, free_port, require_kafka
from streams.cli import _CancelledOnClose, build_parser, main
from streams.config import Config, KafkaConfig, example_config_path
from streams.errors import EXIT_NO_VALID_INPUT, EXIT_UNREACHABLE, EXIT_USAGE
from streams.runtime import load_profile

COMMANDS = ("demo", "init", "broker", "worker", "baseline", "replay", "simulate", "retrain-worker")


def subcommands() -> dict[str, object]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(action.choices)  # type: ignore[attr-defined]


# -- help ---------------------------------------------------------------------------------------------

def test_every_command_has_a_summary_and_a_description() -> None:
    found = subcommands()
    assert set(found) == set(COMMANDS)
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    summaries = {choice.dest: choice.help for choice in action._choices_actions}  # type: ignore[attr-defined]
    for name, sub in found.items():
        assert summaries.get(name), f"{name}: no one-line summary in `driftwarden --help`"
        assert sub.description and len(sub.description) > 40, f"{name}: no description"  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help(command: str) -> None:
    sub = subcommands()[command]
    for action in sub._actions:  # type: ignore[attr-defined]
        if action.dest == "help":
            continue
        assert action.help and action.help.strip(), f"{command} {'/'.join(action.option_strings) or action.dest}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_lists_the_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    for code in ("0  done", "2  usage or configuration error", "3  a service is unreachable", "4  no valid input"):
        assert code in out, f"{command} --help lacks {code!r}"


def test_top_level_help_lists_the_exit_codes_and_init(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "4  no valid input" in out
    assert "driftwarden init demo/" in out


def test_readme_documents_every_command_and_option() -> None:
    """README "Commands" is the reference a newcomer reads: every option of every command is there."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Commands"):]
    section = section[:section.index("\n## ", 5)]
    for command, sub in subcommands().items():
        assert f"driftwarden {command}" in section, command
        for action in sub._actions:  # type: ignore[attr-defined]
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert f"`{option}" in section, f"README Commands: {command} {option} is not documented"
    for code in ("`0`", "`2`", "`3`", "`4`"):
        assert code in section, f"README Commands: exit code {code} is not documented"


# -- errors name the flag or the file ----------------------------------------------------------------

def test_a_missing_config_file_names_the_flag_and_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    for command in ("worker", "retrain-worker", "replay"):
        extra = ["--predictions", str(missing), "-o", str(tmp_path)] if command == "replay" else []
        assert main([command, "-c", str(missing), *extra]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "-c/--config" in err and f"file not found: {missing}" in err, err
        assert "configuration error" not in err


def test_a_missing_input_file_of_replay_names_its_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(example_config_path().read_text())
    assert main(["replay", "-c", str(cfg), "--predictions", str(tmp_path / "p.jsonl"), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--predictions" in err and "file not found" in err and "p.jsonl" in err, err
    assert "configuration error" not in err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `driftwarden init` writes, once for the module."""
    directory = tmp_path_factory.mktemp("init") / "ws"
    assert main(["init", str(directory)]) == 0
    return directory


def test_replay_of_a_file_whose_every_line_is_rejected_exits_4(workspace: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('not json\n{"prediction_id": "a"}\n[1, 2]\n')
    out = tmp_path / "out"
    assert main(["replay", "-c", str(workspace / "driftwarden.yaml"), "--predictions", str(predictions),
                 "-o", str(out)]) == EXIT_NO_VALID_INPUT
    err = capsys.readouterr().err
    assert "no valid input" in err and "all 3 lines" in err and "dead_letters.jsonl" in err, err
    reasons = [json.loads(line)["reason"] for line in (out / "dead_letters.jsonl").read_text().splitlines()]
    assert len(reasons) == 4  # the array's two elements are rejected one by one


def test_replay_with_one_valid_line_exits_0(workspace: Path, tmp_path: Path) -> None:
    predictions = tmp_path / "p.jsonl"
    event = {"prediction_id": "p1", "model_id": "credit-risk", "model_version": "1", "timestamp": 1_700_000_000,
             "features": {"age": 40, "income": 50_000.0, "debt_ratio": 0.3, "tenure_months": 12.0,
                          "num_accounts": 2.0, "channel": "web", "region": "north", "employment": "salaried"},
             "prediction": 1, "score": 0.7, "attributes": {"sex": "F", "race": "Asian"}}
    predictions.write_text("not json\n" + json.dumps(event) + "\n")
    assert main(["replay", "-c", str(workspace / "driftwarden.yaml"), "--predictions", str(predictions),
                 "-o", str(tmp_path / "out")]) == 0


def test_baseline_with_a_wrong_target_is_a_data_error_listing_the_columns(
        workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = workspace / "credit-risk-train.csv"
    assert main(["baseline", "--data", str(data), "--model", "m", "--target", "outcome",
                 "-o", str(tmp_path / "p.json")]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "data error" in err and "--target" in err and "'outcome'" in err, err
    header = data.read_text().splitlines()[0].split(",")
    assert err.endswith(", ".join(header)), err  # every column, in the file's order
    assert "configuration error" not in err


def test_baseline_of_a_missing_file_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["baseline", "--data", str(tmp_path / "t.csv"), "--model", "m", "-o", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "file not found" in err and "configuration error" not in err, err


# -- init -----------------------------------------------------------------------------------------------

def test_init_writes_a_config_the_worker_accepts_with_the_baseline_profile(workspace: Path, tmp_path: Path) -> None:
    cfg = Config.load(workspace / "driftwarden.yaml", environ={})
    assert list(cfg.models) == ["credit-risk"]
    assert cfg.kafka.bootstrap == "127.0.0.1:9092" and cfg.influx.enabled is False
    profile = load_profile(cfg.models["credit-risk"])  # the worker's own start-up check
    assert profile is not None and profile.n == 20_000
    # the profile is what `driftwarden baseline` makes of the training data init wrote beside it
    again = tmp_path / "again.json"
    assert main(["baseline", "--data", str(workspace / "credit-risk-train.csv"), "--model", "credit-risk",
                 "--target", "label", "--prediction", "prediction", "--score", "score", "--attributes", "sex,race",
                 "-o", str(again)]) == 0
    assert json.loads(again.read_text()) == json.loads((workspace / "profiles" / "credit-risk.json").read_text())
    # same models, features and policies as the shipped example
    example = yaml.safe_load(example_config_path().read_text())
    written = yaml.safe_load((workspace / "driftwarden.yaml").read_text())
    assert written["policies"] == example["policies"]
    assert written["models"][0]["features"] == example["models"][0]["features"]


def test_init_refuses_to_overwrite_without_force(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (workspace / "driftwarden.yaml").read_text()
    assert main(["init", str(workspace)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "driftwarden.yaml exists" in err and "--force" in err, err
    assert (workspace / "driftwarden.yaml").read_text() == before


def test_init_with_options_points_the_config_at_them(tmp_path: Path) -> None:
    directory = tmp_path / "ws"
    directory.mkdir()
    (directory / "driftwarden.yaml").write_text("old")
    assert main(["init", str(directory), "--bootstrap", "kafka-1:9092", "--influx-url", "http://influx:8086",
                 "--force"]) == 0
    cfg = Config.load(directory / "driftwarden.yaml", environ={})
    assert cfg.kafka.bootstrap == "kafka-1:9092"
    assert cfg.influx.enabled is True and cfg.influx.url == "http://influx:8086"


# -- reaching Kafka --------------------------------------------------------------------------------------

def test_default_connect_timeout_keeps_a_command_under_ten_seconds() -> None:
    assert KafkaConfig().connect_timeout_seconds == DEFAULT_CONNECT_TIMEOUT <= 8.0
    assert Config.load(example_config_path(), environ={}).kafka.connect_timeout_seconds == DEFAULT_CONNECT_TIMEOUT


def test_require_kafka_waits_its_timeout_then_names_the_address_and_what_to_do() -> None:
    port = free_port()  # nobody listens on it
    started = time.monotonic()
    with pytest.raises(KafkaUnreachable) as caught:
        require_kafka(f"127.0.0.1:{port}", timeout=1.0)
    assert time.monotonic() - started >= 1.0  # a refused connection is retried until the timeout
    message = str(caught.value)
    assert "\n" not in message
    assert f"127.0.0.1:{port}" in message and "within 1 s" in message and "connection refused" in message
    assert "driftwarden broker" in message and "DRIFTWARDEN_KAFKA_BOOTSTRAP" in message
    assert "kafka.connect_timeout_seconds" in message


def test_require_kafka_waits_for_a_broker_that_is_still_starting() -> None:
    port = free_port()
    listening = threading.Event()
    server = socket.socket()

    def listen_later() -> None:
        time.sleep(0.5)  # not an assertion's timing: the check must simply outlast it
        server.bind(("127.0.0.1", port))
        server.listen()
        listening.set()

    thread = threading.Thread(target=listen_later)
    thread.start()
    try:
        require_kafka(f"127.0.0.1:{port}", timeout=60.0)
        assert listening.is_set()
    finally:
        thread.join()
        server.close()


def test_require_kafka_accepts_any_of_several_bootstrap_servers() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        good = server.getsockname()[1]
        require_kafka(f"127.0.0.1:{free_port()},PLAINTEXT://127.0.0.1:{good}", timeout=5.0)


def test_simulate_exits_3_with_one_line_when_kafka_is_unreachable(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    raw = yaml.safe_load(example_config_path().read_text())
    raw["kafka"].update(bootstrap=f"127.0.0.1:{free_port()}", connect_timeout_seconds=0.5)
    raw["models"][0]["reference"] = None
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["simulate", "-c", str(cfg), "--events", "10"]) == EXIT_UNREACHABLE
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("driftwarden simulate: cannot reach Kafka at 127.0.0.1:"), lines


# -- kafka-python's close-time cancellation is not an error -------------------------------------------

def _record(level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("kafka.cluster", level, __file__, 1, msg, args, None)


def test_a_cancelled_metadata_refresh_is_demoted_and_other_errors_pass() -> None:
    from kafka.errors import Cancelled, KafkaConnectionError

    demote = _CancelledOnClose()
    logging.getLogger("kafka.cluster").setLevel(logging.ERROR)
    cancelled = _record(logging.ERROR, "Metadata refresh: failed %s", Cancelled())
    assert demote.filter(cancelled) is False and cancelled.levelname == "INFO"
    refused = _record(logging.ERROR, "Metadata refresh: failed %s", KafkaConnectionError("111 ECONNREFUSED"))
    assert demote.filter(refused) is True and refused.levelname == "ERROR"
    logging.getLogger("kafka.cluster").setLevel(logging.DEBUG)  # -v: shown, as INFO
    try:
        again = _record(logging.ERROR, "Metadata refresh: failed %s", Cancelled())
        assert demote.filter(again) is True and again.levelno == logging.INFO
    finally:
        logging.getLogger("kafka.cluster").setLevel(logging.NOTSET)
