"""The docs run as printed, and name only what is in the repository.

**Code blocks** of README.md and docs/*.md (tests/support/docblocks.py extracts them) run by
their info string, each in a directory of its document (`<tmp>/<doc>/`) that holds a symlink to
every top-level entry of the repository, so `.venv/bin/…`, `node_modules/.bin/…` and `scripts/…`
resolve as in a checkout, and files a block writes (`hubbub.yaml`) stay out of the repository:

- `sh`, `bash`, `shell`: `bash` with `set -euo pipefail`, stdin empty.
- `python`, `py`: the venv's Python, as a script.
- `js`, `javascript`: Node, as an ES module, next to `hubbub.js` and `hubbub.d.ts` (the docs tell
  you to vendor them side by side). A block that imports `"/hubbub.js"` (a URL on the node, so only
  a page can load it) or uses `document`, `window`, `localStorage` or `sessionStorage` is browser
  code: it runs as a module script in headless Chromium (tests/support/browser.py) on a page of the
  live node (`/healthz`), so `/hubbub.js`, `/ws` and `/demo/token` resolve against the node.
- `html`: in that page too: its markup becomes the page's body and its `<script type="module">`
  elements run in order. A block is done when its last statement ran; an uncaught error or an
  unhandled rejection fails it.
- `yaml`, `json`, `toml`: hubbub configurations: `hubbub check-config --config` must exit 0.
- `text`, `console` or no info string: output and transcripts (wscat's `>`/`<` lines), not run.
  A runnable block with a line starting `> `, `< ` or `$ ` is a transcript mislabelled.
- Any other info string fails: label it, or teach this module to run it.

**The live node.** Every block runs against a real node on a free port: the harness's own
development-mode node (`hubbub serve` with no config, as `scripts/serve` runs it) unless a
`serves` block (below) came before it in the same document, then that block's node. The harness
rewrites `127.0.0.1:8000` and `localhost:8000` in a block to the node's address, and sets
`HUBBUB_HOST=127.0.0.1` and `HUBBUB_PORT=<port>` (every other `HUBBUB_*` variable is removed),
which a `hubbub serve` in a block obeys over its config file (environment beats file). Python and
Node blocks also get `TOKEN`: a development-mode token for every room (`hubbub token --sub
docs-reader --rooms '*' --publish '*'`); a doc says so where its code reads it ("with `TOKEN`
exported as above"). Shell blocks get no token: they mint what they use.

**Directives**: an HTML comment on the line right before a block.

- `<!-- docs-test: serves -->`: a shell block that runs until stopped (it starts a node). It runs
  in the background; the test waits until the node answers `/readyz` on its port, the document's
  following blocks run against it, and at the end it is stopped with SIGINT (Ctrl-C), as a
  reader would; its log must hold no traceback.
- `<!-- docs-test: skip (reason) -->`: not run, only checked for syntax (`bash -n`, Python's
  `compile`, `node --check`); the skip and its reason show in pytest's summary. For blocks that
  cannot run here (the whole test suite, the Kubernetes control plane, a 20-minute benchmark).

A failure names the block (`file:line`), the script as run and its output.

**The README's example, end to end**: the wscat session of its Quick start goes as its transcripts
show (with the transcript's `>` lines sent through `wscat -x`, as no one types here), the push
carries the offset its curl printed, and the demo chat, opened on its default room, shows that
publication as one from the HTTP API (so the README's room is the demo's).

Running blocks and nodes takes a while: those tests are marked `slow`; the path checks are quick.

**Repository paths.** Every relative link (markdown `[..](target)`, HTML `src`/`href`) of every
markdown file in the repository resolves to a file or directory, and its `#fragment` to a heading.
A code span (inline code) names a repository path, and the path must exist, when:

(a) any whitespace-separated token of it starts with `<top>/`, where `<top>` is a top-level
    directory of the repository or one the project reserves for what it does not have yet
    (`charts`, `operator`); this also applies to tokens in fenced blocks; or
(b) the whole span is one relative path (no leading `/`, `.` or `~`, no `:`) whose file name has a
    source extension (`.py .mjs .js .ts .go .sh .md .html .css .png`): it must be the end of an
    existing path, component by component (`connection.py`, `backends/redis_link.py`).
    Configuration extensions (`.yaml`, `.json`, `.toml`) are left out: docs name files the reader
    writes (`hubbub.yaml`) and protocol names (`hubbub.v1.json`).

`{a,b}` expands as in the shell. A component holding a placeholder (`<…>`, `*`, `...`, `…`)
ends the path: the directory before it must exist. A path git ignores (`bench/results/…`) is an
output, not a repository path, and is not checked.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from hubbub.auth import mint_token
from hubbub.settings import DEV_JWT_SECRET
from tests.support import docblocks
from tests.support.browser import Browser, Page
from tests.support.browser import missing as browser_missing
from tests.support.docblocks import Block, Document
from tests.support.procs import free_port

ROOT = docblocks.ROOT
#: Documents whose code blocks run.
RUN_DOCS = ("README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")))

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

# --- documents ------------------------------------------------------------------------------------


@functools.cache
def document(rel: str) -> Document:
    return docblocks.load(ROOT / rel)


def all_markdown() -> list[str]:
    return sorted(p for p in repository_files() if p.endswith(".md"))


@functools.cache
def repository_files() -> frozenset[str]:
    """Tracked files and new files git does not ignore, relative to the root."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return frozenset(p for p in listed.split("\0") if p and (ROOT / p).exists())


