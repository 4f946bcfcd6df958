"""How a node reaches Redis: password, ACL user, TLS (`rediss://`) and Sentinel failover, on real processes.

Every Redis, Sentinel and hubbub process runs on 127.0.0.1 with its files under the test's tmp_path, and is
stopped in a `finally` (an ExitStack registered before each start, so a failed start is cleaned up too).
A wrongly configured node must not crash: it stays alive, `/healthz` answers 200, `/readyz` and publishes 503.

The failover tests accept exactly two outcomes: every client holds every acknowledged publication in offset
order without duplicates, or (the failover lost acknowledged writes) the clients were told: close 4011, then
a join reply with recovered=false and a new epoch. Anything else is a silent gap and fails. A natural failover
on one machine practically never loses a write; a second test forces the loss and checks the clients are told.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis.backoff import NoBackoff
from redis.retry import Retry

from hubbub.backends import create_backends
from hubbub.backends.redis_pool import POOL_SIZE
from hubbub.loader import load_settings
from tests.process.scaleout.test_backends import Recorder
from tests.support.polling import until
from tests.support.receiver import CloseSeen, Event, JoinReply, PubPush, Receiver
from tests.support.redis_server import REDIS_SERVER, RedisServer, SentinelGroup
from tests.support.server import API_KEY, ServerProcess, server_config
from tests.support.wsclient import RawClient

pytestmark = pytest.mark.redis

#: Seconds a misconfigured node is watched to stay unready (its health loop runs every second).
UNREADY_WATCH = 3.0


# --- processes ---------------------------------------------------------------------------------------


def node(stack: contextlib.ExitStack, workdir: Path, name: str, **overrides: Any) -> ServerProcess:
    """A hubbub node (not started yet) that is killed when `stack` closes."""
    proc = ServerProcess(
        workdir, server_config(node_name=name, presence_ttl=3, position_check_interval=0.5, **overrides)
    )
    stack.callback(proc.kill)
    return proc


async def start_all(*procs: ServerProcess) -> None:
    """Start nodes in parallel (each start waits for `/healthz`)."""
    await asyncio.gather(*(asyncio.to_thread(proc.start) for proc in procs))


def redis_server(stack: contextlib.ExitStack, server: RedisServer) -> RedisServer:
    stack.callback(server.stop)
    return server.start()


async def ready(proc: ServerProcess, timeout: float = 30.0) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        deadline = time.monotonic() + timeout
        while True:
            response = await http.get(proc.http_url + "/readyz")
            if response.status_code == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{proc.http_url} not ready after {timeout}s: {response.text}\n{proc.log()[-3000:]}"
                )
            await asyncio.sleep(0.1)


async def assert_unavailable_not_crashed(proc: ServerProcess, cause: str | None = None) -> None:
    """Unready for `UNREADY_WATCH` seconds, publishes 503, `/healthz` 200, joins 503, process alive, and the
    log names `cause` (what an operator needs to fix the configuration)."""
    async with httpx.AsyncClient(timeout=5, headers={"authorization": f"Bearer {API_KEY}"}) as http:
        deadline = time.monotonic() + UNREADY_WATCH
        while time.monotonic() < deadline:
            response = await http.get(proc.http_url + "/readyz")
            assert response.status_code == 503, response.text
            assert response.json()["reason"] == "broker unavailable"
            await asyncio.sleep(0.2)
        published = await http.post(proc.http_url + "/api/publish", json={"room": "chat:nope", "data": 1})
        assert published.status_code == 503, published.text
        assert (await http.get(proc.http_url + "/healthz")).status_code == 200
    async with ws_client(proc.ws_url, "carol") as client:
        joined = await client.call("join", room="chat:nope")
        assert joined.get("error", {}).get("code") == 503, joined
    assert proc.running(), proc.log()[-3000:]
    if cause is not None:
        assert f"redis unreachable: {cause}" in proc.log(), proc.log()[-3000:]


@contextlib.asynccontextmanager
async def ws_client(url: str, user: str) -> AsyncIterator[RawClient]:
    client = await RawClient.connected(url, user)
    try:
        yield client
    finally:
        await client.close()


def room() -> str:
    return f"chat:{uuid.uuid4().hex[:10]}"


async def assert_end_to_end(publisher: ServerProcess, member: ServerProcess, name: str | None = None) -> None:
    """A client joined on `member` to `name` (a fresh room by default) gets a publication made through
    `publisher`'s HTTP API."""
    await asyncio.gather(ready(publisher), ready(member))
    name = name or room()
    async with ws_client(member.ws_url, "alice") as client:
        joined = (await client.call("join", room=name))["ok"]
        async with httpx.AsyncClient(timeout=5, headers={"authorization": f"Bearer {API_KEY}"}) as http:
            response = await http.post(publisher.http_url + "/api/publish", json={"room": name, "data": {"n": 1}})
        assert response.status_code == 200, response.text
        assert response.json() == {"epoch": joined["epoch"], "offset": joined["offset"] + 1}
        push = await client.push("pub")
        assert (push["room"], push["offset"], push["data"]) == (name, joined["offset"] + 1, {"n": 1})


