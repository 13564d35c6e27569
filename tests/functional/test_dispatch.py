"""The charm run as Juju runs it: `dispatch`, hook tools on PATH, the real paths of a machine.

The hooks run in a private mount namespace where the charm's directories are empty tmpfs and
`systemctl` only records its arguments, so the charm writes its real paths without touching
this machine. The charm directory is laid out as `charmcraft pack` makes it (metadata, config
and actions split out of charmcraft.yaml; `src/`, `templates/`, `dispatch`).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from . import juju_tools

REPO = Path(__file__).resolve().parents[2]
UNIT = "runner-fs/0"
CONFIG = {"filesystem-size": "1M", "reconcile-interval": 5, "max-runner-age": 24.0,
          "retention-period": 2400.0, "flavor": "small", "storage-backend": "sqlite",
          "filesystem-owner": "nobody:nogroup", "rates": "small=0.008"}  # fmt: skip
REPORT_PARAMS = {
    "groupby": "repository,flavor",
    "metric-types": "runner.job",
    "begin": "",
    "end": "",
}
MASKED = ("/etc/runner-fs", "/etc/systemd/system", "/usr/local/bin", "/var/lib/runner-fs")


def _charm_dir(tmp_path: Path) -> Path:
    charm = tmp_path / "charm"
    charm.mkdir()
    project = yaml.safe_load((REPO / "charmcraft.yaml").read_text())
    meta = {k: v for k, v in project.items() if k not in ("config", "actions", "parts")}
    (charm / "metadata.yaml").write_text(yaml.safe_dump(meta))
    (charm / "config.yaml").write_text(yaml.safe_dump(project["config"]))
    (charm / "actions.yaml").write_text(yaml.safe_dump(project["actions"]))
    for name in ("src", "templates"):
        shutil.copytree(REPO / name, charm / name, ignore=shutil.ignore_patterns("runner_fs"))
    dispatch = charm / "dispatch"
    dispatch.write_text(
        "#!/bin/sh\n"
        f'JUJU_DISPATCH_PATH="${{JUJU_DISPATCH_PATH:-$0}}" PYTHONPATH=lib:venv:src'
        f" exec {sys.executable} ./src/charm.py\n"
    )
    dispatch.chmod(0o755)
    return charm


def _tools(tmp_path: Path) -> Path:
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in (*juju_tools.TOOLS, "systemctl"):
        link = tools / tool
        link.write_text(f'#!/bin/sh\nexec {sys.executable} {juju_tools.__file__} {tool} "$@"\n')
        link.chmod(0o755)
    return tools


def _script(charm: Path, tools: Path, out: Path) -> str:
    """Return the shell steps: install, start, a runner, the timer's event, actions, stop."""
    state = out / "state.json"

    def set_state(params: dict | None = None) -> str:
        return (
            f"echo {shlex.quote(json.dumps({'config': CONFIG, 'params': params or {}}))} > {state}"
        )

    def action(name: str, params: dict | None = None) -> str:
        return (
            f"{set_state(params)}\n"
            f"JUJU_ACTION_NAME={name} JUJU_ACTION_UUID=1 JUJU_DISPATCH_PATH=actions/{name}"
            f" ./dispatch"
        )

    pre = (
        '{"timestamp": %s, "workflow": "ci", "workflow_run_id": "1", "repository": "acme/web",'
        ' "event": "push"}'
    )
    post = '{"timestamp": %s, "status": "normal", "status_info": null}'
    finished_job = textwrap.dedent(f"""\
        now=$(date +%s)
        echo $((now - 600)) > "$path/runner-installation-start.timestamp"
        echo $((now - 590)) > "$path/runner-installed.timestamp"
        printf '{pre}' $((now - 500)) > "$path/pre-job-metrics.json"
        printf '{post}' $((now - 140)) > "$path/post-job-metrics.json"
    """)
    return "\n".join([
        "set -eux",
        *(f"mount -t tmpfs tmpfs {d}" for d in MASKED),
        f"mount --bind {tools}/systemctl /usr/bin/systemctl",
        f"cd {charm}",
        set_state(),
        "JUJU_DISPATCH_PATH=hooks/install ./dispatch",
        "JUJU_DISPATCH_PATH=hooks/config-changed ./dispatch",
        "JUJU_DISPATCH_PATH=hooks/start ./dispatch",
        f"cp /etc/runner-fs/config.yaml /etc/systemd/system/runner-fs-reconcile.timer {out}/",
        "path=$(/usr/local/bin/runner-fs create runner-1 --label flavor=small)",
        finished_job,
        f"/usr/local/bin/runner-fs list --json > {out}/wrapper-list.json",
        "JUJU_DISPATCH_PATH=hooks/reconcile ./dispatch",
        action("list"),
        action("reconcile"),
        action("quarantine", {"runner": "ghost"}),
        action("report", REPORT_PARAMS),
        "JUJU_DISPATCH_PATH=hooks/stop ./dispatch",
        f"ls /usr/local/bin > {out}/bin-after-stop",
    ])  # fmt: skip


