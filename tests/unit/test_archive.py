"""Archiving hostile trees, on a real directory (no root, no mount needed)."""

from __future__ import annotations

import os
import tarfile

from runner_fs import archive


def test_add_tree_stores_links_as_links_and_skips_special_files(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.json").write_text("{}")
    (root / "etc").symlink_to("/etc/passwd")
    os.mkfifo(root / "fifo")
    manifest: dict = {"entries": []}

    with tarfile.open(tmp_path / "out.tar.gz", "w:gz") as tar:
        archive._add_tree(tar, root, ".", 1 << 20, manifest, prefix="files/")

    with tarfile.open(tmp_path / "out.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["files/etc"].issym()
    assert members["files/a.json"].size == 2
    assert "files/fifo" not in members
    assert {"path": "./fifo", "skipped": "fifo"} in manifest["entries"]


def test_add_tree_cuts_content_at_the_cap_and_says_so(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "big").write_bytes(b"x" * 5000)
    manifest: dict = {"entries": []}

    with tarfile.open(tmp_path / "out.tar", "w") as tar:
        archive._add_tree(tar, root, ".", 1000, manifest, prefix="files/")

    entry = manifest["entries"][0]
    assert (entry["size"], entry["stored"], entry["truncated"]) == (
        5000, 1000, "archive content cap reached"
    )  # fmt: skip


def test_publish_never_replaces_an_archive(tmp_path):
    names = set()
    for _ in range(3):
        tmp = tmp_path / ".r-x.tmp"
        tmp.write_text("a")
        names.add(archive._publish(tmp, tmp_path, "r"))

    assert len(names) == 3
    assert not list(tmp_path.glob("*.tmp"))
