"""One RealtimeService as the builders see it: its identity, its spec with the schema's defaults, and
the metadata every child carries (standard labels, an owner reference to it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from hubbub_operator import API_VERSION, KIND, MANAGER, schema

#: Label values every child carries (Kubernetes' recommended labels).
APP: Final = "hubbub"
PART_OF: Final = "hubbub"


@dataclass(frozen=True)
class Instance:
    name: str
    namespace: str
    uid: str
    generation: int
    #: The spec with the schema's defaults applied (what the API server stores).
    spec: dict[str, Any]

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> Instance:
        """From a RealtimeService as read from the API (or an example with metadata filled in)."""
        meta = obj.get("metadata") or {}
        return cls(
            name=str(meta["name"]),
            namespace=str(meta.get("namespace") or "default"),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            spec=schema.with_defaults(obj.get("spec") or {}, schema.at("")),
        )

    def section(self, path: str) -> dict[str, Any]:
        """The spec's object at `path`, defaulted even when absent."""
        return schema.section(self.spec, path)

    def has(self, path: str) -> bool:
        node: Any = self.spec
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def enabled(self, path: str) -> bool:
        """A section that is present and not switched off (`enabled: false`)."""
        return self.has(path) and bool(self.section(path).get("enabled", True))

    def selector(self, component: str) -> dict[str, str]:
        """The labels that select this instance's pods of one component (immutable in a Deployment)."""
        return {
            "app.kubernetes.io/name": APP,
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component,
        }

    def labels(self, component: str) -> dict[str, str]:
        return {
            **self.selector(component),
            "app.kubernetes.io/managed-by": MANAGER,
            "app.kubernetes.io/part-of": PART_OF,
        }

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def metadata(
        self,
        name: str,
        component: str,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A child's metadata: its name, this namespace, the standard labels (the extra ones may not
        override them) and the owner reference that makes it garbage-collected with the resource."""
        meta: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "labels": {**(labels or {}), **self.labels(component)},
        }
        if annotations:
            meta["annotations"] = dict(annotations)
        meta["ownerReferences"] = [self.owner_reference()]
        return meta


def manifest(api_version: str, kind: str, metadata: dict[str, Any], **body: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **body}
