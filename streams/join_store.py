"""The join table in columns: a :class:`~streams.join.JoinStore` at ~134 B per waiting prediction, not ~570.

A waiting prediction used to be a Python list holding a float, the model id, a state and a
~330-character JSON string, behind its key string and an ``OrderedDict`` node: ~570 B of RSS
per prediction (``python -m bench memory``). With the default bound (1,000,000 entries per
partition) that was most of a worker's memory. Here an entry is a row of a few typed arrays,
and a waiting prediction's values are a row of its model's column block (``python -m bench
memory --full``: 134 B per waiting prediction, 87 B per prediction with half of them labelled):

- **entries**, in arrival order (the join evicts oldest-first): event time ``f8``, the key's
  64-bit xxh3 hash ``u8``, model code ``i2``, state ``i1``, payload row ``i4``, and where its
  key's UTF-8 bytes are in one ``bytearray`` (``u4`` offset, ``u2`` length). A deleted entry is
  a hole (state ``FREE``) until the next :meth:`ColumnarStore._rebuild` compacts them (when holes
  are a quarter of the entries).
- **the index** from key to entry: the entries since the last rebuild in a ``dict`` (hash →
  entry, at most :data:`RECENT_ENTRIES`), the others in two sorted arrays (hash, entry) searched
  with ``numpy.searchsorted`` — an LSM tree of two levels; the rebuild sorts the live entries'
  hashes once every :data:`RECENT_ENTRIES` inserts. A hit is confirmed against the key's bytes,
  and the rare second key with the same hash lives in a small ``dict`` of its own, so a hash
  collision never joins the wrong pair.
- **payloads** (:class:`_Columns`, per model): numeric features, score (and a regression's
  prediction) as exact decimals (``int32``) or ``f8`` columns; categorical features, the version,
  the prediction class and the sensitive attributes (interned as one tuple) as one-byte (past 255
  values, two-byte) codes of per-column dictionaries. Freed
  rows are reused. A prediction that does not fit (``scores``, type errors, a dictionary full at
  :data:`CODES` values) is kept as its object (:attr:`ColumnarStore._objects`): exact, just not
  compact. The newest :data:`STAGED_ROWS` predictions stay objects until they are written to the
  columns together (one vectorised write per model), so a pair that joins soon never is; a
  batch's keys are looked up, and its joined rows decoded, at once (:meth:`ColumnarStore.prefetch`).
- waiting labels (``[label, feedback time]``) and values that are not join entries (the tests'
  generic records) are kept as objects.

``get`` rebuilds the entry (and its :class:`~streams.events.Prediction`) from the row, so to the
join this is the same ``key → [time, model, state, payload]`` store as
:class:`~streams.join.DictStore`; ``tests/streams/test_join_store.py`` holds the two to the same
answers on random operation sequences. :meth:`ColumnarStore.to_frame` / :meth:`from_frame` write
and read the whole table as one binary frame (the changelog's full snapshot: numpy buffers, not a
JSON document per entry), read back in bulk, not entry by entry (``python -m bench.recovery``).
"""

from __future__ import annotations

import math
import struct
from array import array
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, Iterator, MutableMapping, Sequence

import numpy as np
import orjson
import xxhash

from streams.events import Prediction
from streams.join import (JOINED, MODEL, PAYLOAD, STATE, TIME, WAITING_LABEL, WAITING_PREDICTION, is_join_entry,
                          packed_json, unpack_prediction)

FREE, PREDICTION_STATE, LABEL_STATE, JOINED_STATE, OTHER_STATE = 0, 1, 2, 3, 4
_STATE_CODE = {WAITING_PREDICTION: PREDICTION_STATE, WAITING_LABEL: LABEL_STATE, JOINED: JOINED_STATE}
_STATE_TEXT = {PREDICTION_STATE: WAITING_PREDICTION, LABEL_STATE: WAITING_LABEL, JOINED_STATE: JOINED}

RECENT_ENTRIES = 65_536
"""Entries indexed by the ``dict`` level before the sorted level is rebuilt (its memory is fixed: ~7 MB)."""
STAGED_ROWS = 4096
"""Predictions kept as objects before they are written to their model's columns together."""
CODES = 65_535
"""Most distinct values of one coded column (``u2`` codes; code 0 is ``None``)."""
KEY_BYTES = 65_535
"""Longest key kept in the byte arena (a longer one is kept as an object)."""
_hash = xxhash.xxh3_64_intdigest
_FEATURES, _SCORE, _PREDICTION = attrgetter("features"), attrgetter("score"), attrgetter("prediction")
_VERSION, _ATTRIBUTES = attrgetter("model_version"), attrgetter("attributes")
_FLOAT = {float}
_KINDS = {"text": lambda v: type(v) is str,
          "pairs": lambda v: type(v) is tuple and all(type(k) is str and type(x) is str for k, x in v)}
"""What a coded column may add to its dictionary (``None``, code 0, is there from the start)."""
_ENTRY_ARRAYS = (("_times", "d"), ("_hashes", "Q"), ("_models", "h"), ("_states", "b"), ("_rows", "i"),
                 ("_key_at", "I"), ("_key_len", "H"))


