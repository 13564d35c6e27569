"""The charm library's storage manager against the real `runner-fs` command on loop devices."""

from __future__ import annotations

import grp
import os
import pwd
import sys
from pathlib import Path

import pytest
from charms.runner_fs.v0.runner_fs import (
    CreateMetricsStorageError,
    DeleteMetricsStorageError,
    MetricsStorage,
    RunnerFsStorageManager,
)

from .conftest import OWNER, write_host_config


@pytest.fixture
def cli(tmp_path, base_dir) -> Path:
    """Return a wrapper like the charm's that also logs each call's arguments."""
    config = write_host_config(tmp_path / "config.yaml", base_dir)
    wrapper = tmp_path / "bin-runner-fs"
    wrapper.write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n'
        f'RUNNER_FS_CONFIG={config} exec {sys.executable} -m runner_fs.cli "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def test_the_storage_manager_contract_on_real_filesystems(cli):
    manager = RunnerFsStorageManager(str(cli))

    storage = manager.create("r1", flavor="large")

    assert os.path.ismount(storage.path)
    user, group = OWNER.split(":")
    owner = storage.path.stat()
    assert (owner.st_uid, owner.st_gid) == (pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
    assert manager.get("r1") == storage
    assert list(manager.list_all()) == [MetricsStorage(storage.path, "r1")]
    assert manager.release("r1") is True
    assert manager.release("ghost") is False
    archive = manager.move_to_quarantine("r1")
    assert archive.is_file()
    assert list(manager.list_all()) == []
    with pytest.raises(DeleteMetricsStorageError, match="runner r1 has no filesystem"):
        manager.delete("r1")


def test_errors_carry_the_command_lines_own_message(cli):
    manager = RunnerFsStorageManager(str(cli))
    manager.create("twice")

    with pytest.raises(CreateMetricsStorageError, match="twice"):
        manager.create("twice")
    manager.delete("twice")


def test_a_hostile_name_runs_nothing(cli):
    manager = RunnerFsStorageManager(str(cli))
    calls = cli.parent / "calls"

    with pytest.raises(ValueError, match="invalid runner name"):
        manager.create("../../etc/passwd")

    assert not calls.exists()
