"""Alert and retrain-job events: what the policy publishes and the retrain worker consumes.

The JSON shapes are fixed by docs/design.md ("Events"); extra fields sit beside the
fixed ones. Times are event times in nanoseconds inside Python and RFC 3339 UTC
strings on the wire. Identifiers are deterministic: the same trigger (model,
version, rules, window) yields the same id, also after a restart, so consumers
can deduplicate redelivered events.

>>> trigger = RetrainTrigger.create(model_id="credit-risk", model_version="3",
...     rules=["multi-feature-drift"], reason="drift on 3 features",
...     metrics={"feature_drift.value{feature=age}": 0.31},
...     window_start_ns=1_700_000_000_000_000_000, window_end_ns=1_700_000_060_000_000_000)
>>> job = trigger.to_job(report_path="reports/credit-risk-3.html")
>>> job.job_id == trigger.job_id == RetrainTrigger.create(model_id="credit-risk", model_version="3",
...     rules=["multi-feature-drift"], reason="other text", metrics={},
...     window_start_ns=1_700_000_000_000_000_000, window_end_ns=1_700_000_060_000_000_000).job_id
True
>>> d = job.to_dict()
>>> d["window_start"], d["data"]
('2023-11-14T22:13:20Z', {'from': '2023-11-14T22:13:20Z', 'to': '2023-11-14T22:14:20Z'})
>>> RetrainJob.from_dict(d) == job
True
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from dataclasses import field as _field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Literal, Mapping

AlertState = Literal["firing", "resolved"]
Severity = Literal["info", "warning", "critical"]

STATES: tuple[str, ...] = ("firing", "resolved")
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")

ID_NAMESPACE = uuid.UUID("6f0d3c4e-1b7a-5d2e-9c41-d71f7a2b9e10")
"""Namespace of the uuid5 ids; changing it changes every id, so it never changes."""

ERR_MISSING = "{kind}: missing required field {key!r}"
ERR_TYPE = "{kind}: field {key!r} must be {expected}, got {value!r}"
ERR_TIME = "{kind}: field {key!r} is not an RFC 3339 time: {value!r}"
ERR_STATE = "alert: state must be one of {choices}, got {value!r}"
ERR_SEVERITY = "alert: severity must be one of {choices}, got {value!r}"


class EventError(ValueError):
    """An alert or job event is malformed; the message names the field."""


# -- ids and times -------------------------------------------------------------


def _stable_id(kind: str, *parts: Any) -> str:
    payload = json.dumps([kind, *parts], separators=(",", ":"), ensure_ascii=False)
    return str(uuid.uuid5(ID_NAMESPACE, payload))


def alert_id(
    *, model_id: str, model_version: str, rule: str, state: str, window_start_ns: int, window_end_ns: int
) -> str:
    """The deterministic id of an alert event (a firing and its resolve differ)."""
    return _stable_id("alert", model_id, model_version, rule, state, window_start_ns, window_end_ns)


def job_id(
    *, model_id: str, model_version: str, rules: Iterable[str], window_start_ns: int, window_end_ns: int
) -> str:
    """The deterministic id of a retrain job; rule order does not matter."""
    return _stable_id("job", model_id, model_version, sorted(set(rules)), window_start_ns, window_end_ns)


def format_time(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 UTC, keeping every significant digit.

    >>> format_time(1_700_000_000_000_000_000), format_time(1_700_000_000_120_000_000)
    ('2023-11-14T22:13:20Z', '2023-11-14T22:13:20.12Z')
    """
    seconds, frac = divmod(int(ns), 1_000_000_000)
    text = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9})\d*)?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_time(text: str) -> int:
    """RFC 3339 (any offset, up to nanoseconds) to nanoseconds since the epoch.

    >>> parse_time("2023-11-14T23:13:20.12+01:00") == 1_700_000_000_120_000_000
    True
    """
    match = _RFC3339.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second, frac, offset = match.groups()
    tz = timezone.utc
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz)
    whole = int(dt.timestamp())
    return whole * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    value = float(value)
    return value if math.isfinite(value) else None


