"""Benchmark: SharedFilesystemManager against a faithful model of the reference approach.

The reference (github-runner charm's `shared_fs.py`) spends, per runner, one subprocess each
for `dd`, `mkfs.ext4`, `mount -o loop` and `chown` to create; one `mountpoint -q` per runner to
list (and `mount -o loop` for what is not mounted); `umount`, unlink and rmtree to delete; and
archives a mounted directory with tarfile to quarantine. (It also ran two of those through
`sudo`; the model does not, which only flatters the reference.) Both sides run in the same
invocation, each in its own process, on the same disk, and each operation is timed per
filesystem: the table gives medians and the ratio reference / ours.

The floor is the kernel work create and delete cannot avoid, also in its own process: writing
the same ext4 template's blocks into a new image (pwrite), attaching it to a loop device
(LOOP_CONFIGURE) and mount(2); then umount2(2) and unlink(2). Its mount points are made
beforehand, untimed. The last column is ours / floor.

Run as root:  python bench/bench_shared_fs.py --n 10 100 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

OWNER = "nobody:nogroup"
QUARANTINED = 5  # filesystems quarantined per run; the rest are deleted


def _time_each(names: list[str], action: Callable[[str], object]) -> list[float]:
    times = []
    for name in names:
        start = time.perf_counter()
        action(name)
        times.append(time.perf_counter() - start)
    return times


def _time_whole(action: Callable[[], object], per: int, repeat: int = 3) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) / per)
    return times


def _unmount_all(mounts: Path) -> None:
    """Simulate a reboot: unmount every filesystem (their loop devices go with them)."""
    from runner_fs import host

    for mount in host.mounts_under(mounts).values():
        host.umount(mount.mount_point)


def run_ours(base: Path, n: int) -> dict[str, list[float]]:
    """Time every operation of our manager on `n` filesystems."""
    from runner_fs.shared_fs import SharedFilesystemManager

    manager = SharedFilesystemManager(base, size="1M", owner=OWNER)
    manager.create("warm-up")  # the one-off template mkfs is not a per-create cost
    manager.delete("warm-up")
    names = [f"runner-{i}" for i in range(n)]
    result = {"create": _time_each(names, manager.create)}
    result["get"] = _time_each(names, manager.get)
    result["list_all"] = _time_whole(lambda: list(manager.list_all()), n)
    _unmount_all(manager.mounts_dir)
    result["remount"] = _time_whole(lambda: list(manager.list_all()), n, repeat=1)
    result["quarantine"] = _time_each(names[:QUARANTINED], manager.move_to_quarantine)
    result["delete"] = _time_each(names[QUARANTINED:], manager.delete)
    return result


def run_floor(base: Path, n: int) -> dict[str, list[float]]:
    """Time the bare kernel work of creating and deleting `n` filesystems."""
    from runner_fs import host
    from runner_fs.shared_fs import MOUNT_FLAGS, SharedFilesystemManager, resolve_owner

    manager = SharedFilesystemManager(base / "template", size="1M", owner=OWNER)
    manager.create("warm-up")  # as ours: the template is made, the loop driver warmed
    manager.delete("warm-up")
    blocks = manager._template(*resolve_owner(OWNER))  # the very blocks ours writes
    images, mounts = base / "images", base / "mounts"
    images.mkdir(parents=True)
    names = [f"runner-{i}" for i in range(n)]
    for name in names:
        (mounts / name).mkdir(parents=True)

    def create(name: str) -> None:
        image = images / f"{name}.img"
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, 1 << 20)
        for offset, data in blocks:
            os.pwrite(fd, data, offset)
        os.close(fd)
        host.mount_image(image, mounts / name, MOUNT_FLAGS)

    def delete(name: str) -> None:
        host.umount(mounts / name)
        os.unlink(images / f"{name}.img")

    return {"create": _time_each(names, create), "delete": _time_each(names, delete)}


def _sh(*argv: str) -> int:
    return subprocess.run(argv, check=False, capture_output=True).returncode


class ReferenceModel:
    """The reference's approach: a subprocess per step, one `mountpoint` per runner."""

    def __init__(self, base: Path) -> None:
        self.images, self.mounts = base / "images", base / "mounts"
        self.images.mkdir(parents=True)
        self.mounts.mkdir()
        self.quarantine = base / "quarantine"
        self.quarantine.mkdir()

    def create(self, name: str) -> None:
        image, path = self.images / f"{name}.img", self.mounts / name
        path.mkdir()
        _sh("dd", "if=/dev/zero", f"of={image}", "bs=1M", "count=1")
        _sh("mkfs.ext4", "-q", str(image))
        _sh("mount", "-o", "loop", str(image), str(path))
        _sh("chown", OWNER.replace(":", "."), str(path))

    def get(self, name: str) -> Path:
        path = self.mounts / name
        if _sh("mountpoint", "-q", str(path)) != 0:
            _sh("mount", "-o", "loop", str(self.images / f"{name}.img"), str(path))
        return path

    def list_all(self) -> list[Path]:
        return [self.get(path.name) for path in self.mounts.iterdir()]

    def delete(self, name: str) -> None:
        path = self.mounts / name
        _sh("umount", str(path))
        (self.images / f"{name}.img").unlink()
        shutil.rmtree(path)

    def move_to_quarantine(self, name: str) -> None:
        with tarfile.open(self.quarantine / f"{name}.tar.gz", "w:gz") as tar:
            tar.add(self.mounts / name, arcname=name)
        self.delete(name)


