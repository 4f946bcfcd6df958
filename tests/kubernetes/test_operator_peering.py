"""High availability: two operators share kopf's peering object; one works, the other stands by and
takes over when the first stops. Real operator processes as their ServiceAccount (the shipped RBAC),
the peering CRDs and object from hubbub_operator/deploy/peering.yaml, the project's control plane."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubbub_operator import MANAGER, crd, deploy
from hubbub_operator.workload import CHECKSUM_ANNOTATION
from tests.kubernetes.test_operator import DEADLINE, JWT_SECRET, condition, example, rts, secret
from tests.support.cluster import Cluster
from tests.support.operator_process import Operator, running_operator
from tests.support.polling import wait_until

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

RESUMED = "Resuming operations after the pause"
HANDLED = "Handler 'child-Deployment' succeeded"


@pytest.fixture
def peering(k8s: Cluster) -> Iterator[None]:
    """The shipped peering CRDs and object; removed afterwards, so that the other tests' operators
    (which join a peering object when there is one) run standalone again."""
    objects = deploy.peering()
    k8s.apply(crd.crd(), manager=MANAGER, force=True)
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": deploy.NAMESPACE}})
    for obj in deploy.cluster_rbac():
        k8s.apply(obj, manager="hubbub-tests", force=True)
    for obj in objects[:2]:
        k8s.apply(obj, manager="hubbub-tests", force=True)

    def established() -> bool:
        names = [o["metadata"]["name"] for o in objects[:2]]
        found = [k8s.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}") or {} for n in names]
        return all(
            any(c["type"] == "Established" and c["status"] == "True" for c in f.get("status", {}).get("conditions", []))
            for f in found
        )

    wait_until(established, timeout=DEADLINE, what="kopf's peering CRDs Established")
    k8s.apply(objects[2], manager="hubbub-tests", force=True)
    yield
    for obj in objects[:2]:
        k8s.api("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{obj['metadata']['name']}")
    for obj in objects[:2]:
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{obj['metadata']['name']}"
        wait_until(lambda path=path: k8s.get(path) is None, timeout=DEADLINE, what=f"{path} deleted")  # type: ignore[misc]


def peers(k8s: Cluster) -> list[str]:
    """The operators keeping an entry alive in the `default` peering object."""
    found = k8s.get("/apis/kopf.dev/v1/clusterkopfpeerings/default") or {}
    return [peer for peer, info in (found.get("status") or {}).items() if info and info.get("lifetime", 0) > 0]


def test_of_two_operators_sharing_a_peering_one_works_and_the_other_takes_over_when_it_stops(
    k8s: Cluster, peering: None, tmp_path: Path
) -> None:
    kubeconfig = k8s.service_account_kubeconfig(deploy.NAMESPACE, deploy.NAME)
    namespace = f"op-{uuid.uuid4().hex[:8]}"
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        # The resource exists before either operator starts: each finds it at start-up, which is when
        # a standby that has not yet seen the peering would act (without --peering, it does).
        secret(k8s, namespace, "chat-jwt", {"jwt-secret": JWT_SECRET})
        k8s.apply(example("minimal", namespace))
        with contextlib.ExitStack() as stack:
            (tmp_path / "a").mkdir()
            (tmp_path / "b").mkdir()
            args = ["--all-namespaces", "--peering=default"]
            first = stack.enter_context(running_operator([*args, "--priority=100"], kubeconfig, tmp_path / "a"))
            standby: Operator = stack.enter_context(
                running_operator([*args, "--priority=10"], kubeconfig, tmp_path / "b")
            )
            wait_until(lambda: condition(rts(k8s, namespace), "Ready").get("status") == "True", timeout=DEADLINE)
            # Both are in the peering (each keeps its entry alive in the object's status); the standby,
            # started paused (--peering), stays so: kopf logs no "pausing" for a pause it began with.
            wait_until(lambda: len(peers(k8s)) == 2, timeout=DEADLINE, what="both operators in the peering")
            assert HANDLED in first.log()
            assert HANDLED not in standby.log(), "the operator standing by reconciled too"

            # The working operator stops (a rolling update of the operator, a node drain): it leaves the
            # peering as it goes, and the other one resumes at once, without waiting for its lease.
            first.proc.terminate()
            first.proc.wait(30)
            wait_until(lambda: RESUMED in standby.log(), timeout=DEADLINE, what="the second operator resuming")

            deployment = f"/apis/apps/v1/namespaces/{namespace}/deployments/chat"
            before = (k8s.get(deployment) or {})["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
            changed = example("minimal", namespace)
            changed["spec"]["settings"]["namespaces"]["chat"]["history_size"] = 50
            k8s.apply(changed)

            def rolled() -> bool:
                found = k8s.get(deployment) or {}
                return bool(found["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION] != before)

            wait_until(rolled, timeout=DEADLINE, what="the change reconciled by the second operator")
            assert HANDLED in standby.log()
    finally:
        k8s.api("DELETE", f"/api/v1/namespaces/{namespace}")
