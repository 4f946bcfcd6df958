"""Running a doc's code block as a reader would: the languages, a live node to run against, a
directory that looks like a checkout, and failures that show the block as run (see tests/project/test_docs.py)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from hubbub.auth import mint_token
from hubbub.settings import DEV_JWT_SECRET
from tests.support.browser import Browser, Page
from tests.support.browser import missing as browser_missing
from tests.support.docblocks import ROOT, Block, document
from tests.support.procs import free_port

SHELL = {"sh", "bash", "shell"}
PYTHON = {"python", "py"}
JS = {"js", "javascript"}
CONFIG = {"yaml", "yml", "json", "toml"}
NOT_RUN = {"", "text", "console"}
BLOCK_TIMEOUT = 60.0
NODE_TIMEOUT = 30.0
ADDRESS = re.compile(r"\b(?:127\.0\.0\.1|localhost):8000\b")
TRANSCRIPT_LINE = re.compile(r"^(?:> |< |\$ )", re.MULTILINE)
BROWSER_JS = re.compile(
    r"""from\s+["']/hubbub\.js["']|import\(\s*["']/hubbub\.js["']|\b(?:document|window|localStorage|sessionStorage)\b"""
)


def is_browser_code(block: Block) -> bool:
    return BROWSER_JS.search(block.text) is not None


def rewrite(text: str, port: int) -> str:
    return ADDRESS.sub(f"127.0.0.1:{port}", text)


# --- processes ------------------------------------------------------------------------------------


@dataclass
class Ran:
    returncode: int | None  # None: timed out
    output: str


def run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = BLOCK_TIMEOUT) -> Ran:
    """Run to completion in its own process group; on timeout the whole group is killed."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return Ran(proc.returncode, out.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        stop_group(proc, signal.SIGKILL)
        out, _ = proc.communicate()
        return Ran(None, out.decode(errors="replace") + f"\n[timed out after {timeout:.0f} s]")


def stop_group(proc: subprocess.Popen[Any], sig: signal.Signals, wait: float = 10.0) -> None:
    """Signal the process group a test started (its pgid is its leader's pid), then SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def reader_dir(base: Path, rel: str) -> Path:
    """A directory for one document's blocks that looks like a checkout: the repository's top-level
    entries as symlinks, and hubbub.js with its declarations for Node blocks."""
    where = base / rel.replace("/", "_")
    if not where.exists():
        where.mkdir(parents=True)
        for entry in ROOT.iterdir():
            if entry.name not in (".git", ".mypy_cache", ".ruff_cache", ".pytest_cache"):
                (where / entry.name).symlink_to(entry)
        for name in ("hubbub.js", "hubbub.d.ts"):
            (where / name).symlink_to(ROOT / "service" / "hubbub" / "static" / name)
    return where


def base_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_") and k != "TOKEN"}
    env.update(HUBBUB_HOST="127.0.0.1", HUBBUB_PORT=str(port))
    return env


def reader_token() -> str:
    return mint_token(DEV_JWT_SECRET, sub="docs-reader", rooms=["*"], publish=["*"], ttl=600)


@dataclass
class Node:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    started_by: str

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Nodes:
    """The live nodes blocks run against: the harness's development node, and one per `serves`
    block, each started on first use and stopped (SIGINT) when the module ends."""

    base: Path
    started: dict[str, Node] = field(default_factory=dict)

    def start(self, key: str, script: str, cwd: Path) -> Node:
        if key in self.started:
            return self.started[key]
        port = free_port()
        log = self.base / f"node-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", "set -euo pipefail\n" + rewrite(script, port)],
                cwd=cwd,
                env=base_env(port),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        node = self.started[key] = Node(port, proc, log, key)
        deadline = time.monotonic() + NODE_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{key}: exited with {proc.returncode} before serving:\n{node.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(node.http_url + "/readyz", timeout=1).status_code == 200:
                    return node
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{key}: no ready node on port {port} within {NODE_TIMEOUT:.0f} s:\n{node.output()}"
                )
            time.sleep(0.1)

    def default(self) -> Node:
        return self.start(
            "the harness's development node", "exec .venv/bin/hubbub serve", reader_dir(self.base, "_harness")
        )

    def for_block(self, block: Block) -> Node:
        """The node of the latest `serves` block before `block` in its document, or the default."""
        serving = [b for b in document(block.path).blocks if b.line < block.line and is_serves(b)]
        if not serving:
            return self.default()
        return self.serve(serving[-1])

    def serve(self, block: Block) -> Node:
        return self.start(block.where, block.text, reader_dir(self.base, block.path))

    def stop_all(self) -> list[str]:
        problems: list[str] = []
        for node in reversed(self.started.values()):
            stop_group(node.proc, signal.SIGINT)
            if "Traceback" in node.output():
                problems.append(f"{node.started_by}: a traceback in its log:\n{node.output()[-4000:]}")
        return problems


def is_serves(block: Block) -> bool:
    return block.directive is not None and block.directive.kind == "serves"


