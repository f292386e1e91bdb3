"""Headless Chromium driven over the DevTools protocol (CDP), for tests of the pack's frontend extension (web/).

Standard library + websocket-client only (no Playwright, no browser download): the browser is Debian's ``chromium``
(``tools/install_browser.sh``), or ``$CHROMIUM_PATH``. One :class:`Browser` is one Chromium process with a throw-away
profile, stopped by its PID; :meth:`Browser.open` gives a :class:`Page` that records console messages, uncaught
exceptions, log entries and every requested URL, and evaluates JavaScript (awaiting promises).
"""

from __future__ import annotations

import contextlib

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--no-default-browser-check", "--mute-audio", "--window-size=1400,1000")


class BrowserError(RuntimeError):
    """Chromium could not be started, or a DevTools call failed."""


def chromium_path() -> Optional[str]:
    """The Chromium to drive: ``$CHROMIUM_PATH``, else Debian's ``chromium`` on PATH; None if there is none."""
    for cand in (os.environ.get("CHROMIUM_PATH"), shutil.which("chromium"), shutil.which("chromium-browser"),
                 "/usr/bin/chromium"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


@dataclass
class ConsoleEntry:
    """One console message, uncaught exception or browser log entry: its level, text and the script URLs in its stack."""

    source: str  # "console" | "exception" | "log"
    level: str  # "error", "warning", "log", ...
    text: str
    urls: list = field(default_factory=list)

    def mentions(self, fragment: str) -> bool:
        return fragment in self.text or any(fragment in u for u in self.urls)


class Page:
    """One tab. Events arrive on a reader thread; ``call`` sends a CDP command and waits for its answer."""

    def __init__(self, ws_url: str):
        import websocket  # websocket-client

        self._ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._next_id = 0
        self._lock = threading.Lock()
        self._answers: dict[int, dict] = {}
        self._cond = threading.Condition()
        self.console: list[ConsoleEntry] = []
        self.requests: list[str] = []
        self.failed_requests: list[tuple[str, str]] = []  # (url, reason or HTTP status)
        self._request_urls: dict[str, str] = {}
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable")

    # ------------------------------------------------------------------ protocol
    def _read(self) -> None:
        while not self._closed:
            try:
                raw = self._ws.recv()
            except Exception:  # socket closed: the page or browser went away
                break
            if not raw:
                continue
            msg = json.loads(raw)
            if "id" in msg:
                with self._cond:
                    self._answers[msg["id"]] = msg
                    self._cond.notify_all()
            else:
                self._on_event(msg.get("method", ""), msg.get("params", {}))
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        with self._lock:
            self._next_id += 1
            msg_id = self._next_id
            self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.time() + timeout
        with self._cond:
            while msg_id not in self._answers:
                if self._closed:
                    raise BrowserError(f"the page closed during {method}")
                left = deadline - time.time()
                if left <= 0:
                    raise BrowserError(f"no answer to {method} within {timeout:.0f} s")
                self._cond.wait(left)
            answer = self._answers.pop(msg_id)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    @staticmethod
    def _stack_urls(stack: Optional[dict]) -> list:
        return [f.get("url", "") for f in (stack or {}).get("callFrames", [])]

    def _on_event(self, method: str, p: dict) -> None:
        if method == "Runtime.consoleAPICalled":
            parts = []
            for arg in p.get("args", []):
                parts.append(str(arg["value"]) if "value" in arg else arg.get("description", arg.get("type", "")))
            self.console.append(ConsoleEntry("console", p.get("type", "log"), " ".join(parts),
                                             self._stack_urls(p.get("stackTrace"))))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            text = (d.get("exception") or {}).get("description") or d.get("text", "")
            urls = self._stack_urls(d.get("stackTrace")) + ([d["url"]] if d.get("url") else [])
            self.console.append(ConsoleEntry("exception", "error", text, urls))
        elif method == "Log.entryAdded":
            e = p.get("entry", {})
            self.console.append(ConsoleEntry("log", e.get("level", ""), e.get("text", ""),
                                             [e["url"]] if e.get("url") else []))
        elif method == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            self._request_urls[p.get("requestId", "")] = url
            self.requests.append(url)
        elif method == "Network.responseReceived":
            r = p.get("response", {})
            if int(r.get("status", 200)) >= 400:
                self.failed_requests.append((r.get("url", ""), str(r.get("status"))))
        elif method == "Network.loadingFailed":
            url = self._request_urls.get(p.get("requestId", ""), "")
            self.failed_requests.append((url, p.get("errorText", "failed")))

    # ------------------------------------------------------------------ helpers
    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        """Evaluate ``expression`` in the page (promises awaited); return its JSON value. Raises on a JS exception."""
        res = self.call("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise BrowserError(f"JS error: {(d.get('exception') or {}).get('description') or d.get('text')}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.25) -> Any:
        """Poll ``expression`` until it is truthy; return its value. Raises BrowserError on timeout."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            last = self.evaluate(expression)
            if last:
                return last
            time.sleep(interval)
        raise BrowserError(f"timed out after {timeout:.0f} s waiting for: {expression} (last value {last!r})")

    def screenshot(self, path) -> Path:
        """Save a PNG of the visible page at ``path``."""
        import base64

        data = self.call("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    def errors(self) -> list[ConsoleEntry]:
        return [e for e in self.console if e.level == "error"]

    def close(self) -> None:
        self._closed = True
        try:
            self._ws.close()
        except Exception:
            pass


class Browser:
    """A headless Chromium with a temporary profile; ``open(url)`` returns a recording :class:`Page`."""

    def __init__(self, executable: Optional[str] = None, extra_flags: tuple = ()):
        self.executable = executable or chromium_path()
        if not self.executable:
            raise BrowserError("no Chromium found: run tools/install_browser.sh or set CHROMIUM_PATH")
        self.extra_flags = tuple(extra_flags)
        self.proc: Optional[subprocess.Popen] = None
        self.profile: Optional[str] = None
        self.port = 0
        self.pages: list[Page] = []

    def start(self, timeout: float = 30.0) -> "Browser":
        self.profile = tempfile.mkdtemp(prefix="dreamedit3d-chromium-")
        args = [self.executable, *CHROMIUM_FLAGS, *self.extra_flags, f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "about:blank"]
        self._log = open(Path(self.profile) / "chromium.log", "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError(f"Chromium exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.port = int(port_file.read_text().split()[0])
                break
            except (OSError, ValueError, IndexError):
                time.sleep(0.1)
        else:
            self.stop()
            raise BrowserError(f"Chromium did not open its DevTools port within {timeout:.0f} s: {self.log_tail()}")
        return self

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (Path(self.profile) / "chromium.log").read_text(errors="replace")[-chars:]
        except (OSError, TypeError):
            return ""

    def _targets(self) -> list:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
            return json.loads(r.read())

    def open(self, url: str) -> Page:
        """The first tab, set up to record, then navigated to ``url`` (recording starts before the first request)."""
        tab = next(t for t in self._targets() if t.get("type") == "page")
        page = Page(tab["webSocketDebuggerUrl"])
        self.pages.append(page)
        page.navigate(url)
        return page

    def stop(self) -> None:
        for page in self.pages:
            page.close()
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the browser and its helper processes
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()


@contextlib.contextmanager
def frontend_page(url: str):
    """A page of the ComfyUI frontend at ``url``, once the app and its extensions are up; the browser stops on exit.

    Fails in CI (skips elsewhere) when no Chromium is installed.
    """
    from conftest import skip_or_fail

    if chromium_path() is None:
        skip_or_fail("no Chromium: run tools/install_browser.sh (Debian's chromium) or set CHROMIUM_PATH")
    browser = Browser().start()
    try:
        page = browser.open(url)
        page.wait_for("!!(window.app && window.app.graph && window.app.extensions?.length)", timeout=60)
        yield page
    finally:
        browser.stop()
