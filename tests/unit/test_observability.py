"""What the charm hands to COS: alert rules (promtool's own tests) and the Grafana dashboard."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from runner_fs.config import HostConfig
from runner_fs.exporter import HostCollector
from runner_fs.reconcile import ReconcileResult, record_reconcile

REPO = Path(__file__).resolve().parents[2]
RULES = sorted((REPO / "src/prometheus_alert_rules").glob("*.rules"))
DASHBOARDS = sorted((REPO / "src/grafana_dashboards").glob("*.json"))
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$juju_unit": ".*"}


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


def test_the_shipped_rules_pass_promtool_check(promtool):
    result = _promtool(promtool, "check", "rules", *RULES)

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_when_it_should_in_promtools_unit_tests(promtool):
    tests = sorted((REPO / "tests/prometheus").glob("*_test.yaml"))
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


def _expressions() -> list[str]:
    exprs = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return exprs


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


def test_the_dashboard_shows_what_the_issue_asks(tmp_path):
    titles = [
        panel["title"] for path in DASHBOARDS for panel in json.loads(path.read_text())["panels"]
    ]

    wanted_titles = (
        "Job time by flavor",
        "Idle time by flavor",
        "Installation time by flavor",
        "harvested and quarantined",
        "errors",
        "Filesystems by state",
        "Free space",
    )
    for wanted in wanted_titles:
        assert any(wanted.lower() in title.lower() for title in titles), wanted


def test_rules_and_dashboard_use_only_metrics_the_exporter_serves(tmp_path):
    (tmp_path / "base").mkdir()
    record_reconcile(tmp_path / "base", ReconcileResult())  # a successful pass
    config = HostConfig.model_validate({"base-dir": tmp_path / "base", "filesystem-owner": "root"})
    served = set()
    for family in HostCollector(config, interval=5).collect():
        served |= {family.name, f"{family.name}_total", f"{family.name}_bucket"}
    rules_text = " ".join(path.read_text() for path in RULES)

    used = set(re.findall(r"runner_fs_[a-z_]+", " ".join(_expressions()) + rules_text))

    assert used <= served, used - served
