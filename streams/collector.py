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
from dataclasses import dataclass
from typing import Iterator


THAW_EVERY = 8
"""Every this many full collections, the frozen heap is scanned too (see :func:`collect_due`)."""


@dataclass
class _LongLived:
    """What CPython's ``long_lived_total`` and ``long_lived_pending`` count, for :func:`collect_due`:
    the long-lived heap after the last full collection (frozen or not), and the containers
    promoted into the oldest generation since (survivors of middle-generation collections); and
    the full collections since the frozen heap was last scanned."""

    total: int = 0
    pending: int = 0
    fulls: int = 0


_long_lived = _LongLived()


def collect_due(*, batch_boundary: bool = False) -> int | None:
    """Run the collection CPython's own rule calls for now, if any, and return its generation
    (``None``: none was due).

    The rule is CPython's (``gc_collect_generations``): once the youngest generation's count
    (net allocations of containers since it was last collected) is over its threshold, the
    oldest generation whose count (collections of the one below since its own last) is over its
    threshold is collected, with the younger ones — except that the oldest generation waits
    until the containers promoted into it since its last collection are a quarter of the
    long-lived heap, so that a growing heap is not scanned in full once per 100 young
    collections. Python cannot read CPython's own tally, so this module keeps it: the young
    generations' sizes (``gc.get_objects``) before a middle collection, less what it found
    unreachable, are promoted.

    A full collection then **freezes** what survives (``gc.freeze``): the worker's long-lived heap
    is ~480,000 containers after start-up (the modules and functions of pandas, scipy, Evidently,
    Faust, ... and the tables), and a full collection scanned all of them to find none garbage,
    0.1 to 0.4 s each (``python -m bench.spy`` with ``gc.callbacks`` timing them). Frozen containers
    are still freed by reference counting; only a reference cycle among them would wait, so every
    :data:`THAW_EVERY`-th full collection unfreezes the heap first and scans it all. (Only with
    automatic collection off, :func:`collection_at_batch_boundaries`: otherwise CPython's own
    collections would never see the frozen heap again.) At a
    ``batch_boundary`` the youngest generation is collected whatever its count: a batch that has
    freed what it allocated leaves that count low even when it made cyclic garbage (an
    exception's traceback holding a fetch's records), which would otherwise wait for a later,
    busier moment.

    >>> with collection_at_batch_boundaries():
    ...     collect_due(batch_boundary=True) in (0, 1, 2)
    True
    """
    counts = gc.get_count()
    thresholds = gc.get_threshold()
    if counts[0] <= thresholds[0] and not batch_boundary:
        return None
    generation = 0
    if counts[2] > thresholds[2] and not _long_lived.pending < _long_lived.total // 4:
        generation = 2
    elif counts[1] > thresholds[1]:
        generation = 1
    if generation == 0:
        gc.collect(0)
    elif generation == 1:
        young = len(gc.get_objects(0)) + len(gc.get_objects(1))
        _long_lived.pending += max(young - gc.collect(1), 0)
    elif gc.isenabled():  # CPython collects too (a test's process, not the worker): no freezing behind its back
        gc.collect(2)
        _long_lived.total, _long_lived.pending = len(gc.get_objects(2)), 0
    else:
        _long_lived.fulls += 1
        if _long_lived.fulls % THAW_EVERY == 0:
            gc.unfreeze()
        gc.collect(2)
        gc.freeze()
        _long_lived.total, _long_lived.pending = gc.get_freeze_count(), 0
    return generation


@contextmanager
def collection_at_batch_boundaries() -> Iterator[None]:
    """Within the block, Python collects cyclic garbage only when :func:`collect_due` is called
    (the worker's consumers and its timer call it); automatic collection is back afterwards, of
    the whole heap (what :func:`collect_due` froze is unfrozen).

    >>> with collection_at_batch_boundaries():
    ...     gc.isenabled()
    False
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()  # what collect_due froze is automatic collection's again
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
