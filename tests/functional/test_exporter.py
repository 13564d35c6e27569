"""`runner-fs serve-metrics` on real filesystems, and a real Prometheus scraping it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from cosl import JujuTopology
from prometheus_client.parser import text_string_to_metric_families

import runner_fs
from cos_agent import alert_rules
from runner_fs import host
from runner_fs.metrics import runner as files
from runner_fs.reconcile import Reconciler
from runner_fs.storage import get_storage

from .conftest import write_host_config
from .test_reconcile import UNIT, write_runner

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def config(tmp_path, manager) -> Path:
    return write_host_config(tmp_path / "config.yaml", manager.base_dir, UNIT)


class Exporter:
    """A `runner-fs serve-metrics` process, ready once it says where it serves."""

    def __init__(self, config: Path, interval: float = 5) -> None:
        """Start it and wait for its line on stderr."""
        self.port = _free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runner_fs.cli", "--config", str(config), "serve-metrics",
             "--port", str(self.port), "--interval", str(interval)],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        assert line.startswith("serving metrics on http://127.0.0.1:"), line

    def scrape(self) -> dict[tuple[str, tuple], float]:
        """Return every sample by name and sorted labels."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
            text = r.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def stop(self) -> None:
        """Stop it."""
        self.process.terminate()
        self.process.communicate(timeout=30)


@pytest.fixture
def harvested(manager, tmp_path) -> Reconciler:
    """Three finished runners (jobs of 100, 200 and 4000 s), one hostile, one running."""
    for name, job in (("a", 100), ("b", 200), ("c", 4000)):
        write_runner(manager, name, job=job)
    write_runner(manager, "evil", job=50)
    target = manager.mount_point("evil") / files.POST_JOB_FILE
    target.unlink()
    target.symlink_to("/etc/shadow")
    write_runner(manager, "busy", job=None)
    reconciler = Reconciler(manager, get_storage("sqlite", path=tmp_path / "metrics.db"), UNIT)
    result = reconciler.run()
    assert (result.harvested, result.quarantined, result.skipped) == (3, 1, 1)
    return reconciler


def _key(name: str, **labels: str) -> tuple[str, tuple]:
    return name, tuple(sorted(labels.items()))


def _expected() -> dict[tuple[str, tuple], float]:
    job = {"flavor": "small", "status": "normal"}
    return {
        _key("runner_fs_runners_harvested_total"): 3,
        _key("runner_fs_runners_quarantined_total"): 1,
        _key("runner_fs_datapoints_pushed_total"): 9,
        _key("runner_fs_reconcile_errors_total"): 0,
        _key("runner_fs_job_duration_seconds_count", **job): 3,
        _key("runner_fs_job_duration_seconds_sum", **job): 4300,
        _key("runner_fs_job_duration_seconds_bucket", **job, le="120.0"): 1,
        _key("runner_fs_job_duration_seconds_bucket", **job, le="3600.0"): 2,
        _key("runner_fs_job_duration_seconds_bucket", **job, le="+Inf"): 3,
        _key("runner_fs_installation_duration_seconds_count", flavor="small"): 3,
        _key("runner_fs_idle_duration_seconds_sum", flavor="small"): 60,
        _key("runner_fs_filesystems", state="running"): 1,
        _key("runner_fs_filesystems", state="finished"): 0,
        _key("runner_fs_quarantine_archives"): 1,
        _key("runner_fs_loop_devices_in_use"): 1,
        _key("runner_fs_storage_up"): 1,
        _key("runner_fs_build_info", version=runner_fs.__version__): 1,  # no charm build set
    }


def test_counters_and_histograms_equal_the_harvest_and_survive_a_restart(config, harvested):
    first = Exporter(config)
    before = first.scrape()
    first.stop()
    second = Exporter(config)
    after = second.scrape()
    second.stop()

    for key, value in _expected().items():
        assert before[key] == value, key
        assert after[key] == value, key
    assert before[("runner_fs_quarantine_bytes", ())] > 0
    assert before[("runner_fs_free_bytes", ())] > 0


