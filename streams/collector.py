"""When Python's cyclic garbage collector runs: between batches, not in the middle of them.

CPython collects its youngest generation every 700 net allocations of container objects, and
promotes what survives. A batch keeps thousands of containers alive until its state is saved
(the join entries it logs, the monitors' snapshot, the outputs waiting for their
acknowledgements), so automatic collection scans them again and again while they wait, moves them
into the older generations and so brings on full collections of the whole heap: about a tenth of
the worker's CPU time (``python -m bench.spy``, with and without the collector). Reference counting
frees a batch's objects as soon as it is done with them, so at a batch boundary there is little
left to scan.

The worker therefore turns automatic collection off (:func:`collection_at_batch_boundaries`) and
collects where it is cheap: the youngest generation after each round of a consumer's loop, the
older ones as CPython's thresholds say (``gc.get_threshold()``, :func:`collect_due`), and what the
thresholds call for from a one-second timer, so that a stalled batch (a broker that does not
acknowledge) does not hold cyclic garbage for long. Within one call of a stage, :func:`one_collection_per_batch`
pauses collection the same way for code that runs with automatic collection on (``replay``, the
benchmarks).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


def collect_due(*, batch_boundary: bool = False) -> int | None:
    """Run the collection CPython's own thresholds call for now, if any, and return its
    generation (``None``: none was due).

    The rule is CPython's (``gc_collect_generations``): once the youngest generation's count
    (net allocations of containers since it was last collected) is over its threshold, the
    oldest generation whose count (collections of the one below since its own last) is over its
    threshold is collected, with the younger ones. At a ``batch_boundary`` the youngest
    generation is collected whatever its count: a batch that has freed what it allocated leaves
    that count low even when it made cyclic garbage (an exception's traceback holding a fetch's
    records), which would otherwise wait for a later, busier moment. CPython also puts off a full
    collection until a quarter of the heap is new, which Python cannot see; here one in 133
    collections is full with the default thresholds (700, 10, 10).

    >>> collect_due(batch_boundary=True) in (0, 1, 2)
    True
    """
    counts = gc.get_count()
    thresholds = gc.get_threshold()
    if counts[0] <= thresholds[0] and not batch_boundary:
        return None
    generation = next(g for g in (2, 1, 0) if g == 0 or counts[g] > thresholds[g])
    gc.collect(generation)
    return generation


@contextmanager
def collection_at_batch_boundaries() -> Iterator[None]:
    """Within the block, Python collects cyclic garbage only when :func:`collect_due` is called
    (the worker's consumers and its timer call it); automatic collection is back afterwards.

    >>> with collection_at_batch_boundaries():
    ...     gc.isenabled()
    False
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def one_collection_per_batch() -> Iterator[None]:
    """Run a batch with automatic collection paused, so that it collects once after the batch
    instead of every 700 net allocations within it.

    A batch allocates a few objects per event that live until its end (the decoded envelopes,
    the events, the blocks), so the youngest generation fills every few hundred events, and each
    tenth of those collections scans the older generation too (the join table and the windows'
    state, tens of thousands of containers that never become garbage): about a quarter of the CPU
    time of ``python -m bench.profile`` at one event per message. Reference counting frees the
    batch's objects as before; only cyclic garbage waits, at most one batch. Nested uses
    (``Pipeline.process`` around stage 1), and uses within :func:`collection_at_batch_boundaries`
    (the worker), change nothing."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
