"""Sequential change detection against the known reference: Page's CUSUM, vectorised per micro-batch.

A windowed test speaks when its window closes, so a change that lands in the
middle of a window of 1,000 events waits for the rest of it. A CUSUM (Page
1954) on the log-likelihood ratio of "changed" against "as in training" speaks
at the event where the evidence suffices, and for a change of the size it is
tuned to it is the fastest test for a given false-alarm rate (Lorden 1971,
Moustakides 1986). Here the pre-change distribution is not learnt from the
stream: it is the **reference profile** (each feature's reference sample,
category shares, predicted-class shares, per-group selection rates, the error
rate of the reference's predictions).

Two classes:

- :class:`PageCUSUM` — a bank of one-sided CUSUMs ``S_t = max(0, S_{t-1} + x_t)``
  over the columns of a ``(rows, columns)`` increment matrix. With ``C`` the
  cumulative sum of the batch's increments, ``S_t = C_t - min(-S_0, min_{s<=t} C_s)``,
  so a whole micro-batch is one ``np.cumsum`` and one ``np.minimum.accumulate``
  (no per-event Python). A column whose statistic reaches its threshold raises
  a detection at that row and its *stream* (a group of columns) restarts from 0 or, with
  ``returns``, holds its changed state until a return test crosses.
- :class:`ReferenceCUSUM` — the streams of one model, built from its
  :class:`~detectors.profile.ReferenceProfile`, turning a micro-batch of
  predictions (or of labelled pairs) into log-likelihood-ratio increments.

Streams and their increments (``δ`` runs over :data:`DELTAS`, one column each;
every stream has an up and a down direction unless said otherwise):

- numeric feature — split in two. Its **point masses** (values holding at least
  :data:`ATOM_SHARE` of the reference sample: the zeros of a zero-inflated amount) and the share of the *rest* are tested like the
  categories of a categorical feature (below); a feature with at most
  :data:`DISCRETE_LEVELS` distinct reference values is all point masses, and a value
  the reference never held counts in the rest's share (half a value's share when the
  reference has none: a constant column watches for any other value). On the rest, the **normal score**
  ``y = Φ⁻¹(F_ref(x))`` of each value (``F_ref`` the mid-rank CDF of the reference
  values outside the point masses), which is N(0, 1) before the change for a
  continuous distribution, skewed or heavy-tailed (z-scores of a log-normal
  feature would make the variance streams fire constantly). A point mass would
  give ``y`` a point mass too — with 90 % zeros ``y`` is one value 90 % of the
  time, and the variance-down streams fired on every few hundred events — hence
  the split. Mean: ``±δ·(y ∓ μ₀) − δ²/2`` (the Gaussian LLR of a ``δ`` shift); variance:
  ``½·y²/v₀·(1 − 1/σ₁²) − ln σ₁`` with ``σ₁ = 1+δ`` (up) or ``1/(1+δ)`` (down);
- categorical feature — per category, the Bernoulli LLR of its indicator,
  ``x·ln(p₁/p₀) + (1−x)·ln((1−p₁)/(1−p₀))`` with ``p₁ = p₀ ± δ·√(p₀(1−p₀))``;
- predicted class — the same on the indicator of the positive class (binary)
  or of each class (multiclass);
- fairness — the same on the positive prediction of each group of each
  sensitive attribute (its selection rate);
- concept — the same on the 0/1 error of labelled pairs, up only (the
  reference error rate is that of the reference sample's predictions).

``μ₀``, ``v₀`` and ``p₀`` are the reference values moved by ``margin``
reference standard errors towards the alternative (``1/√n`` for a normal
score's mean, ``√(2/n)`` for its variance, ``√(p(1−p)/n)`` for a share): the
reference is an estimate, and the false-alarm rate of a CUSUM is sensitive to
a bias in it.

Thresholds. A column with in-control drift ``−I₀`` per observation
(``I₀ = KL(f₀‖f₁)``, the Kullback–Leibler divergence of the alternative from
the reference) and threshold ``h`` on the LLR scale has an in-control average
run length (Wald's approximation, Siegmund 1985, §2.6, without the overshoot,
which only lengthens it)::

    ARL₀(h) ≈ (e^h − h − 1) / I₀

With ``m`` columns and a target of ``r`` false alarms per event for all of them
together (Bonferroni: each column gets ``r/m``, and no column observes more
than one value per prediction event), each column's threshold solves
``ARL₀(h) = m / r``. ``r`` is ``false_alarms_per_million × 10⁻⁶``. For the
Gaussian mean columns Siegmund's corrected approximation is used instead:
``e^h`` becomes ``e^b`` with ``b = h + 1.166·δ`` (:data:`OVERSHOOT`; Siegmund
1985, eq. 2.56), which is accurate there; elsewhere the overshoot is left out
and the thresholds are conservative.

Points. ``value`` is the detecting column's statistic over its threshold (≥ 1 at a
detection), ``threshold`` 1, ``delta`` the signed change size that column is tuned to
(reference sds of the mean, a share or the error rate) and, for a variance column,
``sd_ratio`` (σ₁/σ₀). :attr:`NewDetection.change` says it in words (``mean +0.5 sd``,
``sd ×1.5``, ``share of 0 +0.25 sd``, ``error rate +1 sd``). A stream that observed
nothing in a window writes no window point.

Detections. Each stream reports its first detection in the current reporting
window (:meth:`ReferenceCUSUM.start_window` begins a new one) as a new
:class:`Detection`. A stream that detected is then **changed**: it stops testing
for a change and tests the way back instead (the negated increments of the
column tuned to the smallest change in the detecting direction, at that
column's threshold; :class:`PageCUSUM`), and every window it observes in the
meantime reports ``drift`` with the detection's ratio and change. When the
return test crosses, the stream tests for a change again from 0. So a change
that persists is one detection and stays reported, however weak (before, the
stream restarted at once and a change near the detection limit was detected
again only every few windows: the alert resolved and fired again in between),
and a change undone clears after about ``h / KL`` observations (~500 for the
0.25-sd column). Sequential: :meth:`merge` is not defined (order matters); run
one per model version. Memory: two floats per column and stream.

>>> import numpy as np
>>> bank = PageCUSUM([5.0], groups=[0])
>>> x = np.r_[np.full(10, -0.5), np.full(8, 1.0)]       # drifts down, then up by 1 per row
>>> [d.row for d in bank.update(x[:, None]).detections]  # S = 0 until row 9, then 1, 2, ...
[14]
>>> float(bank.statistic[0])                             # restarted after row 14
3.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Self

import numpy as np
import pandas as pd
from scipy.special import ndtri

from detectors.base import DetectorError, FeatureFrame, lookup_codes, vocabulary_codes
from detectors.points import Point
from detectors.profile import ReferenceProfile, as_class_labels

__all__ = [
    "DELTAS", "Detection", "NewDetection", "PageCUSUM", "ReferenceCUSUM", "CUSUMResult", "StreamStatus", "Stream",
    "cusum_detection_points", "cusum_points", "threshold_for", "FAIRNESS_METRIC", "OVERSHOOT",
]

DELTAS: tuple[float, ...] = (0.25, 0.5, 1.0)
"""Change sizes each stream is tuned to, in reference standard deviations (a factor-2 grid:
a change between two sizes is found nearly as fast as by a CUSUM tuned to it)."""

FAIRNESS_METRIC = "selection_rate_cusum"
"""``metric`` tag of the fairness streams' points (``value`` ≥ 1: a change in the group's selection rate)."""

METHOD = "cusum"
"""``method`` (``feature_drift``, ``prediction_drift``) and ``detector`` (``concept_drift``) tag value."""

MIN_REFERENCE = 100
"""Reference observations a stream needs (sample values, group rows, labelled rows)."""

ATOM_SHARE = 0.05
"""A numeric value holding at least this share of the reference sample (and :data:`MIN_MASS` values)
is a point mass: its share is tested like a category's, and normal
scores are taken on the values outside the point masses only (a mass of 90 % zeros gave normal
scores a point mass too, and the variance streams fired constantly). See ``_point_masses``."""

MIN_MASS = 50
"""Reference values a point mass needs (its share is estimated from them)."""

DISCRETE_LEVELS = 20
"""A numeric feature with at most this many distinct reference values is all point masses (a count,
a rating, a small integer code): every value's share is tested, with no normal scores (the profile
bins such a feature per value too: :data:`detectors.profile.DISCRETE_MAX_UNIQUE`)."""

REST = "rest"
"""Name of the share of a numeric feature's values outside its point masses."""

