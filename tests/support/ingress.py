"""The Ingress the operator renders, served by a real nginx configured the way ingress-nginx would be.

No Ingress controller runs here, and OSS nginx has no `sticky` directive (ingress-nginx does its
cookie affinity in Lua, rootfs/etc/nginx/lua/balancer/sticky*.lua). So `understand()` reads the
Ingress object (as `plan()` made it) into an `IngressRoute`, and `IngressNginx` renders it as plain
nginx config that reproduces ingress-nginx's observable behaviour for `affinity-mode: persistent`:

* A request without a (valid) affinity cookie goes to a random endpoint (`random` balancer, as
  ingress-nginx's `sticky_persistent` picks at random), and the response sets the cookie naming the
  endpoint that served it. The value is ingress-nginx's: `md5(<backend name><ip:port>)|md5(md5(<backend
  name>)<backend name>)`, the backend name being `<namespace>-<service>-<port>`; nginx cannot hash at run
  time, so the values of all endpoints are computed here and looked up with `map`s.
* A request whose cookie names a live endpoint goes to that endpoint (`map $http_cookie` → an upstream
  group of its own) and gets no new cookie.
* The endpoint fails (connection refused or timed out): with `session-cookie-change-on-failure: "true"`
  the other endpoints are that group's `backup` servers (tried in order, where ingress-nginx picks one of
  them at random), and the response re-pins the client to the one that answered (a new cookie); without
  it, the request fails like ingress-nginx's retries on the same endpoint do. An endpoint no longer in
  the Service's endpoints (a pod gone: `Nginx.reload()` with the live ports) matches no cookie, so the
  client is balanced and re-pinned like a new one.
* Cookie attributes: `Max-Age`, `Path` (the annotation, else the Ingress path), `HttpOnly` (always),
  `Secure` (the annotation), `SameSite` (the annotation), in the order lua-resty-cookie writes them.
* `proxy-read-timeout`, `proxy-send-timeout`, `proxy-connect-timeout` (defaults 60, 60, 5 s), HTTP/1.1 with
  `Upgrade`/`Connection` passed as ingress-nginx does for every location, `proxy_next_upstream error
  timeout` (its default), no passive health checks (its Lua balancer keeps none).

Anything else the Ingress asks for — an annotation not listed in `ANNOTATIONS`, `affinity-mode:
balanced`, `session-cookie-expires` (now + N needs Lua), TLS, more than one rule or path — raises
`NotEmulated`, so a change in operator/hubbub_operator/exposure.py cannot go untested silently.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Final

from tests.support.nginx import health_location
from tests.support.procs import quote

PREFIX: Final = "nginx.ingress.kubernetes.io/"
#: The annotations emulated (without PREFIX); any other one raises NotEmulated.
ANNOTATIONS: Final = frozenset(
    {
        "proxy-read-timeout",
        "proxy-send-timeout",
        "proxy-connect-timeout",
        "affinity",
        "affinity-mode",
        "session-cookie-name",
        "session-cookie-path",
        "session-cookie-max-age",
        "session-cookie-samesite",
        "session-cookie-secure",
        "session-cookie-change-on-failure",
    }
)
#: ingress-nginx's defaults (docs: user-guide/nginx-configuration/configmap).
DEFAULT_TIMEOUTS: Final = {"proxy-read-timeout": 60, "proxy-send-timeout": 60, "proxy-connect-timeout": 5}
DEFAULT_COOKIE: Final = "INGRESSCOOKIE"
_COOKIE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PATH = re.compile(r"/[A-Za-z0-9_.~/-]*")


class NotEmulated(ValueError):
    """The Ingress asks for something this emulation does not reproduce; the message says what."""


@dataclass(frozen=True)
class Affinity:
    """Cookie affinity as ingress-nginx applies it (`affinity: cookie`, `affinity-mode: persistent`)."""

    cookie: str
    path: str
    max_age: int | None
    samesite: str | None
    secure: bool
    change_on_failure: bool


@dataclass(frozen=True)
class IngressRoute:
    """One Ingress rule and path, to one Service port, as ingress-nginx would serve it."""

    host: str | None
    path: str
    #: ingress-nginx's upstream name, `<namespace>-<service>-<port>`: the salt of the cookie values.
    backend: str
    read_timeout: int
    send_timeout: int
    connect_timeout: int
    affinity: Affinity | None


def understand(ingress: dict[str, Any]) -> IngressRoute:
    """The route an Ingress object asks for; NotEmulated for anything this module cannot reproduce."""
    if ingress.get("apiVersion") != "networking.k8s.io/v1" or ingress.get("kind") != "Ingress":
        raise NotEmulated(f"not a networking.k8s.io/v1 Ingress: {ingress.get('apiVersion')}/{ingress.get('kind')}")
    meta = ingress["metadata"]
    spec = ingress["spec"]
    notes: dict[str, str] = dict(meta.get("annotations") or {})
    unknown = sorted(k for k in notes if not k.startswith(PREFIX) or k.removeprefix(PREFIX) not in ANNOTATIONS)
    if unknown:
        raise NotEmulated(f"annotations not emulated: {', '.join(unknown)}")
    ours = {k.removeprefix(PREFIX): v for k, v in notes.items()}
    if spec.get("tls"):
        raise NotEmulated("TLS termination is not emulated (the emulation listens on plain HTTP)")
    if set(spec) - {"rules", "ingressClassName"}:
        raise NotEmulated(f"Ingress spec fields not emulated: {sorted(set(spec) - {'rules', 'ingressClassName'})}")
    rules = spec.get("rules") or []
    if len(rules) != 1 or len(rules[0]["http"]["paths"]) != 1:
        raise NotEmulated("only one rule with one path is emulated")
    rule = rules[0]
    entry = rule["http"]["paths"][0]
    if entry["pathType"] != "Prefix":
        raise NotEmulated(f"pathType {entry['pathType']} is not emulated (Prefix is)")
    path = entry["path"]
    if not _PATH.fullmatch(path):
        raise NotEmulated(f"path {path!r} is not emulated (plain prefixes are)")
    service = entry["backend"]["service"]
    port = service["port"].get("name", service["port"].get("number"))
    return IngressRoute(
        host=rule.get("host"),
        path=path,
        backend=f"{meta['namespace']}-{service['name']}-{port}",
        read_timeout=_seconds(ours, "proxy-read-timeout"),
        send_timeout=_seconds(ours, "proxy-send-timeout"),
        connect_timeout=_seconds(ours, "proxy-connect-timeout"),
        affinity=_affinity(ours, path),
    )


def _seconds(notes: dict[str, str], key: str) -> int:
    raw = notes.get(key, str(DEFAULT_TIMEOUTS[key]))
    if not raw.isdigit() or int(raw) < 1:
        raise NotEmulated(f"{PREFIX}{key} must be a whole number of seconds, not {raw!r}")
    return int(raw)


def _flag(notes: dict[str, str], key: str) -> bool:
    raw = notes.get(key, "false")
    if raw not in ("true", "false"):
        raise NotEmulated(f'{PREFIX}{key} must be "true" or "false", not {raw!r}')
    return raw == "true"


def _affinity(notes: dict[str, str], location: str) -> Affinity | None:
    cookie_keys = sorted(k for k in notes if k.startswith(("affinity", "session-cookie-")))
    kind = notes.get("affinity")
    if kind is None:
        if cookie_keys:
            raise NotEmulated(f"cookie annotations without {PREFIX}affinity: {cookie_keys}")
        return None
    if kind != "cookie":
        raise NotEmulated(f"{PREFIX}affinity {kind!r} is not emulated (cookie is)")
    mode = notes.get("affinity-mode", "balanced")
    if mode != "persistent":
        raise NotEmulated(f"{PREFIX}affinity-mode {mode!r} is not emulated (persistent is)")
    name = notes.get("session-cookie-name", DEFAULT_COOKIE)
    if not _COOKIE_NAME.fullmatch(name):
        raise NotEmulated(f"{PREFIX}session-cookie-name {name!r} is not emulated (letters, digits, _ . -)")
    path = notes.get("session-cookie-path", location)
    if not _PATH.fullmatch(path):
        raise NotEmulated(f"{PREFIX}session-cookie-path {path!r} is not emulated (a plain path is)")
    max_age = notes.get("session-cookie-max-age")
    if max_age is not None and not max_age.isdigit():
        raise NotEmulated(f"{PREFIX}session-cookie-max-age must be a number of seconds, not {max_age!r}")
    samesite = notes.get("session-cookie-samesite")
    if samesite is not None and samesite not in ("None", "Lax", "Strict"):
        raise NotEmulated(f"{PREFIX}session-cookie-samesite {samesite!r} is not None, Lax or Strict")
    return Affinity(
        cookie=name,
        path=path,
        max_age=int(max_age) if max_age is not None else None,
        samesite=samesite,
        secure=_flag(notes, "session-cookie-secure"),
        change_on_failure=_flag(notes, "session-cookie-change-on-failure"),
    )


def endpoint(port: int) -> str:
    """An endpoint of the Service, as ingress-nginx names it: `ip:port` (the pods are local processes here)."""
    return f"127.0.0.1:{port}"


def cookie_value(route: IngressRoute, port: int) -> str:
    """ingress-nginx's cookie value for an endpoint: `<upstream key>|<backend key>` (balancer/sticky.lua);
    only the upstream key routes."""
    return f"{_upstream_key(route, port)}|{_md5(_md5(route.backend) + route.backend)}"


def _upstream_key(route: IngressRoute, port: int) -> str:
    """The endpoint's key in ingress-nginx's node map: the md5 of it salted with the backend name (util/nodemap.lua)."""
    return _md5(route.backend + endpoint(port))


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def set_cookie(route: IngressRoute, port: int) -> str:
    """The Set-Cookie value pinning a client to the endpoint on `port`."""
    affinity = route.affinity
    if affinity is None:
        raise ValueError("this Ingress has no cookie affinity")
    parts = [f"{affinity.cookie}={cookie_value(route, port)}"]
    if affinity.max_age is not None:
        parts.append(f"Max-Age={affinity.max_age}")
    parts.append(f"Path={affinity.path}")
    if affinity.secure:
        parts.append("Secure")
    parts.append("HttpOnly")
    if affinity.samesite is not None:
        parts.append(f"SameSite={affinity.samesite}")
    return "; ".join(parts)


class IngressNginx:
    """A `Routing` for tests.support.nginx.Nginx: the Ingress of `route`, its endpoints the upstream ports."""

    def __init__(self, route: IngressRoute) -> None:
        self.route = route

    def http_block(self, port: int, upstreams: list[int]) -> str:
        route = self.route
        affinity = route.affinity
        names = {p: f"endpoint_{p}" for p in upstreams}
        blocks = [self._upstream("hubbub_balanced", upstreams, primary=None)]
        if affinity is not None:
            blocks += [self._upstream(names[p], upstreams, primary=p) for p in upstreams]
            blocks += [self._maps(affinity, names)]
            target = "$affinity_upstream"
            cookie_header = "            add_header Set-Cookie $affinity_set_cookie always;\n"
        else:
            target = "hubbub_balanced"
            cookie_header = ""
        host = route.host
        locations = (
            [f"location {route.path}"]
            if route.path == "/"
            else [
                f"location = {route.path}",
                f"location {route.path.rstrip('/')}/",
            ]
        )
        proxied = "".join(
            f"""\
        {loc} {{
            proxy_pass http://{target};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout {route.connect_timeout}s;
            proxy_read_timeout {route.read_timeout}s;
            proxy_send_timeout {route.send_timeout}s;
            proxy_buffering off;
            proxy_next_upstream error timeout;
{cookie_header}        }}
"""
            for loc in locations
        )
        # ingress-nginx answers a Host no rule names (or a path no rule matches) from its default backend: 404.
        default_server = f"""\
    server {{
        listen 127.0.0.1:{port} default_server;
{health_location(port)}
        location / {{
            return 404;
        }}
    }}
