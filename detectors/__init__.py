"""Pure statistics for driftwarden: numpy arrays in, small typed results out.

Nothing in this package does I/O, reads clocks, or knows about Kafka, Faust or
InfluxDB. Every stateful summary follows the contract in :mod:`detectors.base`:
``update(batch) -> Self``, ``merge(other) -> Self``, ``result() -> frozen dataclass``
plus ``snapshot()``/``restore()`` so that a restarted worker resumes exactly.
"""
