"""Rows of the field table taken from hubbub itself, never re-typed: the settings handed to the pods
(from `hubbub.settings.Settings`) and the alert thresholds (from `hubbub.monitoring.alerts.Thresholds`).

A setting the operator decides (the mode, where to listen, the node's name, the token keys and the
Redis connection: `OWNED`) is left out of `spec.settings`; the rest keep the service's names,
descriptions and bounds. No schema defaults: what is not given stays out of the stored object and
the config file, and the service's own default applies (the docs show it).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any, Final

from hubbub.monitoring import alerts
from hubbub.settings import Settings
from hubbub_operator.field import MISSING, Field

DEFAULT_RUNBOOK_BASE_URL: Final = alerts.DEFAULT_RUNBOOK_BASE_URL

#: Settings the operator writes itself, and the part of the spec (or the pod) that decides them.
OWNED: Final[dict[str, str]] = {
    "mode": "always production",
    "host": "0.0.0.0 in the pod",
    "port": "8000 in the pod; the Service's port is exposure.service.port",
    "node_name": "the pod's name",
    "jwt_secret": "auth.jwtSecretRef",
    "jwt_public_key": "auth.publicKeySecretRef",
    "jwt_public_key_file": "auth.publicKeySecretRef",
    "jwt_jwks_url": "auth.jwksURL",
    "jwt_audience": "auth.audience",
    "jwt_issuer": "auth.issuer",
    "api_key": "auth.apiKeySecretRef",
    "redis_url": "redis",
    "redis_sentinels": "redis.external.sentinels.addresses",
    "redis_sentinel_service": "redis.external.sentinels.service",
    "redis_cluster_nodes": "redis.external.cluster.nodes",
    "config_file": "the ConfigMap the operator writes",
}

#: A Prometheus duration, as the alert rules' `for` and windows take it.
PROMETHEUS_DURATION: Final = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)


# -- settings --------------------------------------------------------------------------------------


def settings_fields(prefix: str) -> tuple[Field, ...]:
    model = Settings.model_json_schema()
    definitions = model.get("$defs", {})
    rows = [
        Field(
            prefix,
            "object",
            "hubbub's settings for the pods (docs/configuration.md), by their names in the config file. The "
            "operator decides mode, host, port, node_name, the token keys and the Redis connection from the "
            "rest of the spec; the others are here, checked by hubbub's own settings model before any pod "
            "sees them.",
        )
    ]
    for name, prop in model["properties"].items():
        if name in OWNED:
            continue
        rows += _json_schema_rows(f"{prefix}.{name}", prop, definitions)
    return tuple(rows)


def _resolve(prop: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """An Optional's non-null branch, and a `$ref` inlined (its own description kept when it has one)."""
    if "anyOf" in prop:
        (kept,) = [p for p in prop["anyOf"] if p.get("type") != "null"]
        merged = {k: v for k, v in prop.items() if k != "anyOf"}
        return _resolve({**kept, **merged}, definitions)
    if "$ref" in prop:
        target = definitions[prop["$ref"].rpartition("/")[2]]
        merged = {k: v for k, v in prop.items() if k != "$ref"}
        return {**target, **merged}
    return prop


def _json_schema_rows(path: str, raw: dict[str, Any], definitions: dict[str, Any]) -> list[Field]:
    prop = _resolve(raw, definitions)
    description = prop.get("description", "").strip()
    shown = prop.get("default", MISSING)
    if shown is None or shown == [] or shown == {}:
        shown = MISSING
    kind = prop.get("type")
    if kind == "object" and "properties" in prop:
        rows = [Field(path, "object", description)]
        for name, child in prop["properties"].items():
            rows += _json_schema_rows(f"{path}.{name}", child, definitions)
        return rows
    if kind == "object":
        values = prop.get("additionalProperties")
        assert isinstance(values, dict), f"{path}: a mapping without a value schema"
        rows = [Field(path, "map", description)]
        return rows + _json_schema_rows(f"{path}.*", values, definitions)
    if kind == "array":
        items = _resolve(prop["items"], definitions)
        return [Field(path, "array", description, items=items["type"], max_items=256, shown_default=shown)]
    if "const" in prop or "enum" in prop:
        choices = tuple(str(c) for c in prop.get("enum", [prop.get("const")]))
        return [Field(path, "string", description, enum=choices, shown_default=shown)]
    assert kind in ("string", "integer", "number", "boolean"), f"{path}: unexpected type {kind!r}"
    bounds: dict[str, Any] = {}
    if "minimum" in prop:
        bounds["minimum"] = prop["minimum"]
    if "exclusiveMinimum" in prop:
        bounds["minimum"], bounds["above"] = prop["exclusiveMinimum"], True
    if "maximum" in prop:
        bounds["maximum"] = prop["maximum"]
    if "pattern" in prop:
        bounds["pattern"] = prop["pattern"]
    if kind == "string":
        bounds["max_length"] = 2048
    return [Field(path, kind, description, shown_default=shown, **bounds)]


