"""The operator in single-namespace mode (`--namespace NAME`) with the namespaced RBAC it ships
(deploy/rbac-namespaced.yaml: a Role in that namespace and the ClusterRole of cluster-scoped reads,
no cluster-wide binding): it runs the resources of its namespace and leaves the others alone."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator

import pytest

from hubbub_operator import MANAGER, crd, deploy
from tests.kubernetes.test_operator import DEADLINE, JWT_SECRET, example, ready, rts, secret
from tests.support.cluster import Cluster
from tests.support.operator_process import Operator, running_operator
from tests.support.polling import until

pytestmark = [pytest.mark.k8s]


@pytest.fixture(scope="module")
def watched(k8s: Cluster) -> str:
    name = f"only-{uuid.uuid4().hex[:8]}"
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


@pytest.fixture(scope="module")
def namespaced_operator(k8s: Cluster, watched: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    k8s.apply(crd.crd(), manager=MANAGER, force=True)
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": deploy.NAMESPACE}})
    # Only the namespaced variant may apply: the cluster-wide binding (tests/kubernetes/test_operator.py's) goes.
    k8s.api("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{deploy.NAME}")
    for obj in deploy.namespaced_rbac(watched):
        k8s.apply(obj, manager="hubbub-tests", force=True)
    kubeconfig = k8s.service_account_kubeconfig(deploy.NAMESPACE, deploy.NAME)
    workdir = tmp_path_factory.mktemp("namespaced-operator")
    try:
        with running_operator([f"--namespace={watched}"], kubeconfig, workdir) as running:
            yield running
    finally:
        k8s.api("DELETE", f"/api/v1/namespaces/{watched}")


async def test_a_namespaced_operator_runs_its_namespace_and_leaves_the_others_alone(
    k8s: Cluster, watched: str, namespaced_operator: Operator
) -> None:
    other = f"other-{uuid.uuid4().hex[:8]}"
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        for namespace in (other, watched):
            secret(k8s, namespace, "chat-jwt", {"jwt-secret": JWT_SECRET})
            k8s.apply(example("minimal", namespace), manager="hubbub-tests")
        await until(functools.partial(ready, k8s, watched), timeout=DEADLINE, what=f"Ready=True in {watched}")
        # The resync has run over the watched namespace since (its period is 3 s) and never the other.
        assert "status" not in rts(k8s, other)
        assert k8s.get(f"/apis/apps/v1/namespaces/{other}/deployments/chat") is None
        assert namespaced_operator.healthy()
        assert "Traceback" not in namespaced_operator.log(), namespaced_operator.log()[-5000:]
    finally:
        k8s.api("DELETE", f"/api/v1/namespaces/{other}")
