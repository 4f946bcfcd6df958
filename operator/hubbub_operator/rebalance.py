"""Rebalancing after a scale-out: new pods start empty while the old ones keep their long-lived
WebSocket connections, so the operator asks the most loaded pods to shed their excess.

Three layers, outermost last:

- `plan_sheds(counts, tolerance)`: pure. Per-pod connection counts of the Ready pods → how many each
  pod sheds: nothing when every pod is within `tolerance` percent of the mean (or fewer than 2 pods),
  else each pod above the mean sheds down to it.
- `Rebalancer`: reads every pod's count and posts the sheds through `PodAPI` (a small Protocol;
  `HttpPods` is the real one: httpx to the pod's own address, `GET /api/info`, `POST /api/shed`, with
  the service's API key). A pod that does not answer makes it plan nothing this time.
- `Rebalancing`: what the reconciler calls. Only when the Deployment is fully rolled out and every
  one of its pods is Ready (`ready_pods`), at most once per cooldown (the shed period plus the
  clients' reconnect delay) or at once when the ready replicas grew; it says what it did in an Event
  and never raises (an unreachable pod is a Warning, and the next reconcile tries again).

Shed connections are closed with 1012 (reason `rebalancing`) by the pod over `period` seconds; their
clients reconnect through the Service after a random delay (up to 5 s with the project's clients)
and recover from their offsets, so nothing is lost. The Service may send a client back to the pod
that shed it (kube-proxy picks at random): the excess then shrinks geometrically over a few rounds
rather than in one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import httpx

from hubbub_operator import config
from hubbub_operator.kube import Kube, KubeError
from hubbub_operator.plan import api_key_ref
from hubbub_operator.resource import Instance

#: Seconds a shed's clients may wait before reconnecting (the clients' `drain_jitter`, 5 s) plus a
#: margin for their reconnects to land: counts read sooner would still miss them.
RECONNECT_MARGIN: Final = 10.0
#: Seconds between two looks at a balanced (or not yet rolled out) resource; a scale-out looks at once.
CHECK_INTERVAL: Final = 30.0
#: Seconds a count stays in the status without a newer one (two looks, and a shed's cooldown).
COUNT_FRESHNESS: Final = 2 * CHECK_INTERVAL + 30.0
#: Seconds an HTTP call to a pod may take.
POD_TIMEOUT: Final = 5.0
#: The Event reasons.
REBALANCED: Final = "Rebalanced"
REBALANCE_FAILED: Final = "RebalanceFailed"

Notify = Callable[[Mapping[str, Any], str, str, str], None]

log = logging.getLogger("hubbub_operator.rebalance")


def plan_sheds(counts: Mapping[str, int], tolerance: float) -> dict[str, int]:
    """Pod name → connections it should shed (only pods that shed appear).

    Balanced, and nothing to do, when every pod is within `tolerance` percent of the mean (and
    within at least one connection of it), or when there are fewer than 2 pods. Otherwise each pod
    above the mean (rounded up) sheds down to it; the pods below receive what reconnects.
    """
    if len(counts) < 2:
        return {}
    mean = sum(counts.values()) / len(counts)
    allowed = max(1.0, mean * tolerance / 100)
    if all(abs(count - mean) <= allowed for count in counts.values()):
        return {}
    target = math.ceil(mean)
    return {pod: count - target for pod, count in sorted(counts.items()) if count > target}


@dataclass(frozen=True, slots=True)
class Pod:
    """A hubbub pod: its name (the node's name, HUBBUB_NODE_NAME) and where its HTTP API listens."""

    name: str
    #: `host:port` (the pod IP and the container port).
    address: str


class PodUnreachable(Exception):
    """A pod did not answer, or answered with an error; the message says which and why."""


class PodAPI(Protocol):
    async def connections(self, pod: Pod) -> int: ...

    async def shed(self, pod: Pod, connections: int, period: float) -> int: ...


class HttpPods:
    """`PodAPI` over HTTP to each pod directly (not through the Service: a shed is one pod's)."""

    def __init__(self, api_key: str, *, timeout: float = POD_TIMEOUT) -> None:
        self._client = httpx.AsyncClient(headers={"authorization": f"Bearer {api_key}"}, timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, pod: Pod, method: str, path: str, body: object = None) -> Any:
        try:
            response = await self._client.request(method, f"http://{pod.address}{path}", json=body)
        except httpx.HTTPError as exc:
            raise PodUnreachable(f"pod {pod.name} ({pod.address}): {type(exc).__name__} {exc}".strip()) from exc
        if response.status_code != 200:
            try:
                reason = response.json()["error"]["reason"]
            except (ValueError, KeyError, TypeError):
                reason = response.text[:200]
            raise PodUnreachable(f"pod {pod.name}: {method} {path} answered {response.status_code}: {reason}")
        return response.json()

    async def connections(self, pod: Pod) -> int:
        nodes = (await self._call(pod, "GET", "/api/info")).get("nodes") or []
        for node in nodes:
            if node.get("name") == pod.name and isinstance(node.get("connections"), int):
                return int(node["connections"])
        raise PodUnreachable(f"pod {pod.name}: its /api/info has no node named {pod.name}")

    async def shed(self, pod: Pod, connections: int, period: float) -> int:
        answer = await self._call(pod, "POST", "/api/shed", {"connections": connections, "period": period})
        return int(answer["shedding"])


@dataclass
class Report:
    """One look at the pods: their counts, what was asked of whom, and what failed."""

    counts: dict[str, int] = field(default_factory=dict)
    #: Pod → connections it said it will shed.
    asked: dict[str, int] = field(default_factory=dict)
    #: Pod → why it could not be counted or asked.
    failed: dict[str, str] = field(default_factory=dict)
    period: float = 0.0

    def summary(self) -> str:
        counts = ", ".join(f"{pod} {count}" for pod, count in sorted(self.counts.items()))
        return f"connections per pod: {counts}"

    def message(self) -> str:
        parts = []
        if self.asked:
            sheds = ", ".join(f"{pod} to shed {n}" for pod, n in sorted(self.asked.items()))
            parts.append(f"asked {sheds} connections over {self.period:g} s ({self.summary()})")
        if self.failed:
            parts.append("could not rebalance: " + "; ".join(why for _, why in sorted(self.failed.items())))
        return "; ".join(parts)


class Rebalancer:
    """Counts each pod's connections, plans, and asks the loaded pods to shed."""

    def __init__(self, api: PodAPI, *, tolerance: float, period: float) -> None:
        self.api = api
        self.tolerance = tolerance
        self.period = period

    async def rebalance(self, pods: Sequence[Pod], *, shed: bool = True) -> Report:
        """Count every pod's connections and, with `shed`, ask the loaded ones to shed."""
        report = Report(period=self.period)
        counted = await asyncio.gather(*(self.api.connections(pod) for pod in pods), return_exceptions=True)
        for pod, result in zip(pods, counted, strict=True):
            if isinstance(result, PodUnreachable):
                report.failed[pod.name] = str(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                report.counts[pod.name] = result
        if report.failed or not shed:
            # A pod that cannot be counted may be the loaded one or the empty one: plan nothing.
            return report
        sheds = plan_sheds(report.counts, self.tolerance)
        by_name = {pod.name: pod for pod in pods}
        asked = await asyncio.gather(
            *(self.api.shed(by_name[name], count, self.period) for name, count in sheds.items()),
            return_exceptions=True,
        )
        for name, result in zip(sheds, asked, strict=True):
            if isinstance(result, PodUnreachable):
                report.failed[name] = str(result)
            elif isinstance(result, BaseException):
                raise result
            elif result > 0:
                report.asked[name] = result
        return report


def ready_pods(deployment: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]], port: int) -> list[Pod] | str:
    """The Deployment's pods when it is fully rolled out and every pod is Ready, else why not.

    Rolled out: the controller has seen the latest spec, and every replica is updated, ready and the
    only one (no old pod still terminating or starting). A shed while pods come and go would send
    clients to a pod about to leave, or count one that is not serving yet.
    """
    if not deployment:
        return "the Deployment does not exist yet"
    meta, spec, status = deployment.get("metadata") or {}, deployment.get("spec") or {}, deployment.get("status") or {}
    replicas = spec.get("replicas")
    desired = 1 if replicas is None else int(replicas)  # the API's default
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return "the Deployment's latest spec is not rolled out yet"
    figures = [int(status.get(k) or 0) for k in ("replicas", "updatedReplicas", "readyReplicas")]
    if figures != [desired] * 3:
        return f"the Deployment is rolling out ({figures[2]} of {desired} pods ready)"
    found: list[Pod] = []
    for pod in pods:
        pod_meta, pod_status = pod.get("metadata") or {}, pod.get("status") or {}
        if pod_meta.get("deletionTimestamp"):
            return f"pod {pod_meta.get('name')} is terminating"
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in pod_status.get("conditions") or ())
        ip = pod_status.get("podIP")
        if not ready or not ip:
            return f"pod {pod_meta.get('name')} is not ready"
        host = f"[{ip}]" if ":" in ip else ip
        found.append(Pod(str(pod_meta["name"]), f"{host}:{port}"))
    if len(found) != desired:
        return f"{len(found)} pods found for {desired} replicas"
    return sorted(found, key=lambda p: p.name)


