"""The operator's rebalancing without a cluster: the pure planner, the rollout check, the Rebalancer over a
fake PodAPI, and the reconciler's step (cooldown, scale-out, events) over the in-memory Kube."""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from typing import Any

import pytest

from hubbub_operator.kube import encoded
from hubbub_operator.rebalance import (
    CHECK_INTERVAL,
    COUNT_FRESHNESS,
    RECONNECT_MARGIN,
    Pod,
    PodUnreachable,
    Rebalancer,
    Rebalancing,
    plan_sheds,
    ready_pods,
)
from hubbub_operator.reconcile import Reconciler
from hubbub_operator.resource import Instance
from tests.inprocess.test_operator_runtime import FakeKube, jwt_secret, minimal

# -- the planner ------------------------------------------------------------------------------------


def test_pods_within_tolerance_shed_nothing() -> None:
    assert plan_sheds({"a": 110, "b": 90}, tolerance=20) == {}
    assert plan_sheds({"a": 0, "b": 0, "c": 0}, tolerance=0) == {}
    assert plan_sheds({"a": 3, "b": 1}, tolerance=0) == {}  # one connection either side of the mean is fine


def test_fewer_than_two_pods_shed_nothing() -> None:
    assert plan_sheds({}, tolerance=20) == {}
    assert plan_sheds({"a": 500}, tolerance=20) == {}


def test_a_new_empty_pod_makes_the_loaded_ones_shed_down_to_the_mean() -> None:
    assert plan_sheds({"a": 100, "b": 0}, tolerance=20) == {"a": 50}
    assert plan_sheds({"a": 300, "b": 300, "c": 0, "d": 0}, tolerance=10) == {"a": 150, "b": 150}
    # Ten loaded pods and one new one: each old pod is within 10 % of the mean, the new one is not.
    counts = {f"old{i}": 100 for i in range(10)} | {"new": 0}
    assert plan_sheds(counts, tolerance=20) == {f"old{i}": 9 for i in range(10)}


def test_only_pods_above_the_mean_shed_and_the_mean_rounds_up() -> None:
    assert plan_sheds({"a": 41, "b": 40, "c": 0}, tolerance=20) == {"a": 14, "b": 13}  # mean 27, target 27


# -- the rollout check ------------------------------------------------------------------------------


def deployment(replicas: int = 2, *, ready: int | None = None, updated: int | None = None) -> dict[str, Any]:
    ready = replicas if ready is None else ready
    return {
        "metadata": {"name": "chat", "generation": 3},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 3,
            "replicas": replicas,
            "updatedReplicas": replicas if updated is None else updated,
            "readyReplicas": ready,
        },
    }


def pod(
    name: str, ip: str = "10.0.0.1", *, ready: bool = True, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "labels": dict(labels or {})},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_rolled_out_pods_are_addressed_by_ip_and_the_service_port() -> None:
    found = ready_pods(deployment(), [pod("chat-b", "10.0.0.2"), pod("chat-a", "fd00::1")], 8000)
    assert found == [Pod("chat-a", "[fd00::1]:8000"), Pod("chat-b", "10.0.0.2:8000")]


@pytest.mark.parametrize(
    ("the_deployment", "pods", "why"),
    [
        (None, [], "the Deployment does not exist yet"),
        (deployment(3, ready=2), [pod("a"), pod("b")], "the Deployment is rolling out (2 of 3 pods ready)"),
        (deployment(2, updated=1), [pod("a"), pod("b")], "the Deployment is rolling out (2 of 2 pods ready)"),
        (deployment(2), [pod("a"), pod("b", ready=False)], "pod b is not ready"),
        (deployment(2), [pod("a")], "1 pods found for 2 replicas"),
    ],
)
def test_nothing_is_rebalanced_while_pods_come_and_go(
    the_deployment: dict[str, Any] | None, pods: list[dict[str, Any]], why: str
) -> None:
    assert ready_pods(the_deployment, pods, 8000) == why


