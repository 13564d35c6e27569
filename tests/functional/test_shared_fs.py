"""The per-runner filesystems on real loop devices, mounts and ext4 images."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from runner_fs import host
from runner_fs.config import HostConfig
from runner_fs.errors import (
    CreateMetricsStorageError,
    DeleteMetricsStorageError,
    GetMetricsStorageError,
    QuarantineMetricsStorageError,
)
from runner_fs.shared_fs import SharedFilesystemManager

from .conftest import OWNER, bound_images, kill_after_lines, wait_for


def _mounted(manager: SharedFilesystemManager) -> dict[str, host.Mount]:
    return host.mounts_under(manager.mounts_dir)


def _simulate_reboot(manager: SharedFilesystemManager) -> None:
    for mount in _mounted(manager).values():
        host.umount(mount.mount_point)
    assert not _mounted(manager)
    assert not bound_images(manager.base_dir)


def _leftovers(manager: SharedFilesystemManager) -> set[str]:
    """Everything on the host that belongs to the manager's filesystems."""
    found = {p.name for d in (manager.images_dir, manager.mounts_dir) for p in d.glob("*")}
    found |= {f"mounted:{name}" for name in _mounted(manager)}
    return found | {f"bound:{Path(path).name}" for path in bound_images(manager.base_dir)}


def _only(*names: str) -> set[str]:
    """Return what `_leftovers` shows when exactly these runners exist, mounted."""
    return {
        item
        for n in names
        for item in (n, f"{n}.img", f"{n}.json", f"mounted:{n}", f"bound:{n}.img")
    }


def test_create_mounts_a_safe_ext4_owned_by_the_runner_user(manager):
    storage = manager.create("runner-1")

    mount = _mounted(manager)["runner-1"]
    assert storage.path == manager.mounts_dir / "runner-1"
    assert mount.fstype == "ext4"
    assert {"nosuid", "nodev", "noexec"} <= set(mount.options.split(","))
    assert (storage.path.stat().st_uid, storage.path.stat().st_gid) == (65534, 65534)
    image = manager.images_dir / "runner-1.img"
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
    assert image.stat().st_size == 1 << 20
    record = manager.read_record("runner-1")
    assert record.labels == {"flavor": "small"}
    assert not record.released


def test_create_keeps_the_flavor_label_given(manager):
    manager.create("runner-1", flavor="large", repo="x")

    assert manager.read_record("runner-1").labels == {"flavor": "large", "repo": "x"}


def test_each_filesystem_gets_its_own_uuid_and_loop_device(manager):
    manager.create("a")
    manager.create("b")

    assert manager.read_record("a").uuid != manager.read_record("b").uuid
    mounts = _mounted(manager)
    assert mounts["a"].source != mounts["b"].source


def test_create_twice_fails_and_keeps_the_first(manager):
    storage = manager.create("runner-1")
    (storage.path / "keep").write_text("data")

    with pytest.raises(CreateMetricsStorageError, match="runner-1 already has a filesystem"):
        manager.create("runner-1")

    assert (storage.path / "keep").read_text() == "data"


@pytest.mark.parametrize(
    "name", ["", "../etc", "a/b", "A", "-x", ".hidden", "a b", "x" * 64, "a\x00b", "é", None]
)
def test_hostile_names_are_refused_before_anything_is_built(manager, name):
    with pytest.raises(ValueError, match="invalid runner name"):
        manager.create(name)
    for operation in (manager.get, manager.delete, manager.move_to_quarantine, manager.release):
        with pytest.raises(ValueError, match="invalid runner name"):
            operation(name)

    assert not manager.base_dir.exists()


def test_create_with_ids_mapped_for_an_unprivileged_lxd_container(base_dir):
    # As README tells LXD users: filesystem-owner=1001000:1001000, ids no passwd lists.
    config = HostConfig.model_validate(
        {"base-dir": base_dir, "filesystem-owner": "1001000:1001000"}
    )

    storage = config.manager().create("lxd-runner")

    root = storage.path.stat()
    assert (root.st_uid, root.st_gid) == (1001000, 1001000)