_P_EDGE = 1e-6

OVERSHOOT = 1.166
"""Siegmund's correction for a Gaussian mean CUSUM: ``b = h + 1.166·δ`` on the LLR scale
(``2 × 0.583``, the expected overshoot at the two boundaries, in standard deviations)."""


def _point_masses(counts: np.ndarray, share: float) -> np.ndarray:
    """Which distinct values (their sample ``counts``, in value order) are point masses.

    A feature with at most :data:`DISCRETE_LEVELS` distinct values is all point masses (a count, a
    rating): nothing is chosen, so nothing is biased. Otherwise a value is one when it holds at least
    ``share`` of the sample and :data:`MIN_MASS` values. Choosing values by their sample count picks
    those the sample over-counts (a winner's curse), which makes the rest's share look too low and
    its stream false-alarm; a large share and count keep the chosen values' errors small (values of
    ~1 % each were chosen by chance in a uniform integer feature, and choosing again among the rest
    compounded it in a zero-inflated count), while ties of a few per cent leave normal scores close
    to N(0, 1).

    >>> counts = np.array([900, 60, 40] + [1] * 60)   # 1,060 values: 85 %, 5.7 %, 3.8 %, ...
    >>> _point_masses(counts, 0.05).nonzero()[0].tolist()
    [0, 1]
    """
    if counts.size <= DISCRETE_LEVELS:
        return np.ones(counts.size, dtype=bool)
    return (counts >= share * counts.sum()) & (counts >= MIN_MASS)