def test_a_spec_not_yet_observed_or_a_terminating_pod_is_not_rolled_out() -> None:
    stale = deployment()
    stale["metadata"]["generation"] = 4
    assert ready_pods(stale, [pod("a"), pod("b")], 8000) == "the Deployment's latest spec is not rolled out yet"
    leaving = pod("b")
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert ready_pods(deployment(), [pod("a"), leaving], 8000) == "pod b is terminating"


# -- the Rebalancer over a fake PodAPI --------------------------------------------------------------


class FakePods:
    """Pods' connection counts in a dict; a shed moves them at once. `down` pods raise PodUnreachable."""

    def __init__(self, counts: dict[str, int], *, down: tuple[str, ...] = (), refuse: tuple[str, ...] = ()) -> None:
        self.counts = counts
        self.down = set(down)
        self.refuse = set(refuse)
        self.sheds: list[tuple[str, int, float]] = []
        self.keys: list[str] = []

    def __call__(self, api_key: str) -> FakePods:
        self.keys.append(api_key)
        return self

    async def connections(self, pod: Pod) -> int:
        if pod.name in self.down:
            raise PodUnreachable(f"pod {pod.name} ({pod.address}): ConnectTimeout")
        return self.counts[pod.name]

    async def shed(self, pod: Pod, connections: int, period: float) -> int:
        if pod.name in self.refuse:
            raise PodUnreachable(f"pod {pod.name}: POST /api/shed answered 409: the node is draining")
        self.sheds.append((pod.name, connections, period))
        return min(connections, self.counts[pod.name])


PODS = [Pod("a", "10.0.0.1:8000"), Pod("b", "10.0.0.2:8000"), Pod("c", "10.0.0.3:8000")]


async def test_the_rebalancer_asks_the_loaded_pods_to_shed_over_the_period() -> None:
    pods = FakePods({"a": 90, "b": 30, "c": 0})
    report = await Rebalancer(pods, tolerance=20, period=10).rebalance(PODS)
    assert pods.sheds == [("a", 50, 10)]
    assert report.asked == {"a": 50} and not report.failed
    assert report.message() == "asked a to shed 50 connections over 10 s (connections per pod: a 90, b 30, c 0)"


async def test_a_pod_that_cannot_be_counted_makes_the_rebalancer_ask_nothing() -> None:
    pods = FakePods({"a": 90, "b": 30, "c": 0}, down=("c",))
    report = await Rebalancer(pods, tolerance=20, period=10).rebalance(PODS)
    assert pods.sheds == [] and report.asked == {}
    assert report.message() == "could not rebalance: pod c (10.0.0.3:8000): ConnectTimeout"


async def test_a_pod_that_refuses_to_shed_is_reported_and_the_others_still_shed() -> None:
    pods = FakePods({"a": 90, "b": 90, "c": 0}, refuse=("a",))
    report = await Rebalancer(pods, tolerance=20, period=5).rebalance(PODS)
    assert report.asked == {"b": 30} and list(report.failed) == ["a"]
    assert "asked b to shed 30 connections over 5 s" in report.message()
    assert "pod a: POST /api/shed answered 409" in report.message()


# -- the reconciler's step ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


events: list[tuple[str, str, str]] = []


