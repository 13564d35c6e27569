"""The charm as the uv plugin packs it: the project installed from a wheel into a fresh venv.

`runner_fs` then lives only in the venv (not in the charm's `src/`), so this proves the storage
backends are still found through their entry points and the rendered wrapper runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

RENDER = """
import sys
from pathlib import Path
from charm_state import CharmState
from machine import Machine
root, charm = Path(sys.argv[1]), Path(sys.argv[2])
machine = Machine(root)
state = CharmState.from_config({"filesystem-owner": "root"}, "runner-fs/0", machine.base_dir)
machine.converge(state, "runner-fs/0", charm)
"""


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_finds_its_backends_and_runs_the_wrapper(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", REPO],
        check=True,
    )
    env_dir = tmp_path / "charm" / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    wheel = next((tmp_path / "dist").glob("runner_fs-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "-q", wheel], check=True)
    charm_src = tmp_path / "charm" / "src"
    shutil.copytree(REPO / "src", charm_src, ignore=shutil.ignore_patterns("runner_fs"))
    shutil.copytree(REPO / "templates", tmp_path / "charm" / "templates")
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/systemctl").write_text("#!/bin/sh\n")
    (root / "usr/bin/systemctl").chmod(0o755)
    subprocess.run(
        [python, "-c", RENDER, root, tmp_path / "charm"],
        env={"PYTHONPATH": str(charm_src)}, check=True,
    )  # fmt: skip

    result = subprocess.run(
        [root / "usr/local/bin/runner-fs", "report", "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "total": 1,
        "results": [json.loads(result.stdout)["results"][0]],
    }
    assert (root / "var/lib/runner-fs/metrics.db").exists()
    loads = "from runner_fs.storage import backend_class; backend_class('postgresql')"
    subprocess.run([python, "-c", loads], check=True)  # psycopg came with the wheel
