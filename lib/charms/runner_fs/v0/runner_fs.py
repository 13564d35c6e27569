# Copyright 2026 Canonical Ltd.
# See LICENSE file for licensing details.
"""Per-runner metric filesystems for runner provisioner charms, from the runner-fs subordinate.

runner-fs gives every CI runner on a machine its own small ext4 filesystem on a loop device,
into which the runner writes its metric files, and harvests them into metrics storage once the
runner is gone. This library is what a provisioner charm (one that starts runners) needs: the
`runner_fs` relation with the runner-fs subordinate on its machine, and a storage manager with
github-runner-manager's contract that drives runner-fs's command line.

## Getting it

The library is the distribution `runner-fs-lib` in this repository's `lib/` directory (not on
Charmhub: it no longer registers new libraries, so `charmcraft fetch-lib` cannot serve it).
Pin it at a release tag in the provisioner charm's requirements:

    runner-fs-lib @ git+https://github.com/canonical/runner-fs@v0.1.0#subdirectory=lib

or build its wheel from a checkout and ship that:

    pip wheel --no-deps --wheel-dir dist ./lib

Its version is LIBAPI.LIBPATCH (below); it needs only the standard library and `ops`.

## Using it

`charmcraft.yaml` of the provisioner:

    requires:
      runner-fs:
        interface: runner_fs
        scope: container
        optional: true
        limit: 1

Deploy both and relate them: `juju deploy runner-fs && juju integrate runner-fs
<provisioner>`; runner-fs then follows the provisioner to every machine.

In the charm:

    from charms.runner_fs.v0.runner_fs import RunnerFsRequirer, MetricsStorageError

    class ProvisionerCharm(ops.CharmBase):
        def __init__(self, framework):
            super().__init__(framework)
            # The host uid:gid the runners' user maps to, and the default flavor (optional;
            # runner-fs's own filesystem-owner and flavor config win when the operator sets
            # them).
            self.runner_fs = RunnerFsRequirer(self, owner="1001000:1001000", flavor="small")
            framework.observe(self.runner_fs.on.ready, self._on_runner_fs_ready)
            framework.observe(self.runner_fs.on.gone, self._on_runner_fs_gone)

        def start_runner(self, name):
            manager = self.runner_fs.manager()    # raises RunnerFsNotReadyError until ready
            storage = manager.create(name, flavor="large")
            # give storage.path to the runner (an LXD disk device, for example); the runner
            # writes its metric files into it ...

        def runner_gone(self, name):
            self.runner_fs.manager().release(name)  # harvested on runner-fs's next pass

`RunnerFsStorageManager` can also be used on its own, by any program on the machine:
`RunnerFsStorageManager("/usr/local/bin/runner-fs")`.

Each call runs the command line (`runner-fs COMMAND --json`, never through a shell, with a
timeout) rather than going through relation data, so it takes milliseconds instead of a hook.
A failed call raises the matching `MetricsStorageError` subclass with runner-fs's own message;
an invalid runner name raises `ValueError` before any process starts.

## The `runner_fs` interface, version 0

Every field is a string in the unit databags; none is mandatory, unknown fields are ignored,
and a field's type never changes. A reader treats a missing field as "not said".

runner-fs (each unit, for the provisioner on its machine):
- `version`: the interface version, "0"; `library`: the library version, "0.N".
- `ready`: "true" once the command line works and filesystems can be created, else "false".
- `command`: the command line's path, "/usr/local/bin/runner-fs".
- `mount-dir`: where filesystems are mounted ("/var/lib/runner-fs/mounts").
- `filesystem-size`: the size of new filesystems ("1M").

The provisioner (each unit, optional):
- `version`: "0".
- `owner`: "uid:gid" (numbers) or "user:group" that the runners' user maps to on the host.
- `flavor`: the flavor of runners created without a `flavor` label.

A runner-fs unit whose `version` is not "0" is not used: the library logs it and stays not
ready.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import ops

# The unique Charmhub library identifier, never change it
LIBID = "5f3c2b8e9d7a4c61b0e2f4a6d8c0e1f3"

# Increment this major API version when introducing breaking changes
LIBAPI = 0

# Increment this PATCH version with every release of the library (and lib/pyproject.toml's
# version with it), or reset to 0 if you are raising the major API version
LIBPATCH = 1

PYDEPS: list[str] = []

logger = logging.getLogger(__name__)

INTERFACE_VERSION = "0"
DEFAULT_CLI = "/usr/local/bin/runner-fs"
DEFAULT_TIMEOUT = 120.0  # seconds; a create waits for a free loop device and mkfs at worst
RUNNER_NAME_RULE = "1-63 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
_RUNNER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class MetricsStorageError(Exception):
    """A runner-fs call failed; the message is runner-fs's own."""


class CreateMetricsStorageError(MetricsStorageError):
    """A filesystem could not be created."""


class GetMetricsStorageError(MetricsStorageError):
    """A filesystem could not be found, listed, mounted or released."""


