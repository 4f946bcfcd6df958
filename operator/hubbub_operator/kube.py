"""The operator's only door to the Kubernetes API: server-side apply, reads, deletes, discovery.

    kube = LightkubeKube.from_env()          # KUBECONFIG, or the pod's ServiceAccount
    await kube.apply(manifest)               # SSA, field manager hubbub-operator, force
    await kube.available_kinds()             # {kinds.SERVICE_MONITOR, ...} that this cluster serves

Handlers depend on the `Kube` protocol, not on lightkube, so a test can hand them a fake. Every
object goes through lightkube's generic resources, as plain dicts: what is applied is the builders'
manifest byte for byte (a typed model would drop fields it does not know), and no kind needs a model.
What this module calls is what the shipped RBAC grants (`hubbub_operator.rbac`); a new call needs a
new rule there.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.types import PatchType

from hubbub_operator import GROUP, MANAGER, PLURAL, VERSION, kinds

#: The field manager of the one-off apply that gives an autoscaled Deployment its first replica count;
#: the autoscaler takes the field over afterwards, and the operator's own manager never holds it.
INITIAL_MANAGER: Final = f"{MANAGER}-initial-replicas"
#: The CRD behind each optional kind, and the version of it the builders write.
OPTIONAL_CRDS: Final = {
    kinds.SERVICE_MONITOR: ("servicemonitors.monitoring.coreos.com", "v1"),
    kinds.PROMETHEUS_RULE: ("prometheusrules.monitoring.coreos.com", "v1"),
    kinds.SCALED_OBJECT: ("scaledobjects.keda.sh", "v1alpha1"),
    kinds.HTTP_ROUTE: ("httproutes.gateway.networking.k8s.io", "v1"),
}
#: The Gateway API marks each CRD with the channel it comes from; sessionPersistence is experimental.
GATEWAY_CHANNEL: Final = "gateway.networking.k8s.io/channel"
_IRREGULAR_PLURALS: Final = {"Ingress": "ingresses", "Endpoints": "endpoints"}
_CLUSTER_SCOPED: Final = frozenset({"CustomResourceDefinition", "Namespace"})


class KubeError(Exception):
    """The API refused a request; the message says what and why (for status and events)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class Kube(Protocol):
    """What the handlers need of the API."""

    async def apply(self, manifest: Mapping[str, Any], *, manager: str = MANAGER) -> dict[str, Any]: ...

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list(
        self, api_version: str, kind: str, namespace: str | None, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]: ...

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None: ...

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...

    async def available_kinds(self) -> frozenset[str]: ...

    async def secret_data(self, namespace: str, name: str) -> dict[str, str] | None: ...


def plural(kind: str) -> str:
    return _IRREGULAR_PLURALS.get(kind, kind.lower() + "s")


@functools.cache
def resource(api_version: str, kind: str) -> Any:
    """lightkube's generic resource class for one kind (built-in kinds too: dicts in, dicts out)."""
    group, _, version = api_version.rpartition("/")
    make = create_global_resource if kind in _CLUSTER_SCOPED else create_namespaced_resource
    return make(group, version, kind, plural(kind))


def _describe(api_version: str, kind: str, namespace: str | None, name: str) -> str:
    where = f"{namespace}/{name}" if namespace else name
    return f"{kind} {where} ({api_version})"


def _error(exc: ApiError, doing: str) -> KubeError:
    status = exc.status
    return KubeError(f"{doing}: {status.code} {status.reason}: {status.message}", int(status.code or 0))


def _plain(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return dict(obj)
    return dict(obj.to_dict())


class LightkubeKube:
    """`Kube` over lightkube's AsyncClient."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    @classmethod
    def from_env(cls) -> LightkubeKube:
        """$KUBECONFIG (or ~/.kube/config), else the pod's ServiceAccount."""
        return cls(AsyncClient(config=KubeConfig.from_env(), field_manager=MANAGER))

    async def close(self) -> None:
        await self.client.close()

    async def apply(self, manifest: Mapping[str, Any], *, manager: str = MANAGER) -> dict[str, Any]:
        manifest = encoded(manifest)
        meta = manifest["metadata"]
        res = resource(manifest["apiVersion"], manifest["kind"])
        try:
            stored = await self.client.apply(
                res(dict(manifest)),
                name=meta["name"],
                namespace=meta.get("namespace"),
                field_manager=manager,
                force=True,
            )
        except ApiError as exc:
            what = _describe(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
            raise _error(exc, f"apply {what} refused") from exc
        return _plain(stored)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = await self.client.get(resource(api_version, kind), name, namespace=namespace or None)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise _error(exc, f"get {_describe(api_version, kind, namespace, name)}") from exc
        return _plain(found)

    async def list(
        self, api_version: str, kind: str, namespace: str | None, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        try:
            return [
                _plain(obj)
                async for obj in self.client.list(
                    resource(api_version, kind), namespace=namespace or "*", labels=dict(labels)
                )
            ]
        except ApiError as exc:
            raise _error(exc, f"list {kind} ({api_version}) in {namespace or 'all namespaces'}") from exc

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        try:
            await self.client.delete(resource(api_version, kind), name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise _error(exc, f"delete {_describe(api_version, kind, namespace, name)}") from exc

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        res = resource(f"{GROUP}/{VERSION}", "RealtimeService")
        try:
            await self.client.patch(
                res.Status, name, {"status": dict(status)}, namespace=namespace, patch_type=PatchType.MERGE
            )
        except ApiError as exc:
            if exc.status.code != 404:  # deleted meanwhile: nothing to report on
                raise _error(exc, f"patch the status of {PLURAL} {namespace}/{name}") from exc

    async def available_kinds(self) -> frozenset[str]:
        """The optional kinds whose CRD is installed, Established and serves the version we write."""
        found: set[str] = set()
        for kind, (crd_name, version) in OPTIONAL_CRDS.items():
            crd = await self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", crd_name)
            if crd is None or not _serves(crd, version):
                continue
            found.add(kind)
            channel = ((crd.get("metadata") or {}).get("annotations") or {}).get(GATEWAY_CHANNEL)
            if kind == kinds.HTTP_ROUTE and channel == "experimental":
                found.add(kinds.HTTP_ROUTE_SESSION_PERSISTENCE)
        return frozenset(found)

    async def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's keys and values (decoded), or None when it does not exist."""
        secret = await self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        out: dict[str, str] = {}
        for key, value in (secret.get("data") or {}).items():
            out[key] = base64.b64decode(value).decode("utf-8", errors="replace")
        out.update(secret.get("stringData") or {})
        return out


def encoded(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A Secret's `stringData` as `data`: stringData is write-only (the API stores data), so an
    apply that keeps sending it can never match what is stored, and would rewrite the Secret."""
    out = dict(manifest)
    if out.get("kind") == "Secret" and out.get("stringData"):
        strings = out.pop("stringData")
        data = {k: base64.b64encode(str(v).encode()).decode() for k, v in strings.items()}
        out["data"] = {**(out.get("data") or {}), **data}
    return out


def _serves(crd: Mapping[str, Any], version: str) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    established = any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
    served = any(v.get("name") == version and v.get("served") for v in (crd.get("spec") or {}).get("versions") or ())
    return established and served


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs: Iterable[Mapping[str, Any]] = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(ref.get("uid") == uid for ref in refs)
