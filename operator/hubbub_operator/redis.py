"""The managed Redis (spec.redis.mode managed): the Secret `<name>-redis`, a headless Service and a
one-pod StatefulSet `<name>-redis`.

The password is the builder's argument: the runtime generates it once and reads it back from the
Secret afterwards, so a plan is a pure function of its inputs. It never appears on a command line:
the server reads it from `redis.conf`, which the Secret holds; the hubbub pods read the whole URL
from the same Secret (`HUBBUB_REDIS_URL`).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final
from urllib.parse import quote

from hubbub_operator.resource import Instance, manifest

COMPONENT: Final = "redis"
PORT: Final = 6379
#: The official valkey and redis images' unprivileged user.
RUN_AS: Final = 999


def name(instance: Instance) -> str:
    return f"{instance.name}-redis"


def url(instance: Instance, password: str) -> str:
    host = f"{name(instance)}.{instance.namespace}.svc"
    return f"redis://:{quote(password, safe='')}@{host}:{PORT}/0"


def url_ref(instance: Instance) -> dict[str, str]:
    """Where the hubbub pods read HUBBUB_REDIS_URL."""
    return {"name": name(instance), "key": "url"}


def server_config(password: str, persistent: bool) -> str:
    lines = [
        f"port {PORT}",
        "bind * -::*",
        "protected-mode no",
        f"requirepass {password}",
        "dir /data",
        # hubbub keeps history and presence here: evicting keys would lose them silently.
        "maxmemory-policy noeviction",
    ]
    lines += ["appendonly yes", "appendfsync everysec"] if persistent else ["appendonly no", 'save ""']
    return "\n".join(lines) + "\n"


def children(instance: Instance, password: str) -> list[dict[str, Any]]:
    managed = instance.section("redis.managed")
    persistence = instance.section("redis.managed.persistence")
    persistent = bool(persistence["enabled"])
    redis_name = name(instance)
    conf = server_config(password, persistent)
    secret = manifest(
        "v1",
        "Secret",
        instance.metadata(redis_name, COMPONENT),
        type="Opaque",
        stringData={
            "password": password,
            "url": url(instance, password),
            "redis.conf": conf,
        },
    )
    service = manifest(
        "v1",
        "Service",
        instance.metadata(redis_name, COMPONENT),
        spec={
            "clusterIP": "None",
            "selector": instance.selector(COMPONENT),
            "ports": [{"name": "redis", "port": PORT, "targetPort": "redis", "protocol": "TCP"}],
            # The hubbub pods reach it by this name while it starts; they retry with backoff.
            "publishNotReadyAddresses": True,
        },
    )
    container: dict[str, Any] = {
        "name": "redis",
        "image": managed["image"],
        # The official images' entrypoint starts the server when the first argument is a .conf file.
        "args": ["/etc/redis/redis.conf"],
        "ports": [{"name": "redis", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10, "failureThreshold": 6},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/redis", "readOnly": True},
            {"name": "data", "mountPath": "/data"},
        ],
    }
    if managed.get("resources"):
        container["resources"] = managed["resources"]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "secret": {"secretName": redis_name, "items": [{"key": "redis.conf", "path": "redis.conf"}]}}
    ]
    body: dict[str, Any] = {
        "serviceName": redis_name,
        "replicas": 1,
        "selector": {"matchLabels": instance.selector(COMPONENT)},
        "template": {
            "metadata": {
                "labels": instance.labels(COMPONENT),
                # The server reads redis.conf once: a changed one (persistence on or off) restarts it.
                "annotations": {"hubbub.dev/config-checksum": hashlib.sha256(conf.encode()).hexdigest()},
            },
            "spec": {
                "enableServiceLinks": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": RUN_AS,
                    "runAsGroup": RUN_AS,
                    "fsGroup": RUN_AS,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [container],
                "volumes": volumes,
            },
        },
    }
    if persistent:
        claim: dict[str, Any] = {
            "metadata": {"name": "data", "labels": instance.selector(COMPONENT)},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": persistence["size"]}}},
        }
        if persistence.get("storageClassName"):
            claim["spec"]["storageClassName"] = persistence["storageClassName"]
        body["volumeClaimTemplates"] = [claim]
    else:
        volumes.append({"name": "data", "emptyDir": {}})
    statefulset = manifest("apps/v1", "StatefulSet", instance.metadata(redis_name, COMPONENT), spec=body)
    return [secret, service, statefulset]
