from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.server import ServerProcess, server_config

ServerFactory = Callable[..., ServerProcess]


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
