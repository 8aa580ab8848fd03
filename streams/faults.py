"""Fault injection for tests: ``DRIFTWARDEN_FAULT`` kills the worker at a named point of a batch.

``DRIFTWARDEN_FAULT=kill:after-outputs:7`` SIGKILLs the process when the 7th
batch of its source stage (stage 1; counted from its start) reaches that point;
``kill:windows.after-outputs:7`` does the same in the windows stage (stage 2,
the internal topic). Several faults are separated by commas. The points, in the
order a batch passes them (:mod:`streams.consumer` describes the protocol):

- ``after-intent``: the batch's intent records are acknowledged, no output sent;
- ``mid-outputs``: half of the batch's output messages are acknowledged, not the rest, no points;
- ``after-outputs``: outputs and points acknowledged, state not saved;
- ``mid-state``: the batch's state records acknowledged but the last: when the batch writes a full
  snapshot of its join table, its pieces without the marker that makes it the recovery base; else
  its delta without the monitors' record (the commit point);
- ``after-state``: state acknowledged, offsets not committed.

Read once at start; an unknown point is a start-up error. Never set it in production.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Mapping

log = logging.getLogger(__name__)

ENV = "DRIFTWARDEN_FAULT"
POINTS = ("after-intent", "mid-outputs", "after-outputs", "mid-state", "after-state")
STAGES = ("source", "windows")
"""The worker's stages: ``source`` (stage 1, the default) and ``windows`` (stage 2)."""


@dataclass
class Faults:
    """The armed faults: (point, batch number) pairs."""

    armed: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    stage: str = "source"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, *, stage: str = "source") -> Faults:
        """The faults armed for ``stage`` (one of :data:`STAGES`)."""
        text = (os.environ if environ is None else environ).get(ENV, "").strip()
        armed = set()
        for item in filter(None, (part.strip() for part in text.split(","))):
            action, _, rest = item.partition(":")
            where, _, number = rest.rpartition(":")
            named, dot, point = where.rpartition(".")
            named = named if dot else "source"
            if action != "kill" or point not in POINTS or named not in STAGES or not number.isdigit():
                raise ValueError(f"{ENV}={text!r}: expected kill:[<stage>.]<point>:<batch number> with stage one "
                                 f"of {', '.join(STAGES)} and point one of {', '.join(POINTS)} "
                                 "(e.g. kill:after-outputs:7, kill:windows.after-state:2)")
            if named == stage:
                armed.add((point, int(number)))
        if armed:
            log.warning("%s is set: this worker will kill itself in its %s stage at %s", ENV, stage, sorted(armed))
        return cls(frozenset(armed), stage)

    def armed_at(self, point: str, batch: int) -> bool:
        return (point, batch) in self.armed

    def check(self, point: str, batch: int, detail: str = "") -> None:
        """SIGKILL this process if a fault is armed at ``point`` of batch number ``batch`` (``detail``:
        what was cut, for the line it prints)."""
        if self.armed_at(point, batch):
            where = point if self.stage == "source" else f"{self.stage}.{point}"
            print(f"FAULT kill at {where} of batch {batch}{detail}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
