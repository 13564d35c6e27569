"""`runner-fs demo`: the whole flow on this machine with simulated runners, then clean up."""

from __future__ import annotations

import datetime
import json
import os
import random
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from runner_fs import host
from runner_fs.errors import RunnerFsError
from runner_fs.metrics import runner as files
from runner_fs.metrics.events import JOB, parse_rates
from runner_fs.reconcile import Progress, Reconciler
from runner_fs.report import report
from runner_fs.shared_fs import SharedFilesystemManager, purge
from runner_fs.storage import get_storage

REPOSITORIES = ("acme/web", "acme/api", "acme/docs", "tools/ci-images")
WORKFLOWS = ("test", "build", "release")
RATES = "small=0.008,large=0.032"


def _simulate(manager: SharedFilesystemManager, count: int, rng: random.Random) -> dict[str, str]:
    """Create `count` runners writing their metric files; return what each one does."""
    now = time.time()
    roles: dict[str, str] = {}
    for index in range(count):
        name = f"demo-runner-{index:02d}"
        flavor = "large" if index % 3 == 0 else "small"
        path = manager.create(name, flavor=flavor).path
        started = now - rng.uniform(600, 3600)
        # The demo plays back an hour: each record says its filesystem was created just
        # before its runner started, as it would have been (runners cannot claim earlier).
        record = manager.read_record(name)
        record.created = datetime.datetime.fromtimestamp(started - 5, datetime.timezone.utc)
        manager._write_record(record)
        (path / files.INSTALLATION_START_FILE).write_text(f"{started:.3f}")
        (path / files.INSTALLED_FILE).write_text(f"{started + rng.uniform(20, 90):.3f}")
        job_start = started + rng.uniform(100, 300)
        pre_job = {
            "timestamp": job_start,
            "workflow": rng.choice(WORKFLOWS),
            "workflow_run_id": str(rng.randrange(10**9, 10**10)),
            "repository": rng.choice(REPOSITORIES),
            "event": rng.choice(("push", "pull_request")),
        }
        if index == count - 1:  # hostile: points its metrics at a host file
            (path / files.PRE_JOB_FILE).symlink_to("/etc/passwd")
            (path / files.POST_JOB_FILE).write_text("{}")
            roles[name] = "hostile"
            continue
        if index % 4 == 3:  # still running its job
            (path / files.PRE_JOB_FILE).write_text(json.dumps(pre_job))
            roles[name] = "running"
            continue
        if index % 5 == 4:  # released before it took a job
            manager.release(name)
            roles[name] = "released"
            continue
        status = "normal" if index % 6 else "abnormal"
        post_job = {
            "timestamp": min(now - 1, job_start + rng.uniform(60, 600)),
            "status": status,
            "status_info": {"code": 1} if status == "abnormal" else None,
        }
        (path / files.PRE_JOB_FILE).write_text(json.dumps(pre_job))
        (path / files.POST_JOB_FILE).write_text(json.dumps(post_job))
        roles[name] = "finished"
    return roles


def run_demo(runners: int = 12, progress: Progress | None = None) -> dict[str, Any]:
    """Run simulated runners on real loop devices, reconcile into SQLite, report, clean up.

    Raises:
        RunnerFsError: not root, no loop devices, or something was left behind.
    """
    if os.geteuid() != 0 or not host.LOOP_CONTROL.exists():
        raise RunnerFsError("the demo needs root and loop devices (/dev/loop-control)")
    if not 2 <= runners <= 500:
        raise ValueError(f"--runners must be between 2 and 500, not {runners}")
    rng = random.Random(runners)  # noqa: S311 (simulated runners, not secrets)
    with tempfile.TemporaryDirectory(prefix="runner-fs-demo-") as directory:
        base = Path(directory) / "filesystems"
        manager = SharedFilesystemManager(base, size="1M", flavor="small")
        try:
            storage = get_storage("sqlite", path=Path(directory) / "metrics.db")
            roles = _simulate(manager, runners, rng)
            unit = f"{socket.gethostname()}-demo"
            reconciler = Reconciler(manager, storage, unit, rates=parse_rates(RATES))
            counts = reconciler.run(progress).as_dict()
            now = datetime.datetime.now(datetime.timezone.utc)
            day = datetime.timedelta(days=1)
            jobs = report(storage, ["repository", "flavor"], now - day, now + day, [JOB])
            quarantined = sorted(path.name for path in manager.quarantine_dir.iterdir())
            still_running = sorted(info.runner for info in manager.list_info())
        finally:
            purge(base)
    leftovers = [p for p in host.loop_backing_files() if p.startswith(directory)]
    if leftovers or Path(directory).exists():
        raise RunnerFsError(f"the demo left {leftovers or directory} behind")
    return {
        "runners": roles,
        "reconcile": counts,
        "job_time": jobs["results"],
        "quarantined": quarantined,
        "still_running": still_running,
        "cleaned_up": True,
    }
