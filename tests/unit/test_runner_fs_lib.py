"""The runner_fs charm library and interface, both sides, with ops.testing."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from charms.runner_fs.v0 import runner_fs as lib
from ops import testing

import charm
from runner_fs.shared_fs import validate_runner_name

REPO = Path(__file__).resolve().parents[2]
PROVISIONER_DIR = REPO / "tests/charms/provisioner"


def _provisioner_class() -> type:
    spec = importlib.util.spec_from_file_location(
        "provisioner", PROVISIONER_DIR / "src/provisioner.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["provisioner"] = module  # ops.testing reads the class's source file
    spec.loader.exec_module(module)
    return module.ProvisionerCharm


@pytest.fixture
def provisioner():
    return testing.Context(_provisioner_class(), charm_root=PROVISIONER_DIR, unit_id=0)


READY = {"version": "0", "library": "0.1", "ready": "true", "command": "/usr/local/bin/runner-fs",
         "mount-dir": "/var/lib/runner-fs/mounts", "filesystem-size": "1M"}  # fmt: skip


def _runner_fs_side(data: dict[str, str]) -> testing.SubordinateRelation:
    return testing.SubordinateRelation(
        "runner-fs", remote_app_name="runner-fs", remote_unit_data=data
    )


# -- the provisioner's side ----------------------------------------------------------------


def test_a_ready_runner_fs_emits_ready_and_gives_a_manager(provisioner):
    relation = _runner_fs_side(READY)

    out = provisioner.run(
        provisioner.on.relation_changed(relation),
        testing.State(relations=[relation], config={"runner-owner": "1001000:1001000"}),
    )

    assert out.unit_status == testing.ActiveStatus("runner-fs ready")
    published = out.get_relation(relation.id).local_unit_data
    assert {key: published[key] for key in ("version", "owner", "flavor")} == {
        "version": "0", "owner": "1001000:1001000", "flavor": "small"
    }  # fmt: skip
    assert [type(e).__name__ for e in provisioner.emitted_events][-1] == "RunnerFsReadyEvent"


@pytest.mark.parametrize(
    ("data", "why"),
    [({**READY, "ready": "false"}, "not ready"),
     ({**READY, "version": "1"}, "another interface version"),
     ({}, "nothing published yet")],
)  # fmt: skip
def test_runner_fs_not_ready_emits_gone_and_refuses_a_manager(provisioner, data, why):
    relation = _runner_fs_side(data)
    state = testing.State(relations=[relation])

    out = provisioner.run(provisioner.on.relation_changed(relation), state)

    assert out.unit_status == testing.WaitingStatus("waiting for runner-fs"), why
    with pytest.raises(testing.ActionFailed, match="runner-fs is not ready on this machine"):
        provisioner.run(provisioner.on.action("start-runner", params={"name": "r1"}), out)


def test_a_broken_relation_emits_gone(provisioner):
    relation = _runner_fs_side(READY)

    out = provisioner.run(
        provisioner.on.relation_broken(relation), testing.State(relations=[relation])
    )

    assert out.unit_status == testing.WaitingStatus("waiting for runner-fs")


def test_without_the_relation_the_provisioner_is_told_how_to_relate(provisioner):
    with pytest.raises(testing.ActionFailed, match="juju integrate runner-fs provisioner"):
        provisioner.run(provisioner.on.action("start-runner", params={"name": "r1"}),
                        testing.State())  # fmt: skip


# -- runner-fs's side ----------------------------------------------------------------------


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setattr(charm, "HOST_ROOT", tmp_path)
    systemctl = tmp_path / "bin/systemctl"
    systemctl.parent.mkdir()
    systemctl.write_text("#!/bin/sh\n")
    systemctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{systemctl.parent}:/usr/bin:/bin")
    return tmp_path


@pytest.fixture
def ctx():
    return testing.Context(charm.RunnerFsCharm, app_name="runner-fs", unit_id=0)


def _provisioner_side(data: dict[str, str]) -> testing.SubordinateRelation:
    return testing.SubordinateRelation(
        "runner-fs", remote_app_name="provisioner", remote_unit_data=data
    )


def _rendered(root: Path) -> dict:
    return json.loads((root / "etc/runner-fs/config.yaml").read_text().split("\n", 1)[1])


def test_runner_fs_publishes_ready_command_mounts_size_and_versions(ctx, root):
    relation = _provisioner_side({"version": "0"})

    state = testing.State(config={"filesystem-size": "2M"}, relations=[relation])

    out = ctx.run(ctx.on.relation_changed(relation), state)

    published = dict(out.get_relation(relation.id).local_unit_data)
    for juju_key in ("egress-subnets", "ingress-address", "private-address"):
        published.pop(juju_key)
    assert published == {
        "version": "0", "library": f"0.{lib.LIBPATCH}", "ready": "true",
        "command": "/usr/local/bin/runner-fs",
        "mount-dir": f"{root}/var/lib/runner-fs/mounts", "filesystem-size": "2M",
    }  # fmt: skip


def test_runner_fs_is_not_ready_under_an_invalid_config(ctx, root):
    relation = _provisioner_side({})

    state = testing.State(config={"filesystem-size": "10T"}, relations=[relation])

    out = ctx.run(ctx.on.relation_changed(relation), state)

    assert out.get_relation(relation.id).local_unit_data["ready"] == "false"


def test_the_provisioners_owner_and_flavor_apply_where_the_operator_left_defaults(ctx, root):
    relation = _provisioner_side({"version": "0", "owner": "1001000:1001000", "flavor": "large"})

    ctx.run(ctx.on.relation_changed(relation), testing.State(relations=[relation]))

    assert (_rendered(root)["filesystem-owner"], _rendered(root)["flavor"]) == (
        "1001000:1001000", "large"
    )  # fmt: skip


def test_the_operators_explicit_owner_and_flavor_win(ctx, root):
    relation = _provisioner_side({"owner": "1001000:1001000", "flavor": "large"})
    config = {"filesystem-owner": "root:root", "flavor": "small"}

    ctx.run(ctx.on.relation_changed(relation), testing.State(config=config, relations=[relation]))

    assert (_rendered(root)["filesystem-owner"], _rendered(root)["flavor"]) == (
        "root:root",
        "small",
    )


def test_a_bad_owner_from_the_provisioner_blocks_naming_it(ctx, root):
    relation = _provisioner_side({"owner": "no-such-user-here"})

    out = ctx.run(ctx.on.relation_changed(relation), testing.State(relations=[relation]))

    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "filesystem-owner='no-such-user-here'" in out.unit_status.message


# -- the library on its own ------------------------------------------------------------------


def test_the_library_imports_with_only_the_standard_library_and_ops():
    blocked = ["runner_fs", "pydantic", "jinja2", "charmhelpers", "psycopg", "charm_state"]
    script = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({blocked!r}))\n"  # importing any of them now fails
        f"sys.path.insert(0, {str(REPO / 'lib')!r})\n"
        "import charms.runner_fs.v0.runner_fs as lib\n"
        "print(lib.LIBAPI, lib.LIBPATCH, sorted(set(sys.modules) & set("
        f"{blocked!r})))\n"
    )

    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True,
                            text=True, check=False)  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["0", str(lib.LIBPATCH)]
    assert lib.LIBAPI == 0 and len(lib.LIBID) == 32 and lib.PYDEPS == []


@pytest.mark.parametrize(
    "name",
    ["r1", "runner-42", "a" * 63, "a" * 64, "", "-x", "Runner", "r/1", "r 1", "../x", "r\n",
     ".hidden", "x.y_z-0", "é", 42],
)  # fmt: skip
def test_the_library_accepts_exactly_the_names_the_core_does(name):
    def accepts(validate) -> bool:
        try:
            validate(name)
        except ValueError:
            return False
        return True

    assert accepts(lib.validate_runner_name) == accepts(validate_runner_name)


def test_a_hostile_name_raises_before_any_process_starts(tmp_path):
    marker = tmp_path / "ran"
    cli = tmp_path / "runner-fs"
    cli.write_text(f"#!/bin/sh\ntouch {marker}\n")
    cli.chmod(0o755)
    manager = lib.RunnerFsStorageManager(str(cli))

    for call in (manager.create, manager.get, manager.release, manager.delete,
                 manager.move_to_quarantine):  # fmt: skip
        with pytest.raises(ValueError, match="invalid runner name"):
            call("../../etc; rm -rf /")

    assert not marker.exists()


def test_a_missing_command_line_is_named(tmp_path):
    manager = lib.RunnerFsStorageManager(str(tmp_path / "absent"))

    with pytest.raises(lib.GetMetricsStorageError, match="absent not found"):
        list(manager.list_all())


def test_a_hung_command_line_times_out(tmp_path):
    cli = tmp_path / "runner-fs"
    cli.write_text("#!/bin/sh\nexec sleep 30\n")
    cli.chmod(0o755)

    with pytest.raises(lib.CreateMetricsStorageError, match=r"timed out after 0\.5 s"):
        lib.RunnerFsStorageManager(str(cli), timeout=0.5).create("r1")


def test_the_provisioner_how_to_and_the_library_header_give_the_same_requirement():
    repo = Path(__file__).resolve().parents[2]
    header = (repo / "lib/charms/runner_fs/v0/runner_fs.py").read_text()
    how_to = (repo / "docs/how-to/provisioner.md").read_text()
    requirement = re.compile(r"^ *(runner-fs-lib @ git\+https://\S+)$", re.M)

    assert requirement.findall(how_to) == requirement.findall(header) != []
    assert "fetch-lib" not in header.replace("`charmcraft fetch-lib` cannot serve it", "")
