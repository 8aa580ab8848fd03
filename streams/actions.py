"""What the worker does with closed windows beyond writing points: alerts and retrain jobs."""

from __future__ import annotations

import logging
from typing import Any, Iterator

from streams.config import Config
from streams.pipeline import Outcome

log = logging.getLogger(__name__)


class Actions:
    """Publishes the alerts and retrain jobs the pipeline's policies decided."""

    def __init__(self, cfg: Config, evaluations: dict[str, Any]) -> None:
        self.cfg = cfg
        self.evaluations = evaluations
        self.app: Any = None

    def bind(self, app: Any) -> None:
        self.app = app

    def decide(self, outcome: Outcome) -> Iterator[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        return iter(())

    async def handle(self, outcome: Outcome) -> None:
        for window in outcome.windows:
            log.info("window closed: model %s v%s, %d events", window.model_id, window.model_version, window.n)

    def close(self) -> None:
        pass