def _grown(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with room for at least ``size`` rows, grown by an eighth (not doubled: the slack
    is memory every entry pays for)."""
    if size <= array.shape[0]:
        return array
    capacity = max(size, array.shape[0] + max(4096, array.shape[0] // 8))
    out = np.zeros((capacity,) + array.shape[1:], dtype=array.dtype)
    out[:array.shape[0]] = array
    return out


class _Codes:
    """One coded column's dictionary: value ↔ ``u2`` code, ``None`` is code 0.

    Only values of the column's ``kind`` are added (text, or tuples of text pairs for the
    attributes), so a value of another type is never found (``1`` is not ``"1"``) and makes
    :meth:`encode` refuse the column: the type check costs nothing for values already known.
    """

    __slots__ = ("codes", "values", "kind")

    def __init__(self, values: Sequence[Any] = (None,), kind: str = "text") -> None:
        self.values: list[Any] = list(values)
        self.codes: dict[Any, int] = {v: i for i, v in enumerate(self.values)}
        self.kind = kind

    def encode(self, column: Sequence[Any]) -> list[int] | None:
        """The codes of ``column`` (new values added), or ``None`` when the dictionary would pass :data:`CODES`."""
        codes = list(map(self.codes.get, column))
        if None not in codes:
            return codes  # type: ignore[return-value]
        missing = [v for v in dict.fromkeys(column) if v not in self.codes]
        if len(self.values) + len(missing) > CODES or not all(map(_KINDS[self.kind], missing)):
            return None
        for value in missing:
            self.codes[value] = len(self.values)
            self.values.append(value)
        return list(map(self.codes.__getitem__, column))


class _Columns:
    """One model's waiting predictions as rows of numpy columns (see the module docstring).

    Its layout is set by the first prediction written: the feature names in order, which are
    numeric (a ``float``) and which categorical (``str`` or ``None``), and whether the prediction
    is a class or a number. The parser types every feature per the model's schema, so all of a
    model's predictions fit; one that does not is left to the caller to keep as an object.

    Numbers (numeric features, the score, a regression's prediction) are kept as **decimals** where
    they are: a column whose every value is ``q / 10**e`` exactly for an ``int32`` ``q`` and one
    ``e`` (0–9) is stored as ``q`` — 4 bytes, not 8 — and read back as ``q / 10**e``, which is the
    same float bit for bit (the write checks that round trip, so it is exact by construction, not
    by assumption). Producers' values mostly are such decimals (a rounded measurement, an amount in
    cents, a probability with six digits); a value that is not (more digits, a -0.0, out of range)
    raises its column's ``e`` or, past 9, moves the column to ``float64`` for good. This is ALP's
    idea (Afroozeh et al., SIGMOD 2023) without its per-vector exponents. NaN is ``INT32_MIN``.
    Codes are one byte until a dictionary passes 255 values, then two.
    """

    def __init__(self, names: tuple[str, ...], numeric: tuple[bool, ...], numeric_prediction: bool) -> None:
        self.names = names
        self.numeric = numeric
        self.numeric_prediction = numeric_prediction
        self.num_at = [i for i, n in enumerate(numeric) if n]
        self.cat_at = [i for i, n in enumerate(numeric) if not n]
        placed = [(self.num_at + self.cat_at).index(i) for i in range(len(names))]
        self.order = (lambda given: ()) if not names else (
            (lambda given: (given[placed[0]],)) if len(names) == 1 else itemgetter(*placed))
        """The features in the layout's order from a list of the numbers then the categories (in C)."""
        # coded columns: categorical features, then version, attributes, prediction (a class)
        self.dictionaries = [_Codes() for _ in range(len(self.cat_at) + 2 + (not numeric_prediction))]
        self.dictionaries[len(self.cat_at) + 1].kind = "pairs"
        self.width = len(self.num_at) + 1 + numeric_prediction  # numeric features, score, a numeric prediction
        self.exponents = [None] * self.width  # the first write picks them (:attr:`decided`)
        self.decided = False
        self.ints = np.zeros((0, 0), dtype=np.int32)
        self.floats = np.zeros((0, 0), dtype=np.float64)
        self.codes = np.zeros((0, len(self.dictionaries)), dtype=np.uint8)
        self.size = 0
        self.free = np.zeros(0, dtype=np.int32)
        self.free_count = 0

    @staticmethod
    def layout(event: Prediction) -> tuple[tuple[str, ...], tuple[bool, ...], bool]:
        return (tuple(event.features), tuple(type(v) is float for v in event.features.values()),
                type(event.prediction) is float)

    def fits(self, event: Prediction) -> bool:
        return (event.scores is None and not event.type_errors
                and type(event.prediction) is (float if self.numeric_prediction else str)
                and tuple(event.features) == self.names)

    @property
    def int_columns(self) -> list[int]:
        return [k for k, e in enumerate(self.exponents) if e is not None]

    @property
    def float_columns(self) -> list[int]:
        return [k for k, e in enumerate(self.exponents) if e is None]

    def write(self, events: Sequence[Prediction]) -> list[int] | None:
        """Write ``events`` (all :meth:`fits`) to rows; their rows, or ``None`` when a value does not
        fit (a numeric feature that is not a float, a dictionary full): then nothing is written.
        Each column is read from the events at once (``map`` over attribute getters, in C)."""
        n = len(events)
        features = np.fromiter(chain.from_iterable(map(dict.values, map(_FEATURES, events))), dtype=object,
                               count=n * len(self.names)).reshape(n, len(self.names))
        numbers = np.empty((n, self.width), dtype=np.float64)
        if self.num_at:
            given = features[:, self.num_at]
            if not set(map(type, given.ravel().tolist())) <= _FLOAT:
                return None
            numbers[:, :len(self.num_at)] = given
        scores = list(map(_SCORE, events))
        numbers[:, len(self.num_at)] = [math.nan if s is None else s for s in scores] if None in scores else scores
        if self.numeric_prediction:
            numbers[:, -1] = list(map(_PREDICTION, events))
        coded: list[Sequence[Any]] = [features[:, i].tolist() for i in self.cat_at]
        coded.append(list(map(_VERSION, events)))
        coded.append(list(map(tuple, map(dict.items, map(_ATTRIBUTES, events)))))
        if not self.numeric_prediction:
            coded.append(list(map(_PREDICTION, events)))
        codes = np.empty((n, len(self.dictionaries)), dtype=np.uint16)
        for j, (dictionary, column) in enumerate(zip(self.dictionaries, coded)):
            encoded = dictionary.encode(column)
            if encoded is None:
                return None
            codes[:, j] = encoded
        self._fit_exponents(numbers)
        if self.codes.dtype == np.uint8 and max(map(len, (d.values for d in self.dictionaries))) > 256:
            self.codes = self.codes.astype(np.uint16)
        rows = self._allocate(n)
        ints, floats = self.int_columns, self.float_columns
        if ints:
            scaled = numbers[:, ints] * _POWERS[[self.exponents[k] for k in ints]]
            self.ints[rows] = np.where(np.isnan(scaled), _NAN_CODE, np.round(scaled)).astype(np.int32)
        if floats:
            self.floats[rows] = numbers[:, floats]
        self.codes[rows] = codes
        return rows.tolist()

    def _fit_exponents(self, numbers: np.ndarray) -> None:
        """Raise each decimal column's exponent until ``numbers`` fit, or make it ``float64``."""
        start = 0 if not self.decided else None
        for k in range(self.width):
            e = self.exponents[k] if self.decided else 0
            if e is None:
                continue
            column = numbers[:, k]
            while e <= 9 and not _decimal(column, e):
                e += 1
            old = self.exponents[k]
            if e > 9 or (old is not None and self.decided and not self._rescaled(k, old, e)):
                self._to_floats(k)
            else:
                self._set_exponent(k, e)
        if start == 0:
            self.decided = True
            self.ints = np.zeros((0, len(self.int_columns)), dtype=np.int32)
            self.floats = np.zeros((0, len(self.float_columns)), dtype=np.float64)

    def _rescaled(self, k: int, old: int, new: int) -> bool:
        """Column ``k``'s stored decimals at exponent ``new`` (from ``old``); false when they would not fit."""
        if new == old:
            return True
        at = self.int_columns.index(k)
        stored = self.ints[:self.size, at].astype(np.int64)
        nan = stored == _NAN_CODE
        scaled = stored * 10 ** (new - old)
        if np.any(np.abs(scaled[~nan]) >= _INT_LIMIT):
            return False
        self.ints[:self.size, at] = np.where(nan, _NAN_CODE, scaled)
        self._set_exponent(k, new)
        return True

    def _to_floats(self, k: int) -> None:
        """Move number column ``k`` to ``float64`` (its stored decimals decoded), for good."""
        ints, floats = self.int_columns, self.float_columns
        if k in ints and self.decided:
            at = ints.index(k)
            stored = self.ints[:, at]
            decoded = np.where(stored == _NAN_CODE, np.nan, stored / _POWERS[self.exponents[k]])
            self.ints = np.delete(self.ints, at, axis=1)
            place = sum(1 for f in floats if f < k)
            self.floats = np.insert(self.floats, place, decoded, axis=1)
        self._set_exponent(k, None)

    def _allocate(self, n: int) -> np.ndarray:
        reused = min(n, self.free_count)
        rows = np.empty(n, dtype=np.int64)
        rows[:reused] = self.free[self.free_count - reused:self.free_count]
        self.free_count -= reused
        fresh = n - reused
        rows[reused:] = np.arange(self.size, self.size + fresh)
        self.size += fresh
        self.ints = _grown(self.ints, self.size)
        self.floats = _grown(self.floats, self.size)
        self.codes = _grown(self.codes, self.size)
        return rows

    def release(self, row: int) -> None:
        self.free = _grown(self.free, self.free_count + 1)
        self.free[self.free_count] = row
        self.free_count += 1

    def numbers(self, row: int) -> list[float]:
        """Row ``row``'s number columns, decoded."""
        scales = self._scales
        if len(scales) == self.width:  # every number column a decimal: the common case
            return [math.nan if q == _NAN_CODE else q / scale for q, scale in zip(self.ints[row].tolist(), scales)]
        out: list[float] = [0.0] * self.width
        floats = iter(self.floats[row].tolist())
        ints = iter(self.ints[row].tolist())
        for k, e in enumerate(self.exponents):
            if e is None:
                out[k] = next(floats)
            else:
                q = next(ints)
                out[k] = math.nan if q == _NAN_CODE else q / _SCALES[e]
        return out

    @property
    def exponents(self) -> list[int | None]:
        """Per number column: its decimal exponent, or ``None`` once it is ``float64``."""
        return self._exponents

    @exponents.setter
    def exponents(self, value: list[int | None]) -> None:
        self._exponents = value
        self._scales = [_SCALES[e] for e in value if e is not None]

    def _set_exponent(self, k: int, e: int | None) -> None:
        self.exponents = self._exponents[:k] + [e] + self._exponents[k + 1:]

    def read_many(self, rows: Sequence[int], keys: Sequence[str], model_id: str,
                  timestamps: Sequence[float]) -> list[Prediction]:
        """The predictions of ``rows``, decoded together: :meth:`read` of each, as one gather."""
        index = np.asarray(rows, dtype=np.int64)
        numbers = np.empty((index.shape[0], self.width), dtype=np.float64)
        ints, floats = self.int_columns, self.float_columns
        if ints:
            stored = self.ints[index]
            numbers[:, ints] = np.where(stored == _NAN_CODE, np.nan, stored / np.asarray(self._scales))
        if floats:
            numbers[:, floats] = self.floats[index]
        dictionaries, names, order = self.dictionaries, self.names, self.order
        k, n_num = len(self.cat_at), len(self.num_at)
        categories = dictionaries[:k]
        version, attributes = dictionaries[k].values, dictionaries[k + 1].values
        classes = None if self.numeric_prediction else dictionaries[k + 2].values
        out = []
        for values, codes, key, timestamp in zip(numbers.tolist(), self.codes[index].tolist(), keys, timestamps):
            given = values[:n_num] + [d.values[c] for d, c in zip(categories, codes)]
            score = values[n_num]
            out.append(Prediction(prediction_id=key, model_id=model_id, model_version=version[codes[k]],
                                  timestamp=timestamp, features=dict(zip(names, order(given))),
                                  prediction=values[-1] if classes is None else classes[codes[k + 2]],
                                  score=None if score != score else score, attributes=dict(attributes[codes[k + 1]])))
        return out

    def read(self, row: int, key: str, model_id: str, timestamp: float) -> Prediction:
        numbers = self.numbers(row)
        codes = self.codes[row].tolist()
        dictionaries = self.dictionaries
        k = len(self.cat_at)
        given = numbers[:len(self.num_at)] + [d.values[c] for d, c in zip(dictionaries[:k], codes)]
        score = numbers[len(self.num_at)]
        prediction = numbers[-1] if self.numeric_prediction else dictionaries[k + 2].values[codes[k + 2]]
        return Prediction(prediction_id=key, model_id=model_id, model_version=dictionaries[k].values[codes[k]],
                          timestamp=timestamp, features=dict(zip(self.names, self.order(given))),
                          prediction=prediction, score=None if score != score else score,
                          attributes=dict(dictionaries[k + 1].values[codes[k + 1]]))