# -- alert thresholds ------------------------------------------------------------------------------


def threshold_fields(prefix: str) -> tuple[Field, ...]:
    defaults = alerts.Thresholds()
    hints = typing.get_type_hints(alerts.Thresholds)
    rows = [
        Field(
            prefix,
            "object",
            "The alert rules' thresholds, windows and `for` durations (hubbub.monitoring.alerts.Thresholds); "
            "each unset one keeps its default.",
        )
    ]
    comments = threshold_comments()
    for f in dataclasses.fields(alerts.Thresholds):
        default = getattr(defaults, f.name)
        tuned = ", ".join(tunes(f.name)) or "no alert"
        said = comments.get(f.name, "")
        if f.name.endswith("_for"):
            said = "How long the condition must hold before the alert fires."
        text = f"{said} Tunes {tuned} (docs/runbooks.md).".strip()
        path = f"{prefix}.{f.name}"
        hint = hints[f.name]
        if hint is str:
            rows.append(Field(path, "string", text, pattern=PROMETHEUS_DURATION, max_length=32, shown_default=default))
        elif hint is float:
            rows.append(Field(path, "number", text, shown_default=default, **_ratio_bounds(f.name, default)))
        elif hint is int:
            rows.append(Field(path, "integer", text, minimum=0, shown_default=default))
        elif typing.get_origin(hint) is tuple:
            rows.append(
                Field(
                    path,
                    "array",
                    text + " Close codes, as text.",
                    items="string",
                    max_items=64,
                    shown_default=list(default),
                    extra={"items": {"type": "string", "pattern": "^[0-9]{4}$"}},
                )
            )
        else:
            raise TypeError(f"Thresholds.{f.name}: no schema for {hint!r}")
    return tuple(rows)


def _ratio_bounds(name: str, default: float) -> dict[str, Any]:
    """A ratio at most 1 by default is a fraction (0 to 1); one above is a multiplier (at least 1)."""
    if name.endswith("_ratio"):
        return {"minimum": 0, "maximum": 1} if default <= 1 else {"minimum": 1}
    return {"minimum": 0}


def tunes(name: str) -> list[str]:
    """The alerts whose rule changes when threshold `name` does (found by changing it)."""
    base = alerts.Thresholds()
    value = getattr(base, name)
    if isinstance(value, str):
        other: Any = "7m13s"
    elif isinstance(value, tuple):
        other = ("9999",)
    else:
        other = value * 3 + 7
    changed = dataclasses.replace(base, **{name: other})
    return [a.name for a in alerts.ALERTS if alerts.rule(a, base) != alerts.rule(a, changed)]


def threshold_comments() -> dict[str, str]:
    """What the source says of each Thresholds field: its `#:` lines, its trailing comment, or the
    comment heading its group (the lines up to the next blank one)."""
    found: dict[str, str] = {}
    group = own = ""
    for raw in inspect.getsource(alerts.Thresholds).splitlines():
        line = raw.strip()
        if not line:
            group = own = ""
        elif line.startswith("#:"):
            own = f"{own} {line[2:].strip()}".strip()
        elif line.startswith("#"):
            group = f"{group} {line[1:].strip()}".strip()
        elif match := re.match(r"^(\w+): [^=]+=[^#]*(#(.*))?$", line):
            trailing = (match.group(3) or "").strip()
            text = own or (f"{group} ({trailing})" if group and trailing else group or trailing)
            found[match.group(1)] = _sentence(re.sub(r"^Hubbub\w+: ", "", text))
            own = ""
    return found


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if not text or text.endswith(".") else ".")