"""
        ingress_server = f"""\
    server {{
        listen 127.0.0.1:{port};
        server_name {host};
{health_location(port)}
{proxied}    }}
"""
        if host is None:
            # No host: the rule is the catch-all, and an unmatched path is the default backend's.
            if route.path != "/":
                proxied += "        location / {\n            return 404;\n        }\n"
            ingress_server = f"""\
    server {{
        listen 127.0.0.1:{port} default_server;
{health_location(port)}
{proxied}    }}
"""
            default_server = ""
        return "\n".join([*blocks, default_server + ingress_server])

    def _upstream(self, name: str, upstreams: list[int], *, primary: int | None) -> str:
        # max_fails=0: ingress-nginx's Lua balancer keeps no passive health state; a failed endpoint is
        # tried again by the next request.
        if primary is None:
            servers = [f"        server {endpoint(p)} max_fails=0;" for p in upstreams]
            return f"    upstream {name} {{\n        random;\n" + "\n".join(servers) + "\n    }\n"
        servers = [f"        server {endpoint(primary)} max_fails=0;"]
        affinity = self.route.affinity
        if affinity is not None and affinity.change_on_failure:
            servers += [f"        server {endpoint(p)} max_fails=0 backup;" for p in upstreams if p != primary]
        return f"    upstream {name} {{\n" + "\n".join(servers) + "\n    }\n"

    def _maps(self, affinity: Affinity, names: dict[int, str]) -> str:
        cookie = re.escape(affinity.cookie)
        pinned = "\n".join(
            f'        "~(?:^|;\\s*){cookie}={_upstream_key(self.route, p)}(?:\\|[^;]*)?(?:;|$)" {names[p]};'
            for p in names
        )
        served = "\n".join(f'        "~(?:^|, ){re.escape(endpoint(p))}$" {names[p]};' for p in names)
        # A new cookie when the endpoint that answered is not the one the request's cookie named.
        changes = "\n".join(
            f'        "{before}>{names[p]}" {quote(set_cookie(self.route, p))};'
            for p in names
            for before in ["", *(names[q] for q in names if q != p)]
        )
        return f"""\
    # The endpoint the request's affinity cookie names ("" for none, or one no longer in the endpoints).
    map $http_cookie $affinity_pinned {{
        default "";
{pinned}
    }}

    map $affinity_pinned $affinity_upstream {{
        default hubbub_balanced;
{chr(10).join(f"        {n} {n};" for n in names.values())}
    }}

    # The endpoint that answered: the last address nginx tried.
    map $upstream_addr $affinity_served {{
        default "";
{served}
    }}

    map "$affinity_pinned>$affinity_served" $affinity_set_cookie {{
        default "";
{changes}
    }}
"""
