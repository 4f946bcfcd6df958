"""A private Prometheus on 127.0.0.1 for the tests: scrapes given hubbub nodes, evaluates given rules.

Everything it writes (config, rule file, TSDB, log) is inside the given work directory; it listens
on a free 127.0.0.1 port and scrapes only the static targets it is given. Scraping and rule
evaluation run every second, so a test sees a node's change within a few seconds.

    prom = Prometheus(tmp_path / "prom", {"node0": "127.0.0.1:8001"}, rules=rule_groups(FAST)).start()
    try:
        await prom.wait_for(lambda: prom.query("hubbub_connections"), what="the first scrape")
        firing = prom.firing()
    finally:
        prom.stop()

The binary: `$PROMETHEUS_BIN_DIR/prometheus` when that is set (scripts/test sets it from
scripts/install-prometheus), else whatever scripts/install-prometheus prints as its last line, else
`prometheus` on PATH.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import yaml

from tests.support.polling import until
from tests.support.procs import free_port, tail

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
#: Labels Kubernetes' Prometheus would attach to a pod's series; the dashboards select on them.
NAMESPACE = "hubbub-test"
#: Seconds between two scrapes and between two rule evaluations.
INTERVAL = 1.0


class PrometheusMissing(RuntimeError):
    """No prometheus binary: run scripts/install-prometheus (or set PROMETHEUS_BIN_DIR)."""


class QueryError(RuntimeError):
    """Prometheus refused a query (a PromQL parse or evaluation error); the message is its own."""


def prometheus_binary() -> Path:
    env = os.environ.get("PROMETHEUS_BIN_DIR")
    if env:
        candidate = Path(env) / "prometheus"
        if candidate.is_file():
            return candidate
        raise PrometheusMissing(f"PROMETHEUS_BIN_DIR={env} holds no prometheus binary")
    installer = REPO / "scripts" / "install-prometheus"
    if installer.is_file():
        # Idempotent and cached: after the first run it only prints the bin dir.
        done = subprocess.run([str(installer)], capture_output=True, text=True, timeout=600, check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode == 0 and lines and (Path(lines[-1]) / "prometheus").is_file():
            return Path(lines[-1]) / "prometheus"
        raise PrometheusMissing(f"scripts/install-prometheus failed ({done.returncode}):\n{done.stderr[-2000:]}")
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    raise PrometheusMissing("no prometheus binary: run scripts/install-prometheus or set PROMETHEUS_BIN_DIR")


def config(
    targets: Mapping[str, str], *, rule_file: str | None, namespace: str = NAMESPACE, file_sd: str | None = None
) -> dict[str, Any]:
    """The Prometheus configuration: one static target per node, labelled as a pod in `namespace` would be;
    or, with `file_sd`, the targets a file lists (Debian's Prometheus has no kubernetes_sd_configs: the real
    tier writes that file from the pod list, tests/support/realnode.py)."""
    interval = f"{INTERVAL:g}s"
    if file_sd is not None:
        discovery: dict[str, Any] = {"file_sd_configs": [{"files": [file_sd], "refresh_interval": interval}]}
    else:
        discovery = {
            "static_configs": [
                {"targets": [address], "labels": {"namespace": namespace, "pod": pod}}
                for pod, address in targets.items()
            ]
        }
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [rule_file] if rule_file else [],
        "scrape_configs": [
            {
                "job_name": "hubbub",
                "metrics_path": "/metrics",
                **discovery,
            }
        ],
    }


class Prometheus:
    """`prometheus` in its own session, config/rules/TSDB/log in `workdir`; stopped by its PID."""

    def __init__(
        self,
        workdir: Path,
        targets: Mapping[str, str],
        *,
        rules: Mapping[str, Any] | None = None,
        namespace: str = NAMESPACE,
    ) -> None:
        """`targets`: pod name -> host:port of its /metrics; `rules`: a rule file's content ({"groups": [...]})."""
        self.workdir = Path(workdir)
        self.targets = dict(targets)
        self.rules = rules
        self.namespace = namespace
        self.port = free_port()
        self.config_path = self.workdir / "prometheus.yml"
        self.rules_path = self.workdir / "rules.yml"
        self.log_path = self.workdir / "prometheus.log"
        self.data_dir = self.workdir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Prometheus:
        """Write config and rules, start Prometheus and wait until /-/ready answers 200."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        rule_file = None
        if self.rules is not None:
            self.rules_path.write_text(yaml.safe_dump(dict(self.rules), sort_keys=False))
            rule_file = str(self.rules_path)
        self.config_path.write_text(yaml.safe_dump(config(self.targets, rule_file=rule_file, namespace=self.namespace)))
        binary = prometheus_binary()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(binary),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise RuntimeError(f"prometheus exited with {code}:\n{self.log()}")
            try:
                if self._http.get("/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                self.stop()  # nobody else would: the caller gets no Prometheus to stop
                raise RuntimeError(f"prometheus was not ready within {timeout:g} s:\n{self.log()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "prometheus was never started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM by PID (Prometheus flushes its head block), SIGKILL after `grace` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(grace)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._http.close()
        self._http = httpx.Client(base_url=self.url, timeout=10)

    # -- HTTP API ----------------------------------------------------------------------------------

    def _api(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        response = self._http.get("/api/v1/" + path, params=dict(params or {}))
        try:
            body = response.json()
        except ValueError:
            response.raise_for_status()
            raise
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')} (params {dict(params or {})})")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result list (vector samples, or one scalar); QueryError if Prometheus refuses it."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self._api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query's series: each {"metric": labels, "values": [[t, "v"], ...]}."""
        data = self._api("query_range", {"query": expr, "start": start, "end": end, "step": step})
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(self, expr: str) -> dict[str, float]:
        """An instant vector keyed by its labels rendered `{a="x",...}` (the empty label set as `{}`)."""
        out: dict[str, float] = {}
        for sample in self.query(expr):
            key = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(sample["metric"].items())) + "}"
            out[key] = float(sample["value"][1])
        return out

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) from /api/v1/alerts."""
        alerts: list[dict[str, Any]] = self._api("alerts")["alerts"]
        return alerts

    def alert_states(self) -> dict[str, str]:
        """alertname -> "firing" when any instance fires, else "pending"; resolved alerts are absent."""
        states: dict[str, str] = {}
        for alert in self.alerts():
            name = alert["labels"]["alertname"]
            if states.get(name) != "firing":
                states[name] = alert["state"]
        return states

    def rules_loaded(self) -> list[dict[str, Any]]:
        """The alerting and recording rules Prometheus loaded, with each rule's health and last error."""
        return [rule for group in self._api("rules")["groups"] for rule in group["rules"]]

    def targets_health(self) -> dict[str, str]:
        """pod label -> the scrape health of its target ("up", "down", "unknown")."""
        active = self._api("targets", {"state": "active"})["activeTargets"]
        return {t["labels"].get("pod", t["scrapeUrl"]): t["health"] for t in active}

    async def wait_for(self, predicate: Callable[[], T], *, timeout: float = 60.0, what: str) -> T:
        """Poll `predicate` (a query's result, an assertion...) until it is truthy; AssertionError naming `what`
        and what was seen last, with the tail of Prometheus' log, at the deadline."""
        try:
            return await until(predicate, timeout=timeout, interval=0.25, what=what)
        except AssertionError as exc:
            if not self.running():
                raise AssertionError(f"{exc}\nprometheus is not running:\n{self.log()}") from exc
            raise