def test_create_with_an_owner_missing_from_the_host_fails_cleanly(base_dir):
    manager = SharedFilesystemManager(base_dir, owner="no-such-user-here")

    with pytest.raises(CreateMetricsStorageError, match="'no-such-user-here' does not exist"):
        manager.create("runner-1")

    assert not base_dir.exists()


def test_create_refuses_when_the_base_dir_is_nearly_full(base_dir):
    base_dir.mkdir(parents=True)
    host.mount("tmpfs", base_dir, "tmpfs", 0, "size=8m")
    manager = SharedFilesystemManager(base_dir, owner=OWNER)
    try:
        with pytest.raises(CreateMetricsStorageError, match="MiB free under"):
            manager.create("runner-1")

        assert not (base_dir / "images").exists()
    finally:
        host.umount(base_dir)


def test_a_failed_mount_leaves_nothing_behind(manager):
    manager.create("good")
    template = next(manager.templates_dir.glob("*.img"))
    template.write_bytes(b"\xff" * 4096)  # a garbage template: mount must fail
    broken = SharedFilesystemManager(manager.base_dir, owner=OWNER)

    with pytest.raises(CreateMetricsStorageError, match="runner bad: mount failed"):
        broken.create("bad")

    assert _leftovers(manager) == _only("good")


def test_a_failed_step_names_the_step_and_rolls_back(manager):
    manager.mounts_dir.mkdir(parents=True)
    (manager.mounts_dir / "runner-1").write_text("in the way")

    with pytest.raises(CreateMetricsStorageError, match="make mount point failed"):
        manager.create("runner-1")

    assert not (manager.images_dir / "runner-1.json").exists()
    assert not (manager.images_dir / "runner-1.img").exists()


def test_get_mounts_again_after_a_reboot_and_keeps_the_data(manager):
    (manager.create("runner-1").path / "metric").write_text("42")
    _simulate_reboot(manager)

    storage = manager.get("runner-1")

    assert (storage.path / "metric").read_text() == "42"
    assert "runner-1" in _mounted(manager)


def test_get_of_an_unknown_runner_says_so(manager):
    with pytest.raises(GetMetricsStorageError, match="runner ghost has no filesystem"):
        manager.get("ghost")


def test_list_all_remounts_everything_after_a_reboot(manager):
    for index in range(5):
        (manager.create(f"r{index}").path / "n").write_text(str(index))
    _simulate_reboot(manager)

    listed = list(manager.list_all())

    assert [s.runner_name for s in listed] == [f"r{i}" for i in range(5)]
    assert [(s.path / "n").read_text() for s in listed] == [str(i) for i in range(5)]
    assert len(bound_images(manager.base_dir)) == 5


def test_one_broken_filesystem_never_hides_the_others(manager):
    for name in ("a", "gone", "garbage", "nodir", "z"):
        manager.create(name)
    _simulate_reboot(manager)
    (manager.images_dir / "gone.img").unlink()
    (manager.images_dir / "garbage.img").write_bytes(os.urandom(1 << 20))
    (manager.mounts_dir / "nodir").rmdir()

    listed = [s.runner_name for s in manager.list_all()]
    infos = {info.runner: info for info in manager.list_info()}

    assert listed == ["a", "nodir", "z"]
    assert infos["gone"].broken == "image missing"
    assert infos["garbage"].broken == "cannot be mounted"
    assert infos["a"].mounted and infos["a"].used and infos["a"].broken is None
    assert len(bound_images(manager.base_dir)) == 3  # the garbage image holds no device


def test_a_broken_filesystem_can_be_deleted(manager):
    manager.create("garbage")
    _simulate_reboot(manager)
    (manager.images_dir / "garbage.img").write_bytes(os.urandom(1 << 20))

    manager.delete("garbage")

    assert not _leftovers(manager)


def test_a_full_filesystem_stops_the_runner_not_the_host(manager):
    storage = manager.create("runner-1")

    with pytest.raises(OSError, match="No space left"), open(storage.path / "big", "wb") as big:
        for _ in range(2048):
            big.write(b"x" * 1024)
            big.flush()

    assert (storage.path / "big").stat().st_size < 1 << 20
    manager.delete("runner-1")
    assert not _leftovers(manager)