class DeleteMetricsStorageError(MetricsStorageError):
    """A filesystem could not be deleted."""


class QuarantineMetricsStorageError(MetricsStorageError):
    """A filesystem could not be quarantined."""


class RunnerFsNotReadyError(MetricsStorageError):
    """runner-fs is not related, not ready, or speaks another interface version."""


@dataclasses.dataclass(frozen=True)
class MetricsStorage:
    """One runner's metric filesystem: its mount point on the host, and the runner."""

    path: Path
    runner_name: str


def validate_runner_name(runner_name: str) -> str:
    """Return the name if runner-fs accepts it.

    Raises:
        ValueError: naming the rule.
    """
    if not isinstance(runner_name, str) or not _RUNNER_NAME.fullmatch(runner_name):
        raise ValueError(f"invalid runner name {runner_name!r:.80}: use {RUNNER_NAME_RULE}")
    return runner_name


class RunnerFsStorageManager:
    """github-runner-manager's storage-manager contract, through runner-fs's command line."""

    def __init__(self, cli: str = DEFAULT_CLI, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Call the command line at `cli`, giving each call `timeout` seconds."""
        self.cli = cli
        self.timeout = timeout

    def _run(self, error: type[MetricsStorageError], *args: str) -> object:
        """Run `runner-fs ARGS --json`; return its JSON, or raise `error` with its message."""
        command = [self.cli, *args, "--json"]
        try:
            result = subprocess.run(  # an argument list, never a shell
                command, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except FileNotFoundError:
            raise error(
                f"{self.cli} not found: is runner-fs deployed beside this charm?"
            ) from None
        except subprocess.TimeoutExpired:
            raise error(f"runner-fs {args[0]} timed out after {self.timeout:g} s") from None
        except OSError as exc:
            raise error(f"cannot run {self.cli}: {exc}") from None
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise error(lines[-1] if lines else f"runner-fs {args[0]} exited {result.returncode}")
        try:
            return json.loads(result.stdout)
        except ValueError:
            raise error(f"runner-fs {args[0]} printed no JSON: {result.stdout!r:.200}") from None

    def create(self, runner_name: str, **labels: str) -> MetricsStorage:
        """Create and mount a runner's filesystem (not idempotent).

        Raises:
            ValueError: an invalid runner name or label key.
            CreateMetricsStorageError: it exists already, or creating failed.
        """
        args = ["create", validate_runner_name(runner_name)]
        for key, value in labels.items():
            if not _LABEL_KEY.fullmatch(key):
                raise ValueError(f"invalid label key {key!r:.40}: use a-z, 0-9, '_' and '-'")
            args += ["--label", f"{key}={value}"]
        answer = self._run(CreateMetricsStorageError, *args)
        return MetricsStorage(Path(answer["path"]), runner_name)  # type: ignore[index]

    def get(self, runner_name: str) -> MetricsStorage:
        """Return a runner's filesystem, mounted again if needed (after a reboot).

        Raises:
            ValueError: an invalid runner name.
            GetMetricsStorageError: it does not exist or cannot be mounted.
        """
        answer = self._run(GetMetricsStorageError, "get", validate_runner_name(runner_name))
        return MetricsStorage(Path(answer["path"]), runner_name)  # type: ignore[index]

    def list_all(self) -> Iterator[MetricsStorage]:
        """Yield every filesystem on the machine (`get` mounts one again if needed).

        Raises:
            GetMetricsStorageError: listing failed.
        """
        rows = self._run(GetMetricsStorageError, "list")
        for row in rows:  # type: ignore[attr-defined]
            yield MetricsStorage(Path(row["path"]), row["runner"])

    def release(self, runner_name: str) -> bool:
        """Say the runner is gone: runner-fs harvests its filesystem on the next pass.

        Returns:
            False if it had no filesystem (already harvested).

        Raises:
            ValueError: an invalid runner name.
            GetMetricsStorageError: releasing failed.
        """
        answer = self._run(GetMetricsStorageError, "release", validate_runner_name(runner_name))
        return bool(answer["released"])  # type: ignore[index]

    def delete(self, runner_name: str) -> None:
        """Unmount and remove a runner's filesystem (its metrics are not harvested).

        Raises:
            ValueError: an invalid runner name.
            DeleteMetricsStorageError: it does not exist, or deleting failed.
        """
        self._run(DeleteMetricsStorageError, "delete", validate_runner_name(runner_name))

    def move_to_quarantine(self, runner_name: str) -> Path:
        """Archive a runner's filesystem, remove it, and return the archive's path.

        Raises:
            ValueError: an invalid runner name.
            QuarantineMetricsStorageError: it does not exist, or archiving failed.
        """
        answer = self._run(
            QuarantineMetricsStorageError, "quarantine", validate_runner_name(runner_name)
        )
        return Path(answer["archive"])  # type: ignore[index]


# -- the relation ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunnerFsInfo:
    """What a runner-fs unit publishes (interface version 0)."""

    ready: bool
    command: str
    mount_dir: str | None
    filesystem_size: str | None
    version: str | None
    library: str | None

    @classmethod
    def from_databag(cls, data: Mapping[str, str]) -> RunnerFsInfo:
        """Read the fields; unknown ones are ignored, missing ones are None."""
        return cls(
            ready=data.get("ready") == "true",
            command=data.get("command") or DEFAULT_CLI,
            mount_dir=data.get("mount-dir"),
            filesystem_size=data.get("filesystem-size"),
            version=data.get("version"),
            library=data.get("library"),
        )


class RunnerFsReadyEvent(ops.EventBase):
    """runner-fs on this machine is ready: filesystems can be created."""


class RunnerFsGoneEvent(ops.EventBase):
    """runner-fs on this machine is not ready any more, or the relation is gone."""


class RunnerFsRequirerEvents(ops.ObjectEvents):
    """The events of `RunnerFsRequirer`."""

    ready = ops.EventSource(RunnerFsReadyEvent)
    gone = ops.EventSource(RunnerFsGoneEvent)


class RunnerFsRequirer(ops.Object):
    """The provisioner's side of the `runner_fs` relation."""

    on = RunnerFsRequirerEvents()

    def __init__(
        self,
        charm: ops.CharmBase,
        relation_name: str = "runner-fs",
        owner: str | None = None,
        flavor: str | None = None,
    ) -> None:
        """Publish `owner` and `flavor` (both optional) and watch runner-fs's readiness."""
        super().__init__(charm, relation_name)
        self.relation_name = relation_name
        self.owner = owner
        self.flavor = flavor
        events = charm.on[relation_name]
        framework = charm.framework
        framework.observe(events.relation_joined, self._on_changed)
        framework.observe(events.relation_changed, self._on_changed)
        framework.observe(events.relation_departed, self._on_changed)
        framework.observe(events.relation_broken, self._on_broken)

    @property
    def info(self) -> RunnerFsInfo | None:
        """What the runner-fs unit on this machine published, or None without one."""
        relation = self.model.get_relation(self.relation_name)
        if relation is None or not relation.units:
            return None
        unit = sorted(relation.units, key=lambda u: u.name)[0]  # container scope: one unit
        return RunnerFsInfo.from_databag(relation.data[unit])

    @property
    def is_ready(self) -> bool:
        """Whether runner-fs on this machine is ready and speaks our interface version."""
        info = self.info
        if info is None or not info.ready:
            return False
        if info.version != INTERFACE_VERSION:
            logger.warning(
                "runner-fs speaks interface version %r, this library %r: not used",
                info.version, INTERFACE_VERSION,
            )  # fmt: skip
            return False
        return True

    def manager(self, timeout: float = DEFAULT_TIMEOUT) -> RunnerFsStorageManager:
        """Return the storage manager of runner-fs on this machine.

        Raises:
            RunnerFsNotReadyError: runner-fs is not related, not ready, or speaks another
                interface version.
        """
        info = self.info
        if info is None or not self.is_ready:
            raise RunnerFsNotReadyError(
                "runner-fs is not ready on this machine: relate it"
                f" (juju integrate runner-fs {self.model.app.name}) and wait for it"
            )
        return RunnerFsStorageManager(info.command, timeout)

    def _on_changed(self, event: ops.RelationEvent) -> None:
        data = {
            "version": INTERFACE_VERSION,
            "owner": self.owner or "",
            "flavor": self.flavor or "",
        }
        event.relation.data[self.model.unit].update(data)
        if self.is_ready:
            self.on.ready.emit()
        else:
            self.on.gone.emit()

    def _on_broken(self, _: ops.RelationBrokenEvent) -> None:
        self.on.gone.emit()


class RunnerFsProvider(ops.Object):
    """runner-fs's side of the `runner_fs` relation: publish readiness, read the requests."""

    def __init__(self, charm: ops.CharmBase, relation_name: str = "runner-fs") -> None:
        """Serve the provisioners related over `relation_name`."""
        super().__init__(charm, relation_name)
        self.relation_name = relation_name

    def publish(self, *, ready: bool, command: str, mount_dir: str, filesystem_size: str) -> None:
        """Write this unit's fields into every relation of the endpoint."""
        data = {
            "version": INTERFACE_VERSION,
            "library": f"{LIBAPI}.{LIBPATCH}",
            "ready": "true" if ready else "false",
            "command": command,
            "mount-dir": mount_dir,
            "filesystem-size": filesystem_size,
        }
        for relation in self.model.relations[self.relation_name]:
            relation.data[self.model.unit].update(data)

    def requested(self) -> dict[str, str]:
        """Return what the provisioner on this machine asked for: `owner`, `flavor` if given."""
        for relation in self.model.relations[self.relation_name]:
            for unit in sorted(relation.units, key=lambda u: u.name):
                data = relation.data[unit]
                return {key: data[key] for key in ("owner", "flavor") if data.get(key)}
        return {}
