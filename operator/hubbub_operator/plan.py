"""A RealtimeService's desired children: `plan(resource, ...)` → `Plan`.

Pure: the same resource, available kinds and generated secrets give the same manifests, byte for
byte, so the runtime can server-side apply all of them on every reconcile (idempotent) and a test
can keep them as golden files.

    plan(resource, available_kinds=frozenset({kinds.SERVICE_MONITOR, ...}),
         redis_password="…", api_key="…") -> Plan(children, problems, skipped, ...)

- `children`: complete manifests (namespace, standard labels, an owner reference to the resource
  with controller and blockOwnerDeletion), in the order to apply them (Secrets and the ConfigMap
  before the pods that read them).
- `problems`: why the spec cannot be run as it is (hubbub refuses its settings, a generated secret
  is missing). When there are any, `children` is empty: the runtime leaves what runs alone and
  reports them (Ready False, reason InvalidSpec) instead of rolling pods onto a broken config.
- `skipped`: optional children the spec asks for but that are not created, each with why (their
  CRD is not installed), for `status.skipped` and the conditions.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from hubbub_operator import autoscaling, config, exposure, kinds, monitoring, redis, workload
from hubbub_operator.resource import Instance, manifest

Autoscaler = Literal["hpa", "keda", "none"]
_PASSWORD = re.compile(r"[A-Za-z0-9_-]{16,}")


@dataclass(frozen=True)
class Plan:
    children: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: Which autoscaler owns the Deployment's replicas ("none": the operator sets them).
    autoscaler: Autoscaler = "none"
    #: Autoscaled: the replica count to create the Deployment with, applied once under a field
    #: manager of its own (the operator's apply leaves `replicas` to the autoscaler). None otherwise.
    initial_replicas: int | None = None
    #: Where clients connect (status.endpoint).
    endpoint: str = ""
    #: The generation of the resource this plan was made from (for observedGeneration).
    generation: int = 0


def plan(
    resource: dict[str, Any],
    *,
    available_kinds: Collection[str] = frozenset(),
    redis_password: str | None = None,
    api_key: str | None = None,
) -> Plan:
    """The children of one RealtimeService (a dict as read from the API).

    `available_kinds`: the optional kinds the cluster serves (`kinds.SERVICE_MONITOR`, …).
    `redis_password`: the managed Redis's password (needed in mode managed), and `api_key`: the HTTP
    API's key (needed without auth.apiKeySecretRef): generated once by the runtime, then read back
    from their Secrets; this function makes no randomness.
    """
    instance = Instance.from_object(resource)
    available = frozenset(available_kinds)
    rendered = config.render(instance)
    problems = list(rendered.problems)
    redis_mode = instance.section("redis")["mode"]
    auth = instance.section("auth")
    if not any(key in auth for key in ("jwtSecretRef", "publicKeySecretRef", "jwksURL")):
        # The CRD requires one; a resource stored under an older schema may still lack it.
        problems.append("spec.auth needs one of jwtSecretRef, publicKeySecretRef or jwksURL: hubbub checks tokens")
    if redis_mode == "managed" and not redis_password:
        problems.append("internal: no password given for the managed Redis (the runtime generates it)")
    elif redis_mode == "managed" and not _PASSWORD.fullmatch(redis_password or ""):
        # It goes into redis.conf and a URL as it is: letters, digits, - and _ only (secrets.token_urlsafe).
        problems.append("internal: the managed Redis password must be 16+ characters of [A-Za-z0-9_-]")
    if "apiKeySecretRef" not in auth and not api_key:
        problems.append("internal: no generated API key given (the runtime generates it)")
    skipped: list[str] = []
    autoscaler = _autoscaler(instance, available, skipped)
    endpoint = exposure.endpoint(instance)
    if problems or rendered.settings is None:
        return Plan([], problems, skipped, autoscaler, None, endpoint, instance.generation)

    children: list[dict[str, Any]] = []
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    secret_refs: list[dict[str, Any]] = []

    def from_secret(variable: str, ref: dict[str, Any]) -> None:
        env.append(workload.secret_key_env(variable, ref))
        secret_refs.append(ref)

    # -- secrets and settings ---------------------------------------------------------------------
    if "jwtSecretRef" in auth:
        from_secret("HUBBUB_JWT_SECRET", auth["jwtSecretRef"])
    if "publicKeySecretRef" in auth:
        volume, mount = workload.public_key_volume(auth["publicKeySecretRef"])
        volumes.append(volume)
        mounts.append(mount)
        secret_refs.append(auth["publicKeySecretRef"])
    if "apiKeySecretRef" in auth:
        from_secret("HUBBUB_API_KEY", auth["apiKeySecretRef"])
    else:
        assert api_key is not None
        children.append(api_key_secret(instance, api_key))
        from_secret("HUBBUB_API_KEY", api_key_ref(instance))
    if redis_mode == "managed":
        assert redis_password is not None
        children += redis.children(instance, redis_password)
        from_secret("HUBBUB_REDIS_URL", redis.url_ref(instance))
    elif redis_mode == "external":
        _external_redis(instance, env, volumes, mounts, secret_refs)
    children.append(config.config_map(instance, rendered))

    # -- the pods and how they are reached ---------------------------------------------------------
    checksum = workload.checksum(rendered.text, secret_refs)
    children.append(
        workload.deployment(
            instance,
            rendered.settings,
            env=env,
            volumes=volumes,
            mounts=mounts,
            config_checksum=checksum,
            autoscaled=autoscaler != "none",
        )
    )
    children.append(workload.disruption_budget(instance))
    children.append(exposure.service(instance))
    if autoscaler == "hpa":
        children.append(autoscaling.hpa(instance))
    elif autoscaler == "keda":
        children.append(autoscaling.scaled_object(instance))
    if instance.enabled("exposure.ingress"):
        children.append(exposure.ingress(instance))
    if instance.enabled("exposure.gateway"):
        if kinds.HTTP_ROUTE in available:
            wanted = instance.section("exposure")["sessionAffinity"] == "Cookie"
            persistence = wanted and kinds.HTTP_ROUTE_SESSION_PERSISTENCE in available
            if wanted and not persistence:
                skipped.append(
                    "HTTPRoute session persistence not set: the Gateway API CRDs installed are not the "
                    "experimental channel (sessionPersistence is experimental)"
                )
            children.append(exposure.http_route(instance, session_persistence=persistence))
        else:
            skipped.append(_absent("HTTPRoute", kinds.HTTP_ROUTE))

    # -- monitoring ------------------------------------------------------------------------------------
    if instance.enabled("monitoring.serviceMonitor"):
        if kinds.SERVICE_MONITOR in available:
            children.append(monitoring.service_monitor(instance))
        else:
            skipped.append(_absent("ServiceMonitor", kinds.SERVICE_MONITOR))
    if instance.enabled("monitoring.prometheusRule"):
        if kinds.PROMETHEUS_RULE in available:
            children.append(monitoring.prometheus_rule(instance))
        else:
            skipped.append(_absent("PrometheusRule", kinds.PROMETHEUS_RULE))
    if instance.enabled("monitoring.dashboards"):
        children.append(monitoring.dashboards_config_map(instance))

    initial = workload.initial_replicas(instance) if autoscaler != "none" else None
    return Plan(children, [], skipped, autoscaler, initial, endpoint, instance.generation)


def _autoscaler(instance: Instance, available: frozenset[str], skipped: list[str]) -> Autoscaler:
    provider = instance.section("autoscaling")["provider"]
    if provider == "keda" and kinds.SCALED_OBJECT not in available:
        skipped.append(
            _absent("ScaledObject", kinds.SCALED_OBJECT)
            + "; the Deployment runs replicas.min pods until KEDA is installed"
        )
        return "none"
    if provider in ("hpa", "keda"):
        return provider  # type: ignore[no-any-return]
    return "none"


def _absent(what: str, kind: str) -> str:
    return f"{what} not created: {kinds.describe(kind)} is not installed"


def _external_redis(
    instance: Instance,
    env: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    secret_refs: list[dict[str, Any]],
) -> None:
    external = instance.section("redis.external")
    if "urlSecretRef" not in external:
        return
    ref = external["urlSecretRef"]
    secret_refs.append(ref)
    if "tls" not in external:
        env.append(workload.secret_key_env("HUBBUB_REDIS_URL", ref))
        return
    # The private CA is a file in the pod; redis-py takes its path from the URL's query string.
    # Kubernetes expands $(VAR) of an earlier variable, so the Secret's URL is used as it is.
    ca = external["tls"]["caSecretRef"]
    volume, mount = workload.redis_ca_volume(ca)
    volumes.append(volume)
    mounts.append(mount)
    secret_refs.append(ca)
    env.append(workload.secret_key_env("REDIS_URL_FROM_SECRET", ref))
    env.append(
        {
            "name": "HUBBUB_REDIS_URL",
            "value": f"$(REDIS_URL_FROM_SECRET)?ssl_ca_certs={config.REDIS_CA_DIR}/{ca['key']}",
        }
    )


def api_key_ref(instance: Instance) -> dict[str, str]:
    return {"name": f"{instance.name}-api-key", "key": "api-key"}


def api_key_secret(instance: Instance, api_key: str) -> dict[str, Any]:
    """The generated HTTP API key (auth.apiKeySecretRef unset); the operator calls the API with it."""
    return manifest(
        "v1",
        "Secret",
        instance.metadata(api_key_ref(instance)["name"], "server"),
        type="Opaque",
        stringData={"api-key": api_key},
    )
