"""hubbub.js on its own: its Node unit suite (a scripted fake server, no network) and its
TypeScript declarations, compiled against a program that uses every method and event.
The same library against real servers in Chromium: tests/process/transport/test_browser.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
#: Strict TypeScript; imports of hubbub.js resolve to its sibling hubbub.d.ts.
TSC: tuple[str, ...] = (
    *("node_modules/.bin/tsc", "--noEmit", "--strict", "--target", "es2022", "--module", "es2022"),
    *("--moduleResolution", "bundler", "--lib", "es2022,dom"),
)


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def failures(tap: str) -> str:
    """The failed tests of a TAP report with their diagnostics (the tail of a long report may hold none)."""
    found = re.findall(r"^ *not ok .*?(?=^ *(?:ok |not ok |# Subtest:|# tests ))", tap + "\n# tests ", re.M | re.S)
    return "".join(found)[-6000:] or tap[-6000:]


def test_node_unit_suite_of_the_browser_client_passes() -> None:
    result = run("node", "--test", "--test-reporter=tap", "tests/js/")
    output = result.stdout + result.stderr
    assert result.returncode == 0, failures(output)
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", output, re.MULTILINE)
    assert passed and failed, output[-2000:]
    assert int(failed.group(1)) == 0
    assert int(passed.group(1)) >= 30, "the suite ran far fewer tests than it has"


def test_typescript_declarations_compile_against_an_application_using_them() -> None:
    result = run(*TSC, "tests/js/types-check.ts")
    assert result.returncode == 0, result.stdout + result.stderr


def test_typescript_rejects_a_misuse_of_the_api(tmp_path: Path) -> None:
    """The declarations constrain callers: without this, a declaration file of `any` would pass the test above."""
    # In the test's own directory: two runs in one checkout must not share a file.
    wrong = tmp_path / "misuse.ts"
    module = ROOT / "service" / "hubbub" / "static" / "hubbub.js"
    wrong.write_text(
        f"import {{ Client }} from {json.dumps(str(module))};\n"
        'const client = new Client("ws://x/ws", { token: null });\n'
        'client.on("publication", (pub) => { const n: string = pub.offset; console.log(n); });\n'
        "client.publish(42);\n"
    )
    result = run(*TSC, str(wrong))
    assert result.returncode != 0
    assert "Type 'number' is not assignable to type 'string'" in result.stdout
    assert "Expected 2-3 arguments, but got 1" in result.stdout
