"""What a markdown document shows a reader: fenced code blocks, inline code spans and links.

Just enough CommonMark for the project's own docs: fences of three or more backticks or tildes,
code spans of any backtick count (they may wrap onto the next line, not past a blank line),
inline links, and the `src`/`href` of inline HTML. A `<!-- docs-test: ... -->` comment on the
last non-blank line before a fence is that block's directive (see tests/project/test_docs.py).
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>[\w-]+)\s*(?:\((?P<reason>.*)\))?\s*-->\s*$")
ANY_DIRECTIVE = re.compile(r"<!--\s*docs-test", re.IGNORECASE)
#: A code span: a run of backticks, content without a blank line, the same run (CommonMark 6.1).
CODE_SPAN = re.compile(r"(?<!`)(?P<ticks>`+)(?!`)(?P<code>(?:(?!\n\s*\n).)+?)(?<!`)(?P=ticks)(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"(?P<target>[^\"]+)\"", re.IGNORECASE)


class DocError(Exception):
    """The document breaks a rule of the docs test itself (a stray or unknown directive)."""


@dataclass(frozen=True)
class Directive:
    kind: str
    reason: str


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    info: str
    text: str
    directive: Directive | None

    @property
    def lang(self) -> str:
        return self.info.split()[0].lower() if self.info.strip() else ""

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Span:
    """An inline code span or a link target, with the line it starts on."""

    path: str
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Document:
    path: str
    source: str
    blocks: tuple[Block, ...]
    prose: str  # the source with every fenced block's lines blanked (line numbers kept)

    def code_spans(self) -> list[Span]:
        return [Span(self.path, _line_of(self.prose, m.start()), m["code"]) for m in CODE_SPAN.finditer(self.prose)]

    def links(self) -> list[Span]:
        """Link targets of the prose, code spans excluded (a link shown as code is not a link)."""
        text = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), self.prose)
        found = [m for pattern in (LINK, HTML_LINK) for m in pattern.finditer(text)]
        return [Span(self.path, _line_of(text, m.start()), m["target"]) for m in sorted(found, key=lambda m: m.start())]

    def headings(self) -> list[str]:
        return [m[1].strip() for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", self.prose, re.MULTILINE)]

    def section(self, heading: str) -> tuple[Block, ...]:
        """The blocks under the `## heading` (up to the next `## ` heading): read in the prose, where a
        block's own `## ` lines (a shell comment) are blanked."""
        lines = self.prose.split("\n")
        starts = [i + 1 for i, line in enumerate(lines) if line.rstrip() == f"## {heading}"]
        if len(starts) != 1:
            raise DocError(f"{self.path}: {len(starts)} headings `## {heading}`")
        ends = [i + 1 for i, line in enumerate(lines) if line.startswith("## ") and i + 1 > starts[0]]
        end = ends[0] if ends else len(lines) + 1
        return tuple(b for b in self.blocks if starts[0] < b.line < end)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def load(path: Path) -> Document:
    resolved = path.resolve()
    rel = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(path)
    return parse(path.read_text(), rel)


def parse(source: str, rel: str) -> Document:
    """The document `source`, as if it were at `rel` (relative to the repository root)."""
    lines = source.split("\n")
    blocks: list[Block] = []
    prose = list(lines)
    pending: tuple[int, Directive] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = DIRECTIVE.match(line)
        if directive:
            kind, reason = directive["kind"], (directive["reason"] or "").strip()
            if kind not in ("skip", "serves"):
                raise DocError(f"{rel}:{i + 1}: unknown docs-test directive {kind!r} (skip or serves)")
            if kind == "skip" and not reason:
                raise DocError(f"{rel}:{i + 1}: `docs-test: skip` needs a reason: <!-- docs-test: skip (why) -->")
            pending = (i + 1, Directive(kind, reason))
            i += 1
            continue
        if ANY_DIRECTIVE.search(line):
            raise DocError(f"{rel}:{i + 1}: malformed docs-test directive: {line.strip()}")
        opening = FENCE.match(line)
        if opening is None:
            if pending is not None and line.strip():
                raise DocError(f"{rel}:{pending[0]}: a docs-test directive must come right before a code block")
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        end = i + 1
        while end < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[end]):
            end += 1
        # Content lines lose up to the opening fence's indentation (CommonMark 4.5).
        body = [re.sub(rf"^ {{0,{indent}}}", "", text) for text in lines[i + 1 : end]]
        blocks.append(
            Block(rel, i + 1, opening["info"].strip(), "\n".join(body) + "\n", pending[1] if pending else None)
        )
        pending = None
        for j in range(i, min(end + 1, len(lines))):
            prose[j] = ""
        i = end + 1
    if pending is not None:
        raise DocError(f"{rel}:{pending[0]}: a docs-test directive must come right before a code block")
    return Document(rel, "\n".join(lines), tuple(blocks), "\n".join(prose))


# --- the repository -------------------------------------------------------------------------------


@functools.cache
def document(rel: str) -> Document:
    return load(ROOT / rel)


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
