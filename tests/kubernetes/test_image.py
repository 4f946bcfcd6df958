"""The container image: the top-level Dockerfile, built by scripts/build-image with buildah.

The static tests read the Dockerfile, .dockerignore and scripts/build-image (what goes into the
build and what its cache key covers must be the same files). The `slow` ones take the very
tarball the real tier imports (HUBBUB_IMAGES, else scripts/build-image's output), unpack it as a
runtime would and run it with runc as a pod's container runs: read-only root filesystem, only /tmp
writable (the pods' emptyDir), the image's numeric non-root user, no capabilities. They need root
(runc, and owners kept when unpacking) and skip without it.

    .venv/bin/pytest -q -s tests/kubernetes/test_image.py      # -s prints the image's size, layer by layer
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.container import Container, image_user, run_once, runtime_spec
from tests.support.image_archive import Image, layer_members, read_archive, unpack
from tests.support.polling import wait_until
from tests.support.procs import free_port
from tests.support.realnode import default_images

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"

# -- the Dockerfile, read --------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comments dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        found.append((keyword.upper(), rest.strip()))
    return found


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each stage, in order (what precedes the first FROM: its ARGs, alone)."""
    result: list[list[tuple[str, str]]] = [[]]
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result


def copy_sources(stage: list[tuple[str, str]]) -> set[str]:
    """What a stage's COPY instructions take from the build context (not from another stage)."""
    sources: set[str] = set()
    for keyword, rest in stage:
        if keyword == "COPY" and "--from=" not in rest:
            *src, _dest = shlex.split(rest)
            sources |= {s.rstrip("/") for s in src if not s.startswith("--")}
    return sources


def test_the_dockerfile_builds_on_a_base_chosen_by_a_build_argument() -> None:
    preamble, *built = stages(DOCKERFILE.read_text())
    assert ("ARG", "BASE=debian:bookworm-slim") in preamble
    assert built[0][0] == ("FROM", "${BASE} AS runtime")
    assert [stage[0][1] for stage in built[1:]] == ["runtime AS builder", "runtime"]


def test_the_final_stage_copies_only_the_built_virtualenv_and_runs_hubbub_as_a_numeric_non_root_user() -> None:
    final = stages(DOCKERFILE.read_text())[-1]
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert copies == ["--from=builder /venv /venv", "--from=builder /app /"]
    assert not copy_sources(final), "the image takes nothing from the build context but what the builder made"
    (user,) = [rest for keyword, rest in final if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), user
    assert ("ENTRYPOINT", '["hubbub"]') in final
    # The base stage installs no build tools: the builder's pip, backend and venv module stay there.
    runtime = stages(DOCKERFILE.read_text())[1]
    assert not re.search(r"\b(pip|gcc|build-essential|python3-venv|python3-dev)\b", " ".join(r for _, r in runtime))


def test_the_build_context_and_the_cache_key_of_scripts_build_image_are_the_files_the_dockerfile_copies() -> None:
    copied = set().union(*(copy_sources(stage) for stage in stages(DOCKERFILE.read_text())))
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    assert allowed == copied, "keep .dockerignore's allowlist and the Dockerfile's COPY sources the same"
    script = (ROOT / "scripts" / "build-image").read_text()
    match = re.search(r"inputs=\$\(files_digest ((?:[^)\\]|\\\n)*)\)", script)
    assert match, "scripts/build-image: the hubbub image's `inputs=$(files_digest ...)` line"
    hashed = set(match.group(1).replace("\\\n", " ").split())
    assert hashed == copied | {"Dockerfile", ".dockerignore"}, "scripts/build-image hashes other files than are built"


def test_the_runtime_spec_is_a_pods_read_only_root_with_tmp_writable_and_the_images_user() -> None:
    config = {"config": {"User": "10001:10001", "Env": ["PATH=/venv/bin"], "WorkingDir": "/home/hubbub"}}
    spec = runtime_spec(Path("/r"), config, ["hubbub", "serve"])
    assert spec["root"] == {"path": "/r", "readonly": True}
    assert spec["process"]["user"] == {"uid": 10001, "gid": 10001}
    assert spec["process"]["cwd"] == "/home/hubbub" and spec["process"]["noNewPrivileges"]
    assert not any(spec["process"]["capabilities"].values())
    assert [m["destination"] for m in spec["mounts"] if m["type"] == "tmpfs"] == ["/dev", "/dev/shm", "/tmp"]
    assert image_user({"config": {"User": "7"}}) == (7, 7)
    with pytest.raises(RuntimeError, match="not numeric"):
        image_user({"config": {"User": "hubbub"}})


# -- the built image, run ----------------------------------------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="running the image needs root (runc; unpacking it with its owners)"
)


@pytest.fixture(scope="module")
def archive() -> Path:
    found = [p for p in default_images() if p.name.startswith("hubbub-")]
    assert found, "no hubbub image tarball: run scripts/build-image (HUBBUB_IMAGES lists its output)"
    return found[0]


@pytest.fixture(scope="module")
def image(archive: Path) -> Image:
    return read_archive(archive)


