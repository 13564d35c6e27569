#!/usr/bin/env python3
"""The runner-fs machine charm: Juju events, config and actions over the `runner_fs` core."""

from __future__ import annotations

import collections
import json
import logging
from pathlib import Path

import ops

from charm_state import CharmState, InvalidConfigError
from database import DatabaseRequirer
from machine import Machine
from runner_fs import archive, host
from runner_fs.config import ConfigError, load_config
from runner_fs.errors import RunnerFsError
from runner_fs.reconcile import at_tenth, last_reconcile, list_filesystems
from runner_fs.report import parse_instant, parse_list, report

logger = logging.getLogger(__name__)

HOST_ROOT = Path("/")  # where the machine's files live; tests point it at a directory


class ReconcileEvent(ops.EventBase):
    """Time to harvest finished runners (dispatched by the reconcile timer)."""


class RunnerFsEvents(ops.CharmEvents):
    """The standard events and `reconcile`."""

    reconcile = ops.EventSource(ReconcileEvent)


class RunnerFsCharm(ops.CharmBase):
    """Per-runner loopback filesystems, harvested into metrics storage."""

    on = RunnerFsEvents()

    def __init__(self, framework: ops.Framework) -> None:
        """Observe the events this charm handles."""
        super().__init__(framework)
        self.machine = Machine(HOST_ROOT)
        self.database = DatabaseRequirer(self)
        database = self.on[self.database.relation_name]
        for event in (
            self.on.install, self.on.config_changed, self.on.upgrade_charm, self.on.secret_changed,
            database.relation_changed, database.relation_broken,
        ):  # fmt: skip
            framework.observe(event, self._on_converge)
        framework.observe(self.on.start, self._on_start)
        framework.observe(self.on.stop, self._on_stop)
        framework.observe(self.on.remove, self._on_stop)
        framework.observe(self.on.reconcile, self._on_reconcile)
        framework.observe(self.on.list_action, self._on_list_action)
        framework.observe(self.on.quarantine_action, self._on_quarantine_action)
        framework.observe(self.on.reconcile_action, self._on_reconcile_action)
        framework.observe(self.on.report_action, self._on_report_action)
        framework.observe(self.on.collect_unit_status, self._on_collect_unit_status)

    # -- state ---------------------------------------------------------------------------

    def _state(self, use_database: bool = True) -> CharmState:
        dsn = self.database.dsn() if use_database else None
        return CharmState.from_config(self.config, self.unit.name, self.machine.base_dir, dsn)

    # -- lifecycle -----------------------------------------------------------------------

    def _state_in_use(self) -> CharmState:
        """Return the state harvests may use: PostgreSQL only once the local store is in it.

        While moving the local SQLite store into PostgreSQL fails, harvests go on into the
        local file and the next event tries again.

        Raises:
            InvalidConfigError: an option is invalid.
        """
        state = self._state()
        if state.host.storage_backend == "postgresql":
            try:
                if state.host.move_local_store():
                    logger.info("local metrics copied into PostgreSQL")
            except RunnerFsError as exc:
                logger.error("metrics stay local for now: %s", exc)
                return self._state(use_database=False)
        return state

    def _converge(self) -> CharmState | None:
        """Render the host config, timer and wrapper; None when the config is invalid."""
        try:
            state = self._state_in_use()
        except InvalidConfigError as exc:
            logger.warning("not converging: %s", exc)
            return None
        self.machine.converge(state, self.unit.name, self.charm_dir)
        return state

    def _on_converge(self, event: ops.EventBase) -> None:
        state = self._converge()
        if state and isinstance(event, ops.UpgradeCharmEvent):
            state.host.storage().close()  # init() upgrades the schema; nothing is unmounted

    def _on_start(self, _: ops.StartEvent) -> None:
        """Converge, then mount every filesystem again (a reboot unmounted them)."""
        state = self._converge()
        if state and host.LOOP_CONTROL.exists():
            mounted = sum(1 for _ in state.host.manager().list_all())
            logger.info("%d filesystems mounted", mounted)

    def _on_stop(self, _: ops.EventBase) -> None:
        """Remove the timer and wrapper; unmount filesystems, keeping their images."""
        self.machine.remove()
        try:
            state = self._state()
        except InvalidConfigError:
            return
        unmounted = state.host.manager().unmount_all()
        logger.info("unmounted %d filesystems; images, archives and metrics are kept", unmounted)

    def _on_reconcile(self, _: ReconcileEvent) -> None:
        """Run one harvest pass (the timer's event)."""
        try:
            counts = self._run_reconcile()
        except (InvalidConfigError, RunnerFsError) as exc:
            logger.error("reconcile not run: %s", exc)
            return
        logger.info("reconcile: %s", counts)

    def _run_reconcile(self, event: ops.ActionEvent | None = None) -> dict[str, int]:
        """Converge (a pending move into PostgreSQL is retried), then harvest where it says."""
        state = self._state_in_use()
        self.machine.converge(state, self.unit.name, self.charm_dir)
        reconciler = state.host.reconciler()

        def progress(done: int, total: int) -> None:
            if event and at_tenth(done, total):
                event.log(f"{done}/{total} filesystems")

        with reconciler.storage:
            return reconciler.run(progress).as_dict()

    # -- actions -------------------------------------------------------------------------

    def _on_list_action(self, event: ops.ActionEvent) -> None:
        try:
            state = self._state()
        except InvalidConfigError as exc:
            event.fail(str(exc))
            return
        rows = list_filesystems(state.host.manager(), state.host.max_age)
        counts = collections.Counter(row["state"] for row in rows)
        event.set_results({"filesystems": json.dumps(rows), "counts": json.dumps(counts)})

    def _on_quarantine_action(self, event: ops.ActionEvent) -> None:
        try:
            path = self._state().host.manager().move_to_quarantine(event.params["runner"])
        except (ValueError, RunnerFsError) as exc:
            event.fail(str(exc))
            return
        event.set_results({"archive": str(path), "sha256": archive.sha256_of(path)})

    def _on_reconcile_action(self, event: ops.ActionEvent) -> None:
        try:
            counts = self._run_reconcile(event)
        except (InvalidConfigError, RunnerFsError) as exc:
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
        try:
            state = self._state()
        except InvalidConfigError as exc:
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
        if self.config.get("storage-backend") == "postgresql":
            waiting = self._database_status()
            if waiting:
                event.add_status(waiting)
                return
        manager = state.host.manager()
        filesystems = len(manager.runner_names())
        quarantined = len(list(manager.quarantine_dir.glob("*.tar.gz")))
        last = last_reconcile(manager)
        when = last["ended"] if last else "not yet"
        event.add_status(
            ops.ActiveStatus(
                f"filesystems: {filesystems}, quarantined: {quarantined}, last reconcile: {when}"
            )
        )

    def _database_status(self) -> ops.StatusBase | None:
        """Say what storage-backend=postgresql still waits for; None once it is in use."""
        if self.database.relation is None:
            return ops.BlockedStatus(
                "integrate with a postgresql charm: juju integrate runner-fs postgresql"
            )
        if self.database.dsn() is None:
            return ops.WaitingStatus("waiting for database credentials from postgresql")
        try:
            rendered = load_config(self.machine.config_path).storage_backend
        except ConfigError:
            rendered = None
        if rendered != "postgresql":
            return ops.WaitingStatus(
                "postgresql unreachable: harvests go to the local file until it answers"
                " (see juju debug-log)"
            )
        return None


if __name__ == "__main__":  # pragma: nocover
    ops.main(RunnerFsCharm)
