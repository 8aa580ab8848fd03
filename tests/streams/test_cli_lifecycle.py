"""Starting and stopping the commands as a user does: in subprocesses.

- every service command on a broker nobody listens on exits 3 with one line,
  honouring ``kafka.connect_timeout_seconds``;
- a worker started on what ``driftwarden init`` wrote starts with no ERROR line
  and stops on SIGTERM with exit 0;
- Ctrl-C in ``driftwarden demo`` (SIGINT to its whole process group, as a
  terminal sends it) stops the simulator, the workers, then the broker, with no
  ERROR line or traceback, and leaves nothing running.

Waits are for conditions (a line in the output, a process's exit) with generous
deadlines; the only figures checked against the clock are upper bounds far
from what the code needs, and far below what it took before (31 s to fail on an
unreachable broker, 40 s to stop the demo).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml

from streams.broker import EmbeddedBroker, free_port
from streams.errors import EXIT_UNREACHABLE

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    # the code under test is this checkout's (as tests/conftest.py's WorkerProcess does)
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1"}


def _cli(*args: str, timeout: float = 120.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=str(cwd) if cwd else None)


class Lines:
    """A subprocess's merged output, read by a thread, waited on line by line."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (not self._thread.is_alive() and seen == len(self.lines)):
                    return None
                self._changed.wait(min(remaining, 1.0))

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def unreachable_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `driftwarden init` writes, pointed at a port nobody listens on, with a 1 s connect timeout."""
    directory = tmp_path_factory.mktemp("unreachable")
    assert _cli("init", str(directory), "--bootstrap", f"127.0.0.1:{free_port()}").returncode == 0
    path = directory / "driftwarden.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["kafka"]["connect_timeout_seconds"] = 1
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("command", ["worker", "retrain-worker", "simulate"])
def test_a_command_on_an_unreachable_broker_exits_3_with_one_line(command: str, unreachable_config: Path) -> None:
    started = time.monotonic()
    done = _cli(command, "-c", str(unreachable_config), timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == EXIT_UNREACHABLE, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    bootstrap = yaml.safe_load(unreachable_config.read_text())["kafka"]["bootstrap"]
    assert lines[0].startswith(f"driftwarden {command}: cannot reach Kafka at {bootstrap} within 1 s"), lines
    assert "driftwarden broker" in lines[0] and "DRIFTWARDEN_KAFKA_BOOTSTRAP" in lines[0]
    # the configured 1 s, not kafka-python's ~30 s of retries: a bound no loaded machine comes near
    assert elapsed < 25, f"{command} took {elapsed:.1f}s to give up"


def test_a_worker_on_the_init_config_starts_without_an_error_and_stops_on_sigterm(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    directory = tmp_path / "ws"
    made = _cli("init", str(directory), "--bootstrap", broker.bootstrap)
    assert made.returncode == 0, made.stderr
    # its own topics and group, so that it sees no other test's traffic
    config = directory / "driftwarden.yaml"
    raw = yaml.safe_load(config.read_text())
    suffix = tmp_path.name[-12:].replace("_", "-")
    raw["kafka"]["topics"] = {k: f"{v}-{suffix}" for k, v in raw["kafka"]["topics"].items()}
    raw["kafka"]["group_id"] = f"init-{suffix}"
    config.write_text(yaml.safe_dump(raw))
    process = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "-c", str(config)], env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(directory))
    output = Lines(process)
    try:
        assigned = output.wait_for(lambda line: "PARTITIONS assigned" in line, timeout=180)
        assert assigned, f"the worker did not start consuming:\n{output.text()}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.text()
    assert "driftwarden worker stopped" in text
    # No ERROR line on a normal start (kafka-python's close-time "Metadata refresh: failed Cancelled"
    # used to be one; so was, on a loaded machine, "Error receiving network data" from a start-up
    # reader's close racing its IO thread: tests/streams/test_kafka_close.py). The stop is checked by
    # its exit code.
    started = text[:text.index("PARTITIONS assigned")]
    errors = [line for line in started.splitlines() if " ERROR " in line or "Traceback" in line]
    assert not errors, text


def _listening(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_ctrl_c_in_the_demo_stops_simulator_workers_then_broker_cleanly(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    process = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "demo", "--workdir", str(workdir), "--rate", "500"], env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    output = Lines(process)
    try:
        window = output.wait_for(lambda line: line.startswith("[worker] WINDOW"), timeout=240)
        assert window, f"the demo printed no window:\n{output.text()}"
        bootstrap_line = output.wait_for(lambda line: line.startswith("embedded broker on "), timeout=1)
        assert bootstrap_line
        bootstrap = re.match(r"embedded broker on (\S+);", bootstrap_line).group(1)  # type: ignore[union-attr]
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        interrupted = time.monotonic()
        code = process.wait(timeout=120)
        took = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # every line of the children is in WORKDIR/NAME.log (the demo echoes a traceback's first line only):
    # a failure below shows them whole
    logs = {name: workdir / f"{name}.log" for name in ("worker", "retrain")}
    text = output.text() + "".join(f"\n--- {path}:\n{path.read_text(errors='replace')}" for path in logs.values()
                                   if path.exists())
    assert code == 0, text
    assert "driftwarden worker stopped" in logs["worker"].read_text(errors="replace"), text
    lines = output.text().splitlines()
    stopping = next((i for i, line in enumerate(lines) if line.startswith("stopping:")), len(lines))
    # a normal start logs no ERROR line; the stop leaves no client without its broker (ECONNREFUSED,
    # "socket disconnected") and no producer unflushed (the atexit KafkaTimeoutError traceback)
    problems = [line for line in lines[:stopping] if " ERROR " in line or "Traceback" in line]
    problems += [line for line in lines[stopping:] if "ECONNREFUSED" in line or "socket disconnected" in line
                 or "Exception ignored" in line or "KafkaTimeoutError" in line]
    assert not problems, text
    # the retrain worker may still be importing when the demo is interrupted ("stopped while starting")
    order = ["stopping: the simulator, then the workers, then the broker", "  simulator stopped",
             "  worker stopped (exit 0)", "  retrain stopped", "  broker stopped", "demo stopped after"]
    at = [next((i for i, line in enumerate(lines) if line.startswith(step)), -1) for step in order]
    assert -1 not in at and at == sorted(at), f"stop steps out of order or missing: {dict(zip(order, at))}\n{text}"
    assert any(line in ("  retrain stopped (exit 0)", "  retrain stopped while starting") for line in lines), text
    worker_stopped = next(i for i, line in enumerate(lines) if line.startswith("[worker] driftwarden worker stopped"))
    assert at[1] < worker_stopped < at[4], "the worker flushed its summary after the broker stopped"
    assert not _listening(bootstrap), "the demo's broker still listens"
    assert not _processes_mentioning(str(workdir)), "a child of the demo is still running"
    # the demo's budget is 8 s plus its loop's poll and the interpreter's exit; before, 40 s and tracebacks
    assert took < 30, f"the demo took {took:.1f}s to stop"
