#!/usr/bin/env python3
"""The runner-fs machine charm: Juju events, config and actions over the `runner_fs` core."""

from __future__ import annotations

import collections
import datetime
import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import ops
from charmlibs.systemd import SystemdError
from charms.runner_fs.v0.runner_fs import RunnerFsProvider
from pydantic import ValidationError

import cos_agent
import nagios
from charm_state import CharmConfig, CharmState, InvalidConfigError, option_error
from database import DatabaseRequirer
from machine import WRAPPER, Machine
from runner_fs import archive, eventlog, health, host
from runner_fs.errors import RunnerFsError
from runner_fs.reconcile import ReconcileResult, at_tenth, last_reconcile, list_filesystems
from runner_fs.report import parse_instant, parse_list, report

logger = logging.getLogger(__name__)

HOST_ROOT = Path("/")  # where the machine's files live; tests point it at a directory
PROVISIONER = "runner-fs"  # the relation with a provisioner charm (interface runner_fs)


class ReconcileEvent(ops.EventBase):
    """Time to harvest finished runners (dispatched by the reconcile timer)."""


class RunnerFsEvents(ops.CharmEvents):
    """The standard events and `reconcile`."""

    reconcile = ops.EventSource(ReconcileEvent)


class MachineTakenError(RunnerFsError):
    """Another runner-fs unit already manages this machine's filesystems."""


