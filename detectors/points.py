"""Metric points: the one output format of every detector, sink and policy.

A :class:`Point` is an InfluxDB point (measurement, tags, fields, time). Names
follow the metric table in docs/design.md; dashboards and alert rules read them.

>>> p = Point("performance", {"model_id": "m", "model_version": "1", "metric": "accuracy"},
...           {"value": 0.75, "n": 4}, time_ns=1_700_000_000_000_000_000)
>>> p.to_line_protocol()
'performance,metric=accuracy,model_id=m,model_version=1 n=4i,value=0.75 1700000000000000000'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

FieldValue = float | int | bool | str


@dataclass(frozen=True, slots=True)
class Point:
    """One measurement at one event time (nanoseconds since the epoch)."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ns: int

    def field(self, name: str) -> FieldValue | None:
        """The value of field ``name``, or ``None`` when the point lacks it."""
        return self.fields.get(name)

    def to_line_protocol(self) -> str:
        """Render as one line of InfluxDB line protocol (tags and fields sorted).

        Non-finite floats cannot be written to InfluxDB and are left out; a point
        left with no field renders as an empty string.
        """
        tags = "".join(
            f",{_escape_key(k)}={_escape_key(str(v))}" for k, v in sorted(self.tags.items()) if v != ""
        )
        fields = ",".join(
            f"{_escape_key(k)}={_format_field(v)}"
            for k, v in sorted(self.fields.items())
            if not (isinstance(v, float) and not math.isfinite(v))
        )
        if not fields:
            return ""
        return f"{_escape_key(self.measurement)}{tags} {fields} {self.time_ns}"


def _escape_key(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _format_field(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