def notify(resource: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    events.append((type_, reason, message))


@pytest.fixture(autouse=True)
def _clear_events() -> None:
    events.clear()


def running(kube: FakeKube, replicas: int, *, spec: dict[str, Any] | None = None) -> None:
    """The minimal example, reconciled once, with its Deployment rolled out to `replicas` Ready pods."""
    resource = minimal(kube)
    if spec:
        resource["spec"] = {**resource["spec"], **spec}
    jwt_secret(kube)
    scale(kube, replicas)


def scale(kube: FakeKube, replicas: int) -> None:
    resource = kube.objects[("hubbub.dev/v1alpha1", "RealtimeService", "ns", "chat")]
    labels = Instance.from_object(copy.deepcopy(resource)).selector("server")
    key = ("apps/v1", "Deployment", "ns", "chat")
    existing = kube.objects.get(key) or {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chat"}}
    rolled = deployment(replicas)
    existing.update(spec={**(existing.get("spec") or {}), **rolled["spec"]}, status=rolled["status"])
    existing["metadata"].update(namespace="ns", generation=3)
    kube.objects[key] = existing
    for k in [k for k in kube.objects if k[1] == "Pod"]:
        del kube.objects[k]
    for i in range(replicas):
        kube.put({**pod(f"chat-{i}", f"10.0.0.{i + 1}", labels=labels), "apiVersion": "v1", "kind": "Pod"})


def api_key(kube: FakeKube) -> str:
    found = kube.objects[("v1", "Secret", "ns", "chat-api-key")]
    return base64.b64decode(encoded(found)["data"]["api-key"]).decode()


async def test_after_a_scale_out_the_reconciler_rebalances_with_an_event_then_cools_down() -> None:
    kube, clock = FakeKube(), Clock()
    pods = FakePods({"chat-0": 80, "chat-1": 0})
    reconciler = Reconciler(kube, notify, rebalancing=Rebalancing(pods, clock=clock))
    running(kube, 2)
    await reconciler.request("ns", "chat")
    assert pods.sheds == [("chat-0", 40, 10.0)]
    assert pods.keys == [api_key(kube)]  # the generated key the pods read
    assert (
        "Normal",
        "Rebalanced",
        "asked chat-0 to shed 40 connections over 10 s (connections per pod: chat-0 80, chat-1 0)",
    ) in events

    # Within the shed's period and the reconnects' margin, nothing, even after a scale-out.
    scale(kube, 3)
    pods.counts = {"chat-0": 60, "chat-1": 20, "chat-2": 0}
    clock.now += 10 + RECONNECT_MARGIN - 1
    await reconciler.request("ns", "chat")
    assert len(pods.sheds) == 1
    # Then the scale-out seen meanwhile is looked at, without waiting for the periodic look.
    clock.now += 1
    await reconciler.request("ns", "chat")
    assert pods.sheds[1:] == [("chat-0", 33, 10.0)]


async def test_the_next_round_after_a_shed_comes_when_its_cooldown_ends_not_a_periodic_look_later() -> None:
    # Shed clients reconnect through a Service that picks pods at random, some back onto the pod that
    # shed them: balance takes a few rounds, and each should follow the last as soon as it is over.
    kube, clock = FakeKube(), Clock()
    pods = FakePods({"chat-0": 30, "chat-1": 30, "chat-2": 0, "chat-3": 0})
    reconciler = Reconciler(kube, notify, rebalancing=Rebalancing(pods, clock=clock))
    running(kube, 4, spec={"replicas": {"min": 4, "max": 10}})
    await reconciler.request("ns", "chat")
    assert pods.sheds == [("chat-0", 15, 10.0), ("chat-1", 15, 10.0)]
    pods.counts = {"chat-0": 22, "chat-1": 23, "chat-2": 8, "chat-3": 7}
    clock.now += 10 + RECONNECT_MARGIN
    assert 10 + RECONNECT_MARGIN < CHECK_INTERVAL
    await reconciler.request("ns", "chat")
    assert pods.sheds[2:] == [("chat-0", 7, 10.0), ("chat-1", 8, 10.0)]


async def test_balanced_pods_are_looked_at_periodically_and_left_alone() -> None:
    kube, clock = FakeKube(), Clock()
    pods = FakePods({"chat-0": 50, "chat-1": 45})
    reconciler = Reconciler(kube, notify, rebalancing=Rebalancing(pods, clock=clock))
    running(kube, 2)
    await reconciler.request("ns", "chat")
    await reconciler.request("ns", "chat")  # too soon: not even counted
    assert len(pods.keys) == 1 and pods.sheds == []
    pods.counts = {"chat-0": 95, "chat-1": 0}  # clients came back to one pod
    clock.now += CHECK_INTERVAL
    await reconciler.request("ns", "chat")
    assert pods.sheds == [("chat-0", 47, 10.0)]  # mean 47.5, rounded up
    assert not [e for e in events if e[1] == "RebalanceFailed"]


async def test_a_rollout_in_progress_is_not_rebalanced() -> None:
    kube, clock = FakeKube(), Clock()
    pods = FakePods({"chat-0": 80, "chat-1": 0})
    reconciler = Reconciler(kube, notify, rebalancing=Rebalancing(pods, clock=clock))
    running(kube, 2)
    kube.objects[("apps/v1", "Deployment", "ns", "chat")]["status"]["readyReplicas"] = 1
    await reconciler.request("ns", "chat")
    assert pods.keys == []
    kube.objects[("apps/v1", "Deployment", "ns", "chat")]["status"]["readyReplicas"] = 2
    await reconciler.request("ns", "chat")  # the rollout's end: at once
    assert pods.sheds == [("chat-0", 40, 10.0)]


async def test_rebalancing_switched_off_sheds_nothing_but_still_counts_the_connections() -> None:
    kube, clock = FakeKube(), Clock()
    pods = FakePods({"chat-0": 80, "chat-1": 0})
    reconciler = Reconciler(kube, notify, rebalancing=Rebalancing(pods, clock=clock))
    running(kube, 2, spec={"rebalance": {"enabled": False}})
    await reconciler.request("ns", "chat")
    assert pods.sheds == [] and not [e for e in events if e[1].startswith("Rebalance")]
    outcome = await reconciler.request("ns", "chat")
    assert outcome is not None and outcome.status["connections"] == 80


async def test_the_status_shows_the_connections_last_counted_and_drops_a_stale_count() -> None:
    kube, clock = FakeKube(), Clock()
    pods = FakePods({"chat-0": 30, "chat-1": 32})
    reconciler = Reconciler(kube, notify, rebalancing=Rebalancing(pods, clock=clock))
    running(kube, 2)
    first = await reconciler.request("ns", "chat")
    # The look comes last in a reconcile: the count is in the status from the next one on.
    assert first is not None and "connections" not in first.status
    second = await reconciler.request("ns", "chat")
    assert second is not None and second.status["connections"] == 62
    # A pod down: no count is fresh for long, and a stale one is not shown as current.
    pods.down = {"chat-1"}
    clock.now += COUNT_FRESHNESS + 1
    third = await reconciler.request("ns", "chat")
    assert third is not None and third.status["connections"] is None  # removed by the merge patch
    stored = kube.objects[("hubbub.dev/v1alpha1", "RealtimeService", "ns", "chat")]
    assert "connections" not in stored["status"]


async def test_an_unreachable_pod_is_one_warning_and_is_retried_without_crashing() -> None:
    kube, clock = FakeKube(), Clock()
    pods = FakePods({"chat-0": 80, "chat-1": 0}, down=("chat-1",))
    reconciler = Reconciler(kube, notify, rebalancing=Rebalancing(pods, clock=clock))
    running(kube, 2)
    outcome = await reconciler.request("ns", "chat")
    assert outcome is not None and not outcome.errors
    warning = ("Warning", "RebalanceFailed", "could not rebalance: pod chat-1 (10.0.0.2:8000): ConnectTimeout")
    assert warning in events
    clock.now += CHECK_INTERVAL
    await reconciler.request("ns", "chat")
    assert events.count(warning) == 1 and pods.sheds == []  # the same trouble: not a second event
    pods.down.clear()
    clock.now += CHECK_INTERVAL
    await reconciler.request("ns", "chat")
    assert pods.sheds == [("chat-0", 40, 10.0)]
