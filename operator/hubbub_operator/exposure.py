"""How clients reach the pods: the Service `<name>`, and an Ingress or a Gateway API HTTPRoute.

The Service port carries `appProtocol: kubernetes.io/ws` (Gateway API v1.2 standard), which some
Gateway implementations need before they pass a WebSocket upgrade. Session affinity is opt-in:
hubbub keeps rooms, presence and history in Redis, so any pod serves a reconnect; a cookie only
spares a client the recovery round trip.
"""

from __future__ import annotations

from typing import Any, Final

from hubbub_operator.resource import Instance, manifest
from hubbub_operator.workload import COMPONENT

#: The WebSocket path of hubbub (docs/protocol.md).
WS_PATH: Final = "/ws"
AFFINITY_COOKIE: Final = "HUBBUB_AFFINITY"
#: Seconds a proxy may see no traffic on a WebSocket before closing it; hubbub pings every
#: ping_interval (25 s by default), far inside it. ingress-nginx's default is 60 s.
PROXY_TIMEOUT: Final = 3600


def service(instance: Instance) -> dict[str, Any]:
    exposure = instance.section("exposure")
    svc = instance.section("exposure.service")
    body: dict[str, Any] = {
        "type": svc["type"],
        "selector": instance.selector(COMPONENT),
        "ports": [
            {
                "name": "http",
                "port": svc["port"],
                "targetPort": "http",
                "protocol": "TCP",
                "appProtocol": "kubernetes.io/ws",
            }
        ],
    }
    if exposure["sessionAffinity"] == "ClientIP":
        body["sessionAffinity"] = "ClientIP"
        body["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 10800}}
    meta = instance.metadata(instance.name, COMPONENT, annotations=svc.get("annotations"))
    return manifest("v1", "Service", meta, spec=body)


def ingress(instance: Instance) -> dict[str, Any]:
    section = instance.section("exposure.ingress")
    annotations = {
        # ingress-nginx passes WebSocket upgrades as they are; only its 60 s timeouts would cut them.
        "nginx.ingress.kubernetes.io/proxy-read-timeout": str(PROXY_TIMEOUT),
        "nginx.ingress.kubernetes.io/proxy-send-timeout": str(PROXY_TIMEOUT),
    }
    if instance.section("exposure")["sessionAffinity"] == "Cookie":
        annotations.update(
            {
                "nginx.ingress.kubernetes.io/affinity": "cookie",
                # persistent: a scale-up does not move existing clients (balanced would, on reconnect).
                "nginx.ingress.kubernetes.io/affinity-mode": "persistent",
                "nginx.ingress.kubernetes.io/session-cookie-name": AFFINITY_COOKIE,
                "nginx.ingress.kubernetes.io/session-cookie-path": "/",
                "nginx.ingress.kubernetes.io/session-cookie-max-age": "172800",
                "nginx.ingress.kubernetes.io/session-cookie-samesite": "Lax",
                # A pod gone (drained, scaled in): a new cookie for the pod the client lands on.
                "nginx.ingress.kubernetes.io/session-cookie-change-on-failure": "true",
            }
        )
        if "tls" in section:
            annotations["nginx.ingress.kubernetes.io/session-cookie-secure"] = "true"
    annotations.update(section.get("annotations") or {})
    rule: dict[str, Any] = {
        "http": {
            "paths": [
                {
                    "path": section["path"],
                    "pathType": "Prefix",
                    "backend": {"service": {"name": instance.name, "port": {"name": "http"}}},
                }
            ]
        }
    }
    if "host" in section:
        rule = {"host": section["host"], **rule}
    body: dict[str, Any] = {"rules": [rule]}
    if "className" in section:
        body = {"ingressClassName": section["className"], **body}
    if "tls" in section:
        body["tls"] = [{"hosts": [section["host"]], "secretName": section["tls"]["secretName"]}]
    meta = instance.metadata(instance.name, COMPONENT, annotations=annotations)
    return manifest("networking.k8s.io/v1", "Ingress", meta, spec=body)


def http_route(instance: Instance, *, session_persistence: bool) -> dict[str, Any]:
    section = instance.section("exposure.gateway")
    rule: dict[str, Any] = {
        "matches": [{"path": {"type": "PathPrefix", "value": section["path"]}}],
        "backendRefs": [{"name": instance.name, "port": instance.section("exposure.service")["port"]}],
    }
    if session_persistence:
        rule["sessionPersistence"] = {
            "sessionName": AFFINITY_COOKIE,
            "type": "Cookie",
            "absoluteTimeout": "48h",
            "cookieConfig": {"lifetimeType": "Permanent"},
        }
    body: dict[str, Any] = {"parentRefs": [dict(ref) for ref in section["parentRefs"]]}
    if section.get("hostnames"):
        body["hostnames"] = list(section["hostnames"])
    body["rules"] = [rule]
    return manifest("gateway.networking.k8s.io/v1", "HTTPRoute", instance.metadata(instance.name, COMPONENT), spec=body)


def endpoint(instance: Instance) -> str:
    """Where clients connect, as far as the spec tells (a LoadBalancer's address is the runtime's to add)."""
    if instance.enabled("exposure.ingress"):
        section = instance.section("exposure.ingress")
        if "host" in section:
            scheme = "wss" if "tls" in section else "ws"
            return f"{scheme}://{section['host']}{_join(section['path'], WS_PATH)}"
    if instance.enabled("exposure.gateway"):
        section = instance.section("exposure.gateway")
        if section.get("hostnames"):
            return f"wss://{section['hostnames'][0]}{_join(section['path'], WS_PATH)}"
    port = instance.section("exposure.service")["port"]
    suffix = "" if port == 80 else f":{port}"
    return f"ws://{instance.name}.{instance.namespace}.svc{suffix}{WS_PATH}"


def _join(prefix: str, path: str) -> str:
    return prefix.rstrip("/") + path
