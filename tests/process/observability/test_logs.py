"""The node's log as an operator meets it: text or JSON lines, a start-up summary, refusals that say why
without flooding, Redis outages logged with backoff, and never a secret or a message body."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from hubbub.auth import mint_token
from hubbub.loader import load_settings
from hubbub.logs import JsonFormatter, TextFormatter, configure, rfc3339, summary
from hubbub.settings import Settings, SettingsError
from hubbub.throttle import NEW_MESSAGES_PER_OUTAGE, RepeatedError, Throttle
from tests.support.polling import until
from tests.support.redis_server import RedisServer
from tests.support.server import API_KEY, SECRET, ServerProcess, server_config
from tests.support.wsclient import RawClient, token

STARTUP_TIMEOUT = 60.0
#: Fields every JSON line has; `conn`/`user` only on lines about a connection, `exc` only with an exception.
REQUIRED = {"time", "level", "logger", "node", "message"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(message: str, *args: object, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("hubbub.node", level, __file__, 1, message, args, None)
    rec.created = 1714564800.1234  # 2024-05-01T12:00:00.123Z
    for name, value in extra.items():
        setattr(rec, name, value)
    return rec


# --- formats -------------------------------------------------------------------------------------------


def test_a_json_line_has_the_time_in_utc_with_milliseconds_and_the_node_and_connection() -> None:
    line = JsonFormatter("web-1").format(record("connection closed: %d %s", 1000, "bye", conn="c1", user="alice"))
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2024-05-01T12:00:00.123Z",
        "level": "INFO",
        "logger": "hubbub.node",
        "node": "web-1",
        "conn": "c1",
        "user": "alice",
        "message": "connection closed: 1000 bye",
    }


def test_a_json_line_carries_the_exception_as_one_escaped_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("command failed", level=logging.ERROR)
        rec.exc_info = sys.exc_info()
    line = JsonFormatter("n").format(rec)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["exc"].startswith("Traceback") and "ValueError: boom" in entry["exc"]
    assert "conn" not in entry and "user" not in entry


def test_a_json_line_stays_one_line_whatever_a_client_put_in_the_message() -> None:
    line = JsonFormatter("n").format(record("origin %s", "evil\n\x1b[31m\u2028"))
    assert "\n" not in line and "\x1b" not in line and "\u2028" not in line
    assert json.loads(line)["message"] == "origin evil\n\x1b[31m\u2028"


def test_a_text_line_stays_one_line_whatever_a_client_put_in_the_message() -> None:
    # A refused API request's path is quoted, percent-decoded: `/api/x%0a2024-01-01 ... INFO forged` must not
    # become a second, forged line.
    line = TextFormatter().format(record("refused (%s)", "/api/x\r\n2024-01-01 00:00:00,000 INFO forged\x1b[31m"))
    assert line.count("\n") == 0 and "\r" not in line and "\x1b" not in line
    assert line.endswith("refused (/api/x\\x0d\\x0a2024-01-01 00:00:00,000 INFO forged\\x1b[31m)")


def test_the_text_format_is_the_classic_one_with_the_connection_appended() -> None:
    text = TextFormatter()
    assert text.format(record("listening")).endswith(" INFO hubbub.node: listening")
    assert text.format(record("connected", conn="c1", user="alice")).endswith(
        " INFO hubbub.node: connected [conn=c1 user=alice]"
    )


def test_rfc3339_rounds_down_to_the_millisecond() -> None:
    assert rfc3339(0.9999) == "1970-01-01T00:00:00.999Z"
    assert rfc3339(1714564800.0) == "2024-05-01T12:00:00.000Z"


def test_configure_sends_every_logger_including_uvicorns_through_the_format(tmp_path: Path) -> None:
    import io

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure(load_settings(env={}, overrides={"log_format": "json", "node_name": "n1"}), stream)
        logging.getLogger("uvicorn.error").info("Started server process")
        logging.getLogger("hubbub").info("hello")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["logger"], e["message"], e["node"]) for e in entries] == [
        ("uvicorn.error", "Started server process", "n1"),
        ("hubbub", "hello", "n1"),
    ]


def test_the_log_format_comes_from_the_environment_and_is_checked() -> None:
    assert load_settings(env={"HUBBUB_LOG_FORMAT": "json"}).log_format == "json"
    assert load_settings(env={}).log_format == "text"
    with pytest.raises(SettingsError, match="log_format.*HUBBUB_LOG_FORMAT.*must be one of"):
        load_settings(env={"HUBBUB_LOG_FORMAT": "xml"})


# --- the start-up summary -------------------------------------------------------------------------------


def test_the_summary_names_mode_sources_namespaces_backend_and_changed_limits(tmp_path: Path) -> None:
    config = tmp_path / "hubbub.json"
    config.write_text("{}")
    settings = Settings.model_validate(
        {
            "mode": "production",
            "config_file": config,
            "jwt_secret": SECRET,
            "api_key": "k" * 40,
            "redis_url": "redis://user:s3cr%40t@redis.internal:6379/2",
            "namespaces": {"chat": {}, "feed": {}},
            "default_namespace": {},
            "max_connections": 500,
            "ping_interval": 20.0,
        }
    )
    line = summary(settings, env=["HUBBUB_API_KEY", "HUBBUB_JWT_SECRET"], flags=["port"])
    assert line.startswith("starting: mode=production ")
    assert f"config=file {config}; environment HUBBUB_API_KEY,HUBBUB_JWT_SECRET; flags --port " in line
    assert " namespaces=chat,feed,(default) " in line
    assert " backend=redis(redis://user:***@redis.internal:6379/2) " in line
    assert line.endswith(" limits=ping_interval=20,max_connections=500")
    assert "s3cr" not in line and "k" * 40 not in line and SECRET not in line
    assert "\n" not in line


def test_the_summary_of_a_development_node_without_configuration() -> None:
    line = summary(load_settings(env={}))
    assert line == (
        "starting: mode=development config=defaults (no file) namespaces=all (development) backend=memory "
        "log=info/text limits=defaults"
    )


# --- Throttle --------------------------------------------------------------------------------------------


def test_a_throttle_logs_a_few_lines_per_kind_and_interval_then_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    throttle = Throttle(logging.getLogger("hubbub.test"), per_interval=2, interval=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="hubbub.test"):
        logged = [throttle.log(logging.INFO, "api_key", "refused %d", i) for i in range(1000)]
        assert logged[:2] == [True, True] and not any(logged[2:])
        # Another kind has its own budget.
        assert throttle.log(logging.INFO, "expired", "token expired")
        assert throttle.held("api_key") == 998
        clock.now += 59.9
        assert not throttle.log(logging.INFO, "api_key", "refused later")
        clock.now += 0.2
        assert throttle.log(logging.INFO, "api_key", "refused at last")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "refused 0",
        "refused 1",
        "token expired",
        "refused at last (999 more like this not logged since the previous line)",
    ]
    assert throttle.held("api_key") == 0


def test_a_throttle_below_the_loggers_level_costs_no_budget(caplog: pytest.LogCaptureFixture) -> None:
    throttle = Throttle(logging.getLogger("hubbub.test.quiet"), per_interval=1, clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="hubbub.test.quiet"):
        assert not throttle.log(logging.INFO, "k", "not shown")
        assert throttle.log(logging.WARNING, "k", "shown")
    assert [r.getMessage() for r in caplog.records] == ["shown"]


# --- RepeatedError ---------------------------------------------------------------------------------------


def test_a_repeated_error_is_logged_first_then_at_doubling_intervals_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    errors = RepeatedError(logging.getLogger("hubbub.test.redis"), "redis unreachable", clock=clock)
    with caplog.at_level(logging.WARNING, logger="hubbub.test.redis"):
        times = []
        for _ in range(400):  # 200 s of an outage, a failed attempt every half second
            if errors.failed("Connection refused"):
                times.append(clock.now - 1000.0)
            clock.now += 0.5
    # Lines at 0, then 1, 2, 4 … 32 s apart, then at most one a minute.
    assert times == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 63.0, 123.0, 183.0]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "redis unreachable: Connection refused"
    assert messages[1] == "redis unreachable: Connection refused (repeated 2 times in the last 1 s)"
    assert messages[2] == "redis unreachable: Connection refused (repeated 4 times in the last 2 s)"
    assert messages[-1] == "redis unreachable: Connection refused (repeated 120 times in the last 60 s)"
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_a_repeated_error_says_when_it_recovers_and_starts_afresh(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    errors = RepeatedError(
        logging.getLogger("hubbub.test.redis"), "redis unreachable", recovery="redis reachable again", clock=clock
    )
    with caplog.at_level(logging.WARNING, logger="hubbub.test.redis"):
        assert not errors.recovered()  # nothing to recover from
        for _ in range(10):
            errors.failed("timeout")
            clock.now += 1
        assert errors.recovered()
        assert not errors.recovered()
        assert errors.failed("timeout")  # a new outage: its first failure is logged at once
    messages = [r.getMessage() for r in caplog.records]
    assert "redis reachable again after 10 s (10 failures)" in messages
    assert messages[-1] == "redis unreachable: timeout"


def test_a_changed_cause_is_logged_at_once_but_a_flapping_one_not_forever(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    errors = RepeatedError(logging.getLogger("hubbub.test.redis"), "redis unreachable", clock=clock)
    with caplog.at_level(logging.WARNING, logger="hubbub.test.redis"):
        assert errors.failed("redis did not answer")
        clock.now += 0.1
        assert errors.failed("invalid username-password pair")  # the cause an operator has to fix
        clock.now += 0.1
        assert not errors.failed("redis did not answer")  # seen already: waits its turn
        for i in range(100):
            clock.now += 0.01
            errors.failed(f"cause {i}")
    assert len(caplog.records) == NEW_MESSAGES_PER_OUTAGE
    assert caplog.records[1].getMessage() == "redis unreachable: invalid username-password pair"


# --- a real server -----------------------------------------------------------------------------------


def json_lines(log: str) -> list[dict[str, Any]]:
    entries = []
    for line in log.splitlines():
        entry = json.loads(line)  # every line: a JSON object, nothing else on stderr or stdout
        assert isinstance(entry, dict) and entry.keys() >= REQUIRED, line
        entries.append(entry)
    return entries


@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_no_secret_or_message_body_reaches_the_log_of_a_node_at_debug_level(tmp_path: Path) -> None:
    password = "pw-" + uuid.uuid4().hex + "@:/%"
    api_key = "api-key-" + uuid.uuid4().hex
    wrong_key = "wrong-key-" + uuid.uuid4().hex
    bodies = {name: f"body-{name}-{uuid.uuid4().hex}" for name in ("ws", "api", "refused", "broadcast")}
    other_secret = "another-secret-" + uuid.uuid4().hex
    bad_token = mint_token(other_secret, sub="mallory", rooms=["*"], publish=["*"], ttl=60)
    good_token = token("alice")
    with contextlib.ExitStack() as stack:
        redis = RedisServer(tmp_path / "redis", password=password)
        stack.callback(redis.stop)
        redis.start()
        config = server_config(
            api_key=api_key,
            redis_url=redis.url,
            log_level="debug",
            log_format="json",
            node_name="logs-node",
            allowed_origins=["https://app.example.com"],
        )
        server = ServerProcess(tmp_path, config)
        stack.callback(server.kill)
        server.start().wait_ready()

        room = f"chat:{uuid.uuid4().hex[:8]}"
        client = await RawClient.connected(server.ws_url, "alice", token=good_token)
        assert "ok" in await client.call("join", room=room)
        assert "ok" in await client.call("publish", room=room, data={"text": bodies["ws"]})
        assert (await client.push("pub"))["data"] == {"text": bodies["ws"]}
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
            auth = {"authorization": f"Bearer {api_key}"}
            ok = await http.post("/api/publish", headers=auth, json={"room": room, "data": {"t": bodies["api"]}})
            assert ok.status_code == 200, ok.text
            ok = await http.post("/api/broadcast", headers=auth, json={"rooms": [room], "data": bodies["broadcast"]})
            assert ok.status_code == 200, ok.text
            wrong = {"authorization": f"Bearer {wrong_key}"}
            refused = await http.post("/api/publish", headers=wrong, json={"room": room, "data": bodies["refused"]})
            assert refused.status_code == 401
            assert (await http.get("/api/info")).status_code == 401  # no key at all
        assert (await client.push("pub"))["data"] == {"t": bodies["api"]}
        await client.close()

        mallory = await RawClient.open(server.ws_url)
        await mallory.send({"id": 1, "op": "connect", "token": bad_token})
        assert (await mallory.closed()).code == 4001
        with pytest.raises(InvalidStatus) as upgrade:
            await RawClient.open(f"{server.ws_url}?token={bad_token}")
        assert upgrade.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as origin:
            await RawClient.open(server.ws_url, origin="https://evil.example")
        assert origin.value.response.status_code == 403

        def closed_logged() -> list[dict[str, Any]]:
            entries = json_lines(server.log())
            closes = [e for e in entries if e["message"].startswith("connection closed: ")]
            assert len(closes) >= 2, [e["message"] for e in entries]
            return entries

        await until(closed_logged, what="both connections' close lines")
        server.stop()
        log = server.log()
        entries = json_lines(log)

    secrets = {
        "the valid token": good_token,
        "the bad token": bad_token,
        "the JWT secret": SECRET,
        "the API key": api_key,
        "the wrong API key": wrong_key,
        "the default test API key": API_KEY,
        "the Redis password": password,
        "the Redis password, quoted": quote(password, safe=""),
        **{f"the {name} message body": body for name, body in bodies.items()},
    }
    for line in log.splitlines():
        for what, secret in secrets.items():
            assert secret not in line, f"{what} is in the log: {line}"

    assert all(e["node"] == "logs-node" for e in entries)

    def find(logger: str, level: str, *words: str) -> dict[str, Any]:
        found = [
            e
            for e in entries
            if e["logger"] == logger and e["level"] == level and all(w in e["message"] for w in words)
        ]
        assert found, f"no {level} line of {logger} with {words}:\n" + "\n".join(e["message"] for e in entries)
        return found[0]

    start = find("hubbub", "INFO", "starting: mode=production")
    assert f"backend=redis(redis://:***@127.0.0.1:{redis.port}/0)" in start["message"]
    assert "timer_resolution=0.05" in start["message"]
    find("hubbub", "INFO", "listening on")
    find("hubbub.api", "INFO", "API request refused (401): wrong API key", "POST /api/publish")
    find("hubbub.api", "INFO", "API request refused (401): no Authorization header", "GET /api/info")
    failed = find("hubbub.auth", "INFO", "authentication failed (connect): bad_signature")
    assert failed["conn"]
    find("hubbub.auth", "INFO", "authentication failed (WebSocket upgrade): bad_signature")
    find("hubbub.origins", "WARNING", 'refused a WebSocket from origin "https://evil.example"')
    opened = find("hubbub.node", "DEBUG", "connected")
    assert opened["user"] == "alice" and opened["conn"]
    closed = [e for e in entries if e["message"].startswith("connection closed: ") and e.get("user") == "alice"]
    assert closed and closed[0]["conn"] == opened["conn"], closed
    # Expected refusals are one line each: no traceback rides along.
    assert not [e for e in entries if "exc" in e and e["level"] in ("INFO", "WARNING")]


def test_log_format_json_makes_uvicorns_and_hubbubs_start_up_lines_json() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubbub", "serve", "--port", "0", "--log-format", "json", "--log-level", "debug"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        entries: list[dict[str, Any]] = []
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, f"serve exited before listening: {entries}"
            entry = json.loads(line)
            assert entry.keys() >= REQUIRED, entry
            entries.append(entry)
            if " listening on " in entry["message"]:
                break
        loggers = {e["logger"] for e in entries}
        assert {"hubbub", "uvicorn.error"} <= loggers, loggers
        assert entries[0]["message"].startswith("starting: mode=development")
        assert any(e["message"] == "Application startup complete." for e in entries)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
