"""Times every garbage collection of a process started with this directory on ``PYTHONPATH`` and
``DRIFTWARDEN_BENCH_GC_TIMES`` naming a file (``python -m bench.spy --gc-times``).

Python imports ``sitecustomize`` at start-up, before the program, so the worker's collections are
timed from its first import on, without a line of the worker changed. ``gc.callbacks`` brackets
each collection; the file gets, as JSON, per generation the collections and their seconds, and
each full collection's (time since start, seconds, containers frozen before it), rewritten every
20 collections and at exit.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import time
from typing import Any

_PATH = os.environ.get("DRIFTWARDEN_BENCH_GC_TIMES")
_started = time.perf_counter()
_times: dict[str, Any] = {"collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0], "full": []}
_since: list[float] = [0.0]


def _write() -> None:
    assert _PATH is not None
    with open(_PATH, "w") as out:
        json.dump(_times, out)


def _timed(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _since[0] = time.perf_counter()
        return
    seconds = time.perf_counter() - _since[0]
    generation = info["generation"]
    _times["collections"][generation] += 1
    _times["seconds"][generation] += seconds
    if generation == 2:
        _times["full"].append([round(_since[0] - _started, 2), round(seconds, 4), gc.get_freeze_count()])
    if sum(_times["collections"]) % 20 == 0:
        _write()


if _PATH:
    gc.callbacks.append(_timed)
    atexit.register(_write)
