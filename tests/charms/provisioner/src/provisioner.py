#!/usr/bin/env python3
"""A stand-in runner provisioner charm that uses the runner_fs library as a real one would."""

from __future__ import annotations

import json
import time

import ops
from charms.runner_fs.v0.runner_fs import MetricsStorageError, RunnerFsRequirer


class ProvisionerCharm(ops.CharmBase):
    """Starts and finishes simulated runners, each with a filesystem from runner-fs."""

    def __init__(self, framework: ops.Framework) -> None:
        """Ask runner-fs for the configured owner and the flavor `small`."""
        super().__init__(framework)
        owner = str(self.config.get("runner-owner") or "") or None
        self.runner_fs = RunnerFsRequirer(self, owner=owner, flavor="small")
        framework.observe(self.runner_fs.on.ready, self._on_ready)
        framework.observe(self.runner_fs.on.gone, self._on_gone)
        framework.observe(self.on.start_runner_action, self._on_start_runner)
        framework.observe(self.on.finish_runner_action, self._on_finish_runner)

    def _on_ready(self, _: ops.EventBase) -> None:
        self.unit.status = ops.ActiveStatus("runner-fs ready")

    def _on_gone(self, _: ops.EventBase) -> None:
        self.unit.status = ops.WaitingStatus("waiting for runner-fs")

    def _on_start_runner(self, event: ops.ActionEvent) -> None:
        """Create the filesystem; the runner records when its installation started and ended."""
        try:
            storage = self.runner_fs.manager().create(
                event.params["name"], flavor=event.params["flavor"]
            )
        except (ValueError, MetricsStorageError) as exc:
            event.fail(str(exc))
            return
        now = time.time()
        (storage.path / "runner-installation-start.timestamp").write_text(f"{now - 60}")
        (storage.path / "runner-installed.timestamp").write_text(f"{now - 50}")
        event.set_results({"path": str(storage.path)})

    def _on_finish_runner(self, event: ops.ActionEvent) -> None:
        """Write the job files a runner leaves (pre- and post-job), then release the runner."""
        name, job = event.params["name"], event.params["job"]
        try:
            manager = self.runner_fs.manager()
            path = manager.get(name).path
            now = time.time()
            pre = {"timestamp": now - job, "workflow": "ci", "workflow_run_id": "9",
                   "repository": "acme/api", "event": "push"}  # fmt: skip
            (path / "pre-job-metrics.json").write_text(json.dumps(pre))
            post = {"timestamp": now, "status": "normal", "status_info": None}
            (path / "post-job-metrics.json").write_text(json.dumps(post))
            released = manager.release(name)
        except (ValueError, MetricsStorageError) as exc:
            event.fail(str(exc))
            return
        event.set_results({"released": released})


if __name__ == "__main__":  # pragma: nocover
    ops.main(ProvisionerCharm)
