"""The charm as Juju runs it: `charmcraft pack` output, unzipped, run through its own `dispatch`.

`scripts/pack.sh` packs every platform with the real charmcraft. The 24.04 charm then runs in
a private mount namespace where the charm's machine directories are empty tmpfs, stand-in
hook tools answer from a JSON file, and `systemctl` only records its arguments: install,
config-changed, start, runners harvested by the timer's event into SQLite, the `database`
relation with a real PostgreSQL server (the local store moved into it exactly once), every
action, upgrade-charm to a second build, stop and remove.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import psycopg
import pytest
import yaml

from . import juju_tools

REPO = Path(__file__).resolve().parents[2]
PROJECT = yaml.safe_load((REPO / "charmcraft.yaml").read_text())
UNIT = "runner-fs/0"
CONFIG = {"filesystem-size": "1M", "reconcile-interval": 5, "max-runner-age": 24.0,
          "retention-period": 2400.0, "flavor": "small", "storage-backend": "sqlite",
          "filesystem-owner": "nobody:nogroup", "rates": "small=0.008",
          "nagios_context": "juju", "nagios_servicegroups": ""}  # fmt: skip
MASKED = ("/etc/runner-fs", "/etc/systemd/system", "/usr/local/bin", "/var/lib/runner-fs",
          "/etc/nagios", "/var/lib/nagios", "/var/log/nagios",
          "/usr/local/lib/nagios")  # fmt: skip
UBUNTU = {  # what charmhelpers reads to know the platform
    "os-release": 'NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\n',
    "lsb-release": "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=24.04\nDISTRIB_CODENAME=noble\n",
}
LSB_RELEASE = Path("/etc/lsb-release")

PACK_VENV = REPO / ".venv-pack"


def _pack(out: Path, *platforms: str) -> dict[str, Path]:
    """Pack with scripts/pack.sh into `out`; return the .charm files by platform."""
    env = {**os.environ, "RUNNER_FS_PACK_OUT": str(out), "RUNNER_FS_PACK_VENV": str(PACK_VENV)}
    result = subprocess.run(
        [REPO / "scripts/pack.sh", *platforms], env=env, capture_output=True, text=True,
        timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return {path.name.split("_", 1)[1].removesuffix(".charm"): path for path in out.iterdir()}


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict[str, Path]:
    """Every platform of charmcraft.yaml, packed."""
    return _pack(tmp_path_factory.mktemp("packed"))


@pytest.fixture(scope="module")
def second_build(tmp_path_factory, packed) -> Path:
    """Another build of the 24.04 charm, to upgrade to."""
    return _pack(tmp_path_factory.mktemp("second"), "ubuntu@24.04:amd64")["ubuntu@24.04-amd64"]


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
        names = zipfile.ZipFile(charm).namelist()
        manifest = yaml.safe_load(zipfile.ZipFile(charm).read("manifest.yaml"))
        assert manifest["bases"][0]["channel"] == platform.split("@")[1].split("-")[0]
        assert {"dispatch", "src/charm.py", "templates/config.yaml.j2"} <= set(names)
        assert any(name.startswith("venv/") and "/ops/" in name for name in names)
        assert not any("runner_fs-" in name and ".dist-info" in name for name in names)


class Namespace:
    """A private mount namespace held open by a process; commands enter it with nsenter.

    The machine looks like an Ubuntu 24.04 one with NRPE installed: its os-release (which
    charmhelpers reads), a `nagios` user and NRPE's directories.
    """

    def __init__(self, tools: Path, tmp_path: Path) -> None:
        """Mask the charm's machine directories with tmpfs and put the fake systemctl in."""
        for name, text in UBUNTU.items():
            (tmp_path / name).write_text(text)
        for name, entry in (("passwd", "nagios:x:4242:4242::/var/lib/nagios:/bin/false"),
                            ("group", "nagios:x:4242:")):  # fmt: skip
            text = Path(f"/etc/{name}").read_text()
            (tmp_path / name).write_text(text if "\nnagios:" in text else f"{text}{entry}\n")
        etc_release = "" if Path("/etc/os-release").is_symlink() else " /etc/os-release"
        script = "; ".join([
            *(f"mkdir -p {d} && mount -t tmpfs tmpfs {d}" for d in MASKED),
            f"mount --bind {tools}/systemctl /usr/bin/systemctl",
            *(f"mount --bind {tmp_path}/os-release {path}"
              for path in f"/usr/lib/os-release{etc_release}".split()),
            f"mount --bind {tmp_path}/lsb-release {LSB_RELEASE}",
            f"mount --bind {tmp_path}/passwd /etc/passwd",
            f"mount --bind {tmp_path}/group /etc/group",
            "mkdir -p /etc/nagios/nrpe.d /var/lib/nagios/export",
            "echo ready", "exec cat",
        ])  # fmt: skip
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.holder.stdout is not None
        assert self.holder.stdout.readline() == "ready\n"

    def run(self, script: str, env: dict[str, str], cwd: Path) -> str:
        """Run a shell script inside; return its stdout (fail with its stderr)."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.holder.pid), "-m", "--", "sh", "-ec",
             f"cd {cwd}\n{script}"],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{script}\n{result.stderr[-3000:]}"
        return result.stdout

    def close(self) -> None:
        """End the holder: the namespace and its tmpfs go with it."""
        self.holder.communicate(timeout=60)  # closes its stdin: `cat` ends


class FakeJuju:
    """One unit's charm directory, its hook tools and their state."""

    def __init__(self, tmp_path: Path, namespace: Namespace) -> None:
        """Lay out the stand-in tools on PATH and an empty state."""
        self.namespace = namespace
        self.charm = tmp_path / "charm"
        self.state_path = tmp_path / "state.json"
        self.log = tmp_path / "calls.jsonl"
        self.state: dict = {"config": dict(CONFIG), "relations": {}, "secrets": {}}
        self.env = {
            "PATH": f"{tmp_path / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin",
            "JUJU_UNIT_NAME": UNIT,
            "JUJU_MODEL_NAME": "test",
            "JUJU_VERSION": "3.6.4",
            "JUJU_CHARM_DIR": str(self.charm),
            "FAKE_JUJU_STATE": str(self.state_path),
            "FAKE_JUJU_LOG": str(self.log),
        }

    def deploy(self, charm: Path) -> None:
        """Unzip a .charm into the charm directory, over what was there (as an upgrade does)."""
        with zipfile.ZipFile(charm) as archive:
            for member in archive.infolist():
                path = Path(archive.extract(member, self.charm))
                mode = member.external_attr >> 16
                if mode:
                    path.chmod(mode & 0o777)

    def dispatch(self, path: str, **env: str) -> None:
        """Run one hook or action through the charm's own dispatch."""
        self.state_path.write_text(json.dumps(self.state))
        self.namespace.run(
            "./dispatch", {**self.env, "JUJU_DISPATCH_PATH": path, **env}, self.charm
        )
        self.state = json.loads(self.state_path.read_text())  # relation-set writes back

    def action(self, name: str, **params: str) -> None:
        """Run an action with its params."""
        self.state["params"] = params
        self.dispatch(f"actions/{name}", JUJU_ACTION_NAME=name, JUJU_ACTION_UUID="1")

    def relation(self, hook: str, endpoint: str) -> None:
        """Run a relation hook of `endpoint`."""
        relation = self.state["relations"][endpoint]
        self.dispatch(
            f"hooks/{endpoint}-relation-{hook}", JUJU_RELATION=endpoint,
            JUJU_RELATION_ID=f"{endpoint}:{relation['id']}", JUJU_REMOTE_APP=relation["app"],
        )  # fmt: skip

    def sh(self, script: str) -> str:
        """Run a shell script on the machine (inside the namespace)."""
        return self.namespace.run(script, self.env, self.charm)

    def calls(self, tool: str) -> list[list[str]]:
        """Return the arguments of every call of `tool` so far."""
        lines = self.log.read_text().splitlines()
        return [args for name, args in map(json.loads, lines) if name == tool]

    def results(self) -> list[dict[str, str]]:
        """Return each action-set call's results."""
        return [dict(arg.split("=", 1) for arg in args) for args in self.calls("action-set")]

    def status(self) -> str:
        """Return the last status set: 'name: message'."""
        name, _, message = self.calls("status-set")[-1][-3:]  # ... NAME -- MESSAGE
        return f"{name}: {message}"


