"""Settings: precedence, sources, development mode, and mistakes reported in the user's words."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hubbub.cli import config_doc
from hubbub.loader import ENV_NOT_SETTINGS, load_settings
from hubbub.settings import DEV_API_KEY, DEV_JWT_SECRET, ENV_PREFIX, Settings, SettingsError

SECRET = "s" * 40


def test_precedence_is_defaults_then_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "hubbub.yaml"
    config.write_text("port: 9001\nping_interval: 30\nconnect_timeout: 3\njwt_secret: " + SECRET + "\n")
    env = {"HUBBUB_PING_INTERVAL": "40", "HUBBUB_CONNECT_TIMEOUT": "4"}
    settings = load_settings(config, env=env, overrides={"connect_timeout": 5, "port": None})
    assert settings.port == 9001  # file
    assert settings.ping_interval == 40  # env beats file
    assert settings.connect_timeout == 5  # flag beats env
    assert settings.pong_timeout == 10  # default


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yml"])
def test_config_files_in_json_toml_and_yaml(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"c{suffix}"
    path.write_text(
        {
            ".json": json.dumps({"namespaces": {"chat": {"presence": True}}}),
            ".toml": "[namespaces.chat]\npresence = true\n",
            ".yml": "namespaces:\n  chat:\n    presence: true\n",
        }[suffix]
    )
    settings = load_settings(path, env={})
    assert settings.namespaces["chat"].presence is True


def test_structured_settings_come_from_env_as_json() -> None:
    env = {"HUBBUB_NAMESPACES": '{"chat": {"history_size": 7}}', "HUBBUB_ALLOWED_ORIGINS": '["https://a"]'}
    settings = load_settings(env=env)
    assert settings.namespaces["chat"].history_size == 7
    assert settings.allowed_origins == ("https://a",)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("port: lots", r"port \(.*bad.yaml\): must be a whole number \(got 'lots'\)"),
        ("port: 70000", r"port \(.*\): must be less than or equal to 65535 \(got 70000\)"),
        ("no_such_setting: 1", r"no_such_setting \(.*\): unknown setting$"),
        ("prot: 9", r"prot \(.*\): unknown setting; did you mean port\?"),
        (
            "namespaces: {chat: {presense: true}}",
            r"namespaces\.chat\.presense \(.*\): unknown setting; did you mean presence\?",
        ),
        ("default_namespace: {histroy_size: 3}", r"default_namespace\.histroy_size .*did you mean history_size\?"),
        ("namespaces: {chat: 5}", r"namespaces\.chat \(.*\): must be a mapping of options"),
        ("allowed_origins: 5", r"allowed_origins \(.*\): must be a list, e\.g\."),
        ("mode: prod", r"mode \(.*\): must be one of auto, development or production \(got 'prod'\)"),
        ("demo: maybe", r"demo \(.*\): must be true or false"),
        ("demo_namespace: a b", r"demo_namespace \(.*\): may hold only letters"),
        ("jwt_secret: short", r"jwt_secret \(.*\): must be at least 32 bytes"),
        (
            "ping_interval: 2\npong_timeout: 10",
            r"^  pong_timeout \(10 s\) must be well below 4 × ping_interval \(2 s\)",
        ),
        ("[unbalanced", "not valid YAML"),
        ("- a list", "mapping"),
    ],
)
def test_invalid_configuration_is_a_clear_error_naming_the_setting_and_file(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(SettingsError) as caught:
        load_settings(path, env={})
    assert re.search(message, str(caught.value), re.MULTILINE), str(caught.value)
    assert_plain_words(str(caught.value))


def assert_plain_words(message: str) -> None:
    """No pydantic jargon and no stray prefixes reach the user."""
    for jargon in ("Value error", "valid tuple", "Extra inputs", "Input should", "  :", "pydantic", "errors.pydantic"):
        assert jargon not in message, message


def test_every_mistake_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("prot: 9\nping_interval: -1\nallowed_origins: 5\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(path, env={})
    lines = str(caught.value).splitlines()
    assert lines[0] == "invalid configuration:"
    assert len(lines) == 4 and {line.split(" ")[2] for line in lines[1:]} == {
        "prot",
        "ping_interval",
        "allowed_origins",
    }


@pytest.mark.parametrize("name", ["hubbub.ini", "hubbub.conf", "hubbub"])
def test_an_unsupported_file_type_is_named(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("port = 9000\n")
    with pytest.raises(SettingsError, match=r"unsupported file type .*; use \.yaml, \.yml, \.json, \.toml"):
        load_settings(path, env={})


def test_a_misspelled_environment_variable_is_refused_with_a_suggestion() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={"HUBBUB_PORTT": "9000", "HUBBUB_JWT_SECRETT": "x"})
    message = str(caught.value)
    assert "HUBBUB_PORTT: unknown environment variable; did you mean HUBBUB_PORT?" in message
    assert "HUBBUB_JWT_SECRETT: unknown environment variable; did you mean HUBBUB_JWT_SECRET?" in message
    assert "hubbub config-doc" in message


def test_an_environment_mistake_names_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"ping_interval \(HUBBUB_PING_INTERVAL\): must be greater than 0"):
        load_settings(env={"HUBBUB_PING_INTERVAL": "-1"})
    with pytest.raises(SettingsError, match=r"port \(--port\): must be less than or equal to 65535"):
        load_settings(env={}, overrides={"port": 70000})
    with pytest.raises(SettingsError, match=r"HUBBUB_NAMESPACES: must be JSON, e\.g\."):
        load_settings(env={"HUBBUB_NAMESPACES": "chat"})


#: How the project's scripts and tests read a variable: a `$` or `${` reference, `export` or an assignment in shell;
#: `os.environ[…]`, `os.environ.get(…)` or `os.getenv(…)` with the name as a string literal in Python.
_SHELL_VARIABLE = re.compile(r"\$\{?(HUBBUB_[A-Z0-9_]+)|\bexport (HUBBUB_[A-Z0-9_]+)|^\s*(HUBBUB_[A-Z0-9_]+)=", re.M)
_PYTHON_VARIABLE = re.compile(r"""(?:environ(?:\.get\()?\[?|getenv\()\s*["'](HUBBUB_[A-Z0-9_]+)""")


def test_every_variable_the_projects_tools_read_is_a_setting_or_known_not_to_be_one() -> None:
    # `hubbub serve` refuses unknown HUBBUB_ variables (a misspelled setting must not pass unnoticed); a tool's
    # variable exported in the same shell (CI's scripts/test exports some) must not stop every server it starts.
    root = Path(__file__).parents[2]
    found: dict[str, str] = {}
    for path in [*(root / "scripts").iterdir(), root / ".ci" / "run"]:
        for match in _SHELL_VARIABLE.finditer(path.read_text()):
            found.setdefault(next(name for name in match.groups() if name), str(path.relative_to(root)))
    for path in [*(root / "tests").rglob("*.py"), *(root / "bench").rglob("*.py")]:
        for name in _PYTHON_VARIABLE.findall(path.read_text()):
            found.setdefault(name, str(path.relative_to(root)))
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    stray = {name: where for name, where in found.items() if name not in settings | ENV_NOT_SETTINGS}
    assert not stray, f"add these tool variables to loader.ENV_NOT_SETTINGS: {stray}"
    assert "HUBBUB_REQUIRE_PROMETHEUS" in found  # the search finds what it is for


def test_tools_variables_and_kubernetes_service_links_are_not_settings() -> None:
    # Kubernetes injects these into every pod of a namespace that has a Service named `hubbub`.
    env = {
        "HUBBUB_CACHE_DIR": "/tmp/cache",
        "HUBBUB_SERVICE_HOST": "10.96.0.12",
        "HUBBUB_SERVICE_PORT": "8000",
        "HUBBUB_SERVICE_PORT_HTTP": "8000",
        "HUBBUB_PORT": "tcp://10.96.0.12:8000",
        "HUBBUB_PORT_8000_TCP": "tcp://10.96.0.12:8000",
        "HUBBUB_PORT_8000_TCP_ADDR": "10.96.0.12",
        "HUBBUB_PORT_8000_TCP_PORT": "8000",
        "HUBBUB_PORT_8000_TCP_PROTO": "tcp",
    }
    assert load_settings(env=env).port == 8000
    # Without the Service's other variables, HUBBUB_PORT is the user's, and must be a port.
    # A service link's value alone says what it is and what to change, not merely "must be a whole number".
    with pytest.raises(SettingsError, match=r"HUBBUB_PORT\): 'tcp://10\.96\.0\.12:8000' is a Kubernetes service link"):
        load_settings(env={"HUBBUB_PORT": "tcp://10.96.0.12:8000"})
    with pytest.raises(SettingsError, match="enableServiceLinks: false"):
        load_settings(env={"HUBBUB_PORT": "tcp://10.96.0.12:8000"})


def test_lists_come_from_the_environment_as_json_or_comma_separated() -> None:
    comma = load_settings(env={"HUBBUB_ALLOWED_ORIGINS": "https://a.example, http://localhost:3000"})
    assert comma.allowed_origins == ("https://a.example", "http://localhost:3000")
    assert load_settings(env={"HUBBUB_REDIS_SENTINELS": '["s1:26379"]'}).redis_sentinels == ("s1:26379",)
    nodes = load_settings(env={"HUBBUB_REDIS_CLUSTER_NODES": "redis-0.redis:6379,redis-1.redis:6379"})
    assert nodes.redis_cluster_nodes == ("redis-0.redis:6379", "redis-1.redis:6379")


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml", env={})


def test_no_configuration_means_development_mode_with_every_namespace_on() -> None:
    settings = load_settings(env={})
    assert settings.development
    options = settings.namespace("anything")
    assert options is not None
    assert (options.history_size, options.history_ttl) == (100, 300)
    assert options.presence and options.join_leave and options.client_publish
    assert settings.effective_jwt_secret() == DEV_JWT_SECRET
    assert settings.effective_api_key() == DEV_API_KEY


def test_a_config_file_never_enters_development_mode_silently(tmp_path: Path) -> None:
    path = tmp_path / "prod.yaml"
    path.write_text(f"jwt_secret: {SECRET}\n")
    settings = load_settings(path, env={})
    assert not settings.development
    assert settings.namespace("anything") is None
    assert settings.effective_api_key() is None
    explicit = tmp_path / "dev.yaml"
    explicit.write_text("mode: development\n")
    assert load_settings(explicit, env={}).development


def test_production_mode_from_env_without_a_file() -> None:
    settings = load_settings(env={"HUBBUB_MODE": "production", "HUBBUB_JWT_SECRET": SECRET})
    assert not settings.development
    assert settings.effective_jwt_secret() == SECRET


def test_configuration_doc_lists_every_setting_as_generated() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    assert config_doc() in doc, "docs/configuration.md is stale: regenerate with `hubbub config-doc`"
