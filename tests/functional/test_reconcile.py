"""Reconcile on real loop devices and a real SQLite file: exactly once; hostile runners cut off."""

from __future__ import annotations

import datetime
import decimal
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner_fs import host
from runner_fs.errors import LockTimeoutError
from runner_fs.metrics import runner as files
from runner_fs.metrics.events import to_dataframes
from runner_fs.metrics.runner import read_runner_metrics
from runner_fs.reconcile import RECONCILE_LOCK, Reconciler
from runner_fs.shared_fs import SharedFilesystemManager
from runner_fs.storage import get_storage
from runner_fs.storage.sqlite import SQLiteStorage

from .conftest import bound_images, kill_after_lines, write_host_config

UNIT = "host-a"
NOW = time.time()
WINDOW = {
    "begin": datetime.datetime.fromtimestamp(NOW - 86400, datetime.timezone.utc),
    "end": datetime.datetime.fromtimestamp(NOW + 86400, datetime.timezone.utc),
}


def write_runner(
    manager: SharedFilesystemManager, name: str, *, job: int | None = 100, finished: bool = True
) -> None:
    """Create a runner whose files give installation 10 s, idle 20 s and a job of `job` s.

    Its filesystem was created (the record says) just before its installation started an
    hour ago, as a real runner's would be.
    """
    path = manager.create(name).path
    start = NOW - 3600
    backdate(manager, name, start - 60)
    (path / files.INSTALLATION_START_FILE).write_text(f"{start}")
    (path / files.INSTALLED_FILE).write_text(f"{start + 10}")
    if job is None:
        return
    pre = {"timestamp": start + 30, "workflow": "ci", "workflow_run_id": "7",
           "repository": "acme/web", "event": "push"}  # fmt: skip
    (path / files.PRE_JOB_FILE).write_text(json.dumps(pre))
    if finished:
        post = {"timestamp": start + 30 + job, "status": "normal", "status_info": None}
        (path / files.POST_JOB_FILE).write_text(json.dumps(post))


def backdate(manager: SharedFilesystemManager, name: str, created: float) -> None:
    """Rewrite a filesystem's record as if it had been created at Unix time `created`."""
    record = manager.read_record(name)
    record.created = datetime.datetime.fromtimestamp(created, datetime.timezone.utc)
    manager._write_record(record)


def totals(storage) -> dict[str, tuple[decimal.Decimal, int]]:
    """Return seconds by metric type, as exact decimals, and the number of points."""
    rows = storage.total(groupby=["type"], **WINDOW)["results"]
    count = storage.retrieve(**WINDOW, paginate=False)["total"]
    return {row["type"]: decimal.Decimal(str(row["qty"])) for row in rows}, count


@pytest.fixture
def storage(tmp_path):
    return get_storage("sqlite", path=tmp_path / "metrics.db")


@pytest.fixture
def reconciler(manager, storage):
    return Reconciler(manager, storage, UNIT, lock_timeout=5)


def test_finished_runners_are_pushed_once_and_deleted(manager, storage, reconciler):
    write_runner(manager, "done-1", job=100)
    write_runner(manager, "done-2", job=50)

    result = reconciler.run()

    assert result.as_dict() == {
        "harvested": 2, "quarantined": 0, "skipped": 0, "datapoints": 6, "errors": 0
    }  # fmt: skip
    by_type, count = totals(storage)
    assert by_type == {"runner.installation": 20, "runner.idle": 40, "runner.job": 150}
    assert count == 6
    assert not list(manager.images_dir.iterdir())
    assert not bound_images(manager.base_dir)
    row = storage.total(groupby=["unit", "flavor", "repository", "status"], **WINDOW)
    assert {(r["unit"], r["flavor"], r["status"]) for r in row["results"]} >= {
        (UNIT, "small", "normal")
    }


def test_running_runners_are_left_alone(manager, storage, reconciler):
    write_runner(manager, "busy", finished=False)

    result = reconciler.run()

    assert (result.skipped, result.harvested, result.datapoints) == (1, 0, 0)
    assert (manager.mount_point("busy") / files.PRE_JOB_FILE).exists()
    assert totals(storage)[1] == 0


