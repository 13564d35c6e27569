"""The `runner-fs` command line as provisioners call it: real processes, real filesystems."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner_fs import host

from .conftest import bound_images, write_host_config


@pytest.fixture
def config(tmp_path, base_dir) -> Path:
    return write_host_config(tmp_path / "config.yaml", base_dir)


def run(config: Path | None, *args: str) -> subprocess.CompletedProcess:
    prefix = ["--config", str(config)] if config else []
    return subprocess.run(
        [sys.executable, "-m", "runner_fs.cli", *prefix, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_lifecycle_through_the_command_line(config, base_dir):
    created = run(config, "create", "r1", "--label", "flavor=large", "--json")
    assert created.returncode == 0, created.stderr
    path = Path(json.loads(created.stdout)["path"])
    assert path.is_mount()

    listed = json.loads(run(config, "list", "--json").stdout)
    assert [(r["runner"], r["state"], r["mounted"], r["size"]) for r in listed] == [
        ("r1", "running", True, 1 << 20)
    ]
    assert json.loads(run(config, "release", "r1", "--json").stdout) == {
        "runner": "r1",
        "released": True,
    }
    assert json.loads(run(config, "list", "--json").stdout)[0]["state"] == "released"
    assert json.loads(run(config, "get", "r1", "--json").stdout)["path"] == str(path)

    quarantined = json.loads(run(config, "quarantine", "r1", "--json").stdout)
    archive = Path(quarantined["archive"])
    assert quarantined["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert run(config, "list").stdout.strip() == "no filesystems"
    assert not bound_images(base_dir)


def test_reconcile_and_report(config):
    assert run(config, "create", "r2").returncode == 0
    reconciled = run(config, "reconcile", "--json")
    assert reconciled.returncode == 0, reconciled.stderr
    assert json.loads(reconciled.stdout) == {
        "harvested": 0, "quarantined": 0, "skipped": 1, "datapoints": 0, "errors": 0
    }  # fmt: skip

    report = run(config, "report", "--groupby", "type", "--begin", "2026-01-01", "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout) == {"total": 0, "results": []}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["create", "Bad/Name"], 2, "invalid runner name"),
        (["delete", "ghost"], 1, "runner ghost has no filesystem"),
        (["quarantine", "ghost"], 1, "runner ghost has no filesystem"),
        (["report", "--begin", "last week"], 2, "not ISO 8601: use 2026-11-01"),
        (["report", "--groupby", "time-q"], 2, "invalid time groupby 'time-q'"),
        (["create", "x", "--label", "novalue"], 2, "is not KEY=VALUE"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_errors_say_what_was_wrong_with_the_right_exit_code(config, args, code, message):
    result = run(config, *args)

    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_config_file_is_a_usage_error_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("filesystem-size: 10T\n")

    result = run(path, "list")

    assert result.returncode == 2
    assert "filesystem-size" in result.stderr
    assert run(tmp_path / "missing.yaml", "list").returncode == 2


def test_the_readme_demo_command_runs_the_whole_flow_and_leaves_nothing_behind():
    repo = Path(__file__).resolve().parents[2]

    result = subprocess.run(
        [repo / "scripts/demo.sh", "--runners", "9", "--json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    roles = summary["runners"]
    counts = summary["reconcile"]
    assert counts["quarantined"] == list(roles.values()).count("hostile") == 1
    assert counts["skipped"] == list(roles.values()).count("running")
    assert counts["harvested"] == sum(r in ("finished", "released") for r in roles.values())
    assert counts["errors"] == 0
    assert summary["job_time"]
    # Only what the demo made (its temporary directory): other programs may mount meanwhile.
    assert "runner-fs-demo-" not in Path("/proc/self/mountinfo").read_text()
    assert not [p for p in host.loop_backing_files() if "runner-fs-demo-" in p]
