"""The JSON event log of a real pass: harvests, quarantines and errors, never a runner's files."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

from runner_fs.metrics import runner as files

from .conftest import write_host_config
from .test_reconcile import UNIT, write_runner


def test_a_pass_logs_each_harvest_and_quarantine_as_json_and_nothing_a_runner_wrote(
    manager, tmp_path
):
    log = tmp_path / "log/runner-fs/runner-fs.log"
    config = write_host_config(
        tmp_path / "config.yaml", manager.base_dir, UNIT, event_log=str(log)
    )
    write_runner(manager, "good", job=30)
    write_runner(manager, "evil", job=30)
    (manager.mount_point("evil") / files.PRE_JOB_FILE).write_text('{"SECRET-CONTENT": ')

    result = subprocess.run(
        [sys.executable, "-m", "runner_fs.cli", "--config", str(config), "reconcile"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["event"], e["runner"]) for e in events] == [
        ("hostile", "evil"), ("quarantine", "evil"), ("harvest", "good")
    ]  # fmt: skip
    assert "pre-job-metrics.json: not valid JSON" in events[0]["message"]
    assert events[2]["datapoints"] == 3
    assert events[1]["archive"].endswith(".tar.gz")
    assert "SECRET-CONTENT" not in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o750
    assert "harvested runner" not in result.stderr  # the terminal stays quiet without -v
