"""The provider side of the `cos_agent` interface, built as the interface's own provider does.

A collector subordinate on the machine (opentelemetry-collector, grafana-agent) reads one key,
`config`, from each related unit's databag: JSON with `metrics_scrape_jobs` (Prometheus scrape
configs), `metrics_alert_rules` (Prometheus rule groups), `log_alert_rules`, `dashboards`
(each dashboard's JSON, LZMA-compressed and base64-encoded), `log_slots` and `subordinate`
(`CosAgentProviderUnitData` in the cos_agent library). The alert rules go through cosl, as the
library's provider sends them: every rule labelled with the charm's Juju topology
(`juju_model`, `juju_model_uuid`, `juju_application`, `juju_charm`), and `%%juju_topology%%`
in an expression filled in with its label matchers here (cosl leaves that to `cos-tool`, a
binary a collector need not have).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import ops
import yaml

if TYPE_CHECKING:
    import cosl

RELATION = "cos-agent"
KEY = "config"
HERE = Path(__file__).resolve().parent
ALERT_RULES = HERE / "prometheus_alert_rules"
DASHBOARDS = HERE / "grafana_dashboards"


def encode_dashboard(text: str) -> str:
    """Return a dashboard as the interface carries it."""
    import cosl  # noqa: PLC0415 (only for the cos-agent relation: every other hook is faster)

    return cosl.LZMABase64.compress(text)


def alert_rules(topology: cosl.JujuTopology) -> dict:
    """Return the alert rules as this charm hands them to COS, for `topology`."""
    import cosl  # noqa: PLC0415 (see encode_dashboard)

    rules = cosl.AlertRules(query_type="promql", topology=topology)
    for path in sorted(ALERT_RULES.glob("*.rules")):
        text = path.read_text(encoding="utf-8")
        text = text.replace("%%juju_topology%%", topology.alert_expression_str)
        rules.add(
            yaml.safe_load(text), group_name=path.stem, group_name_prefix=topology.identifier
        )
    return rules.as_dict()


def unit_databag(port: int, charm: ops.CharmBase) -> dict[str, str]:
    """Return what this unit publishes: its scrape job, the alert rules and the dashboards."""
    import cosl  # noqa: PLC0415 (see encode_dashboard)

    data = {
        "metrics_scrape_jobs": [
            {
                "job_name": f"{charm.app.name}_metrics",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"localhost:{port}"]}],
            }
        ],
        "metrics_alert_rules": alert_rules(cosl.JujuTopology.from_charm(charm)),
        "log_alert_rules": {},
        "dashboards": [
            encode_dashboard(path.read_text(encoding="utf-8"))
            for path in sorted(DASHBOARDS.glob("*.json"))
        ],
        "log_slots": [],
        "subordinate": True,
    }
    return {KEY: json.dumps(data, sort_keys=True)}
