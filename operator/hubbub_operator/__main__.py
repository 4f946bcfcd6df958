"""`python -m hubbub_operator` (or `hubbub-operator`): run the operator.

    hubbub-operator --all-namespaces                 # every namespace (a ClusterRole)
    hubbub-operator --namespace chat --namespace ops  # only these (a Role in each, deploy/rbac-namespaced.yaml)

The API is reached with $KUBECONFIG, else the pod's ServiceAccount. kopf serves its liveness probe
at --liveness (GET /healthz). With kopf's peering objects installed (docs/operator.md) and
--peering default, replicas of the operator elect one active member by --priority, each handling
nothing until it knows it is the one; without them each runs standalone.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys

import aiohttp
import kopf

from hubbub_operator import handlers

LIVENESS = "http://0.0.0.0:8080/healthz"


class UnreachableApi(logging.Filter):
    """Keeps a connection failure to the API server to its message, without the traceback.

    kopf retries each request five times (logging every attempt) and then logs the observer's
    failure with the whole aiohttp traceback before it stops; `main` then says in one line what
    failed. The traceback tells a user nothing the message does not, and bad configuration (a
    wrong server address, no network policy for the API) must not print one.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], aiohttp.ClientConnectionError):
            record.exc_info = None
            record.exc_text = None
        return True


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hubbub-operator", description="Reconciles RealtimeServices (hubbub.dev).")
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], metavar="NAME", help="watch this namespace (repeatable)"
    )
    parser.add_argument("--liveness", default=LIVENESS, metavar="URL", help=f"health endpoint (default {LIVENESS})")
    parser.add_argument(
        "--resync-seconds", type=float, default=30.0, metavar="S", help="reconcile everything every S seconds"
    )
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--standalone", action="store_true", help="no peering, even if a peering object exists")
    peering.add_argument(
        "--peering",
        metavar="NAME",
        help="join this peering object and handle nothing until elected (for more than one replica: "
        "without it, a replica starting next to a working one may act before it sees the peering)",
    )
    parser.add_argument(
        "--priority", type=int, default=None, help="peering priority (default: random, so two replicas never tie)"
    )
    parser.add_argument(
        "--no-rebalance",
        action="store_true",
        help="never call the pods' HTTP API to rebalance their connections, whatever spec.rebalance says "
        "(for clusters whose pod IPs the operator cannot or must not reach)",
    )
    parser.add_argument("--verbose", action="store_true", help="kopf's debug logs")
    args = parser.parse_args(argv)
    if args.resync_seconds < 1:
        parser.error("--resync-seconds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    priority = args.priority if args.priority is not None else random.randint(1, 32767)
    handlers.configure(
        handlers.Options(
            namespaces=tuple(args.namespace),
            resync=args.resync_seconds,
            priority=priority,
            rebalance=not args.no_rebalance,
        )
    )
    kopf.configure(verbose=args.verbose)
    for handler in logging.getLogger().handlers:
        handler.addFilter(UnreachableApi())
    try:
        kopf.run(
            clusterwide=args.all_namespaces,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness or None,
            standalone=True if args.standalone else None,
            peering_name=args.peering,
            priority=priority,
        )
    except KeyboardInterrupt:
        return 130
    except aiohttp.ClientConnectionError as error:
        print(f"hubbub-operator: cannot reach the Kubernetes API server: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