def _finished_runner(name: str, job: int) -> str:
    """Shell that creates a runner through the wrapper and writes a finished job's files."""
    pre = {"workflow": "ci", "workflow_run_id": "1", "repository": "acme/web", "event": "push"}
    return textwrap.dedent(f"""\
        path=$(/usr/local/bin/runner-fs create {name} --label flavor=small)
        now=$(date +%s)
        echo $((now - 600)) > "$path/runner-installation-start.timestamp"
        echo $((now - 590)) > "$path/runner-installed.timestamp"
        printf '{json.dumps(pre)[:-1]}, "timestamp": %s}}' $((now - 500)) \\
            > "$path/pre-job-metrics.json"
        printf '{{"timestamp": %s, "status": "normal", "status_info": null}}' \\
            $((now - 500 + {job})) > "$path/post-job-metrics.json"
    """)


def _tools(tmp_path: Path) -> Path:
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in (*juju_tools.TOOLS, "systemctl", "service"):
        link = tools / tool
        link.write_text(f'#!/bin/sh\nexec {sys.executable} {juju_tools.__file__} {tool} "$@"\n')
        link.chmod(0o755)
    return tools


@pytest.fixture(scope="module")
def story(packed, second_build, tmp_path_factory, postgres_server):
    """Run the packed charm through a unit's whole life; return what was seen on the way."""
    tmp_path = tmp_path_factory.mktemp("unit")
    made = [Path(d) for d in MASKED if not Path(d).exists()]  # mount points, removed after
    lsb_placeholder = not LSB_RELEASE.exists()
    LSB_RELEASE.touch()  # a mount point for Ubuntu's (Debian has none)
    namespace = Namespace(_tools(tmp_path), tmp_path)
    seen: dict = {}
    try:
        juju = FakeJuju(tmp_path, namespace)
        juju.deploy(packed["ubuntu@24.04-amd64"])
        for hook in ("install", "config-changed", "start"):
            juju.dispatch(f"hooks/{hook}")
        seen["active"] = juju.status()
        seen["timer"] = juju.sh("cat /etc/systemd/system/runner-fs-reconcile.timer")
        seen["service"] = juju.sh("cat /etc/systemd/system/runner-fs-reconcile.service")

        juju.sh(_finished_runner("runner-1", job=100))
        seen["wrapper-list"] = json.loads(juju.sh("/usr/local/bin/runner-fs list --json"))
        juju.dispatch("hooks/reconcile")  # what the timer's service dispatches
        seen["sqlite-report"] = json.loads(juju.sh("/usr/local/bin/runner-fs report --json"))

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
        juju.dispatch("hooks/reconcile")
        juju.action("list")
        juju.action("quarantine", runner="runner-3")
        juju.action("quarantine", runner="ghost")
        juju.action("reconcile")
        juju.action("report", groupby="repository,flavor", **{"metric-types": "runner.job"},
                    begin="", end="")  # fmt: skip
        seen["archive-exists"] = juju.sh(
            f"test -f {juju.results()[1]['archive']} && echo yes"
        ).strip()

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
        seen["nrpe-checks"] = {
            name: juju.sh(f"{command}; echo exit=$?")
            for name, command in seen["nrpe-commands"].items()
        }
        seen["nrpe-exports"] = juju.sh("ls /var/lib/nagios/export").split()

        juju.deploy(second_build)
        juju.dispatch("hooks/upgrade-charm")
        seen["after-upgrade"] = juju.status()
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
    finally:
        namespace.close()
        if lsb_placeholder:
            LSB_RELEASE.unlink()
        for directory in made:
            directory.rmdir()
    return seen


