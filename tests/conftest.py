from __future__ import annotations

import gc
import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.server import ServerProcess, server_config
from tests.support.wsclient import RawClient

ServerFactory = Callable[..., ServerProcess]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tier (marker `exhaustive`, docs/development.md) is left out of every run, CI's included,
    unless asked for: by a marker expression naming it (`-m exhaustive`) or by the test's node id."""
    if "exhaustive" in (config.getoption("markexpr") or ""):
        return
    named = [arg for arg in config.args if "::" in arg]
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        asked = any(item.nodeid == arg or item.nodeid.startswith(arg + "[") for arg in named)
        (left_out if item.get_closest_marker("exhaustive") and not asked else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


def pytest_collection_finish(session: pytest.Session) -> None:
    """What the imports and the collection made lives as long as the run: frozen (`gc.freeze`), the
    collection after each test below scans only what tests made since, in a few milliseconds instead of
    tens (the imported modules alone are hundreds of thousands of objects)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _leaks_are_reported_by_the_test_that_made_them(request: pytest.FixtureRequest) -> Iterator[None]:
    """A socket or transport left open is only noticed when the garbage collector frees it, which may be
    in any later test or at the very end of the run (a warning, which fails the run). Collecting after
    each test that ran an event loop makes the test that leaked it fail, with the leak in its report.
    Torn down last, after the test's event loop is closed."""
    yield
    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        gc.collect()


@pytest.fixture(autouse=True)
async def _no_raw_client_outlives_its_test() -> AsyncIterator[None]:
    yield
    await RawClient.close_leftovers()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One shared server in production mode with the test namespaces (see tests/support/server.py)."""
    proc = ServerProcess(tmp_path_factory.mktemp("server")).start()
    yield proc
    proc.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start dedicated servers with config overrides; all are stopped after the test."""
    started: list[ServerProcess] = []

    def start(**overrides: Any) -> ServerProcess:
        proc = ServerProcess(tmp_path, server_config(**overrides)).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture(scope="session")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real control plane (etcd, apiserver, controller-manager, scheduler, kwok, metrics adapter)."""
    cluster = Cluster(tmp_path_factory.mktemp("k8s")).start()
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    yield cluster
    cluster.stop()
