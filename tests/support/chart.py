"""What the tests of rendered manifests share (tests/kubernetes/test_chart.py,
tests/kubernetes/test_skaffold.py, and the CRDs
of tests/kubernetes/test_operator.py): the CRDs they need on the control plane, and the server-side dry run that
every rendered object must pass.

- `crds_installed(k8s)`: our CRD and kopf's peering CRDs (the chart's crds/), and with `ecosystem=True`
  the ecosystem's (scripts/fetch-crds: prometheus-operator, the Gateway API's experimental channel,
  KEDA), all awaited until Established; on exit the kopf and ecosystem CRDs that were not there before
  are deleted again (ours stays: every k8s test expects it).
- `dry_run(k8s, obj)`: the object server-side applied with `dryRun=All`, as `kubectl apply
  --server-side --dry-run=server` sends it: admission, the CRD schemas and their CEL rules run, and
  nothing is stored.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from hubbub_operator import CRD_NAME, MANAGER, crd, deploy
from tests.support.cluster import Cluster, resource_path
from tests.support.polling import until

ROOT = Path(__file__).resolve().parent.parent.parent
KOPF_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
#: Generous: a loaded 2-core machine runs the control plane beside other tests.
DEADLINE = 60.0


def crd_established(k8s: Cluster, name: str) -> bool:
    found = k8s.get(f"{CRD_PATH}/{name}") or {}
    return any(
        c["type"] == "Established" and c["status"] == "True" for c in (found.get("status") or {}).get("conditions", [])
    )


def dry_run(k8s: Cluster, obj: dict[str, Any]) -> None:
    response = k8s.api(
        "PATCH",
        resource_path(obj),
        params={"fieldManager": "helm-dry-run", "force": "true", "dryRun": "All"},
        headers={"Content-Type": "application/apply-patch+yaml"},
        content=json.dumps(obj),
    )
    assert response.status_code < 400, f"{obj['kind']} {obj['metadata']['name']}: {response.text}"


def crds_dir() -> Path:
    """scripts/fetch-crds' directory: HUBBUB_CRDS_DIR (scripts/test exports it), else fetched now."""
    env = os.environ.get("HUBBUB_CRDS_DIR")
    if env:
        return Path(env)
    done = subprocess.run([str(ROOT / "scripts" / "fetch-crds")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


def ecosystem_crds() -> list[dict[str, Any]]:
    """Ours aside, the CRDs the optional children need: the Gateway API's experimental channel (it has
    HTTPRoute's sessionPersistence), the prometheus-operator's and KEDA's."""
    root = crds_dir()
    found = []
    for folder in ("monitoring", "gateway-experimental", "keda"):
        for path in sorted((root / folder).glob("*.yaml")):
            # gateway-api also ships a ValidatingAdmissionPolicy guarding upgrades: CRDs only here.
            docs = yaml.safe_load_all(path.read_text())
            found += [doc for doc in docs if doc and doc.get("kind") == "CustomResourceDefinition"]
    return found


@asynccontextmanager
async def crds_installed(k8s: Cluster, *, ecosystem: bool = False) -> AsyncIterator[None]:
    """Our CRD, kopf's peering CRDs and (`ecosystem`) the ecosystem's, Established; on exit the kopf and
    ecosystem CRDs are removed again unless they were there before."""
    others = [c for c in deploy.peering() if c["kind"] == "CustomResourceDefinition"]
    if ecosystem:
        others += ecosystem_crds()
    paths = [f"{CRD_PATH}/{c['metadata']['name']}" for c in others]
    there_before = {path for path in paths if k8s.get(path) is not None}
    k8s.apply(crd.crd(), manager=MANAGER, force=True)
    for other in others:
        k8s.apply(other, manager=MANAGER, force=True)
    for name in (CRD_NAME, *(c["metadata"]["name"] for c in others)):
        await until(functools.partial(crd_established, k8s, name), timeout=DEADLINE, what=f"{name} Established")
    try:
        yield
    finally:
        added = [path for path in paths if path not in there_before]
        for path in added:
            k8s.api("DELETE", path)
        await until(lambda: all(k8s.get(p) is None for p in added), timeout=DEADLINE, what="the added CRDs deleted")