@functools.cache
def repository_dirs() -> frozenset[str]:
    return frozenset(str(Path(p).parents[i]) for p in repository_files() for i in range(len(Path(p).parents) - 1))


def runnable_blocks() -> list[Any]:
    params: list[Any] = []
    for rel in RUN_DOCS:
        try:
            blocks = document(rel).blocks
        except docblocks.DocError as exc:
            params.append(pytest.param(None, str(exc), id=f"{rel}-unreadable"))
            continue
        for block in blocks:
            if block.lang in NOT_RUN and block.directive is None:
                continue
            marks: list[Any] = [pytest.mark.slow]
            if block.directive is None and (block.lang == "html" or (block.lang in JS and is_browser_code(block))):
                marks.append(pytest.mark.browser)
            params.append(
                pytest.param(block, None, id=f"{block.path}:{block.line}:{block.lang or 'plain'}", marks=marks)
            )
    return params


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


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    registry = Nodes(tmp_path_factory.mktemp("docs"))
    yield registry
    problems = registry.stop_all()
    assert not problems, "\n\n".join(problems)


@pytest.fixture(scope="module")
def browser_holder() -> Iterator[list[Browser]]:
    """One headless Chromium for the module, started by the first test that needs it."""
    holder: list[Browser] = []
    yield holder
    for chromium in holder:
        chromium.close()


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


@pytest.mark.parametrize(("block", "problem"), runnable_blocks())
def test_code_block_runs_as_printed(
    block: Block | None, problem: str | None, nodes: Nodes, browser_holder: list[Browser]
) -> None:
    if block is None:
        pytest.fail(str(problem))
    cwd = reader_dir(nodes.base, block.path)
    runnable = SHELL | PYTHON | JS | CONFIG | {"html"}
    if block.lang not in runnable | NOT_RUN:
        pytest.fail(
            f"{block.where}: no rule for `{block.info}` blocks: label output `text`, or teach {__name__} to run it"
        )
    if block.lang in runnable - CONFIG and (found := TRANSCRIPT_LINE.search(block.text)):
        line = block.text[found.start() :].split("\n", 1)[0]
        pytest.fail(f"{block.where}: `{line}` is a transcript line: put transcripts in a `text` block")
    directive = block.directive
    if directive is not None and directive.kind == "skip":
        check_syntax(block, cwd)
        pytest.skip(f"{block.where}: {directive.reason}")
    if directive is not None and directive.kind == "serves":
        if block.lang not in SHELL:
            pytest.fail(f"{block.where}: only shell blocks can be `serves` blocks")
        nodes.serve(block)
        return
    if block.lang in CONFIG:
        run_config(block, cwd)
        return
    node = nodes.for_block(block)
    if block.lang in SHELL:
        run_shell(block, node, cwd)
    elif block.lang in PYTHON:
        run_python(block, node, cwd)
    elif block.lang == "html" or is_browser_code(block):
        run_in_browser(block, node, browser_holder)
    else:
        run_node(block, node, cwd)


