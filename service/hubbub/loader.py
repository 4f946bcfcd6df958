"""Reading the settings from their sources: defaults < config file < `HUBBUB_*` environment < flags.

Every mistake is reported in the user's words, naming the setting and where it came from (the file,
the environment variable or the flag), with a did-you-mean for misspelled names. Unknown settings
are errors wherever they come from, environment variables included.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ValidationError

from hubbub.settings import ENV_PREFIX, NamespaceOptions, Settings, SettingsError

#: `HUBBUB_*` variables that are not settings: the config file's path, and the project's own scripts'.
#: A test (tests/unit/test_settings.py) finds every variable the scripts, tests and bench read and checks it is here
#: or a setting: an exported tool variable must not stop `hubbub serve` (CI's HUBBUB_REQUIRE_PROMETHEUS once
#: did, in the bench).
ENV_NOT_SETTINGS: Final = frozenset(
    {
        "HUBBUB_CONFIG",
        "HUBBUB_CACHE_DIR",
        "HUBBUB_BENCH_LOADGEN",
        "HUBBUB_REQUIRE_PROMETHEUS",
        "HUBBUB_PYTHON27",
        "HUBBUB_CRDS_DIR",
        "HUBBUB_UPDATE_GOLDEN",
        "HUBBUB_IMAGE_DIR",
        "HUBBUB_IMAGES",
    }
)
FILE_TYPES: Final = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON", ".toml": "TOML"}
#: Kubernetes gives every pod `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT=tcp://…` and friends for every
#: Service in its namespace (enableServiceLinks); a Service named `hubbub` yields `HUBBUB_*` variables.
_SERVICE_LINK: Final = re.compile(r"HUBBUB_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_[A-Z]+)?)")
_SERVICE_LINK_PORT: Final = re.compile(r"(tcp|udp|sctp)://[^\s/]+:\d+")
#: Settings given as text in the environment but holding structure: JSON, or a comma-separated list.
_LISTS: Final = frozenset({"allowed_origins", "redis_sentinels", "redis_cluster_nodes"})
_MAPPINGS: Final = frozenset({"namespaces", "default_namespace"})
_SECRETS: Final = frozenset({"jwt_secret", "api_key", "redis_url"})


@dataclass(frozen=True)
class Sources:
    """Where each top-level setting came from, for messages: `file`, `HUBBUB_X` or `--flag`."""

    file: Path | None
    env: frozenset[str]
    flags: frozenset[str]

    def of(self, name: str) -> str:
        if name in self.flags:
            return "--" + name.replace("_", "-")
        if name in self.env:
            return ENV_PREFIX + name.upper()
        return str(self.file) if self.file is not None else "default"


def read_file(path: Path) -> dict[str, Any]:
    """A config file's mapping of settings (`.yaml`/`.yml`, `.json`, `.toml`)."""
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(FILE_TYPES)
        raise SettingsError(f"config file {path}: unsupported file type {path.suffix or '(none)'!r}; use {known}")
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise SettingsError(f"config file {path} is not UTF-8 text") from None
    try:
        if kind == "TOML":
            data: Any = tomllib.loads(text)
        elif kind == "JSON":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SettingsError(f"config file {path} is not valid {kind}: {_one_line(str(exc))}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of settings (`name: value` lines)")
    return data


