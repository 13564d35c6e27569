"""A machine for charms in a test: a private mount namespace with stand-in hook tools.

The charm's machine directories are empty tmpfs, `systemctl` and `service` only record their
arguments, and the machine looks like Ubuntu 24.04 with NRPE installed (os-release and
lsb-release, which charmhelpers reads; a `nagios` user; NRPE's directories). Each unit has its
own charm directory and hook-tool state; `FakeJuju.dispatch` runs the charm's own `dispatch`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from . import juju_tools

REPO = Path(__file__).resolve().parents[2]
PACK_VENV = REPO / ".venv-pack"
MASKED = ("/etc/runner-fs", "/etc/systemd/system", "/usr/local/bin", "/var/lib/runner-fs",
          "/etc/nagios", "/var/lib/nagios", "/var/log/nagios",
          "/usr/local/lib/nagios")  # fmt: skip
UBUNTU = {  # what charmhelpers reads to know the platform
    "os-release": 'NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\n',
    "lsb-release": "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=24.04\nDISTRIB_CODENAME=noble\n",
}
LSB_RELEASE = Path("/etc/lsb-release")
JUJU_EXEC = Path("/usr/bin/juju-exec")


def pack(out: Path, *platforms: str) -> dict[str, Path]:
    """Pack with scripts/pack.sh into `out`; return the .charm files by platform."""
    env = {**os.environ, "RUNNER_FS_PACK_OUT": str(out), "RUNNER_FS_PACK_VENV": str(PACK_VENV)}
    result = subprocess.run(
        [REPO / "scripts/pack.sh", *platforms], env=env, capture_output=True, text=True,
        timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return {path.name.split("_", 1)[1].removesuffix(".charm"): path for path in out.iterdir()}


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
            f"mount --bind {tools}/juju-exec {JUJU_EXEC}",
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

    def __init__(self, home: Path, namespace: Namespace, unit: str, config: dict) -> None:
        """Lay out the unit's charm directory, its stand-in tools on PATH and its state."""
        self.namespace = namespace
        self.unit = unit
        home.mkdir(parents=True, exist_ok=True)
        self.charm = home / "charm"
        self.state_path = home / "state.json"
        self.log = home / "calls.jsonl"
        self.state: dict = {"config": dict(config), "relations": {}, "secrets": {}}
        self.env = {
            "PATH": f"{tools(home)}:/usr/sbin:/usr/bin:/sbin:/bin",
            "JUJU_UNIT_NAME": unit,
            "JUJU_MODEL_NAME": "test",
            "JUJU_VERSION": "3.6.4",
            "JUJU_CHARM_DIR": str(self.charm),
            "FAKE_JUJU_STATE": str(self.state_path),
            "FAKE_JUJU_LOG": str(self.log),
        }

    def deploy(self, charm: Path) -> list[str]:
        """Unzip a .charm into the charm directory, over what was there (as an upgrade does).

        The base's Python is not on this machine: the venv gets the very distributions the
        charm carries for it, installed again for this machine's `python3` (`stand_in_venv`).

        Returns:
            The pins installed for this machine's Python.
        """
        with zipfile.ZipFile(charm) as archive:
            for member in archive.infolist():
                path = Path(archive.extract(member, self.charm))
                mode = member.external_attr >> 16
                if mode:
                    path.chmod(mode & 0o777)
        return stand_in_venv(self.charm / "venv")

    def dispatch(self, path: str, **env: str) -> None:
        """Run one hook or action through the charm's own dispatch."""
        self.state_path.write_text(json.dumps(self.state))
        self.namespace.run(
            "./dispatch", {**self.env, "JUJU_DISPATCH_PATH": path, **env}, self.charm
        )
        self.state = json.loads(self.state_path.read_text())  # relation-set writes back

    def action(self, action: str, **params: object) -> None:
        """Run an action with its params."""
        self.state["params"] = params
        self.dispatch(f"actions/{action}", JUJU_ACTION_NAME=action, JUJU_ACTION_UUID="1")

    def relation(self, hook: str, endpoint: str) -> None:
        """Run a relation hook of `endpoint`."""
        relation = self.state["relations"][endpoint]
        remote_unit = {"JUJU_REMOTE_UNIT": relation["units"][0]} if relation["units"] else {}
        self.dispatch(
            f"hooks/{endpoint}-relation-{hook}", JUJU_RELATION=endpoint,
            JUJU_RELATION_ID=f"{endpoint}:{relation['id']}", JUJU_REMOTE_APP=relation["app"],
            **remote_unit,
        )  # fmt: skip

    def service(self, name: str) -> dict[str, list[str]]:
        """Return the `[Service]` settings of a rendered systemd unit: key to its values."""
        settings: dict[str, list[str]] = {}
        for line in self.sh(f"cat /etc/systemd/system/{name}").splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                settings.setdefault(key, []).append(value)
        return settings

    def run_reconcile_service(self) -> tuple[bool, float]:
        """Run runner-fs-reconcile.service as systemd runs it: ExecStart, then ExecStopPost.

        ExecStart is ended at TimeoutStartSec; ExecStopPost runs whatever ExecStart did.

        Returns:
            Whether the pass succeeded, and how long the hook it dispatched through
            `juju-exec` held the machine lock (seconds).
        """
        unit = self.service("runner-fs-reconcile.service")
        self.state_path.write_text(json.dumps(self.state))
        (start,), (timeout,), (stop_post,) = (
            unit["ExecStart"], unit["TimeoutStartSec"], unit["ExecStopPost"]
        )  # fmt: skip
        passed = self.sh(f"timeout {timeout} {start} >&2 && echo ok || echo failed") == "ok\n"
        self.sh(stop_post)
        self.state = json.loads(self.state_path.read_text())
        return passed, self.calls("juju-exec-held")[-1][0]

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


