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
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import docblocks
from tests.support.browser import Browser
from tests.support.docblocks import ROOT, Block, document
from tests.support.docrunner import (
    CONFIG,
    JS,
    NOT_RUN,
    PYTHON,
    SHELL,
    TRANSCRIPT_LINE,
    Node,
    Nodes,
    base_env,
    check_syntax,
    failure,
    get_browser,
    is_browser_code,
    reader_dir,
    rewrite,
    run,
    run_config,
    run_in_browser,
    run_node,
    run_python,
    run_shell,
    stop_group,
)

#: Documents whose code blocks run.
RUN_DOCS = ("README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")))


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
    """The Quick start's shell block holding `needle` (the Kubernetes section has wscat and curl too)."""
    found = [b for b in document("README.md").section("Quick start") if b.lang in SHELL and needle in b.text]
    assert len(found) == 1, f"README.md's Quick start should have one shell block with {needle!r}, not {len(found)}"
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


# --- the runners themselves -----------------------------------------------------------------------


def synthetic(lang: str, text: str) -> Block:
    """A block as a doc would hold it, for checking that the runners tell working code from broken."""
    return Block("tests/project/test_docs.py", 0, lang, text, None)


def fails(check: Any) -> bool:
    try:
        check()
    except pytest.fail.Exception:
        return True
    return False


GOOD_PYTHON = """
import asyncio
import os

from hubbub_client import Client


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
