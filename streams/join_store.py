"""The join table in columns: a :class:`~streams.join.JoinStore` that costs ~100 B per entry, not ~600.

A waiting prediction used to be a Python list holding a float, the model id, a state and a
~330-character JSON string, behind its key string and an ``OrderedDict`` node: ~570 B of RSS
per prediction (``python -m bench memory``). With the default bound (1,000,000 entries per
partition) that was most of a worker's memory. Here an entry is a row of a few numpy arrays,
and a waiting prediction's values are a row of its model's column block:

- **entries**, in arrival order (the join evicts oldest-first): event time ``f8``, the key's
  64-bit xxh3 hash ``u8``, model code ``i2``, state ``i1``, payload row ``i4``, and where its
  key's UTF-8 bytes are in one ``bytearray`` (``u4`` offset, ``u2`` length). A deleted entry is
  a hole (state ``FREE``) until the next :meth:`ColumnarStore._rebuild` compacts them.
- **the index** from key to entry: the entries since the last rebuild in a ``dict`` (hash →
  entry, at most :data:`RECENT_ENTRIES`), the others in two sorted arrays (hash, entry) searched
  with ``numpy.searchsorted`` — an LSM tree of two levels; the rebuild sorts the live entries'
  hashes once every :data:`RECENT_ENTRIES` inserts. A hit is confirmed against the key's bytes,
  and the rare second key with the same hash lives in a small ``dict`` of its own, so a hash
  collision never joins the wrong pair.
- **payloads** (:class:`_Columns`, per model): numeric features, score (and a regression's
  prediction) as ``f8`` columns; categorical features, the version, the prediction class and the
  sensitive attributes (interned as one tuple) as ``u2`` codes of per-column dictionaries. Freed
  rows are reused. A prediction that does not fit (``scores``, type errors, a dictionary full at
  :data:`CODES` values) is kept as its object (:attr:`ColumnarStore._objects`): exact, just not
  compact. The newest :data:`STAGED_ROWS` predictions stay objects until they are written to the
  columns together (one vectorised write per model), so a pair that joins soon never is.
- waiting labels (``[label, feedback time]``) and values that are not join entries (the tests'
  generic records) are kept as objects.

``get`` rebuilds the entry (and its :class:`~streams.events.Prediction`) from the row, so to the
join this is the same ``key → [time, model, state, payload]`` store as
:class:`~streams.join.DictStore`; ``tests/streams/test_join_store.py`` holds the two to the same
answers on random operation sequences. :meth:`ColumnarStore.to_frame` / :meth:`from_frame` write
and read the whole table as one binary frame (the changelog's full snapshot: numpy buffers, not a
JSON document per entry).
"""

from __future__ import annotations

import math
import struct
from typing import Any, Iterator, MutableMapping, Sequence

import numpy as np
import orjson
import xxhash

from streams.events import Prediction
from streams.join import (JOINED, MODEL, PAYLOAD, STATE, TIME, WAITING_LABEL, WAITING_PREDICTION, pack_prediction,
                          unpack_prediction)

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
    """One coded column's dictionary: value ↔ ``u2`` code, ``None`` is code 0."""

    __slots__ = ("codes", "values")

    def __init__(self, values: Sequence[Any] = (None,)) -> None:
        self.values: list[Any] = list(values)
        self.codes: dict[Any, int] = {v: i for i, v in enumerate(self.values)}

    def encode(self, column: Sequence[Any]) -> list[int] | None:
        """The codes of ``column`` (new values added), or ``None`` when the dictionary would pass :data:`CODES`."""
        codes = self.codes
        missing = [v for v in dict.fromkeys(column) if v not in codes]
        if len(self.values) + len(missing) > CODES:
            return None
        for value in missing:
            codes[value] = len(self.values)
            self.values.append(value)
        return [codes[v] for v in column]