def env_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as `HUBBUB_<NAME>` variables; an unknown `HUBBUB_` variable is an error."""
    names = {ENV_PREFIX + name.upper(): name for name in _setting_names()}
    service_link = ENV_PREFIX + "SERVICE_HOST" in env
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for variable, raw in env.items():
        if not variable.startswith(ENV_PREFIX) or variable in ENV_NOT_SETTINGS or _SERVICE_LINK.fullmatch(variable):
            continue
        name = names.get(variable)
        if name is None:
            unknown.append(variable)
        elif name == "port" and _SERVICE_LINK_PORT.fullmatch(raw):
            if service_link:
                # Kubernetes' link to a Service named `hubbub` (tcp://10.0.0.1:8000), not a port for us.
                continue
            raise SettingsError(
                f"invalid configuration:\n  port ({variable}): {raw!r} is a Kubernetes service link (a Service named "
                "`hubbub` in the pod's namespace), not a port: set `enableServiceLinks: false` in the pod spec, "
                f"or set {variable} to the port to listen on"
            )
        else:
            values[name] = _env_value(variable, name, raw)
    if unknown:
        lines = [f"  {variable}: {_unknown('environment variable', variable, names)}" for variable in sorted(unknown)]
        raise SettingsError("invalid configuration:\n" + "\n".join(lines))
    return values


def load_settings(
    config_file: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults, the config file, `HUBBUB_*` variables and flags (later wins)."""
    env = os.environ if env is None else env
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    from_file = read_file(config_file) if config_file is not None else {}
    from_env = env_settings(env)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    sources = Sources(config_file, frozenset(from_env), frozenset(flags))
    merged: dict[str, Any] = {**from_file, **from_env, **flags}
    if "config_file" in merged:
        raise SettingsError(f"invalid configuration:\n  config_file ({sources.of('config_file')}): {_NOT_A_SETTING}")
    merged["config_file"] = config_file
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        lines = [describe(error, sources) for error in exc.errors(include_url=False)]
        raise SettingsError("invalid configuration:\n" + "\n".join(lines)) from None


_NOT_A_SETTING: Final = "not a setting: give the file with --config or HUBBUB_CONFIG"


def describe(error: Mapping[str, Any], sources: Sources) -> str:
    """One validation error as `  <setting> (<source>): <what is wrong>`."""
    loc = [str(part) for part in error["loc"]]
    message = _message(error, loc)
    if not loc:  # a rule across settings; its message names them
        return f"  {message}"
    top = loc[0]
    shown = ".".join(loc)
    source = sources.of(top)
    where = f" ({source})" if source != "default" else ""
    got = "" if top in _SECRETS or error["type"] == "extra_forbidden" else _got(error.get("input"))
    return f"  {shown}{where}: {message}{got}"


def _message(error: Mapping[str, Any], loc: list[str]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        model: type[BaseModel] = NamespaceOptions if len(loc) == 3 and loc[0] == "namespaces" else Settings
        if len(loc) == 2 and loc[0] == "default_namespace":
            model = NamespaceOptions
        return _unknown("setting", loc[-1], {n: n for n in model.model_fields if n != "config_file"})
    friendly = {
        "tuple_type": 'must be a list, e.g. ["https://app.example.com"]',
        "list_type": "must be a list",
        "dict_type": "must be a mapping of names to options",
        "model_type": "must be a mapping of options (history_size, presence, …)",
        "model_attributes_type": "must be a mapping of options (history_size, presence, …)",
        "int_parsing": "must be a whole number",
        "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be text (quote it)",
        "path_type": "must be a file path",
        "string_too_short": "must not be empty",
    }
    if kind in friendly:
        return friendly[kind]
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}".replace("'", "")
    if kind == "string_pattern_mismatch":
        return "may hold only letters, digits and _ - . = @ (1-64 characters)"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    text = error["msg"].removeprefix("Value error, ")
    return re.sub(r"^Input should be", "must be", text)


def _got(value: object) -> str:
    if isinstance(value, dict | list | tuple) or value is None:
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= 60 else text[:57] + '...'})"


def _unknown(what: str, name: str, known: Mapping[str, str]) -> str:
    close = difflib.get_close_matches(name.lower() if what == "setting" else name, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    if what == "environment variable":
        return f"unknown {what}{hint} (settings are listed by `hubbub config-doc`)"
    return f"unknown {what}{hint}"


def _setting_names() -> Iterable[str]:
    return (name for name in Settings.model_fields if name != "config_file")


def _env_value(variable: str, name: str, raw: str) -> Any:
    text = raw.strip()
    if name in _MAPPINGS or (name in _LISTS and text.startswith("[")):
        try:
            return json.loads(text)
        except ValueError as exc:
            example = '["https://app.example.com"]' if name in _LISTS else '{"chat": {"presence": true}}'
            raise SettingsError(
                f"invalid configuration:\n  {variable}: must be JSON, e.g. {example} ({_one_line(str(exc))})"
            ) from None
    if name in _LISTS:
        return [part.strip() for part in text.split(",") if part.strip()]
    return raw


def _one_line(text: str) -> str:
    return " ".join(text.split())
