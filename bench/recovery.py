"""CPU time to restore a partition's join table from its binary frame, the first step of a recovery.

``python -m bench.recovery [--events N] [--repeats R] [--against REV]`` fills a
:class:`~streams.join_store.ColumnarStore` through a :class:`~streams.join.FeedbackJoin` with the
benchmark model's traffic (``N`` predictions, ~50 % feedback ~30 s of event time later, a TTL
longer than the run: the table ends with a waiting prediction or a tombstone per prediction),
writes its frame (:meth:`~streams.join_store.ColumnarStore.to_frame`) once, then times
:meth:`~streams.join_store.ColumnarStore.from_frame` on that frame ``R`` times in a fresh child
process (CPU time, ``time.process_time``), and prints the median and the range in seconds per
million entries, with a SHA-256 of the restored table's own frame.

``--against REV`` also times ``REV``'s ``from_frame`` on the same frame (its tree exported with
``git archive`` into a temporary directory, the child run on it), so a change can be measured
against the code before it; the digests say whether both restored the same table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from bench.harness import REPO

CHILD = """
import hashlib, json, sys, time
from streams.join_store import ColumnarStore
frame = open(sys.argv[1], "rb").read()
seconds = []
for _ in range(int(sys.argv[2])):
    started = time.process_time()
    store = ColumnarStore.from_frame(frame)
    seconds.append(time.process_time() - started)
print(json.dumps({"entries": len(store), "seconds": seconds,
                  "sha256": hashlib.sha256(store.to_frame()).hexdigest()}))
"""
"""Run in the tree under test (its ``streams`` first on the path): restore the frame ``R`` times."""


def table_frame(events: int) -> tuple[bytes, float]:
    """The frame of the join table the traffic leaves, and the CPU seconds its ``to_frame`` took."""
    from bench.world import EventStream
    from streams.events import Feedback, Prediction
    from streams.join import FeedbackJoin
    from streams.join_store import ColumnarStore

    join = FeedbackJoin(ColumnarStore(), ttl_seconds=1e12)
    for kind, event in EventStream(seed=0, feedback_delay=30.0).events(events):
        if kind == "prediction":
            join.add_prediction(Prediction(event["prediction_id"], event["model_id"], event["model_version"],
                                           event["timestamp"], event["features"], str(event["prediction"]),
                                           score=event["score"], attributes=event["attributes"]))
        else:
            join.add_feedback(Feedback(event["prediction_id"], event["model_id"], event["timestamp"],
                                       str(event["label"])))
    started = time.process_time()
    frame = join.store.to_frame()  # type: ignore[attr-defined]
    return frame, time.process_time() - started


def restore(tree: Path, frame_path: Path, repeats: int) -> dict[str, Any]:
    """Time ``from_frame`` of the code in ``tree`` on the frame at ``frame_path`` (a child process)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(frame_path), str(repeats)], cwd=str(tree), env=env,
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"restore in {tree} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    per_million = [s * 1e6 / result["entries"] for s in result["seconds"]]
    return {**result, "per_million": per_million, "median": statistics.median(per_million)}


def exported(rev: str, into: Path) -> Path:
    """``rev``'s tree (``git archive``) unpacked under ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="predictions of traffic (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=3, help="restores timed per version (default 3)")
    parser.add_argument("--against", default=None, metavar="REV", help="also time this revision's from_frame")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        frame, to_frame = table_frame(args.events)
        frame_path = Path(tmp) / "frame.bin"
        frame_path.write_bytes(frame)
        versions = {"this tree": REPO}
        if args.against:
            versions = {args.against: exported(args.against, Path(tmp) / "against"), **versions}
        print(f"frame: {len(frame) / 1e6:.1f} MB, to_frame {to_frame:.2f} CPU s")
        for name, tree in versions.items():
            r = restore(tree, frame_path, args.repeats)
            print(f"{name}: from_frame {r['median']:.2f} CPU s per million entries (median of {args.repeats}: "
                  f"{min(r['per_million']):.2f}–{max(r['per_million']):.2f}; {r['entries']:,} entries; "
                  f"table sha256 {r['sha256'][:16]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
