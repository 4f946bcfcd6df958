"""The extras in pyproject.toml against what the code imports, and the locks against the extras.

scripts/serve installs only the `server` extra from requirements/server.lock, scripts/test the
`dev` extra from requirements/dev.lock, and the Dockerfile the `server` and `operator` extras from
requirements/image.lock (building hubbub's wheel with requirements/build.lock's backend), so an
import the extra does not provide fails on a fresh machine only, and a lock out of step with
pyproject.toml fails in pip. Both are caught here, statically and offline: imports are read from
the source (not executed) and mapped to the distribution installed in this virtualenv that ships
them.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
OPERATOR = ROOT / "operator"
BENCH = ROOT / "bench"
PROJECT = canonicalize_name("hubbub")

#: Each lock, the extras it pins and whether it pins the build backend too (scripts/lock). The
#: image's lock has no backend, so the image holds none; build.lock is the backend alone.
LOCKS: dict[str, tuple[tuple[str, ...], bool]] = {
    "server": (("server",), True),
    "dev": (("dev",), True),
    "image": (("server", "operator"), False),
    "build": ((), True),
}
#: What the locks are resolved for (scripts/lock: --python-version 3.11 --python-platform linux).
LOCK_ENVIRONMENT = {
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
    "os_name": "posix",
}
#: Required by an extra but imported by another package, not by hubbub: uvicorn's HTTP parser and
#: event loop, which it picks up when they are installed.
LOADED_BY_OTHERS = {"server": {canonicalize_name("httptools"), canonicalize_name("uvloop")}}


def pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def extra_requirements(extra: str) -> list[Requirement]:
    """An extra's requirements, with its references to other extras of hubbub expanded."""
    project = pyproject()["project"]
    assert isinstance(project, dict)
    found = [Requirement(r) for r in project["dependencies"]]
    for line in project["optional-dependencies"][extra]:
        req = Requirement(line)
        if canonicalize_name(req.name) == PROJECT:
            for other in sorted(req.extras):
                found += extra_requirements(other)
        else:
            found.append(req)
    return [r for r in found if r.marker is None or r.marker.evaluate(LOCK_ENVIRONMENT)]


def build_requirements() -> list[Requirement]:
    build = pyproject()["build-system"]
    assert isinstance(build, dict)
    return [Requirement(r) for r in build["requires"]]


def provided(extra: str) -> set[NormalizedName]:
    return {canonicalize_name(r.name) for r in extra_requirements(extra)}


# -- the locks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: tuple[str, ...]


def read_lock(name: str) -> dict[NormalizedName, Pin]:
    """A pip requirements file as uv writes it: `name==version \\` then `--hash=sha256:...` lines."""
    pins: dict[NormalizedName, Pin] = {}
    entries: list[list[str]] = []
    for line in (ROOT / "requirements" / f"{name}.lock").read_text().splitlines():
        text = line.split("#", 1)[0].strip().rstrip("\\").strip()
        if not text:
            continue
        if line[0].isspace():
            assert entries, f"{name}.lock: continuation before any requirement: {line!r}"
            entries[-1].append(text)
        else:
            entries.append([text])
    for head, *options in entries:
        req = Requirement(head)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{name}.lock: {head!r} is not pinned with =="
        hashes = tuple(o.removeprefix("--hash=") for o in options if o.startswith("--hash="))
        pins[canonicalize_name(req.name)] = Pin(Version(spec.version), hashes)
    return pins


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_pins_every_requirement_of_its_extra(lock: str) -> None:
    pins = read_lock(lock)
    extras, with_backend = LOCKS[lock]
    wanted = [req for extra in extras for req in extra_requirements(extra)]
    if with_backend:
        wanted += build_requirements()
    problems = []
    for req in wanted:
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req} is not in requirements/{lock}.lock")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"requirements/{lock}.lock pins {req.name}=={pin.version}, outside {req}")
    assert not problems, "\n".join([*problems, "run scripts/lock"])


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_has_hashes_for_every_pin(lock: str) -> None:
    pins = read_lock(lock)
    assert pins
    for name, pin in pins.items():
        assert pin.hashes, f"requirements/{lock}.lock: {name} has no hash"
        for h in pin.hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", h), f"requirements/{lock}.lock: {name}: bad hash {h!r}"


