"""The docs name only what is in the repository.

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

import functools
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support import docblocks
from tests.support.docblocks import ROOT, Document, all_markdown, document, repository_dirs, repository_files

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
    assert missing_rooted("charts/nope") == ["charts/nope"]
    assert missing_rooted("operator/") == []  # it exists now
    assert missing_rooted("operator/hubbub_operator/nope.py") == ["operator/hubbub_operator/nope.py"]
    assert missing_rooted("service/hubbub/static/demo.{html,js}") == []
    assert missing_rooted("service/hubbub/static/demo.{html,jsx}") == ["service/hubbub/static/demo.jsx"]
    assert missing_rooted("bench/results/<UTC stamp>.json") == []  # ignored output
    assert missing_rooted("tests/js/") == []
    assert missing_bare("backends/redis_link.py") == []
    assert missing_bare("shared/design/protocol-v1.md") == ["shared/design/protocol-v1.md"]
    assert is_bare_path("status.{html,js}") and missing_bare("status.{html,js}") == []
    assert is_bare_path("connection.py") and not is_bare_path("service/hubbub/connection.py")  # that is rule (a)
    assert path_tokens("helm install demo tests/fixtures/charts/mini") == ["tests/fixtures/charts/mini"]
    assert path_tokens('cluster.helm("install", "x", "charts/nope")') == ["charts/nope"]
    assert path_tokens("~/.cache/hubbub/k8s-bin/ and http://127.0.0.1:8000/docs/x") == []
    doc = docblocks.parse(
        "See [scaling](scaling.md#keys), [nothing](nothing.md), [a heading](protocol.md#no-such-heading),\n"
        '[up](../README.md#quick-start), <img src="images/demo.png"> and [the web](https://example.com/x.md).\n'
        "`[not a link](nowhere.md)`, `operator/crd.yaml`, `tests/js/`, `reactor.go`, `nothing.py`.\n"
        "```python\ncluster.helm('install', 'x', 'charts/nope')\n```\n",
        "docs/example.md",
    )
    assert [what.split(":")[0] for _, what in broken_links(doc)] == ["nothing.md", "protocol.md#no-such-heading"]
    assert [path for _, path in named_paths(doc)] == ["operator/crd.yaml", "nothing.py", "charts/nope"]
    for other in ("hubbub.v1.json", "hubbub.yaml", "/hubbub.js", "hubbub.backends.redis_link", "k8s.io/kubernetes"):
        assert not is_bare_path(other), other
