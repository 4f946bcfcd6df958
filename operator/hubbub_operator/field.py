"""One row of the RealtimeService's field table, and the OpenAPI v3 schema it stands for.

A row names its place under `spec` with a dotted path: `*` is a map's value (`settings.namespaces.*`),
`[]` a list's item (`exposure.gateway.parentRefs[]`). The table (`hubbub_operator.fields`) is the
one source of the CRD's schema, of `kubectl explain`, of docs/operator.md's reference and of the
defaults the builders apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

Type = Literal["object", "string", "integer", "number", "boolean", "array", "map"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


@dataclass(frozen=True, slots=True)
class Rule:
    """A CEL rule on an object (`x-kubernetes-validations`); `self` is that object."""

    rule: str
    message: str


@dataclass(frozen=True, slots=True)
class Field:
    path: str
    type: Type
    description: str
    default: Any = MISSING
    enum: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    #: minimum is exclusive (`> minimum`).
    above: bool = False
    pattern: str | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    #: Required within its parent object.
    required: bool = False
    #: `x-kubernetes-preserve-unknown-fields`: a Kubernetes-native structure passed through as it is
    #: (tolerations, resources); the API server validates it where it lands, in the Deployment.
    preserve: bool = False
    #: A list's item or a map's value type, when it is a scalar ("string"); objects get rows of their own.
    items: Type | None = None
    rules: tuple[Rule, ...] = ()
    #: For the docs: the default the service (or the alert rules) applies when the field is absent,
    #: where the schema itself has none (settings and thresholds stay out of the stored object).
    shown_default: Any = MISSING
    #: Format, for strings ("date-time").
    format: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]

    def schema(self) -> dict[str, Any]:
        """This field's own schema, without children (those are added from their rows)."""
        kind = "object" if self.type == "map" else self.type
        out: dict[str, Any] = {"type": kind, "description": self.description}
        if self.default is not MISSING:
            out["default"] = self.default
        if self.enum:
            out["enum"] = list(self.enum)
        if self.format:
            out["format"] = self.format
        if self.minimum is not None:
            out["minimum"] = self.minimum
            if self.above:
                out["exclusiveMinimum"] = True
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.pattern is not None:
            out["pattern"] = self.pattern
        if self.max_length is not None:
            out["maxLength"] = self.max_length
        if self.min_items is not None:
            out["minItems"] = self.min_items
        if self.max_items is not None:
            out["maxItems"] = self.max_items
        if self.preserve:
            out["x-kubernetes-preserve-unknown-fields"] = True
        if self.items is not None:
            key = "additionalProperties" if self.type == "map" else "items"
            out[key] = {"type": self.items}
        if self.rules:
            out["x-kubernetes-validations"] = [{"rule": r.rule, "message": r.message} for r in self.rules]
        out.update(self.extra)
        return out

    def shown(self) -> Any:
        """The default a reader should know of: the schema's, else the one applied downstream."""
        return self.default if self.default is not MISSING else self.shown_default


# -- constructors: the table reads as a list of fields, not of keyword soup ------------------------


def obj(path: str, description: str, *rules: Rule, default: Any = MISSING, required: bool = False) -> Field:
    return Field(path, "object", description, default=default, rules=rules, required=required)


def string(path: str, description: str, **kwargs: Any) -> Field:
    kwargs.setdefault("max_length", 1024)
    return Field(path, "string", description, **kwargs)


def integer(path: str, description: str, **kwargs: Any) -> Field:
    return Field(path, "integer", description, **kwargs)


def boolean(path: str, description: str, **kwargs: Any) -> Field:
    return Field(path, "boolean", description, **kwargs)


def strings(path: str, description: str, **kwargs: Any) -> Field:
    return Field(path, "array", description, items="string", **kwargs)


def string_map(path: str, description: str) -> Field:
    return Field(path, "map", description, items="string")


def native(path: str, description: str, kind: Literal["object", "array"]) -> Field:
    """A Kubernetes-native structure (ResourceRequirements, Toleration) kept as given."""
    if kind == "object":
        return Field(path, "object", description, preserve=True)
    item = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return Field(path, "array", description, extra={"items": item})


def secret_ref(path: str, what: str, default_key: str) -> tuple[Field, ...]:
    """A reference to one key of a Secret in the RealtimeService's namespace."""
    return (
        Field(path, "object", f"The Secret (in this namespace) and key holding {what}.", extra={"required": ["name"]}),
        string(f"{path}.name", "Name of the Secret.", max_length=253),
        string(f"{path}.key", "Key within the Secret.", default=default_key, max_length=253),
    )
