"""The `hubbub` command as a user meets it: start-up messages, exit codes, tokens, help."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from hubbub.auth import KeySet, Principal, verify_token
from hubbub.cli import main, parser
from hubbub.settings import DEV_JWT_SECRET

STARTUP_TIMEOUT = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    return {**env, **extra}


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hubbub", *args], capture_output=True, text=True, env=clean_env(**env), timeout=120
    )


def test_a_port_in_use_is_one_line_and_a_failed_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the address is already in use; stop the other process or "
        "choose another --port (HUBBUB_PORT)"
    ]


def test_listening_is_logged_once_the_node_answers() -> None:
    """Whoever waits for the "listening" line (a person, a script, a test harness) can connect at once."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubbub", "serve", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, f"serve exited before listening: {seen}"
            seen.append(line)
            if " listening on " in line:
                break
        url = line.split(" listening on ")[1].split()[0]
        # No retry: the socket must already accept, and the node must already be started.
        assert httpx.get(url + "/readyz", timeout=10).json()["status"] == "ready"
        assert any("DEVELOPMENT MODE" in earlier for earlier in seen[:-1])
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_a_start_up_that_fails_after_the_checks_is_one_line_and_a_failed_start(tmp_path: Path) -> None:
    """Something the checks could not foresee (here: the key file vanished after them) fails start-up
    with one line naming it, the way uvicorn would otherwise print a traceback."""
    script = (
        "import sys, hubbub.cli as cli, hubbub.preflight as p\n"
        "cli.preflight = lambda settings: p.Preflight(settings, ())\n"
        "sys.exit(cli.main(['serve', '--port', '0']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(HUBBUB_MODE="production", HUBBUB_JWT_PUBLIC_KEY_FILE=str(tmp_path / "gone.pem")),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "start-up failed: [Errno 2] No such file or directory" in result.stderr
    assert "listening" not in result.stderr


def decode(token: str) -> Principal:
    return verify_token(token, KeySet.from_config(hmac_secret=DEV_JWT_SECRET, public_key_pem=None), now=time.time())


def test_token_mints_what_the_server_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--sub", "alice", "--rooms", "chat:*", "--publish", "chat:*", "--ttl", "60"]) == 0
    principal = decode(capsys.readouterr().out.strip())
    assert principal.user == "alice"
    assert principal.rooms == ("chat:*",) and principal.publish == ("chat:*",)
    assert principal.expires_at is not None and 0 < principal.expires_at - time.time() <= 60


def test_token_grants_no_publish_rights_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--rooms", "chat:*"]) == 0
    principal = decode(capsys.readouterr().out.strip())
    assert principal.rooms == ("chat:*",) and principal.publish == ()
    assert main(["token"]) == 0
    default = decode(capsys.readouterr().out.strip())
    assert default.rooms == ("*",) and default.publish == ()
    assert default.expires_at is not None and 3500 < default.expires_at - time.time() <= 3600


def test_a_token_without_expiry_must_be_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--no-expiry"]) == 0
    assert decode(capsys.readouterr().out.strip()).expires_at is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ttl", "-5"], "--ttl must be 1 to"),
        (["--ttl", "0"], "--ttl must be 1 to"),
        (["--ttl", "inf"], "--ttl must be 1 to"),
        (["--ttl", "nan"], "--ttl must be 1 to"),
        (["--ttl", "60", "--no-expiry"], "--ttl and --no-expiry"),
        (["--info", "notjson"], "--info must be a JSON object"),
        (["--info", "[1, 2]"], "--info must be a JSON object"),
        (["--info", '{"a": "' + "x" * 2000 + '"}'], "--info must encode to at most 1024 bytes"),
        (["--sub", ""], "--sub must be 1-255 characters"),
    ],
)
def test_token_refuses_bad_flags_in_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: {message}") and captured.err.count("\n") == 1


def test_token_without_a_secret_says_where_tokens_come_from(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("jwt_jwks_url: https://idp.example/keys\n")
    result = run("token", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith("error: no jwt_secret configured to sign tokens with")
    assert "Traceback" not in result.stderr


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`hubbub config-doc | head -1`: the reader leaves early; no traceback, the usual 141."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubbub", "config-doc"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the program writes: its first write meets a closed pipe
    with proc.stderr:
        error = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert error == ""


def all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    top = parser()
    found = [("hubbub", top)]
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"hubbub {name}", sub) for name, sub in action.choices.items()]
    return found


def test_every_command_and_flag_has_help() -> None:
    commands = all_parsers()
    assert {name for name, _ in commands} == {
        "hubbub",
        *(f"hubbub {c}" for c in ("serve", "check-config", "token", "config-doc")),
    }
    for name, command in commands:
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(choice.help for choice in action._choices_actions), name
            else:
                assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
        if name != "hubbub":
            assert command.description, f"{name} has no description"


@pytest.mark.parametrize("command", ["serve", "check-config", "token", "config-doc"])
def test_help_of_each_command_prints_and_exits_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert f"usage: hubbub {command}" in capsys.readouterr().out


def test_without_the_server_extra_the_command_says_what_to_install() -> None:
    """`pip install hubbub[client]` installs the `hubbub` command too; without pydantic it explains itself."""
    script = (
        "import sys\nsys.modules['pydantic'] = None\nfrom hubbub.cli import main\nsys.exit(main(['check-config']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=clean_env()
    )
    assert result.returncode == 2
    assert result.stderr == (
        "error: the hubbub command needs the server extra (pydantic is not installed): pip install 'hubbub[server]'\n"
    )