# -- observations ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """One point a rule looked at: which series, the compared value, the threshold.

    ``value`` is the compared field's value (a bool for ``drift``); ``score`` is the
    point's ``value`` field when another field was compared (the drift statistic),
    ``point_threshold`` the point's own ``threshold`` field when it has one, ``change``
    its ``change`` field (what a CUSUM column that detected is tuned to, ``mean +0.5 sd``).
    ``tags`` leaves out ``model_id`` and ``model_version``.
    """

    measurement: str
    field: str
    tags: Mapping[str, str]
    value: float | bool
    op: str
    threshold: float | bool
    score: float | None = None
    point_threshold: float | None = None
    n: int | None = None
    change: str | None = None

    @property
    def number(self) -> float | None:
        """The number that best describes this observation (the score of a bool test)."""
        if isinstance(self.value, bool):
            return self.score if self.score is not None else float(self.value)
        return _finite(self.value)

    @property
    def number_threshold(self) -> float | None:
        """The threshold that goes with :attr:`number`."""
        if isinstance(self.threshold, bool):
            return self.point_threshold
        return float(self.threshold)

    @property
    def key(self) -> str:
        """A readable series name, e.g. ``feature_drift.drift{feature=age,method=psi}``."""
        tags = ",".join(f"{k}={v}" for k, v in sorted(self.tags.items()))
        return f"{self.measurement}.{self.field}" + (f"{{{tags}}}" if tags else "")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "measurement": self.measurement,
            "field": self.field,
            "tags": dict(sorted(self.tags.items())),
            "value": self.value if isinstance(self.value, bool) else _finite(self.value),
            "op": self.op,
            "threshold": self.threshold,
        }
        if self.score is not None:
            out["score"] = self.score
        if self.point_threshold is not None:
            out["point_threshold"] = self.point_threshold
        if self.n is not None:
            out["n"] = self.n
        if self.change:
            out["change"] = self.change
        return out

    def detail(self) -> dict[str, Any]:
        """What was crossed, for an alert: the series, its stream (feature, target, group), the
        detector, the number and its threshold, the comparison, ``n`` and, for a CUSUM, the change
        its detecting column is tuned to."""
        tags = self.tags
        attribute, group = tags.get("attribute"), tags.get("group")
        # a fairness series is its attribute's group (``sex=f``), or the attribute alone without a group tag
        fairness = f"{attribute}={group}" if attribute and group else attribute
        stream = tags.get("feature") or fairness or tags.get("target") or tags.get("metric") or tags.get("check")
        out: dict[str, Any] = {"series": self.key, "stream": stream,
                               "method": tags.get("method") or tags.get("detector"),
                               "value": self.number, "threshold": self.number_threshold,
                               "condition": f"{self.field} {self.op} {str(self.threshold).lower()}"}
        if self.n is not None:
            out["n"] = self.n
        if self.change:
            out["change"] = self.change
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Observation:
        kind = "observation"
        return cls(
            measurement=_req(data, "measurement", str, kind),
            field=_req(data, "field", str, kind),
            tags={str(k): str(v) for k, v in _req(data, "tags", Mapping, kind).items()},
            value=_req(data, "value", (bool, int, float), kind),
            op=_req(data, "op", str, kind),
            threshold=_req(data, "threshold", (bool, int, float), kind),
            score=_opt_float(data, "score", kind),
            point_threshold=_opt_float(data, "point_threshold", kind),
            n=data.get("n"),
            change=str(data["change"]) if data.get("change") else None,
        )


# -- alerts -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """A rule started firing for a model, or stopped.

    ``metric``/``value``/``threshold`` describe the most extreme observation of the
    rule's first condition with data (``value`` is the drift statistic, not the
    boolean, for ``drift == true`` rules; for a CUSUM, its statistic over its
    threshold, with ``threshold`` 1); ``detail`` says what was crossed
    (:meth:`Observation.detail`: series, stream, detector, value, threshold, ``n``,
    and a CUSUM's ``change``); ``values`` lists every breaching observation (empty
    on resolve). ``since_ns`` is the start of the first window
    of the breaching streak; ``incident_id`` is the ``alert_id`` of the firing event,
    shared by its resolve. Times are nanoseconds; the wire format is :meth:`to_dict`.
    """

    alert_id: str
    model_id: str
    model_version: str
    rule: str
    state: AlertState
    severity: Severity
    metric: str
    value: float | None
    threshold: float | None
    window_start_ns: int
    window_end_ns: int
    since_ns: int
    incident_id: str
    retrain: bool = False
    message: str = ""
    values: tuple[Observation, ...] = ()
    detail: Mapping[str, Any] = _field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise EventError(ERR_STATE.format(choices=STATES, value=self.state))
        if self.severity not in SEVERITIES:
            raise EventError(ERR_SEVERITY.format(choices=SEVERITIES, value=self.severity))
        object.__setattr__(self, "values", tuple(self.values))

    def to_dict(self) -> dict[str, Any]:
        """The wire format: docs/design.md's fields first, extras beside them."""
        return {
            "alert_id": self.alert_id,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "rule": self.rule,
            "state": self.state,
            "severity": self.severity,
            "metric": self.metric,
            "value": _finite(self.value),
            "threshold": _finite(self.threshold),
            "window_start": format_time(self.window_start_ns),
            "window_end": format_time(self.window_end_ns),
            "since": format_time(self.since_ns),
            "incident_id": self.incident_id,
            "retrain": self.retrain,
            "message": self.message,
            "values": [v.to_dict() for v in self.values],
            "detail": {k: (_finite(v) if isinstance(v, float) else v) for k, v in self.detail.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        kind = "alert"
        alert = _req(data, "alert_id", str, kind)
        start = _req_time(data, "window_start", kind)
        return cls(
            alert_id=alert,
            model_id=_req(data, "model_id", str, kind),
            model_version=str(_req(data, "model_version", (str, int), kind)),
            rule=_req(data, "rule", str, kind),
            state=_req(data, "state", str, kind),
            severity=_req(data, "severity", str, kind),
            metric=_req(data, "metric", str, kind),
            value=_opt_float(data, "value", kind),
            threshold=_opt_float(data, "threshold", kind),
            window_start_ns=start,
            window_end_ns=_req_time(data, "window_end", kind),
            since_ns=_req_time(data, "since", kind) if data.get("since") is not None else start,
            incident_id=str(data.get("incident_id") or alert),
            retrain=bool(data.get("retrain", False)),
            message=str(data.get("message", "")),
            values=tuple(Observation.from_dict(v) for v in data.get("values") or ()),
            detail=dict(data.get("detail") or {}),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Alert:
        return cls.from_dict(_loads(text, "alert"))


# -- retrain jobs -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrainJob:
    """A request to retrain ``model_id`` (currently ``model_version``).

    ``data_from_ns``/``data_to_ns`` bound the prediction time of the labelled pairs to
    retrain on (the *training span*, both ends included) and ``data_pairs``, when set,
    keeps only the latest that many of them: the span ends at the trigger and reaches
    back ``retrain.train_seconds`` / ``retrain.train_pairs`` (see ``streams.retrain_service``);
    ``offsets`` optionally maps a partition of the predictions topic to the
    ``(first, last)`` offsets of that data; ``report_path`` is the Evidently HTML
    report of the triggering window; ``replaces_version`` is the version the new
    model replaces.
    """

    job_id: str
    model_id: str
    model_version: str
    reason: str
    rules: tuple[str, ...]
    metrics: Mapping[str, float]
    window_start_ns: int
    window_end_ns: int
    data_from_ns: int
    data_to_ns: int
    data_pairs: int | None = None
    report_path: str | None = None
    offsets: Mapping[int, tuple[int, int]] | None = None
    replaces_version: str | None = None

    def __post_init__(self) -> None:
        if self.data_pairs is not None and (isinstance(self.data_pairs, bool) or int(self.data_pairs) < 1):
            raise EventError(ERR_TYPE.format(kind="retrain job", key="data.pairs", expected="a positive integer",
                                             value=self.data_pairs))
        object.__setattr__(self, "rules", tuple(self.rules))
        metrics = {str(k): _finite(v) for k, v in self.metrics.items()}
        object.__setattr__(self, "metrics", {k: v for k, v in metrics.items() if v is not None})
        if self.offsets is not None:
            object.__setattr__(
                self, "offsets", {int(p): (int(a), int(b)) for p, (a, b) in sorted(self.offsets.items())}
            )
        if self.replaces_version is None:
            object.__setattr__(self, "replaces_version", self.model_version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "reason": self.reason,
            "rules": list(self.rules),
            "metrics": dict(self.metrics),
            "window_start": format_time(self.window_start_ns),
            "window_end": format_time(self.window_end_ns),
            "data": self.span(),
            "offsets": None
            if self.offsets is None
            else {str(p): [a, b] for p, (a, b) in self.offsets.items()},
            "report_path": self.report_path,
            "replaces_version": self.replaces_version,
        }

    def span(self) -> dict[str, Any]:
        """The training span as it is written in events: ``{"from", "to"}`` and ``"pairs"`` when set."""
        span: dict[str, Any] = {"from": format_time(self.data_from_ns), "to": format_time(self.data_to_ns)}
        if self.data_pairs is not None:
            span["pairs"] = self.data_pairs
        return span

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetrainJob:
        kind = "retrain job"
        span = _req(data, "data", Mapping, kind)
        offsets_raw = data.get("offsets")
        offsets = None
        if offsets_raw is not None:
            if not isinstance(offsets_raw, Mapping):
                raise EventError(ERR_TYPE.format(kind=kind, key="offsets", expected="an object", value=offsets_raw))
            try:
                offsets = {int(p): (int(r[0]), int(r[1])) for p, r in offsets_raw.items()}
            except (TypeError, ValueError, IndexError, KeyError):
                raise EventError(
                    ERR_TYPE.format(
                        kind=kind, key="offsets", expected="partition -> [first, last]", value=offsets_raw
                    )
                ) from None
        metrics = _req(data, "metrics", Mapping, kind)
        rules = _req(data, "rules", list, kind)
        pairs = span.get("pairs")
        if pairs is not None and (isinstance(pairs, bool) or not isinstance(pairs, int)):
            raise EventError(ERR_TYPE.format(kind=kind, key="data.pairs", expected="an integer", value=pairs))
        return cls(
            job_id=_req(data, "job_id", str, kind),
            model_id=_req(data, "model_id", str, kind),
            model_version=str(_req(data, "model_version", (str, int), kind)),
            reason=str(data.get("reason", "")),
            rules=tuple(str(r) for r in rules),
            metrics={str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
            window_start_ns=_req_time(data, "window_start", kind),
            window_end_ns=_req_time(data, "window_end", kind),
            data_from_ns=_req_time(span, "from", kind + " data"),
            data_to_ns=_req_time(span, "to", kind + " data"),
            data_pairs=pairs,
            report_path=data.get("report_path"),
            offsets=offsets,
            replaces_version=None if data.get("replaces_version") is None else str(data["replaces_version"]),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> RetrainJob:
        return cls.from_dict(_loads(text, "retrain job"))


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrainTrigger:
    """The policy's decision to retrain; the worker turns it into a :class:`RetrainJob`
    once it has written the report and knows the data range (:meth:`to_job`)."""

    job_id: str
    model_id: str
    model_version: str
    rules: tuple[str, ...]
    reason: str
    metrics: Mapping[str, float]
    window_start_ns: int
    window_end_ns: int

    @classmethod
    def create(
        cls,
        *,
        model_id: str,
        model_version: str,
        rules: Iterable[str],
        reason: str,
        metrics: Mapping[str, float],
        window_start_ns: int,
        window_end_ns: int,
    ) -> RetrainTrigger:
        names = tuple(sorted(set(rules)))
        return cls(
            job_id=job_id(
                model_id=model_id,
                model_version=model_version,
                rules=names,
                window_start_ns=window_start_ns,
                window_end_ns=window_end_ns,
            ),
            model_id=model_id,
            model_version=model_version,
            rules=names,
            reason=reason,
            metrics=dict(metrics),
            window_start_ns=window_start_ns,
            window_end_ns=window_end_ns,
        )

    def training_span(self, *, train_pairs: int | None, train_seconds: float | None) -> dict[str, int | None]:
        """The labelled data a job for this trigger trains on: pairs whose prediction time is at most
        the triggering window's end and at most ``train_seconds`` before it (``None``: no time bound),
        the latest ``train_pairs`` of them (``None``: all). Keyword arguments of :meth:`to_job`.

        >>> t = RetrainTrigger.create(model_id="m", model_version="1", rules=["r"], reason="", metrics={},
        ...                           window_start_ns=50 * 10**9, window_end_ns=100 * 10**9)
        >>> t.training_span(train_pairs=1000, train_seconds=60.0)
        {'data_from_ns': 40000000000, 'data_to_ns': 100000000000, 'data_pairs': 1000}
        """
        if train_pairs is None and train_seconds is None:
            raise ValueError("a training span needs train_pairs or train_seconds (or both)")
        start = 0 if train_seconds is None else max(0, self.window_end_ns - int(round(train_seconds * 1e9)))
        return {"data_from_ns": start, "data_to_ns": self.window_end_ns, "data_pairs": train_pairs}

    def to_job(
        self,
        *,
        report_path: str | None = None,
        data_from_ns: int | None = None,
        data_to_ns: int | None = None,
        data_pairs: int | None = None,
        offsets: Mapping[int, tuple[int, int]] | None = None,
        replaces_version: str | None = None,
    ) -> RetrainJob:
        """The job event; the training span defaults to the triggering window (see :meth:`training_span`)."""
        return RetrainJob(
            job_id=self.job_id,
            model_id=self.model_id,
            model_version=self.model_version,
            reason=self.reason,
            rules=self.rules,
            metrics=self.metrics,
            window_start_ns=self.window_start_ns,
            window_end_ns=self.window_end_ns,
            data_from_ns=self.window_start_ns if data_from_ns is None else data_from_ns,
            data_to_ns=self.window_end_ns if data_to_ns is None else data_to_ns,
            data_pairs=data_pairs,
            report_path=report_path,
            offsets=offsets,
            replaces_version=replaces_version,
        )


# -- parsing helpers ---------------------------------------------------------------------


def _loads(text: str | bytes, kind: str) -> Mapping[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise EventError(f"{kind}: not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise EventError(f"{kind}: expected a JSON object, got {type(data).__name__}")
    return data


def _req(data: Mapping[str, Any], key: str, types: Any, kind: str) -> Any:
    if key not in data or data[key] is None:
        raise EventError(ERR_MISSING.format(kind=kind, key=key))
    value = data[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        expected = " or ".join(t.__name__ for t in _as_tuple(types))
        raise EventError(ERR_TYPE.format(kind=kind, key=key, expected=expected, value=value))
    return value


def _as_tuple(types: Any) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _req_time(data: Mapping[str, Any], key: str, kind: str) -> int:
    value = _req(data, key, str, kind)
    try:
        return parse_time(value)
    except ValueError:
        raise EventError(ERR_TIME.format(kind=kind, key=key, value=value)) from None


def _opt_float(data: Mapping[str, Any], key: str, kind: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventError(ERR_TYPE.format(kind=kind, key=key, expected="a number", value=value))
    return float(value)


__all__ = [
    "Alert",
    "AlertState",
    "EventError",
    "Observation",
    "RetrainJob",
    "RetrainTrigger",
    "Severity",
    "alert_id",
    "format_time",
    "job_id",
    "parse_time",
]
