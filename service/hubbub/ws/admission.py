"""Who may open a WebSocket on this node: the origin and token policy of the upgrade.

`handshake` says what a request is and whether it is a valid upgrade; this module applies the
node's policy to it, and logs and counts what it refuses. In the order the connection asks:
`check_origin` (403), then `upgrade_token` and, when the request carries one, `authenticate`
(401). Room for one more is the node's to judge once the session exists (`Node.attach`: a
WebSocket close, 1012 draining or 1013 full, after the upgrade, not an HTTP error).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs

from hubbub.auth import AuthError, Principal
from hubbub.refusals import REFUSALS
from hubbub.session import log_auth_failure
from hubbub.ws import handshake
from hubbub.ws.handshake import Refusal, UpgradeRequest

if TYPE_CHECKING:
    from hubbub.node import Node

#: The app has no node yet (its start-up is under way). Counted by the connection when it is made,
#: where the app's metrics are at hand.
STARTING: Final = Refusal(503, "the node is starting", None)


def check_origin(request: UpgradeRequest, node: Node) -> Refusal | None:
    """handshake.check_origin, with the refused origin logged (within bounds: hubbub.refusals)."""
    refusal = handshake.check_origin(request, node.settings)
    if refusal is not None:
        REFUSALS.refused(request.headers.get("origin") or "", "a WebSocket", node.settings.allowed_origins)
    return refusal


def upgrade_token(request: UpgradeRequest) -> str | None:
    """A token sent with the upgrade: `Authorization: Bearer`, else the `token` query parameter.

    Rare: a client normally sends its token in `connect`. Browsers can send neither header nor
    command before the upgrade, so the query parameter is for clients that must authenticate first.
    """
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    tokens = parse_qs(request.query).get("token")
    return tokens[0] if tokens else None


async def authenticate(node: Node, token: str) -> Principal | Refusal:
    """Who the token says the client is, or a 401 with the reason (counted and logged, never the token)."""
    try:
        return await node.auth.authenticate(token)
    except AuthError as exc:
        node.metrics.auth_failures.add(1, {"reason": exc.reason})
        log_auth_failure(exc.reason, exc.message, where="WebSocket upgrade")
        return Refusal(401, exc.message, "auth")