@pytest.fixture(scope="module")
def transcript(tmp_path_factory):
    """Run the hooks in a private mount namespace; return the hook tool calls and files."""
    tmp_path = tmp_path_factory.mktemp("dispatch")
    charm, tools, out = _charm_dir(tmp_path), _tools(tmp_path), tmp_path / "out"
    out.mkdir()
    env = {
        "PATH": f"{tools}:/usr/sbin:/usr/bin:/sbin:/bin",
        "JUJU_UNIT_NAME": UNIT,
        "JUJU_MODEL_NAME": "test",
        "JUJU_VERSION": "3.6.4",
        "JUJU_CHARM_DIR": str(charm),
        "FAKE_JUJU_STATE": str(out / "state.json"),
        "FAKE_JUJU_LOG": str(out / "calls.jsonl"),
    }
    made = [Path(d) for d in MASKED if not Path(d).exists()]  # mount points, removed after
    for directory in made:
        directory.mkdir(parents=True)
    try:
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
        result = subprocess.run(
            [*command, _script(charm, tools, out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        for directory in made:
            directory.rmdir()
    assert result.returncode == 0, result.stderr[-3000:]
    calls = [json.loads(line) for line in (out / "calls.jsonl").read_text().splitlines()]
    return calls, out


def _results(calls: list, tool: str) -> list[list[str]]:
    return [args for name, args in calls if name == tool]


def test_dispatch_renders_the_machine_files(transcript):
    calls, out = transcript

    settings = json.loads((out / "config.yaml").read_text().split("\n", 1)[1])
    assert settings["unit"] == UNIT
    assert settings["base-dir"] == "/var/lib/runner-fs"
    assert "OnUnitInactiveSec=5min" in (out / "runner-fs-reconcile.timer").read_text()
    assert ["daemon-reload"] in _results(calls, "systemctl")
    assert ["disable", "--now", "runner-fs-reconcile.timer"] in _results(calls, "systemctl")
    assert "runner-fs" not in (out / "bin-after-stop").read_text().split()


def test_the_wrapper_runs_the_command_line_in_the_charm_environment(transcript):
    _, out = transcript

    listed = json.loads((out / "wrapper-list.json").read_text())

    assert [(row["runner"], row["state"]) for row in listed] == [("runner-1", "finished")]


def test_the_timer_event_runs_a_pass_and_status_says_so(transcript):
    calls, _ = transcript

    statuses = [args[-1] for args in _results(calls, "status-set")]

    assert statuses[0] == "filesystems: 0, quarantined: 0, last reconcile: not yet"
    assert any(
        s.startswith("filesystems: 0, quarantined: 0, last reconcile: 20") for s in statuses
    )


def test_actions_set_results_or_fail_through_hook_tools(transcript):
    calls, _ = transcript

    results = [dict(arg.split("=", 1) for arg in args) for args in _results(calls, "action-set")]
    assert {"filesystems": "[]", "counts": "{}"} in results
    assert {"harvested": "0", "quarantined": "0", "skipped": "0", "datapoints": "0",
            "errors": "0"} in results  # fmt: skip
    report = next(r for r in results if "results" in r)
    rows = json.loads(report["results"])
    assert [(r["repository"], r["flavor"], r["qty"]) for r in rows] == [
        ("acme/web", "small", 360.0)
    ]
    failures = [args[-1] for args in _results(calls, "action-fail")]
    assert failures == ["runner ghost has no filesystem"]
