"""The charm as Juju runs it: `charmcraft pack` output, unzipped, run through its own `dispatch`.

`scripts/pack.sh` packs every platform with the real charmcraft. The 24.04 charm then runs on a
stand-in machine (`machine_world`: a private mount namespace, stand-in hook tools): install,
config-changed, start, runners harvested by the timer's event into SQLite, the `database`
relation with a real PostgreSQL server (the local store moved into it exactly once), every
action, upgrade-charm to a second build, stop and remove.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import psycopg
import pytest
import yaml

from .machine_world import PACK_VENV, FakeJuju, machine, pack
from .test_charm_venv import carried

REPO = Path(__file__).resolve().parents[2]
PROJECT = yaml.safe_load((REPO / "charmcraft.yaml").read_text())
UNIT = "runner-fs/0"
CONFIG = {"filesystem-size": "1M", "reconcile-interval": 5, "max-runner-age": 24.0,
          "retention-period": 2400.0, "flavor": "small", "storage-backend": "sqlite",
          "filesystem-owner": "nobody:nogroup", "rates": "small=0.008",
          "nagios_context": "juju", "nagios_servicegroups": ""}  # fmt: skip


@pytest.fixture(scope="module")
def second_build(tmp_path_factory, packed) -> Path:
    """Another build of the 24.04 charm, to upgrade to."""
    return pack(tmp_path_factory.mktemp("second"), "ubuntu@24.04:amd64")["ubuntu@24.04-amd64"]


def _build_plan(project: dict) -> subprocess.CompletedProcess:
    """Ask charmcraft's build planner (craft-platforms) for the bases it would build."""
    script = textwrap.dedent("""
        import json, sys
        from craft_platforms.charm import get_platforms_charm_build_plan
        project = json.loads(sys.argv[1])
        plan = get_platforms_charm_build_plan(
            project.get("base"), project["platforms"], project.get("build-base"))
        print(json.dumps(sorted(str(item.build_base) for item in plan)))
    """)
    return subprocess.run(
        [PACK_VENV / "bin/python", "-c", script, json.dumps(project)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_charmcraft_plans_one_build_for_each_base(packed):
    plan = _build_plan(PROJECT)

    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout) == ["ubuntu@22.04", "ubuntu@24.04"]


def test_charmcraft_refuses_a_top_level_base_beside_platform_bases(packed):
    plan = _build_plan({**PROJECT, "base": "ubuntu@24.04"})

    assert "InvalidMultiBaseError" in plan.stderr


def test_pack_makes_a_charm_for_each_platform_with_src_templates_and_venv(packed):
    assert set(packed) == {"ubuntu@24.04-amd64", "ubuntu@22.04-amd64"}
    for platform, charm in packed.items():
        with zipfile.ZipFile(charm) as archive:
            names = archive.namelist()
            manifest = yaml.safe_load(archive.read("manifest.yaml"))
        assert manifest["bases"][0]["channel"] == platform.split("@")[1].split("-")[0]
        assert {"dispatch", "src/charm.py", "templates/config.yaml.j2"} <= set(names)
        assert any(name.startswith("venv/") and "/ops/" in name for name in names)
        assert not any("runner_fs-" in name and ".dist-info" in name for name in names)


# The runner started ten minutes ago: its filesystem's record says it was created then too
# (a runner cannot claim times from before its filesystem existed).
_BACKDATE = (
    f"{sys.executable} -c 'import json, sys, time, datetime as d; p = sys.argv[1];"
    ' r = json.load(open(p)); r["created"] = d.datetime.fromtimestamp(time.time() - 620,'
    ' d.timezone.utc).isoformat(); json.dump(r, open(p, "w"))\''
    ' "/var/lib/runner-fs/images/$(basename "$path").json"'
)


def _finished_runner(name: str, job: int) -> str:
    """Shell that creates a runner through the wrapper and writes a finished job's files."""
    pre = {"workflow": "ci", "workflow_run_id": "1", "repository": "acme/web", "event": "push"}
    return textwrap.dedent(f"""\
        path=$(/usr/local/bin/runner-fs create {name} --label flavor=small)
        now=$(date +%s)
        {_BACKDATE}
        echo $((now - 600)) > "$path/runner-installation-start.timestamp"
        echo $((now - 590)) > "$path/runner-installed.timestamp"
        printf '{json.dumps(pre)[:-1]}, "timestamp": %s}}' $((now - 500)) \\
            > "$path/pre-job-metrics.json"
        printf '{{"timestamp": %s, "status": "normal", "status_info": null}}' \\
            $((now - 500 + {job})) > "$path/post-job-metrics.json"
    """)


def _scrape(juju: FakeJuju) -> str:
    """Start the exporter as runner-fs-metrics.service does, scrape it once, stop it."""
    unit = juju.service("runner-fs-metrics.service")
    (command,), environment = unit["ExecStart"], " ".join(unit.get("Environment", []))
    command = command.replace("--port 10242", "--port 10299")
    return juju.sh(
        f"env {environment} {command} 2> served & pid=$!\n"
        "until grep -q serving served; do kill -0 $pid; sleep 0.1; done\n"
        f"{sys.executable} -c 'import urllib.request as u;"
        ' print(u.urlopen("http://127.0.0.1:10299/metrics").read().decode())\'\n'
        "kill $pid"
    )


@pytest.fixture(scope="module")
def story(packed, second_build, tmp_path_factory, postgres_server):
    """Run the packed charm through a unit's whole life; return what was seen on the way."""
    tmp_path = tmp_path_factory.mktemp("unit")
    seen: dict = {}
    with machine(tmp_path) as namespace:
        juju = FakeJuju(tmp_path / "runner-fs", namespace, UNIT, CONFIG)
        seen["stand-in-pins"] = juju.deploy(packed["ubuntu@24.04-amd64"])
        for hook in ("install", "config-changed", "start"):
            juju.dispatch(f"hooks/{hook}")
        seen["active"] = juju.status()
        seen["timer"] = juju.sh("cat /etc/systemd/system/runner-fs-reconcile.timer")
        seen["service"] = juju.sh("cat /etc/systemd/system/runner-fs-reconcile.service")
        seen["verify"] = juju.sh(
            "systemd-analyze verify /etc/systemd/system/runner-fs-* 2>&1 && echo verified || true"
        )

        seen["released"] = juju.sh(  # a provisioner's calls through the wrapper
            "/usr/local/bin/runner-fs create runner-0 >/dev/null\n"
            "/usr/local/bin/runner-fs release runner-0 --json\n"
            "/usr/local/bin/runner-fs reconcile --json"
        ).splitlines()
        juju.sh(_finished_runner("runner-1", job=100))
        seen["wrapper-list"] = json.loads(juju.sh("/usr/local/bin/runner-fs list --json"))
        seen["sqlite-pass"] = juju.run_reconcile_service()  # what the timer starts
        seen["sqlite-report"] = json.loads(juju.sh("/usr/local/bin/runner-fs report --json"))
        seen["scrape"] = _scrape(juju)
        seen["first-version"] = juju.sh("cat version").strip()

        dbname = "packed_charm"
        postgres_server.create_database(dbname)
        juju.state["config"]["storage-backend"] = "postgresql"
        juju.dispatch("hooks/config-changed")
        seen["no-relation"] = juju.status()
        juju.state["relations"]["database"] = {
            "id": 7, "app": "postgresql", "units": ["postgresql/0"], "app_data": {},
            "local_app_data": {},
        }  # fmt: skip
        juju.relation("joined", "database")
        seen["request"] = dict(juju.state["relations"]["database"]["local_app_data"])
        juju.state["secrets"]["secret:login"] = {
            "username": "runner_fs_test", "password": postgres_server.password
        }  # fmt: skip
        juju.state["relations"]["database"]["app_data"] = {
            "endpoints": f"127.0.0.1:{postgres_server.port}", "database": dbname,
            "secret-user": "secret:login",
        }  # fmt: skip
        juju.relation("changed", "database")
        seen["postgresql"] = juju.status()
        seen["config-mode"] = juju.sh("stat -c %a /etc/runner-fs/config.yaml").strip()

        juju.sh(_finished_runner("runner-2", job=200))
        juju.sh("/usr/local/bin/runner-fs create runner-3 --label flavor=small >/dev/null")
        seen["pg-pass"] = juju.run_reconcile_service()
        juju.action("list")
        juju.action("quarantine", runner="runner-3")
        juju.action("quarantine", runner="ghost")
        juju.action("reconcile")
        juju.action("report", groupby="repository,flavor", **{"metric-types": "runner.job"},
                    begin="", end="")  # fmt: skip
        seen["archive-exists"] = juju.sh(
            f"test -f {juju.results()[1]['archive']} && echo yes"
        ).strip()

        with socket.create_server(("127.0.0.1", 0)) as black_hole:  # accepts, never answers
            published = dict(juju.state["relations"]["database"]["app_data"])
            juju.state["relations"]["database"]["app_data"]["endpoints"] = (
                f"127.0.0.1:{black_hole.getsockname()[1]}"
            )
            juju.relation("changed", "database")
            juju.sh(_finished_runner("runner-5", job=50))
            seen["unreachable-pass"] = juju.run_reconcile_service()
            seen["unreachable-status"] = juju.status()
            seen["unreachable-record"] = juju.sh("cat /var/lib/runner-fs/last-reconcile.json")
            seen["waiting-runners"] = juju.sh("/usr/local/bin/runner-fs list --json")
        juju.state["relations"]["database"]["app_data"] = published
        juju.relation("changed", "database")
        seen["retry-pass"] = juju.run_reconcile_service()
        seen["retry-status"] = juju.status()

        juju.state["relations"]["nrpe-external-master"] = {
            "id": 9, "app": "nrpe", "units": ["nrpe/0"], "app_data": {}, "local_app_data": {},
            "local_unit_data": {},
        }  # fmt: skip
        juju.relation("joined", "nrpe-external-master")
        juju.relation("changed", "nrpe-external-master")
        seen["monitors"] = yaml.safe_load(
            juju.state["relations"]["nrpe-external-master"]["local_unit_data"]["monitors"]
        )
        commands = juju.sh("cat /etc/nagios/nrpe.d/check_runner_fs_*.cfg | grep ^command")
        seen["nrpe-commands"] = dict(line.split("=", 1) for line in commands.splitlines())
        juju.sh(f"chmod o+x {' '.join(map(str, reversed(juju.charm.parents[:-1])))}")
        seen["nrpe-checks"] = {  # as NRPE runs them: as the nagios user
            name: juju.sh(f"setpriv --reuid=nagios --regid=nagios --clear-groups {command};"
                          " echo exit=$?")
            for name, command in seen["nrpe-commands"].items()
        }  # fmt: skip
        seen["nrpe-exports"] = juju.sh("ls /var/lib/nagios/export").split()

        juju.deploy(second_build)
        juju.dispatch("hooks/upgrade-charm")
        seen["after-upgrade"] = juju.status()
        seen["second-version"] = juju.sh("cat version").strip()
        seen["scrape-after-upgrade"] = _scrape(juju)
        seen["wrapper-after-upgrade"] = json.loads(juju.sh("/usr/local/bin/runner-fs list --json"))

        juju.sh("/usr/local/bin/runner-fs create runner-4 >/dev/null")
        juju.dispatch("hooks/stop")
        before = juju.sh("cat /var/lib/runner-fs/last-reconcile.json")
        juju.dispatch("hooks/reconcile")  # the timer fired while stop ran: nothing happens
        seen["record-unchanged"] = before == juju.sh("cat /var/lib/runner-fs/last-reconcile.json")
        juju.relation("broken", "nrpe-external-master")
        seen["nrpe-after-broken"] = juju.sh(
            "find /etc/nagios/nrpe.d /usr/local/lib/nagios /var/lib/nagios/export -type f"
        )
        juju.dispatch("hooks/remove")
        seen["left"] = juju.sh(
            "find /etc/runner-fs /etc/systemd/system /usr/local/bin -mindepth 1;"
            " grep -c ' /var/lib/runner-fs/' /proc/self/mounts || true;"
            " losetup -l -n -O BACK-FILE | grep -c /var/lib/runner-fs/ || true;"
            " pgrep -f [r]unner_fs[.]cli || true"
        ).split()
        seen["juju"] = juju
        with psycopg.connect(postgres_server.dsn(dbname)) as db:
            seen["pg-points"] = db.execute("SELECT count(*) FROM points").fetchone()[0]
    return seen


def test_the_packed_charm_renders_the_machine_and_is_active(story):
    assert story["active"] == "active: harvesting every 5 min into sqlite"
    assert "OnUnitInactiveSec=5min" in story["timer"]
    assert "\nExecStart=/usr/local/bin/runner-fs reconcile\n" in story["service"]
    assert f'juju-exec {UNIT} "JUJU_DISPATCH_PATH=hooks/reconcile ./dispatch"' in story["service"]
    systemctl = story["juju"].calls("systemctl")
    assert ["enable", "--now", "runner-fs-reconcile.timer"] in systemctl


def test_the_24_04_charm_runs_on_this_hosts_python_standing_in_for_3_12_with_its_own_pins(
    story, packed
):
    pins = {pin.split("==")[0].lower().replace("_", "-"): pin.split("==")[1]
            for pin in story["stand-in-pins"]}  # fmt: skip
    assert pins == carried(packed["ubuntu@24.04-amd64"])
    assert story["active"].startswith("active: ")  # every hook ran with exactly those


def test_the_rendered_units_pass_systemd_analyze_verify(story):
    assert story["verify"].strip() == "verified", story["verify"]


def test_the_wrapper_runs_the_command_line_in_the_packed_venv(story):
    assert [(row["runner"], row["state"]) for row in story["wrapper-list"]] == [
        ("runner-1", "finished")
    ]


def test_the_command_line_creates_releases_and_reconciles_in_the_packed_venv(story):
    released, reconciled = map(json.loads, story["released"])
    assert released == {"runner": "runner-0", "released": True}
    assert reconciled["harvested"] == 1 and reconciled["errors"] == 0


def test_the_timer_event_harvests_into_sqlite_without_package_metadata(story):
    rows = story["sqlite-report"]["results"]
    assert story["sqlite-report"]["total"] == 1
    assert rows[0]["qty"] == 100 + 10 + 90  # job, installation and idle seconds


def test_the_packed_exporter_serves_the_harvest_counters(story):
    assert "runner_fs_runners_harvested_total 2.0" in story["scrape"]  # runner-0 and runner-1
    assert (
        'runner_fs_job_duration_seconds_count{flavor="small",status="normal"} 1.0'
        in (story["scrape"])
    )


def test_the_database_relation_moves_the_local_store_into_postgresql(story):
    assert story["no-relation"] == (
        "blocked: integrate with a postgresql charm: juju integrate runner-fs postgresql"
    )
    assert story["request"]["database"] == "runner_fs"
    assert story["postgresql"] == "active: harvesting every 5 min into postgresql"
    assert story["config-mode"] == "600"
    assert story["pg-points"] == 9  # runner-1 moved from SQLite, runner-2 and 5 harvested


def test_every_action_answers_through_the_hook_tools(story):
    juju = story["juju"]
    results = juju.results()
    listed = json.loads(results[0]["filesystems"])
    assert sorted((row["runner"], row["state"]) for row in listed) == [("runner-3", "running")]
    assert results[1]["archive"].startswith("/var/lib/runner-fs/quarantine/runner-3-")
    assert len(results[1]["sha256"]) == 64
    assert story["archive-exists"] == "yes"
    assert juju.calls("action-fail")[-1][-1] == "runner ghost has no filesystem"
    assert results[2] == {"harvested": "0", "quarantined": "0", "skipped": "0",
                          "datapoints": "0", "errors": "0"}  # fmt: skip
    rows = json.loads(results[3]["results"])
    assert sorted((r["repository"], r["flavor"], r["qty"]) for r in rows) == [
        ("acme/web", "small", 300.0)
    ]


def test_the_password_never_reaches_a_log_an_action_result_or_the_pass_record(
    story, postgres_server
):
    juju = story["juju"]
    said = json.dumps(juju.calls("juju-log") + juju.calls("action-set") + juju.calls("status-set"))
    assert postgres_server.password not in said
    assert postgres_server.password not in story["unreachable-record"]


def test_upgrade_to_a_second_build_keeps_working(story):
    assert story["after-upgrade"] == "active: harvesting every 5 min into postgresql"
    assert story["wrapper-after-upgrade"] == []


def test_after_upgrade_the_exporter_runs_the_second_builds_code(story):
    first, second = story["first-version"], story["second-version"]
    assert first != second
    assert f'runner_fs_build_info{{version="{first}"}} 1.0' in story["scrape"]
    assert f'runner_fs_build_info{{version="{second}"}} 1.0' in story["scrape-after-upgrade"]
    systemctl = story["juju"].calls("systemctl")
    assert ["restart", "runner-fs-metrics.service"] in systemctl
    assert ["start", "--no-block", "runner-fs-reconcile.service"] in systemctl


def test_the_timer_service_harvests_outside_the_hook_it_then_dispatches(story):
    assert story["sqlite-pass"][0] and story["pg-pass"][0]
    assert story["sqlite-pass"][1] <= 2 and story["pg-pass"][1] <= 2


def test_with_postgresql_unreachable_a_stand_in_juju_exec_sees_no_hook_hold_its_lock_over_2_s(
    story,
):
    passed, held = story["unreachable-pass"]
    assert not passed
    assert held <= 2, held
    assert story["unreachable-status"].startswith(
        "waiting: postgresql unreachable, filesystems wait for it: initialising postgresql://"
    )
    record = json.loads(story["unreachable-record"])
    assert record["storage_down"] and "timeout expired" in record["problem"]
    waiting = json.loads(story["waiting-runners"])
    assert [(row["runner"], row["state"]) for row in waiting] == [("runner-5", "finished")]


def test_the_next_pass_after_postgresql_answers_again_harvests_what_waited(story):
    assert story["retry-pass"][0]
    assert story["retry-status"] == "active: harvesting every 5 min into postgresql"


def test_after_stop_a_reconcile_event_does_nothing(story):
    assert story["record-unchanged"]


def test_remove_leaves_nothing_running_mounted_or_holding_the_password(story):
    assert story["left"] == ["0", "0"]  # no file in the three directories, mounts, loops


def test_nrpe_checks_are_written_with_charmhelpers_and_run(story):
    assert set(story["monitors"]["monitors"]["remote"]["nrpe"]) == {
        "runner_fs_harvest", "runner_fs_errors", "runner_fs_free_space"
    }  # fmt: skip
    assert story["nrpe-commands"]["command[check_runner_fs_harvest]"] == (
        "/usr/local/lib/nagios/plugins/check_runner_fs harvest --interval 5"
    )
    outputs = sorted(story["nrpe-checks"].values())
    assert outputs[0].startswith("RUNNER-FS ERRORS OK - last harvest: 20")
    assert outputs[1].startswith("RUNNER-FS FREE-SPACE OK - ")
    assert outputs[2].startswith("RUNNER-FS HARVEST OK - last successful harvest: 20")
    assert all(output.endswith("exit=0\n") for output in outputs)
    assert len(story["nrpe-exports"]) == 3
    restarts = story["juju"].calls("systemctl") + story["juju"].calls("service")
    assert {("restart", "nagios-nrpe-server"), ("nagios-nrpe-server", "restart")} & {
        tuple(args) for args in restarts
    }  # systemctl on a machine run by systemd (not here), else service


def test_nrpe_checks_go_with_the_relation(story):
    assert story["nrpe-after-broken"].split() == []
