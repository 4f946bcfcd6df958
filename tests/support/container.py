"""An image's root filesystem run with runc, as a pod's container is: read-only root, /tmp writable.

    rootfs = tmp / "rootfs"
    image = image_archive.unpack(hubbub_tar, rootfs)
    with Container(rootfs, image.config, tmp / "c", ["hubbub", "serve", "--port", "8123"]) as c:
        ...                                             # c.log() is its output so far
    done = run_once(rootfs, image.config, tmp / "c2", ["hubbub-operator", "--help"])

What the spec (`runtime_spec`, pure) takes from the image config is what containerd's CRI takes:
the user (numeric, `uid[:gid]`), the environment and the working directory. The pods' security
context is reproduced: `readOnlyRootFilesystem` (the root is mounted read-only), an emptyDir on
/tmp (here a tmpfs), no capabilities, no new privileges. The container shares the host's network
namespace, so a test reaches its port on 127.0.0.1; it gets its own PID, IPC, UTS and mount
namespaces, and runc's cgroups, which `runc delete` removes. runc's state lives in the container's
work directory, so nothing outside it is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.procs import tail

#: Seconds a container gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0


class ContainerError(RuntimeError):
    """The container could not be set up or run; the message says why, with its output."""


def image_user(config: dict[str, Any]) -> tuple[int, int]:
    """The numeric uid and gid of an image config's User (`uid` or `uid:gid`); a name is refused,
    as the kubelet's runAsNonRoot check refuses it (it cannot tell a name's uid)."""
    user = str(config.get("config", {}).get("User") or "0")
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise ContainerError(f"image user {user!r} is not numeric")
    return int(uid), int(gid or uid)


def runtime_spec(rootfs: Path, config: dict[str, Any], args: Sequence[str], *, tmp_size: str = "64m") -> dict[str, Any]:
    """The OCI runtime spec (runc's config.json) of one process of the image, as a pod runs it."""
    image = config.get("config", {})
    uid, gid = image_user(config)
    no_caps: dict[str, list[str]] = {
        kind: [] for kind in ("bounding", "effective", "permitted", "inheritable", "ambient")
    }
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": list(args),
            "env": list(image.get("Env") or []),
            "cwd": image.get("WorkingDir") or "/",
            "capabilities": no_caps,
            "noNewPrivileges": True,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}],
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "hubbub-image-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            # The pods' emptyDir on /tmp: the only place the service may write.
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", f"size={tmp_size}"],
            },
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


class Container:
    """One runc container of `rootfs` running `args`, in `workdir` (bundle, runc state, log)."""

    def __init__(self, rootfs: Path, config: dict[str, Any], workdir: Path, args: Sequence[str]) -> None:
        runc = shutil.which("runc")
        if runc is None:
            raise ContainerError("runc is not installed (apt-get install runc, or scripts/build-image installs it)")
        self.runc = runc
        self.workdir = workdir
        self.state = workdir / "runc"
        self.bundle = workdir / "bundle"
        self.log_path = workdir / "container.log"
        # Unique on the machine: runc's cgroups are named after it.
        self.id = f"hubbub-image-{os.getpid()}-{workdir.name}"
        self.spec = runtime_spec(rootfs, config, args)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.bundle.mkdir(parents=True, exist_ok=True)
        (self.bundle / "config.json").write_text(json.dumps(self.spec, indent=1))
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [self.runc, "--root", str(self.state), "run", "--bundle", str(self.bundle), self.id],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return tail(self.log_path, 60)

    def wait(self, timeout: float) -> int:
        """The container's exit status (runc's is the process's)."""
        assert self.process is not None, "start() first"
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ContainerError(
                f"{self.spec['process']['args']} still runs after {timeout:g} s:\n{self.log()}"
            ) from None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; then runc's state and cgroups go."""
        if self.process is not None and self.process.poll() is None:
            self._runc("kill", self.id, "TERM")
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._runc("kill", self.id, "KILL")
                self.process.wait(timeout=STOP_TIMEOUT)
        self._runc("delete", "--force", self.id)

    def _runc(self, *argv: str) -> None:
        # Failures are expected: `runc run` deletes its container itself when the process exits.
        subprocess.run([self.runc, "--root", str(self.state), *argv], capture_output=True, timeout=30)

    def __enter__(self) -> Container:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def run_once(
    rootfs: Path, config: dict[str, Any], workdir: Path, args: Sequence[str], timeout: float = 60
) -> tuple[int, str]:
    """Run `args` in a container of the image to completion: its exit status and output."""
    container = Container(rootfs, config, workdir, args)
    with container:
        status = container.wait(timeout)
    return status, container.log_path.read_text(errors="replace")
