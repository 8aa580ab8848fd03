"""whylogs profiling the benchmark's events, run by whylogs' own interpreter (a separate venv).

whylogs 1.6.4 needs ``numpy<2`` (it uses ``np.unicode_``) and pins old dependencies, so it does not
go into driftwarden's venv; :func:`bench.alternatives.whylogs_monitor` runs this module as
``WHYLOGS_PYTHON -m bench.whylogs_profile`` with the repository on ``PYTHONPATH`` and a JSON job on
stdin, and reads one JSON result from stdout. It imports only :mod:`bench.consumer` of the
repository (no numpy/pandas/driftwarden versions of the parent), plus whylogs and pandas.

The monitor: the same consumer loop and decoding as the other alternatives; the predictions'
features and predicted class gathered into windows of ``window`` rows (the Evidently monitor's
size), each window a pandas frame profiled with ``why.log(frame)`` — whylogs' documented batch
path (its per-row ``DatasetProfile.track(row=...)`` costs ~6× more per row here) — and its
``DatasetProfileView`` kept, as a monitor that writes a profile per window would.

``python -m bench.whylogs_profile --check`` imports what a run needs and prints whylogs' version
(the parent's probe).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from bench.consumer import Windows, read_topics, windowed_rates

os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")  # no usage-statistics call home from a benchmark


class WhylogsWindows:
    """Windows of ``size`` predictions → ``why.log(frame).view()``; ``columns`` in each frame."""

    def __init__(self, columns: list[str], size: int = 1000) -> None:
        import pandas as pd
        import whylogs as why

        self.pd, self.why = pd, why
        self.columns = columns
        self.rows: list[dict[str, Any]] = []
        self.windows = Windows(size)
        self.profiled_columns = 0

    def add(self, features: dict[str, Any], prediction: Any) -> None:
        self.rows.append({**features, "prediction": prediction})
        if len(self.rows) >= self.windows.size:
            self.run_window(self.pd.DataFrame(self.rows, columns=self.columns))
            self.rows = []

    def run_window(self, frame: Any) -> Any:
        started = time.perf_counter()
        view = self.why.log(frame).view()
        self.windows.record(time.perf_counter() - started)
        self.profiled_columns = len(view.get_columns())
        return view


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Consumes ``job["topics"]`` (kind → topic) and profiles its predictions; see the module docstring."""
    import whylogs

    monitor = WhylogsWindows(list(job["columns"]), int(job["window"]))

    def handle(kind: str, event: Any) -> None:
        if kind == "prediction":
            monitor.add(event["features"], event["prediction"])

    kinds = {topic: kind for kind, topic in job["topics"].items()}
    out = read_topics(job["bootstrap"], kinds, int(job["events"]), handle, cap_s=job.get("cap_s"),
                      timeout=float(job.get("timeout", 900.0)))
    out.update(windowed_rates(monitor.windows, int(job["events"]), int(job["predictions"])))
    out.update({"whylogs": whylogs.__version__, "profiled_columns": monitor.profiled_columns,
                "window": monitor.windows.size})
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        import aiokafka  # noqa: F401  (what run() needs besides whylogs)
        import pandas  # noqa: F401
        import whylogs

        print(whylogs.__version__)
        return 0
    job = json.load(sys.stdin)
    result, sys.stdout = sys.stdout, sys.stderr  # whatever whylogs prints stays out of the result
    try:
        out = run(job)
    finally:
        sys.stdout = result
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