# --- 1. password ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_password_in_the_url_works_and_a_wrong_or_missing_one_leaves_the_node_unready(tmp_path: Path) -> None:
    password = "p@ss:w/rd %41 #?"  # characters that must be percent-encoded in the URL
    with contextlib.ExitStack() as stack:
        server = redis_server(stack, RedisServer(tmp_path / "redis", password=password))
        assert "%40" in server.url and "%25" in server.url
        wrong_url = f"redis://:{quote(password + 'x', safe='')}@127.0.0.1:{server.port}/0"
        good = [node(stack, tmp_path, f"good{i}", redis_url=server.url) for i in range(2)]
        wrong = node(stack, tmp_path, "wrong", redis_url=wrong_url)
        missing = node(stack, tmp_path, "missing", redis_url=f"redis://127.0.0.1:{server.port}/0")
        await start_all(*good, wrong, missing)

        await assert_end_to_end(good[0], good[1])
        await asyncio.gather(
            assert_unavailable_not_crashed(wrong, "invalid username-password pair"),
            assert_unavailable_not_crashed(missing, "Authentication required"),
        )
        # The good nodes are not disturbed by their misconfigured neighbours.
        await assert_end_to_end(good[1], good[0])
        for proc in (*good, wrong, missing):
            log = proc.log()
            assert password not in log and quote(password, safe="") not in log, "a Redis password was logged"