def test_the_packed_charm_renders_the_machine_and_is_active(story):
    assert story["active"] == "active: harvesting every 5 min into sqlite"
    assert "OnUnitInactiveSec=5min" in story["timer"]
    assert f'juju-exec {UNIT} "JUJU_DISPATCH_PATH=hooks/reconcile ./dispatch"' in story["service"]
    systemctl = story["juju"].calls("systemctl")
    assert ["enable", "--now", "runner-fs-reconcile.timer"] in systemctl


def test_the_wrapper_runs_the_command_line_in_the_packed_venv(story):
    assert [(row["runner"], row["state"]) for row in story["wrapper-list"]] == [
        ("runner-1", "finished")
    ]


def test_the_timer_event_harvests_into_sqlite_without_package_metadata(story):
    rows = story["sqlite-report"]["results"]
    assert story["sqlite-report"]["total"] == 1
    assert rows[0]["qty"] == 100 + 10 + 90  # job, installation and idle seconds


def test_the_database_relation_moves_the_local_store_into_postgresql(story):
    assert story["no-relation"] == (
        "blocked: integrate with a postgresql charm: juju integrate runner-fs postgresql"
    )
    assert story["request"]["database"] == "runner_fs"
    assert story["postgresql"] == "active: harvesting every 5 min into postgresql"
    assert story["config-mode"] == "600"
    assert story["pg-points"] == 6  # runner-1 moved from SQLite, runner-2 harvested into it


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


def test_the_password_never_reaches_a_log_or_an_action_result(story, postgres_server):
    juju = story["juju"]
    said = json.dumps(juju.calls("juju-log") + juju.calls("action-set") + juju.calls("status-set"))
    assert postgres_server.password not in said


def test_upgrade_to_a_second_build_keeps_working(story):
    assert story["after-upgrade"] == "active: harvesting every 5 min into postgresql"
    assert story["wrapper-after-upgrade"] == []


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
