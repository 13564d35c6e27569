"""runner-fs (packed) beside a provisioner charm on one machine, related over `runner_fs`.

The stand-in provisioner (tests/charms/provisioner) uses the charm library as a real one
would: it creates its runners' filesystems and releases them through runner-fs's command line;
runner-fs's timer event harvests them and `report` shows their job time.
"""

from __future__ import annotations

import json

import pytest

from .machine_world import REPO, FakeJuju, lay_out_charm, machine

RUNNER_FS = "runner-fs/0"
PROVISIONER = "provisioner/0"
CONFIG = {"filesystem-size": "1M", "reconcile-interval": 5, "max-runner-age": 24.0,
          "retention-period": 2400.0, "flavor": "", "storage-backend": "sqlite",
          "filesystem-owner": "ubuntu:ubuntu", "rates": "", "nagios_context": "juju",
          "nagios_servicegroups": ""}  # fmt: skip
OWNER = "1001000:1001000"  # what an unprivileged LXD container's uid 1000 maps to


def _relate(runner_fs: FakeJuju, provisioner: FakeJuju) -> None:
    """Give both units the relation; each sees the other's unit databag."""
    runner_fs.state["relations"]["runner-fs"] = {
        "id": 3, "app": "provisioner", "units": [PROVISIONER], "app_data": {},
        "local_app_data": {}, "local_unit_data": {}, "remote_units_data": {},
    }  # fmt: skip
    provisioner.state["relations"]["runner-fs"] = {
        "id": 3, "app": "runner-fs", "units": [RUNNER_FS], "app_data": {},
        "local_app_data": {}, "local_unit_data": {}, "remote_units_data": {},
    }  # fmt: skip


def _exchange(runner_fs: FakeJuju, provisioner: FakeJuju) -> None:
    """Carry each side's unit databag to the other, as Juju does between hooks."""
    mine, theirs = runner_fs.state["relations"], provisioner.state["relations"]
    theirs["runner-fs"]["remote_units_data"][RUNNER_FS] = mine["runner-fs"]["local_unit_data"]
    mine["runner-fs"]["remote_units_data"][PROVISIONER] = theirs["runner-fs"]["local_unit_data"]


@pytest.fixture(scope="module")
def pair(packed, tmp_path_factory):
    """Run both charms through a relation's life; return what was seen."""
    tmp_path = tmp_path_factory.mktemp("pair")
    seen: dict = {}
    with machine(tmp_path) as namespace:
        runner_fs = FakeJuju(tmp_path / "runner-fs", namespace, RUNNER_FS, CONFIG)
        runner_fs.deploy(packed["ubuntu@24.04-amd64"])
        provisioner = FakeJuju(
            tmp_path / "provisioner", namespace, PROVISIONER, {"runner-owner": OWNER}
        )
        lay_out_charm(REPO / "tests/charms/provisioner", provisioner.charm, "provisioner.py")
        for hook in ("install", "config-changed", "start"):
            runner_fs.dispatch(f"hooks/{hook}")
            provisioner.dispatch(f"hooks/{hook}")

        provisioner.action("start-runner", name="early", flavor="small")
        seen["not-ready"] = provisioner.calls("action-fail")[-1][-1]

        _relate(runner_fs, provisioner)
        runner_fs.relation("joined", "runner-fs")
        _exchange(runner_fs, provisioner)
        provisioner.relation("joined", "runner-fs")
        provisioner.relation("changed", "runner-fs")
        seen["provisioner-status"] = provisioner.status()
        _exchange(runner_fs, provisioner)
        runner_fs.relation("changed", "runner-fs")
        seen["published"] = dict(runner_fs.state["relations"]["runner-fs"]["local_unit_data"])

        provisioner.action("start-runner", name="r1", flavor="large")
        provisioner.action("start-runner", name="r2", flavor="small")
        provisioner.action("finish-runner", name="r1", job=300)
        seen["owner"] = runner_fs.sh("stat -c %u:%g /var/lib/runner-fs/mounts/r1").strip()
        seen["results"] = provisioner.results()

        runner_fs.run_reconcile_service()  # what the timer starts
        runner_fs.action("report", groupby="repository,flavor", **{"metric-types": "runner.job"},
                         begin="", end="")  # fmt: skip
        seen["report"] = json.loads(runner_fs.results()[-1]["results"])

        runner_fs.relation("departed", "runner-fs")
        runner_fs.relation("broken", "runner-fs")
        provisioner.relation("broken", "runner-fs")
        seen["after-broken"] = provisioner.status()
        seen["r2-after-broken"] = json.loads(runner_fs.sh("/usr/local/bin/runner-fs list --json"))
        seen["r2-mounted"] = runner_fs.sh("grep -c ' /var/lib/runner-fs/mounts/r2 ' /proc/mounts")
        runner_fs.dispatch("hooks/stop")
        runner_fs.dispatch("hooks/remove")
    return seen


def test_calls_before_runner_fs_is_ready_fail_clearly(pair):
    assert pair["not-ready"] == (
        "runner-fs is not ready on this machine: relate it (juju integrate runner-fs"
        " provisioner) and wait for it"
    )


def test_runner_fs_publishes_readiness_and_the_provisioner_sees_it(pair):
    assert pair["published"]["ready"] == "true"
    assert pair["published"]["command"] == "/usr/local/bin/runner-fs"
    assert pair["provisioner-status"] == "active: runner-fs ready"


def test_runners_get_filesystems_owned_as_the_provisioner_asked(pair):
    assert pair["owner"] == OWNER
    assert pair["results"][0]["path"] == "/var/lib/runner-fs/mounts/r1"
    assert pair["results"][-1] == {"released": "True"}


def test_the_timer_harvests_what_the_provisioner_released_and_report_shows_it(pair):
    assert [(r["repository"], r["flavor"], r["qty"]) for r in pair["report"]] == [
        ("acme/api", "large", 300.0)
    ]


def test_removing_the_relation_leaves_running_runners_untouched(pair):
    assert pair["after-broken"] == "waiting: waiting for runner-fs"
    assert [(r["runner"], r["state"]) for r in pair["r2-after-broken"]] == [("r2", "running")]
    assert pair["r2-mounted"].strip() == "1"