async def test_the_log_names_the_cause_even_when_the_first_attempt_timed_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node that starts while Redis is too slow to answer logs a timeout first (what a loaded machine does
    to a TLS handshake). Once Redis answers and refuses the password, the log must name that cause too: it
    is the one an operator has to fix."""
    with contextlib.ExitStack() as stack:
        server = redis_server(stack, RedisServer(tmp_path / "redis", password="right"))
        os.kill(server.pid, signal.SIGSTOP)
        stack.callback(os.kill, server.pid, signal.SIGCONT)  # before the server is stopped
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"
        backends = create_backends(load_settings(env={}, overrides={"redis_url": url, "redis_timeout": 0.5}))
        with caplog.at_level(logging.WARNING, logger="hubbub.redis"):
            await backends.broker.start(Recorder())
            try:
                await until(lambda: "redis unreachable: redis did not answer" in caplog.text, what="the timeout")
                os.kill(server.pid, signal.SIGCONT)
                await until(
                    lambda: "redis unreachable: invalid username-password pair" in caplog.text,
                    what="the password refusal in the log",
                )
            finally:
                await backends.aclose()


# --- 2. ACL user -----------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_acl_user_in_the_url_works_end_to_end_when_the_default_user_is_disabled(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        server = redis_server(stack, RedisServer(tmp_path / "redis"))
        server.command("ACL", "SETUSER", "hubbub", "on", ">secret", "~*", "&*", "+@all")
        server.command("ACL", "SETUSER", "default", "off")
        with pytest.raises(redis.AuthenticationError):
            server.command("PING")  # only the ACL user gets in now

        url = f"redis://hubbub:secret@127.0.0.1:{server.port}/0"
        nodes = [node(stack, tmp_path, f"acl{i}", redis_url=url) for i in range(2)]
        default_user = node(stack, tmp_path, "default", redis_url=f"redis://:secret@127.0.0.1:{server.port}/0")
        await start_all(*nodes, default_user)

        await assert_end_to_end(nodes[0], nodes[1])
        await assert_unavailable_not_crashed(default_user, "invalid username-password pair or user is disabled")
        with server.client(username="hubbub", password="secret") as admin:
            users = {str(c["name"]): str(c["user"]) for c in admin.client_list() if c.get("name")}
        for name in ("hubbub-acl0", "hubbub-sub-acl0", "hubbub-acl1", "hubbub-sub-acl1"):
            assert users.get(name) == "hubbub", users


# --- 3. TLS -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def write_tls_files(root: Path) -> TlsFiles:
    """A throwaway CA and a certificate for 127.0.0.1 / localhost, for serving and for client authentication
    (a Redis Cluster's nodes present it to each other: the cluster bus always asks a peer for a certificate)."""
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    later = now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hubbub-redis-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(root / "ca.crt", root / "redis.crt", root / "redis.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    files.key.chmod(0o600)
    return files


def tls_config(tls: TlsFiles) -> list[str]:
    """Config lines for a TLS server or client (`tls-replication yes`: replicas and Sentinels connect with TLS)."""
    return [
        f'tls-cert-file "{tls.cert}"',
        f'tls-key-file "{tls.key}"',
        f'tls-ca-cert-file "{tls.ca}"',
        "tls-replication yes",
    ]


class TlsRedisServer(RedisServer):
    """A redis-server that listens only for TLS (`port 0`, `tls-port <port>`), clients not authenticated."""

    def __init__(self, workdir: Path, tls: TlsFiles, *, replica_of: tuple[str, int] | None = None) -> None:
        super().__init__(workdir, replica_of=replica_of)
        self.tls = tls

    def config_text(self) -> str:
        plain = super().config_text().replace(f"\nport {self.port}\n", "\nport 0\n")
        assert "\nport 0\n" in plain
        tls = [f"tls-port {self.port}", *tls_config(self.tls), "tls-auth-clients no"]
        return plain + "\n".join(tls) + "\n"

    @property
    def url(self) -> str:
        ca = quote(str(self.tls.ca), safe="")
        return f"rediss://127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"

    def _session(self, timeout: float) -> contextlib.AbstractContextManager[redis.Redis]:
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self.tls.ca),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            single_connection_client=True,
        )
        return contextlib.closing(client)


