"""Container images without Docker: layer tarballs and docker-archive files that `ctr images import` loads.

scripts/build-image builds the hubbub image's layers as directories (a debootstrap rootfs, then
the upper directories of overlay mounts, one per build step) and calls this module to pack them:

    python3 -m tests.support.image_archive layer DIR OUT.tar [--exclude PATH]...   # prints the diff id
    python3 -m tests.support.image_archive archive OUT.tar --tag hubbub:dev --layer L1.tar ... \\
        --entrypoint '["hubbub"]' --user 10001 --env PATH=/venv/bin:/usr/bin --workdir /

tests/kubernetes/test_image.py reads the archives back (`read_archive`, `unpack`): the Dockerfile's image,
which buildah writes in the same format, is checked and run from the tarball the real tier imports.

Standard library only, so it runs with the system Python before any virtualenv exists. The
archive is Docker's `docker save` layout (manifest.json, a config blob, one directory per layer),
which containerd imports as is. Overlay whiteouts in an upper directory (a 0/0 character device,
an opaque directory's xattr) become OCI whiteout entries (`.wh.NAME`, `.wh..wh..opq`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: The xattr overlayfs sets on a directory that hides everything below it in the lower layers.
OPAQUE_XATTR = "trusted.overlay.opaque"


class ArchiveError(RuntimeError):
    """A layer or archive could not be written; the message says which file and why."""


@dataclass(frozen=True)
class Layer:
    """A packed layer: its tarball and the sha256 of the uncompressed tar (the image's diff id)."""

    path: Path
    diff_id: str


class _HashingWriter:
    """A file object that hashes what passes through it (the diff id without reading the tar twice)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def excluded(relative: str, patterns: Sequence[str]) -> bool:
    """Whether a path inside the layer (no leading slash) is left out: an exact match, or below a
    pattern ending in `/*` (the directory itself stays, its contents go)."""
    for pattern in patterns:
        pattern = pattern.strip("/")
        if pattern.endswith("/*"):
            if relative.startswith(pattern[:-1]):
                return True
        elif relative == pattern or relative.startswith(pattern + "/"):
            return True
    return False


def walk(root: Path) -> Iterator[Path]:
    """Every path below root, parents before children, in a stable (sorted) order."""
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    for entry in entries:
        path = Path(entry.path)
        yield path
        if entry.is_dir(follow_symlinks=False):
            yield from walk(path)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _marker(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.REGTYPE
    info.size = 0
    info.mode = 0o644
    info.mtime = int(st.st_mtime)
    return info


def write_layer(root: Path, out: Path, exclude: Sequence[str] = ()) -> Layer:
    """Pack directory `root` as one uncompressed layer tar with numeric owners."""
    if not root.is_dir():
        raise ArchiveError(f"layer directory {root} does not exist")
    partial = out.with_name(out.name + ".partial")
    with partial.open("wb") as raw:
        writer = _HashingWriter(raw)
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for path in walk(root):
                relative = path.relative_to(root).as_posix()
                if excluded(relative, exclude):
                    continue
                st = path.lstat()
                if _is_whiteout(st):
                    tar.addfile(_marker(f"{path.parent.relative_to(root).as_posix()}/{WHITEOUT_PREFIX}{path.name}", st))
                    continue
                if stat.S_ISSOCK(st.st_mode):
                    continue  # a leftover socket is no part of an image
                info = tar.gettarinfo(str(path), arcname=relative)
                info.uname = info.gname = ""
                if info.isreg():
                    with path.open("rb") as data:
                        tar.addfile(info, data)
                else:
                    tar.addfile(info)
                if stat.S_ISDIR(st.st_mode) and _is_opaque(path):
                    tar.addfile(_marker(f"{relative}/{OPAQUE_MARKER}", st))
    partial.rename(out)
    return Layer(out, "sha256:" + writer.sha.hexdigest())


def image_config(
    diff_ids: Sequence[str],
    *,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    user: str = "",
    env: Iterable[str] = (),
    workdir: str = "/",
    labels: dict[str, str] | None = None,
    history: Sequence[str] = (),
) -> dict[str, Any]:
    """The image config blob (OCI image-spec config, as `docker save` writes it)."""
    config: dict[str, Any] = {"Env": list(env), "WorkingDir": workdir, "User": user}
    if entrypoint is not None:
        config["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        config["Cmd"] = list(cmd)
    if labels:
        config["Labels"] = dict(labels)
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": step} for step in history],
    }


def manifest(config_name: str, tags: Sequence[str], layer_names: Sequence[str]) -> list[dict[str, Any]]:
    """docker-archive's manifest.json: one image, its config blob and its layers in order."""
    return [{"Config": config_name, "RepoTags": list(tags), "Layers": list(layer_names)}]


def write_archive(out: Path, tags: Sequence[str], layers: Sequence[Layer], config: dict[str, Any]) -> Path:
    """Write a docker-archive tarball (what `docker save` produces) holding `layers` and `config`."""
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_names = [f"{layer.diff_id.removeprefix('sha256:')}/layer.tar" for layer in layers]
    manifest_bytes = json.dumps(manifest(config_name, tags, layer_names)).encode()
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, config_name, config_bytes)
        for layer, name in zip(layers, layer_names, strict=True):
            if not layer.path.is_file():
                raise ArchiveError(f"layer {layer.path} does not exist")
            tar.add(str(layer.path), arcname=name)
        _add_bytes(tar, "manifest.json", manifest_bytes)
    partial.rename(out)
    return out


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _json_member(tar: tarfile.TarFile, name: str, archive: Path) -> Any:
    try:
        member = tar.extractfile(name)
    except KeyError:
        member = None
    if member is None:
        raise ArchiveError(f"{archive} has no {name}")
    return json.load(member)