def test_noexec_and_nodev_are_enforced(manager):
    storage = manager.create("runner-1")
    script = storage.path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    os.mknod(storage.path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))

    with pytest.raises(PermissionError):
        subprocess.run([str(script)], check=True)
    with pytest.raises(PermissionError):
        open(storage.path / "null", "rb").close()


def test_delete_removes_mount_loop_image_and_record(manager):
    manager.create("runner-1")

    manager.delete("runner-1")

    assert not _leftovers(manager)


def test_delete_works_when_already_unmounted(manager):
    manager.create("runner-1")
    _simulate_reboot(manager)

    manager.delete("runner-1")

    assert not _leftovers(manager)


def test_delete_twice_gives_a_clear_error(manager):
    manager.create("runner-1")
    manager.delete("runner-1")

    with pytest.raises(DeleteMetricsStorageError, match="runner runner-1 has no filesystem"):
        manager.delete("runner-1")


def test_delete_detaches_a_loop_device_bound_by_hand(manager):
    manager.create("runner-1")
    _simulate_reboot(manager)
    image = manager.images_dir / "runner-1.img"
    subprocess.run(["losetup", "-f", str(image)], check=True)
    assert bound_images(manager.base_dir)

    manager.delete("runner-1")

    assert not _leftovers(manager)