def test_released_and_expired_runners_are_harvested(manager, storage):
    write_runner(manager, "gone", job=None)
    manager.release("gone")
    write_runner(manager, "old", finished=False)
    reconciler = Reconciler(manager, storage, UNIT, max_runner_age=datetime.timedelta(0))

    result = reconciler.run()

    assert result.harvested == 2
    by_type, _ = totals(storage)
    assert by_type == {"runner.installation": 20, "runner.idle": 20}


def _symlink(target):
    return lambda p: p.symlink_to(target)


HOSTILE = {
    "symlink to a host file": (files.PRE_JOB_FILE, _symlink("/etc/shadow")),
    "symlink to /dev/zero": (files.POST_JOB_FILE, _symlink("/dev/zero")),
    "fifo": (files.POST_JOB_FILE, os.mkfifo),
    "directory": (files.PRE_JOB_FILE, lambda p: p.mkdir()),
    "device node": (files.PRE_JOB_FILE, lambda p: os.mknod(p, 0o600 | 0o020000, os.makedev(1, 5))),
    "oversized": (files.PRE_JOB_FILE, lambda p: p.write_text(" " * 2048 + "{}")),
    "sparse 1 GiB": (files.POST_JOB_FILE, lambda p: (p.touch(), os.truncate(p, 1 << 30))),
    "invalid utf-8": (files.PRE_JOB_FILE, lambda p: p.write_bytes(b'{"workflow": "\xff\xfe"}')),
    "NaN": (files.INSTALLED_FILE, lambda p: p.write_text("NaN")),
    "wrong types": (files.POST_JOB_FILE, lambda p: p.write_text('{"timestamp": "soon"}')),
    "far future": (files.INSTALLED_FILE, lambda p: p.write_text(f"{NOW + 10 * 86400}")),
    "not an object": (files.PRE_JOB_FILE, lambda p: p.write_text("[1, 2]")),
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_runner_is_quarantined_and_nothing_of_it_pushed(
    manager, storage, reconciler, kind
):
    name, plant = HOSTILE[kind]
    write_runner(manager, "evil", job=100)
    target = manager.mount_point("evil") / name
    target.unlink(missing_ok=True)
    plant(target)
    write_runner(manager, "honest", job=7)

    started = time.monotonic()
    result = reconciler.run()

    assert time.monotonic() - started < 10
    assert (result.quarantined, result.harvested, result.errors) == (1, 1, 0)
    by_type, count = totals(storage)
    assert by_type["runner.job"] == 7
    assert count == 3
    assert [p.name.split("-2")[0] for p in manager.quarantine_dir.glob("*.tar.gz")] == ["evil"]
    assert not bound_images(manager.base_dir)


def test_a_broken_filesystem_is_quarantined_and_the_rest_harvested(manager, storage, reconciler):
    write_runner(manager, "broken")
    write_runner(manager, "fine")
    host_image = manager.images_dir / "broken.img"
    host.umount(manager.mount_point("broken"))
    host_image.write_bytes(b"\0" * host_image.stat().st_size)  # no superblock any more

    result = reconciler.run()

    assert (result.harvested, result.quarantined, result.errors) == (1, 1, 1)
    assert totals(storage)[1] == 3


def _lock_database(storage: SQLiteStorage, path: Path) -> sqlite3.Connection:
    """Hold SQLite's write lock from another connection: a real outage for our writer."""
    storage.db.execute("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    return blocker


def test_a_storage_outage_keeps_every_filesystem_and_reports_once(manager, tmp_path):
    storage = get_storage("sqlite", path=tmp_path / "metrics.db")
    for index in range(3):
        write_runner(manager, f"r{index}", job=10)
    blocker = _lock_database(storage, tmp_path / "metrics.db")
    reconciler = Reconciler(manager, storage, UNIT)

    down = reconciler.run()

    assert (down.errors, down.harvested, down.skipped, down.datapoints) == (1, 0, 3, 0)
    assert len(manager.list_info()) == 3
    blocker.execute("ROLLBACK")
    up = reconciler.run()
    assert (up.errors, up.harvested, up.datapoints) == (0, 3, 9)
    assert totals(storage)[0]["runner.job"] == 30


def test_a_pushed_but_undeleted_filesystem_is_not_counted_twice(manager, storage, reconciler):
    write_runner(manager, "half", job=40)
    key = f"{UNIT}/half/{manager.read_record('half').uuid}"
    metrics = read_runner_metrics(manager.mount_point("half"))
    assert storage.push_once(key, to_dataframes(metrics, "half", UNIT, "small", {}))

    result = reconciler.run()  # as if the last pass was killed between the push and the delete

    assert (result.harvested, result.datapoints) == (1, 0)
    assert totals(storage) == ({"runner.installation": 10, "runner.idle": 20, "runner.job": 40}, 3)
    assert not manager.runner_names()


def test_a_second_pass_waits_then_names_the_holder(manager, storage):
    reconciler = Reconciler(manager, storage, UNIT, lock_timeout=0.2)
    holder = manager.lock(RECONCILE_LOCK)
    with holder, pytest.raises(LockTimeoutError, match=f"held by process {os.getpid()}"):
        reconciler.run()


def test_retention_deletes_old_datapoints(manager, storage):
    write_runner(manager, "recent", job=5)
    old = Reconciler(manager, storage, "old-host", retention=datetime.timedelta(hours=2))
    write_runner(manager, "ancient", job=None)
    (manager.mount_point("ancient") / files.INSTALLATION_START_FILE).write_text(f"{NOW - 3e4}")
    (manager.mount_point("ancient") / files.INSTALLED_FILE).write_text(f"{NOW - 2.9e4}")
    manager.release("ancient")

    old.run()

    by_type, count = totals(storage)
    assert count == 3  # the ancient installation (8 hours ago) is past retention
    assert by_type["runner.job"] == 5


# -- real processes: concurrency and kill -9 at random instants -------------------------------


def _config(tmp_path: Path, base: Path, **settings: object) -> Path:
    return write_host_config(tmp_path / "config.yaml", base, UNIT, **settings)


def _cli(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runner_fs.cli", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_concurrent_passes_harvest_each_runner_once(manager, tmp_path):
    for index in range(30):
        write_runner(manager, f"c{index}", job=index)
    config = _config(tmp_path, manager.base_dir)

    passes = [_cli(config, "reconcile", "--json") for _ in range(2)]
    finished = [p.communicate(timeout=120) for p in passes]
    assert [p.returncode for p in passes] == [0, 0], [err for _, err in finished]
    outputs = [json.loads(out) for out, _ in finished]

    assert sum(out["harvested"] for out in outputs) == 30
    storage = get_storage("sqlite", path=tmp_path / "metrics.db")
    assert totals(storage) == (
        {"runner.installation": 300, "runner.idle": 600, "runner.job": sum(range(30))},
        90,
    )


@pytest.mark.slow
def test_killed_at_random_instants_no_metric_is_lost_or_counted_twice(manager, tmp_path):
    # Batches of 7: kills land in a batch's push, between its deletes, and between batches.
    config = _config(tmp_path, manager.base_dir, harvest_batch=7)
    rng = random.Random(42)  # noqa: S311 (test timing)
    expected_jobs, created, interrupted = 0, 0, 0
    for iteration in range(20):
        for _ in range(30):
            write_runner(manager, f"k{created}", job=created + 1)
            expected_jobs += created + 1
            created += 1
        pending = len(list(manager.images_dir.glob("*.json")))
        process = _cli(config, "reconcile")
        kill_after_lines(process, rng.randrange(1, 9), "reconcile: ")  # of ten progress lines
        process.communicate()
        assert process.returncode in (0, -signal.SIGKILL), f"iteration {iteration}"
        interrupted += 0 < len(list(manager.images_dir.glob("*.json"))) < pending

    assert interrupted >= 3  # enough kills landed in the middle of a pass
    final = _cli(config, "reconcile", "--json")
    _, errors = final.communicate(timeout=300)
    assert final.returncode == 0, errors

    storage = get_storage("sqlite", path=tmp_path / "metrics.db")
    by_type, count = totals(storage)
    assert by_type == {
        "runner.installation": 10 * created,
        "runner.idle": 20 * created,
        "runner.job": expected_jobs,
    }
    assert count == 3 * created
    assert not manager.list_info()
    assert not bound_images(manager.base_dir)
