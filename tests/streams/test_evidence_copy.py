"""A tumbling window hands on its pane's evidence itself (streams/windows.py ``_close``): that is
what copying it (``Evidence().extend(pane, limit)``, as a sliding window does) gives, for any
evidence that ``Evidence.extend`` built from deltas (duplicate ids, features that come and go,
more rows than the limit)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.partials import Evidence


@st.composite
def deltas(draw: st.DrawFn) -> Evidence:
    ids = draw(st.lists(st.sampled_from([f"p{i}" for i in range(30)]), max_size=12))
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=3))
    values = st.one_of(st.floats(allow_nan=False), st.integers(), st.none(), st.text(max_size=3))
    return Evidence(list(ids), {name: [draw(values) for _ in ids] for name in names}, [draw(values) for _ in ids],
                    [draw(st.one_of(st.none(), st.floats(0, 1))) for _ in ids],
                    {pid: draw(values) for pid in draw(st.lists(st.sampled_from([f"p{i}" for i in range(30)]),
                                                                max_size=5))})


def typed(evidence: Evidence) -> object:
    doc = evidence.to_dict()
    return repr({k: doc[k] for k in sorted(doc)}), [(type(v).__name__, repr(v)) for col in doc["features"].values()
                                                    for v in col]


@settings(max_examples=120, deadline=None)
@given(parts=st.lists(deltas(), max_size=6), limit=st.integers(1, 40))
def test_a_copy_of_built_evidence_is_the_evidence(parts: list[Evidence], limit: int) -> None:
    pane = Evidence()
    for part in parts:
        pane.extend(part, limit=limit)
    copy = Evidence().extend(pane, limit=limit)
    assert typed(copy) == typed(pane)
    assert copy == pane
