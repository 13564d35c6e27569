"""Fixtures for tests on real loop devices: root only, and required in CI."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from runner_fs import host
from runner_fs.shared_fs import SharedFilesystemManager, purge

OWNER = "nobody:nogroup"


def _missing_capability() -> str | None:
    if os.geteuid() != 0:
        return "functional tests need root (loop devices and mounts)"
    if not host.LOOP_CONTROL.exists():
        return f"functional tests need {host.LOOP_CONTROL} (loop devices)"
    if not Path(host.MKFS_EXT4).exists():
        return f"functional tests need {host.MKFS_EXT4} (e2fsprogs)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every functional test where it cannot run, or fail them all when CI requires them."""
    reason = _missing_capability()
    if reason is None:
        return
    if os.environ.get("RUNNER_FS_REQUIRE_FUNCTIONAL") == "1":
        raise pytest.UsageError(f"RUNNER_FS_REQUIRE_FUNCTIONAL=1 but {reason}")
    for item in items:
        if "tests/functional" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def base_dir(tmp_path: Path) -> Iterator[Path]:
    """Yield a base directory whose mounts are all gone after the test."""
    base = tmp_path / "runner-fs"
    yield base
    purge(base)


@pytest.fixture
def manager(base_dir: Path) -> SharedFilesystemManager:
    """Return a manager of 1 MiB filesystems owned by an unprivileged user."""
    return SharedFilesystemManager(base_dir, size="1M", owner=OWNER, flavor="small")


def bound_images(base: Path) -> list[str]:
    """Return the images under `base` that some loop device still holds."""
    return [path for path in host.loop_backing_files() if path.startswith(str(base.resolve()))]


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> bool:
    """Wait (bounded) for something the kernel does on its own, such as releasing a device."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_after_lines(process: subprocess.Popen, count: int, prefix: str) -> bool:
    """SIGKILL `process` once its stderr has printed `count` lines starting with `prefix`.

    The kill then lands while the process goes on past that point: timed by what the process
    says, never by a sleep. Returns False when the process ended (stderr closed) first.
    """
    assert process.stderr is not None
    seen = 0
    for line in process.stderr:
        seen += line.startswith(prefix)
        if seen == count:
            process.send_signal(signal.SIGKILL)
            return True
    return False


@pytest.fixture(scope="session")
def packed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every platform of charmcraft.yaml, packed by scripts/pack.sh (the real charmcraft)."""
    from .machine_world import pack

    return pack(tmp_path_factory.mktemp("packed"))


def write_host_config(path: Path, base: Path, unit: str = "host-a", **settings: object) -> Path:
    """Write a host config file for `base` (SQLite beside `path` unless `settings` say else).

    `settings` take option names with underscores (`event_log=...`).
    """
    options = {"base-dir": str(base), "filesystem-owner": OWNER, "flavor": "small", "unit": unit,
               "storage-options": {"path": str(path.parent / "metrics.db")}}  # fmt: skip
    options |= {key.replace("_", "-"): value for key, value in settings.items()}
    path.write_text(yaml.safe_dump(options))
    path.chmod(0o600)
    return path