def test_image_lock_holds_no_build_backend() -> None:
    """The image's /venv gets image.lock: the backend stays in the Dockerfile's builder stage."""
    backend = {canonicalize_name(r.name) for r in build_requirements()}
    assert backend <= set(read_lock("build"))
    assert not backend & set(read_lock("image")), "the build backend is in image.lock; run scripts/lock"


@pytest.mark.parametrize("lock", sorted(set(LOCKS) - {"dev"}))
def test_lock_pins_the_versions_of_dev_lock(lock: str) -> None:
    """Going from the server profile to dev only adds packages (scripts/install counts on it), and
    the image runs the versions the tests ran."""
    dev = read_lock("dev")
    differ = {
        name: (pin.version, dev[name].version if name in dev else None)
        for name, pin in read_lock(lock).items()
        if name not in dev or dev[name] != pin
    }
    assert not differ, f"{lock}.lock vs dev.lock (version or hashes): {differ}; run scripts/lock"


# -- the imports ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    name: str
    path: Path


def module_path(name: str, roots: Iterable[Path]) -> Path | None:
    """The source of a first-party module, or None when it is not one of ours."""
    for root in roots:
        base = root.joinpath(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def under_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(module: Module) -> Iterator[str]:
    """Every module the source imports at run time, anywhere in it (functions too), not under TYPE_CHECKING."""
    package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]

    def visit(node: ast.AST) -> Iterator[str]:
        if isinstance(node, ast.If) and under_type_checking(node):
            for statement in node.orelse:
                yield from visit(statement)
            return
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                assert node.module is not None
                target = node.module
            yield target
            # `from package import submodule` imports the submodule too.
            yield from (f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    yield from visit(ast.parse(module.path.read_text(), str(module.path)))


def third_party_imports(roots: Iterable[Module], search: tuple[Path, ...]) -> dict[str, set[str]]:
    """The modules outside ours and the standard library that `roots` import, transitively through ours.

    Importing a module runs its packages' __init__ first, so those are walked too. Returns each
    import with the first-party modules that make it.
    """
    found: dict[str, set[str]] = {}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module.name in seen:
            continue
        seen.add(module.name)
        parts = module.name.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            path = module_path(parent, search)
            if path is not None:
                todo.append(Module(parent, path))
        for name in imported_names(module):
            path = module_path(name, search)
            if path is not None:
                todo.append(Module(name, path))
            elif name.split(".")[0] not in sys.stdlib_module_names and module_path(name.split(".")[0], search) is None:
                found.setdefault(name, set()).add(module.name)
    return found


@cache
def module_owners() -> dict[str, frozenset[NormalizedName]]:
    """Which installed distributions ship each importable module (from their RECORD files)."""
    owners: dict[str, set[NormalizedName]] = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            parts = file.parts
            if not parts or parts[0].endswith((".dist-info", ".data")) or ".." in parts:
                continue
            if file.suffix == ".py":
                module = [*parts[:-1], file.stem]
            elif file.suffix in (".so", ".pyd"):
                module = [*parts[:-1], file.name.split(".")[0]]
            else:
                continue
            if module[-1] == "__init__":
                module.pop()
            owners.setdefault(".".join(module), set()).add(name)
    return {module: frozenset(names) for module, names in owners.items()}


def owner(import_name: str) -> frozenset[NormalizedName]:
    parts = import_name.split(".")
    for i in range(len(parts), 0, -1):
        found = module_owners().get(".".join(parts[:i]))
        if found:
            return found
    return frozenset()


def distributions_imported(roots: Iterable[Module], search: tuple[Path, ...]) -> dict[NormalizedName, set[str]]:
    """The distributions whose modules `roots` import, each with the first-party modules importing it."""
    used: dict[NormalizedName, set[str]] = {}
    for name, importers in third_party_imports(roots, search).items():
        owners = owner(name)
        assert owners, f"{name} (imported by {sorted(importers)}) is not installed: which extra provides it?"
        for dist in owners:
            used.setdefault(dist, set()).update(importers)
    return used


def modules_under(root: Path, base: Path) -> list[Module]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append(Module(".".join(parts), path))
    return found


def assert_provided(extra: str, roots: list[Module], search: tuple[Path, ...], exact: bool) -> None:
    used = distributions_imported(roots, search)
    have = provided(extra)
    missing = {dist: sorted(importers) for dist, importers in used.items() if dist not in have}
    assert not missing, f"imported but not in the {extra!r} extra of pyproject.toml: {missing}"
    if exact:
        unused = have - set(used) - LOADED_BY_OTHERS.get(extra, set())
        assert not unused, f"in the {extra!r} extra but imported by none of its modules: {sorted(unused)}"


#: The client's old name: a module of hubbub that re-exports hubbub_client.
OLD_CLIENT = Module("hubbub.client", SERVICE / "hubbub" / "client.py")


def test_client_imports_only_what_the_client_extra_provides() -> None:
    """hubbub_client, and hubbub.client which re-exports it."""
    roots = [*modules_under(SERVICE / "hubbub_client", SERVICE), OLD_CLIENT]
    assert any(m.name == "hubbub_client" for m in roots)
    assert_provided("client", roots, (SERVICE,), exact=True)


def test_server_imports_only_what_the_server_extra_provides() -> None:
    """Every module of hubbub but the client's old name and hubbub.monitoring (generators run from a
    checkout, not by the service): `hubbub serve`, check-config, token, config-doc. A server module
    importing hubbub.monitoring would bring its imports along, and fail here."""
    client, monitoring = OLD_CLIENT.path, SERVICE / "hubbub" / "monitoring"
    roots = [
        m
        for m in modules_under(SERVICE / "hubbub", SERVICE)
        if not m.path.is_relative_to(client) and not m.path.is_relative_to(monitoring)
    ]
    assert any(m.name == "hubbub.cli" for m in roots)
    assert_provided("server", roots, (SERVICE,), exact=True)


def test_monitoring_imports_only_what_the_dev_extra_provides() -> None:
    """`python -m hubbub.monitoring` (the dashboards' generator) runs with the dev profile."""
    roots = modules_under(SERVICE / "hubbub" / "monitoring", SERVICE)
    assert any(m.name == "hubbub.monitoring.dashboards" for m in roots)
    assert_provided("dev", roots, (SERVICE,), exact=False)


@pytest.mark.parametrize("module", ["hubbub.monitoring.alerts", "hubbub.monitoring.catalog"])
def test_alert_rules_and_catalog_need_only_the_standard_library(module: str) -> None:
    """An operator renders the rules (and a test reads the dashboards' queries) without the SDK."""
    path = module_path(module, (SERVICE,))
    assert path is not None
    imported = third_party_imports([Module(module, path)], (SERVICE,))
    assert not imported, f"{module} imports beyond the standard library: {sorted(imported)}"


def test_operator_imports_only_what_the_operator_extra_provides() -> None:
    """hubbub_operator with the hubbub modules it takes (settings, the alert rules, the catalog)."""
    roots = modules_under(OPERATOR / "hubbub_operator", OPERATOR)
    assert any(m.name == "hubbub_operator.plan" for m in roots)
    assert_provided("operator", roots, (OPERATOR, SERVICE), exact=True)


def test_bench_imports_only_what_the_bench_extra_provides() -> None:
    assert_provided("bench", modules_under(BENCH, BENCH), (BENCH, SERVICE, OPERATOR), exact=False)


def test_tests_import_only_what_the_dev_extra_provides() -> None:
    assert_provided("dev", modules_under(ROOT / "tests", ROOT), (ROOT, SERVICE, OPERATOR), exact=False)