# --- the README's example, end to end -------------------------------------------------------------

#: Values that differ from run to run: the transcript shows one example of each.
VARYING = {"client", "epoch", "expires_in", "offset", "ts"}


def readme_block(needle: str) -> Block:
    found = [b for b in document("README.md").blocks if b.lang in SHELL and needle in b.text]
    assert len(found) == 1, f"README.md should have one shell block with {needle!r}, not {len(found)}"
    return found[0]


def transcript_after(block: Block) -> Block:
    """The `text` block that follows `block`: what the reader sees."""
    following = [b for b in document(block.path).blocks if b.line > block.line]
    assert following and following[0].lang == "text", f"{block.where}: no transcript (`text` block) follows it"
    return following[0]


def unlike(expected: Any, got: Any, where: str = "") -> list[str]:
    """How `got` differs from the transcript's `expected` (keys in VARYING may hold other values)."""
    if isinstance(expected, dict) and isinstance(got, dict):
        if set(expected) != set(got):
            return [f"{where or 'message'}: keys {sorted(got)}, the transcript shows {sorted(expected)}"]
        return [p for k in expected for p in unlike(expected[k], got[k], f"{where}.{k}" if where else k)]
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        return [p for i, (e, g) in enumerate(zip(expected, got, strict=True)) for p in unlike(e, g, f"{where}[{i}]")]
    key = where.rsplit(".", 1)[-1]
    number = (int, float)
    if key in VARYING and type(expected) is type(got):
        return []
    if isinstance(expected, number) and isinstance(got, number) and not isinstance(got, bool) and expected == got:
        return []
    if type(expected) is type(got) and expected == got:
        return []
    return [f"{where}: got {json.dumps(got)}, the transcript shows {json.dumps(expected)}"]


def publish_body(block: Block) -> dict[str, Any]:
    found = re.search(r"-d '(\{.*?\})'", block.text)
    assert found, f"{block.where}: no -d '{{...}}' body"
    body: dict[str, Any] = json.loads(found[1])
    return body


def run_publish(block: Block, node: Node, cwd: Path) -> int:
    """Run the README's curl block; the offset the HTTP API answered."""
    script = "set -euo pipefail\n" + rewrite(block.text, node.port)
    ran = run(["bash", "-c", script], cwd=cwd, env=base_env(node.port))
    assert ran.returncode == 0, failure(block, "failed", script, ran)
    answer = json.loads(ran.output.strip().splitlines()[-1])
    offset: int = answer["offset"]
    return offset


