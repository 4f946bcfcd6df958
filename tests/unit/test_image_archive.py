"""Image tarballs without Docker (tests/support/image_archive.py, used by scripts/build-image)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.support.image_archive import (
    ArchiveError,
    Layer,
    archive_tags,
    excluded,
    image_config,
    layer_members,
    main,
    read_archive,
    unpack,
    write_archive,
    write_layer,
)


def tar_layer(path: Path, entries: dict[str, bytes | str | int | None]) -> Layer:
    """A layer tar written entry by entry: bytes a file, a str a symlink to it, None a directory
    (an int: a directory with that mode)."""
    with tarfile.open(path, "w") as tar:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            if content is None or isinstance(content, int):
                info.type, info.mode = tarfile.DIRTYPE, 0o755 if content is None else content
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return Layer(path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest())


def test_exclusions_drop_a_path_or_only_a_directorys_contents() -> None:
    patterns = ["etc/resolv.conf", "tmp/*", "root/.cache"]
    assert excluded("etc/resolv.conf", patterns)
    assert not excluded("etc/resolv.conf.d", patterns)
    assert excluded("tmp/build/ca.pem", patterns)
    assert not excluded("tmp", patterns)  # the directory stays, with its mode
    assert excluded("root/.cache/pip/x", patterns)
    assert not excluded("root/.profile", patterns)


def test_a_layer_keeps_files_links_modes_and_owners_and_its_diff_id_is_the_tars_sha256(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "bin" / "hubbub").write_text("#!/venv/bin/python\n")
    (root / "venv" / "bin" / "hubbub").chmod(0o755)
    (root / "venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    (root / "tmp" / "build").mkdir(parents=True)
    (root / "tmp" / "build" / "ca.pem").write_text("secret-ish")
    layer = write_layer(root, tmp_path / "layer.tar", exclude=["tmp/*"])

    assert layer.diff_id == "sha256:" + hashlib.sha256(layer.path.read_bytes()).hexdigest()
    with tarfile.open(layer.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["tmp", "venv", "venv/bin", "venv/bin/hubbub", "venv/bin/python"]
    assert members["venv/bin/hubbub"].mode & 0o777 == 0o755
    assert members["venv/bin/python"].issym() and members["venv/bin/python"].linkname == "/usr/bin/python3"
    assert members["venv/bin/hubbub"].uname == "" and members["venv/bin/hubbub"].uid == os.getuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="an overlay whiteout is a 0/0 character device: mknod needs root")
def test_an_overlay_whiteout_becomes_an_oci_whiteout_entry(tmp_path: Path) -> None:
    root = tmp_path / "upper"
    (root / "etc").mkdir(parents=True)
    os.mknod(root / "etc" / "motd", 0o600 | 0o020000, os.makedev(0, 0))
    with tarfile.open(write_layer(root, tmp_path / "layer.tar").path) as tar:
        names = tar.getnames()
        whiteout = tar.getmember("etc/.wh.motd")
    assert names == ["etc", "etc/.wh.motd"]
    assert whiteout.isreg() and whiteout.size == 0


def test_an_archive_holds_the_manifest_config_and_layers_containerd_imports(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "sh").write_text("x")
    layer = write_layer(root, tmp_path / "layer.tar")
    config = image_config([layer.diff_id], entrypoint=["hubbub"], user="10001", env=["PATH=/venv/bin"])
    out = write_archive(tmp_path / "image.tar", ["hubbub:dev"], [layer], config)

    assert archive_tags(out) == ["hubbub:dev"]
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        stored = json.load(tar.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        layer_bytes = tar.extractfile(manifest[0]["Layers"][0]).read()  # type: ignore[union-attr]
    assert stored["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id]}
    assert stored["config"]["Entrypoint"] == ["hubbub"] and stored["config"]["User"] == "10001"
    assert manifest[0]["Config"] == hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest() + ".json"
    assert "sha256:" + hashlib.sha256(layer_bytes).hexdigest() == layer.diff_id


def test_the_command_line_says_what_is_missing_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["layer", str(tmp_path / "absent"), str(tmp_path / "out.tar")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["archive", str(tmp_path / "img.tar"), "--tag", "x:y", "--layer", str(tmp_path / "no.tar")]) == 1
    assert "pack the layer with `layer` first" in capsys.readouterr().err
    with tarfile.open(tmp_path / "plain.tar", "w"):
        pass
    with pytest.raises(ArchiveError, match="has no manifest.json"):
        archive_tags(tmp_path / "plain.tar")


def test_unpacking_applies_the_layers_in_order_with_their_whiteouts(tmp_path: Path) -> None:
    lower = tar_layer(
        tmp_path / "1.tar",
        {"etc": None, "etc/motd": b"hi", "etc/keep": b"k", "opt": None, "opt/d": None, "opt/d/a": b"a", "tmp": 0o1777},
    )
    upper = tar_layer(
        tmp_path / "2.tar",
        {
            "etc": None,
            "etc/.wh.motd": b"",
            "etc/keep": b"new",
            "opt/d": None,
            "opt/d/.wh..wh..opq": b"",
            "opt/d/b": b"b",
        },
    )
    config = image_config([lower.diff_id, upper.diff_id], user="10001:10001")
    archive = write_archive(tmp_path / "image.tar", ["x:y"], [lower, upper], config)

    image = unpack(archive, tmp_path / "rootfs")
    assert image == read_archive(archive) and image.config["config"]["User"] == "10001:10001"
    rootfs = tmp_path / "rootfs"
    assert not (rootfs / "etc" / "motd").exists()
    assert (rootfs / "etc" / "keep").read_text() == "new"
    assert sorted(p.name for p in (rootfs / "opt" / "d").iterdir()) == ["b"]
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777  # what runc copies onto the tmpfs there
    assert [(i, m.name) for i, m in layer_members(archive)][-3:] == [
        (1, "opt/d"),
        (1, "opt/d/.wh..wh..opq"),
        (1, "opt/d/b"),
    ]


def test_unpacking_refuses_an_entry_that_would_land_outside_the_root_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = tar_layer(tmp_path / "1.tar", {"escape": str(outside), "escape/x": b"pwned"})
    archive = write_archive(tmp_path / "image.tar", ["x:y"], [evil], image_config([evil.diff_id]))
    with pytest.raises((ArchiveError, tarfile.FilterError)):
        unpack(archive, tmp_path / "rootfs")
    assert not (outside / "x").exists()
