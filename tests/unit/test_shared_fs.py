"""Logic of the filesystem manager that needs no root."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner_fs.errors import CreateMetricsStorageError
from runner_fs.shared_fs import (
    SharedFilesystemManager,
    _nonzero_blocks,
    parse_bytes,
    parse_size,
    resolve_owner,
    validate_runner_name,
)


@pytest.mark.parametrize("name", ["a", "runner-1", "r.2_x", "0abc", "x" * 63])
def test_valid_runner_names_pass(name):
    assert validate_runner_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", ".a", "_a", "A", "a/b", "../x", "a b", "x" * 64, "a\n", "ä", 7, None]
)
def test_invalid_runner_names_name_the_rule(name):
    with pytest.raises(ValueError, match="starting with a letter or digit"):
        validate_runner_name(name)


@given(st.text(max_size=70))
def test_a_valid_name_never_escapes_its_directory(name):
    try:
        validate_runner_name(name)
    except ValueError:
        return
    assert "/" not in name and name not in (".", "..") and "\x00" not in name


@pytest.mark.parametrize(
    ("text", "size"),
    [("1M", 1 << 20), ("1m", 1 << 20), ("512K", 512 << 10), ("64MiB", 64 << 20), ("1G", 1 << 30),
     (" 2M ", 2 << 20), ("131072", 128 << 10)],
)  # fmt: skip
def test_sizes_parse_to_bytes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "use a number"), ("big", "use a number"), ("1T", "between 128K and 1G"), ("-1", "use a"),
     ("1.5M", "use a number"), ("1000", "whole number of KiB"), ("64K", "between 128K and 1G"),
     ("2G", "between 128K and 1G"), ("0", "between 128K and 1G")],
)  # fmt: skip
def test_bad_sizes_say_what_is_accepted(text, message):
    with pytest.raises(ValueError, match=message):
        parse_size(text)


def test_owner_resolves_names_and_numbers():
    assert resolve_owner(None) == (0, 0)
    assert resolve_owner("root") == (0, 0)
    assert resolve_owner("0:0") == (0, 0)
    assert resolve_owner("root:root") == (0, 0)


def test_numeric_owner_ids_need_no_passwd_entry():
    # LXD maps an unprivileged container's uid 1000 to 1001000 on the host: no passwd entry.
    assert resolve_owner("1001000:1001000") == (1001000, 1001000)
    assert resolve_owner("1001000") == (1001000, 1001000)
    assert resolve_owner("1001000:root") == (1001000, 0)
    assert resolve_owner("0") == (0, 0)


@pytest.mark.parametrize(
    ("owner", "message"),
    [("no-such-user-x", "user 'no-such-user-x' does not exist"),
     ("root:no-such-group-x", "group 'no-such-group-x' does not exist"),
     ("4294967295:0", "user '4294967295' is out of range"),
     ("0:99999999999", "group '99999999999' is out of range")],
)  # fmt: skip
def test_an_unknown_owner_is_named(owner, message):
    with pytest.raises(ValueError, match=message):
        resolve_owner(owner)


def test_create_with_an_unknown_owner_fails_before_touching_disk(tmp_path):
    manager = SharedFilesystemManager(tmp_path / "base", owner="no-such-user-x")

    with pytest.raises(CreateMetricsStorageError, match="runner r1: filesystem owner user"):
        manager.create("r1")

    assert not (tmp_path / "base").exists()


@pytest.mark.parametrize(
    ("labels", "bad"), [({"Flavor": "x"}, "Flavor"), ({"flavor": "a b"}, "a b"),
                        ({"flavor": "x" * 129}, "xxx")],
)  # fmt: skip
def test_bad_labels_are_refused(tmp_path, labels, bad):
    manager = SharedFilesystemManager(tmp_path / "base")

    with pytest.raises(ValueError, match=f"invalid label .*{bad}"):
        manager.create("r1", **labels)


def test_a_bad_size_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match="invalid filesystem size 'huge'"):
        SharedFilesystemManager(tmp_path, size="huge")


def test_nonzero_blocks_keep_data_and_skip_holes_and_zero_blocks(tmp_path):
    path = tmp_path / "sparse"
    with open(path, "wb") as sparse:
        sparse.truncate(1 << 20)
        sparse.seek(8192)
        sparse.write(b"A" * 5000)
        sparse.seek(4096 * 100)
        sparse.write(bytes(4096) + b"B")

    runs = _nonzero_blocks(path)

    rebuilt = bytearray(1 << 20)
    for offset, data in runs:
        rebuilt[offset : offset + len(data)] = data
    assert bytes(rebuilt) == path.read_bytes()
    assert sum(len(data) for _, data in runs) <= 3 * 4096
    assert all(os.path.getsize(path) >= offset for offset, _ in runs)


def test_listing_an_empty_base_dir_yields_nothing(tmp_path):
    manager = SharedFilesystemManager(Path(tmp_path) / "none")

    assert manager._scan() == (set(), set())


def test_quarantine_housekeeping_removes_the_oldest_past_age_or_size(tmp_path):
    manager = SharedFilesystemManager(tmp_path / "base")
    manager.quarantine_dir.mkdir(parents=True)
    now = time.time()
    ages = (("old", 40), ("mid", 5), ("new", 1), ("newest", 0))  # days
    for name, days in ages:
        size = 100
        archive = manager.quarantine_dir / f"{name}-20260101T000000Z.tar.gz"
        archive.write_bytes(b"x" * size)
        os.utime(archive, (now - days * 86400, now - days * 86400))

    removed = manager.prune_quarantine(datetime.timedelta(days=30), max_bytes=250)

    assert [path.name.split("-")[0] for path in removed] == ["old", "mid"]
    assert [path.name.split("-")[0] for path, _ in manager.archives()] == ["new", "newest"]
    assert manager.prune_quarantine(datetime.timedelta(days=30), max_bytes=250) == []


@pytest.mark.parametrize(("text", "value"), [("1G", 1 << 30), ("2T", 2 << 40), ("512", 512)])
def test_byte_sizes_parse_up_to_terabytes(text, value):
    assert parse_bytes(text) == value
