#!/usr/bin/env python3
"""Draw the Grafana dashboard's panels from a real Prometheus run, into docs/images/.

Grafana is not packaged where this project is developed, so each panel's PromQL (from
src/grafana_dashboards/runner_fs.json) is sent to a real Prometheus' query API and the answers
are plotted with matplotlib. The run is real: runner filesystems on loop devices in a temporary
directory, harvest passes into SQLite, `runner-fs serve-metrics`, and Debian's `prometheus`
on 127.0.0.1 scraping it every second (never the system service).

Run as root:  .venv/bin/pip install matplotlib && .venv/bin/python scripts/dashboard_pictures.py
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
import yaml  # noqa: E402

from runner_fs.metrics import runner as files  # noqa: E402
from runner_fs.reconcile import Reconciler  # noqa: E402
from runner_fs.shared_fs import SharedFilesystemManager, purge  # noqa: E402
from runner_fs.storage import get_storage  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs/images"
ROUNDS = 12  # one harvest pass each, a few seconds apart
VARIABLES = {"$__rate_interval": "30s", "$juju_model_uuid": ".*", "$juju_model": ".*",
             "$juju_application": ".*", "$juju_unit": ".*", "[1h]": "[30s]"}  # fmt: skip


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_runners(manager: SharedFilesystemManager, round_: int, rng: random.Random) -> None:
    """Start runners of two flavors whose jobs finished (one in ten hostile)."""
    now = time.time()
    for index in range(8):
        flavor = "large" if index % 3 == 0 else "small"
        path = manager.create(f"r{round_}-{index}", flavor=flavor).path
        install = rng.uniform(20, 90) if flavor == "small" else rng.uniform(60, 240)
        idle = rng.uniform(5, 120)
        job = rng.lognormvariate(6, 0.8) * (2 if flavor == "large" else 1)
        start = now - install - idle - job
        (path / files.INSTALLATION_START_FILE).write_text(f"{start}")
        (path / files.INSTALLED_FILE).write_text(f"{start + install}")
        pre = {"timestamp": start + install + idle, "workflow": "ci", "event": "push",
               "workflow_run_id": str(index), "repository": "acme/web"}  # fmt: skip
        (path / files.PRE_JOB_FILE).write_text(json.dumps(pre))
        status = "normal" if rng.random() > 0.1 else "abnormal"
        post = {"timestamp": now, "status": status, "status_info": None}
        (path / files.POST_JOB_FILE).write_text(json.dumps(post))
        if rng.random() < 0.1:
            (path / files.PRE_JOB_FILE).write_text("{not json")


def query_range(port: int, expr: str, start: float, end: float) -> list[dict]:
    """Return a range query's series."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 1})
    url = f"http://127.0.0.1:{port}/api/v1/query_range?{params}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    """Fill a Grafana legend template such as `p50 {{flavor}}`."""
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def main() -> None:
    """Run harvests under a real Prometheus, then plot every panel."""
    rng = random.Random(7)
    work = Path(tempfile.mkdtemp(prefix="runner-fs-pictures-"))
    config = work / "config.yaml"
    config.write_text(f"base-dir: {work / 'base'}\nfilesystem-owner: root\nunit: host-a\n")
    manager = SharedFilesystemManager(work / "base", size="1M", owner="root", flavor="small")
    exporter_port, prometheus_port = free_port(), free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "runner_fs.cli", "--config", str(config), "serve-metrics",
         "--port", str(exporter_port), "--interval", "0.1"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert exporter.stderr is not None
    exporter.stderr.readline()  # "serving metrics on ..."
    prometheus_config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "runner-fs", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"],
                                                         "labels": {"juju_unit": "runner-fs/0"}}],
        }],
    }  # fmt: skip
    (work / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert prometheus.stderr is not None
    for line in prometheus.stderr:
        if "Server is ready to receive web requests" in line:
            break
    storage = get_storage("sqlite", path=work / "base/metrics.db")
    start = time.time()
    try:
        for round_ in range(ROUNDS):
            write_runners(manager, round_, rng)
            Reconciler(manager, storage, "host-a").run()
            print(f"pass {round_ + 1}/{ROUNDS}", file=sys.stderr)
            time.sleep(3)  # let Prometheus scrape each pass's counts a few times
        end = time.time()
        draw(prometheus_port, start, end)
    finally:
        prometheus.terminate()
        exporter.terminate()
        prometheus.wait()
        exporter.wait()
        storage.close()
        purge(work / "base")


def draw(port: int, start: float, end: float) -> None:
    """Plot every panel of the dashboard from Prometheus' answers."""
    dashboard = json.loads((REPO / "src/grafana_dashboards/runner_fs.json").read_text())
    panels = dashboard["panels"]
    figure, axes = plt.subplots(len(panels) // 2, 2, figsize=(14, 3.2 * len(panels) // 2))
    for panel, axis in zip(panels, axes.flat, strict=True):
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            for series in query_range(port, expr, start, end):
                times = [float(t) - start for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                axis.plot(times, values, label=legend(target["legendFormat"], series["metric"]))
        axis.set_title(panel["title"], fontsize=10)
        axis.set_xlabel("seconds into the run", fontsize=8)
        axis.set_ylabel(panel["fieldConfig"]["defaults"]["unit"], fontsize=8)
        axis.tick_params(labelsize=7)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.suptitle("runner-fs dashboard, drawn from a real Prometheus run", fontsize=12)
    figure.tight_layout()
    OUT.mkdir(exist_ok=True)
    figure.savefig(OUT / "dashboard.png", dpi=80)
    print(f"wrote {OUT / 'dashboard.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