class _Columns:
    """One model's waiting predictions as rows of numpy columns (see the module docstring).

    Its layout is set by the first prediction written: the feature names in order, which are
    numeric (a ``float``) and which categorical (``str`` or ``None``), and whether the prediction
    is a class or a number. The parser types every feature per the model's schema, so all of a
    model's predictions fit; one that does not is left to the caller to keep as an object.
    """

    def __init__(self, names: tuple[str, ...], numeric: tuple[bool, ...], numeric_prediction: bool) -> None:
        self.names = names
        self.numeric = numeric
        self.numeric_prediction = numeric_prediction
        self.num_at = [i for i, n in enumerate(numeric) if n]
        self.cat_at = [i for i, n in enumerate(numeric) if not n]
        # coded columns: categorical features, then version, attributes, prediction (a class)
        self.dictionaries = [_Codes() for _ in range(len(self.cat_at) + 2 + (not numeric_prediction))]
        floats = len(self.num_at) + 1 + numeric_prediction  # numeric features, score, a numeric prediction
        self.floats = np.zeros((0, floats), dtype=np.float64)
        self.codes = np.zeros((0, len(self.dictionaries)), dtype=np.uint16)
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

    def write(self, events: Sequence[Prediction]) -> list[int] | None:
        """Write ``events`` (all :meth:`fits`) to rows; their rows, or ``None`` when a value does not
        fit (a numeric feature that is not a float, a dictionary full): then nothing is written."""
        n = len(events)
        values = list(zip(*[tuple(e.features.values()) for e in events])) if self.names else []
        floats = np.empty((n, self.floats.shape[1]), dtype=np.float64)
        for j, i in enumerate(self.num_at):
            column = values[i]
            if not set(map(type, column)) <= {float}:
                return None
            floats[:, j] = column
        scores = [e.score for e in events]
        floats[:, len(self.num_at)] = [math.nan if s is None else s for s in scores]
        if self.numeric_prediction:
            floats[:, -1] = [e.prediction for e in events]
        coded: list[Sequence[Any]] = [values[i] for i in self.cat_at]
        coded.append([e.model_version for e in events])
        coded.append([tuple(e.attributes.items()) for e in events])
        if not self.numeric_prediction:
            coded.append([e.prediction for e in events])
        for column in coded[:len(self.cat_at)]:
            if not set(map(type, column)) <= {str, type(None)}:
                return None
        codes = np.empty((n, len(self.dictionaries)), dtype=np.uint16)
        for j, (dictionary, column) in enumerate(zip(self.dictionaries, coded)):
            encoded = dictionary.encode(column)
            if encoded is None:
                return None
            codes[:, j] = encoded
        rows = self._allocate(n)
        self.floats[rows] = floats
        self.codes[rows] = codes
        return rows.tolist()

    def _allocate(self, n: int) -> np.ndarray:
        reused = min(n, self.free_count)
        rows = np.empty(n, dtype=np.int64)
        rows[:reused] = self.free[self.free_count - reused:self.free_count]
        self.free_count -= reused
        fresh = n - reused
        rows[reused:] = np.arange(self.size, self.size + fresh)
        self.size += fresh
        self.floats = _grown(self.floats, self.size)
        self.codes = _grown(self.codes, self.size)
        return rows

    def release(self, row: int) -> None:
        self.free = _grown(self.free, self.free_count + 1)
        self.free[self.free_count] = row
        self.free_count += 1

    def read(self, row: int, key: str, model_id: str, timestamp: float) -> Prediction:
        floats = self.floats[row].tolist()
        codes = self.codes[row].tolist()
        values: list[Any] = [None] * len(self.names)
        for j, i in enumerate(self.num_at):
            values[i] = floats[j]
        dictionaries = self.dictionaries
        for j, i in enumerate(self.cat_at):
            values[i] = dictionaries[j].values[codes[j]]
        k = len(self.cat_at)
        score = floats[len(self.num_at)]
        prediction = floats[-1] if self.numeric_prediction else dictionaries[k + 2].values[codes[k + 2]]
        return Prediction(prediction_id=key, model_id=model_id, model_version=dictionaries[k].values[codes[k]],
                          timestamp=timestamp, features=dict(zip(self.names, values)), prediction=prediction,
                          score=None if score != score else score,
                          attributes=dict(dictionaries[k + 1].values[codes[k + 1]]))


