"""hubbub's Kubernetes operator, its pure core: the RealtimeService custom resource and the builders
of the objects that run it.

Nothing here talks to a cluster. `hubbub_operator.crd` renders the CustomResourceDefinition (one
table of fields, `hubbub_operator.fields`); `hubbub_operator.plan.plan()` turns one RealtimeService,
as read from the API, into the manifests of its children; `hubbub_operator.conditions` writes its
status. The runtime (kopf, server-side apply) sits on top and does the I/O.
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "hubbub.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "RealtimeService"
PLURAL: Final = "realtimeservices"
SINGULAR: Final = "realtimeservice"
SHORT_NAMES: Final = ("rts",)
CATEGORIES: Final = ("hubbub",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"
#: The field manager of every server-side apply the operator makes, and the managed-by label.
MANAGER: Final = "hubbub-operator"