def test_a_scrape_never_mounts_anything(config, manager, harvested):
    manager.unmount_all()  # as after a reboot, before `start` mounts them again
    exporter = Exporter(config)

    samples = exporter.scrape()
    exporter.stop()

    assert samples[("runner_fs_filesystems", (("state", "running"),))] == 1
    assert not host.mounts_under(manager.mounts_dir)


def test_storage_down_is_exported_and_the_rest_still_is(config, tmp_path, harvested):
    (tmp_path / "metrics.db").unlink()
    (tmp_path / "metrics.db").mkdir()  # the file cannot be opened any more
    exporter = Exporter(config)

    samples = exporter.scrape()
    exporter.stop()

    assert samples[("runner_fs_storage_up", ())] == 0
    assert samples[("runner_fs_filesystems", (("state", "running"),))] == 1


# -- a real Prometheus ------------------------------------------------------------------------


class Prometheus:
    """Debian's prometheus on 127.0.0.1 (never the system service), with the charm's rules.

    The rules are those the charm hands to COS, for a test topology.
    """

    def __init__(self, tmp_path: Path, target_port: int) -> None:
        """Start it, scraping and evaluating every second; wait until it is ready."""
        self.port = _free_port()
        topology = JujuTopology("test", "20ce8299-3634-4bef-8bd8-5ace6c8816b4", "runner-fs")
        (tmp_path / "runner_fs.rules").write_text(yaml.safe_dump(alert_rules(topology)))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "runner_fs.rules")],
            "scrape_configs": [{"job_name": "runner-fs",
                                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }  # fmt: skip
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stderr is not None
        for line in self.process.stderr:  # the server says when it is ready
            if "Server is ready to receive web requests" in line:
                break
        else:
            pytest.fail("prometheus ended before it was ready")
        # Keep reading what it logs, so a full pipe never blocks it.
        self.drain = threading.Thread(target=self.process.stderr.read, daemon=True)
        self.drain.start()

    def api(self, path: str) -> dict:
        """GET an API path and return its `data`."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())["data"]

    def wait_for(self, what: str, found, timeout: float = 120) -> object:
        """Poll the API until `found()` returns something, each scrape a second apart."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = found()
            if result:
                return result
            time.sleep(1)  # Prometheus' own scrape and evaluation interval
        pytest.fail(f"prometheus never showed {what}")

    def value(self, query: str) -> float | None:
        """Return the single value of an instant query, or None."""
        result = self.api(f"query?query={urllib.request.quote(query)}")["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        """Stop it, and close its pipe once everything it wrote was read."""
        self.process.terminate()
        self.process.wait(timeout=60)
        self.drain.join(timeout=60)
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture
def prometheus_binary() -> None:
    if subprocess.run(["which", "prometheus"], capture_output=True, check=False).returncode:
        pytest.fail("no prometheus here: apt-get install prometheus")


def test_a_real_prometheus_sees_the_series_and_the_stale_harvest_alert(
    prometheus_binary, config, harvested, tmp_path
):
    exporter = Exporter(config, interval=0.02)  # passes every 1.2 s: stale after 3.6 s
    try:
        server = Prometheus(tmp_path, exporter.port)
    except BaseException:
        exporter.stop()
        raise
    try:
        harvested_total = server.wait_for(
            "the harvested counter", lambda: server.value("runner_fs_runners_harvested_total")
        )
        job_p50 = server.value(
            "histogram_quantile(0.5, sum by (le) (runner_fs_job_duration_seconds_bucket))"
        )
        quarantined = server.value("runner_fs_runners_quarantined_total")
        running = server.value('runner_fs_filesystems{state="running"}')

        def stale_alert() -> list:
            alerts = server.api("alerts")["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "RunnerFsHarvestStale"
                    and a["state"] == "firing"]  # fmt: skip

        fired = server.wait_for("the stale-harvest alert firing", stale_alert)
    finally:
        server.stop()
        exporter.stop()

    assert (harvested_total, quarantined, running) == (3, 1, 1)
    assert 120 <= job_p50 <= 300  # the middle job took 200 s: its bucket is (120, 300]
    assert fired[0]["labels"]["severity"] == "critical"
