"""Quarantine archives, written from a private read-only view of an untrusted filesystem.

A forked child enters a mount namespace of its own, mounts the image read-only there and
archives it; the mount (and its autoclear loop device) dies with the child, so the view can
never outlive the archiving, and the runner, already cut off, cannot swap anything under it.
Nothing is followed or opened but regular files: symlinks are stored as links, FIFOs, sockets
and device nodes are only named in the manifest. The archived content is capped; what is cut
is noted in `MANIFEST.json` inside the archive.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from runner_fs import host
from runner_fs.metrics.runner import METRIC_FILES

_KINDS = {
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "char-device",
    stat.S_IFBLK: "block-device",
}


TMP_SEPARATOR = "+"  # never in a runner name: `.web+…` is never taken for `.web-2+…`


class ArchiveError(Exception):
    """The archiving child failed."""


def archive_image(image: Path, directory: Path, runner: str, cap: int, record: bytes) -> Path:
    """Archive an ext4 image into `directory/<runner>-<UTC timestamp>.tar.gz` (mode 0600).

    The image must not be mounted. When it cannot be mounted read-only, the raw image is
    archived instead.

    Args:
        image: the image file (may be missing: the archive then holds only the manifest).
        directory: the quarantine directory.
        runner: the runner name, already validated.
        cap: the most content bytes to store.
        record: the filesystem's record, stored as `record.json`.

    Returns:
        The archive path; an existing archive is never overwritten.

    Raises:
        ArchiveError: the archive could not be written.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{runner}{TMP_SEPARATOR}", suffix=".tmp", dir=directory)
    os.close(fd)
    with tempfile.TemporaryDirectory(prefix="runner-fs-view-") as view:  # gone with the child
        _archive_in_child(image, Path(tmp), Path(view), runner, cap, record)
    return _publish(Path(tmp), directory, runner)


def _archive_in_child(
    image: Path, tmp: Path, view: Path, runner: str, cap: int, record: bytes
) -> None:
    """Archive into `tmp` in a forked child whose private mount of `view` dies with it.

    Raises:
        ArchiveError: the child failed (`tmp` is removed).
    """
    read_pipe, write_pipe = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        os.close(read_pipe)
        code = 0
        try:
            host.die_with_parent()
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
            _archive_in_private_view(image, tmp, view, runner, cap, record)
        except BaseException as exc:
            os.write(write_pipe, f"{type(exc).__name__}: {exc}".encode()[:2000])
            code = 1
        os._exit(code)
    os.close(write_pipe)
    with os.fdopen(read_pipe, "rb") as messages:
        message = messages.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tmp.unlink()
        raise ArchiveError(f"archiving {image.name} failed: {message or 'child crashed'}")


def _publish(tmp: Path, directory: Path, runner: str) -> Path:
    """Give the finished archive its final name without ever replacing another archive."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1000):
        path = directory / f"{runner}-{stamp}{f'-{attempt}' if attempt else ''}.tar.gz"
        try:
            os.link(tmp, path)
        except FileExistsError:
            continue
        os.unlink(tmp)
        return path
    raise ArchiveError(f"no free archive name for {runner} at {stamp}")


def _archive_in_private_view(
    image: Path, out: Path, view: Path, runner: str, cap: int, record: bytes
) -> None:
    """In the child: mount the image read-only at `view` in a private namespace, archive it."""
    host.private_mount_namespace()
    manifest: dict = {
        "runner": runner,
        "archived": datetime.now(timezone.utc).isoformat(),
        "cap_bytes": cap,
        "entries": [],
    }
    with tarfile.open(out, "w:gz") as tar:
        _add_bytes(tar, "record.json", record)
        try:
            if not image.exists():
                manifest["source"] = "nothing: the image is missing"
            else:
                try:
                    flags = host.MS_RDONLY | host.MS_NOSUID | host.MS_NODEV | host.MS_NOEXEC
                    host.mount_image(image, view, flags, "noload")
                except host.HostError as exc:
                    manifest["source"] = f"raw image: it cannot be mounted ({exc})"
                    _add_tree(tar, image.parent, f"./{image.name}", cap, manifest, prefix="image/")
                else:
                    manifest["source"] = "files"
                    _add_tree(tar, view, ".", cap, manifest, prefix="files/")
        finally:
            _add_bytes(tar, "MANIFEST.json", json.dumps(manifest, indent=1).encode())


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _add_tree(
    tar: tarfile.TarFile, root: Path, top: str, cap: int, manifest: dict, *, prefix: str
) -> None:
    """Add `root/top` and below to the archive, opening nothing but regular files.

    The content cap is shared fairly: the metric files first, then the smaller files before
    the larger, each getting at most an equal share of what is left, so no one file (a huge
    sparse one, say) can crowd out the others. An entry that cannot be read (a torn
    directory block) is named in the manifest with its error, and the rest still archived.
    """
    regular: list[tuple[str, str, os.stat_result, tarfile.TarInfo, dict]] = []
    pending = [top]
    while pending:
        relative = pending.pop()
        path = os.path.join(root, relative)
        entry: dict = {"path": os.fsdecode(relative)}
        try:
            st = os.lstat(path)
            info = tarfile.TarInfo(
                prefix.rstrip("/") if relative == "." else prefix + relative[2:]
            )
            info.mode, info.mtime, info.uid, info.gid = st.st_mode & 0o777, int(st.st_mtime), 0, 0
            kind = stat.S_IFMT(st.st_mode)
            if kind == stat.S_IFDIR:
                children = sorted(os.listdir(path))
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                pending.extend(os.path.join(relative, child) for child in children)
            elif kind == stat.S_IFLNK:
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
                manifest["entries"].append({**entry, "symlink": info.linkname})
            elif kind == stat.S_IFREG:
                regular.append((relative, path, st, info, entry))
            else:
                manifest["entries"].append({**entry, "skipped": _KINDS.get(kind, "unknown type")})
        except OSError as exc:
            manifest["entries"].append({**entry, "skipped": str(exc)})
    regular.sort(key=lambda item: (os.path.basename(item[0]) not in METRIC_FILES, item[2].st_size))
    budget = cap
    for index, (_, path, _, info, entry) in enumerate(regular):
        share = budget // (len(regular) - index)
        try:
            budget -= _add_regular(tar, path, info, share, entry)
        except OSError as exc:
            entry["skipped"] = str(exc)
        manifest["entries"].append(entry)


def _add_regular(
    tar: tarfile.TarFile, path: str, info: tarfile.TarInfo, budget: int, entry: dict
) -> int:
    """Add at most `budget` bytes of a regular file; return how many were stored."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as source:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):  # swapped since lstat: refuse
            entry["skipped"] = "changed type"
            return 0
        size = opened.st_size
        info.size = min(size, max(budget, 0))
        tar.addfile(info, source)  # copies exactly info.size bytes, streaming
    entry.update(size=size, stored=info.size)
    if info.size < size:
        entry["truncated"] = "archive content cap reached"
    return info.size


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
