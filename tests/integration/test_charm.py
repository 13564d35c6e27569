"""The packed charm on a real Juju model (jubilant); skipped where there is no `juju`.

Run:  CHARM_PATH=./runner-fs_ubuntu@24.04-amd64.charm tox -e integration
      (SECOND_CHARM_PATH: another build to refresh to; CHARM_BASE: ubuntu@24.04 by default)

runner-fs is a subordinate: it is deployed beside `ubuntu` and has a unit once related. The
upstream workflow (.github/workflows/integration.yaml) runs this on LXD for each base.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

jubilant = pytest.importorskip("jubilant", reason="jubilant is not installed")
pytestmark = pytest.mark.skipif(
    shutil.which("juju") is None or not os.environ.get("CHARM_PATH"),
    reason="needs juju and CHARM_PATH (a packed charm)",
)

APP = "runner-fs"
UNIT = f"{APP}/0"
BASE = os.environ.get("CHARM_BASE", "ubuntu@24.04")
POSTGRESQL_CHANNEL = "16/stable" if BASE == "ubuntu@24.04" else "14/stable"
POST_JOB = """{"timestamp": '$((now-30))', "status": "normal", "status_info": null}"""


@pytest.fixture(scope="module")
def juju():
    with jubilant.temp_model() as model:
        model.deploy("ubuntu", base=BASE)
        model.deploy(os.environ["CHARM_PATH"], APP, config={"filesystem-owner": "root:root"})
        model.integrate(APP, "ubuntu")
        model.wait(jubilant.all_active, timeout=900)
        yield model


def _harvest_one(juju, name: str) -> dict:
    path = juju.exec(f"runner-fs create {name}", unit=UNIT).stdout.strip()
    juju.exec(
        f"now=$(date +%s); echo $((now-60)) > {path}/runner-installed.timestamp; "
        f"echo '{POST_JOB}' > {path}/post-job-metrics.json",
        unit=UNIT,
    )
    return juju.run(UNIT, "reconcile").results


def test_config_change_is_applied(juju):
    juju.config(APP, {"reconcile-interval": 10})
    juju.wait(jubilant.all_active)

    timer = juju.exec("cat /etc/systemd/system/runner-fs-reconcile.timer", unit=UNIT)

    assert "OnUnitInactiveSec=10min" in timer.stdout


def test_a_finished_fake_runner_is_harvested(juju):
    results = _harvest_one(juju, "fake-1")

    assert results["harvested"] == "1"
    listed = juju.run(UNIT, "list")
    assert json.loads(listed.results["filesystems"]) == []


def test_the_timer_service_runs_a_pass_outside_any_hook(juju):
    juju.exec("systemctl start runner-fs-reconcile.service", unit=UNIT)

    record = json.loads(juju.exec("cat /var/lib/runner-fs/last-reconcile.json", unit=UNIT).stdout)
    shown = juju.exec("systemctl show -p ExecMainStatus runner-fs-reconcile.service", unit=UNIT)

    assert record["errors"] == 0
    assert shown.stdout.strip() == "ExecMainStatus=0"


def test_metrics_go_into_charmed_postgresql(juju):
    juju.deploy("postgresql", channel=POSTGRESQL_CHANNEL, base=BASE)
    juju.config(APP, {"storage-backend": "postgresql"})
    juju.integrate(f"{APP}:database", "postgresql:database")
    juju.wait(jubilant.all_active, timeout=1800)

    results = _harvest_one(juju, "fake-2")
    report = juju.run(UNIT, "report", {"groupby": "type"})

    assert results["errors"] == "0"
    assert int(report.results["total"]) >= 1
    assert juju.status().apps[APP].units[UNIT].workload_status.message.endswith("postgresql")


def test_cos_agent_carries_rules_with_this_units_topology(juju):
    juju.deploy("opentelemetry-collector", channel="2/stable", base=BASE)
    juju.integrate("opentelemetry-collector:juju-info", "ubuntu:juju-info")
    juju.integrate(f"{APP}:cos-agent", "opentelemetry-collector:cos-agent")
    juju.wait(jubilant.all_agents_idle, timeout=900)

    data = juju.exec(
        "relation-get -r $(relation-ids cos-agent) config " + UNIT, unit=UNIT
    ).stdout  # our own side, as the collector reads it
    config = json.loads(data)

    assert config["metrics_scrape_jobs"]
    assert config["metrics_alert_rules"]


def test_refresh_to_a_second_build_restarts_the_exporter_on_its_code(juju):
    second = os.environ.get("SECOND_CHARM_PATH")
    if not second:
        pytest.skip("SECOND_CHARM_PATH is not set")
    version = re.search(r'version="([^"]+)"', _scrape(juju))

    juju.refresh(APP, path=second)
    juju.wait(jubilant.all_active, timeout=900)

    after = re.search(r'version="([^"]+)"', _scrape(juju))
    assert version and after and after[1] != version[1]
    built = juju.exec("cat /var/lib/juju/agents/unit-runner-fs-0/charm/version", unit=UNIT)
    assert after[1] == built.stdout.strip()


def _scrape(juju) -> str:
    return juju.exec(
        "curl -s http://127.0.0.1:10242/metrics | grep ^runner_fs_build_info", unit=UNIT
    ).stdout


def test_remove_leaves_no_mount_or_service(juju):
    juju.remove_application(APP)
    juju.wait(lambda status: APP not in status.apps, timeout=900)

    left = juju.exec(
        "grep -c ' /var/lib/runner-fs/' /proc/self/mounts || true;"
        " systemctl list-unit-files 'runner-fs*' --no-legend | wc -l",
        unit="ubuntu/0",
    )

    assert left.stdout.split() == ["0", "0"]
