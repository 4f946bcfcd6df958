"""The open-file limit, and the connections a node can hold within it.

Every connection is a file descriptor, and so is every connection still sending its request head.
When a process runs out of them, `accept()` fails with EMFILE: under uvloop the client's connection
ends without any HTTP response and nothing is logged (measured: with a limit of 256, connection 243
on failed so, silently), so clients fail in a way they cannot act on and operators see nothing.
So `serve` raises its soft limit to what `max_connections` and
`max_pending_handshakes` need (up to the hard limit, which only a privileged process can raise),
and when even the hard limit is too low it serves fewer connections, closing the next one with
1013 like any node at capacity, and says so once at start-up.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

#: Descriptors kept for everything else: the listening sockets, Redis, logs, the event loop's own.
RESERVE = 64
#: At most this share of the limit goes to connections still sending their request head.
PENDING_SHARE = 4


@dataclass(frozen=True)
class Budget:
    """What a node may hold under an open-file limit of `limit`."""

    limit: int
    needed: int
    max_connections: int
    max_pending_handshakes: int

    @property
    def short(self) -> bool:
        return self.limit < self.needed


def needed(max_connections: int, max_pending_handshakes: int) -> int:
    """Descriptors a node needs to hold `max_connections` with `max_pending_handshakes` more arriving."""
    return max_connections + max_pending_handshakes + RESERVE


def budget(limit: int, max_connections: int, max_pending_handshakes: int) -> Budget:
    """The connection limits that fit in `limit` descriptors: the configured ones when they fit, else
    fewer pending handshakes (at most a quarter of the limit) and the rest for connections."""
    need = needed(max_connections, max_pending_handshakes)
    if limit >= need:
        return Budget(limit, need, max_connections, max_pending_handshakes)
    pending = max(1, min(max_pending_handshakes, limit // PENDING_SHARE))
    connections = max(1, min(max_connections, limit - pending - RESERVE))
    return Budget(limit, need, connections, pending)


def raise_soft_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (never above the hard limit, never
    lower); the soft limit it ends with. RLIM_INFINITY counts as unlimited."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted if soft == resource.RLIM_INFINITY else soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def describe(found: Budget) -> str:
    """The start-up warning for a budget that is short."""
    return (
        f"the open-file limit ({found.limit}) is below max_connections + max_pending_handshakes + {RESERVE}"
        f" ({found.needed}): this node holds at most {found.max_connections} connections (the next is closed"
        f" 1013) and {found.max_pending_handshakes} pending handshakes. Raise the limit (`ulimit -n`, the"
        " container runtime's nofile) or lower max_connections"
    )
