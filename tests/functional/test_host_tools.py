"""What the charm renders, judged by the host tools that read it.

logrotate, systemd-analyze, and promtool (the Prometheus that COS runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml
from ops import testing

from charm_state import CharmConfig, CharmState
from machine import SYSTEMD_DIR, TIMER, Machine
from tests.unit.test_charm import VALID, ctx, root  # noqa: F401 (fixtures)
from tests.unit.test_observability import (
    GRAFANA_VARIABLES,
    RULES,
    _as_cos_gets_them,
    _expressions,
)

# ruff: noqa: F811 (the fixtures above are arguments below)


def test_events_are_logged_as_json_under_var_log_and_rotated(ctx, root):
    ctx.run(ctx.on.install(), testing.State(config=VALID))

    settings = json.loads((root / "etc/runner-fs/config.yaml").read_text().split("\n", 1)[1])
    rotate = (root / "etc/logrotate.d/runner-fs").read_text()

    assert settings["event-log"] == f"{root}/var/log/runner-fs/runner-fs.log"
    assert (
        rotate.startswith("# Rendered by the runner-fs charm") and "create 0640 root adm" in rotate
    )
    assert f"{root}/var/log/runner-fs/runner-fs.log {{" in rotate
    logrotate = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin")
    if logrotate is None:
        assert os.environ.get("RUNNER_FS_REQUIRE_FUNCTIONAL") != "1", "logrotate is missing"
        pytest.skip("logrotate is not installed")
    checked = subprocess.run(  # --debug reads and checks the file, rotates nothing
        [logrotate, "--debug", "--state", str(root / "logrotate.state"),
         str(root / "etc/logrotate.d/runner-fs")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "error" not in checked.stderr.lower(), checked.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_the_rendered_timer_passes_systemd_analyze_verify(tmp_path, monkeypatch):
    systemctl = tmp_path / "usr/bin/systemctl"
    systemctl.parent.mkdir(parents=True)
    systemctl.write_text("#!/bin/sh\n")
    systemctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{systemctl.parent}:{os.environ['PATH']}")
    machine = Machine(tmp_path)
    config = CharmConfig(filesystem_owner="root")
    state = CharmState.from_config(config, "runner-fs/0", machine.base_dir)
    machine.converge(state, "runner-fs/0", tmp_path / "charm")

    units = tmp_path / SYSTEMD_DIR.relative_to("/")

    result = subprocess.run(  # the services (they run the wrapper) by the packed charm's test
        ["systemd-analyze", "verify", str(units / TIMER)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("RUNNER_FS_REQUIRE_FUNCTIONAL") == "1":
            pytest.fail("promtool is missing: apt-get install prometheus")
        pytest.skip("promtool is missing: apt-get install prometheus")
    return found


def _promtool(promtool: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, check=False)


def test_the_rules_cos_receives_pass_promtool_check(promtool, tmp_path):
    _as_cos_gets_them(tmp_path)

    result = _promtool(promtool, "check", "rules", tmp_path / "rendered.rules")

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_when_it_should_in_promtools_unit_tests(promtool, tmp_path):
    tests = _as_cos_gets_them(tmp_path)
    tested = {
        case["alertname"]
        for test_file in tests
        for test in yaml.safe_load(test_file.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    shipped = {rule["alert"] for path in RULES for g in yaml.safe_load(path.read_text())["groups"]
               for rule in g["rules"]}  # fmt: skip

    result = _promtool(promtool, "test", "rules", *tests)

    assert result.returncode == 0, result.stdout + result.stderr
    assert tested == shipped


def test_every_dashboard_expression_parses(promtool, tmp_path):
    exprs = _expressions()
    for variable, value in GRAFANA_VARIABLES.items():
        exprs = [expr.replace(variable, value) for expr in exprs]
    generated = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{index}", "expr": expr} for index, expr in enumerate(exprs)
    ]}]}  # fmt: skip
    rules = tmp_path / "dashboard.rules"
    rules.write_text(yaml.safe_dump(generated))

    result = _promtool(promtool, "check", "rules", rules)

    assert len(exprs) >= 8
    assert result.returncode == 0, result.stdout + result.stderr