class ColumnarStore(MutableMapping[str, list[Any]]):
    """A :class:`~streams.join.JoinStore` in numpy columns (see the module docstring); also a
    mutable mapping ``key → entry`` in insertion order, as :class:`~streams.join.DictStore`.

    >>> store = ColumnarStore()
    >>> p = Prediction("a", "m", "1", 10.0, {"age": 41.0, "channel": "web"}, "1", score=0.75, attributes={"sex": "F"})
    >>> store.set("a", [10.0, "m", "p", p]); store.set("b", [11.0, "m", "l", ["0", 12.0]])
    >>> store.get("a") == [10.0, "m", "p", p], store.oldest()[0], len(store)
    (True, 'a', 2)
    >>> store.delete("a"); list(store)
    ['b']
    """

    def __init__(self) -> None:
        self._times = np.zeros(0, dtype=np.float64)
        self._hashes = np.zeros(0, dtype=np.uint64)
        self._models = np.zeros(0, dtype=np.int16)
        self._states = np.zeros(0, dtype=np.int8)
        self._rows = np.zeros(0, dtype=np.int32)
        self._key_at = np.zeros(0, dtype=np.uint32)
        self._key_len = np.zeros(0, dtype=np.uint16)
        self._arena = bytearray()
        self._start = 0
        """No live entry before this one."""
        self._end = 0
        """The next entry's number."""
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
        self._store(entry, value)

    def delete(self, key: str) -> None:
        entry = self._find(key)
        if entry >= 0:
            self._remove(entry)

    def items(self) -> Iterator[tuple[str, list[Any]]]:  # type: ignore[override]
        return iter([(self._key(e), self._entry(e)) for e in self._entries()])

    def oldest(self) -> tuple[str, list[Any]] | None:
        states = self._states
        while self._start < self._end and states[self._start] == FREE:
            self._start += 1
        if self._start == self._end:
            return None
        return self._key(self._start), self._entry(self._start)

    def expiring(self, horizon: float) -> list[tuple[str, list[Any]]]:
        """The entries whose time is before ``horizon``, in order (one vectorised scan)."""
        span = slice(self._start, self._end)
        found = np.flatnonzero((self._states[span] != FREE) & (self._times[span] < horizon)) + self._start
        return [(self._key(e), self._entry(e)) for e in found.tolist() if self._states[e] != OTHER_STATE]

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

    def _entries(self) -> list[int]:
        span = slice(self._start, self._end)
        return (np.flatnonzero(self._states[span] != FREE) + self._start).tolist()

    def _key(self, entry: int) -> str:
        if self._key_len[entry] == KEY_BYTES:
            return self._long_keys[entry]
        at = int(self._key_at[entry])
        return self._arena[at:at + int(self._key_len[entry])].decode()

    def _find(self, key: str) -> int:
        if self._collided and key in self._collided:
            return self._collided[key]
        data = key.encode()
        h = _hash(data)
        entry = self._recent.get(h)
        if entry is None:
            sorted_hashes = self._sorted_hashes
            i = int(sorted_hashes.searchsorted(np.uint64(h)))
            if i == sorted_hashes.shape[0] or int(sorted_hashes[i]) != h:
                return -1
            entry = int(self._sorted_entries[i])
        if self._states[entry] == FREE or not self._is_key(entry, data):
            return -1
        return entry

    def _is_key(self, entry: int, data: bytes) -> bool:
        length = int(self._key_len[entry])
        if length == KEY_BYTES:
            return self._long_keys[entry].encode() == data
        at = int(self._key_at[entry])
        return length == len(data) and self._arena[at:at + length] == data

    def _insert(self, key: str) -> int:
        if len(self._recent) >= RECENT_ENTRIES:
            self._rebuild()
        data = key.encode()
        h = _hash(data)
        entry = self._end
        self._end += 1
        for name in ("_times", "_hashes", "_models", "_states", "_rows", "_key_at", "_key_len"):
            setattr(self, name, _grown(getattr(self, name), self._end))
        self._hashes[entry] = h
        if len(data) >= KEY_BYTES:
            self._key_len[entry] = KEY_BYTES
            self._long_keys[entry] = key
        else:
            self._key_at[entry] = len(self._arena)
            self._key_len[entry] = len(data)
            self._arena += data
        self._states[entry] = OTHER_STATE  # live from here; :meth:`_store` sets the state
        self._live += 1
        if self._hash_taken(h):
            self._collided[key] = entry
        else:
            self._recent[h] = entry
        return entry

    def _hash_taken(self, h: int) -> bool:
        other = self._recent.get(h)
        if other is None:
            i = int(self._sorted_hashes.searchsorted(np.uint64(h)))
            if i < self._sorted_hashes.shape[0] and int(self._sorted_hashes[i]) == h:
                other = int(self._sorted_entries[i])
        return other is not None and self._states[other] != FREE

    def _store(self, entry: int, value: list[Any]) -> None:
        """Keep ``value`` at ``entry`` (whose payload is clear)."""
        state = _STATE_CODE.get(value[STATE]) if _is_entry(value) else None
        if state is None:
            self._states[entry] = OTHER_STATE
            self._objects[entry] = value
            self._models[entry] = -1
            return
        self._times[entry] = value[TIME]
        self._models[entry] = self._model_code(value[MODEL])
        self._states[entry] = state
        self._rows[entry] = -1
        if state == PREDICTION_STATE:
            key = self._key(entry)
            payload = value[PAYLOAD]
            event = payload if isinstance(payload, Prediction) else unpack_prediction(key, value)
            if (event.prediction_id != key or event.model_id != value[MODEL]
                    or event.timestamp != value[TIME]):
                self._objects[entry] = event  # an entry that disagrees with its own event: kept as it is
                return
            self._staged[entry] = event
            if len(self._staged) >= STAGED_ROWS:
                self._write_staged()
        elif state == LABEL_STATE:
            self._objects[entry] = value[PAYLOAD]

    def _entry(self, entry: int) -> list[Any]:
        state = int(self._states[entry])
        if state == OTHER_STATE:
            return self._objects[entry]
        time, model_id = float(self._times[entry]), self._model_ids[self._models[entry]]
        if state == JOINED_STATE:
            return [time, model_id, JOINED, None]
        if state == LABEL_STATE:
            return [time, model_id, WAITING_LABEL, self._objects[entry]]
        return [time, model_id, WAITING_PREDICTION, self._prediction(entry, time, model_id)]

    def _prediction(self, entry: int, time: float, model_id: str) -> Prediction:
        staged = self._staged.get(entry)
        if staged is not None:
            return staged
        row = int(self._rows[entry])
        if row < 0:
            return self._objects[entry]
        return self._columns[int(self._models[entry])].read(row, self._key(entry), model_id, time)

    def _clear_payload(self, entry: int) -> None:
        state = self._states[entry]
        if state == PREDICTION_STATE:
            if self._staged.pop(entry, None) is None:
                row = int(self._rows[entry])
                if row >= 0:
                    self._columns[int(self._models[entry])].release(row)
                else:
                    self._objects.pop(entry, None)
        elif state in (LABEL_STATE, OTHER_STATE):
            self._objects.pop(entry, None)

    def _remove(self, entry: int) -> None:
        self._clear_payload(entry)
        self._states[entry] = FREE
        self._live -= 1
        h = int(self._hashes[entry])
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
            by_model.setdefault(int(self._models[entry]), []).append(entry)
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
        """Fold the ``dict`` level into the sorted level; compact the entries first when holes are
        a quarter of them (entry numbers change then: every reference to one is renumbered)."""
        span = self._end - self._start
        if span and span - self._live > span // 4:
            self._compact()
        live = np.flatnonzero(self._states[self._start:self._end] != FREE) + self._start
        collided = set(self._collided.values())
        if collided:
            live = live[~np.isin(live, list(collided))]
        hashes = self._hashes[live]
        order = np.argsort(hashes, kind="stable")
        self._sorted_hashes = hashes[order]
        self._sorted_entries = live[order].astype(np.int32)
        self._recent = {}

    def _compact(self) -> None:
        live = np.flatnonzero(self._states[:self._end] != FREE)
        renumber = np.full(self._end, -1, dtype=np.int64)
        renumber[live] = np.arange(live.shape[0])
        keys = [self._key(e) if self._key_len[e] == KEY_BYTES else None for e in live.tolist()]
        lengths = self._key_len[live].astype(np.int64)
        lengths[lengths == KEY_BYTES] = 0
        starts = self._key_at[live].astype(np.int64)
        arena = np.frombuffer(bytes(self._arena), dtype=np.uint8)
        if lengths.sum():
            take = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths) + np.arange(lengths.sum())
            self._arena = bytearray(arena[take].tobytes())
        else:
            self._arena = bytearray()
        new_at = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.uint32)
        for name in ("_times", "_hashes", "_models", "_states", "_rows", "_key_len"):
            setattr(self, name, getattr(self, name)[live].copy())
        self._key_at = new_at
        self._long_keys = {int(renumber[e]): k for e, k in zip(live.tolist(), keys) if k is not None}
        for name in ("_staged", "_objects"):
            setattr(self, name, {int(renumber[e]): v for e, v in getattr(self, name).items()})
        self._collided = {k: int(renumber[e]) for k, e in self._collided.items()}
        self._start, self._end = 0, int(live.shape[0])

    # -- the binary frame (the changelog's full snapshot) -------------------------------------

    def to_frame(self) -> bytes:
        """The whole table as one binary frame: a JSON header, then numpy buffers (see :meth:`from_frame`)."""
        self._write_staged()
        entries = np.asarray(self._entries(), dtype=np.int64)
        keys = [self._key(e) for e in entries.tolist()]
        states = self._states[entries]
        models = self._models[entries]
        rows = self._rows[entries]
        columns: list[dict[str, Any]] = []
        buffers: list[np.ndarray] = [self._times[entries], models, states]
        for code, column in self._columns.items():
            mine = np.flatnonzero((models == code) & (states == PREDICTION_STATE) & (rows >= 0))
            columns.append({"model": code, "names": column.names, "numeric": column.numeric,
                            "numeric_prediction": column.numeric_prediction,
                            "values": [d.values for d in column.dictionaries], "count": int(mine.shape[0])})
            buffers += [mine.astype(np.int64), column.floats[rows[mine]], column.codes[rows[mine]]]
        positions = {int(e): i for i, e in enumerate(entries.tolist())}
        objects = [[positions[e], _plain(v)] for e, v in self._objects.items()]
        header = orjson.dumps({"models": self._model_ids, "keys": keys, "columns": columns, "objects": objects},
                              option=orjson.OPT_SERIALIZE_NUMPY)
        return struct.pack("<Q", len(header)) + header + b"".join(np.ascontiguousarray(b).tobytes() for b in buffers)

    @classmethod
    def from_frame(cls, frame: bytes) -> ColumnarStore:
        """The table :meth:`to_frame` wrote, entries in the same order."""
        (length,) = struct.unpack_from("<Q", frame)
        header = orjson.loads(frame[8:8 + length])
        at = 8 + length
        n = len(header["keys"])

        def take(dtype: Any, count: int, width: int = 1) -> np.ndarray:
            nonlocal at
            out = np.frombuffer(frame, dtype=dtype, count=count * width, offset=at).copy()
            at += out.nbytes
            return out

        times, models, states = take(np.float64, n), take(np.int16, n), take(np.int8, n)
        store = cls()
        store._model_ids = list(header["models"])
        store._model_codes = {m: i for i, m in enumerate(store._model_ids)}
        objects = {int(i): v for i, v in header["objects"]}
        placed: dict[int, tuple[_Columns, int]] = {}
        for spec in header["columns"]:
            column = _Columns(tuple(spec["names"]), tuple(spec["numeric"]), bool(spec["numeric_prediction"]))
            column.dictionaries = [_Codes([_tuples(v) for v in values]) if j == len(column.cat_at) + 1
                                   else _Codes(values) for j, values in enumerate(spec["values"])]
            count = int(spec["count"])
            positions = take(np.int64, count)
            floats = take(np.float64, count, column.floats.shape[1]).reshape(count, column.floats.shape[1])
            codes = take(np.uint16, count, column.codes.shape[1]).reshape(count, column.codes.shape[1])
            column.floats, column.codes, column.size = floats, codes, count
            store._columns[int(spec["model"])] = column
            for row, position in enumerate(positions.tolist()):
                placed[position] = (column, row)
        for i, key in enumerate(header["keys"]):
            entry = store._insert(key)
            state = int(states[i])
            if state == OTHER_STATE:
                store._objects[entry] = objects[i]
                store._models[entry] = -1
                continue
            store._times[entry], store._models[entry], store._states[entry] = times[i], models[i], state
            store._rows[entry] = -1
            if state == LABEL_STATE:
                store._objects[entry] = objects[i]
            elif state == PREDICTION_STATE:
                if i in placed:
                    store._rows[entry] = placed[i][1]
                else:
                    store._objects[entry] = unpack_prediction(key, [float(times[i]), store._model_ids[models[i]],
                                                                    WAITING_PREDICTION, objects[i]])
        return store


def _is_entry(value: Any) -> bool:
    return (type(value) is list and len(value) == 4 and type(value[TIME]) in (float, int)
            and type(value[MODEL]) is str and type(value[STATE]) is str)


def _plain(value: Any) -> Any:
    """An object of the table as JSON (a waiting prediction kept as an object: its packed list)."""
    return pack_prediction(value) if isinstance(value, Prediction) else value


def _tuples(value: Any) -> Any:
    """An interned attributes tuple back from JSON (lists of pairs)."""
    return tuple(tuple(pair) for pair in value) if isinstance(value, list) else value