def get_browser(holder: list[Browser]) -> Browser:
    if not holder:
        problem = browser_missing()
        if problem:
            pytest.skip(problem)
        holder.append(Browser())
    return holder[0]


# --- running one block ----------------------------------------------------------------------------


def failure(block: Block, what: str, script: str, ran: Ran | None = None) -> str:
    shown = "\n".join(f"    {line}" for line in script.rstrip("\n").split("\n"))
    message = f"{block.where} ({block.info or 'no info string'}): {what}\n--- as run ---\n{shown}"
    if ran is not None:
        message += f"\n--- exit {ran.returncode}, output ---\n{ran.output.rstrip()}"
    return message


def check_syntax(block: Block, cwd: Path) -> None:
    if block.lang in SHELL:
        ran = run(["bash", "-n", "-c", block.text], cwd=cwd, env=dict(os.environ))
    elif block.lang in PYTHON:
        try:
            compile(block.text, block.where, "exec")
        except SyntaxError as exc:
            pytest.fail(failure(block, f"not valid Python: {exc}", block.text), pytrace=False)
        return
    elif block.lang in JS:
        path = cwd / f"block-{block.line}.mjs"
        path.write_text(block.text)
        ran = run(["node", "--check", path.name], cwd=cwd, env=dict(os.environ))
    else:
        return
    if ran.returncode != 0:
        pytest.fail(failure(block, "syntax check failed", block.text, ran), pytrace=False)


def run_shell(block: Block, node: Node, cwd: Path) -> None:
    script = "set -euo pipefail\n" + rewrite(block.text, node.port)
    ran = run(["bash", "-c", script], cwd=cwd, env=base_env(node.port))
    if ran.returncode != 0:
        pytest.fail(failure(block, "failed", script, ran), pytrace=False)


def run_python(block: Block, node: Node, cwd: Path) -> None:
    script = rewrite(block.text, node.port)
    path = cwd / f"block-{block.line}.py"
    path.write_text(script)
    env = {**base_env(node.port), "TOKEN": reader_token()}
    ran = run([str(ROOT / ".venv" / "bin" / "python"), path.name], cwd=cwd, env=env)
    if ran.returncode != 0:
        pytest.fail(failure(block, "failed", script, ran), pytrace=False)


def run_node(block: Block, node: Node, cwd: Path) -> None:
    script = rewrite(block.text, node.port)
    path = cwd / f"block-{block.line}.mjs"
    path.write_text(script)
    env = {**base_env(node.port), "TOKEN": reader_token()}
    ran = run(["node", path.name], cwd=cwd, env=env)
    if ran.returncode != 0:
        pytest.fail(failure(block, "failed in Node", script, ran), pytrace=False)


#: Runs module scripts in the page in order; `window.__docs` counts those that ran to the end.
INJECT = """
({ scripts, body }) => {
  const state = (window.__docs = { done: 0, errors: [] });
  addEventListener("error", (e) => state.errors.push(String(e.error?.stack ?? e.message)));
  addEventListener("unhandledrejection", (e) => state.errors.push(String(e.reason?.stack ?? e.reason)));
  if (body !== null) document.body.innerHTML = body;
  for (const source of scripts) {
    const script = document.createElement("script");
    script.type = "module";
    script.textContent = source + "\\n;window.__docs.done += 1;\\n";
    document.head.append(script);
  }
  return scripts.length;
}
"""


def run_in_browser(block: Block, node: Node, holder: list[Browser]) -> None:
    text = rewrite(block.text, node.port)
    body: str | None = None
    if block.lang == "html":
        scripts = re.findall(r"<script\s+type=\"module\"\s*>(.*?)</script>", text, re.DOTALL)
        body = re.sub(r"<script\b.*?</script>", "", text, flags=re.DOTALL).strip()
        if re.search(r"<script(?![^>]*type=\"module\")", text):
            pytest.fail(failure(block, 'only <script type="module"> elements can run here', text), pytrace=False)
    else:
        scripts = [text]
    page: Page = get_browser(holder).open(node.http_url + "/healthz")
    try:
        count = page.evaluate(INJECT, {"scripts": scripts, "body": body})
        try:
            state = page.wait(
                "(n) => (window.__docs.errors.length || window.__docs.done === n) && window.__docs", count, timeout=10
            )
        except Exception as exc:  # the bridge's timeout, with the page's log
            pytest.fail(failure(block, f"did not finish in the browser: {exc}", text), pytrace=False)
        if state["errors"]:
            log = "\n".join(page.log())
            pytest.fail(
                failure(block, "failed in the browser", text, Ran(1, "\n".join(state["errors"]) + "\n" + log)),
                pytrace=False,
            )
    finally:
        page.close()


def run_config(block: Block, cwd: Path) -> None:
    path = cwd / f"block-{block.line}.{'yaml' if block.lang == 'yml' else block.lang}"
    path.write_text(block.text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    ran = run([str(ROOT / ".venv" / "bin" / "hubbub"), "check-config", "--config", path.name], cwd=cwd, env=env)
    if ran.returncode != 0:
        pytest.fail(failure(block, "hubbub check-config refused it", block.text, ran), pytrace=False)