#: Makes the PodAPI of one look, from the service's API key (HttpPods; a test hands in a fake).
PodAPIFactory = Callable[[str], PodAPI]


@dataclass
class _State:
    #: No look before: the last shed's period and its clients' reconnects are not over.
    cooldown_until: float = 0.0
    #: The next periodic look.
    next_check: float = 0.0
    #: The Deployment's ready replicas last seen, and whether they grew since the last look.
    ready: int = 0
    scaled_out: bool = False
    last_warning: str = ""
    #: Open connections over all pods at the last look that counted every pod, and when.
    connections: int | None = None
    counted_at: float = 0.0


class Rebalancing:
    """The reconciler's rebalancing step, with each resource's cooldown (in this process's memory:
    after an operator restart the first look may come early, which is harmless)."""

    def __init__(
        self,
        pods: PodAPIFactory | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        port: int = config.PORT,
        enabled: bool = True,
    ) -> None:
        #: False (`--no-rebalance`): never look, whatever the resources say.
        self.enabled = enabled
        self._pods = pods
        self._clock = clock
        self._port = port
        self._state: dict[str, _State] = {}

    def forget(self, uid: str) -> None:
        self._state.pop(uid, None)

    def connections(self, uid: str) -> int | None:
        """Open connections over the resource's pods as last counted (status.connections, the
        CONNECTIONS column), or None when no look has counted them lately (a rollout, a pod down)."""
        state = self._state.get(uid)
        if state is None or state.connections is None or self._clock() - state.counted_at > COUNT_FRESHNESS:
            return None
        return state.connections

    async def check(self, kube: Kube, resource: Mapping[str, Any], notify: Notify) -> Report | None:
        """Look at one resource's pods and rebalance them if due; None when it did not look. Never raises."""
        instance = Instance.from_object(dict(resource))
        settings = instance.section("rebalance")
        if not self.enabled:
            self.forget(instance.uid)
            return None
        # Switched off in the spec, the look still counts the connections (the status shows them).
        sheds = bool(settings["enabled"])
        state = self._state.setdefault(instance.uid, _State())
        try:
            deployment = await kube.get("apps/v1", "Deployment", instance.namespace, instance.name)
            ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
            if ready > state.ready:
                state.scaled_out = True  # look as soon as the rollout is over (and no shed cools down)
            state.ready = ready
            now = self._clock()
            if now < state.cooldown_until or (now < state.next_check and not state.scaled_out):
                return None
            listed = await kube.list("v1", "Pod", instance.namespace, instance.selector("server"))
            pods = ready_pods(deployment, listed, self._port)
            if isinstance(pods, str):
                log.debug("%s/%s: not rebalancing: %s", instance.namespace, instance.name, pods)
                return None  # looked at again at the next reconcile: the rollout's end causes one
            state.scaled_out = False
            state.next_check = now + CHECK_INTERVAL
            if not pods:
                return None
            api_key = await self._api_key(kube, instance)
        except KubeError as exc:
            self._warn(resource, notify, state, f"could not rebalance: {exc}")
            return None
        period = float(settings["period"])
        report = await self._rebalance(api_key, pods, tolerance=float(settings["tolerance"]), period=period, shed=sheds)
        if len(report.counts) == len(pods):
            state.connections, state.counted_at = sum(report.counts.values()), now
        if report.asked:
            notify(resource, "Normal", REBALANCED, report.message())
            # The counts move until the shed is over and its clients have reconnected: no look before,
            # and the next look right after (a random Service spreads the reconnects back onto the
            # shedding pods too, so balance takes a few rounds: they should not wait CHECK_INTERVAL).
            state.cooldown_until = now + period + RECONNECT_MARGIN
            state.next_check = state.cooldown_until
        if report.failed:
            self._warn(resource, notify, state, report.message())
        else:
            state.last_warning = ""
        return report

    async def _rebalance(
        self, api_key: str, pods: Sequence[Pod], *, tolerance: float, period: float, shed: bool
    ) -> Report:
        if self._pods is not None:
            return await Rebalancer(self._pods(api_key), tolerance=tolerance, period=period).rebalance(pods, shed=shed)
        http = HttpPods(api_key)
        try:
            return await Rebalancer(http, tolerance=tolerance, period=period).rebalance(pods, shed=shed)
        finally:
            await http.aclose()

    async def _api_key(self, kube: Kube, instance: Instance) -> str:
        ref = instance.section("auth").get("apiKeySecretRef") or api_key_ref(instance)
        data = await kube.secret_data(instance.namespace, ref["name"])
        key = (data or {}).get(ref.get("key", "api-key"))
        if not key:
            raise KubeError(f"the API key (Secret {ref['name']!r}, key {ref.get('key', 'api-key')!r}) is not there")
        return key

    def _warn(self, resource: Mapping[str, Any], notify: Notify, state: _State, message: str) -> None:
        """A Warning Event, once per distinct message (a pod down for an hour is one Event, not 120)."""
        if message != state.last_warning:
            notify(resource, "Warning", REBALANCE_FAILED, message)
            state.last_warning = message
        else:
            log.info("%s", message)
