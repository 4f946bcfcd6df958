"""The API kinds the operator creates, and the optional ones whose CRDs a cluster may lack.

`plan()` is told which optional kinds exist as a set of `"<apiVersion>/<Kind>"` strings (the form
Helm's `.Capabilities.APIVersions.Has` takes), which the runtime reads from discovery. Built-in
kinds (Deployment, Service, HPA autoscaling/v2, Ingress networking.k8s.io/v1, PDB policy/v1) are
always there on a supported Kubernetes (1.29+, for CEL validation of the CRD).
"""

from __future__ import annotations

from typing import Final

SERVICE_MONITOR: Final = "monitoring.coreos.com/v1/ServiceMonitor"
PROMETHEUS_RULE: Final = "monitoring.coreos.com/v1/PrometheusRule"
SCALED_OBJECT: Final = "keda.sh/v1alpha1/ScaledObject"
HTTP_ROUTE: Final = "gateway.networking.k8s.io/v1/HTTPRoute"
#: Not a kind but a capability: HTTPRoute's `sessionPersistence` exists only in the Gateway API's
#: experimental channel. The runtime adds this when the httproutes CRD's annotation
#: `gateway.networking.k8s.io/channel` is `experimental`; a standard-channel CRD would refuse the field.
HTTP_ROUTE_SESSION_PERSISTENCE: Final = "gateway.networking.k8s.io/v1/HTTPRoute#sessionPersistence"

OPTIONAL: Final = frozenset(
    {SERVICE_MONITOR, PROMETHEUS_RULE, SCALED_OBJECT, HTTP_ROUTE, HTTP_ROUTE_SESSION_PERSISTENCE}
)

#: Every (apiVersion, kind) a plan may hold: the runtime watches these and prunes the ones it owns
#: that a new plan no longer holds (a switch from HPA to KEDA, an Ingress turned off).
CHILD_KINDS: Final = (
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("networking.k8s.io/v1", "Ingress"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
)


def describe(kind: str) -> str:
    """`monitoring.coreos.com/v1/ServiceMonitor` → `the ServiceMonitor CRD (monitoring.coreos.com/v1)`."""
    api_version, _, name = kind.partition("#")[0].rpartition("/")
    return f"the {name} CRD ({api_version})"
