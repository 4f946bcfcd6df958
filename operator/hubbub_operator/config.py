"""The pods' hubbub settings: the ConfigMap `<name>-config` holding `config.json`.

The file holds `spec.settings` as given plus what the operator decides (production mode, where to
listen, the token key's file or JWKS URL, audience and issuer, Sentinel addresses). Secrets never go
in it: the pods get them as `HUBBUB_*` variables from Secrets (workload.py). Before anything is
built, the whole is checked by hubbub's own settings model, with stand-ins for the values that only
the pods will see, so a spec the service would refuse becomes a message in status, not a
crash-looping pod.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from hubbub.loader import Sources, describe
from hubbub.settings import Settings
from hubbub_operator.resource import Instance, manifest

CONFIG_DIR: Final = "/etc/hubbub"
CONFIG_FILE: Final = f"{CONFIG_DIR}/config.json"
PUBLIC_KEY_DIR: Final = "/var/run/hubbub/jwt"
REDIS_CA_DIR: Final = "/var/run/hubbub/redis-ca"
PORT: Final = 8000

#: Stand-ins for what the pods read from Secrets and the downward API, for checking only.
_STAND_INS: Final[dict[str, str]] = {
    "jwt_secret": "x" * 32,
    "api_key": "stand-in",
    "redis_url": "redis://stand-in:6379/0",
    "node_name": "stand-in",
}
#: Where each operator-written setting comes from in the spec, for messages.
_ORIGIN: Final[dict[str, str]] = {
    "jwt_public_key_file": "spec.auth.publicKeySecretRef",
    "jwt_jwks_url": "spec.auth.jwksURL",
    "jwt_audience": "spec.auth.audience",
    "jwt_issuer": "spec.auth.issuer",
    "redis_sentinels": "spec.redis.external.sentinels.addresses",
    "redis_sentinel_service": "spec.redis.external.sentinels.service",
    "redis_cluster_nodes": "spec.redis.external.cluster.nodes",
}


@dataclass(frozen=True)
class Rendered:
    """config.json's mapping and its text, the settings the pods will run with, and what is wrong."""

    config: dict[str, Any]
    text: str
    settings: Settings | None
    problems: list[str] = field(default_factory=list)


def config(instance: Instance) -> dict[str, Any]:
    """The mapping config.json holds."""
    spec = instance.spec
    out: dict[str, Any] = dict(spec.get("settings") or {})
    out.update(mode="production", host="0.0.0.0", port=PORT)
    auth = instance.section("auth")
    if "publicKeySecretRef" in auth:
        out["jwt_public_key_file"] = f"{PUBLIC_KEY_DIR}/{auth['publicKeySecretRef']['key']}"
    if "jwksURL" in auth:
        out["jwt_jwks_url"] = auth["jwksURL"]
    if "audience" in auth:
        out["jwt_audience"] = auth["audience"]
    if "issuer" in auth:
        out["jwt_issuer"] = auth["issuer"]
    redis = instance.section("redis")
    if redis["mode"] == "external" and instance.has("redis.external.sentinels"):
        sentinels = instance.section("redis.external.sentinels")
        out["redis_sentinels"] = list(sentinels["addresses"])
        out["redis_sentinel_service"] = sentinels["service"]
    if redis["mode"] == "external" and instance.has("redis.external.cluster"):
        out["redis_cluster_nodes"] = list(instance.section("redis.external.cluster")["nodes"])
    return dict(sorted(out.items()))


def render(instance: Instance) -> Rendered:
    mapping = config(instance)
    text = json.dumps(mapping, indent=2) + "\n"
    env = {"jwt_secret": "jwtSecretRef" in instance.section("auth"), "api_key": True, "node_name": True}
    env["redis_url"] = instance.section("redis")["mode"] != "none"
    checked = {**mapping, **{k: v for k, v in _STAND_INS.items() if env.get(k)}, "config_file": Path(CONFIG_FILE)}
    try:
        settings = Settings.model_validate(checked)
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors(include_url=False)]
        return Rendered(mapping, text, None, problems)
    return Rendered(mapping, text, settings)


def _problem(error: Any) -> str:
    """One of hubbub's own validation messages, naming the spec field it came from."""
    top = str(error["loc"][0]) if error["loc"] else ""
    origin = _ORIGIN.get(top, "spec.settings")
    line = describe(error, Sources(Path(origin), frozenset(), frozenset())).strip()
    if origin == "spec.settings" and top:
        # `history_size (spec.settings): ...` reads better as the field's full path.
        line = line.replace(f" ({origin}):", ":", 1)
        line = f"spec.settings.{line}"
    return f"settings refused by hubbub: {line}"


def config_map(instance: Instance, rendered: Rendered) -> dict[str, Any]:
    return manifest(
        "v1",
        "ConfigMap",
        instance.metadata(f"{instance.name}-config", "server"),
        data={"config.json": rendered.text},
    )