def archive_tags(path: Path) -> list[str]:
    """The tags a docker-archive declares (what `ctr images import` names the image)."""
    with tarfile.open(path) as tar:
        entries: list[dict[str, Any]] = _json_member(tar, "manifest.json", path)
    return [tag for entry in entries for tag in entry.get("RepoTags") or []]


@dataclass(frozen=True)
class Image:
    """A docker-archive's single image: its config blob and its layers' member names, bottom first."""

    config: dict[str, Any]
    layers: tuple[str, ...]


def read_archive(path: Path) -> Image:
    with tarfile.open(path) as tar:
        entries: list[dict[str, Any]] = _json_member(tar, "manifest.json", path)
        if len(entries) != 1:
            raise ArchiveError(f"{path} holds {len(entries)} images, not one")
        config = _json_member(tar, entries[0]["Config"], path)
    return Image(config, tuple(entries[0]["Layers"]))


def layer_members(path: Path) -> Iterator[tuple[int, tarfile.TarInfo]]:
    """Every entry of every layer of a docker-archive (layer index, entry), without unpacking."""
    image = read_archive(path)
    with tarfile.open(path) as tar:
        for index, name in enumerate(image.layers):
            with tarfile.open(fileobj=tar.extractfile(name), mode="r|*") as layer:
                for member in layer:
                    yield index, member


def _inside(root: Path, path: Path) -> Path:
    """`path` with its parents' links resolved, refused if that leaves `root`."""
    resolved = Path(os.path.realpath(path.parent)) / path.name
    if not resolved.is_relative_to(os.path.realpath(root)):
        raise ArchiveError(f"{path} leaves the root filesystem {root}")
    return resolved


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()


def _inside_with_modes(member: tarfile.TarInfo, root: str) -> tarfile.TarInfo:
    """tarfile's "tar" filter, which refuses what would land outside root (through a link), but
    with the modes as they are: /tmp's sticky bit and world write are what a runtime copies onto
    the tmpfs it mounts there."""
    return tarfile.tar_filter(member, root).replace(mode=member.mode, deep=False)


def unpack(path: Path, root: Path) -> Image:
    """The root filesystem of a docker-archive's image, as a runtime makes it: each layer in order
    over the ones below, its whiteouts deleting what they name. Owners are kept when run as root."""
    image = read_archive(path)
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path) as tar:
        for name in image.layers:
            with tarfile.open(fileobj=tar.extractfile(name), mode="r|*") as layer:
                for member in layer:
                    target = root / member.name
                    base = PurePosixPath(member.name).name
                    if base == OPAQUE_MARKER:
                        directory = _inside(root, target).parent
                        for child in directory.iterdir() if directory.is_dir() else ():
                            _remove(child)
                    elif base.startswith(WHITEOUT_PREFIX):
                        _remove(_inside(root, target.with_name(base.removeprefix(WHITEOUT_PREFIX))))
                    else:
                        existing = _inside(root, target)
                        if not (member.isdir() and existing.is_dir() and not existing.is_symlink()):
                            _remove(existing)
                        layer.extract(member, root, numeric_owner=True, filter=_inside_with_modes)
    return image


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.support.image_archive", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    layer = commands.add_parser("layer", help="pack a directory as a layer tar; prints its diff id")
    layer.add_argument("root", type=Path)
    layer.add_argument("out", type=Path)
    layer.add_argument("--exclude", action="append", default=[], help="path inside the layer; DIR/* for contents")
    archive = commands.add_parser("archive", help="write a docker-archive from layer tars")
    archive.add_argument("out", type=Path)
    archive.add_argument("--tag", action="append", required=True)
    archive.add_argument("--layer", action="append", required=True, help="LAYER.tar (its diff id: LAYER.tar.diffid)")
    archive.add_argument("--entrypoint", type=json.loads, default=None, help="JSON list")
    archive.add_argument("--cmd", type=json.loads, default=None, help="JSON list")
    archive.add_argument("--user", default="")
    archive.add_argument("--env", action="append", default=[])
    archive.add_argument("--workdir", default="/")
    archive.add_argument("--history", action="append", default=[], help="the step that made each layer")
    args = parser.parse_args(argv)
    try:
        if args.command == "layer":
            packed = write_layer(args.root, args.out, args.exclude)
            Path(str(args.out) + ".diffid").write_text(packed.diff_id + "\n")
            print(packed.diff_id)
        else:
            layers = [Layer(Path(p), _read_diff_id(Path(p))) for p in args.layer]
            config = image_config(
                [layer.diff_id for layer in layers],
                entrypoint=args.entrypoint,
                cmd=args.cmd,
                user=args.user,
                env=args.env,
                workdir=args.workdir,
                history=args.history,
            )
            write_archive(args.out, args.tag, layers, config)
            print(args.out)
    except (ArchiveError, OSError, ValueError) as exc:
        print(f"image_archive: {exc}", file=sys.stderr)
        return 1
    return 0


def _read_diff_id(layer: Path) -> str:
    marker = Path(str(layer) + ".diffid")
    try:
        return marker.read_text().strip()
    except OSError as exc:
        raise ArchiveError(f"{marker} is missing: pack the layer with `layer` first") from exc


if __name__ == "__main__":
    sys.exit(main())