_NAN_CODE = -(2 ** 31)
_INT_LIMIT = 2 ** 31 - 1
_SCALES = [10.0 ** e for e in range(10)]
_POWERS = np.array(_SCALES)


def _decimal(column: np.ndarray, e: int) -> bool:
    """Whether every value of ``column`` is ``q / 10**e`` exactly for an int32 ``q`` (NaN aside; a -0.0
    is not: its sign would be lost)."""
    scale = _SCALES[e]
    with np.errstate(invalid="ignore", over="ignore"):
        q = np.round(column * scale)
        ok = (q / scale == column) & (np.abs(q) < _INT_LIMIT) & ~((column == 0) & np.signbit(column))
    return bool(np.all(ok | np.isnan(column)))


class ColumnarStore(MutableMapping[str, list[Any]]):
    """A :class:`~streams.join.JoinStore` in columns (see the module docstring); also a mutable
    mapping ``key → entry`` in insertion order, as :class:`~streams.join.DictStore`.

    The entry columns are :class:`array.array` s: typed and compact like numpy arrays, but read and
    written one item at a time ~3× faster, which is how the join uses them; the scans (expiry,
    the index's rebuild, compaction) read them through zero-copy numpy views.

    >>> store = ColumnarStore()
    >>> p = Prediction("a", "m", "1", 10.0, {"age": 41.0, "channel": "web"}, "1", score=0.75, attributes={"sex": "F"})
    >>> store.set("a", [10.0, "m", "p", p]); store.set("b", [11.0, "m", "l", ["0", 12.0]])
    >>> store.get("a") == [10.0, "m", "p", p], store.oldest()[0], len(store)
    (True, 'a', 2)
    >>> store.delete("a"); list(store)
    ['b']
    """

    def __init__(self) -> None:
        self._times = array("d")
        self._hashes = array("Q")
        self._models = array("h")
        self._states = array("b")
        self._rows = array("i")
        self._key_at = array("I")
        self._key_len = array("H")
        self._arena = bytearray()
        self._start = 0
        """No live entry before this one."""
        self._live = 0
        self._recent: dict[int, int] = {}
        self._sorted_hashes = np.zeros(0, dtype=np.uint64)
        self._sorted_entries = np.zeros(0, dtype=np.int32)
        self._collided: dict[str, int] = {}
        """Keys whose hash another live key had first (found by key, not by hash)."""
        self._long_keys: dict[int, str] = {}
        self._model_ids: list[str] = []
        self._model_codes: dict[str, int] = {}
        self._columns: dict[int, _Columns] = {}
        self._staged: dict[int, Prediction] = {}
        self._memo_key: str | None = None
        self._memo_entry = -1
        self._memo_taken = False
        self._ahead: dict[str, tuple[int, int]] = {}
        """Per key of the batch in hand (:meth:`prefetch`): its hash and its entry in the sorted level (or -1)."""
        self._read_ahead: dict[int, Prediction] = {}
        """Per entry found by :meth:`prefetch`: its waiting prediction, read with the others at once."""
        self._objects: dict[int, Any] = {}
        """Per entry: a waiting prediction that is not in columns, a waiting label's payload, or a
        value that is not a join entry (its whole value)."""

    # -- JoinStore ---------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> list[Any] | None:  # type: ignore[override]
        entry = self._find(key)
        return default if entry < 0 else self._entry(entry)

    def set(self, key: str, value: list[Any]) -> None:
        entry = self._find(key)
        if entry < 0:
            entry = self._insert(key)
        else:
            self._clear_payload(entry)
        self._store(entry, key, value)

    def delete(self, key: str) -> None:
        entry = self._find(key)
        if entry >= 0:
            self._remove(entry)

    def items(self) -> Iterator[tuple[str, list[Any]]]:  # type: ignore[override]
        return iter([(self._key(e), self._entry(e)) for e in self._entries()])

    def prefetch(self, keys: Sequence[str]) -> None:
        """Look up a batch's keys in the sorted level at once (one ``searchsorted``), and read the
        waiting predictions found in either level together (one gather and decode per model), so
        that the join's lookups of those keys, one at a time in the batch's order, are dictionary hits.
        Replaces what an earlier call prefetched; a rebuild of the index forgets it."""
        hashes = [_hash(key.encode()) for key in keys]
        found = [-1] * len(keys)
        sorted_hashes = self._sorted_hashes
        if sorted_hashes.shape[0] and keys:
            wanted = np.array(hashes, dtype=np.uint64)
            at = np.minimum(sorted_hashes.searchsorted(wanted), sorted_hashes.shape[0] - 1)
            found = np.where(sorted_hashes[at] == wanted, self._sorted_entries[at], -1).tolist()
        self._ahead = dict(zip(keys, zip(hashes, found)))
        self._read_ahead = {}
        recent = self._recent
        entries = list(dict.fromkeys([e for e in map(recent.get, hashes) if e is not None] + [e for e in found if e >= 0]))
        if not entries:
            return
        chosen = np.array(entries, dtype=np.int64)
        states = np.frombuffer(self._states, dtype=np.int8)[chosen]
        rows = np.frombuffer(self._rows, dtype=np.int32)[chosen]
        models = np.frombuffer(self._models, dtype=np.int16)[chosen]
        waiting = (states == PREDICTION_STATE) & (rows >= 0)
        del states
        for code in np.unique(models[waiting]).tolist():
            mine = chosen[waiting & (models == code)].tolist()
            times = [self._times[e] for e in mine]
            predictions = self._columns[code].read_many([self._rows[e] for e in mine], [self._key(e) for e in mine],
                                                        self._model_ids[code], times)
            self._read_ahead.update(zip(mine, predictions))

    def oldest(self) -> tuple[str, list[Any]] | None:
        states, end = self._states, len(self._states)
        while self._start < end and states[self._start] == FREE:
            self._start += 1
        if self._start == end:
            return None
        return self._key(self._start), self._entry(self._start, payload=False)

    def expiring(self, horizon: float) -> list[tuple[str, list[Any]]]:
        """The entries whose time is before ``horizon``, in order (one vectorised scan)."""
        states = np.frombuffer(self._states, dtype=np.int8)[self._start:]
        times = np.frombuffer(self._times, dtype=np.float64)[self._start:]
        found = np.flatnonzero((states != FREE) & (states != OTHER_STATE) & (times < horizon)) + self._start
        del states, times  # the views pin the arrays' buffers: an append would fail while they live
        return [(self._key(e), self._entry(e, payload=False)) for e in found.tolist()]

    def __len__(self) -> int:
        return self._live

    # -- MutableMapping ----------------------------------------------------------------------

    def __getitem__(self, key: str) -> list[Any]:
        entry = self._find(key)
        if entry < 0:
            raise KeyError(key)
        return self._entry(entry)

    def __setitem__(self, key: str, value: list[Any]) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        entry = self._find(key)
        if entry < 0:
            raise KeyError(key)
        self._remove(entry)

    def __iter__(self) -> Iterator[str]:
        return iter([self._key(e) for e in self._entries()])

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key) >= 0

    def __repr__(self) -> str:
        return f"ColumnarStore({self._live} entries)"

    # -- entries -----------------------------------------------------------------------------

    def _live_entries(self) -> np.ndarray:
        states = np.frombuffer(self._states, dtype=np.int8)
        live = np.flatnonzero(states[self._start:] != FREE) + self._start
        del states
        return live

    def _entries(self) -> list[int]:
        return self._live_entries().tolist()

    def _key(self, entry: int) -> str:
        length = self._key_len[entry]
        if length == KEY_BYTES:
            return self._long_keys[entry]
        at = self._key_at[entry]
        return self._arena[at:at + length].decode()

    def _find(self, key: str) -> int:
        """The live entry of ``key``, or -1. The last answer is kept for the same key object: the
        join asks for a key two or three times in a row (is it a duplicate, is a label waiting, set)."""
        if key is self._memo_key:
            return self._memo_entry
        entry = self._search(key)
        self._memo_key, self._memo_entry = key, entry
        return entry

    def _search(self, key: str) -> int:
        """Sets ``_memo_taken``: whether another live key has this key's hash (then a new entry for
        this key is found by key, in ``_collided``)."""
        self._memo_taken = False
        if self._collided and key in self._collided:
            return self._collided[key]
        data = key.encode()
        ahead = self._ahead.get(key)
        h = _hash(data) if ahead is None else ahead[0]
        entry = self._recent.get(h)
        if entry is None and ahead is not None:
            if ahead[1] < 0:
                return -1
            entry = ahead[1]
        elif entry is None:
            sorted_hashes = self._sorted_hashes
            if not sorted_hashes.shape[0]:
                return -1
            i = int(sorted_hashes.searchsorted(np.uint64(h)))
            if i == sorted_hashes.shape[0] or int(sorted_hashes[i]) != h:
                return -1
            entry = int(self._sorted_entries[i])
        if self._states[entry] == FREE:
            return -1
        if not self._is_key(entry, data):
            self._memo_taken = True
            return -1
        return entry

    def _is_key(self, entry: int, data: bytes) -> bool:
        length = self._key_len[entry]
        if length == KEY_BYTES:
            return self._long_keys[entry].encode() == data
        at = self._key_at[entry]
        return length == len(data) and self._arena[at:at + length] == data

    def _insert(self, key: str) -> int:
        """A new live entry for ``key`` (which :meth:`_find` has just not found), last in order."""
        taken = self._memo_taken if key is self._memo_key else self._search(key) < 0 and self._memo_taken
        if len(self._recent) >= RECENT_ENTRIES:
            self._rebuild()
        data = key.encode()
        entry = len(self._states)
        self._times.append(0.0)
        self._hashes.append(_hash(data))
        self._models.append(-1)
        self._states.append(OTHER_STATE)  # live from here; :meth:`_store` sets the state
        self._rows.append(-1)
        if len(data) >= KEY_BYTES:
            self._key_at.append(0)
            self._key_len.append(KEY_BYTES)
            self._long_keys[entry] = key
        else:
            self._key_at.append(len(self._arena))
            self._key_len.append(len(data))
            self._arena += data
        self._live += 1
        if taken:
            self._collided[key] = entry
        else:
            self._recent[self._hashes[entry]] = entry
        self._memo_key, self._memo_entry = key, entry
        return entry

    def _store(self, entry: int, key: str, value: list[Any]) -> None:
        """Keep ``value`` at ``entry`` (whose payload is clear)."""
        state = _STATE_CODE.get(value[STATE]) if is_join_entry(value) else None
        if state is None:
            self._states[entry] = OTHER_STATE
            self._objects[entry] = value
            self._models[entry] = -1
            return
        model_id = value[MODEL]
        code = self._model_codes.get(model_id)
        if code is None:
            code = self._model_code(model_id)
        self._times[entry] = value[TIME]
        self._models[entry] = code
        self._states[entry] = state
        self._rows[entry] = -1
        if state == PREDICTION_STATE:
            payload = value[PAYLOAD]
            event = payload if type(payload) is Prediction else unpack_prediction(key, value)
            if event.prediction_id != key or event.model_id != model_id or event.timestamp != value[TIME]:
                self._objects[entry] = event  # an entry that disagrees with its own event: kept as it is
                return
            self._staged[entry] = event
            if len(self._staged) >= STAGED_ROWS:
                self._write_staged()
        elif state == LABEL_STATE:
            self._objects[entry] = value[PAYLOAD]

    def _entry(self, entry: int, *, payload: bool = True) -> list[Any]:
        """The entry as :class:`~streams.join.DictStore` holds it; without ``payload``, a waiting
        prediction's is ``None`` (rebuilding it costs microseconds that eviction and expiry do not need)."""
        state = self._states[entry]
        if state == OTHER_STATE:
            return self._objects[entry]
        time, model_id = self._times[entry], self._model_ids[self._models[entry]]
        if state == JOINED_STATE:
            return [time, model_id, JOINED, None]
        if state == LABEL_STATE:
            return [time, model_id, WAITING_LABEL, self._objects[entry]]
        return [time, model_id, WAITING_PREDICTION, self._prediction(entry, time, model_id) if payload else None]

    def _prediction(self, entry: int, time: float, model_id: str) -> Prediction:
        staged = self._staged.get(entry) or self._read_ahead.get(entry)
        if staged is not None:
            return staged
        row = self._rows[entry]
        if row < 0:
            return self._objects[entry]
        return self._columns[self._models[entry]].read(row, self._key(entry), model_id, time)

    def _clear_payload(self, entry: int) -> None:
        if self._read_ahead:
            self._read_ahead.pop(entry, None)
        state = self._states[entry]
        if state == PREDICTION_STATE:
            if self._staged.pop(entry, None) is None:
                row = self._rows[entry]
                if row >= 0:
                    self._columns[self._models[entry]].release(row)
                else:
                    self._objects.pop(entry, None)
        elif state == LABEL_STATE or state == OTHER_STATE:
            self._objects.pop(entry, None)

    def _remove(self, entry: int) -> None:
        self._memo_key = None
        self._clear_payload(entry)
        self._states[entry] = FREE
        self._live -= 1
        h = self._hashes[entry]
        if self._recent.get(h) == entry:
            del self._recent[h]
        if self._collided:
            key = self._key(entry)
            if self._collided.get(key) == entry:
                del self._collided[key]
        self._long_keys.pop(entry, None)
        if entry == self._start:
            self._start += 1

    def _model_code(self, model_id: str) -> int:
        code = self._model_codes.get(model_id)
        if code is None:
            code = self._model_codes[model_id] = len(self._model_ids)
            self._model_ids.append(model_id)
        return code

    def _write_staged(self) -> None:
        """Write the staged predictions to their models' columns, one vectorised write per model."""
        by_model: dict[int, list[int]] = {}
        for entry in self._staged:
            by_model.setdefault(self._models[entry], []).append(entry)
        staged, self._staged = self._staged, {}
        for model, entries in by_model.items():
            events = [staged[e] for e in entries]
            columns = self._columns.get(model)
            if columns is None:
                columns = self._columns[model] = _Columns(*_Columns.layout(events[0]))
            fitting = [e for e, event in zip(entries, events) if columns.fits(event)]
            rows = columns.write([staged[e] for e in fitting]) if fitting else []
            if rows is None:  # a value outside the layout: write one by one, keep the misfits as objects
                rows = [(columns.write([staged[e]]) or [-1])[0] for e in fitting]
            placed = dict(zip(fitting, rows))
            for entry in entries:
                row = placed.get(entry, -1)
                self._rows[entry] = row
                if row < 0:
                    self._objects[entry] = staged[entry]

    def _rebuild(self) -> None:
        """Fold the ``dict`` level into the sorted level; compact the entries first when holes —
        deleted entries, including the expired or evicted ones before the oldest live entry — are a
        quarter of them (entry numbers change then: every reference to one is renumbered), so the
        arrays hold at most 4/3 of the live entries whatever the traffic."""
        self._memo_key = None
        self._ahead, self._read_ahead = {}, {}
        entries = len(self._states)  # the expired and evicted prefix before ``_start`` counts too
        if entries and entries - self._live > entries // 4:
            self._compact()
        live = self._live_entries()
        if self._collided:
            live = live[~np.isin(live, list(self._collided.values()))]
        hashes = np.frombuffer(self._hashes, dtype=np.uint64)[live]
        order = np.argsort(hashes, kind="stable")
        self._sorted_hashes = hashes[order]
        self._sorted_entries = live[order].astype(np.int32)
        self._recent = {}

    def _compact(self) -> None:
        """Drop the holes: live entries renumbered 0..n-1 in order, their keys' bytes packed."""
        end = len(self._states)
        live = np.flatnonzero(np.frombuffer(self._states, dtype=np.int8) != FREE)
        renumber = np.full(end, -1, dtype=np.int64)
        renumber[live] = np.arange(live.shape[0])
        key_len = np.frombuffer(self._key_len, dtype=np.uint16)[live]
        lengths = np.where(key_len == KEY_BYTES, 0, key_len).astype(np.int64)
        starts = np.frombuffer(self._key_at, dtype=np.uint32)[live].astype(np.int64)
        new_at = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64) if lengths.shape[0] else lengths
        total = int(lengths.sum())
        arena = np.frombuffer(self._arena, dtype=np.uint8)
        take = np.repeat(starts - new_at, lengths) + np.arange(total)
        packed = arena[take].tobytes()
        del arena
        self._arena = bytearray(packed)
        for name, code in _ENTRY_ARRAYS:
            setattr(self, name, _typed(code, np.frombuffer(getattr(self, name), dtype=code)[live] if name != "_key_at"
                                       else new_at))
        self._long_keys = {int(renumber[e]): k for e, k in self._long_keys.items()}
        self._staged = {int(renumber[e]): v for e, v in self._staged.items()}
        self._objects = {int(renumber[e]): v for e, v in self._objects.items()}
        self._collided = {k: int(renumber[e]) for k, e in self._collided.items()}
        self._start = 0

    # -- the binary frame (the changelog's full snapshot) -------------------------------------

    def to_frame(self) -> bytes:
        """The whole table as one binary frame: a JSON header, then numpy buffers (see :meth:`from_frame`)."""
        self._write_staged()
        entries = self._live_entries()
        keys = [self._key(e) for e in entries.tolist()]
        states = np.frombuffer(self._states, dtype=np.int8)[entries]
        models = np.frombuffer(self._models, dtype=np.int16)[entries]
        rows = np.frombuffer(self._rows, dtype=np.int32)[entries]
        columns: list[dict[str, Any]] = []
        buffers: list[np.ndarray] = [np.frombuffer(self._times, dtype=np.float64)[entries], models, states]
        for code, column in self._columns.items():
            mine = np.flatnonzero((models == code) & (states == PREDICTION_STATE) & (rows >= 0))
            columns.append({"model": code, "names": column.names, "numeric": column.numeric,
                            "numeric_prediction": column.numeric_prediction, "exponents": column.exponents,
                            "decided": column.decided, "wide_codes": column.codes.dtype == np.uint16,
                            "values": [d.values for d in column.dictionaries], "count": int(mine.shape[0])})
            buffers += [mine.astype(np.int64), column.ints[rows[mine]], column.floats[rows[mine]],
                        column.codes[rows[mine]]]
        positions = {int(e): i for i, e in enumerate(entries.tolist())}
        objects = [[positions[e], v] for e, v in self._objects.items()]
        header = orjson.dumps({"models": self._model_ids, "keys": keys, "columns": columns, "objects": objects},
                              default=packed_json, option=orjson.OPT_SERIALIZE_NUMPY)
        return struct.pack("<Q", len(header)) + header + b"".join(np.ascontiguousarray(b).tobytes() for b in buffers)

    @classmethod
    def from_frame(cls, frame: bytes) -> ColumnarStore:
        """The table :meth:`to_frame` wrote, entries in the same order, built in bulk (recovery's cost).

        The entries are numbered 0..n-1 in the frame's order, so the entry arrays are the frame's
        buffers; the keys' bytes are one arena, their hashes one pass over them; the index is the
        sorted level that :meth:`_rebuild` would make, with a key whose hash an earlier key has in
        ``_collided`` (as :meth:`_insert` puts it); a waiting prediction's row is its position in
        its model's block. Only the objects (labels, predictions not in columns, other values) are
        rebuilt one at a time."""
        (length,) = struct.unpack_from("<Q", frame)
        header = orjson.loads(frame[8:8 + length])
        at = 8 + length
        keys: list[str] = header["keys"]
        n = len(keys)

        def take(dtype: Any, count: int) -> np.ndarray:
            nonlocal at
            out = np.frombuffer(frame, dtype=dtype, count=count, offset=at).copy()
            at += out.nbytes
            return out

        times, models, states = take(np.float64, n), take(np.int16, n), take(np.int8, n)
        store = cls()
        store._model_ids = list(header["models"])
        store._model_codes = {m: i for i, m in enumerate(store._model_ids)}
        rows = np.full(n, -1, dtype=np.int32)
        for spec in header["columns"]:
            column = _Columns(tuple(spec["names"]), tuple(spec["numeric"]), bool(spec["numeric_prediction"]))
            column.dictionaries = [_Codes([_tuples(v) for v in values], "pairs") if j == len(column.cat_at) + 1
                                   else _Codes(values) for j, values in enumerate(spec["values"])]
            count = int(spec["count"])
            column.exponents, column.decided = list(spec["exponents"]), bool(spec["decided"])
            positions = take(np.int64, count)
            ints, floats, codes = len(column.int_columns), len(column.float_columns), len(column.dictionaries)
            column.ints = take(np.int32, count * ints).reshape(count, ints)
            column.floats = take(np.float64, count * floats).reshape(count, floats)
            column.codes = take(np.uint16 if spec["wide_codes"] else np.uint8, count * codes).reshape(count, codes)
            column.size = count
            store._columns[int(spec["model"])] = column
            rows[positions] = np.arange(count, dtype=np.int32)
        other = states == OTHER_STATE
        times[other], models[other] = 0.0, -1  # what :meth:`_insert` leaves for a value that is not a join entry

        data = list(map(str.encode, keys))
        hashes = np.fromiter(map(_hash, data), dtype=np.uint64, count=n)
        lengths = np.fromiter(map(len, data), dtype=np.int64, count=n)
        too_long = np.flatnonzero(lengths >= KEY_BYTES)
        if too_long.shape[0]:  # kept as strings, not in the arena (as :meth:`_insert` keeps them)
            store._long_keys = {e: keys[e] for e in too_long.tolist()}
            lengths[too_long] = 0
            data = [b"" if len(d) >= KEY_BYTES else d for d in data]
        key_at = np.concatenate(([0], np.cumsum(lengths)[:-1])) if n else lengths
        key_at[too_long], lengths[too_long] = 0, KEY_BYTES
        store._arena = bytearray().join(data)
        for (name, code), values in zip(_ENTRY_ARRAYS, (times, hashes, models, states, rows, key_at, lengths)):
            setattr(store, name, _typed(code, values))
        store._live = n

        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        later = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1  # a key after the first of its hash
        store._collided = {keys[e]: e for e in order[later].tolist()}
        store._sorted_hashes = np.delete(ordered, later)
        store._sorted_entries = np.delete(order, later).astype(np.int32)

        store._objects = objects = {int(i): v for i, v in header["objects"]}
        for entry in np.flatnonzero((states == PREDICTION_STATE) & (rows < 0)).tolist():  # not in columns
            model_id = store._model_ids[int(models[entry])]
            objects[entry] = unpack_prediction(keys[entry], [float(times[entry]), model_id, WAITING_PREDICTION,
                                                             objects[entry]])
        return store


def _typed(code: str, values: np.ndarray) -> array:
    """``values`` as an :class:`array.array` of typecode ``code`` (a copy of their buffer, cast to it)."""
    out = array(code)
    out.frombytes(np.ascontiguousarray(values, dtype=code).view(np.uint8))
    return out


def _tuples(value: Any) -> Any:
    """An interned attributes tuple back from JSON (lists of pairs)."""
    return tuple(tuple(pair) for pair in value) if isinstance(value, list) else value
