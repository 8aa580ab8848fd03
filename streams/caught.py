"""Exceptions the worker catches so that it goes on: the one place they are reported.

Stage 1 (a model's detectors failing on a batch: :class:`streams.pipeline.SourcePipeline`), stage 2
(a partial its model's windows cannot merge: :class:`streams.pipeline.Merger`) and the worker's
source stage (a batch that failed as a whole: :mod:`streams.app`) catch every exception, so that one
model's bug stops neither the other models nor the worker, and count it (the ``internal_errors``
monitor counter, ``failed_batches``). A count is all a test would see, and a test that never reads
it would pass over a bug. So each handler reports the exception here: :func:`report` logs it with
its traceback, and it is the hook the tests wrap (``tests/conftest.py``) to fail any test in which
one was caught, unless the test is marked ``expects_internal_errors``. Call it as
``caught.report(...)``, through the module, so that the wrapped function is the one called.
"""

from __future__ import annotations

import logging
from typing import Any


def report(logger: logging.Logger, message: str, *args: Any) -> None:
    """Log the exception being handled (call it in an ``except`` block) on ``logger`` at ERROR, with
    its traceback: ``message % args``, then the traceback, the record naming the caller's line."""
    logger.error(message, *args, exc_info=True, stacklevel=2)


__all__ = ["report"]
