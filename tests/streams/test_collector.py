"""The worker's garbage collection at batch boundaries (streams.collector) against CPython's own
rule: which generation it collects, and that cyclic garbage is freed once it is called."""

from __future__ import annotations

import gc
import weakref
from typing import Any, Iterator

import pytest

import streams.collector as collector
from streams.collector import collect_due, collection_at_batch_boundaries, one_collection_per_batch


class Node:
    """A container that can be part of a reference cycle."""

    def __init__(self) -> None:
        self.other: Any = None


@pytest.fixture
def manual_collection(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Automatic collection off, the heap collected (and the collector's tally of it started
    there), thresholds restored afterwards."""
    thresholds = gc.get_threshold()
    with collection_at_batch_boundaries():
        gc.collect()
        monkeypatch.setattr(collector, "_long_lived", collector._LongLived(total=len(gc.get_objects(2))))
        yield
    gc.set_threshold(*thresholds)


def _unreachable_cycle() -> weakref.ref[Node]:
    """Two nodes referring to each other and to nothing else: garbage only a collection frees."""
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first)


def _allocate(containers: int) -> list[list[int]]:
    return [[i] for i in range(containers)]


def test_nothing_is_collected_until_the_youngest_generation_is_over_its_threshold(manual_collection) -> None:
    gc.set_threshold(1000, 10, 10)
    held = _allocate(500)
    before = gc.get_stats()[0]["collections"]
    assert collect_due() is None
    assert gc.get_stats()[0]["collections"] == before
    held += _allocate(600)
    assert gc.get_count()[0] > 1000
    assert collect_due() == 0
    assert gc.get_stats()[0]["collections"] == before + 1
    assert gc.get_count()[0] < 10  # the young generation was emptied into the next


def _generations_collected(steps: int, manual: bool, containers: int = 150) -> list[int]:
    """The generation of every collection while ``steps`` times ``containers`` + 1 containers are
    allocated and kept, collected by CPython itself or (``manual``) by :func:`collect_due` after
    each step; the collector's tally of the long-lived heap starts at the heap collected first."""
    seen: list[int] = []
    record = lambda phase, info: seen.append(info["generation"]) if phase == "start" else None  # noqa: E731
    held = []
    gc.collect()
    collector._long_lived = collector._LongLived(total=len(gc.get_objects(2)))
    gc.callbacks.append(record)
    try:
        for _ in range(steps):
            held.append(_allocate(containers))
            if manual:
                collect_due()
    finally:
        gc.callbacks.remove(record)
    return seen


def test_young_and_middle_generations_are_collected_as_cpython_collects_them(monkeypatch) -> None:
    """Oracle: CPython's own automatic collection of the same allocations, which generation each
    collection takes (thresholds 100, 3; the oldest generation's 1,000 keeps full collections out)."""
    monkeypatch.setattr(collector, "_long_lived", collector._LongLived())
    thresholds = gc.get_threshold()
    gc.set_threshold(100, 3, 1000)
    try:
        automatic = _generations_collected(40, manual=False)
        with collection_at_batch_boundaries():
            manual = _generations_collected(40, manual=True)
    finally:
        gc.set_threshold(*thresholds)
    # CPython collects every 101 net allocations, mid-step, so more often: compare the order
    assert len(manual) == 40 and manual.count(1) == 8
    assert manual == automatic[:40]


def test_a_full_collection_comes_when_the_oldest_generations_count_passes_its_threshold(manual_collection) -> None:
    """With thresholds (100, 3, 2) every fifth collection is of the middle generation (its count
    passes 3); the one after the third of those is of the oldest (its count passes 2) once what it
    holds has grown by a quarter: at once here, as its tally starts at 400, then not again while
    what it holds (the interpreter's heap, ~100,000 containers) grows by 16 x 151."""
    gc.set_threshold(100, 3, 2)
    collector._long_lived = collector._LongLived(total=400)
    generations = []
    held = []
    for _ in range(32):
        held.append(_allocate(150))
        generations.append(collect_due())
    assert generations[:16] == [0, 0, 0, 0, 1] * 3 + [2]
    assert collector._long_lived.total > 40 * 16 * 151
    # the oldest generation's count passes 2 again at the 16th, but it has not grown by a quarter
    assert generations[16:] == [0, 0, 0, 0, 1] * 3 + [0]


def test_full_collections_wait_for_the_heap_to_grow_by_a_quarter_as_cpython_waits(monkeypatch) -> None:
    """Oracle: CPython's automatic collection of the same allocations. Its full collections wait
    until the containers promoted into the oldest generation are a quarter of what it held after
    the last one (``long_lived_pending < long_lived_total / 4``), so a heap of N containers that
    grows by 101 a step is scanned in full every ~N/400 steps, not every 15th."""
    monkeypatch.setattr(collector, "_long_lived", collector._LongLived())
    heap = [_allocate(1000) for _ in range(20)]  # 20,000 long-lived containers besides the interpreter's
    thresholds = gc.get_threshold()
    gc.set_threshold(100, 3, 2)
    try:
        # 101 containers a step: CPython collects once a step (thresholds 100, 3, 2), as collect_due does
        automatic = _generations_collected(1500, manual=False, containers=100).count(2)
        with collection_at_batch_boundaries():
            manual = _generations_collected(1500, manual=True, containers=100).count(2)
    finally:
        gc.set_threshold(*thresholds)
    del heap
    assert 1 <= manual <= 10 < 1500 // 15  # not once per 15 collections
    assert abs(manual - automatic) <= 1


def _full_collection() -> None:
    """Collect until :func:`collect_due` runs a full collection (the heap's growth rule waived)."""
    gc.set_threshold(1, 0, 0)
    while True:
        collector._long_lived.total = 0
        if collect_due(batch_boundary=True) == 2:
            return


def test_a_full_collection_freezes_the_heap_and_every_eighth_scans_the_frozen_heap_too(manual_collection) -> None:
    """What survives a full collection is frozen (the next ones do not scan it again); a reference
    cycle among frozen containers that becomes garbage is freed by the THAW_EVERY-th full collection,
    which unfreezes the heap first, and not before."""
    collector._long_lived = collector._LongLived()
    first, second = Node(), Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    _full_collection()  # the first full collection: the cycle is alive, and frozen with the heap
    assert gc.get_freeze_count() > 1000 and collector._long_lived.total == gc.get_freeze_count()
    del first, second  # now garbage, but frozen
    assert gone() is not None
    for _ in range(collector.THAW_EVERY - 2):
        _full_collection()
        assert gone() is not None
    _full_collection()  # the THAW_EVERY-th
    assert gone() is None
    assert gc.get_freeze_count() > 1000  # frozen again after it


def test_with_automatic_collection_on_a_full_collection_freezes_nothing(monkeypatch) -> None:
    """A consumer's loop in a process that collects automatically (a test's, replay's): CPython's
    own collections would never scan a frozen heap again, so nothing is frozen."""
    monkeypatch.setattr(collector, "_long_lived", collector._LongLived())
    thresholds = gc.get_threshold()
    try:
        _full_collection()
    finally:
        gc.set_threshold(*thresholds)
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_leaving_manual_collection_unfreezes_the_heap(manual_collection) -> None:
    with collection_at_batch_boundaries():
        _full_collection()
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_a_reference_cycle_made_while_collection_is_manual_is_freed_by_the_next_collection(manual_collection) -> None:
    gc.set_threshold(700, 10, 10)
    gone = _unreachable_cycle()
    _allocate(10)  # automatic collection is off: nothing frees the cycle
    assert gone() is not None
    while collect_due() is None:
        _ = _allocate(800)
    assert gone() is None


def test_at_a_batch_boundary_the_young_generation_is_collected_whatever_its_count(manual_collection) -> None:
    """A batch that freed what it allocated leaves the count low; its reference cycles go all the same."""
    gc.set_threshold(700, 10, 10)
    gone = _unreachable_cycle()
    assert gc.get_count()[0] < 700
    assert collect_due() is None and gone() is not None
    assert collect_due(batch_boundary=True) == 0
    assert gone() is None


def test_automatic_collection_comes_back_after_the_block_unless_it_was_off_before() -> None:
    assert gc.isenabled()
    with collection_at_batch_boundaries():
        assert not gc.isenabled()
        with one_collection_per_batch():
            assert not gc.isenabled()
        assert not gc.isenabled()  # a batch inside the worker does not turn it back on
    assert gc.isenabled()
    gc.disable()
    try:
        with collection_at_batch_boundaries():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
