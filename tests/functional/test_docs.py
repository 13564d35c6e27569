"""Every command in README.md and docs/ runs, as written, in the order each page gives.

Each page's `sh` blocks, and the `$ ` lines of its `console` blocks, run in bash from the
repository on this machine (root, real loop devices) with a host config of their own. Stand-ins,
on PATH: `juju` (docs_juju.py: each command judged by the charm's contract, `juju ssh` runs its
command here), `sudo` (already root), `charmcraft` (only `pack`, which the packed-charm tests
run through scripts/pack.sh) and `tox` (the environment must exist in tox.ini). Benchmarks run
at a smoke size; `scripts/test.sh` is what runs this test, so it is the one line not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner_fs.shared_fs import purge

from .conftest import write_host_config

REPO = Path(__file__).resolve().parents[2]
NOT_RUN = {"scripts/test.sh": "it runs this test"}
PLACEHOLDER = re.compile(r"<([a-z-]+)>")  # `<provisioner>`: the stand-in juju knows the name
SMOKE = [  # benchmark sizes cut to a smoke run
    (re.compile(r"--n( \d+)+"), "--n 100"),
    (re.compile(r"(bench_storage\.py(?!.*--push-n))"), r"\1 --push-n 2000"),
]


def commands(page: Path) -> list[str]:
    """Return the shell text of a page's `sh` blocks and `console` commands, in order.

    Every block has a language (a unit test holds the docs to it): shell is `sh`.
    """
    found = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(), re.M | re.S):
        if lang == "sh":
            found.append(body)
        elif lang == "console":
            found += [line[2:] for line in body.splitlines() if line.startswith("$ ")]
    return found


PAGES = [
    page
    for page in [
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
        *sorted((REPO / "docs").rglob("*.md")),
    ]
    if commands(page)
]


def _as_run(block: str) -> str:
    lines = []
    for written in block.splitlines():
        command = written.split("#")[0].strip()
        line = f": {command} is not run: {NOT_RUN[command]}" if command in NOT_RUN else written
        line = PLACEHOLDER.sub(r"\1", line)
        for pattern, replacement in SMOKE:
            line = pattern.sub(replacement, line)
        lines.append(line)
    return "\n".join(lines)


def _stand_ins(bin_dir: Path) -> None:
    bin_dir.mkdir()
    scripts = {
        "runner-fs": f'exec {sys.executable} -m runner_fs.cli "$@"',
        "juju": f'exec {sys.executable} {REPO / "tests/functional/docs_juju.py"} "$@"',
        "sudo": 'exec "$@"',
        "charmcraft": '[ "$*" = pack ] || { echo "stand-in charmcraft: only pack" >&2; exit 1; }',
        "tox": f"""{sys.executable} - "$@" <<'PY'
import configparser, sys
envs = sys.argv[sys.argv.index("-e") + 1].split(",")
tox = configparser.ConfigParser(interpolation=None)
tox.read("{REPO / "tox.ini"}")
missing = [env for env in envs if f"testenv:{{env}}" not in tox]
sys.exit(f"tox.ini has no environment {{missing}}" if missing else 0)
PY""",
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_command_on_the_page_runs_with_juju_judged_by_the_charms_contract(page, tmp_path):
    blocks = commands(page)
    _stand_ins(tmp_path / "bin")
    base = tmp_path / "base"
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "RUNNER_FS_CONFIG": str(write_host_config(tmp_path / "config.yaml", base)),
        "PYTHONPATH": os.pathsep.join(str(REPO / part) for part in ("src", "lib", "")),
    }
    try:
        for block in blocks:
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", _as_run(block)],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False,
            )  # fmt: skip
            assert result.returncode == 0, f"{block}\n{result.stdout}\n{result.stderr}"
    finally:
        purge(base)


def test_the_juju_stand_in_refuses_what_the_charm_would():
    refused = [
        ["config", "runner-fs", "no-such-option=1"],
        ["config", "runner-fs", "reconcile-interval=0"],
        ["config", "runner-fs", "filesystem-size=10T"],
        ["run", "runner-fs/0", "quarantine"],  # runner= is required
        ["run", "runner-fs/0", "list", "verbose=true"],
        ["integrate", "runner-fs:no-such-endpoint", "postgresql"],
        ["deploy", "./runner-fs_ubuntu@20.04-amd64.charm"],
    ]
    for argv in refused:
        result = subprocess.run(
            [sys.executable, REPO / "tests/functional/docs_juju.py", *argv],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 1, argv
        assert result.stderr.startswith(f"juju {' '.join(argv)}: "), result.stderr
