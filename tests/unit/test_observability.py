"""What the charm hands to COS: alert rules (promtool's own tests) and the Grafana dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from cosl import JujuTopology

import cos_agent
from runner_fs.config import HostConfig
from runner_fs.exporter import HostCollector
from runner_fs.reconcile import ReconcileResult, record_reconcile

REPO = Path(__file__).resolve().parents[2]
RULES = sorted((REPO / "src/prometheus_alert_rules").glob("*.rules"))
DASHBOARDS = sorted((REPO / "src/grafana_dashboards").glob("*.json"))
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$juju_model_uuid": ".*", "$juju_model": ".*",
                     "$juju_application": ".*", "$juju_unit": ".*"}  # fmt: skip


TOPOLOGY = JujuTopology(model="test", model_uuid="20ce8299-3634-4bef-8bd8-5ace6c8816b4",
                        application="runner-fs", charm_name="runner-fs")  # fmt: skip
RULE_LABELS = {"juju_model": "test", "juju_model_uuid": TOPOLOGY.model_uuid,
               "juju_application": "runner-fs", "juju_charm": "runner-fs"}  # fmt: skip


def _as_cos_gets_them(directory: Path) -> list[Path]:
    """Write the rules as the charm hands them to COS (for the test topology) and the tests.

    Each expected alert gets the rule labels cosl adds. The tests are read with every scalar
    a string, as promtool reads them (`0x30` is thirty zeros, not YAML's 48).
    """
    rendered = cos_agent.alert_rules(TOPOLOGY)
    (directory / "rendered.rules").write_text(yaml.safe_dump(rendered))
    tests = []
    for source in sorted((REPO / "tests/prometheus").glob("*_test.yaml")):
        suite = yaml.load(source.read_text(), Loader=yaml.BaseLoader)  # noqa: S506 (strings only)
        for test in suite["tests"]:
            for case in test.get("alert_rule_test", []):
                for alert in case["exp_alerts"]:
                    alert["exp_labels"] |= RULE_LABELS
        tests.append(directory / source.name)
        tests[-1].write_text(yaml.safe_dump(suite))
    return tests


def test_every_rule_cos_receives_carries_the_charms_topology_and_names_the_unit(tmp_path):
    _as_cos_gets_them(tmp_path)
    groups = yaml.safe_load((tmp_path / "rendered.rules").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]

    assert all(rule["labels"].items() >= RULE_LABELS.items() for rule in rules)
    assert all("{{ $labels.juju_unit }}" in rule["annotations"]["summary"] for rule in rules)
    (down,) = (rule for rule in rules if rule["alert"] == "RunnerFsExporterDown")
    assert 'juju_application="runner-fs"' in down["expr"]
    assert 'juju_model_uuid="20ce8299-3634-4bef-8bd8-5ace6c8816b4"' in down["expr"]


def _expressions() -> list[str]:
    exprs = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return exprs


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
