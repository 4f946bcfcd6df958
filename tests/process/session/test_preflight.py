"""`check-config` and `serve` agree: the same checks, one clear line per mistake, exit 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hubbub.loader import load_settings
from hubbub.preflight import ConfigurationError, Finding, preflight, redact

SECRET = "s" * 40
GOOD: dict[str, Any] = {"jwt_secret": SECRET, "api_key": "k" * 24, "namespaces": {"chat": {}}}


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    return subprocess.Popen(
        [sys.executable, "-m", "hubbub", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean, **(env or {})},
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def hubbub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return finish(start(*args, env=env))


def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


#: name -> (config file content, expected line of the error). Each is a configuration `serve` used to
#: accept and then crash on (a traceback), or that check-config called OK.
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "production without a key": ({"mode": "production", "api_key": "k"}, "no JWT key to verify tokens with"),
    "missing key file": ({**GOOD, "jwt_secret": None, "jwt_public_key_file": "/nonexistent/key.pem"}, "cannot read"),
    "key file not PEM": ({**GOOD, "jwt_secret": None, "jwt_public_key_file": "@notpem"}, "no PEM block"),
    "private key": ({**GOOD, "jwt_secret": None, "jwt_public_key_file": "@private"}, "holds a private key"),
    "http redis": ({**GOOD, "redis_url": "http://user:hunter2@redis:6379"}, "must start with redis://"),
    "redis option": ({**GOOD, "redis_url": "redis://127.0.0.1:6379/0?fooo=1"}, "unexpected keyword argument 'fooo'"),
    "redis port": ({**GOOD, "redis_url": "redis://127.0.0.1:notaport"}, "redis_url:"),
    "sentinel address": ({**GOOD, "redis_sentinels": ["sentinel-0"]}, "'sentinel-0' is not host:port"),
    "cluster address": ({**GOOD, "redis_cluster_nodes": ["redis-0:port"]}, "'redis-0:port' is not host:port"),
    "sentinels and cluster": (
        {**GOOD, "redis_sentinels": ["s:26379"], "redis_cluster_nodes": ["r:6379"]},
        "set either redis_sentinels or redis_cluster_nodes, not both",
    ),
    "origin without scheme": ({**GOOD, "allowed_origins": ["localhost:3000"]}, "'localhost:3000' is not an origin"),
    "namespace name": ({**GOOD, "namespaces": {"chat:": {}}}, "namespaces.chat:: not a namespace name"),
    "node name": ({**GOOD, "node_name": "my node"}, "node_name: may hold only"),
    "jwks url": ({**GOOD, "jwt_jwks_url": "ftp://idp/keys"}, "jwt_jwks_url: must be an http:// or https:// URL"),
    "host": ({**GOOD, "host": "no-such-host.invalid"}, "host: 'no-such-host.invalid' is neither"),
    "otlp endpoint": (
        {**GOOD, "otlp_endpoint": "otel-collector:4318"},
        "otlp_endpoint: must be an http:// or https://",
    ),
    "both keys": (
        {**GOOD, "jwt_public_key": "x", "jwt_public_key_file": "/k.pem"},
        "set either jwt_public_key or jwt_public_key_file",
    ),
}


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    config = {k: v for k, v in config.items() if v is not None}
    for key, value in list(config.items()):
        if value == "@notpem":
            (tmp_path / "notpem.pem").write_text("just some text\n")
            config[key] = str(tmp_path / "notpem.pem")
        elif value == "@private":
            (tmp_path / "private.pem").write_text(private_key_pem())
            config[key] = str(tmp_path / "private.pem")
    path = tmp_path / "hubbub.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_check_config_and_serve_refuse_the_same_configuration_in_one_line(tmp_path: Path, case: str) -> None:
    config, expected = REFUSED[case]
    path = write_config(tmp_path, config)
    # Both at once: they are independent, and each start-up of Python takes a while on a busy machine.
    running = start("check-config", "--config", str(path)), start("serve", "--config", str(path), "--port", "0")
    check, serve = (finish(proc) for proc in running)
    for result in (check, serve):
        assert result.returncode == 2, result
        assert expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        assert "OK" not in result.stdout and "listening" not in result.stderr
        assert "hunter2" not in result.stderr  # a password in a URL is never echoed
    assert "would refuse to start" in check.stderr


def test_serve_refuses_before_logging_anything_else(tmp_path: Path) -> None:
    """The development banner and "listening" belong to a node that starts; a refusal says only why."""
    result = hubbub("serve", "--port", "0", env={"HUBBUB_REDIS_URL": "http://redis:6379"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: invalid configuration:",
        "  redis_url: must start with redis://, rediss:// or unix://, got 'http://redis:6379'",
    ]


def test_check_config_is_ok_only_for_what_serve_runs_without_warnings(tmp_path: Path) -> None:
    ok = hubbub("check-config", "--config", str(write_config(tmp_path, GOOD)))
    assert (ok.returncode, ok.stdout.splitlines()[-1]) == (
        0,
        f"configuration OK (production mode, file {tmp_path}/hubbub.json)",
    )
    warned = hubbub("check-config", "--config", str(write_config(tmp_path, {"jwt_secret": SECRET})))
    assert warned.returncode == 1
    assert "OK" not in warned.stdout
    assert "warning: api_key: not set" in warned.stdout
    assert "warning: namespaces: none configured" in warned.stdout
    assert (
        warned.stdout.splitlines()[-1]
        == f"configuration loads, but has 2 warnings (production mode, file {tmp_path}/hubbub.json)"
    )


def test_preflight_lists_every_error_at_once(tmp_path: Path) -> None:
    settings = load_settings(
        env={},
        overrides={
            "mode": "production",
            "redis_url": "http://x",
            "allowed_origins": ["example.com"],
            "node_name": "a b",
        },
    )
    with pytest.raises(ConfigurationError) as caught:
        preflight(settings)
    assert {error.setting for error in caught.value.errors} == {None, "redis_url", "allowed_origins", "node_name"}


def test_a_good_production_configuration_has_no_findings(tmp_path: Path) -> None:
    plan = preflight(load_settings(write_config(tmp_path, GOOD), env={}))
    assert plan.warnings == ()


def test_development_mode_needs_no_configuration() -> None:
    plan = preflight(load_settings(env={}))
    assert plan.settings.development and plan.warnings == ()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:s3cret@h", "rediss://user:***@h"),
        ("redis://h:6379", "redis://h:6379"),
    ],
)
def test_passwords_in_urls_are_redacted(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_finding_reads_as_setting_then_message() -> None:
    assert str(Finding("port", "in use")) == "port: in use"
    assert str(Finding(None, "several settings")) == "several settings"