class Lines:
    """The stdout of a background process, line by line, awaitable with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()

    def join(self) -> None:
        self._thread.join(10)

    def wait_for(self, done: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self.lines):
                left = deadline - time.monotonic()
                assert left > 0, "timed out; received:\n" + "\n".join(self.lines)
                self._changed.wait(left)


def messages(lines: list[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for line in lines:
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                found.append(value)
    return found


@pytest.mark.slow
def test_readme_wscat_session_and_curl_publish_go_as_the_readme_shows(nodes: Nodes) -> None:
    """The README's wscat block, typing the transcript's `>` lines (as `-x`, since no one types
    here), then its curl block: every `<` line of both transcripts arrives as shown, and the push
    carries the offset curl printed."""
    session, publish = readme_block("wscat -c"), readme_block("/api/publish")
    typed = [line[2:] for line in transcript_after(session).text.splitlines() if line.startswith("> ")]
    shown = [
        json.loads(line[2:])
        for block in (session, publish)
        for line in transcript_after(block).text.splitlines()
        if line.startswith("< ")
    ]
    assert typed and len(shown) == len(typed) + 1, "the README's transcripts changed shape: adjust this test"
    node = nodes.for_block(session)
    assert node is nodes.for_block(publish)
    cwd = reader_dir(nodes.base, "README.md")
    wscat_line = next(line for line in session.text.splitlines() if "wscat -c" in line)
    extended = wscat_line + " -w -1" + "".join(f" -x {shlex.quote(command)}" for command in typed)
    script = "set -euo pipefail\n" + rewrite(session.text.replace(wscat_line, extended), node.port)
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=cwd,
        env=base_env(node.port),
        stdin=subprocess.PIPE,  # held open: wscat quits when its input ends
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out = Lines(proc)
    try:
        ids = {json.loads(command)["id"] for command in typed}
        out.wait_for(lambda lines: ids <= {m.get("id") for m in messages(lines)})
        offset = run_publish(publish, node, cwd)
        room = publish_body(publish)["room"]
        out.wait_for(lambda lines: any(m.get("push") == "pub" and m["room"] == room for m in messages(lines)))
    finally:
        stop_group(proc, signal.SIGTERM)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        out.join()
        proc.stdout.close()
    got = messages(out.lines)
    problems: list[str] = []
    for expected in shown:
        if "id" in expected:
            match = [m for m in got if m.get("id") == expected["id"]]
        else:
            match = [m for m in got if m.get("push") == expected["push"] and m.get("room") == expected.get("room")]
        if len(match) != 1:
            problems.append(f"expected one message like {json.dumps(expected)}, got {len(match)}")
            continue
        problems += unlike(expected, match[0])
        if match[0].get("push") == "pub":
            assert match[0]["offset"] == offset, f"the push has offset {match[0]['offset']}, curl printed {offset}"
    assert not problems, "\n".join(problems) + "\n--- wscat printed ---\n" + "\n".join(out.lines)


@pytest.mark.slow
@pytest.mark.browser
def test_readme_curl_publish_shows_up_in_the_demo_room_the_readme_names(
    nodes: Nodes, browser_holder: list[Browser]
) -> None:
    """The room the README's curl publishes to is the room the demo joins by default, and the demo
    shows the publication as one from the HTTP API."""
    publish = readme_block("/api/publish")
    body = publish_body(publish)
    node = nodes.for_block(publish)
    page = get_browser(browser_holder).open(node.http_url + "/")
    try:
        page.wait("() => document.querySelector('#room')?.value")  # the demo's script filled in its default
        page.fill("#name", "Reader")
        page.click("#join")
        page.wait("() => document.querySelector('#status')?.dataset.state === 'connected' && window.hubbubDemo?.room")
        joined = page.evaluate("() => window.hubbubDemo.room.name")
        assert body["room"] == joined, f"the README publishes to {body['room']}, the demo opens {joined}"
        offset = run_publish(publish, node, reader_dir(nodes.base, publish.path))
        shown = page.wait(
            """(offset) => {
                const li = document.querySelector(`#messages li.message[data-offset="${offset}"]`);
                return li && { author: li.dataset.author, text: li.querySelector('.text')?.textContent,
                               badge: li.querySelector('.badge')?.textContent ?? null };
            }""",
            offset,
        )
        assert shown == {"author": "server", "text": body["data"]["text"], "badge": "HTTP API"}
    finally:
        page.close()


# --- repository paths -----------------------------------------------------------------------------

PLANNED_DIRS = ("charts", "operator")
SOURCE_EXTENSIONS = ("py", "mjs", "js", "ts", "go", "sh", "md", "html", "css", "png")
PLACEHOLDER = re.compile(r"<|\*|\.\.\.|…|\$")
BRACES = re.compile(r"\{([^{}]*)\}")
BARE_PATH = re.compile(rf"^(?![./~])[\w.-]+(?:/[\w.-]+)*\.(?:{'|'.join(SOURCE_EXTENSIONS)})$")


@functools.cache
def top_dirs() -> tuple[str, ...]:
    tracked = {p.split("/", 1)[0] for p in repository_files() if "/" in p}
    return tuple(sorted(tracked | set(PLANNED_DIRS)))


def path_tokens(text: str) -> list[str]:
    """Rule (a): tokens of `text` that start with a top-level directory."""
    tops = "|".join(re.escape(t) for t in top_dirs())
    pattern = rf"(?<![\w.~/$-])(?:{tops})/(?:[\w.*<>…$-]|/|\{{[\w.,-]*\}})*"
    return [m[0].rstrip(".") for m in re.finditer(pattern, text)]


def expand(path: str) -> list[str]:
    found = BRACES.search(path)
    if not found:
        return [path]
    return [p for option in found[1].split(",") for p in expand(path[: found.start()] + option + path[found.end() :])]


def concrete(path: str) -> str:
    """The part of `path` before its first placeholder component (ending in `/`), or all of it."""
    found = PLACEHOLDER.search(path)
    return path if found is None else path[: path.rfind("/", 0, found.start()) + 1]


def ignored(path: str) -> bool:
    # Both spellings: a pattern for a directory (`bench/results/`) matches a path only as a
    # directory, and git cannot know that of a path that does not exist here.
    stem = path.rstrip("/")
    listed = subprocess.run(["git", "check-ignore", stem, stem + "/"], cwd=ROOT, capture_output=True, check=False)
    return bool(listed.stdout.strip())


def exists(path: str) -> bool:
    path = path.rstrip("/")
    return path in repository_files() or path in repository_dirs()


def missing_rooted(path: str) -> list[str]:
    """Rule (a): the expansions of `path` that name nothing in the repository."""
    absent = []
    for option in expand(path):
        part = concrete(option)
        if part and not exists(part) and not ignored(part):
            absent.append(part)
    return absent


def missing_bare(span: str) -> list[str]:
    """Rule (b): the expansions of a bare relative path that end no repository path."""
    return [
        option
        for option in expand(span)
        if not any(f == option or f.endswith("/" + option) for f in repository_files())
    ]


def is_bare_path(span: str) -> bool:
    """Rule (b): the whole span is a relative path with a source extension (each `{,}` expansion)."""
    return not path_tokens(span) and all(BARE_PATH.match(option) for option in expand(span))


def named_paths(doc: Document) -> list[tuple[str, str]]:
    """(where, path) for every repository path the document names that does not exist."""
    absent: list[tuple[str, str]] = []
    for span in doc.code_spans():
        text = span.text.strip()
        for token in path_tokens(text):
            absent += [(span.where, p) for p in missing_rooted(token)]
        if is_bare_path(text):
            absent += [(span.where, p) for p in missing_bare(text)]
    for block in doc.blocks:
        for token in path_tokens(block.text):
            absent += [(f"{block.where} (code block)", p) for p in missing_rooted(token)]
    return absent


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(rel: str) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for heading in document(rel).headings():
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(doc: Document) -> list[tuple[str, str]]:
    rel = doc.path
    broken: list[tuple[str, str]] = []
    for link in doc.links():
        target = link.text
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue  # http:, https:, mailto:: not a repository path
        path, _, fragment = target.partition("#")
        resolved = (ROOT / path.lstrip("/")) if path.startswith("/") else (ROOT / rel).parent / path
        resolved_rel = os.path.relpath(resolved, ROOT) if path else rel
        if path and (resolved_rel.startswith("..") or not exists(Path(resolved_rel).as_posix())):
            broken.append((link.where, f"{target}: no {resolved_rel} in the repository"))
        elif fragment and resolved_rel.endswith(".md") and fragment not in anchors(resolved_rel):
            broken.append((link.where, f"{target}: {resolved_rel} has no heading with the anchor #{fragment}"))
    return broken


@pytest.mark.parametrize("rel", all_markdown())
def test_every_relative_link_resolves(rel: str) -> None:
    broken = broken_links(document(rel))
    assert not broken, "broken links:\n" + "\n".join(f"  {where}: {what}" for where, what in broken)


@pytest.mark.parametrize("rel", all_markdown())
def test_every_repository_path_a_doc_names_exists(rel: str) -> None:
    absent = named_paths(document(rel))
    assert not absent, "named but not in the repository:\n" + "\n".join(f"  {w}: {p}" for w, p in absent)


def test_the_path_rules_tell_repository_paths_from_other_code() -> None:
    """Examples of each rule, so that a loosened heuristic cannot pass silently."""
    assert missing_rooted("charts/hubbub") == ["charts/hubbub"]
    assert missing_rooted("operator/") == ["operator/"]
    assert missing_rooted("service/hubbub/static/demo.{html,js}") == []
    assert missing_rooted("service/hubbub/static/demo.{html,jsx}") == ["service/hubbub/static/demo.jsx"]
    assert missing_rooted("bench/results/<UTC stamp>.json") == []  # ignored output
    assert missing_rooted("tests/js/") == []
    assert missing_bare("backends/redis_link.py") == []
    assert missing_bare("shared/design/protocol-v1.md") == ["shared/design/protocol-v1.md"]
    assert is_bare_path("status.{html,js}") and missing_bare("status.{html,js}") == []
    assert is_bare_path("connection.py") and not is_bare_path("service/hubbub/connection.py")  # that is rule (a)
    assert path_tokens("helm install demo tests/fixtures/charts/mini") == ["tests/fixtures/charts/mini"]
    assert path_tokens('cluster.helm("install", "x", "charts/hubbub")') == ["charts/hubbub"]
    assert path_tokens("~/.cache/hubbub/k8s-bin/ and http://127.0.0.1:8000/docs/x") == []
    doc = docblocks.parse(
        "See [scaling](scaling.md#keys), [nothing](nothing.md), [a heading](protocol.md#no-such-heading),\n"
        '[up](../README.md#quick-start), <img src="images/demo.png"> and [the web](https://example.com/x.md).\n'
        "`[not a link](nowhere.md)`, `operator/crd.yaml`, `tests/js/`, `reactor.go`, `nothing.py`.\n"
        "```python\ncluster.helm('install', 'x', 'charts/hubbub')\n```\n",
        "docs/example.md",
    )
    assert [what.split(":")[0] for _, what in broken_links(doc)] == ["nothing.md", "protocol.md#no-such-heading"]
    assert [path for _, path in named_paths(doc)] == ["operator/crd.yaml", "nothing.py", "charts/hubbub"]
    for other in ("hubbub.v1.json", "hubbub.yaml", "/hubbub.js", "hubbub.backends.redis_link", "k8s.io/kubernetes"):
        assert not is_bare_path(other), other


# --- the runners themselves -----------------------------------------------------------------------


def synthetic(lang: str, text: str) -> Block:
    """A block as a doc would hold it, for checking that the runners tell working code from broken."""
    return Block("tests/test_docs.py", 0, lang, text, None)


def fails(check: Any) -> bool:
    try:
        check()
    except pytest.fail.Exception:
        return True
    return False


GOOD_PYTHON = """
import asyncio
import os

