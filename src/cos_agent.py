"""The provider side of the `cos_agent` interface, written to its published data format.

A collector subordinate on the machine (opentelemetry-collector, grafana-agent) reads one key,
`config`, from each related unit's databag: JSON with `metrics_scrape_jobs` (Prometheus scrape
configs), `metrics_alert_rules` (Prometheus rule groups), `log_alert_rules`, `dashboards`
(each dashboard's JSON, LZMA-compressed and base64-encoded), `log_slots` and `subordinate`.
The collector adds the Juju topology labels itself.
"""

from __future__ import annotations

import base64
import json
import lzma
from pathlib import Path

import yaml

RELATION = "cos-agent"
KEY = "config"
HERE = Path(__file__).resolve().parent
ALERT_RULES = HERE / "prometheus_alert_rules"
DASHBOARDS = HERE / "grafana_dashboards"


def encode_dashboard(text: str) -> str:
    """Return a dashboard as the interface carries it."""
    return base64.b64encode(lzma.compress(text.encode("utf-8"))).decode("ascii")


def unit_databag(port: int, app: str) -> dict[str, str]:
    """Return what this unit publishes: its scrape job, the alert rules and the dashboards."""
    groups = []
    for path in sorted(ALERT_RULES.glob("*.rules")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            groups.append({**group, "name": f"{app}_{group['name']}"})
    data = {
        "metrics_scrape_jobs": [
            {
                "job_name": f"{app}_metrics",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"localhost:{port}"]}],
            }
        ],
        "metrics_alert_rules": {"groups": groups},
        "log_alert_rules": {},
        "dashboards": [
            encode_dashboard(path.read_text(encoding="utf-8"))
            for path in sorted(DASHBOARDS.glob("*.json"))
        ],
        "log_slots": [],
        "subordinate": True,
    }
    return {KEY: json.dumps(data, sort_keys=True)}