def _label(value: Any) -> str:
    """A category, class or point mass as it reads in a change description (``0`` for ``0.0``)."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def threshold_for(arl: float, kl: float) -> float:
    """The LLR threshold ``h`` with ``(e^h − h − 1) / kl = arl`` (Wald's in-control ARL).

    >>> h = threshold_for(1e8, 0.125)
    >>> round(h, 3), round((math.exp(h) - h - 1) / 0.125 / 1e8, 6)
    (16.341, 1.0)
    """
    if not (arl > 0 and kl > 0):
        raise DetectorError(f"threshold_for needs a positive ARL and KL divergence, got {arl!r}, {kl!r}")
    target = arl * kl
    h = math.log(target + 1.0)
    for _ in range(100):
        nxt = math.log(target + h + 1.0)
        if abs(nxt - h) < 1e-13:
            break
        h = nxt
    return h


# -------------------------------------------------------------------------------- the bank


@dataclass(frozen=True, slots=True)
class Detection:
    """A stream (``group``) reached its threshold at ``row`` of the last batch, on ``column``;
    ``ratio`` is that column's statistic over its threshold (≥ 1)."""

    row: int
    group: int
    column: int
    ratio: float


@dataclass(frozen=True, slots=True)
class Return:
    """A stream (``group``) in its changed state gave evidence of being back at the reference at
    ``row`` of the last batch: its return statistic (on ``column``, negated) reached its threshold."""

    row: int
    group: int
    column: int


class _Compiled:
    """``function`` compiled by numba at its first call (numba itself imported then: ~0.2 s that a
    command which never runs a CUSUM, ``driftwarden --help``, does not pay), the machine code cached
    next to this file (``__pycache__``), in the user's cache directory or in ``NUMBA_CACHE_DIR``;
    where none of them is writable (a read-only image with no home directory), compiled in each
    process instead (~1 s at the first batch) rather than failing, as numba's ``cache=True`` does."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self._dispatcher: Any = None

    def compile(self) -> Any:
        """The numba dispatcher, made at the first call (its machine code: at the first call with each argument types)."""
        if self._dispatcher is None:
            import numba

            try:
                self._dispatcher = numba.njit(cache=True, nogil=True)(self.function)
            except RuntimeError:  # "cannot cache function ...: no locator available"
                self._dispatcher = numba.njit(nogil=True)(self.function)
        return self._dispatcher

    def __call__(self, *args: Any) -> Any:
        return (self._dispatcher or self.compile())(*args)


def _page_rows(src: np.ndarray, obs: np.ndarray, src_col: np.ndarray, src_weight: np.ndarray, obs_col: np.ndarray,
               obs_weight: np.ndarray, thresholds: np.ndarray, watch: np.ndarray, returns: np.ndarray,
               members: np.ndarray, offsets: np.ndarray, statistic: np.ndarray, changed: np.ndarray,
               back: np.ndarray, start: int, det_group: np.ndarray, det_column: np.ndarray, det_ratio: np.ndarray,
               ret_group: np.ndarray, ret_column: np.ndarray) -> tuple[int, int, int]:
    """Page's recursion over rows ``start..`` of a :class:`PageCUSUM`, in place, up to and
    including the first row with an event: returns ``(row, detections, returns)`` with that row's
    events in ``det_*``/``ret_*`` (``(rows, 0, 0)`` when no row had one).

    Stream ``g``'s columns are ``members[offsets[g]:offsets[g + 1]]``. A stream not changed runs
    ``S_j = max(0, S_j + x_j)`` on its watched columns; when one reaches its threshold the stream
    detects (its column of largest ``S_j / h_j``, the first of equals), its columns restart from
    0 and, with ``returns``, it becomes changed: its return statistic ``R = max(0, R - x_k)``
    runs on column ``k = returns[best]`` instead, until ``R`` reaches ``h_k``. Compiled with
    numba: the banks have hundreds of columns, and a pass in numpy per operation over a
    ``(rows, columns)`` matrix cost ~5x this one pass.
    """
    n = src.shape[0]
    for r in range(start, n):
        nd = 0
        nr = 0
        for g in range(offsets.size - 1):
            k = changed[g]
            if k >= 0:
                x = src_weight[k] * src[r, src_col[k]] + obs_weight[k] * obs[r, obs_col[k]]
                b = back[g] - x
                if b < 0.0:
                    b = 0.0
                if b >= thresholds[k]:
                    ret_group[nr] = g
                    ret_column[nr] = k
                    nr += 1
                    changed[g] = -1
                    back[g] = 0.0
                else:
                    back[g] = b
                continue
            hit = False
            for i in range(offsets[g], offsets[g + 1]):
                j = members[i]
                if watch[j]:
                    x = src_weight[j] * src[r, src_col[j]] + obs_weight[j] * obs[r, obs_col[j]]
                    s = statistic[j] + x
                    if s < 0.0:
                        s = 0.0
                    statistic[j] = s
                    hit |= s >= thresholds[j]
            if hit:
                best = -1
                ratio = -1.0
                for i in range(offsets[g], offsets[g + 1]):
                    j = members[i]
                    if watch[j]:
                        q = statistic[j] / thresholds[j]
                        if q > ratio:
                            ratio = q
                            best = j
                        statistic[j] = 0.0
                det_group[nd] = g
                det_column[nd] = best
                det_ratio[nd] = ratio
                nd += 1
                if returns.size:
                    changed[g] = returns[best]
                    back[g] = 0.0
        if nd or nr:
            return r, nd, nr
    return n, 0, 0


_page_rows = _Compiled(_page_rows)  # type: ignore[assignment]


class PageCUSUM:
    """One-sided CUSUMs ``S_j = max(0, S_j + x_j)``, one per column, with thresholds ``h_j``.

    ``groups[j]`` names the stream column ``j`` belongs to: when any column of a stream
    reaches its threshold, a :class:`Detection` is recorded for the stream at that row and
    all its columns restart from 0. An increment of 0 leaves a statistic unchanged, so a
    row a stream did not observe is a 0 in its columns.

    Without ``returns`` a stream goes on testing at once (Page's classic restart: a change that
    persists is detected again and again). With ``returns`` (per column ``j``, the column ``k``
    whose *negated* increments test the way back after ``j`` detected), a detection puts the
    stream in its **changed** state: its columns stop testing, and a return statistic
    ``R = max(0, R − x_k)`` (the log-likelihood ratio of the reference against the change
    column ``k`` is tuned to) runs instead; when ``R`` reaches ``h_k`` a :class:`Return` is
    recorded and the stream tests for a change again, from 0. So a change that persists is
    one detection, and a change undone is one return. Under the change ``k`` is tuned to, ``R``
    drifts down as fast as ``S_k`` drifts down under the reference, so a false return is as
    rare as a false detection; choosing ``k`` as the smallest change in the detecting
    column's direction keeps a change between two sizes from looking like a return.
    """

    def __init__(self, thresholds: Sequence[float], *, groups: Sequence[int] | None = None,
                 returns: Sequence[int] | None = None, watch: Sequence[bool] | None = None) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        if self.thresholds.size and not (np.isfinite(self.thresholds).all() and (self.thresholds > 0).all()):
            raise DetectorError("CUSUM thresholds must be finite and positive")
        m = self.thresholds.size
        self.groups = np.arange(m) if groups is None else np.asarray(groups, dtype=np.int64).reshape(-1)
        if self.groups.size != m:
            raise DetectorError(f"{self.groups.size} groups given for {m} columns")
        self.returns = None if returns is None else np.asarray(returns, dtype=np.int64).reshape(-1)
        if self.returns is not None and (self.returns.size != m or (m and not (
                (self.returns >= 0).all() and (self.returns < m).all()
                and (self.groups[self.returns] == self.groups).all()))):
            raise DetectorError("returns must name, per column, a column of the same stream")
        self.watch = np.ones(m, dtype=bool) if watch is None else np.asarray(watch, dtype=bool).reshape(-1)
        """Columns that test for a change (the others only serve as return tests)."""
        if self.watch.size != m:
            raise DetectorError(f"{self.watch.size} watch flags given for {m} columns")
        if (self.groups < 0).any():
            raise DetectorError("groups must be stream numbers from 0")
        self._returns = np.zeros(0, dtype=np.int64) if self.returns is None else self.returns
        size = int(self.groups.max()) + 1 if self.groups.size else 0
        self._members = np.argsort(self.groups, kind="stable").astype(np.int64)
        """The columns stream by stream, each stream's in ascending order (``_member_offsets`` cuts them)."""
        self._member_offsets = np.searchsorted(self.groups[self._members], np.arange(size + 1)).astype(np.int64)
        self._reset()

    def _reset(self) -> None:
        self.statistic = np.zeros(self.thresholds.size, dtype=np.float64)
        size = int(self.groups.max()) + 1 if self.groups.size else 0
        self.changed = np.full(size, -1, dtype=np.int64)
        """Per stream, the column whose negation tests its return while it is changed (-1: not changed)."""
        self.back = np.zeros(size, dtype=np.float64)
        """Per changed stream, its return statistic ``R``."""
        self.detections: tuple[Detection, ...] = ()
        self.returned: tuple[Return, ...] = ()
        self.n = 0

    def update(self, increments: np.ndarray) -> Self:
        """Feed a ``(rows, columns)`` batch of increments in arrival order; :attr:`detections`
        (and :attr:`returned`) then hold this batch's events (row indices into the batch)."""
        x = np.asarray(increments, dtype=np.float64)
        m = self.thresholds.size
        if x.ndim != 2 or x.shape[1] != m:
            raise DetectorError(f"expected increments of shape (rows, {m}), got {x.shape}")
        return self.update_linear(x, np.zeros((x.shape[0], 1)), source_column=np.arange(m), source_weight=np.ones(m),
                                  observed_column=np.zeros(m, dtype=np.int64), observed_weight=np.zeros(m))

    def update_linear(self, sources: np.ndarray, observed: np.ndarray, *, source_column: np.ndarray,
                      source_weight: np.ndarray, observed_column: np.ndarray, observed_weight: np.ndarray) -> Self:
        """:meth:`update` with increments that are linear in a few columns, computed as the rows
        are read instead of materialised: column ``j``'s increment at row ``t`` is
        ``source_weight[j] * sources[t, source_column[j]] + observed_weight[j] * observed[t, observed_column[j]]``.

        A bank of hundreds of columns over a handful of sources (a feature's normal score and its
        square, its observed indicator) then costs one pass over the rows in compiled code
        (:func:`_page_rows`), Page's recursion itself, so the statistics are the recursion's
        exactly whatever the batching.

        >>> bank = PageCUSUM([2.0, 2.0])
        >>> sources = np.array([[1.0], [1.0], [1.0]])
        >>> bank.update_linear(sources, np.ones((3, 1)), source_column=np.array([0, 0]),
        ...                    source_weight=np.array([1.0, -1.0]), observed_column=np.array([0, 0]),
        ...                    observed_weight=np.array([0.0, 0.0])).detections
        (Detection(row=1, group=0, column=0, ratio=1.0),)
        """
        m = self.thresholds.size
        src = np.ascontiguousarray(sources, dtype=np.float64)
        obs = np.ascontiguousarray(observed, dtype=np.float64)
        if src.ndim != 2 or obs.ndim != 2 or src.shape[0] != obs.shape[0]:
            raise DetectorError(f"sources {src.shape} and observations {obs.shape} must be (rows, k) of the same rows")
        columns = [np.ascontiguousarray(a, dtype=dtype).reshape(-1) for a, dtype in (
            (source_column, np.int64), (source_weight, np.float64), (observed_column, np.int64),
            (observed_weight, np.float64))]
        if any(a.size != m for a in columns):
            raise DetectorError(f"each column's source, observation and weights are needed ({m} columns)")
        s_col, s_w, o_col, o_w = columns
        n = src.shape[0]
        # a batch with no source (or no observation) columns reads 0 from a column of zeros
        src = src if src.shape[1] else np.zeros((n, 1))
        obs = obs if obs.shape[1] else np.zeros((n, 1))
        if m and not (0 <= s_col.min() and s_col.max() < src.shape[1] and 0 <= o_col.min() and o_col.max() < obs.shape[1]):
            raise DetectorError("a column names a source or observation the batch does not have")
        statistic, changed, back = self.statistic.copy(), self.changed.copy(), self.back.copy()
        size = changed.size
        det_group, det_column = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
        det_ratio = np.zeros(size, dtype=np.float64)
        ret_group, ret_column = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
        found: list[Detection] = []
        back_home: list[Return] = []
        row = 0
        while row < n and m:
            row, nd, nr = _page_rows(src, obs, s_col, s_w, o_col, o_w, self.thresholds, self.watch, self._returns,
                                     self._members, self._member_offsets, statistic, changed, back, row,
                                     det_group, det_column, det_ratio, ret_group, ret_column)
            back_home.extend(Return(row, g, c) for g, c in zip(ret_group[:nr].tolist(), ret_column[:nr].tolist()))
            found.extend(Detection(row, g, c, r) for g, c, r in zip(
                det_group[:nd].tolist(), det_column[:nd].tolist(), det_ratio[:nd].tolist()))
            row += 1
        self.statistic, self.changed, self.back = statistic, changed, back
        self.detections = tuple(found)
        self.returned = tuple(back_home)
        self.n += n
        return self

    def merge(self, other: PageCUSUM) -> Self:
        """Not defined: a CUSUM depends on the order of its increments."""
        raise DetectorError("a CUSUM is order-dependent and cannot be merged; feed one instance in arrival order")

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state (the statistics and changed streams; the last batch's events are not state)."""
        return {"thresholds": self.thresholds.tolist(), "groups": self.groups.tolist(),
                "returns": self.returns.tolist() if self.returns is not None else None,
                "watch": self.watch.tolist(),
                "statistic": self.statistic.tolist(), "n": self.n,
                "changed": self.changed.tolist(), "back": self.back.tolist()}

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`snapshot`."""
        out = cls(state["thresholds"], groups=state["groups"], returns=state.get("returns"), watch=state.get("watch"))
        out.statistic = np.asarray(state["statistic"], dtype=np.float64)
        out.n = int(state["n"])
        if state.get("changed") is not None:
            out.changed = np.asarray(state["changed"], dtype=np.int64)
            out.back = np.asarray(state["back"], dtype=np.float64)
        return out


# -------------------------------------------------------------------------------- the streams


@dataclass(frozen=True, slots=True)
class Stream:
    """One named stream: ``kind`` is ``feature``, ``prediction``, ``fairness`` or ``concept``;
    ``name`` the feature, ``prediction``, ``attribute=group`` or ``error``; ``attribute`` and
    ``group`` name a fairness stream's group."""

    kind: str
    name: str
    attribute: str = ""
    group: str = ""


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """A stream in the current window: ``detections`` since :meth:`ReferenceCUSUM.start_window`,
    ``ratio`` the largest statistic/threshold at a detection in the window, else the current
    largest (< 1); ``n`` observations in the window; ``n_total`` since the start; ``change``
    the change the column with that ratio is tuned to (``mean +0.5 sd``)."""

    stream: Stream
    detections: int
    ratio: float
    n: int
    n_total: int
    change: str = ""
    delta: float = 0.0
    sd_ratio: float = 0.0
    changed: bool = False
    """The stream is in its changed state (it detected, and has shown no evidence of return yet):
    ``ratio`` and ``change`` are then the detection's."""

    @property
    def drift(self) -> bool:
        """It detected in the window, or a change it detected earlier still holds."""
        return self.detections > 0 or self.changed


@dataclass(frozen=True, slots=True)
class NewDetection:
    """A stream's first detection in the current window: ``row`` of the batch that raised it,
    ``ratio`` the detecting column's statistic over its threshold (>= 1), ``change`` the change
    that column is tuned to (``mean +0.5 sd``, ``share of 0 +0.25 sd``, ``error rate +1 sd``)."""

    stream: Stream
    row: int
    ratio: float
    n: int
    change: str = ""
    delta: float = 0.0
    sd_ratio: float = 0.0


@dataclass(frozen=True, slots=True)
class CUSUMResult:
    """Every stream's status in the current window, and the settings behind the thresholds."""

    streams: tuple[StreamStatus, ...]
    columns: int
    false_alarms_per_million: float


@dataclass
class _Spec:
    """Columns of a block: increment_j = alpha_j * source[:, src_j] + beta_j * observed[:, obs_j];
    ``change_j`` says in words which change column ``j`` is tuned to (``mean +0.5 sd``), ``delta_j``
    its signed size in reference sds and ``sd_ratio_j`` σ₁/σ₀ for a variance column (else 0)."""

    src: list[int]
    obs: list[int]
    alpha: list[float]
    beta: list[float]
    kl: list[float]
    group: list[int]
    overshoot: list[float]
    change: list[str]
    delta: list[float]
    sd_ratio: list[float]
    watch: list[bool]
    """False: a return column (tests the way back after a detection, never a change)."""

    @classmethod
    def empty(cls) -> _Spec:
        return cls([], [], [], [], [], [], [], [], [], [], [])

    def add(self, src: int, obs: int, alpha: float, beta: float, kl: float, group: int,
            overshoot: float = 0.0, change: str = "", delta: float = 0.0, sd_ratio: float = 0.0,
            watch: bool = True) -> None:
        self.src.append(src)
        self.obs.append(obs)
        self.alpha.append(alpha)
        self.beta.append(beta)
        self.kl.append(kl)
        self.group.append(group)
        self.overshoot.append(overshoot)
        self.change.append(change)
        self.delta.append(delta)
        self.sd_ratio.append(sd_ratio)
        self.watch.append(watch)

    def extend(self, other: _Spec) -> None:
        for name in ("src", "obs", "alpha", "beta", "kl", "group", "overshoot", "change", "delta", "sd_ratio", "watch"):
            getattr(self, name).extend(getattr(other, name))

    def thresholds(self, arl: float) -> list[float]:
        """Each column's ``h``: ``ARL₀ = arl`` with ``b = h + overshoot`` (see the module docstring)."""
        return [max(threshold_for(arl, kl) - o, 1e-9) for kl, o in zip(self.kl, self.overshoot)]

    def returns(self) -> list[int]:
        """Per column, the column whose negation tests a stream's return after it detected: the
        return column of the same stream, source and direction (tuned to half the smallest
        change; see :class:`PageCUSUM`), else the smallest change's column.

        One pass to find each (stream, source, direction)'s choice, one to hand it out: linear
        in the columns (a profile of many features has thousands).
        """
        best: dict[tuple[int, int, bool], tuple[tuple[bool, float, int], int]] = {}
        keys = [(g, src, delta > 0) for g, src, delta in zip(self.group, self.src, self.delta)]
        for k, key in enumerate(keys):
            rank = (self.watch[k], abs(self.delta[k]), k)
            if key not in best or rank < best[key][0]:
                best[key] = (rank, k)
        return [best[key][1] for key in keys]


def _bernoulli(p0: float, n_ref: int, direction: int, delta: float, margin: float) -> tuple[float, float, float] | None:
    """(alpha, beta, KL) of the Bernoulli LLR ``x·alpha + beta`` for a ``delta``-sd move of ``p0``
    in ``direction``; the in-control share is moved ``margin`` standard errors towards it."""
    sd = math.sqrt(p0 * (1.0 - p0))
    q0 = p0 + direction * margin * sd / math.sqrt(max(n_ref, 1))
    p1 = p0 + direction * delta * sd
    if not (_P_EDGE < q0 < 1 - _P_EDGE and _P_EDGE < p1 < 1 - _P_EDGE) or (p1 - q0) * direction <= 0:
        return None
    a = math.log(p1 / q0)
    b = math.log((1 - p1) / (1 - q0))
    kl = q0 * math.log(q0 / p1) + (1 - q0) * math.log((1 - q0) / (1 - p1))
    return a - b, b, kl


class ReferenceCUSUM:
    """CUSUM streams of one model against its reference profile (see the module docstring).

    Build with :meth:`from_profile`. :meth:`update` takes a micro-batch of predictions,
    :meth:`update_errors` one of labelled pairs' 0/1 errors; after each, :attr:`new`
    lists the streams whose first detection of the window happened in that batch.
    """

    def __init__(self, *, streams: Sequence[Stream], numeric: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                 atoms: Mapping[str, Sequence[float]], categories: Mapping[str, Sequence[str]], classes: Sequence[str], attributes: Mapping[str, Sequence[str]],
                 positive_label: str | None, prediction_spec: _Spec, error_spec: _Spec,
                 layout: tuple[Sequence[tuple[str, Any]], Sequence[tuple[str, Any]]],
                 false_alarms_per_million: float, thresholds: tuple[Sequence[float], Sequence[float]] | None = None
                 ) -> None:
        self.streams = tuple(streams)
        self._sources, self._observed = list(layout[0]), list(layout[1])
        self._numeric_obs = {key: j for j, (kind, key) in enumerate(self._observed) if kind == "numeric"}
        self.numeric = {k: (np.asarray(v[0], np.float64), np.asarray(v[1], np.float64)) for k, v in numeric.items()}
        self.atoms = {k: np.asarray(v, np.float64) for k, v in atoms.items()}
        self.categories = {k: list(v) for k, v in categories.items()}
        self.classes = list(classes)
        self.attributes = {k: list(v) for k, v in attributes.items()}
        self.positive_label = positive_label
        self.false_alarms_per_million = float(false_alarms_per_million)
        self._pspec, self._espec = prediction_spec, error_spec
        m = sum(prediction_spec.watch) + sum(error_spec.watch)  # return columns never detect
        if thresholds is None:
            arl = m / (self.false_alarms_per_million * 1e-6) if m else 1.0
            thresholds = (prediction_spec.thresholds(arl), error_spec.thresholds(arl))
        self._pbank = PageCUSUM(thresholds[0], groups=prediction_spec.group, returns=prediction_spec.returns(),
                                watch=prediction_spec.watch)
        self._ebank = PageCUSUM(thresholds[1], groups=error_spec.group, returns=error_spec.returns(),
                                watch=error_spec.watch)
        self._palpha = np.asarray(prediction_spec.alpha, np.float64)
        self._pbeta = np.asarray(prediction_spec.beta, np.float64)
        self._psrc = np.asarray(prediction_spec.src, np.int64)
        self._pobs = np.asarray(prediction_spec.obs, np.int64)
        self._ealpha = np.asarray(error_spec.alpha, np.float64)
        self._ebeta = np.asarray(error_spec.beta, np.float64)
        self._ptables = {f: _NormalScores(sample, moments) for f, (sample, moments) in self.numeric.items()}
        self._cat_index = {f: vocabulary_codes(list(v)) for f, v in self.categories.items()}
        self._class_index = vocabulary_codes(list(self.classes))
        self._blocks = self._source_blocks()
        g = len(self.streams)
        self._window_detections = np.zeros(g, dtype=np.int64)
        self._window_ratio = np.zeros(g, dtype=np.float64)
        self._window_n = np.zeros(g, dtype=np.int64)
        self._n_total = np.zeros(g, dtype=np.int64)
        self._window_change: list[tuple[str, float, float]] = [("", 0.0, 0.0)] * g
        self._held_ratio = np.zeros(g, dtype=np.float64)
        """Per stream in its changed state, the ratio of the detection that began it (else 0)."""
        self._held_change: list[tuple[str, float, float]] = [("", 0.0, 0.0)] * g
        self.returned: tuple[Stream, ...] = ()
        """The streams whose change was undone (evidence of return) in the last batch."""
        # observation column -> stream (for the per-stream counts)
        self._obs_group = self._observation_groups()
        # the observations a stream counts: a numeric feature with point masses counts its values
        # once, in the point-mass family (which sees every value), not again in the rest's
        self._obs_counted = np.array([not (kind == "numeric" and key in self.atoms) for kind, key in self._observed],
                                     dtype=bool)[: self._obs_group.size]
        self.new: tuple[NewDetection, ...] = ()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_profile(cls, profile: ReferenceProfile, *, positive_label: str | None = None,
                     attributes: Sequence[str] = (), false_alarms_per_million: float = 1.0,
                     deltas: Sequence[float] = DELTAS, margin: float = 1.0,
                     min_reference: int = MIN_REFERENCE, atom_share: float = ATOM_SHARE) -> ReferenceCUSUM:
        """Streams for every numeric and categorical feature, the predicted class and, for a
        binary model with ``positive_label``, each group of ``attributes`` and the error rate.

        ``false_alarms_per_million``: target false alarms per million prediction events for all
        streams together; ``deltas``: the change sizes (reference sds) each stream is tuned to;
        ``margin``: reference standard errors the in-control value is moved towards each
        alternative; streams with fewer than ``min_reference`` reference observations are left out;
        a numeric value holding at least ``atom_share`` of the reference sample is a point mass.
        """
        if not (false_alarms_per_million > 0 and math.isfinite(false_alarms_per_million)):
            raise DetectorError(f"false_alarms_per_million must be positive, got {false_alarms_per_million!r}")
        if not deltas or any(not (d > 0) for d in deltas):
            raise DetectorError(f"deltas must be positive change sizes, got {deltas!r}")
        streams: list[Stream] = []
        pspec, espec = _Spec.empty(), _Spec.empty()
        # return columns (half the smallest change, per stream, source and direction: the way back
        # a changed stream tests), appended after every detecting column of their block
        back: dict[int, _Spec] = {id(pspec): _Spec.empty(), id(espec): _Spec.empty()}
        low = min(deltas) / 2.0
        numeric: dict[str, tuple[list[float], list[float]]] = {}
        categories: dict[str, list[str]] = {}
        atoms: dict[str, list[float]] = {}
        # source columns of the prediction block: numeric y, numeric y², then 0/1 indicators;
        # observed columns: one per numeric feature, then one per Bernoulli source family
        sources: list[tuple[str, Any]] = []
        observed: list[tuple[str, Any]] = []

        def bernoulli_columns(g: int, shares: Mapping[Any, float], n_ref: int, obs: int, *, up_only: bool = False,
                              spec: _Spec = pspec, what: str = "share of {value}") -> None:
            """One indicator source per value of ``shares`` and its Bernoulli columns, in stream ``g``."""
            for value, p0 in shares.items():
                src = len(sources)
                sources.append(("indicator", (obs, value)))
                for direction in ((1,) if up_only else (1, -1)):
                    added = 0
                    for d in deltas:
                        coef = _bernoulli(p0, n_ref, direction, d, margin)
                        if coef is not None:
                            added += 1
                            spec.add(src, obs, coef[0], coef[1], coef[2], g,
                                     change=f"{what.format(value=_label(value))} {'+' if direction > 0 else '-'}{d:g} sd",
                                     delta=direction * d)
                    coef = _bernoulli(p0, n_ref, direction, low, margin) if added else None
                    if coef is not None:
                        back[id(spec)].add(src, obs, coef[0], coef[1], coef[2], g, delta=direction * low, watch=False)

        def bernoulli_stream(stream: Stream, shares: Mapping[str, float], n_ref: int, obs: int,
                             up_only: bool = False) -> None:
            streams.append(stream)
            bernoulli_columns(len(streams) - 1, shares, n_ref, obs, up_only=up_only)

        for name, p in profile.numeric.items():
            full = np.sort(np.asarray(p.sample, dtype=np.float64))
            if full.size < min_reference:
                continue
            g = len(streams)
            marks = (len(observed), len(sources))
            # point masses: their shares and the rest's, tested like the categories of a categorical
            # feature; normal scores on the rest (see _point_masses)
            values, counts = np.unique(full, return_counts=True)
            heavy = _point_masses(counts, atom_share)
            sample = full[~np.isin(full, values[heavy])]
            if heavy.any():
                atoms[name] = values[heavy].tolist()
                obs = len(observed)
                observed.append(("atoms", name))
                shares: dict[Any, float] = {v: c / full.size for v, c in zip(atoms[name], counts[heavy].tolist())}
                # the rest's share; half a value when the sample has none, so that values never seen
                # (a count feature moving past its reference range) are watched too
                shares[REST] = max(sample.size, 0.5) / full.size
                bernoulli_columns(g, shares, full.size, obs, up_only=True)
            if sample.size >= min_reference:
                scores = _NormalScores(sample)
                numeric[name] = (sample.tolist(), [scores.mean, scores.var])
                obs = len(observed)
                observed.append(("numeric", name))
                y = len(sources)
                sources.append(("y", name))
                y2 = len(sources)
                sources.append(("y2", name))
                n_ref = sample.size
                mu = margin / math.sqrt(n_ref)
                dv = margin * math.sqrt(2.0 / n_ref)
                rest = " of the rest" if name in atoms else ""
                for direction in (1, -1):
                    for d in deltas:
                        # Gaussian LLR of N(dir·(mu+d), 1) vs N(dir·mu, 1) on y
                        pspec.add(y, obs, direction * d, -(d * mu + d * d / 2.0), d * d / 2.0, g, OVERSHOOT * d,
                                  change=f"mean{rest} {'+' if direction > 0 else '-'}{d:g} sd", delta=direction * d)
                    back[id(pspec)].add(y, obs, direction * low, -(low * mu + low * low / 2.0), low * low / 2.0, g,
                                        OVERSHOOT * low, delta=direction * low, watch=False)
                    sizes = deltas if direction > 0 else deltas[-1:]
                    d = min(sizes) / 2.0
                    ratio = (1.0 + d) ** 2 if direction > 0 else 1.0 / (1.0 + d) ** 2
                    v0 = 1.0 + direction * dv
                    if v0 > 0:
                        back[id(pspec)].add(y2, obs, 0.5 * (1.0 - 1.0 / ratio) / v0, -0.5 * math.log(ratio),
                                            0.5 * (1.0 / ratio - 1.0 + math.log(ratio)), g, delta=direction * d,
                                            sd_ratio=(1.0 + d) ** direction, watch=False)
                    for d in sizes:
                        ratio = (1.0 + d) ** 2 if direction > 0 else 1.0 / (1.0 + d) ** 2  # σ₁² / σ₀²
                        v0 = 1.0 + direction * dv
                        if v0 <= 0:
                            continue
                        kl = 0.5 * (1.0 / ratio - 1.0 + math.log(ratio))
                        pspec.add(y2, obs, 0.5 * (1.0 - 1.0 / ratio) / v0, -0.5 * math.log(ratio), kl, g,
                                  change=f"sd{rest} {'×' if direction > 0 else '÷'}{1 + d:g}", delta=direction * d,
                                  sd_ratio=(1.0 + d) ** direction)
            if any(grp == g for grp in pspec.group):
                streams.append(Stream("feature", name))
            else:  # nothing to watch
                atoms.pop(name, None)
                numeric.pop(name, None)
                del observed[marks[0]:], sources[marks[1]:]

        for name, c in profile.categorical.items():
            total = c.n_valid
            if total < min_reference or len(c.counts) < 2:
                continue
            categories[name] = sorted(c.counts)
            obs = len(observed)
            observed.append(("categorical", name))
            bernoulli_stream(Stream("feature", name), {k: v / total for k, v in sorted(c.counts.items())}, total, obs,
                             up_only=True)

        classes: list[str] = []
        if profile.predictions and sum(profile.predictions.values()) >= min_reference and len(profile.predictions) >= 2:
            total = sum(profile.predictions.values())
            shares = {k: v / total for k, v in sorted(profile.predictions.items())}
            if len(shares) == 2:
                chosen = positive_label if positive_label in shares else sorted(shares)[-1]
                shares = {chosen: shares[chosen]}
            classes = sorted(shares)
            obs = len(observed)
            observed.append(("prediction", None))
            bernoulli_stream(Stream("prediction", "prediction"), shares, total, obs)

        groups_of: dict[str, list[str]] = {}
        sample = profile.sample
        if positive_label is not None and profile.prediction and profile.prediction in sample:
            preds = as_class_labels(np.asarray(sample[profile.prediction], dtype=object))
            positive = preds == positive_label
            known = np.array([p is not None for p in preds], dtype=bool)
            for attribute in attributes:
                if attribute not in sample:
                    continue
                values = np.asarray(["missing" if v is None else str(v) for v in sample[attribute]], dtype=object)
                kept = []
                for group in sorted(set(values[known].tolist())):
                    rows = known & (values == group)
                    n_ref = int(rows.sum())
                    if n_ref < min_reference:
                        continue
                    p0 = float(positive[rows].mean())
                    obs = len(observed)
                    observed.append(("group", (attribute, group)))
                    bernoulli_stream(Stream("fairness", f"{attribute}={group}", attribute, group), {positive_label: p0},
                                     n_ref, obs)
                    kept.append(group)
                if kept:
                    groups_of[attribute] = kept
            if profile.target and profile.target in sample:
                labels = as_class_labels(np.asarray(sample[profile.target], dtype=object))
                both = known & np.array([v is not None for v in labels], dtype=bool)
                if int(both.sum()) >= min_reference:
                    e0 = float((labels[both] != preds[both]).mean())
                    g = len(streams)
                    streams.append(Stream("concept", "error"))
                    for d in deltas:
                        coef = _bernoulli(e0, int(both.sum()), 1, d, margin)
                        if coef is not None:
                            espec.add(0, 0, coef[0], coef[1], coef[2], g, change=f"error rate +{d:g} sd", delta=d)
                    coef = _bernoulli(e0, int(both.sum()), 1, low, margin)
                    if coef is not None and any(grp == g for grp in espec.group):
                        back[id(espec)].add(0, 0, coef[0], coef[1], coef[2], g, delta=low, watch=False)
                    if not any(grp == g for grp in espec.group):
                        streams.pop()

        pspec.extend(back[id(pspec)])
        espec.extend(back[id(espec)])
        return cls(streams=streams, numeric=numeric, atoms=atoms, categories=categories, classes=classes,
                   attributes=groups_of,
                   positive_label=positive_label, prediction_spec=pspec, error_spec=espec, layout=(sources, observed),
                   false_alarms_per_million=false_alarms_per_million)

    def _source_blocks(self) -> list[tuple[int, int]]:
        """Per observed family, the contiguous range of its source columns."""
        owner = [self._numeric_obs[key] if kind in ("y", "y2") else key[0] for kind, key in self._sources]
        blocks = []
        for j in range(len(self._observed)):
            mine = [i for i, o in enumerate(owner) if o == j]
            if mine and mine != list(range(mine[0], mine[-1] + 1)):
                raise DetectorError("CUSUM sources must be contiguous per observed family")
            blocks.append((mine[0], mine[-1] + 1) if mine else (0, 0))
        return blocks

    def _observation_groups(self) -> np.ndarray:
        groups = np.full(max(self._pobs.max(initial=-1) + 1, 0), -1, dtype=np.int64)
        for obs, g in zip(self._pspec.obs, self._pspec.group):
            groups[obs] = g
        return groups

    @property
    def columns(self) -> int:
        """Number of one-sided CUSUM columns that test for a change (the Bonferroni divisor; the
        return columns, which test only a changed stream's way back, are not among them)."""
        return int(self._pbank.watch.sum() + self._ebank.watch.sum())

    @property
    def thresholds(self) -> np.ndarray:
        """Every column's threshold (prediction streams, then the error stream)."""
        return np.concatenate([self._pbank.thresholds, self._ebank.thresholds])

    # -- feeding -------------------------------------------------------------------------------

    def _columns(self, frame: FeatureFrame, predictions: np.ndarray | None,
                 attributes: Mapping[str, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        """(sources, observed): per row, each source value (normal score, its square, 0/1
        indicator) and whether each observed family saw a value (0/1)."""
        n = len(frame) if (frame.numeric or frame.categorical) else (0 if predictions is None else len(predictions))
        src = np.zeros((n, len(self._sources)), dtype=np.float64)
        obs = np.zeros((n, len(self._observed)), dtype=np.float64)
        labels = None if predictions is None else np.asarray(predictions, dtype=object)
        masses: dict[str, np.ndarray] = {}
        for j, (kind, key) in enumerate(self._observed):
            lo, hi = self._blocks[j]
            if kind == "atoms":
                values = frame.numeric.get(key)
                if values is None:
                    continue
                x = np.asarray(values, dtype=np.float64)
                atoms = self.atoms[key]
                at = np.minimum(np.searchsorted(atoms, x), atoms.size - 1)
                hit = atoms[at] == x
                masses[key] = hit
                seen = ~np.isnan(x)
                codes = np.where(hit, at, atoms.size)  # the rest's indicator is the last source
                src[:, lo:hi] = (codes[:, None] == np.arange(hi - lo)) & seen[:, None]
            elif kind == "numeric":
                values = frame.numeric.get(key)
                if values is None:
                    continue
                x = np.asarray(values, dtype=np.float64)
                hit = masses.get(key)
                if hit is not None:
                    x = np.where(hit, np.nan, x)
                y, seen = self._ptables[key].scores(x)
                src[:, lo] = y
                np.multiply(y, y, out=src[:, lo + 1])
            elif kind == "categorical":
                values = frame.categorical.get(key)
                if values is None:
                    continue
                codes = lookup_codes(self._cat_index[key], values)
                seen = pd.notna(np.asarray(values, dtype=object))
                src[:, lo:hi] = codes[:, None] == np.arange(hi - lo)
            elif kind == "prediction":
                if labels is None:
                    continue
                seen = pd.notna(labels)
                codes = lookup_codes(self._class_index, labels)
                src[:, lo:hi] = codes[:, None] == np.arange(hi - lo)
            else:  # group
                attribute, group = key
                values = (attributes or {}).get(attribute)
                if values is None or labels is None:
                    continue
                seen = (np.asarray(values, dtype=object) == group) & pd.notna(labels)
                src[:, lo] = seen & (labels == self.positive_label)
            obs[:, j] = seen
        return src, obs

    def increments(self, frame: FeatureFrame, predictions: np.ndarray | None = None,
                   attributes: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """The ``(rows, columns)`` LLR increments of a batch of predictions (0 where a stream
        has no observation: a missing value, a missing attribute, an unknown class)."""
        src, obs = self._columns(frame, predictions, attributes)
        out = src[:, self._psrc] * self._palpha
        out += obs[:, self._pobs] * self._pbeta
        return out

    def update(self, frame: FeatureFrame, predictions: np.ndarray | None = None,
               attributes: Mapping[str, np.ndarray] | None = None) -> Self:
        """Feed a micro-batch of predictions (features, predicted classes, sensitive attributes).

        The increments are linear in the few source columns, so the bank reads them from the
        sources row by row (:meth:`PageCUSUM.update_linear`) instead of a ``(rows, columns)`` matrix."""
        src, obs = self._columns(frame, predictions, attributes)
        self._pbank.update_linear(src, obs, source_column=self._psrc, source_weight=self._palpha,
                                  observed_column=self._pobs, observed_weight=self._pbeta)
        seen = np.zeros(len(self.streams), dtype=np.int64)
        if obs.shape[0]:
            counted = obs[:, : self._obs_group.size].sum(axis=0) * self._obs_counted
            np.add.at(seen, self._obs_group, counted.astype(np.int64))
        self._record(self._pbank, seen, observed=obs)
        return self

    def update_errors(self, errors: np.ndarray) -> Self:
        """Feed a micro-batch of labelled pairs' 0/1 errors (``NaN``: not observed)."""
        e = np.asarray(errors, dtype=np.float64).reshape(-1)
        seen_rows = ~np.isnan(e)
        if e.size and not np.isin(e[seen_rows], (0.0, 1.0)).all():
            raise DetectorError("errors must be 0 (right) or 1 (wrong)")
        columns = np.zeros(self._ealpha.size, dtype=np.int64)  # every column reads the error and its indicator
        observed = seen_rows.astype(np.float64)[:, None]
        self._ebank.update_linear(np.where(seen_rows, e, 0.0)[:, None], observed, source_column=columns,
                                  source_weight=self._ealpha, observed_column=columns, observed_weight=self._ebeta)
        seen = np.zeros(len(self.streams), dtype=np.int64)
        for g in set(self._espec.group):
            seen[g] = int(seen_rows.sum())
        self._record(self._ebank, seen, observed=observed, error=True)
        return self

    def _record(self, bank: PageCUSUM, seen: np.ndarray, *, observed: np.ndarray, error: bool = False) -> None:
        new = []
        spec = self._espec if error else self._pspec
        for d in bank.detections:
            g = d.group
            change = (spec.change[d.column], spec.delta[d.column], spec.sd_ratio[d.column])
            # the stream's observations up to and including the detecting row
            families = [0] if error else np.flatnonzero((self._obs_group == g) & self._obs_counted)
            upto = int(observed[: d.row + 1, families].sum())
            if self._window_detections[g] == 0:
                new.append(NewDetection(self.streams[g], d.row, d.ratio, int(self._window_n[g]) + upto, *change))
                self._window_ratio[g] = d.ratio
                self._window_change[g] = change
            elif d.ratio > self._window_ratio[g]:
                self._window_ratio[g] = d.ratio
                self._window_change[g] = change
            self._window_detections[g] += 1
        # the state at the batch's end: a stream still changed holds its detection's figures
        for d in bank.detections:
            self._held_ratio[d.group], self._held_change[d.group] = d.ratio, (
                spec.change[d.column], spec.delta[d.column], spec.sd_ratio[d.column])
        mine = np.unique(bank.groups)
        for g in mine[(bank.changed[mine] < 0) & (self._held_ratio[mine] > 0)].tolist():
            self._held_ratio[g], self._held_change[g] = 0.0, ("", 0.0, 0.0)
        self.returned = tuple(self.streams[r.group] for r in bank.returned)
        self._window_n += seen
        self._n_total += seen
        self.new = tuple(new)

    def start_window(self) -> Self:
        """Begin a new reporting window: counts restart, the statistics carry on."""
        self._window_detections[:] = 0
        self._window_ratio[:] = 0.0
        self._window_n[:] = 0
        self._window_change = [("", 0.0, 0.0)] * len(self.streams)
        return self

    def merge(self, other: ReferenceCUSUM) -> Self:
        """Not defined: sequential statistics depend on the order of events."""
        raise DetectorError("CUSUM streams are order-dependent and cannot be merged; run one per model version")

    def _current_ratio(self) -> np.ndarray:
        ratio = np.zeros(len(self.streams), dtype=np.float64)
        for bank in (self._pbank, self._ebank):
            if bank.thresholds.size:
                np.maximum.at(ratio, bank.groups, bank.statistic / bank.thresholds)
        return ratio

    def result(self) -> CUSUMResult:
        """Every stream in the current window (no state change)."""
        current = self._current_ratio()

        def status(g: int, s: Stream) -> StreamStatus:
            detected, held = bool(self._window_detections[g]), float(self._held_ratio[g])
            ratio = self._window_ratio[g] if detected else held or current[g]
            change = self._window_change[g] if detected else self._held_change[g]
            return StreamStatus(stream=s, detections=int(self._window_detections[g]), ratio=float(ratio),
                                n=int(self._window_n[g]), n_total=int(self._n_total[g]), change=change[0],
                                delta=change[1], sd_ratio=change[2], changed=held > 0)

        streams = tuple(status(g, s) for g, s in enumerate(self.streams))
        return CUSUMResult(streams=streams, columns=self.columns,
                           false_alarms_per_million=self.false_alarms_per_million)

    # -- state ---------------------------------------------------------------------------------

    def snapshot(self, *, reference: bool = True) -> dict[str, Any]:
        """JSON-able state: the statistics and window counts and, unless ``reference=False``,
        the configuration (streams, reference tables, coefficients) — the reference samples are
        most of its size; leave them out when the restoring side can rebuild them from the
        profile (:meth:`restore` with ``template``)."""
        def spec(s: _Spec) -> dict[str, list[Any]]:
            return {"src": s.src, "obs": s.obs, "alpha": s.alpha, "beta": s.beta, "kl": s.kl, "group": s.group,
                    "overshoot": s.overshoot, "change": s.change, "delta": s.delta, "sd_ratio": s.sd_ratio,
                    "watch": s.watch}

        state: dict[str, Any] = {
            "kind": "reference_cusum", "version": 1, "columns": self.columns,
            "prediction_bank": self._pbank.snapshot(), "error_bank": self._ebank.snapshot(),
            "window_detections": self._window_detections.tolist(), "window_ratio": self._window_ratio.tolist(),
            "window_n": self._window_n.tolist(), "n_total": self._n_total.tolist(),
            "window_change": [list(c) for c in self._window_change],
            "held_ratio": self._held_ratio.tolist(), "held_change": [list(c) for c in self._held_change],
        }
        if reference:
            state["reference"] = {
                "streams": [[s.kind, s.name, s.attribute, s.group] for s in self.streams],
                "numeric": {k: [v[0].tolist(), v[1].tolist()] for k, v in self.numeric.items()},
                "atoms": {k: v.tolist() for k, v in self.atoms.items()},
                "categories": self.categories, "classes": self.classes, "attributes": self.attributes,
                "positive_label": self.positive_label, "false_alarms_per_million": self.false_alarms_per_million,
                "sources": [[kind, list(key) if isinstance(key, tuple) else key] for kind, key in self._sources],
                "observed": [[kind, list(key) if isinstance(key, tuple) else key] for kind, key in self._observed],
                "prediction_spec": spec(self._pspec), "error_spec": spec(self._espec),
            }
        return state

    @classmethod
    def restore(cls, state: Mapping[str, Any], *, template: ReferenceCUSUM | None = None) -> Self:
        """Rebuild from :meth:`snapshot`; a snapshot without its reference needs ``template``, a fresh
        instance built from the same profile and settings (its statistics are replaced)."""
        def spec(d: Mapping[str, Any]) -> _Spec:
            return _Spec(list(d["src"]), list(d["obs"]), list(d["alpha"]), list(d["beta"]), list(d["kl"]),
                         list(d["group"]), list(d.get("overshoot") or [0.0] * len(d["src"])),
                         list(d.get("change") or [""] * len(d["src"])), list(d.get("delta") or [0.0] * len(d["src"])),
                         list(d.get("sd_ratio") or [0.0] * len(d["src"])),
                         [bool(w) for w in d.get("watch") or [True] * len(d["src"])])

        pbank, ebank = state["prediction_bank"], state["error_bank"]
        ref = state.get("reference")
        if ref is not None:
            sources = [(kind, (key[0], key[1]) if kind == "indicator" else key) for kind, key in ref["sources"]]
            observed = [(kind, tuple(key) if kind == "group" else key) for kind, key in ref["observed"]]
            out = cls(streams=[Stream(*s) for s in ref["streams"]],
                      numeric={k: (v[0], v[1]) for k, v in ref["numeric"].items()},
                      atoms=ref.get("atoms") or {},
                      categories=ref["categories"], classes=ref["classes"], attributes=ref["attributes"],
                      positive_label=ref["positive_label"], prediction_spec=spec(ref["prediction_spec"]),
                      error_spec=spec(ref["error_spec"]), layout=(sources, observed),
                      false_alarms_per_million=ref["false_alarms_per_million"],
                      thresholds=(pbank["thresholds"], ebank["thresholds"]))
        elif template is None:
            raise DetectorError("this CUSUM snapshot has no reference: restore it with template=")
        else:
            same = (template.columns == int(state["columns"])
                    and np.array_equal(template._pbank.thresholds, np.asarray(pbank["thresholds"], np.float64))
                    and np.array_equal(template._ebank.thresholds, np.asarray(ebank["thresholds"], np.float64)))
            if not same:
                raise DetectorError("this CUSUM snapshot was taken with another reference or other settings")
            out = template  # type: ignore[assignment]
        out._pbank = PageCUSUM.restore({**pbank, "returns": out._pspec.returns(), "watch": out._pspec.watch})
        out._ebank = PageCUSUM.restore({**ebank, "returns": out._espec.returns(), "watch": out._espec.watch})
        if state.get("held_ratio") is not None:
            out._held_ratio = np.asarray(state["held_ratio"], dtype=np.float64)
            out._held_change = [(str(c[0]), float(c[1]), float(c[2])) for c in state["held_change"]]
        out._window_detections = np.asarray(state["window_detections"], dtype=np.int64)
        out._window_ratio = np.asarray(state["window_ratio"], dtype=np.float64)
        out._window_n = np.asarray(state["window_n"], dtype=np.int64)
        out._n_total = np.asarray(state["n_total"], dtype=np.int64)
        out._window_change = [(str(c[0]), float(c[1]), float(c[2])) for c in state.get("window_change") or ()] \
            or [("", 0.0, 0.0)] * len(out.streams)
        return out


class _NormalScores:
    """``Φ⁻¹`` of the mid-rank CDF of a sorted reference sample, standardised on that sample.

    ``moments`` (mean, variance of the raw scores over the sample) are recomputed when not given.
    """

    def __init__(self, sample: np.ndarray, moments: Sequence[float] | None = None) -> None:
        self.sample = np.asarray(sample, dtype=np.float64)
        n = self.sample.size
        u = np.clip(np.arange(2 * n + 1) / (2.0 * n), 0.5 / n, 1.0 - 0.5 / n)
        self.table = ndtri(u)
        self._run_end = np.searchsorted(self.sample, self.sample, side="right")
        if moments is None:
            raw = self._raw(self.sample)
            moments = (float(raw.mean()), float(raw.var()))
        self.mean, self.var = float(moments[0]), float(moments[1])
        self.scale = 1.0 / math.sqrt(self.var) if self.var > 0 else 1.0

    def _raw(self, values: np.ndarray) -> np.ndarray:
        # mid-rank index left + right with one search: right == left unless the value is in the
        # sample, where right is the end of its run of ties
        left = np.searchsorted(self.sample, values, side="left")
        hit = self.sample[np.minimum(left, self.sample.size - 1)] == values
        return self.table[left + np.where(hit, self._run_end[np.minimum(left, self.sample.size - 1)], left)]

    def scores(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(standardised normal scores with 0 where missing, observed mask) of ``values``."""
        seen = ~np.isnan(values)
        y = (self._raw(np.where(seen, values, 0.0)) - self.mean) * self.scale
        return np.where(seen, y, 0.0), seen


# -------------------------------------------------------------------------------- points


def _point(stream: Stream, *, drift: bool, ratio: float, n: int, delta: float, sd_ratio: float,
           tags: Mapping[str, str], time_ns: int) -> Point:
    """``value`` = statistic / threshold, ``threshold`` 1 (the statistic's own threshold, on that scale);
    when a column detected, ``delta`` the signed change size it is tuned to (reference sds) and, for a
    variance column, ``sd_ratio`` (σ₁/σ₀)."""
    fields: dict[str, float | int | bool | str] = {"value": float(ratio), "drift": drift, "threshold": 1.0, "n": int(n)}
    if delta:
        fields["delta"] = float(delta)
    if sd_ratio:
        fields["sd_ratio"] = float(sd_ratio)
    if stream.kind == "feature":
        return Point("feature_drift", {**tags, "feature": stream.name, "method": METHOD}, fields, time_ns)
    if stream.kind == "prediction":
        return Point("prediction_drift", {**tags, "method": METHOD, "target": "prediction"}, fields, time_ns)
    if stream.kind == "concept":
        return Point("concept_drift", {**tags, "detector": METHOD}, fields, time_ns)
    del fields["drift"]
    return Point("fairness", {**tags, "attribute": stream.attribute, "group": stream.group, "metric": FAIRNESS_METRIC},
                 fields, time_ns)


def cusum_detection_points(detection: NewDetection, *, tags: Mapping[str, str], time_ns: int) -> Point:
    """The point a stream's detection writes at once (timestamped at the detecting event):
    ``feature_drift``/``prediction_drift`` with ``method=cusum`` (``value`` = statistic / threshold,
    ≥ 1; ``threshold`` 1), ``concept_drift`` with ``detector=cusum``, or ``fairness`` with
    ``metric=selection_rate_cusum``; ``n`` = the stream's observations in the window so far.

    >>> d = NewDetection(Stream("feature", "age"), row=3, ratio=1.02, n=140)
    >>> cusum_detection_points(d, tags={"model_id": "m"}, time_ns=7).to_line_protocol()
    'feature_drift,feature=age,method=cusum,model_id=m drift=true,n=140i,threshold=1.0,value=1.02 7'
    >>> d = NewDetection(Stream("feature", "age"), row=3, ratio=1.02, n=140, change="sd ×2", delta=1.0, sd_ratio=2.0)
    >>> cusum_detection_points(d, tags={"model_id": "m"}, time_ns=7).to_line_protocol()
    'feature_drift,feature=age,method=cusum,model_id=m delta=1.0,drift=true,n=140i,sd_ratio=2.0,threshold=1.0,value=1.02 7'
    """
    return _point(detection.stream, drift=True, ratio=detection.ratio, n=detection.n, delta=detection.delta,
                  sd_ratio=detection.sd_ratio, tags=tags, time_ns=time_ns)


def cusum_points(result: CUSUMResult, *, tags: Mapping[str, str], time_ns: int) -> list[Point]:
    """One point per stream at a window's close: ``drift`` whether it detected in the window,
    ``value`` its largest statistic/threshold at a detection, else its current one (< 1).
    The predicted-class streams of a multiclass model share one ``prediction_drift`` point.
    A stream that observed nothing in the window writes no point: it has no evidence either way
    (a window without labelled pairs must not count as a clear window of the error stream)."""
    out: list[Point] = []
    prediction: list[StreamStatus] = []
    for s in result.streams:
        if s.n == 0:
            continue
        if s.stream.kind == "prediction":
            prediction.append(s)
            continue
        out.append(_point(s.stream, drift=s.drift, ratio=s.ratio, n=s.n, delta=s.delta, sd_ratio=s.sd_ratio, tags=tags,
                          time_ns=time_ns))
    if prediction:
        top = max(prediction, key=lambda s: (s.drift, s.ratio))
        out.append(_point(top.stream, drift=any(s.drift for s in prediction), ratio=top.ratio, n=top.n,
                          delta=top.delta, sd_ratio=top.sd_ratio, tags=tags, time_ns=time_ns))
    return out
