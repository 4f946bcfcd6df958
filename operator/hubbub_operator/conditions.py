"""The RealtimeService's status: `metav1.Condition`s and the status mapping, as pure functions.

    status(previous=obj.get("status"), plan=the_plan, observed=Observed(...), now=datetime.now(UTC))

Condition types: `Ready` (the summary: clients can connect), `RedisReady`, `AutoscalingReady` and
`Degraded` (working, but not as asked: pods missing, a child skipped, autoscaling inactive). Each
carries the generation it was computed from; `lastTransitionTime` moves only when its status does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from hubbub_operator.plan import Plan

Status = Literal["True", "False", "Unknown"]
READY: Final = "Ready"
REDIS_READY: Final = "RedisReady"
AUTOSCALING_READY: Final = "AutoscalingReady"
DEGRADED: Final = "Degraded"
TYPES: Final = (READY, REDIS_READY, AUTOSCALING_READY, DEGRADED)
_REASON: Final = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
MESSAGE_LIMIT: Final = 32768


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with seconds, as metav1.Time serializes."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str, status: bool | Status, reason: str, message: str, *, generation: int, now: datetime
) -> dict[str, Any]:
    """A new metav1.Condition; `status` may be a bool. The reason must be one CamelCase word."""
    if not _REASON.match(reason):
        raise ValueError(f"condition reason {reason!r} is not CamelCase (metav1.Condition)")
    text: str = ("True" if status else "False") if isinstance(status, bool) else status
    return {
        "type": type_,
        "status": text,
        "observedGeneration": generation,
        "lastTransitionTime": timestamp(now),
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
    }


def merge(previous: Iterable[Mapping[str, Any]] | None, new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The new conditions, each keeping its previous lastTransitionTime when its status is unchanged;
    conditions of other types (another controller's) are kept as they were, after ours."""
    old = {c.get("type"): c for c in previous or ()}
    out: list[dict[str, Any]] = []
    seen = set()
    for cond in new:
        before = old.get(cond["type"])
        if before is not None and before.get("status") == cond["status"] and before.get("lastTransitionTime"):
            cond = {**cond, "lastTransitionTime": before["lastTransitionTime"]}
        out.append(cond)
        seen.add(cond["type"])
    out += [dict(c) for t, c in old.items() if t not in seen]
    return out


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == type_), None)


@dataclass(frozen=True)
class Observed:
    """What the runtime saw of the children this time (None: could not tell)."""

    #: The Deployment's desired pods (spec.replicas) and its status.replicas / readyReplicas.
    desired_replicas: int = 0
    replicas: int = 0
    ready_replicas: int = 0
    #: Open connections over all pods (from the pods' /api/info or metrics); None: not counted.
    connections: int | None = None
    #: Managed: the StatefulSet has a ready pod; external: Redis answered (None: not checked).
    redis_ready: bool | None = None
    redis_message: str = ""
    #: The HPA's ScalingActive condition (KEDA's HPA for a ScaledObject); None: not read yet.
    autoscaling_active: bool | None = None
    autoscaling_message: str = ""
    #: A failure of the last reconcile (an apply refused, a Secret missing), for people.
    error: str = ""
    #: Overrides the plan's endpoint (a LoadBalancer's address).
    endpoint: str | None = None


def conditions(plan: Plan, observed: Observed, *, redis_mode: str, now: datetime) -> list[dict[str, Any]]:
    """The four conditions for one reconcile, before merging with the previous ones."""
    gen = plan.generation

    def make(type_: str, status: bool | Status, reason: str, message: str) -> dict[str, Any]:
        return condition(type_, status, reason, message, generation=gen, now=now)

    # -- Redis ---------------------------------------------------------------------------------------
    if redis_mode == "none":
        redis = make(REDIS_READY, True, "EmbeddedBroker", "no Redis: the single pod's in-memory broker")
    elif observed.redis_ready is None:
        redis = make(REDIS_READY, "Unknown", "NotChecked", observed.redis_message or "Redis not checked yet")
    elif observed.redis_ready:
        redis = make(REDIS_READY, True, "Reachable", observed.redis_message or f"{redis_mode} Redis is ready")
    else:
        redis = make(REDIS_READY, False, "Unreachable", observed.redis_message or f"{redis_mode} Redis is not ready")

    # -- autoscaling --------------------------------------------------------------------------------
    if plan.autoscaler == "none":
        skipped = [s for s in plan.skipped if s.startswith("ScaledObject")]
        if skipped:
            scaling = make(AUTOSCALING_READY, False, "KEDANotInstalled", skipped[0])
        else:
            scaling = make(AUTOSCALING_READY, True, "Disabled", "autoscaling off (provider none): replicas.min pods")
    elif observed.autoscaling_active is None:
        scaling = make(
            AUTOSCALING_READY, "Unknown", "Pending", observed.autoscaling_message or "autoscaler not read yet"
        )
    elif observed.autoscaling_active:
        scaling = make(AUTOSCALING_READY, True, "ScalingActive", observed.autoscaling_message or plan.autoscaler)
    else:
        scaling = make(
            AUTOSCALING_READY,
            False,
            "ScalingInactive",
            observed.autoscaling_message or f"the {plan.autoscaler} autoscaler cannot compute a replica count",
        )

    # -- the summary ----------------------------------------------------------------------------------
    pods = f"{observed.ready_replicas}/{observed.desired_replicas} pods ready"
    if plan.problems:
        ready = make(READY, False, "InvalidSpec", "; ".join(plan.problems))
    elif observed.error:
        ready = make(READY, False, "ReconcileError", observed.error)
    elif observed.ready_replicas == 0:
        ready = make(READY, False, "NoReadyPods", pods)
    elif redis["status"] == "False":
        ready = make(READY, False, "RedisNotReady", redis["message"])
    else:
        ready = make(READY, True, "Ready", pods)

    troubles = []
    if plan.problems or observed.error:
        troubles.append("the spec cannot be applied")
    if observed.ready_replicas < observed.desired_replicas:
        troubles.append(pods)
    if redis["status"] == "False":
        troubles.append("Redis is not ready")
    if scaling["status"] == "False":
        troubles.append("autoscaling is not active")
    troubles += plan.skipped
    if troubles:
        degraded = make(DEGRADED, True, "Degraded", "; ".join(troubles))
    else:
        degraded = make(DEGRADED, False, "AsSpecified", "everything runs as the spec asks")
    return [ready, redis, scaling, degraded]


def status(
    *, previous: Mapping[str, Any] | None, plan: Plan, observed: Observed, redis_mode: str, now: datetime
) -> dict[str, Any]:
    """The whole `status` to write (a merge patch of the status subresource)."""
    new = conditions(plan, observed, redis_mode=redis_mode, now=now)
    out: dict[str, Any] = {
        "observedGeneration": plan.generation,
        "replicas": observed.replicas,
        "readyReplicas": observed.ready_replicas,
        "endpoint": observed.endpoint if observed.endpoint is not None else plan.endpoint,
        "skipped": list(plan.skipped),
        "conditions": merge((previous or {}).get("conditions"), new),
    }
    if observed.connections is not None:
        out["connections"] = observed.connections
    elif (previous or {}).get("connections") is not None:
        out["connections"] = None  # a merge patch removes it: a stale count is not shown as current
    return out