def test_an_image_is_never_bound_to_two_loop_devices(manager):
    manager.create("runner-1")
    _simulate_reboot(manager)
    image = manager.images_dir / "runner-1.img"
    device = subprocess.run(
        ["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()

    manager.get("runner-1")

    assert _mounted(manager)["runner-1"].source == device
    assert bound_images(manager.base_dir) == [str(image)]
    manager.delete("runner-1")
    assert not _leftovers(manager)


def test_release_marks_the_record_and_a_gone_runner_is_fine(manager, caplog):
    manager.create("runner-1")

    assert manager.release("runner-1")
    assert manager.read_record("runner-1").released
    manager.delete("runner-1")
    assert not manager.release("runner-1")
    assert "already harvested" in caplog.text


def _tar_members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {member.name: member for member in tar.getmembers()}


def _manifest(path: Path) -> dict:
    with tarfile.open(path) as tar:
        extracted = tar.extractfile("MANIFEST.json")
        assert extracted is not None
        return json.loads(extracted.read())


def test_quarantine_archives_a_hostile_filesystem_without_following_anything(manager):
    storage = manager.create("evil")
    (storage.path / "pre-job-metrics.json").write_text('{"a": 1}')
    (storage.path / "shadow").symlink_to("/etc/shadow")
    (storage.path / "loop").symlink_to("loop")
    os.mkfifo(storage.path / "post-job-metrics.json")
    os.mknod(storage.path / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    (storage.path / "dir").mkdir()
    (storage.path / "dir" / "nested").write_text("n")

    archive = manager.move_to_quarantine("evil")

    assert archive.parent == manager.quarantine_dir
    assert archive.name.startswith("evil-") and archive.name.endswith(".tar.gz")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    members = _tar_members(archive)
    assert members["files/shadow"].issym() and members["files/shadow"].linkname == "/etc/shadow"
    assert members["files/pre-job-metrics.json"].size == 8
    assert members["files/dir/nested"].size == 1
    assert "files/post-job-metrics.json" not in members
    assert "files/zero" not in members
    skipped = {e["path"]: e.get("skipped") for e in _manifest(archive)["entries"]}
    assert skipped["./post-job-metrics.json"] == "fifo"
    assert skipped["./zero"] == "char-device"
    assert "record.json" in members
    assert not _leftovers(manager)


def test_quarantine_caps_content_at_the_filesystem_size(manager):
    storage = manager.create("sparse")
    with open(storage.path / "huge", "wb") as huge:
        huge.truncate(1 << 40)  # 1 TiB apparent, no blocks used

    archive = manager.move_to_quarantine("sparse")

    entry = next(e for e in _manifest(archive)["entries"] if e["path"] == "./huge")
    assert entry["stored"] == 1 << 20
    assert entry["truncated"] == "archive content cap reached"
    assert archive.stat().st_size < 1 << 20


def test_quarantine_of_a_broken_image_archives_the_raw_image(manager):
    manager.create("garbage")
    _simulate_reboot(manager)
    (manager.images_dir / "garbage.img").write_bytes(b"\x01" * (1 << 20))

    archive = manager.move_to_quarantine("garbage")

    assert _tar_members(archive)["image/garbage.img"].size == 1 << 20
    assert _manifest(archive)["source"].startswith("raw image")
    assert not _leftovers(manager)


def test_quarantine_never_overwrites_an_earlier_archive(manager):
    archives = set()
    for _ in range(3):
        manager.create("same")
        archives.add(manager.move_to_quarantine("same"))

    assert len(archives) == 3
    assert all(path.exists() for path in archives)


def test_quarantine_of_an_unknown_runner_says_so(manager):
    with pytest.raises(QuarantineMetricsStorageError, match="runner ghost has no filesystem"):
        manager.move_to_quarantine("ghost")


def test_a_busy_filesystem_is_quarantined_at_once_and_its_loop_device_goes_with_the_process(
    manager,
):
    storage = manager.create("busy")
    (storage.path / "f").write_text("x")
    holder = subprocess.Popen(["sleep", "60"], cwd=storage.path)
    try:
        archive = manager.move_to_quarantine("busy")  # no wait behind the process

        assert "busy" not in _mounted(manager)  # cut off from the host at once
        assert bound_images(manager.base_dir)  # the process still holds the loop device
    finally:
        holder.kill()
        holder.wait()

    assert "files/f" in _tar_members(archive)
    assert wait_for(lambda: not bound_images(manager.base_dir))
    assert list(manager.list_all()) == []
    assert not _leftovers(manager)


def test_interrupted_changes_are_finished_or_rolled_back(manager):
    manager.create("half-created")
    (manager.images_dir / "half-created.creating").touch()
    manager.create("half-deleted")
    (manager.images_dir / "half-deleted.deleting").touch()
    manager.create("kept")

    listed = [s.runner_name for s in manager.list_all()]

    assert listed == ["kept"]
    assert _leftovers(manager) == _only("kept")


_CHURN = """
import sys
from runner_fs.config import HostConfig
from runner_fs.shared_fs import SharedFilesystemManager
manager = SharedFilesystemManager(sys.argv[1], owner="nobody:nogroup")
i = 0
while True:
    name = f"k{i % 3}"
    try:
        print("step create", file=sys.stderr, flush=True)
        manager.create(name)
        print("step remove", file=sys.stderr, flush=True)
        if i % 2:
            manager.move_to_quarantine(name)
        else:
            manager.delete(name)
    except Exception as exc:
        print(exc, file=sys.stderr)
    i += 1
"""


@pytest.mark.slow
def test_killed_at_random_instants_nothing_leaks(manager):
    manager.create("survivor")
    for iteration in range(25):
        churn = subprocess.Popen(
            [sys.executable, "-c", _CHURN, str(manager.base_dir)],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # Killed during the 1st to 7th step: creates, deletes and quarantines alike.
        assert kill_after_lines(churn, 1 + iteration % 7, "step ")
        churn.communicate()

        listed = [s.runner_name for s in manager.list_all()]

        # A runner created before the kill exists whole; anything half-made is gone.
        assert _leftovers(manager) == _only(*listed), f"iteration {iteration}"
        assert "survivor" in listed
        for name in set(listed) - {"survivor"}:
            manager.delete(name)
    for archive in manager.quarantine_dir.glob("*.tar.gz"):
        assert "MANIFEST.json" in _tar_members(archive)


def test_unmounting_everything_before_stop_never_fails_on_a_busy_filesystem(manager):
    manager.create("idle")
    busy = manager.create("busy")
    holder = subprocess.Popen(["sleep", "60"], cwd=busy.path)
    manager.lock_timeout = 0.5
    try:
        unmounted = manager.unmount_all()  # what the charm's stop and remove hooks call

        assert unmounted == 2  # the busy one detached lazily (logged), not waited for
        assert not _mounted(manager)  # both are cut off from the host
    finally:
        holder.kill()
        holder.wait()
