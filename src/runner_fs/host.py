"""Thin, subprocess-free access to loop devices and mounts through the kernel's own interfaces.

The reference approach spawned `losetup`, `mount -o loop`, `mountpoint` and `umount` for every
filesystem; each of those scans the whole host. Here a loop device is configured with one
`LOOP_CONFIGURE` ioctl, mounted with mount(2) and listed from one read of the mount table.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import signal
import struct
import subprocess  # nosec B404: argument lists only, never a shell
from dataclasses import dataclass
from pathlib import Path

LOOP_CONTROL = Path("/dev/loop-control")
SYS_BLOCK = Path("/sys/block")
MOUNTINFO = Path("/proc/self/mountinfo")
MKFS_EXT4 = "/usr/sbin/mkfs.ext4"
E2FSCK = "/usr/sbin/e2fsck"

LOOP_MAJOR = 7
_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LOOP_CLR_FD = 0x4C01
_LO_FLAGS_READ_ONLY = 1
_LO_FLAGS_AUTOCLEAR = 4
# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
# loop_info64: 5 x u64, 4 x u32 (lo_flags last), 64 + 64 + 32 bytes of names, 2 x u64.
_LOOP_CONFIG = struct.Struct("=II5Q4I64s64s32s2Q8Q")

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
CLONE_NEWNS = 0x00020000
_PR_SET_PDEATHSIG = 1
_FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
_FITHAW = 0xC0045878  # _IOWR('X', 120, int)
PROC = Path("/proc")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong]
_libc.mount.argtypes += [ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


class HostError(OSError):
    """A kernel or tool call on the host failed."""


@dataclass(frozen=True)
class Mount:
    """One line of the mount table that matters to us."""

    mount_point: str
    source: str
    fstype: str
    options: str


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise HostError(err, f"{what}: {os.strerror(err)}")


def mount_image(image: Path, target: Path, flags: int, data: str = "") -> str:
    """Attach an image to a new autoclear loop device and mount it at `target`.

    The loop device lives exactly as long as the mount: on a failed mount it is released at
    once, and on unmount the kernel detaches it.

    Args:
        image: the ext4 image file.
        target: an existing directory.
        flags: mount(2) flags; `MS_RDONLY` also attaches the loop device read-only.
        data: filesystem options, e.g. `noload`.

    Returns:
        The loop device path the image is mounted from.

    Raises:
        HostError: the image could not be attached or mounted.
    """
    read_only = bool(flags & MS_RDONLY)
    image_fd = os.open(image, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    try:
        control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(64):
                number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                loop_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                try:
                    config = _LOOP_CONFIG.pack(
                        image_fd, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                        _LO_FLAGS_AUTOCLEAR | (_LO_FLAGS_READ_ONLY if read_only else 0),
                        os.fsencode(image)[:63], b"", b"", 0, 0, *([0] * 8),
                    )  # fmt: skip
                    try:
                        fcntl.ioctl(loop_fd, _LOOP_CONFIGURE, config)
                    except OSError as exc:
                        if exc.errno == errno.EBUSY:  # another process took it first
                            continue
                        raise HostError(exc.errno, f"configure {device}: {exc.strerror}") from exc
                    mount(device, target, "ext4", flags, data)
                    return device
                finally:
                    os.close(loop_fd)  # the mount now holds the device; else it autoclears
            raise HostError(errno.EBUSY, "no free loop device after 64 attempts")
        finally:
            os.close(control)
    finally:
        os.close(image_fd)


def mount(
    source: str | None, target: Path | str, fstype: str | None, flags: int, data: str = ""
) -> None:
    """Mount a filesystem through the mount system call.

    Raises:
        HostError: the kernel refused.
    """
    _check(
        _libc.mount(
            os.fsencode(source) if source else None,
            os.fsencode(target),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def umount(target: Path | str, lazy: bool = False) -> None:
    """Call umount2(2); a loop device attached by `mount_image` detaches itself.

    Raises:
        HostError: the kernel refused (EINVAL when nothing is mounted there).
    """
    _check(_libc.umount2(os.fsencode(target), MNT_DETACH if lazy else 0), f"umount {target}")


def private_mount_namespace() -> None:
    """Move this process into a mount namespace of its own whose mounts die with it.

    Raises:
        HostError: unshare(2) or the propagation change failed.
    """
    _check(_libc.unshare(CLONE_NEWNS), "unshare mount namespace")
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def die_with_parent() -> None:
    """Have the kernel kill this (forked) process when its parent dies."""
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(directory: Path) -> dict[str, Mount]:
    """Read the mount table once and return the mounts directly below `directory`.

    Args:
        directory: the parent of the mount points of interest.

    Returns:
        Mount point name (the last path component) to the mount there.
    """
    prefix = str(directory).rstrip("/") + "/"
    escaped = prefix.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
    line = re.compile(
        rf"^\S+ \S+ \S+ \S+ ({re.escape(escaped)}[^ /]+) (\S+) .*?- (\S+) (\S+)", re.MULTILINE
    )
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as table:
        found = line.findall(table.read())
    return {
        point[len(escaped) :]: Mount(_unescape(point), _unescape(source), fstype, options)
        for point, options, fstype, source in found
    }


def loop_backing_files() -> dict[str, str]:
    """Map every bound loop device to the path of its backing file, from sysfs.

    Returns:
        Backing file path (as the kernel prints it) to device path. A path that is not UTF-8
        (never one of ours) keeps its bytes as surrogate escapes.
    """
    bound: dict[str, str] = {}
    for entry in os.scandir(SYS_BLOCK):
        if not entry.name.startswith("loop"):
            continue
        try:
            with open(f"{entry.path}/loop/backing_file", "rb") as backing:
                path = os.fsdecode(backing.read().rstrip(b"\n"))
        except FileNotFoundError:  # not bound
            continue
        bound[path] = f"/dev/{entry.name}"
    return bound


def loop_device_of(mount_point: Path) -> str | None:
    """Return the loop device mounted at `mount_point`, from two stats and no table scan.

    Returns:
        The device path, or None when no loop device is mounted there.
    """
    try:
        here, parent = os.lstat(mount_point), os.lstat(mount_point.parent)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if here.st_dev == parent.st_dev or os.major(here.st_dev) != LOOP_MAJOR:
        return None
    link = os.readlink(f"/sys/dev/block/{LOOP_MAJOR}:{os.minor(here.st_dev)}")
    return f"/dev/{os.path.basename(link)}"


def seal(mount_point: Path, flags: int) -> int | None:
    """Make a mounted filesystem unwritable in every mount namespace that holds it.

    The filesystem (its superblock, which every namespace's mount of it shares) is remounted
    read-only; where a process still has a file open for writing, which forbids that, it is
    frozen instead: writers wait, and what they wrote is on the device.

    Args:
        mount_point: where it is mounted in this namespace.
        flags: the mount flags it was mounted with (kept, with `MS_RDONLY` added).

    Returns:
        None when it is read-only now, else an open descriptor of the frozen filesystem,
        to hand to `thaw` once done.

    Raises:
        HostError: neither could be done.
    """
    try:
        mount(None, mount_point, None, MS_REMOUNT | MS_RDONLY | flags)
        return None
    except HostError as exc:
        if exc.errno != errno.EBUSY:
            raise
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _FIFREEZE, 0)
    except OSError as exc:
        os.close(fd)
        raise HostError(exc.errno, f"freeze {mount_point}: {exc.strerror}") from exc
    return fd


def thaw(fd: int) -> None:
    """Thaw a filesystem `seal` froze, and close its descriptor."""
    try:
        fcntl.ioctl(fd, _FITHAW, 0)
    finally:
        os.close(fd)


def mount_holders(device: str) -> list[str]:
    """Name the processes whose mount namespaces still mount `device` (one of each namespace).

    Returns:
        `pid (command)` for one process of every other namespace that holds the device.
    """
    number = os.stat(device).st_rdev
    field = f" {os.major(number)}:{os.minor(number)} "
    seen: set[int] = set()
    holders = []
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            namespace = os.stat(f"{entry.path}/ns/mnt").st_ino
            if namespace in seen:
                continue
            seen.add(namespace)
            with open(f"{entry.path}/mountinfo", encoding="utf-8", errors="replace") as table:
                if field not in table.read():
                    continue
            with open(f"{entry.path}/comm", encoding="utf-8", errors="replace") as comm:
                holders.append(f"{entry.name} ({comm.read().strip()})")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return holders


def loop_backing(device: str) -> str | None:
    """Return the backing file of one loop device (one read of its sysfs entry), if bound."""
    try:
        with open(f"{SYS_BLOCK}/{os.path.basename(device)}/loop/backing_file", "rb") as backing:
            return os.fsdecode(backing.read().rstrip(b"\n"))
    except FileNotFoundError:
        return None


def loop_autoclear(device: str) -> bool:
    """Return whether a loop device detaches itself when its last user closes it."""
    with open(f"{SYS_BLOCK}/{os.path.basename(device)}/loop/autoclear", encoding="utf-8") as f:
        return f.read().strip() == "1"


def detach_loop(device: str) -> None:
    """Detach a loop device that holds no mount (LOOP_CLR_FD).

    Raises:
        HostError: the device could not be opened or detached.
    """
    try:
        loop_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise HostError(exc.errno, f"open {device}: {exc.strerror}") from exc
    try:
        fcntl.ioctl(loop_fd, _LOOP_CLR_FD)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # already detached
            raise HostError(exc.errno, f"detach {device}: {exc.strerror}") from exc
    finally:
        os.close(loop_fd)


def run(argv: list[str], what: str, ok_codes: tuple[int, ...] = (0,)) -> None:
    """Run a host tool with an argument list and no shell.

    Raises:
        HostError: the tool is missing or exited with a code not in `ok_codes`.
    """
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)  # nosec
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(errno.EIO, f"{what}: {exc}") from exc
    if proc.returncode not in ok_codes:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise HostError(errno.EIO, f"{what}: exit {proc.returncode}: {detail[0][:200]}")
