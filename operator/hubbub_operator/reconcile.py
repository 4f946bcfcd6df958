"""One reconcile of one RealtimeService: plan, apply, prune, observe, report.

    outcome = await Reconciler(kube, notify).reconcile(resource)

Level-based: whatever caused it (a create, an edit, a deleted child, the periodic resync), a reconcile
reads the resource and the cluster as they are now and makes the children match `plan()`. Every
child is server-side applied with the field manager `hubbub-operator` (forced: a hand edit of a field
the operator sets is undone); children of this instance that the plan no longer holds are deleted;
the status is written only when it changed. Nothing here raises on a refusal by the API or a spec
that cannot run: the outcome says what is wrong, for the status, the events and the caller's retry.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from hubbub_operator import API_VERSION as _API
from hubbub_operator import MANAGER, conditions, kinds, redis
from hubbub_operator.kube import INITIAL_MANAGER, Kube, KubeError, encoded, owned_by
from hubbub_operator.plan import Plan, api_key_ref, plan
from hubbub_operator.rebalance import Rebalancing
from hubbub_operator.resource import Instance

#: notify(resource, type "Normal" | "Warning", reason, message): a Kubernetes Event on the resource.
Notify = Callable[[Mapping[str, Any], str, str, str], None]
#: The API's refusal to create anything in a namespace being deleted.
TERMINATING: Final = "because it is being terminated"
MANAGED_BY: Final = "app.kubernetes.io/managed-by"
INSTANCE: Final = "app.kubernetes.io/instance"
#: Optional kinds (their CRD may be absent): never listed nor pruned unless served.
_OPTIONAL_API: Final = {
    ("keda.sh/v1alpha1", "ScaledObject"): kinds.SCALED_OBJECT,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): kinds.HTTP_ROUTE,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): kinds.SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): kinds.PROMETHEUS_RULE,
}


@dataclass
class Outcome:
    plan: Plan
    status: dict[str, Any]
    #: What stopped the children from being applied as planned (a missing Secret, a refusal); empty: done.
    errors: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    corrected: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def retry(self) -> bool:
        """Worth trying again soon: the cluster may change (a Secret created), unlike a bad spec."""
        return bool(self.errors)


def key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (obj["kind"], obj["metadata"]["name"])


def secret_references(children: Iterable[Mapping[str, Any]]) -> list[tuple[str, str | None]]:
    """(Secret name, key or None) that the planned pod templates read, in order, without repeats."""
    found: list[tuple[str, str | None]] = []
    for child in children:
        pod = (((child.get("spec") or {}).get("template") or {}).get("spec")) or {}
        for container in [*pod.get("initContainers", ()), *pod.get("containers", ())]:
            for env in container.get("env", ()):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    found.append((ref["name"], ref["key"]))
        for volume in pod.get("volumes", ()):
            secret = volume.get("secret")
            if secret and not secret.get("optional"):
                items = secret.get("items") or [{}]
                found += [(secret["secretName"], item.get("key")) for item in items]
    return list(dict.fromkeys(found))


class Reconciler:
    """Reconciles resources one at a time each; a request while one runs is coalesced into one rerun."""

    def __init__(
        self,
        kube: Kube,
        notify: Notify,
        *,
        clock: Callable[[], datetime] | None = None,
        rebalancing: Rebalancing | None = None,
    ) -> None:
        self.kube = kube
        self.notify = notify
        self.clock = clock or (lambda: datetime.now(UTC))
        #: Asks loaded pods to shed connections after a scale-out (hubbub_operator.rebalance).
        self.rebalancing = rebalancing or Rebalancing()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._waiting: set[tuple[str, str]] = set()
        #: Per resource uid, the children this process has applied (to tell a restore from a create).
        self._applied: dict[str, set[tuple[str, str]]] = {}

    async def request(self, namespace: str, name: str) -> Outcome | None:
        """Reconcile the resource as it is now (read from the API once this resource's previous
        reconcile has ended). A request made while another one already waits is dropped: the waiting
        one reads the newer state anyway. None: dropped, or the resource is gone or being deleted."""
        which = (namespace, name)
        if which in self._waiting:
            return None
        lock = self._locks.setdefault(which, asyncio.Lock())
        self._waiting.add(which)
        try:
            await lock.acquire()
        finally:
            self._waiting.discard(which)
        try:
            resource = await self.kube.get(_API, "RealtimeService", namespace, name)
            if resource is None or resource["metadata"].get("deletionTimestamp"):
                if resource is not None:
                    self.rebalancing.forget(str(resource["metadata"].get("uid", "")))
                return None
            return await self._reconcile(resource)
        finally:
            lock.release()

    async def _reconcile(self, resource: Mapping[str, Any]) -> Outcome:
        instance = Instance.from_object(dict(resource))
        available = await self.kube.available_kinds()
        redis_password, api_key = await self._generated_secrets(instance)
        the_plan = plan(dict(resource), available_kinds=available, redis_password=redis_password, api_key=api_key)
        outcome = Outcome(the_plan, {})
        if not the_plan.problems:
            outcome.errors += await self._missing_secrets(instance, the_plan)
        if not the_plan.problems and not outcome.errors:
            await self._apply(instance, the_plan, available, outcome)
        observed = await self._observe(instance, the_plan, outcome)
        redis_mode = instance.section("redis")["mode"]
        previous = resource.get("status") or {}
        outcome.status = conditions.status(
            previous=previous, plan=the_plan, observed=observed, redis_mode=redis_mode, now=self.clock()
        )
        if _differs(previous, outcome.status):
            try:
                await self.kube.patch_status(instance.namespace, instance.name, outcome.status)
            except KubeError as exc:
                outcome.errors.append(str(exc))
        if any(TERMINATING in error for error in outcome.errors):
            return outcome  # the namespace is being deleted, the resource with it: nothing to tell
        self._announce(resource, previous, outcome)
        if not the_plan.problems and not outcome.errors:
            # Last: the children are as planned; it looks at the pods only when they are all rolled out.
            await self.rebalancing.check(self.kube, resource, self.notify)
        return outcome

    # -- the steps ---------------------------------------------------------------------------------

    async def _generated_secrets(self, instance: Instance) -> tuple[str | None, str | None]:
        """The managed Redis password and the HTTP API key: read back from their Secrets, or new.

        A new value is only ever made when its Secret (or the key in it) does not exist, so a value
        the pods already use is never replaced; the Secret itself is applied with the other children.
        """
        password = api_key = None
        if instance.section("redis")["mode"] == "managed":
            data = await self.kube.secret_data(instance.namespace, redis.name(instance)) or {}
            password = data.get("password") or secrets.token_urlsafe(24)
        if "apiKeySecretRef" not in instance.section("auth"):
            ref = api_key_ref(instance)
            data = await self.kube.secret_data(instance.namespace, ref["name"]) or {}
            api_key = data.get(ref["key"]) or secrets.token_urlsafe(32)
        return password, api_key

    async def _missing_secrets(self, instance: Instance, the_plan: Plan) -> list[str]:
        """Secrets (and keys) the pods would read that do not exist: nothing is rolled onto them."""
        generated = {c["metadata"]["name"] for c in the_plan.children if c["kind"] == "Secret"}
        missing: list[str] = []
        seen: dict[str, dict[str, str] | None] = {}
        for name, secret_key in secret_references(the_plan.children):
            if name in generated:
                continue
            if name not in seen:
                seen[name] = await self.kube.secret_data(instance.namespace, name)
            data = seen[name]
            if data is None:
                missing.append(f"Secret {name!r} does not exist in namespace {instance.namespace}")
            elif secret_key is not None and secret_key not in data:
                missing.append(f"Secret {name!r} has no key {secret_key!r}")
        if missing:
            missing = [*dict.fromkeys(missing)]
            missing[-1] += "; the children are left as they are until it is created"
        return missing

    async def _owned(self, instance: Instance, available: frozenset[str]) -> dict[tuple[str, str], dict[str, Any]]:
        """This instance's children as they are in the cluster (by label, then owner uid)."""
        labels = {INSTANCE: instance.name, MANAGED_BY: MANAGER}
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for api_version, kind in kinds.CHILD_KINDS:
            optional = _OPTIONAL_API.get((api_version, kind))
            if optional is not None and optional not in available:
                continue
            for obj in await self.kube.list(api_version, kind, instance.namespace, labels):
                if owned_by(obj, instance.uid):
                    obj.setdefault("apiVersion", api_version)
                    obj.setdefault("kind", kind)
                    found[key(obj)] = obj
        return found

    async def _apply(self, instance: Instance, the_plan: Plan, available: frozenset[str], outcome: Outcome) -> None:
        try:
            before = await self._owned(instance, available)
        except KubeError as exc:
            outcome.errors.append(str(exc))
            return
        applied_before = self._applied.setdefault(instance.uid, set())
        for child in the_plan.children:
            what = f"{child['kind']} {child['metadata']['name']}"
            existing = before.get(key(child))
            try:
                stored = await self.kube.apply(child)
                if child["kind"] == "Deployment" and existing is None and the_plan.initial_replicas is not None:
                    # Autoscaled: the operator's manager never holds replicas (it would fight the
                    # autoscaler); this one-off apply under a manager of its own sets the first count.
                    replicas = {"spec": {"replicas": the_plan.initial_replicas}}
                    await self.kube.apply(
                        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _identity(child), **replicas},
                        manager=INITIAL_MANAGER,
                    )
            except KubeError as exc:
                outcome.errors.append(str(exc))
                continue
            if existing is None:
                # Restored: this operator applied it before, and someone deleted it since.
                (outcome.restored if key(child) in applied_before else outcome.created).append(what)
            elif _uid(stored) != _uid(existing):
                # Deleted after the listing above and before this apply, which created it anew.
                outcome.restored.append(what)
            elif _project(existing, encoded(child)) != _project(stored, encoded(child)):
                outcome.corrected.append(what)
            applied_before.add(key(child))
        if outcome.errors:
            return  # prune only after a complete apply: a half-applied plan is no basis for deleting
        desired = {key(c) for c in the_plan.children}
        for (kind, name), obj in before.items():
            if (kind, name) in desired:
                continue
            try:
                await self.kube.delete(obj["apiVersion"], kind, instance.namespace, name)
            except KubeError as exc:
                outcome.errors.append(str(exc))
            else:
                outcome.deleted.append(f"{kind} {name}")

    async def _observe(self, instance: Instance, the_plan: Plan, outcome: Outcome) -> conditions.Observed:
        ns, name = instance.namespace, instance.name
        try:
            deployment = await self.kube.get("apps/v1", "Deployment", ns, name) or {}
            spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
            redis_ready: bool | None = None
            redis_message = ""
            if instance.section("redis")["mode"] == "managed":
                stateful = await self.kube.get("apps/v1", "StatefulSet", ns, redis.name(instance)) or {}
                ready = int((stateful.get("status") or {}).get("readyReplicas") or 0)
                redis_ready = ready > 0
                redis_message = f"managed Redis {redis.name(instance)}: {ready} pod(s) ready"
            active, scaling_message = await self._autoscaling(instance, the_plan)
        except KubeError as exc:
            outcome.errors.append(str(exc))
            return conditions.Observed(error="; ".join(outcome.errors))
        return conditions.Observed(
            desired_replicas=int(spec.get("replicas") or 0),
            replicas=int(status.get("replicas") or 0),
            ready_replicas=int(status.get("readyReplicas") or 0),
            redis_ready=redis_ready,
            redis_message=redis_message,
            autoscaling_active=active,
            autoscaling_message=scaling_message,
            connections=self.rebalancing.connections(instance.uid),
            error="; ".join(outcome.errors),
        )

    async def _autoscaling(self, instance: Instance, the_plan: Plan) -> tuple[bool | None, str]:
        if the_plan.autoscaler == "none":
            return None, ""
        # KEDA makes an HPA of its own, keda-hpa-<ScaledObject>; ours is named after the instance.
        name = instance.name if the_plan.autoscaler == "hpa" else f"keda-hpa-{instance.name}"
        hpa = await self.kube.get("autoscaling/v2", "HorizontalPodAutoscaler", instance.namespace, name)
        if hpa is None:
            return None, f"HorizontalPodAutoscaler {name} not found yet"
        for cond in (hpa.get("status") or {}).get("conditions") or ():
            if cond.get("type") == "ScalingActive":
                text = f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
                return cond.get("status") == "True", text
        return None, f"HorizontalPodAutoscaler {name} has not computed a replica count yet"

    def _announce(self, resource: Mapping[str, Any], previous: Mapping[str, Any], outcome: Outcome) -> None:
        """Events for what a person would want to know happened, once each."""
        notify = self.notify
        if outcome.created:
            notify(resource, "Normal", "Created", "created " + ", ".join(outcome.created))
        if outcome.restored:
            notify(resource, "Warning", "Restored", "recreated deleted " + ", ".join(outcome.restored))
        if outcome.corrected:
            notify(resource, "Normal", "Updated", "applied the spec to " + ", ".join(outcome.corrected))
        if outcome.deleted:
            notify(resource, "Normal", "Pruned", "deleted no longer wanted " + ", ".join(outcome.deleted))
        before = conditions.find(previous.get("conditions"), conditions.READY)
        now = conditions.find(outcome.status.get("conditions"), conditions.READY)
        if now is None:
            return
        # Ready once when it becomes so (not at every pod count); not ready again at each new reason.
        was = (before or {}).get("status")
        if now["status"] == "True" and was != "True":
            notify(resource, "Normal", "Ready", now["message"])
        elif (
            now["status"] != "True"
            and now["reason"] != "NoReadyPods"
            and (was, (before or {}).get("message")) != (now["status"], now["message"])
        ):
            notify(resource, "Warning", now["reason"], now["message"])
        skipped = list(outcome.plan.skipped)
        if skipped and skipped != list(previous.get("skipped") or ()):
            notify(resource, "Normal", "Skipped", "; ".join(skipped))


def _uid(obj: Mapping[str, Any]) -> str | None:
    uid = (obj.get("metadata") or {}).get("uid")
    return str(uid) if uid is not None else None


def _identity(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {"name": meta["name"], "namespace": meta["namespace"]}


def _project(obj: Any, shape: Any) -> Any:
    """`obj` cut down to the fields `shape` (a manifest) sets: what an apply of it can change.
    Others' fields (a controller's annotations, status, resourceVersion) are left out, since they
    move on their own between two reads."""
    if isinstance(shape, dict) and isinstance(obj, dict):
        return {k: _project(obj.get(k), v) for k, v in shape.items()}
    return obj


def _differs(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(previous.get(k) != v for k, v in new.items())
