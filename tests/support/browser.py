"""Headless Chromium for the tests: Debian's `chromium`, driven by npm `playwright-core`.

`Browser` runs `browser_bridge.mjs` under Node and talks JSON lines with it; `Page.evaluate`
and `Page.wait` take a JavaScript function expression (`"(arg) => ..."`) that runs in the page.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = Path(__file__).with_name("browser_bridge.mjs")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
#: Where the tests save screenshots; `scripts/screenshots` copies them into docs/images.
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"


class BrowserError(Exception):
    pass


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: run scripts/install (apt-get install chromium)"
    if shutil.which("node") is None:
        return "node is missing: run scripts/install"
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "node_modules/playwright-core is missing: run scripts/install"
    return None


class Browser:
    def __init__(self) -> None:
        problem = missing()
        if problem:
            raise BrowserError(problem)
        self._proc = subprocess.Popen(
            ["node", str(BRIDGE)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "CHROMIUM": CHROMIUM},
            text=True,
            bufsize=1,
        )
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next = 0
        ready = self._get(60.0)
        if "ready" not in ready:
            raise BrowserError(f"bridge did not start: {ready}")
        self.version = str(ready["ready"])

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._answers.put(json.loads(line))
        self._answers.put(None)

    def _get(self, timeout: float) -> dict[str, Any]:
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"no answer from the browser bridge within {timeout} s") from None
        if answer is None:
            stderr = self._proc.stderr.read() if self._proc.stderr else ""
            raise BrowserError(f"the browser bridge exited: {stderr[-2000:]}")
        return answer

    def call(self, op: str, *, answer_within: float = 30.0, **params: Any) -> Any:
        self._next += 1
        request_id = self._next
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"id": request_id, "op": op, **params}) + "\n")
        self._proc.stdin.flush()
        while True:
            answer = self._get(answer_within)
            if answer.get("id") == request_id:
                break
        if "error" in answer:
            raise BrowserError(answer["error"])
        return answer["ok"]

    def open(
        self, url: str, *, width: int = 1280, height: int = 800, dark: bool = False, tab_of: Page | None = None
    ) -> Page:
        """A new page in a fresh browser profile, or with `tab_of` another tab of that page's browser
        (shared storage and cookies; the viewport is that browser's)."""
        page_id = self.call(
            "open",
            url=url,
            width=width,
            height=height,
            colorScheme="dark" if dark else "light",
            sameContextAs=tab_of.id if tab_of is not None else None,
        )
        return Page(self, int(page_id))

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reader.join(5)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()


class Page:
    def __init__(self, browser: Browser, page_id: int) -> None:
        self.browser = browser
        self.id = page_id

    def _call(self, op: str, *, call_timeout: float = 30.0, **params: Any) -> Any:
        try:
            return self.browser.call(op, answer_within=call_timeout, page=self.id, **params)
        except BrowserError as exc:
            raise BrowserError(f"{exc}\n--- page log ---\n{self.log_text()}") from None

    def evaluate(self, script: str, arg: Any = None) -> Any:
        return self._call("evaluate", script=script, arg=arg)

    def wait(self, script: str, arg: Any = None, *, timeout: float = 10.0) -> Any:
        """Poll `script(arg)` in the page until it returns something truthy; return that."""
        return self._call("wait", script=script, arg=arg, timeout=int(timeout * 1000), call_timeout=timeout + 10)

    def goto(self, url: str) -> None:
        self._call("goto", url=url)

    def fill(self, selector: str, value: str) -> None:
        self._call("fill", selector=selector, value=value)

    def click(self, selector: str) -> None:
        self._call("click", selector=selector)

    def press(self, selector: str, key: str) -> None:
        self._call("press", selector=selector, key=key)

    def screenshot(self, name: str, *, full_page: bool = False) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        self._call("screenshot", path=str(path), fullPage=full_page)
        return path

    def log(self) -> list[str]:
        return list(self.browser.call("log", page=self.id))

    def log_text(self) -> str:
        try:
            return "\n".join(self.log()[-40:])
        except BrowserError:
            return "(no log)"

    def close(self) -> None:
        self.browser.call("close", page=self.id)


class _AppPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><html><head><title>an application</title></head><body>app</body></html>"
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reports what matters
        pass


class AppOrigin:
    """A second origin on 127.0.0.1: an empty page an application would serve, on a port of its own.

    A page there that imports `http://127.0.0.1:<hubbub port>/hubbub.js` is cross-origin to hubbub
    (another port is another origin), as an application on `http://localhost:3000` is.
    """

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _AppPage)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> AppOrigin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