@pytest.fixture(scope="module")
def rootfs(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("image") / "rootfs"
    start = time.monotonic()
    unpack(archive, root)
    print(f"\nunpacked {archive.name} in {time.monotonic() - start:.1f} s")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@needs_root
def test_the_built_image_is_the_dockerfiles_with_a_numeric_non_root_user(image: Image) -> None:
    final = dict(stages(DOCKERFILE.read_text())[-1])
    config = image.config["config"]
    assert config["Entrypoint"] == json.loads(final["ENTRYPOINT"])
    assert config["Cmd"] == json.loads(final["CMD"])
    assert config["User"] == final["USER"]
    uid, _gid = image_user(image.config)
    assert uid != 0


#: Paths no layer of the image may hold: a compiler, pip (and its cache), the build backend, the
#: builder's sources and wheels, the CA bundle passed to the build.
FORBIDDEN = re.compile(
    r"^(usr/bin/(gcc|cc|c\+\+|g\+\+|x86_64-linux-gnu-gcc)[-0-9.]*$|usr/lib/gcc/"
    r"|root/\.cache/|build/|src/|wheels/|run/secrets/"
    r"|venv/bin/pip|venv/lib/python3[.0-9]*/site-packages/(pip|setuptools|hatchling|wheel)[-/])"
)


@pytest.mark.slow
@needs_root
def test_the_image_holds_no_compiler_pip_build_backend_or_cache(archive: Path) -> None:
    names = [member.name.lstrip("./") for _, member in layer_members(archive)]
    assert "venv/bin/hubbub" in names and "venv/bin/hubbub-operator" in names
    found = sorted({name for name in names if FORBIDDEN.match(name)})
    assert not found, f"build leftovers in the image: {found[:20]}"


@pytest.mark.slow
@needs_root
def test_hubbub_serve_starts_from_the_image_with_a_read_only_root_and_answers_readyz(
    rootfs: Path, image: Image, tmp_path: Path
) -> None:
    port = free_port()
    args = [*image.config["config"]["Entrypoint"], "serve", "--host", "127.0.0.1", "--port", str(port)]
    start = time.monotonic()
    with Container(rootfs, image.config, tmp_path / "serve", args) as container:

        def ready() -> bool:
            assert container.process is not None and container.process.poll() is None, "the container exited"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                body: object = json.load(response)
            return response.status == 200 and isinstance(body, dict) and body.get("status") == "ready"

        try:
            wait_until(ready, timeout=60, what="/readyz of hubbub serve in the container")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ncontainer log:\n{container.log()}") from exc
        print(f"\nhubbub serve ready in {time.monotonic() - start:.1f} s (read-only root, /tmp a tmpfs)")


@pytest.mark.slow
@needs_root
def test_only_tmp_is_writable_in_the_container(rootfs: Path, image: Image, tmp_path: Path) -> None:
    probe = (
        "import os\n"
        "for path in ('/tmp/x', '/x', '/venv/x', '/home/hubbub/x', '/etc/x'):\n"
        "    try:\n"
        "        open(path, 'w').close()\n"
        "    except OSError as exc:\n"
        "        print(path, 'refused', exc.strerror)\n"
        "    else:\n"
        "        print(path, 'written')\n"
        "print('uid', os.getuid())\n"
    )
    status, out = run_once(rootfs, image.config, tmp_path / "probe", ["python3", "-c", probe])
    assert status == 0, out
    lines = out.splitlines()
    assert "/tmp/x written" in lines, out
    for path in ("/x", "/venv/x", "/home/hubbub/x", "/etc/x"):
        assert f"{path} refused Read-only file system" in lines, out
    assert f"uid {image_user(image.config)[0]}" in lines


@pytest.mark.slow
@needs_root
def test_the_operator_runs_from_the_same_image(rootfs: Path, image: Image, tmp_path: Path) -> None:
    """As `hubbub-operator`, and as deploy/operator.yaml runs it (`python -m hubbub_operator`): both
    import the operator's runtime (kopf, lightkube), which --help does."""
    for n, args in enumerate([["hubbub-operator", "--help"], ["python", "-m", "hubbub_operator", "--help"]]):
        status, out = run_once(rootfs, image.config, tmp_path / f"operator{n}", args)
        assert status == 0 and "Reconciles RealtimeServices" in out, out


@pytest.mark.slow
@needs_root
def test_the_image_size_is_reported(archive: Path, image: Image) -> None:
    sizes: dict[int, int] = {}
    for index, member in layer_members(archive):
        sizes[index] = sizes.get(index, 0) + member.size
    steps = [h.get("created_by", "") for h in image.config.get("history", []) if not h.get("empty_layer")]
    mib = 1024 * 1024
    print(f"\nhubbub image {archive.name}: {archive.stat().st_size / mib:.0f} MiB as a docker-archive")
    for index in sorted(sizes):
        step = steps[index] if index < len(steps) else "?"
        print(f"  layer {index}: {sizes[index] / mib:6.1f} MiB  {step[:110]}")
    assert len(sizes) == len(image.layers)
    # A bound that catches a compiler or a second Python, not the drift of a dependency.
    assert archive.stat().st_size < 400 * mib
