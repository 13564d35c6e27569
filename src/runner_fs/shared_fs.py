"""Per-runner loopback ext4 filesystems: create, get, list, release, delete, quarantine.

Layout under `base_dir`::

    images/NAME.img         the ext4 image (0600, root)
    images/NAME.json        the record: uuid, created, size, labels, released
    images/NAME.<op>        intent marker while `creating`, `deleting` or `quarantining`
    mounts/NAME             the mount point (nosuid,nodev,noexec; root owned by the runner user)
    quarantine/*.tar.gz     archives of quarantined filesystems (0600; pruned after passes)
    locks/                  per-runner lock files and the reconcile lock
    templates/              one freshly made ext4 image per (size, owner), copied on create

Every change writes its intent marker first, so a process killed half-way leaves a marker that
the next call on that runner, or the next `list_all`, finishes (delete, quarantine) or rolls
back (create).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import pwd
import re
import shutil
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from runner_fs import archive, host
from runner_fs.errors import (
    CreateMetricsStorageError,
    DeleteMetricsStorageError,
    GetMetricsStorageError,
    LockTimeoutError,
    MetricsStorageError,
    QuarantineMetricsStorageError,
)
from runner_fs.metrics.storage import MetricsStorage

logger = logging.getLogger(__name__)

RUNNER_NAME_RULE = "1-63 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
_RUNNER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_LABEL_VALUE = re.compile(r"[\x21-\x7e]{0,128}")  # printable ASCII, no spaces
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MIN_SIZE = 128 << 10  # the smallest ext4 mkfs.ext4 makes
MAX_SIZE = 1 << 30  # metrics need kilobytes: anything larger is a typo
FREE_SPACE_MARGIN = 16 << 20
MOUNT_FLAGS = host.MS_NOSUID | host.MS_NODEV | host.MS_NOEXEC
RECORD_VERSION = 1
RESUME_LOCK_WAIT = 2.0  # seconds list_all waits for a change under way elsewhere
LOCK_BUCKETS = 64  # runner lock files, shared by name hash: a fixed set, never one per runner
_OPS = ("creating", "deleting", "quarantining")


def validate_runner_name(runner_name: str) -> str:
    """Return the name if it is a valid runner name.

    Raises:
        ValueError: naming the rule, before any path or command is built from the name.
    """
    if not isinstance(runner_name, str) or not _RUNNER_NAME.fullmatch(runner_name):
        raise ValueError(f"invalid runner name {runner_name!r:.80}: use {RUNNER_NAME_RULE}")
    return runner_name


def parse_bytes(size: str) -> int:
    """Parse a human size such as "1M", "512K", "64MiB" or "2T" into bytes (powers of 1024).

    Raises:
        ValueError: not a size.
    """
    match = _SIZE.fullmatch(str(size).strip())
    if not match:
        raise ValueError(f"invalid size {size!r:.40}: use a number with K, M, G or T")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_size(size: str) -> int:
    """Parse the size of a filesystem, such as "1M" or "512K", into bytes.

    Raises:
        ValueError: not a size, not a whole number of KiB, or outside what we make.
    """
    try:
        value = parse_bytes(size)
    except ValueError:
        raise ValueError(
            f"invalid filesystem size {size!r:.40}: use a number with K, M or G"
        ) from None
    if value % 1024:
        raise ValueError(f"invalid filesystem size {size!r}: must be a whole number of KiB")
    if not MIN_SIZE <= value <= MAX_SIZE:
        raise ValueError(f"invalid filesystem size {size!r}: must be between 128K and 1G")
    return value


MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel


def _numeric_id(text: str, kind: str) -> int | None:
    """Return `text` as an id when it is a number, else None.

    Raises:
        ValueError: a number out of the kernel's id range.
    """
    if not text.isdigit():
        return None
    if int(text) > MAX_ID:
        raise ValueError(f"filesystem owner {kind} {text!r:.20} is out of range 0..{MAX_ID}")
    return int(text)


def resolve_owner(owner: str | None) -> tuple[int, int]:
    """Resolve "user[:group]" to ids; None means root.

    Numbers need no passwd or group entry (LXD maps a container's users to id ranges the host
    does not list); a number alone means that uid with its passwd group, or the same number as
    the gid where it has no entry. Names must exist on this host.

    Raises:
        ValueError: a name does not exist on this host, or a number is out of range.
    """
    if not owner:
        return 0, 0
    user, _, group = owner.partition(":")
    uid = _numeric_id(user, "user")
    try:
        entry = pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(user)
        uid, user_gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if uid is None:
            raise ValueError(
                f"filesystem owner user {user!r:.40} does not exist on this host: "
                "give an existing name or a numeric uid:gid"
            ) from None
        user_gid = uid
    if not group:
        return uid, user_gid
    gid = _numeric_id(group, "group")
    if gid is None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(
                f"filesystem owner group {group!r:.40} does not exist on this host: "
                "give an existing name or a numeric gid"
            ) from None
    return uid, gid


class FilesystemRecord(BaseModel):
    """What runner-fs knows of one filesystem, kept beside its image."""

    model_config = ConfigDict(extra="forbid")

    version: int = RECORD_VERSION
    runner: str
    uuid: str
    created: datetime
    size: int
    labels: dict[str, str]
    released: bool = False


@dataclass(frozen=True)
class FilesystemInfo:
    """A filesystem as `list` shows it.

    Attributes:
        runner: the runner name.
        record: its record, or None when the record is unreadable.
        mounted: whether it is mounted now.
        used: bytes in use when mounted.
        broken: why it cannot be used, or None.
        path: the mount point.
    """

    runner: str
    record: FilesystemRecord | None
    mounted: bool
    used: int | None
    broken: str | None
    path: Path


class SharedFilesystemManager:
    """Real loopback ext4 filesystems, one per runner, under one base directory."""

    def __init__(
        self,
        base_dir: Path,
        size: str = "1M",
        owner: str | None = None,
        flavor: str = "",
        lock_timeout: float = 30.0,
    ) -> None:
        """Set up the manager; nothing on disk changes until a filesystem is created.

        Args:
            base_dir: where images, mount points, locks and archives live.
            size: the size of new filesystems, e.g. "1M".
            owner: "user[:group]" that owns the root of new filesystems; None for root.
            flavor: the `flavor` label of filesystems created without one.
            lock_timeout: seconds to wait for another process's per-runner lock.

        Raises:
            ValueError: the size is invalid.
        """
        self.base_dir = Path(base_dir).resolve()
        self.size = parse_size(size)
        self.owner = owner
        self.flavor = flavor
        self.lock_timeout = lock_timeout
        self.images_dir = self.base_dir / "images"
        self.mounts_dir = self.base_dir / "mounts"
        self.quarantine_dir = self.base_dir / "quarantine"
        self.locks_dir = self.base_dir / "locks"
        self.templates_dir = self.base_dir / "templates"
        self._templates: dict[tuple[int, int, int], list[tuple[int, bytes]]] = {}
        self._dirs_ready = False

    # -- paths -----------------------------------------------------------------------------

    def _image(self, name: str) -> Path:
        return self.images_dir / f"{name}.img"

    def _record_path(self, name: str) -> Path:
        return self.images_dir / f"{name}.json"

    def _marker(self, name: str, op: str) -> Path:
        return self.images_dir / f"{name}.{op}"

    def mount_point(self, runner_name: str) -> Path:
        """Return where a runner's filesystem is mounted."""
        return self.mounts_dir / validate_runner_name(runner_name)

    def _prepare_dirs(self) -> None:
        if self._dirs_ready:
            return
        for directory in (self.images_dir, self.locks_dir, self.templates_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.mounts_dir.mkdir(mode=0o755, exist_ok=True)
        self.quarantine_dir.mkdir(mode=0o700, exist_ok=True)
        self._dirs_ready = True

    # -- locks -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock file `locks/<name>.lock`, waiting at most `timeout` seconds.

        Raises:
            LockTimeoutError: another process held it for the whole wait.
        """
        self.locks_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.locks_dir / f"{name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + (self.lock_timeout if timeout is None else timeout)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                        raise LockTimeoutError(
                            f"lock {path} is held by process {holder}; try again later"
                        ) from None
                    time.sleep(0.01)
            os.pwrite(fd, f"{os.getpid():<12}".encode(), 0)
            yield
        finally:
            os.close(fd)

    # -- records ---------------------------------------------------------------------------

    def read_record(self, runner_name: str) -> FilesystemRecord:
        """Read a runner's record.

        Raises:
            GetMetricsStorageError: it does not exist or is not a valid record.
        """
        name = validate_runner_name(runner_name)
        try:
            return FilesystemRecord.model_validate_json(self._record_path(name).read_bytes())
        except FileNotFoundError:
            raise GetMetricsStorageError(f"runner {name} has no filesystem") from None
        except (OSError, ValidationError) as exc:
            raise GetMetricsStorageError(f"runner {name}: unreadable record: {exc}") from exc

    def _write_record(self, record: FilesystemRecord) -> None:
        path = self._record_path(record.runner)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(record.model_dump_json(), encoding="utf-8")
        os.replace(tmp, path)

    # -- create ----------------------------------------------------------------------------

    def create(self, runner_name: str, /, **labels: str) -> MetricsStorage:
        """Create, format and mount a new filesystem for a runner.

        Args:
            runner_name: the runner's name.
            labels: free labels kept in the record; `flavor` defaults to the manager's.

        Returns:
            The mounted filesystem.

        Raises:
            ValueError: the runner name or a label is invalid.
            CreateMetricsStorageError: it exists, the host cannot hold it, or a step failed
                (nothing is left behind).
        """
        name = validate_runner_name(runner_name)
        for key, value in labels.items():
            if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(str(value)):
                raise ValueError(
                    f"invalid label {key!r:.40}={str(value)!r:.60}: keys are 1-32 of a-z, 0-9,"
                    " '_', '-' starting with a letter; values up to 128 printable characters"
                )
        try:
            uid, gid = resolve_owner(self.owner)
        except ValueError as exc:
            raise CreateMetricsStorageError(f"runner {name}: {exc}") from exc
        existing = next(p for p in (self.base_dir, *self.base_dir.parents) if p.exists())
        free = os.statvfs(existing)
        if free.f_bavail * free.f_frsize < self.size + FREE_SPACE_MARGIN:
            raise CreateMetricsStorageError(
                f"runner {name}: only {free.f_bavail * free.f_frsize >> 20} MiB free under "
                f"{self.base_dir}, need {(self.size + FREE_SPACE_MARGIN) >> 20} MiB; free space"
            )
        self._prepare_dirs()
        template = self._template(uid, gid)
        with self._runner_lock(name, CreateMetricsStorageError):
            self._resume(name)
            if self._record_path(name).exists() or self._image(name).exists():
                raise CreateMetricsStorageError(f"runner {name} already has a filesystem")
            # The record is first written as the `creating` marker, and renamed into place
            # once mounted: a crash before that leaves the marker, and `_resume` removes all.
            marker = self._marker(name, "creating")
            step = "write record"
            try:
                labels = {"flavor": self.flavor, **labels}
                record = FilesystemRecord(
                    runner=name,
                    uuid=str(uuid.uuid4()),
                    created=datetime.now(timezone.utc),
                    size=self.size,
                    labels={key: str(value) for key, value in labels.items()},
                )
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                with open(fd, "w", encoding="utf-8") as new:
                    new.write(record.model_dump_json())
                step = "make mount point"
                self.mount_point(name).mkdir(mode=0o755)
                step = "write image"
                self._write_image(self._image(name), template)
                step = "mount"
                host.mount_image(self._image(name), self.mount_point(name), MOUNT_FLAGS)
                step = "write record"
                os.replace(marker, self._record_path(name))
            except (OSError, ValueError) as exc:
                self._remove(name)
                raise CreateMetricsStorageError(f"runner {name}: {step} failed: {exc}") from exc
        logger.info("created filesystem for runner %s (%d bytes)", name, self.size)
        return MetricsStorage(self.mount_point(name), name)

    def _template(self, uid: int, gid: int) -> list[tuple[int, bytes]]:
        """Return the non-zero blocks of a fresh ext4 image of our size and owner."""
        key = (self.size, uid, gid)
        if key not in self._templates:
            path = self.templates_dir / f"ext4-{self.size}-{uid}-{gid}.img"
            if not path.exists():
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                with open(tmp, "wb") as image:
                    image.truncate(self.size)
                try:
                    host.run(
                        [host.MKFS_EXT4, "-q", "-F", "-m", "0", "-L", "runner-fs",
                         "-E", f"root_owner={uid}:{gid}", str(tmp)],
                        "mkfs.ext4",
                    )  # fmt: skip
                    os.replace(tmp, path)
                except host.HostError as exc:
                    tmp.unlink(missing_ok=True)
                    raise CreateMetricsStorageError(
                        f"cannot make the ext4 template: {exc}"
                    ) from exc
            self._templates[key] = _nonzero_blocks(path)
        return self._templates[key]

    def _write_image(self, path: Path, blocks: list[tuple[int, bytes]]) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, self.size)
            for offset, data in blocks:
                os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    # -- get and list ----------------------------------------------------------------------

    def get(self, runner_name: str) -> MetricsStorage:
        """Return a runner's filesystem, mounting it again if a reboot unmounted it.

        Raises:
            ValueError: the runner name is invalid.
            GetMetricsStorageError: it does not exist or cannot be mounted.
        """
        name = validate_runner_name(runner_name)
        if self._marker_ops(name) or not self._record_path(name).exists():
            with self._runner_lock(name, GetMetricsStorageError):
                self._resume(name)
            if not self._record_path(name).exists():
                raise GetMetricsStorageError(f"runner {name} has no filesystem")
        if host.loop_device_of(self.mounts_dir / name) is None:
            self._remount(name, host.loop_backing_files())
        return MetricsStorage(self.mount_point(name), name)

    def list_all(self) -> Iterator[MetricsStorage]:
        """Yield every usable filesystem, mounted; finish or roll back interrupted changes.

        One read of the mount table serves the whole listing. A filesystem that cannot be
        mounted is logged and skipped (see `list_info`), never hiding the others.
        """
        names, interrupted = self._scan()
        for name in interrupted:  # finished or rolled back; one that fails stays interrupted
            try:
                with self._runner_lock(name, MetricsStorageError, RESUME_LOCK_WAIT):
                    self._resume(name)
            except (MetricsStorageError, OSError) as exc:
                logger.error("runner %s: cannot finish an interrupted change: %s", name, exc)
        names -= interrupted
        mounted = host.mounts_under(self.mounts_dir)
        backing: dict[str, str] | None = None
        for name in sorted(names):
            if name not in mounted:
                backing = host.loop_backing_files() if backing is None else backing
                try:
                    self._remount(name, backing)
                except GetMetricsStorageError as exc:
                    logger.error("skipping broken filesystem: %s", exc)
                    continue
            yield MetricsStorage(self.mounts_dir / name, name)

    def runner_names(self) -> list[str]:
        """Return the runners that have a filesystem, without mounting anything."""
        return sorted(self._scan()[0])

    def list_info(self, mount: bool = True) -> list[FilesystemInfo]:
        """Describe every filesystem, broken ones included, mounting what can be mounted.

        With `mount=False` nothing on the machine changes: what is not mounted is described
        from its record alone (broken only when the record or the image is missing).
        """
        if mount:
            healthy = {storage.runner_name for storage in self.list_all()}
        else:
            healthy = set(host.mounts_under(self.mounts_dir))
        names, _ = self._scan()
        infos = []
        for name in sorted(names):
            path = self.mounts_dir / name
            broken: str | None = None
            try:
                record: FilesystemRecord | None = self.read_record(name)
            except GetMetricsStorageError as exc:
                record, broken = None, str(exc)
            else:
                if name not in healthy and (mount or not self._image(name).exists()):
                    broken = self._broken_reason(name)
            used = None
            if name in healthy:
                stat = os.statvfs(path)
                used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
            infos.append(FilesystemInfo(name, record, name in healthy, used, broken, path))
        return infos

    def _broken_reason(self, name: str) -> str:
        if self._marker(name, "quarantining").exists():
            return "quarantine not finished (tried again every pass)"
        if not self._image(name).exists():
            return "image missing"
        return "cannot be mounted"

    def _scan(self) -> tuple[set[str], set[str]]:
        """Return the runners with a record, and those with an interrupted change."""
        names: set[str] = set()
        interrupted: set[str] = set()
        try:
            entries = os.listdir(self.images_dir)
        except FileNotFoundError:
            return names, interrupted
        for entry in entries:
            name, _, suffix = entry.rpartition(".")
            if suffix == "json" and _RUNNER_NAME.fullmatch(name):
                names.add(name)
            elif suffix in _OPS and _RUNNER_NAME.fullmatch(name):
                interrupted.add(name)
        return names, interrupted

    def _remount(self, name: str, backing: dict[str, str]) -> None:
        """Mount a filesystem that is not mounted, running `e2fsck -p` once if it fails."""
        image, target = self._image(name), self.mounts_dir / name
        if not image.exists():
            raise GetMetricsStorageError(f"runner {name}: image {image} is missing")
        try:
            target.mkdir(mode=0o755, exist_ok=True)
            self._mount_once(image, target, backing)
        except host.HostError as first:
            logger.warning("runner %s: mount failed (%s); running e2fsck -p", name, first)
            try:
                host.run([host.E2FSCK, "-p", str(image)], "e2fsck", ok_codes=(0, 1))
                self._mount_once(image, target, backing)
            except host.HostError as exc:
                raise GetMetricsStorageError(f"runner {name}: cannot mount: {exc}") from exc
        except OSError as exc:
            raise GetMetricsStorageError(f"runner {name}: cannot mount: {exc}") from exc
        logger.info("mounted filesystem of runner %s again", name)

    @staticmethod
    def _mount_once(image: Path, target: Path, backing: dict[str, str]) -> None:
        # Never bind one image to two loop devices: reuse a device that already holds it.
        device = backing.get(str(image))
        if device:
            host.mount(device, target, "ext4", MOUNT_FLAGS)
        else:
            host.mount_image(image, target, MOUNT_FLAGS)

    # -- release, delete, quarantine -------------------------------------------------------

    def release(self, runner_name: str) -> bool:
        """Mark a runner gone so the next reconcile harvests its filesystem.

        Returns:
            False, with a warning, if it no longer exists (already harvested).

        Raises:
            ValueError: the runner name is invalid.
            GetMetricsStorageError: the record is unreadable.
        """
        name = validate_runner_name(runner_name)
        with self._runner_lock(name, GetMetricsStorageError):
            if not self._record_path(name).exists():
                logger.warning("runner %s has no filesystem (already harvested?)", name)
                return False
            record = self.read_record(name)
            if not record.released:
                record.released = True
                self._write_record(record)
        logger.info("released runner %s", name)
        return True

    def delete(self, runner_name: str) -> None:
        """Unmount a runner's filesystem, detach its loop device, remove image and record.

        Raises:
            ValueError: the runner name is invalid.
            DeleteMetricsStorageError: it does not exist or could not be removed.
        """
        name = validate_runner_name(runner_name)
        with self._runner_lock(name, DeleteMetricsStorageError):
            self._resume(name)
            if not (self._record_path(name).exists() or self._image(name).exists()):
                raise DeleteMetricsStorageError(f"runner {name} has no filesystem")
            self._marker(name, "deleting").touch(mode=0o600)
            try:
                self._cut_off(name, freeze=False)
                self._remove(name)
            except OSError as exc:
                raise DeleteMetricsStorageError(f"runner {name}: {exc}") from exc
        logger.info("deleted filesystem of runner %s", name)

    def move_to_quarantine(self, runner_name: str) -> Path:
        """Cut a runner off, archive its filesystem from a private read-only view, delete it.

        Returns:
            The path of the `.tar.gz` archive in `quarantine/`.

        Raises:
            ValueError: the runner name is invalid.
            QuarantineMetricsStorageError: it does not exist or could not be archived.
        """
        name = validate_runner_name(runner_name)
        with self._runner_lock(name, QuarantineMetricsStorageError):
            if not self._marker(name, "quarantining").exists():
                self._resume(name)
            if not self._image(name).exists() and not self._marker(name, "quarantining").exists():
                raise QuarantineMetricsStorageError(f"runner {name} has no filesystem")
            self._prepare_dirs()
            self._marker(name, "quarantining").touch(mode=0o600)
            path = self._quarantine(name)
        logger.warning(
            "quarantined runner %s into %s", name, path,
            extra={"event": "quarantine", "runner": name, "archive": str(path)},
        )  # fmt: skip
        return path

    def _quarantine(self, name: str) -> Path:
        """Archive and remove a filesystem whose `quarantining` marker is set (lock held).

        The filesystem is made unwritable in every namespace first (read-only, or frozen while
        archived), then archived from the image and removed. A failure keeps the marker: the
        filesystem stays cut off, is listed as broken, and the next call or pass tries again.

        Raises:
            QuarantineMetricsStorageError: it could not be archived or removed.
        """
        marker = self._marker(name, "quarantining")
        try:
            done = marker.read_text(encoding="utf-8").strip()
            if done and Path(done).exists():  # archived before an interruption: just remove
                self._remove(name)
                return Path(done)
            frozen = self._cut_off(name, freeze=True)  # nobody writes while it is archived
            try:
                for stale in self.quarantine_dir.glob(f".{name}{archive.TMP_SEPARATOR}*.tmp"):
                    stale.unlink()  # from a killed archiver of this runner
                record_path = self._record_path(name)
                record = record_path.read_bytes() if record_path.exists() else b""
                path = archive.archive_image(
                    self._image(name), self.quarantine_dir, name, cap=self.size, record=record
                )
            finally:
                if frozen is not None:
                    host.thaw(frozen)
            marker.write_text(str(path), encoding="utf-8")
            self._remove(name)
        except (OSError, archive.ArchiveError) as exc:
            raise QuarantineMetricsStorageError(f"runner {name}: {exc}") from exc
        return path

    def archives(self) -> list[tuple[Path, os.stat_result]]:
        """Return the quarantine archives, oldest first, with their stat."""
        found = []
        for path in self.quarantine_dir.glob("*.tar.gz"):
            try:
                found.append((path, path.stat()))
            except FileNotFoundError:  # removed meanwhile
                continue
        return sorted(found, key=lambda item: (item[1].st_mtime, item[0].name))

    def prune_quarantine(self, max_age: timedelta, max_bytes: int) -> list[Path]:
        """Remove the oldest archives older than `max_age`, then while they exceed `max_bytes`.

        Returns:
            The archives removed, each also logged.
        """
        archives = self.archives()
        cutoff = time.time() - max_age.total_seconds()
        total = sum(stat.st_size for _, stat in archives)
        removed = []
        for path, stat in archives:
            if stat.st_mtime >= cutoff and total <= max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= stat.st_size
            removed.append(path)
            logger.info(
                "removed quarantine archive %s (%d bytes)", path.name, stat.st_size,
                extra={"event": "quarantine-removed", "archive": str(path)},
            )  # fmt: skip
        return removed

    def unmount_all(self) -> int:
        """Unmount every filesystem, keeping images and records (before a stop or removal).

        Best effort: one that cannot be unmounted (its lock held) is logged and the others
        are still unmounted; a busy one is detached lazily.

        Returns:
            How many were unmounted.
        """
        unmounted = 0
        for name in sorted(host.mounts_under(self.mounts_dir)):
            try:
                with self._runner_lock(name, GetMetricsStorageError):
                    self._unmount(name)
            except (MetricsStorageError, OSError) as exc:
                logger.warning("runner %s: not unmounted: %s", name, exc)
                continue
            unmounted += 1
        return unmounted

    def _unmount(self, name: str) -> None:
        """Unmount a runner's filesystem; its autoclear loop device goes with the last user.

        A busy mount (a process still inside) is detached lazily and not waited for: it is
        gone from every path, the loop device is released when that process lets go, and
        nothing serialises behind it. (Quarantine and delete make it read-only first.)
        """
        target, image = self.mounts_dir / name, str(self._image(name))
        device = host.loop_device_of(target)
        if device is None:  # not mounted; a loop device bound by hand may still hold it
            if bound := host.loop_backing_files().get(image):
                host.detach_loop(bound)
            return
        autoclear = host.loop_autoclear(device)
        try:
            host.umount(target)
        except host.HostError as exc:
            if exc.errno != errno.EBUSY:
                raise
            host.umount(target, lazy=True)
            logger.warning(
                "runner %s: filesystem busy (a process is inside); detached it lazily: %s is"
                " released when that process leaves", name, device,
                extra={"event": "still-held", "runner": name},
            )  # fmt: skip
            if not autoclear:
                host.detach_loop(device)  # on a busy device the kernel sets autoclear instead
            return
        if not autoclear:  # bound by hand: unmounting did not free it
            host.detach_loop(device)

    def _cut_off(self, name: str, freeze: bool) -> int | None:
        """Make a mounted filesystem unwritable everywhere before it is archived or deleted.

        Remounted read-only, so a runner that mounts it in a namespace of its own (an LXD
        disk device) can no longer write to it either. Where a file is still open for
        writing that is refused: with `freeze`, it is frozen (the caller thaws it once
        archived); else it is left as it is.

        Returns:
            The frozen filesystem's descriptor, or None.
        """
        target = self.mount_point(name)
        if host.loop_device_of(target) is None:
            return None
        if not freeze:
            with contextlib.suppress(host.HostError):
                host.mount(None, target, None, host.MS_REMOUNT | host.MS_RDONLY | MOUNT_FLAGS)
            return None
        frozen = host.seal(target, MOUNT_FLAGS)
        if frozen is not None:
            logger.warning("runner %s: a file is open for writing; frozen while archived", name)
        return frozen

    def _remove(self, name: str) -> None:
        """Remove every trace of a filesystem, whatever state it is in; markers last.

        A loop device that another mount namespace still holds is named with the processes
        holding it (logged as a `still-held` event): it is released when they let go.
        """
        device = host.loop_device_of(self.mount_point(name))
        self._unmount(name)
        bound = device is not None and host.loop_backing(device) == str(self._image(name))
        holders = host.mount_holders(device) if device and bound else []
        if holders:  # else a process of ours inside, lazily detached: logged by _unmount
            logger.warning(
                "runner %s: %s is still mounted in another mount namespace, held by %s; it is"
                " read-only, and released when they unmount it", name, device,
                ", ".join(holders), extra={"event": "still-held", "runner": name},
            )  # fmt: skip
        self._image(name).unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            (self.mounts_dir / name).rmdir()  # a file in the way is not ours to remove
        self._record_path(name).unlink(missing_ok=True)
        self._record_path(name).with_suffix(".json.tmp").unlink(missing_ok=True)
        for op in _OPS:
            self._marker(name, op).unlink(missing_ok=True)

    def _marker_ops(self, name: str) -> list[str]:
        return [op for op in _OPS if self._marker(name, op).exists()]

    def _resume(self, name: str) -> None:
        """Finish or roll back a change a killed process left half-done (lock held)."""
        ops = self._marker_ops(name)
        if "quarantining" in ops:
            logger.warning("runner %s: finishing an interrupted quarantine", name)
            self._quarantine(name)
        elif ops:
            logger.warning("runner %s: cleaning up an interrupted %s", name, ops[0])
            self._remove(name)

    @contextlib.contextmanager
    def _runner_lock(
        self, name: str, error: type[MetricsStorageError], timeout: float | None = None
    ) -> Iterator[None]:
        """Hold the runner's lock file, one of `LOCK_BUCKETS`: never held twice in a thread."""
        bucket = zlib.crc32(name.encode()) % LOCK_BUCKETS
        try:
            with self.lock(f"runner-{bucket:02d}", timeout):
                yield
        except LockTimeoutError as exc:
            raise error(f"runner {name} is busy: {exc}") from exc


def _nonzero_blocks(path: Path, block: int = 4096) -> list[tuple[int, bytes]]:
    """Return (offset, data) runs of the non-zero blocks of a sparse file."""
    runs: list[tuple[int, bytes]] = []
    zero = bytes(block)
    with open(path, "rb") as image:
        fd = image.fileno()
        end = os.fstat(fd).st_size
        offset = 0
        while offset < end:
            try:
                offset = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only holes remain
                    break
                raise
            hole = os.lseek(fd, offset, os.SEEK_HOLE)
            data = os.pread(fd, hole - offset, offset)
            for start in range(0, len(data), block):
                chunk = data[start : start + block]
                if chunk == zero[: len(chunk)]:
                    continue
                if runs and runs[-1][0] + len(runs[-1][1]) == offset + start:
                    runs[-1] = (runs[-1][0], runs[-1][1] + chunk)
                else:
                    runs.append((offset + start, chunk))
            offset = hole
    return runs


def purge(base_dir: Path) -> None:
    """Unmount everything under `base_dir` and remove it (used by tests and the demo)."""
    for mount in host.mounts_under(Path(base_dir) / "mounts").values():
        host.umount(mount.mount_point, lazy=True)
    shutil.rmtree(base_dir, ignore_errors=True)
