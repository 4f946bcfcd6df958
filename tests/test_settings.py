"""Settings: precedence, validation, development mode, and the CLI around them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hubbub.auth import KeySet, verify_token
from hubbub.cli import config_doc, main
from hubbub.settings import DEV_API_KEY, DEV_JWT_SECRET, SettingsError, load_settings

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
        ("port: lots", "port"),
        ("no_such_setting: 1", "no_such_setting"),
        ("namespaces: {chat: {presense: true}}", "presense"),
        ("jwt_secret: short", "32 bytes"),
        ("[unbalanced", "not valid"),
        ("- a list", "mapping"),
    ],
)
def test_invalid_configuration_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(SettingsError, match=message):
        load_settings(path, env={})


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


def test_problems_list_what_will_not_work(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mode: production\n")
    problems = load_settings(path, env={}).problems()
    assert any("no JWT key" in p for p in problems)
    assert any("api_key" in p for p in problems)
    assert any("namespaces" in p for p in problems)


def test_token_command_mints_a_token_the_server_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--sub", "alice", "--rooms", "chat:*", "--publish", "chat:*", "--ttl", "60"]) == 0
    minted = capsys.readouterr().out.strip()
    principal = verify_token(minted, KeySet.from_config(hmac_secret=DEV_JWT_SECRET, public_key_pem=None), now=0)
    assert principal.user == "alice"
    assert principal.rooms == ("chat:*",) and principal.publish == ("chat:*",)


def test_token_without_flags_grants_everything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token"]) == 0
    minted = capsys.readouterr().out.strip()
    principal = verify_token(minted, KeySet.from_config(hmac_secret=DEV_JWT_SECRET, public_key_pem=None), now=0)
    assert principal.rooms == ("*",) and principal.publish == ("*",)


def test_check_config_reports_problems_and_fails_in_production(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mode: production\n")
    result = subprocess.run(
        [sys.executable, "-m", "hubbub", "check-config", "--config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "no JWT key" in result.stdout
    good = tmp_path / "good.yaml"
    good.write_text(f"jwt_secret: {SECRET}\napi_key: k\nnamespaces: {{chat: {{}}}}\n")
    ok = subprocess.run([sys.executable, "-m", "hubbub", "check-config", "--config", str(good)], capture_output=True)
    assert ok.returncode == 0, ok.stdout


def test_bad_config_exits_2_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("port: -1\n")
    assert main(["check-config", "--config", str(path)]) == 2
    assert "port" in capsys.readouterr().err


def test_configuration_doc_lists_every_setting_as_generated() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    assert config_doc() in doc, "docs/configuration.md is stale: regenerate with `hubbub config-doc`"
