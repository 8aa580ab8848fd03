"""Headless Chromium driven over the Chrome DevTools Protocol: load a page, read what it logged.

A small client (aiohttp's websocket, already a Faust dependency) instead of
chromedriver: the protocol gives the console messages, uncaught exceptions,
browser log entries (failed loads) and every network request directly, which is
what the page tests check. Debian's ``chromium`` (installed by ``.ci/run``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
)


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("headless Chromium is needed for the page tests: apt-get install -y chromium "
                       "(bash .ci/run installs it)")


@dataclass
class PageLog:
    """What a page did while loaded: console messages, exceptions, log entries, requested URLs."""

    console: list[dict[str, Any]] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def errors(self) -> list[str]:
        """Every console error, uncaught exception and browser error entry, as text."""
        out = [f"console.{c['type']}: {c['text']}" for c in self.console if c["type"] in ("error", "assert")]
        out += [f"exception: {e}" for e in self.exceptions]
        out += [f"log {e.get('source')}: {e.get('text')} {e.get('url', '')}" for e in self.entries
                if e.get("level") == "error"]
        return out


class Browser:
    """One headless Chromium with one tab, driven over CDP. Use as a context manager."""

    def __init__(self, width: int = 1400, height: int = 2000) -> None:
        self.width, self.height = width, height
        self._profile = Path(tempfile.mkdtemp(prefix="driftwarden-chromium-"))
        self._process = subprocess.Popen(
            [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self._loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        self.log = PageLog()
        self._ws: Any = None
        self._session: Any = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        try:
            self._loop.run_until_complete(self._connect(self._devtools_port()))
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, timeout: float = 60.0) -> int:
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._process.returncode} before it listened")
            if port_file.exists():
                text = port_file.read_text().split()
                if text:
                    return int(text[0])
            time.sleep(0.05)
        raise TimeoutError(f"chromium wrote no {port_file} within {timeout}s")

    async def _connect(self, port: int) -> None:
        import aiohttp

        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                    targets = json.load(response)
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("chromium offered no page target")
            await asyncio.sleep(0.1)
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())
        for domain in ("Runtime", "Log", "Network", "Page"):
            await self._send(f"{domain}.enable")
        await self._send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                         deviceScaleFactor=1, mobile=False)

    async def _read(self) -> None:
        async for message in self._ws:
            doc = json.loads(message.data)
            if "id" in doc:
                future = self._pending.pop(doc["id"], None)
                if future is not None and not future.done():
                    if "error" in doc:
                        future.set_exception(RuntimeError(f"CDP error: {doc['error']}"))
                    else:
                        future.set_result(doc.get("result", {}))
                continue
            method, params = doc.get("method"), doc.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                self.log.console.append({"type": params.get("type"), "text": text})
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                self.log.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Log.entryAdded":
                self.log.entries.append(params.get("entry", {}))
            elif method == "Network.requestWillBeSent":
                self.log.requests.append(params.get("request", {}).get("url", ""))

    async def _send(self, method: str, **params: Any) -> Any:
        call_id = next(self._ids)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[call_id] = future
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        return await asyncio.wait_for(future, timeout=60)

    def call(self, method: str, **params: Any) -> Any:
        return self._loop.run_until_complete(self._send(method, **params))

    def open(self, url: str) -> None:
        """Navigate to ``url``; its log starts afresh, after the previous page has been left (so that
        its last timers and failed requests are not counted against this one)."""
        self.call("Page.navigate", url="about:blank")
        self.wait_for("location.href === 'about:blank' && document.readyState === 'complete'")
        self.settle(0.3)
        self.log = PageLog()
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        """Poll ``expression`` in the page until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true within {timeout}s: {expression}")
            self._loop.run_until_complete(asyncio.sleep(0.2))

    def settle(self, seconds: float) -> None:
        """Let the page run (its timers, late console messages) for ``seconds``."""
        self._loop.run_until_complete(asyncio.sleep(seconds))

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        async def shut() -> None:
            if self._ws is not None:
                await self._ws.close()
            if self._reader is not None:
                self._reader.cancel()
            if self._session is not None:
                await self._session.close()

        try:
            self._loop.run_until_complete(shut())
        finally:
            self._loop.close()
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; raises ``ValueError`` when ``data`` is no PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