from hubbub.client import Client


async def main() -> None:
    async with Client("ws://127.0.0.1:8000/ws", token=os.environ["TOKEN"]) as client:
        await client.join("docs:runner")
        await client.publish("docs:runner", {"text": "from a block"})


asyncio.run(main())
"""

GOOD_NODE = """
import { Client } from "./hubbub.js";
if (!process.env.TOKEN || typeof Client !== "function") process.exit(1);
"""

GOOD_CONFIG = """
mode: production
jwt_secret: "0123456789abcdef0123456789abcdef"
api_key: "docs-test"
namespaces:
  chat: {history_size: 10}
"""


@pytest.mark.slow
def test_the_runners_pass_working_blocks_and_fail_broken_ones(nodes: Nodes) -> None:
    node = nodes.default()
    cwd = reader_dir(nodes.base, "_runners")
    assert not fails(
        lambda: run_shell(synthetic("sh", "curl -sS --fail-with-body http://127.0.0.1:8000/readyz\n"), node, cwd)
    )
    assert fails(lambda: run_shell(synthetic("sh", "false\necho unreachable\n"), node, cwd))
    assert fails(lambda: run_shell(synthetic("sh", "echo $UNSET_VARIABLE\n"), node, cwd))
    assert not fails(lambda: run_python(synthetic("python", GOOD_PYTHON), node, cwd))
    assert fails(
        lambda: run_python(synthetic("python", GOOD_PYTHON.replace('"docs:runner"', '"no such room!"')), node, cwd)
    )
    assert not fails(lambda: run_node(synthetic("js", GOOD_NODE), node, cwd))
    assert fails(lambda: run_node(synthetic("js", 'import { Nope } from "./hubbub.js";\n'), node, cwd))
    assert not fails(lambda: run_config(synthetic("yaml", GOOD_CONFIG), cwd))
    assert fails(lambda: run_config(synthetic("yaml", GOOD_CONFIG.replace("mode: production", "mode: sideways")), cwd))
    assert fails(lambda: run_config(synthetic("yaml", GOOD_CONFIG.replace("namespaces:", "nope:")), cwd))


GOOD_BROWSER = """
import { Client } from "/hubbub.js";

