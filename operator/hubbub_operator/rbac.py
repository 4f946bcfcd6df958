"""The operator's permissions, derived from what its handlers call (least privilege).

One table, `RULES`, built from the kinds the runtime applies, lists, watches and deletes
(`kinds.CHILD_KINDS`, `handlers.WATCHED`), the CRDs it looks up (`kube.OPTIONAL_CRDS`) and what kopf
needs (its annotations on the resource, Events, CRD scanning, peering). `hubbub_operator.deploy`
renders it as a ClusterRole (all namespaces) or as a Role per namespace plus the small ClusterRole
of cluster-scoped reads (single-namespace mode).

Why each verb:
- children: `create` and `patch` (server-side apply creates or patches), `get`/`list` (observe,
  prune by label), `delete` (prune), `watch` (drift; not Secrets, see handlers.WATCHED).
- realtimeservices: `get`/`list`/`watch` (kopf), `patch` (kopf's progress annotations);
  `/status` `patch` (conditions); `/finalizers` `update`: the children's ownerReferences set
  blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement admission plugin allows only
  to who may update the owner's finalizers.
- customresourcedefinitions `get`/`list`/`watch`: which optional kinds exist, and kopf's scanning.
- events `create`: kopf posts the operator's Events.
- pods `list`: rebalancing (hubbub_operator.rebalance) finds the instance's pods, their readiness and
  their IPs; it then calls their HTTP API directly on the pod IP (no `pods/proxy`).
- namespaces `list`/`watch`: kopf, in single-namespace mode, follows which namespaces exist.
- kopf.dev peerings: `get`/`list`/`watch`/`patch` for HA (only used when a peering object exists).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Final

from hubbub_operator import GROUP, PLURAL, kinds
from hubbub_operator.handlers import WATCHED
from hubbub_operator.kube import plural

CHILD_VERBS: Final = ("get", "list", "create", "patch", "delete")


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def child_rules() -> list[dict[str, Any]]:
    """One rule per API group for the children, with watch where the handlers watch."""
    watched = {kind for _, kind in WATCHED}
    by_group: dict[tuple[str, bool], list[str]] = defaultdict(list)
    for api_version, kind in kinds.CHILD_KINDS:
        by_group[(_group(api_version), kind in watched)].append(plural(kind))
    rules = []
    for (group, watch), resources in sorted(by_group.items()):
        verbs = [*CHILD_VERBS, "watch"] if watch else list(CHILD_VERBS)
        rules.append({"apiGroups": [group], "resources": sorted(resources), "verbs": verbs})
    return rules


def namespaced_rules(*, peering: str) -> list[dict[str, Any]]:
    """What the operator needs inside each namespace it manages."""
    return [
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
        *child_rules(),
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": ["kopf.dev"], "resources": [peering], "verbs": ["get", "list", "watch", "patch"]},
    ]


def cluster_reads() -> list[dict[str, Any]]:
    """Cluster-scoped reads, needed in either mode."""
    return [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "list", "watch"],
        },
        # kopf with --namespace watches which namespaces exist (names only; it retries without).
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]


def cluster_rules() -> list[dict[str, Any]]:
    """All namespaces: the namespaced rules cluster-wide, kopf's cluster peering and the reads."""
    return [*namespaced_rules(peering="clusterkopfpeerings"), *cluster_reads()]
