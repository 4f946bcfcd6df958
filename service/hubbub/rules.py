"""Room rules: names, namespaces and claim-based permissions. Pure functions."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from hubbub.codes import CommandError, ErrorCode
from hubbub.settings import NamespaceOptions, Settings
from hubbub.types import Room

_ROOM_RE = re.compile(r"[A-Za-z0-9_\-:.@/=]{1,255}")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_\-.@/=]{1,254}")
_PLAIN_NAME_RE = re.compile(r"[A-Za-z0-9_\-.=@]{1,253}")


def is_valid_room(name: object) -> bool:
    return isinstance(name, str) and _ROOM_RE.fullmatch(name) is not None


def is_valid_namespace(name: str) -> bool:
    """A namespace is what a room name holds before its first `:`."""
    return _NAMESPACE_RE.fullmatch(name) is not None


def is_plain_name(name: str) -> bool:
    """Safe inside Redis client names and keys: no spaces, no hash-tag braces, at most 253 characters."""
    return _PLAIN_NAME_RE.fullmatch(name) is not None


def namespace_of(room: str) -> str:
    """The part before the first `:`; "" (the default namespace) for names without one."""
    head, sep, _ = room.partition(":")
    return head if sep else ""


def check_room(name: object) -> Room:
    if not is_valid_room(name):
        raise CommandError(ErrorCode.BAD_REQUEST, "room names are 1-255 characters of A-Z a-z 0-9 _ - : . @ / =")
    assert isinstance(name, str)
    return Room(name)


def room_options(settings: Settings, room: str) -> NamespaceOptions:
    options = settings.namespace(namespace_of(room))
    if options is None:
        raise CommandError(ErrorCode.NOT_FOUND, f"unknown namespace {namespace_of(room)!r}")
    return options


@functools.lru_cache(maxsize=4096)
def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    alternatives = "|".join(".*".join(re.escape(part) for part in p.split("*")) for p in patterns)
    return re.compile(f"(?:{alternatives})", re.DOTALL)


def matches_any(patterns: Sequence[str], room: str) -> bool:
    """Claim globs: `*` matches any characters, `:` and `/` included; everything else is literal."""
    compiled = _compile(tuple(patterns))
    return compiled is not None and compiled.fullmatch(room) is not None


def check_join(rooms_claim: Sequence[str], room: str, options: NamespaceOptions) -> None:
    if not (options.public or matches_any(rooms_claim, room)):
        raise CommandError(ErrorCode.FORBIDDEN, "the token does not allow joining this room")


def check_read(rooms_claim: Sequence[str], room: str) -> None:
    """`history` and `presence` need a matching `rooms` claim, not membership (rule 7)."""
    if not matches_any(rooms_claim, room):
        raise CommandError(ErrorCode.FORBIDDEN, "the token does not allow reading this room")


def check_publish(publish_claim: Sequence[str], room: str, options: NamespaceOptions) -> None:
    if not options.client_publish:
        raise CommandError(ErrorCode.FORBIDDEN, "client publish is disabled in this namespace")
    if not matches_any(publish_claim, room):
        raise CommandError(ErrorCode.FORBIDDEN, "the token does not allow publishing to this room")


def _port_less(host: str) -> bool:
    return not host.rpartition("]")[2].count(":")  # "[::1]" has no port; "[::1]:80" and "a:80" do


def _strip_port(host: str) -> str:
    return host.rsplit(":", 1)[0] if not _port_less(host) else host


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """Cross-site WebSocket hijacking guard for the upgrade request.

    No Origin header means a non-browser client (browsers always send one). A browser page
    may connect from the service's own origin, or from an origin matching `allowed`. A Host
    without a port matches the origin's host name on any port: proxies commonly rewrite Host
    to `$host`, which drops the port, and pages on one host name are the same site anyway.
    """
    if origin is None:
        return True
    if "*" in allowed:
        return True
    _, sep, rest = origin.partition("://")
    if sep and host is not None:
        origin_host, host = rest.lower(), host.lower()
        if origin_host == host or (_port_less(host) and _strip_port(origin_host) == host):
            return True
    return matches_any(tuple(allowed), origin)


def origin_permitted(origin: str | None, host: str | None, settings: Settings) -> bool:
    """The origin check as configured: for WebSocket upgrades and for CORS on the client library.

    Development mode admits every origin: its credentials are published at start-up, so the check
    would protect nothing, and an application under development is usually served from another
    port (`http://localhost:3000`) than the node it talks to.
    """
    return settings.development or origin_allowed(origin, host, settings.allowed_origins)