def tls_unsupported(workdir: Path) -> str | None:
    """Why this redis-server cannot serve TLS, or None. A TLS build with nothing to listen on just exits."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [REDIS_SERVER, "--port", "0", "--tls-port", "0", "--save", "", "--appendonly", "no"]
    try:
        done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{REDIS_SERVER} could not be probed for TLS: {exc}"
    output = done.stdout + done.stderr
    if "Bad directive" in output or "TLS" in output and "not" in output.lower() and "support" in output.lower():
        return f"{REDIS_SERVER} was built without TLS support (`--tls-port` rejected): {output.strip()[-300:]}"
    return None


@pytest.mark.timeout(60)
async def test_rediss_url_with_a_private_ca_works_end_to_end(tmp_path: Path) -> None:
    reason = tls_unsupported(tmp_path / "probe")
    if reason is not None:
        pytest.skip(reason)
    tls = write_tls_files(tmp_path / "pki")
    with contextlib.ExitStack() as stack:
        server = redis_server(stack, TlsRedisServer(tmp_path / "redis", tls))
        assert server.command("PING") is True
        nodes = [node(stack, tmp_path, f"tls{i}", redis_url=server.url) for i in range(2)]
        # Without the private CA the certificate cannot be verified; plain TCP finds no TLS-less listener.
        untrusted = node(stack, tmp_path, "untrusted", redis_url=f"rediss://127.0.0.1:{server.port}/0")
        plaintext = node(stack, tmp_path, "plaintext", redis_url=f"redis://127.0.0.1:{server.port}/0")
        await start_all(*nodes, untrusted, plaintext)

        await assert_end_to_end(nodes[0], nodes[1])
        await asyncio.gather(
            assert_unavailable_not_crashed(untrusted, "Error 1 connecting"),
            assert_unavailable_not_crashed(plaintext),
        )
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.log()
        assert {"hubbub-tls0", "hubbub-sub-tls1"} <= set(server.client_names())


class TlsSentinelGroup(SentinelGroup):
    """A TLS-only master and replica watched by one plain-TCP Sentinel that reaches them over TLS.

    One Sentinel (quorum 1): Sentinels with `tls-replication` would also talk TLS to each other.
    """

    SENTINELS = 1
    QUORUM = 1

    def __init__(self, workdir: Path, tls: TlsFiles) -> None:
        super().__init__(workdir)
        self.tls = tls
        self.master = TlsRedisServer(self.workdir / "master", tls)
        self.replica = TlsRedisServer(self.workdir / "replica", tls, replica_of=self.master.address)

    def sentinel_config_text(self, port: int) -> str:
        return super().sentinel_config_text(port) + "\n".join(tls_config(self.tls)) + "\n"


@pytest.mark.timeout(60)
async def test_rediss_url_with_sentinels_reaches_the_discovered_master_over_tls(tmp_path: Path) -> None:
    reason = tls_unsupported(tmp_path / "probe")
    if reason is not None:
        pytest.skip(reason)
    tls = write_tls_files(tmp_path / "pki")
    with contextlib.ExitStack() as stack:
        group = TlsSentinelGroup(tmp_path / "sentinel", tls)
        stack.callback(group.stop)
        group.start()
        assert group.master_address() == group.master.address
        settings: dict[str, Any] = {
            # The URL's host is never used with Sentinels; the scheme and the ssl_* options are.
            "redis_url": f"rediss://ignored.invalid/0?ssl_ca_certs={quote(str(tls.ca), safe='')}",
            "redis_sentinels": [f"{host}:{port}" for host, port in group.sentinels],
            "redis_sentinel_service": group.service,
        }
        nodes = [node(stack, tmp_path, f"stls{i}", **settings) for i in range(2)]
        await start_all(*nodes)

        await assert_end_to_end(nodes[0], nodes[1])
        # The master has no plain-TCP listener: these connections are TLS.
        assert {"hubbub-stls0", "hubbub-sub-stls1"} <= set(group.master.client_names())


# --- 4. Sentinel failover ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """One acknowledged publish: the `index`-th message of the stream and where the service put it."""

    index: int
    epoch: str
    offset: int


@dataclass
class Verdict:
    """What one client was told: `complete` (everything acknowledged) or `told` (a 4011 and a new epoch)."""

    outcome: str
    received: dict[tuple[str, int], Any] = field(default_factory=dict)


def verdict(events: list[Event], acked: list[Ack]) -> Verdict:
    """Judge one client's record against the acknowledged stream; AssertionError unless one of the two outcomes."""
    by_epoch: dict[str, list[Ack]] = {}
    for ack in acked:
        by_epoch.setdefault(ack.epoch, []).append(ack)
    for epoch, acks in by_epoch.items():
        offsets = [a.offset for a in acks]
        assert offsets == sorted(set(offsets)), (
            f"epoch {epoch} acknowledged offsets out of order or reused (acknowledged writes lost without a new "
            f"epoch): {offsets}"
        )

    received: dict[tuple[str, int], Any] = {}
    position: tuple[str, int] | None = None
    last_close: int | None = None
    #: (epoch left behind, new epoch, offset the client rejoined at)
    told: list[tuple[str, str, int]] = []
    for number, event in enumerate(events):
        where = f"event {number} {event!r}"
        if isinstance(event, CloseSeen):
            last_close = event.code
        elif isinstance(event, JoinReply):
            if position is None:
                assert event.recovered is None and not event.publications, where
            elif event.recovered:
                assert event.epoch == position[0], f"recovered across epochs: {where}"
                offsets = [offset for offset, _ in event.publications]
                assert offsets == list(range(position[1] + 1, event.offset + 1)), f"recovery not contiguous: {where}"
                for offset, data in event.publications:
                    received[(event.epoch, offset)] = data
            else:
                assert last_close == 4011 and event.epoch != position[0], (
                    f"silent gap: recovered=false without a 4011 close and a new epoch (was at {position}, last "
                    f"close {last_close}): {where}"
                )
                told.append((position[0], event.epoch, event.offset))
            position = (event.epoch, event.offset)
            last_close = None
        elif isinstance(event, PubPush):
            assert position is not None, f"pub before any join: {where}"
            assert event.offset == position[1] + 1, f"gap, duplicate or disorder after {position}: {where}"
            assert (position[0], event.offset) not in received, f"duplicate: {where}"
            received[(position[0], event.offset)] = event.data
            position = (position[0], event.offset)

    for ack in acked:
        key = (ack.epoch, ack.offset)
        if key in received:
            assert received[key] == ack.index, f"{ack} arrived with other data {received[key]!r}: offsets reused"
            continue
        excused = any(ack.epoch == old or (ack.epoch == new and ack.offset <= at) for old, new, at in told)
        assert excused, f"silent gap: acknowledged {ack} never arrived and the client was not told (told: {told})"
    return Verdict("told" if told else "complete", received)


