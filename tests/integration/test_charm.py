"""The packed charm on a real Juju model (jubilant); skipped where there is no `juju`.

Run:  CHARM_PATH=./runner-fs_ubuntu@24.04-amd64.charm tox -e integration

runner-fs is a subordinate: it is deployed beside `ubuntu` and has a unit once related.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

jubilant = pytest.importorskip("jubilant", reason="jubilant is not installed")
if shutil.which("juju") is None or not os.environ.get("CHARM_PATH"):
    pytest.skip("needs juju and CHARM_PATH (a packed charm)", allow_module_level=True)

APP = "runner-fs"
POST_JOB = """{"timestamp": '$((now-30))', "status": "normal", "status_info": null}"""


@pytest.fixture(scope="module")
def juju():
    with jubilant.temp_model() as model:
        model.deploy("ubuntu", base="ubuntu@24.04")
        model.deploy(os.environ["CHARM_PATH"], APP, config={"filesystem-owner": "root:root"})
        model.integrate(APP, "ubuntu")
        model.wait(jubilant.all_active, timeout=900)
        yield model


def test_config_change_is_applied(juju):
    juju.config(APP, {"reconcile-interval": 10})
    juju.wait(jubilant.all_active)

    timer = juju.exec("cat /etc/systemd/system/runner-fs-reconcile.timer", unit=f"{APP}/0")

    assert "OnUnitInactiveSec=10min" in timer.stdout


def test_a_finished_fake_runner_is_harvested(juju):
    unit = f"{APP}/0"
    path = juju.exec("runner-fs create fake-1", unit=unit).stdout.strip()
    juju.exec(
        f"now=$(date +%s); echo $((now-60)) > {path}/runner-installed.timestamp; "
        f"echo '{POST_JOB}' > {path}/post-job-metrics.json",
        unit=unit,
    )

    task = juju.run(unit, "reconcile")

    assert task.results["harvested"] == "1"
    listed = juju.run(unit, "list")
    assert json.loads(listed.results["filesystems"]) == []