const answer = await fetch("/demo/token", { method: "POST", body: JSON.stringify({ name: "Docs" }) });
const client = new Client("/ws", { token: (await answer.json()).token });
await client.connect();
await client.join("demo:runner");
await client.publish("demo:runner", { text: "from a page" });
await client.close();
"""


GOOD_HTML = """
<p id="said">hello</p>
<script type="module">
  if (document.getElementById("said")?.textContent !== "hello") throw new Error("no markup");
</script>
"""


@pytest.mark.slow
@pytest.mark.browser
def test_the_browser_runner_passes_working_blocks_and_fails_broken_ones(
    nodes: Nodes, browser_holder: list[Browser]
) -> None:
    node = nodes.default()
    assert not fails(lambda: run_in_browser(synthetic("js", GOOD_BROWSER), node, browser_holder))
    assert fails(
        lambda: run_in_browser(
            synthetic("js", GOOD_BROWSER.replace("demo:runner", "other:runner")), node, browser_holder
        )
    )
    assert fails(
        lambda: run_in_browser(
            synthetic("js", 'import "/hubbub.js";\nthrow new Error("thrown");\n'), node, browser_holder
        )
    )
    assert not fails(lambda: run_in_browser(synthetic("html", GOOD_HTML), node, browser_holder))
    bye = GOOD_HTML.replace('"hello"', '"bye"')
    assert fails(lambda: run_in_browser(synthetic("html", bye), node, browser_holder))


def test_directives_are_read_strictly(tmp_path: Path) -> None:
    """A mistyped directive must not silently turn a block back into one that runs (or vice versa)."""
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- docs-test: skip (why not) -->\n\n```sh\nexit 1\n```\n")
    (block,) = docblocks.load(doc).blocks
    assert block.directive == docblocks.Directive("skip", "why not") and block.line == 3
    for bad in (
        "<!-- docs-test: skipp (typo) -->\n```sh\n```\n",  # unknown directive
        "<!-- docs-test: skip -->\n```sh\n```\n",  # no reason
        "<!-- docs-test: skip (x) -->\nprose\n```sh\n```\n",  # not right before the block
        "<!-- docs-test skip (x) -->\n```sh\n```\n",  # malformed
        "text\n<!-- docs-test: serves -->\n",  # no block at all
    ):
        doc.write_text(bad)
        with pytest.raises(docblocks.DocError):
            docblocks.load(doc)