def test_failover_verdict_accepts_exactly_the_two_outcomes() -> None:
    acked = [Ack(i, "e1", i) for i in range(1, 5)]
    first = JoinReply("e1", 0, None, ())
    complete: list[Event] = [first, PubPush(1, 1), PubPush(2, 2), CloseSeen(1006)]
    complete += [JoinReply("e1", 4, True, ((3, 3), (4, 4)))]
    assert verdict(complete, acked).outcome == "complete"

    # Writes 3 and 4 lost by the failover, the room restarted as e2: told by 4011 and a new epoch.
    lost = [*acked[:2], Ack(3, "e2", 1), Ack(4, "e2", 2)]
    told: list[Event] = [first, PubPush(1, 1), PubPush(2, 2), CloseSeen(4011), JoinReply("e2", 1, False, ())]
    told += [PubPush(2, 4)]
    assert verdict(told, lost).outcome == "told"

    silent: list[list[Event]] = [
        [first, PubPush(1, 1), PubPush(2, 2), PubPush(4, 4)],  # a gap
        [first, PubPush(1, 1), PubPush(2, 2), PubPush(2, 2), PubPush(3, 3), PubPush(4, 4)],  # a duplicate
        [first, PubPush(1, 1), PubPush(2, 2), PubPush(3, 3)],  # the last one never came
        [first, PubPush(1, 1), CloseSeen(1006), JoinReply("e1", 4, False, ())],  # not recovered, not told
        [first, PubPush(1, 1), CloseSeen(1006), JoinReply("e2", 0, False, ())],  # new epoch without a 4011
        [first, PubPush(1, 1), CloseSeen(4011), JoinReply("e1", 4, False, ())],  # 4011 but the same epoch
    ]
    for events in silent:
        with pytest.raises(AssertionError):
            verdict(events, acked)
    # Writes lost and their offsets handed out again in the same epoch: never acceptable.
    with pytest.raises(AssertionError, match="reused"):
        verdict(complete, [*acked[:3], Ack(4, "e1", 3)])
    # Everything delivered, but the data at an offset is not what was acknowledged there.
    with pytest.raises(AssertionError, match="other data"):
        verdict([first, PubPush(1, 1), PubPush(2, 2), PubPush(3, "x"), PubPush(4, 4)], acked)


