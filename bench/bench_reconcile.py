"""Benchmark: a full reconcile of N finished runners, ours against a model of the reference.

The reference (github-runner charm's metrics harvest) lists filesystems with one `mountpoint -q`
subprocess per runner, reads the metric files with plain `open()`, appends one JSON line per
event to a log file, then deletes each filesystem with an `umount` subprocess, an unlink and an
rmtree. Ours: one mount-table read, bounded `O_NOFOLLOW` reads validated by pydantic, one
fsynced SQLite transaction per batch of runners (`push_many`: datapoints, ledger keys, rollups
and tallies), then umount(2) and unlink, four filesystems at a time. The floor is the kernel
work of removing the same filesystems, serially: umount2(2) and unlink(2) of each image.
Every side starts from its own N freshly created filesystems with four valid files each, each
in its own process (peak RSS is that process's); setup is not timed.

Run as root:  python bench/bench_reconcile.py --n 100 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner_fs.metrics import runner as files
from runner_fs.shared_fs import SharedFilesystemManager, purge


def setup(base: Path, n: int) -> None:
    """Create N finished runners' filesystems (not timed).

    Their times lie within what the harvest accepts: from 600 s (the clock skew allowed)
    before each filesystem was created.
    """
    manager = SharedFilesystemManager(base, size="1M", flavor="small")
    for index in range(n):
        path = manager.create(f"bench-{index}").path
        created = time.time()
        (path / files.INSTALLATION_START_FILE).write_text(f"{created - 500}")
        (path / files.INSTALLED_FILE).write_text(f"{created - 460}")
        pre = {"timestamp": created - 400, "workflow": "ci", "workflow_run_id": str(index),
               "repository": f"acme/repo-{index % 40}", "event": "push"}  # fmt: skip
        (path / files.PRE_JOB_FILE).write_text(json.dumps(pre))
        post = {"timestamp": created - 100, "status": "normal", "status_info": None}
        (path / files.POST_JOB_FILE).write_text(json.dumps(post))


def reference_pass(base: Path) -> int:
    """Harvest as the reference does: subprocesses per runner, JSON lines, then delete."""
    harvested = 0
    with open(base / "metrics.log", "a", encoding="utf-8") as log:
        for mount in sorted((base / "mounts").iterdir()):
            if subprocess.run(["mountpoint", "-q", str(mount)], check=False).returncode:
                continue
            metrics = {}
            for name in files.METRIC_FILES:
                path = mount / name
                if path.exists():
                    metrics[name] = path.read_text(encoding="utf-8")
            if files.POST_JOB_FILE not in metrics:
                continue
            pre, post = (
                json.loads(metrics[files.PRE_JOB_FILE]),
                json.loads(metrics[files.POST_JOB_FILE]),
            )
            installed = float(metrics[files.INSTALLED_FILE])
            started = float(metrics[files.INSTALLATION_START_FILE])
            job = post["timestamp"] - pre["timestamp"]
            for event in (
                {"event": "runner_installed", "duration": installed - started},
                {"event": "runner_start", "idle": pre["timestamp"] - installed, **pre},
                {"event": "runner_stop", "job_duration": job, **post},
            ):
                log.write(json.dumps(event) + "\n")
            subprocess.run(["umount", str(mount)], check=True)
            (base / "images" / f"{mount.name}.img").unlink()
            shutil.rmtree(mount)
            harvested += 1
    return harvested


def ours_pass(base: Path) -> int:
    """Our harvest into SQLite."""
    from runner_fs.reconcile import Reconciler
    from runner_fs.storage import get_storage

    manager = SharedFilesystemManager(base, size="1M", flavor="small")
    storage = get_storage("sqlite", path=base / "metrics.db")
    return Reconciler(manager, storage, "bench-host").run().harvested


def floor_pass(base: Path) -> int:
    """Only the kernel work of removing every filesystem: umount2 and unlink, one by one."""
    from runner_fs import host

    removed = 0
    for mount in sorted((base / "mounts").iterdir()):
        host.umount(mount)
        (base / "images" / f"{mount.name}.img").unlink()
        removed += 1
    return removed


def worker(impl: str, base: Path) -> None:
    start = time.perf_counter()
    harvested = {"ours": ours_pass, "reference": reference_pass, "floor": floor_pass}[impl](base)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "harvested": harvested, "peak_mib": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--worker", choices=["ours", "reference", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.base)
        return
    print("| N | reference model | ours | ratio | floor | ours / floor | peak RSS ref. / ours |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in args.n:
        measured = {}
        for impl in ("reference", "ours", "floor"):
            with tempfile.TemporaryDirectory(prefix="runner-fs-bench-") as directory:
                base = Path(directory) / "fs"
                try:
                    setup(base, n)
                    os.sync()  # the setup's writes are not the pass's to flush
                    out = subprocess.run(
                        [sys.executable, __file__, "--worker", impl, "--base", str(base)],
                        check=True, capture_output=True, text=True,
                    )  # fmt: skip
                    measured[impl] = json.loads(out.stdout)
                    assert measured[impl]["harvested"] == n, measured[impl]
                finally:
                    purge(base)
        ref, ours, floor = measured["reference"], measured["ours"], measured["floor"]
        print(
            f"| {n} | {ref['seconds']:.2f} s | {ours['seconds']:.2f} s |"
            f" {ref['seconds'] / ours['seconds']:.1f}x | {floor['seconds']:.2f} s |"
            f" {ours['seconds'] / floor['seconds']:.2f}x |"
            f" {ref['peak_mib']:.0f} / {ours['peak_mib']:.0f} MiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
