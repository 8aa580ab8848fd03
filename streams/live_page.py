"""The demo's page: the figures of a running worker, served on loopback and redrawn while it runs.

Where the figures come from, without a time-series server: the demo's worker
appends every point it writes to a line-protocol file in the demo's workdir
(``worker.metrics_file``, the same :class:`~streams.sinks.LineProtocolFile`
``replay`` writes), and the alerts and retrain jobs are read from their topics,
which is where every consumer reads them. A background thread follows both into
a :class:`~streams.report_page.ReportData` and re-renders the document when it
moved; the page (:func:`~streams.report_page.page_html`, the same renderer as
``replay``'s ``report.html``) polls ``figures.json`` and redraws. plotly's
JavaScript is served by this server from the plotly package, so viewing needs
no network.

Routes: ``/`` the page, ``/figures.json`` the current document, ``/plotly.min.js``.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping

import orjson
from plotly.io.json import to_json_plotly

from streams.kafka import close_client
from streams.report_page import LineFollower, ReportData, page_html, plotly_js

log = logging.getLogger(__name__)

DEFAULT_PORT = 8050


class LivePage:
    """Serves the figures of ``metrics_file`` (and of the alert and job topics once
    :meth:`follow_topics` is called) on ``http://host:port/``; port 0 picks a free one."""

    def __init__(self, *, metrics_file: Path, port: int = DEFAULT_PORT, host: str = "127.0.0.1",
                 title: str = "driftwarden demo", poll_seconds: float = 1.0, refresh_ms: int = 2000) -> None:
        self.title = title
        self.poll_seconds = poll_seconds
        self.refresh_ms = refresh_ms
        self.data = ReportData()
        self._follower = LineFollower(metrics_file)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rendered = -1
        self._document: dict[str, Any] = self.data.document(title=title, subtitle="waiting for the first window")
        self._json = to_json_plotly(self._document).encode()
        self._plotly = plotly_js().encode()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}/"
        self._threads = [threading.Thread(target=self._server.serve_forever, name="page-http", daemon=True),
                         threading.Thread(target=self._refresh_loop, name="page-refresh", daemon=True)]
        for thread in self._threads:
            thread.start()

    # -- data ------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read what the worker appended; re-render the document if anything was added."""
        points = self._follower.read()
        with self._lock:
            if points:
                self.data.add_points(points)
            if self.data.revision == self._rendered:
                return
            self._rendered = self.data.revision
            document = self.data.document(title=self.title, subtitle=self._subtitle())
        encoded = to_json_plotly(document).encode()
        with self._lock:
            self._document, self._json = document, encoded

    def _subtitle(self) -> str:
        skipped = f"; {self._follower.malformed} malformed lines skipped" if self._follower.malformed else ""
        return f"figures of {self._follower.path} and the alert and retrain-job topics, redrawn every " \
               f"{self.refresh_ms / 1000:g} s{skipped}"

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # a bad render must not end the page; say so and keep following
                log.exception("page: could not render the figures")

    def follow_topics(self, *, bootstrap: str, alerts_topic: str, jobs_topic: str,
                      client_options: Mapping[str, Any] | None = None) -> None:
        """Add every alert and retrain job published on the two topics (from their beginning).
        ``client_options``: the Kafka security options (:func:`streams.kafka.client_options`)."""
        thread = threading.Thread(target=self._consume, args=(bootstrap, alerts_topic, jobs_topic),
                                  kwargs=dict(client_options or {}), name="page-topics", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _consume(self, bootstrap: str, alerts_topic: str, jobs_topic: str, **client_options: Any) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(alerts_topic, jobs_topic, bootstrap_servers=bootstrap, group_id=None,
                                 auto_offset_reset="earliest", consumer_timeout_ms=500, **client_options)
        try:
            while not self._stop.is_set():
                for message in consumer:
                    try:
                        event = orjson.loads(message.value)
                    except orjson.JSONDecodeError:
                        continue
                    with self._lock:
                        (self.data.add_alert if message.topic == alerts_topic else self.data.add_job)(event)
                    if self._stop.is_set():
                        break
        finally:
            close_client(consumer)

    # -- serving ---------------------------------------------------------------------------------

    def page(self) -> bytes:
        with self._lock:
            document = self._document
        return page_html(document, plotly_src="plotly.min.js", live_url="figures.json",
                         interval_ms=self.refresh_ms).encode()

    def plotly(self) -> bytes:
        return self._plotly

    def figures(self) -> bytes:
        with self._lock:
            return self._json

    def close(self) -> None:
        """Stop serving and following (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)


def _handler(page: LivePage) -> type[BaseHTTPRequestHandler]:
    routes: dict[str, tuple[str, Callable[[], bytes], str]] = {
        "/": ("text/html; charset=utf-8", page.page, "no-store"),
        "/index.html": ("text/html; charset=utf-8", page.page, "no-store"),
        "/figures.json": ("application/json", page.figures, "no-store"),
        "/plotly.min.js": ("text/javascript; charset=utf-8", page.plotly, "max-age=3600"),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self.send_error(404, "not found: the page is at /")
                return
            kind, body, cache = route
            payload = body()
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", cache)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: the demo prints its own lines
            log.debug("page: " + format, *args)

    return Handler


def start_page(port: int, metrics_file: Path) -> LivePage:
    """A :class:`LivePage` on ``port``, or on a free port (said on stdout) when ``port`` is taken."""
    try:
        return LivePage(metrics_file=metrics_file, port=port)
    except OSError as exc:
        if port == 0:
            raise
        page = LivePage(metrics_file=metrics_file, port=0)
        print(f"page: port {port} is not free ({exc.strerror}); serving on another one", flush=True)
        return page