async def publish_stream(
    urls: list[str],
    name: str,
    count: int,
    acked: list[Ack],
    *,
    first: int = 0,
    rate: float = 50.0,
    deadline: float = 30.0,
) -> None:
    """Publish messages first..first+count-1 (the data is the number) through alternating nodes' HTTP APIs,
    each retried (same idempotency key) while the answer is 503 or none; any other answer fails the test."""
    series = uuid.uuid4().hex[:8]
    give_up = time.monotonic() + deadline
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {API_KEY}"}, timeout=3) as http:
        for index in range(first, first + count):
            attempt = 0
            while True:
                url = urls[(index + attempt) % len(urls)]
                attempt += 1
                body = {"room": name, "data": index, "idempotency_key": f"{series}-{index}"}
                try:
                    response = await http.post(url + "/api/publish", json=body)
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 200:
                    result = response.json()
                    acked.append(Ack(index, str(result["epoch"]), int(result["offset"])))
                    break
                if response is not None and response.status_code != 503:
                    raise AssertionError(f"publish {index}: {response.status_code} {response.text}")
                assert time.monotonic() < give_up, f"publish {index} still failing after {deadline}s"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1 / rate)


@contextlib.contextmanager
def sentinel_group(workdir: Path, password: str) -> Iterator[SentinelGroup]:
    group = SentinelGroup(workdir, password=password)
    try:
        yield group.start()
    finally:
        group.stop()


def sentinel_settings(group: SentinelGroup, password: str) -> dict[str, Any]:
    return {
        # With Sentinels the URL supplies only the credentials (and db); its host is never used.
        "redis_url": f"redis://:{quote(password, safe='')}@ignored.invalid/0",
        "redis_sentinels": [f"{host}:{port}" for host, port in group.sentinels],
        "redis_sentinel_service": group.service,
        "redis_timeout": 1.0,
        "namespaces": {"fo": {"history_size": 1000, "history_ttl": 300}},
    }