def run_reference(base: Path, n: int) -> dict[str, list[float]]:
    """Time every operation of the reference model on `n` filesystems."""
    model = ReferenceModel(base)
    names = [f"runner-{i}" for i in range(n)]
    result = {"create": _time_each(names, model.create)}
    result["get"] = _time_each(names, model.get)
    result["list_all"] = _time_whole(model.list_all, n)
    _unmount_all(model.mounts)
    result["remount"] = _time_whole(model.list_all, n, repeat=1)
    result["quarantine"] = _time_each(names[:QUARANTINED], model.move_to_quarantine)
    result["delete"] = _time_each(names[QUARANTINED:], model.delete)
    return result


def worker(impl: str, n: int) -> None:
    """Run one side in this process and print its timings and peak memory as JSON."""
    base = Path(tempfile.mkdtemp(prefix=f"runner-fs-bench-{impl}-"))
    try:
        run = {"ours": run_ours, "reference": run_reference, "floor": run_floor}[impl]
        result = run(base, n)
    finally:
        _unmount_all(base / "mounts")
        shutil.rmtree(base, ignore_errors=True)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"times": result, "peak_mib": peak_kib / 1024}))


def main() -> None:
    """Run both sides for each N and print a Markdown table of medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--worker", choices=["ours", "reference", "floor"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.n[0])
        return
    if os.geteuid() != 0:
        sys.exit("the benchmark mounts real filesystems: run it as root")
    print("| N | operation | reference ms/fs | ours ms/fs | ratio | floor ms/fs | ours / floor |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    peaks = []
    for n in args.n:
        runs = {}
        for impl in ("reference", "ours", "floor"):
            os.sync()  # no side pays for the writeback of the one before
            out = subprocess.run(
                [sys.executable, __file__, "--worker", impl, "--n", str(n)],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            runs[impl] = json.loads(out.splitlines()[-1])
        for op in runs["ours"]["times"]:
            ref = statistics.median(runs["reference"]["times"][op]) * 1000
            ours = statistics.median(runs["ours"]["times"][op]) * 1000
            floor = "| | |"
            if op in runs["floor"]["times"]:
                bare = statistics.median(runs["floor"]["times"][op]) * 1000
                floor = f"| {bare:.3f} | {ours / bare:.2f}x |"
            print(f"| {n} | {op} | {ref:.3f} | {ours:.3f} | {ref / ours:.1f}x {floor}", flush=True)
        peaks.append(f"N={n}: ours {runs['ours']['peak_mib']:.0f} MiB, "
                     f"reference {runs['reference']['peak_mib']:.0f} MiB")  # fmt: skip
    print("\nPeak memory (RSS of the benchmarking process): " + "; ".join(peaks))


if __name__ == "__main__":
    main()
