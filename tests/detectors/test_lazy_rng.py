"""The drift summaries make their generator on its first draw (:class:`detectors.drift._LazyRng`):
its draws and its snapshot state are those of the eager generator, fresh or restored."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.drift import _LazyRng, _rng_from_state, _rng_state


def _advance(generator: np.random.Generator, draws: list[int]) -> None:
    for k in draws:
        if k < 0:  # a 32-bit draw leaves half a word buffered (has_uint32 = 1)
            generator.integers(0, 2**32, size=1, dtype=np.uint32)
        else:
            generator.random(k)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**63), before=st.lists(st.integers(-1, 50), max_size=4),
       after=st.lists(st.integers(0, 50), max_size=3))
def test_lazy_generator_is_the_eager_one(seed: int, before: list[int], after: list[int]) -> None:
    eager = np.random.default_rng(seed)
    lazy = _LazyRng(seed)
    assert lazy.state() == _rng_state(eager)  # fresh: the state without the generator
    # restored from a snapshot taken after some draws (a 32-bit one too)
    _advance(eager, before)
    saved = _rng_state(eager)
    restored = _LazyRng(seed, saved)
    assert restored._generator is None and restored.state() == saved == _rng_state(_rng_from_state(saved))
    for k in after:
        assert np.array_equal(restored.random(k), eager.random(k))
    assert restored.state() == _rng_state(eager)
    fresh = _LazyRng(seed)
    again = np.random.default_rng(seed)
    for k in after:
        assert np.array_equal(fresh.random(k), again.random(k))
    assert fresh.state() == _rng_state(again)


def test_a_fresh_state_is_a_copy() -> None:
    first = _LazyRng(3).state()
    first["state"]["state"] = "0"
    assert _LazyRng(3).state() == _rng_state(np.random.default_rng(3))