def judge(receivers: list[Receiver], acked: list[Ack]) -> list[str]:
    """Every client's verdict; the outcome must be the same for all (complete, or told with a new epoch)."""
    outcomes = [verdict(r.events, acked).outcome for r in receivers]
    epochs = sorted({a.epoch for a in acked})
    closes = [[e.code for e in r.events if isinstance(e, CloseSeen)] for r in receivers]
    print(f"outcomes {outcomes}, acknowledged epochs {epochs}, closes {closes}")
    if len(epochs) == 1:
        assert set(outcomes) == {"complete"}, outcomes
    else:
        # Acknowledged writes were lost and the room restarted: every client must have been told.
        assert set(outcomes) == {"told"}, outcomes
    last = acked[-1]
    assert all(r.at(last.epoch, last.offset) for r in receivers), [r.position for r in receivers]
    return outcomes


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_sentinel_failover_mid_stream_loses_nothing_silently(tmp_path: Path) -> None:
    password = "sentinel-p@ss"
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(sentinel_group(tmp_path / "sentinel", password))
        old_master = group.master_address()
        nodes = [node(stack, tmp_path, f"sn{i}", **sentinel_settings(group, password)) for i in range(2)]
        await start_all(*nodes)
        await asyncio.gather(*(ready(proc) for proc in nodes))

        name = f"fo:{uuid.uuid4().hex[:10]}"
        urls = [proc.ws_url for proc in nodes]
        group_receivers = [Receiver([urls[i % 2], urls[(i + 1) % 2]], name, f"user{i}") for i in range(6)]
        acked: list[Ack] = []
        try:
            for receiver in group_receivers:
                receiver.start()
            await asyncio.wait_for(asyncio.gather(*(r.joined.wait() for r in group_receivers)), 30)

            count = 150
            publisher = asyncio.create_task(publish_stream([p.http_url for p in nodes], name, count, acked))
            try:
                await until(lambda: len(acked) >= 30 or publisher.done(), what="30 acknowledged publications")
                new_master = await asyncio.to_thread(group.fail_master)
                acked_before_promotion = len(acked)
                await asyncio.wait_for(asyncio.shield(publisher), 60)
            finally:
                publisher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publisher
            assert new_master != old_master and group.master_address() == new_master
            assert [a.index for a in acked] == list(range(count))
            assert count - acked_before_promotion >= 50, "publishing did not go on after the promotion"
            await asyncio.gather(*(ready(proc) for proc in nodes))

            last = acked[-1]
            # A timeout here is judged below, where the record says what went wrong.
            with contextlib.suppress(AssertionError):
                await until(lambda: all(r.at(last.epoch, last.offset) for r in group_receivers))
        finally:
            for receiver in group_receivers:
                await receiver.stop()

        for proc in nodes:
            assert proc.running(), proc.log()[-3000:]
        print(f"failover {old_master} -> {new_master}")
        judge(group_receivers, acked)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_sentinel_failover_that_loses_acknowledged_writes_tells_the_clients(tmp_path: Path) -> None:
    """Force the loss: the replica is frozen and cut off while the master acknowledges three more publications,
    then the master is killed and the replica (without them) promoted."""
    password = "sentinel-p@ss"
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(sentinel_group(tmp_path / "sentinel", password))
        nodes = [node(stack, tmp_path, f"lw{i}", **sentinel_settings(group, password)) for i in range(2)]
        await start_all(*nodes)
        await asyncio.gather(*(ready(proc) for proc in nodes))

        name = f"fo:{uuid.uuid4().hex[:10]}"
        urls = [proc.ws_url for proc in nodes]
        http_urls = [p.http_url for p in nodes]
        group_receivers = [Receiver([urls[i % 2], urls[(i + 1) % 2]], name, f"user{i}") for i in range(4)]
        acked: list[Ack] = []
        try:
            for receiver in group_receivers:
                receiver.start()
            await asyncio.wait_for(asyncio.gather(*(r.joined.wait() for r in group_receivers)), 30)
            await publish_stream(http_urls, name, 5, acked)
            await until(lambda: all(r.at(acked[-1].epoch, acked[-1].offset) for r in group_receivers))

            replica = group.replica
            replica_pid = replica.pid
            os.kill(replica_pid, signal.SIGSTOP)
            try:
                assert int(group.master.command("CLIENT", "KILL", "TYPE", "replica")) >= 1
                unreplicated: list[Ack] = []
                await publish_stream(http_urls, name, 3, unreplicated, first=5)
                old_master = group.master
                failing = asyncio.create_task(asyncio.to_thread(group.fail_master))
                # The master is dead before the replica can reconnect (a frozen replica cannot be promoted,
                # so the failover cannot finish before SIGCONT).
                await until(lambda: not old_master.running or failing.done(), what="the master to be killed")
            finally:
                os.kill(replica_pid, signal.SIGCONT)
            await failing
            offset = group.master.command("HGET", f"hubbub:{{{name}}}:meta", "offset")
            if offset is not None and int(offset) >= unreplicated[-1].offset:
                pytest.skip(f"the failover lost nothing this time (new master at offset {offset})")
            acked += unreplicated
            await publish_stream(http_urls, name, 4, acked, first=8)
            await asyncio.gather(*(ready(proc) for proc in nodes))
            # A timeout here is judged below, where the record says what went wrong.
            with contextlib.suppress(AssertionError):
                await until(lambda: all(r.at(acked[-1].epoch, acked[-1].offset) for r in group_receivers))
        finally:
            for receiver in group_receivers:
                await receiver.stop()
        judge(group_receivers, acked)


async def test_a_join_burst_through_sentinel_waits_for_a_pooled_connection_instead_of_failing_503(
    tmp_path: Path,
) -> None:
    password = "sentinel-p@ss"
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(sentinel_group(tmp_path / "sentinel", password))
        settings = sentinel_settings(group, password)
        settings["namespaces"] = {"pr": {"presence": True}}
        proc = node(stack, tmp_path, "burst", **settings)
        await start_all(proc)
        await ready(proc)
        clients = await asyncio.gather(*(RawClient.connected(proc.ws_url, f"u{i}") for i in range(150)))
        try:
            name = f"pr:{uuid.uuid4().hex[:10]}"
            replies = await asyncio.gather(*(c.call("join", room=name) for c in clients))
            assert all("ok" in r for r in replies), [r for r in replies if "ok" not in r][:3]
            stats = await clients[0].call("presence_stats", room=name)
            assert stats["ok"] == {"clients": 150, "users": 150}
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        names = group.master.client_names()
        # The pool (64) and the pipelined command connection; the subscriber is named hubbub-sub-burst.
        assert names.count("hubbub-burst") <= POOL_SIZE + 1, names
