"""Parsing of the kernel's tables."""

from __future__ import annotations

from pathlib import Path

from runner_fs import host

_MOUNTINFO = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
101 22 7:3 / /srv/rfs/mounts/r-1 rw,nosuid,nodev,noexec,relatime shared:50 - ext4 /dev/loop3 rw
102 22 7:4 / /srv/rfs/mounts/r.2 rw,nosuid,nodev,noexec,relatime - ext4 /dev/loop4 rw
103 102 0:5 / /srv/rfs/mounts/r.2/nested rw - tmpfs tmpfs rw
104 22 7:5 / /srv/rfs/mounts2/x rw - ext4 /dev/loop5 rw
105 22 7:6 / /srv/with\\040space/mounts/y rw - ext4 /dev/loop6 rw
"""


def test_mounts_under_keeps_direct_children_only(tmp_path, monkeypatch):
    table = tmp_path / "mountinfo"
    table.write_text(_MOUNTINFO)
    monkeypatch.setattr(host, "MOUNTINFO", table)

    mounts = host.mounts_under(Path("/srv/rfs/mounts"))

    assert sorted(mounts) == ["r-1", "r.2"]
    assert mounts["r-1"] == host.Mount(
        "/srv/rfs/mounts/r-1", "/dev/loop3", "ext4", "rw,nosuid,nodev,noexec,relatime"
    )


def test_mounts_under_decodes_escaped_paths(tmp_path, monkeypatch):
    table = tmp_path / "mountinfo"
    table.write_text(_MOUNTINFO)
    monkeypatch.setattr(host, "MOUNTINFO", table)

    assert host.mounts_under(Path("/srv/with space/mounts"))["y"].source == "/dev/loop6"


def test_the_real_mount_table_parses():
    assert isinstance(host.mounts_under(Path("/")), dict)


def test_loop_device_of_a_plain_directory_is_none(tmp_path):
    assert host.loop_device_of(tmp_path) is None
    assert host.loop_device_of(tmp_path / "missing") is None
