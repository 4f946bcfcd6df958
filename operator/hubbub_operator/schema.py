"""The field table as an OpenAPI v3 structural schema, and the API server's defaulting in Python.

`spec_schema()` is what the CRD carries under `spec`; `with_defaults()` applies its `default`s the
way the API server does (a missing property with a default gets it, then everything present is
defaulted within), so the builders see what the API server would have stored, and a test checks
the two agree on every example.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable
from typing import Any

from hubbub_operator import fields
from hubbub_operator.field import Field


def build(rows: Iterable[Field], *, description: str) -> dict[str, Any]:
    """The schema of an object whose rows have paths relative to it."""
    root: dict[str, Any] = {"type": "object", "description": description}
    nodes: dict[str, dict[str, Any]] = {"": root}
    for row in rows:
        parent_path, sep, _ = _split(row.path)
        parent = nodes.get(parent_path)
        assert parent is not None, f"{row.path}: its parent {parent_path!r} comes later or is missing"
        node = row.schema()
        if sep == "*":
            parent["additionalProperties"] = node
        elif sep == "[]":
            parent["items"] = node
        else:
            parent.setdefault("properties", {})[row.name] = node
            if row.required:
                parent.setdefault("required", []).append(row.name)
        nodes[row.path] = node
    # An object's default `{}` is stored as given and then defaulted within; but the API server
    # validates the default itself (CEL rules included) without that, so write it out in full.
    for node in nodes.values():
        if node.get("default") == {}:
            node["default"] = with_defaults({}, {k: v for k, v in node.items() if k != "default"})
    return root


def _split(path: str) -> tuple[str, str, str]:
    """`a.b.*` → (`a.b`, `*`, ``); `a.b[]` → (`a.b`, `[]`, ``); `a.b.c` → (`a.b`, `.`, `c`)."""
    if path.endswith(".*"):
        return path[:-2], "*", ""
    if path.endswith("[]"):
        return path[:-2], "[]", ""
    parent, _, name = path.rpartition(".")
    return parent, ".", name


@functools.cache
def _spec_schema() -> dict[str, Any]:
    schema = build(
        fields.SPEC,
        description="The desired state of one hubbub deployment: its pods, settings, auth, Redis, exposure, "
        "autoscaling and monitoring.",
    )
    schema["x-kubernetes-validations"] = [{"rule": r.rule, "message": r.message} for r in fields.ROOT_RULES]
    return schema


def spec_schema() -> dict[str, Any]:
    return copy.deepcopy(_spec_schema())


def at(path: str) -> dict[str, Any]:
    """The schema of the spec's field `path` (`redis.managed`); `*`/`[]` step into map values and items."""
    node = _spec_schema()
    for part in _parts(path):
        if part == "*":
            node = node["additionalProperties"]
        elif part == "[]":
            node = node["items"]
        else:
            node = node["properties"][part]
    return node


def _parts(path: str) -> list[str]:
    out: list[str] = []
    for part in path.split(".") if path else []:
        if part.endswith("[]"):
            out += [part[:-2], "[]"]
        else:
            out.append(part)
    return out


def with_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """`value` with the schema's defaults filled in, as the API server stores it (a new object)."""
    value = copy.deepcopy(value)
    _default(value, schema)
    return value


def _default(value: Any, schema: dict[str, Any]) -> None:
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name, prop in properties.items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
        for name, item in value.items():
            if name in properties:
                _default(item, properties[name])
            elif isinstance(schema.get("additionalProperties"), dict):
                _default(item, schema["additionalProperties"])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(item, schema["items"])


def section(spec: dict[str, Any], path: str) -> dict[str, Any]:
    """The spec's object at `path` with its defaults, also when it is absent (then only defaults):
    the API server defaults an object's fields only when the object is there."""
    node: Any = spec
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    result: dict[str, Any] = with_defaults(node if isinstance(node, dict) else {}, at(path))
    return result
