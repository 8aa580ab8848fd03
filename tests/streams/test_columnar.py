"""The columnar hot path (issue 15) gives what the row-by-row code gave."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.partials import Evidence


def _row_by_row(base: Evidence, other: Evidence, limit: int) -> Evidence:
    """Evidence.extend as it was written before issue 15, one row at a time."""
    seen = set(base.ids)
    for i, pid in enumerate(other.ids):
        if pid in seen:
            continue
        seen.add(pid)
        base.ids.append(pid)
        for name, values in other.features.items():
            base.features.setdefault(name, [None] * (len(base.ids) - 1)).append(values[i])
        base.predictions.append(other.predictions[i])
        base.scores.append(other.scores[i])
    base.labels.update(other.labels)
    if len(base.ids) > limit:
        cut = len(base.ids) - limit
        dropped = base.ids[:cut]
        base.ids = base.ids[cut:]
        base.features = {k: v[cut:] for k, v in base.features.items()}
        base.predictions = base.predictions[cut:]
        base.scores = base.scores[cut:]
        for pid in dropped:
            base.labels.pop(pid, None)
    return base


def _evidence(ids: list[str], names: list[str]) -> Evidence:
    return Evidence(list(ids), {n: [f"{n}{pid}" for pid in ids] for n in names}, [f"y{pid}" for pid in ids],
                    [float(len(pid)) for pid in ids], {pid: 1 for pid in ids[::2]})


ids = st.lists(st.sampled_from("abcdefgh"), max_size=8)
names = st.lists(st.sampled_from(["x", "y"]), unique=True, max_size=2)


@settings(max_examples=150, deadline=None)
@given(ids, names, ids, names, st.integers(1, 10))
def test_evidence_extend_is_the_row_by_row_merge(a: list[str], na: list[str], b: list[str], nb: list[str],
                                                 limit: int) -> None:
    def fields(e: Evidence) -> Any:
        return e.ids, e.features, e.predictions, e.scores, e.labels

    got = _evidence(a, na).extend(_evidence(b, nb), limit=limit)
    assert fields(got) == fields(_row_by_row(_evidence(a, na), _evidence(b, nb), limit))