class RunnerFsCharm(ops.CharmBase):
    """Per-runner loopback filesystems, harvested into metrics storage."""

    on = RunnerFsEvents()
    _stored = ops.StoredState()

    def __init__(self, framework: ops.Framework) -> None:
        """Observe the events this charm handles."""
        super().__init__(framework)
        self._stored.set_default(stopped=False)
        self.machine = Machine(HOST_ROOT)
        self.database = DatabaseRequirer(self)
        self.provisioner = RunnerFsProvider(self, PROVISIONER)
        self._converge_problem: str | None = None
        database = self.on[self.database.relation_name]
        for event in (
            self.on.install, self.on.config_changed, self.on.upgrade_charm, self.on.secret_changed,
            self.on.update_status, database.relation_changed, database.relation_broken,
        ):  # fmt: skip
            framework.observe(event, self._on_converge)
        for name in (nagios.RELATION, PROVISIONER, cos_agent.RELATION):
            relation = self.on[name]
            for event in (relation.relation_joined, relation.relation_changed,
                          relation.relation_broken):  # fmt: skip
                framework.observe(event, self._on_converge)
        framework.observe(self.on.start, self._on_start)
        framework.observe(self.on.stop, self._on_stop)
        framework.observe(self.on.remove, self._on_remove)
        framework.observe(self.on.reconcile, self._on_reconcile)
        framework.observe(self.on.list_action, self._on_list_action)
        framework.observe(self.on.quarantine_action, self._on_quarantine_action)
        framework.observe(self.on.reconcile_action, self._on_reconcile_action)
        framework.observe(self.on.report_action, self._on_report_action)
        framework.observe(self.on.collect_unit_status, self._on_collect_unit_status)

    # -- state ---------------------------------------------------------------------------

    def _state(self) -> CharmState:
        """Return the validated state of this unit.

        Raises:
            InvalidConfigError: an option is invalid.
            MachineTakenError: another runner-fs unit manages this machine.
        """
        try:
            config = self.load_config(CharmConfig)
        except ValidationError as exc:
            raise option_error(exc) from None
        owner = self.machine.managed_by()
        if owner not in (None, self.unit.name):
            raise MachineTakenError(
                f"{owner} already manages runner filesystems on this machine"
                f" ({self.machine.config_path}): remove this unit ({self.unit.name})"
            )
        config = config.with_requests(self.provisioner.requested())
        login = self.database.login
        dsn = None
        if login:
            self.machine.keep_database_ca(login.tls_ca)
            dsn = login.dsn(str(self.machine.database_ca_path))
        state = CharmState.from_config(
            config, self.unit.name, self.machine.base_dir, dsn, self.machine.event_log
        )
        eventlog.attach(state.host.event_log)
        return state

    # -- lifecycle -----------------------------------------------------------------------

    def _converge(self, upgraded: bool = False) -> CharmState | None:
        """Render the host config, timer and wrapper; tell the provisioner whether it is ready.

        Nothing here waits on storage: harvests, the move of the local store into PostgreSQL
        and schema upgrades run in the reconcile service, outside hooks.

        Returns None when the config or the machine does not allow it now.
        """
        if self._stored.stopped:
            return None
        state = None
        try:
            state = self._state()
            self.machine.converge(
                state, self.unit.name, self.charm_dir, self._nrpe_related, upgraded
            )
        except (InvalidConfigError, MachineTakenError) as exc:
            logger.warning("not converging: %s", exc)
            state = None
        except SystemdError as exc:  # filesystems work; harvests wait for the timer
            logger.error("the reconcile timer is not running: %s", exc)
            self._converge_problem = f"the reconcile timer could not be started: {exc}"
        self._publish(state)
        if state is not None:
            for relation in self.model.relations[cos_agent.RELATION]:
                data = cos_agent.unit_databag(state.config.metrics_port, self)
                relation.data[self.unit].update(data)
        return state

    def _publish(self, state: CharmState | None) -> None:
        """Tell the provisioner on this machine whether filesystems can be created now."""
        self.provisioner.publish(
            ready=state is not None and host.LOOP_CONTROL.exists(),
            command=str(WRAPPER),
            mount_dir=str(state.host.manager().mounts_dir) if state else "",
            filesystem_size=state.host.filesystem_size if state else "",
        )

    def _on_converge(self, event: ops.EventBase) -> None:
        state = self._converge(upgraded=isinstance(event, ops.UpgradeCharmEvent))
        nrpe_event = (
            isinstance(event, ops.RelationEvent) and event.relation.name == nagios.RELATION
        )
        if isinstance(event, ops.RelationBrokenEvent) and nrpe_event:
            self._nrpe(nagios.remove_checks)
        elif (
            state
            and self._nrpe_related
            and (nrpe_event or isinstance(event, (ops.ConfigChangedEvent, ops.UpgradeCharmEvent)))
        ):
            self._nrpe(lambda: nagios.write_checks(state.reconcile_interval))

    @property
    def _nrpe_related(self) -> bool:
        return bool(self.model.relations[nagios.RELATION])

    def _nrpe(self, change: Callable[[], None]) -> None:
        """Write or remove the NRPE checks; a failure is logged, never fails the hook."""
        try:
            change()
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            logger.error("NRPE checks not updated: %s", exc)

    def _on_start(self, _: ops.StartEvent) -> None:
        """Converge, then mount every filesystem again (a reboot unmounted them)."""
        state = self._converge()
        if state and host.LOOP_CONTROL.exists():
            mounted = sum(1 for _ in state.host.manager().list_all())
            logger.info("%d filesystems mounted", mounted)

    def _on_stop(self, _: ops.StopEvent) -> None:
        """Remove the timer and wrapper; unmount filesystems, keeping their images."""
        self._release_machine(host_config=False)

    def _on_remove(self, _: ops.RemoveEvent) -> None:
        """As stop, and remove the host config file (it may hold the database login)."""
        self._release_machine(host_config=True)

    def _release_machine(self, *, host_config: bool) -> None:
        """Best effort: log what could not be done, never fail the hook."""
        self._stored.stopped = True
        try:
            self._publish(None)
        except ops.ModelError as exc:
            logger.warning("could not tell the provisioner: %s", exc)
        if self.machine.managed_by() not in (None, self.unit.name):
            return  # another unit's files: not ours to remove
        try:
            manager = self._state().host.manager()
            unmounted = manager.unmount_all()
            logger.info("unmounted %d filesystems; images, archives and metrics stay", unmounted)
        except (InvalidConfigError, MachineTakenError, RunnerFsError, OSError) as exc:
            logger.warning("filesystems not unmounted: %s", exc)
        self.machine.remove(host_config=host_config)

    def _on_reconcile(self, _: ReconcileEvent) -> None:
        """Log the pass the timer's service just ran; status follows from its record.

        The pass itself ran in runner-fs-reconcile.service: this hook only reads a file.
        """
        if self._stored.stopped:
            logger.info("reconcile event ignored: this unit is stopping")
            return
        record = last_reconcile(self.machine.base_dir) or {}
        counts = {key: record.get(key) for key in ReconcileResult().as_dict()}
        logger.info("last pass (%s): %s; problem: %s", record.get("ended"), counts,
                    record.get("problem"))  # fmt: skip

    # -- actions -------------------------------------------------------------------------

    def _on_list_action(self, event: ops.ActionEvent) -> None:
        try:
            state = self._state()
            manager = state.host.manager()
            rows = list_filesystems(manager, state.host.max_age)
            archives = [
                {"archive": str(path), "size": stat.st_size,
                 "created": datetime.datetime.fromtimestamp(stat.st_mtime, datetime.timezone.utc)
                 .isoformat(timespec="seconds")}
                for path, stat in manager.archives()
            ]  # fmt: skip
        except (InvalidConfigError, RunnerFsError, OSError) as exc:
            event.fail(f"cannot list filesystems: {exc}")
            return
        counts = collections.Counter(row["state"] for row in rows)
        event.set_results({
            "filesystems": json.dumps(rows), "counts": json.dumps(counts),
            "archives": json.dumps(archives),
        })  # fmt: skip

    def _on_quarantine_action(self, event: ops.ActionEvent) -> None:
        try:
            path = self._state().host.manager().move_to_quarantine(event.params["runner"])
        except (ValueError, RunnerFsError) as exc:
            event.fail(str(exc))
            return
        event.set_results({"archive": str(path), "sha256": archive.sha256_of(path)})

    def _on_reconcile_action(self, event: ops.ActionEvent) -> None:
        """Run one pass now, in the hook (an operator asked for it and waits)."""
        self._converge()

        def progress(done: int, total: int) -> None:
            if at_tenth(done, total):
                event.log(f"{done}/{total} filesystems")

        try:
            counts = self._state().host.reconcile(progress).as_dict()
        except (InvalidConfigError, RunnerFsError) as exc:  # names the option or the cause
            event.fail(str(exc))
            return
        event.set_results(counts)

    def _on_report_action(self, event: ops.ActionEvent) -> None:
        params = event.params
        try:
            state = self._state()
            begin = parse_instant(params["begin"], "begin") if params.get("begin") else None
            end = parse_instant(params["end"], "end") if params.get("end") else None
            with state.host.storage() as storage:
                result = report(
                    storage, parse_list(params.get("groupby")), begin, end,
                    parse_list(params.get("metric-types")),
                )  # fmt: skip
        except (ValueError, RunnerFsError) as exc:
            event.fail(str(exc))
            return
        event.set_results({"total": result["total"], "results": json.dumps(result["results"])})

    # -- status --------------------------------------------------------------------------

    def _on_collect_unit_status(self, event: ops.CollectStatusEvent) -> None:
        if self._stored.stopped:
            event.add_status(ops.MaintenanceStatus("stopping"))
            return
        try:
            state = self._state()
        except (InvalidConfigError, MachineTakenError) as exc:
            event.add_status(ops.BlockedStatus(str(exc)))
            return
        if not host.LOOP_CONTROL.exists():
            event.add_status(
                ops.BlockedStatus(
                    f"no loop devices here ({host.LOOP_CONTROL} is missing): deploy to a VM "
                    "or a container given loop devices"
                )
            )
            return
        if self._converge_problem:
            event.add_status(ops.BlockedStatus(f"{self._converge_problem:.200}"))
            return
        record = last_reconcile(state.host.base_dir) or {}
        if state.config.storage_backend == "postgresql":
            waiting = self._database_status(record)
            if waiting:
                event.add_status(waiting)
                return
        event.add_status(self._harvest_status(state))

    def _harvest_status(self, state: CharmState) -> ops.ActiveStatus:
        """Active; a failed or stalled last pass is named in the message (the next may heal it).

        While all is well the message changes only with the config: counts and times are in
        the `list` action and `juju debug-log`.
        """
        message = (
            f"harvesting every {state.reconcile_interval} min into {state.host.storage_backend}"
        )
        interval = datetime.timedelta(minutes=state.reconcile_interval)
        base_dir = state.host.base_dir
        for finding in (health.last_pass(base_dir), health.freshness(base_dir, interval)):
            if finding.code != health.OK:
                return ops.ActiveStatus(f"{message}; {finding.message:.200} (see juju debug-log)")
        return ops.ActiveStatus(message)

    def _database_status(self, record: dict) -> ops.StatusBase | None:
        """Say what storage-backend=postgresql still needs; None once passes reach it."""
        if self.database.relation is None:
            return ops.BlockedStatus(
                "integrate with a postgresql charm: juju integrate runner-fs postgresql"
            )
        if self.database.login is None:
            return ops.WaitingStatus(
                "waiting for database credentials from postgresql (harvests go to a local file)"
            )
        if record.get("storage_down"):
            return ops.WaitingStatus(
                f"postgresql unreachable, filesystems wait for it: {record.get('problem')!s:.160}"
            )
        return None


if __name__ == "__main__":  # pragma: nocover
    ops.main(RunnerFsCharm)
