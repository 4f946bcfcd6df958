"""The kopf handlers: thin, each one asks `Reconciler` to make one RealtimeService's children match
its plan (hubbub_operator.reconcile), whatever the cause.

- create / update / resume of a RealtimeService: reconcile it; when it cannot be completed for a
  reason the cluster may fix (a Secret not created yet, a refused apply) the handler raises
  `kopf.TemporaryError` so kopf tries again after `RETRY_DELAY` seconds; a spec hubbub refuses is
  reported in status and not retried (only an edit fixes it).
- any watch event of a child (labelled `app.kubernetes.io/managed-by: hubbub-operator`): reconcile
  its owner. A deleted child is recreated, a hand edit of a field the operator sets is undone, and
  a Deployment that becomes ready updates the status at once.
- a resync loop (every `Options.resync` seconds) reconciles every RealtimeService in scope: the
  backstop for what no watch reports (a generated Secret deleted, a referenced Secret created),
  and the periodic look of rebalancing (hubbub_operator.rebalance; a Deployment that becomes ready
  with more replicas causes one at once through its watch event).
  It is a plain task, not a kopf timer: a timer would put kopf's finalizer on each resource, and
  deleting one would then hang while the operator is down. Children need no finalizer either:
  their ownerReferences make the garbage collector delete them with the resource.

Handler progress and kopf's last-handled configuration live in annotations prefixed `hubbub.dev`,
never in status, which is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import kopf
from kopf._core.engines import posting

from hubbub_operator import API_VERSION, GROUP, KIND, MANAGER, PLURAL, VERSION, kinds
from hubbub_operator.kube import KubeError, LightkubeKube, plural
from hubbub_operator.rebalance import Rebalancing
from hubbub_operator.reconcile import MANAGED_BY, Reconciler

#: Seconds before kopf retries a reconcile that the cluster may let succeed later.
RETRY_DELAY: Final = 10
#: Child kinds watched for drift. Secrets are not: watching them would hold every Secret of the
#: cluster in memory; the resync restores a deleted generated Secret.
WATCHED: Final = tuple((api, kind) for api, kind in kinds.CHILD_KINDS if kind != "Secret")

log = logging.getLogger("hubbub_operator")


@dataclass
class Options:
    #: Namespaces watched; empty: all of them.
    namespaces: tuple[str, ...] = ()
    #: Seconds between two resyncs of every resource (drift kopf cannot see, status freshness).
    resync: float = 30.0
    #: Peering priority (kopf): among operators sharing a peering, the highest one works.
    priority: int = 0
    #: Rebalance the pods' connections after a scale-out (off: never call the pods, whatever the spec says).
    rebalance: bool = True


OPTIONS = Options()


def configure(options: Options) -> None:
    """Set before kopf starts (python -m hubbub_operator does)."""
    global OPTIONS
    OPTIONS = options


def notify(resource: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """A Kubernetes Event on the RealtimeService, posted by kopf in the background."""
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": resource["metadata"]["name"],
            "namespace": resource["metadata"]["namespace"],
            "uid": resource["metadata"].get("uid", ""),
        },
    }
    meta = body["metadata"]
    log.info("%s/%s: %s %s: %s", meta["namespace"], meta["name"], type_, reason, message)
    with contextlib.suppress(LookupError):  # outside the operator's context (a test): the log only
        kopf.event(kopf.Body(cast(Any, body)), type=type_, reason=reason, message=message[:1000])


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    # A watch that went silent is noticed and restarted (kopf >= 1.44 with bookmarks).
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    settings.peering.priority = OPTIONS.priority
    # lightkube's HTTP client logs every request at INFO: one line per apply is noise, failures say enough.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    kube = LightkubeKube.from_env()
    memo.kube = kube
    memo.reconciler = Reconciler(kube, notify, rebalancing=Rebalancing(enabled=OPTIONS.rebalance))
    memo.resync = asyncio.create_task(_resync(memo.reconciler, kube, OPTIONS, memo))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    kube = memo.get("kube")
    if kube is not None:
        await kube.close()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def reconcile_resource(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    _keep_event_queue(memo)
    reconciler: Reconciler = memo.reconciler
    try:
        outcome = await reconciler.request(namespace or "default", name)
    except KubeError as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    if outcome is not None and outcome.retry:
        raise kopf.TemporaryError("; ".join(outcome.errors), delay=RETRY_DELAY)


async def on_child_event(type: str | None, body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    if type is None or not namespace:  # the initial listing: resume and the resync cover it
        return
    owner = next(
        (
            ref
            for ref in body.metadata.get("ownerReferences") or ()
            if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(GROUP + "/")
        ),
        None,
    )
    if owner is None:
        return
    _keep_event_queue(memo)
    reconciler: Reconciler = memo.reconciler
    try:
        await reconciler.request(namespace, owner["name"])
    except KubeError as exc:
        log.warning(
            "reconcile of %s/%s after a change of its %s failed: %s", namespace, owner["name"], body.get("kind"), exc
        )


for _api_version, _kind in WATCHED:
    _group, _, _version = _api_version.rpartition("/")
    kopf.on.event(_group, _version, plural(_kind), labels={MANAGED_BY: MANAGER}, id=f"child-{_kind}")(on_child_event)


def _keep_event_queue(memo: Any) -> None:
    """Keep kopf's Event queue, found in a handler's context, for the resync task.

    kopf.event() posts through a queue kopf puts in the context of each object's handlers only; the
    resync task is not one of them, so the Events of the reconciles it runs (a rebalancing, a restored
    child) were dropped. (kopf's own names: `posting.event_queue_var`, pinned by the lock file.)
    """
    if memo.get("event_queue") is None:
        with contextlib.suppress(LookupError):
            memo.event_queue = (posting.event_queue_loop_var.get(), posting.event_queue_var.get())


async def _resync(reconciler: Reconciler, kube: LightkubeKube, options: Options, memo: Any) -> None:
    """Reconcile every resource in scope, every `options.resync` seconds, until cancelled."""
    while True:
        await asyncio.sleep(options.resync)
        kept = memo.get("event_queue")
        if kept is not None:  # this task's own context: the Events of its reconciles are posted
            posting.event_queue_loop_var.set(kept[0])
            posting.event_queue_var.set(kept[1])
        for namespace in options.namespaces or (None,):
            try:
                found = await kube.list(API_VERSION, KIND, namespace, {})
            except KubeError as exc:
                log.warning("resync: %s", exc)
                continue
            for obj in found:
                meta = obj["metadata"]
                try:
                    await reconciler.request(meta["namespace"], meta["name"])
                except KubeError as exc:
                    log.warning("resync of %s/%s: %s", meta["namespace"], meta["name"], exc)