def stand_in_venv(venv: Path) -> list[str]:
    """Install the distributions of the base's `venv/lib/pythonX.Y` again for this `python3`.

    The same names and versions (wheels only, charmhelpers from its sdist) go into the
    `lib/python3.N` of this machine's `/usr/bin/python3`, which the charm's `dispatch` then
    links as `venv/bin/python`: the charm's code runs with its own pins, on another CPython.

    Returns:
        The pins installed (`name==version`).
    """
    python = Path("/usr/bin/python3")
    here = subprocess.run(
        [python, "-c", "import sys; print(f'python{sys.version_info[0]}.{sys.version_info[1]}')"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (packed,) = (path for path in (venv / "lib").iterdir() if path.name != here)
    pins = sorted(
        "{}=={}".format(*info.name.removesuffix(".dist-info").rsplit("-", 1))
        for info in (packed / "site-packages").glob("*.dist-info")
    )
    target = venv / "lib" / here / "site-packages"
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(
        [PACK_VENV / "bin/uv", "pip", "install", "--quiet", "--python", python, "--target",
         target, "--no-deps", "--only-binary", ":all:", "--no-binary", "charmhelpers", *pins],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return pins


def tools(home: Path) -> Path:
    """Make the stand-in hook tools (and systemctl, service) in `home`/bin."""
    tools = home / "bin"
    tools.mkdir(exist_ok=True)
    for tool in (*juju_tools.TOOLS, "systemctl", "service"):
        link = tools / tool
        fast = "" if tool == "relation-set" else " -I -S"  # see juju_tools: as quick as Juju's
        link.write_text(
            f'#!/bin/sh\nexec {sys.executable}{fast} {juju_tools.__file__} {tool} "$@"\n'
        )
        link.chmod(0o755)
    return tools


@contextlib.contextmanager
def machine(tmp_path: Path) -> Iterator[Namespace]:
    """Yield the namespace; afterwards remove the mount points it had to make on the host."""
    made = [Path(d) for d in MASKED if not Path(d).exists()]
    placeholders = [path for path in (LSB_RELEASE, JUJU_EXEC) if not path.exists()]
    for path in placeholders:
        path.touch()  # mount points for Ubuntu's lsb-release and Juju's juju-exec
    namespace = Namespace(tools(tmp_path), tmp_path)
    try:
        yield namespace
    finally:
        namespace.close()
        for path in placeholders:
            path.unlink()
        for directory in made:
            directory.rmdir()


def lay_out_charm(project: Path, charm: Path, entry: str) -> None:
    """Lay out a charm from its project as charmcraft packs it.

    Metadata, config and actions split out of charmcraft.yaml, `src/`, our `lib/`, and a
    `dispatch` that runs `src/<entry>`.
    """
    definition = yaml.safe_load((project / "charmcraft.yaml").read_text())
    charm.mkdir(parents=True)
    parts = {"config": "config.yaml", "actions": "actions.yaml"}
    metadata = {key: value for key, value in definition.items() if key not in parts}
    (charm / "metadata.yaml").write_text(yaml.safe_dump(metadata))
    for key, name in parts.items():
        (charm / name).write_text(yaml.safe_dump(definition.get(key, {})))
    shutil.copytree(project / "src", charm / "src")
    shutil.copytree(REPO / "lib", charm / "lib")
    dispatch = charm / "dispatch"
    dispatch.write_text(
        '#!/bin/sh\nJUJU_DISPATCH_PATH="${JUJU_DISPATCH_PATH:-$0}" PYTHONPATH=lib:src'
        f" exec {sys.executable} ./src/{entry}\n"
    )
    dispatch.chmod(0o755)
