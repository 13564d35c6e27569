"""Run CloudKitty's own processor calls against its configured storage, in a process of its own.

`python cloudkitty_processor.py CONFIG_FILE STEP`: CloudKitty builds the storage driver with
`storage.get_storage()` and never calls `init()`. The collector is the one stand-in: it
answers every period with one `runner.job` point of `QTY` seconds (environment, default 10)
for the scope. Steps:

- `process SCOPE HOURS`: its `Worker` processes HOURS periods from T0 and pushes each frame.
- `reset SCOPE HOUR`: its RPC `ScopeEndpoint.reset_state` from T0 + HOUR on.
- `reprocess SCOPE FIRST LAST`: a reprocessing schedule of hours FIRST to LAST (as POST
  /v2/task/reprocesses records it), run by its `ReprocessingWorker`.
"""

import datetime
import os
import sys

T0 = datetime.datetime(2026, 11, 2, tzinfo=datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)


class Collector:
    """A stand-in for CloudKitty's collector (the source of usage, not the storage)."""

    conf = {"runner.job": {"unit": "s", "groupby": ["project_id", "flavor"],
                           "metadata": ["runner_name"]}}  # fmt: skip

    def retrieve(self, metric, start, end, scope):
        """Return one point for the period."""
        from cloudkitty import dataframe

        qty = int(os.environ.get("QTY", "10"))
        point = dataframe.DataPoint(
            "s", qty, 0, {"project_id": scope, "flavor": "small"}, {"runner_name": "r"}
        )
        return metric, [point]


def main() -> None:
    """Parse CloudKitty's config, then run one step."""
    from cloudkitty import orchestrator, storage
    from cloudkitty.storage_state import ReprocessingSchedulerDb, StateManager
    from cloudkitty.storage_state.models import ReprocessingScheduler
    from oslo_config import cfg

    config, step, scope, *numbers = sys.argv[1:]
    cfg.CONF(["--config-file", config], project="cloudkitty")
    StateManager().init()  # CloudKitty's own scope state tables, not our store
    driver = storage.get_storage()  # as its processor builds it: never init()ed
    if step == "process":
        for hour in range(int(numbers[0])):
            worker = orchestrator.Worker(Collector(), driver, scope, 0)
            worker.do_execute_scope_processing(T0 + hour * HOUR)
    elif step == "reset":
        endpoint = orchestrator.ScopeEndpoint()
        endpoint.reset_state({}, {
            "scopes": [{"scope_id": scope, "scope_key": "project_id", "fetcher": "keystone",
                        "collector": "gnocchi"}],
            "last_processed_timestamp": (T0 + int(numbers[0]) * HOUR).isoformat(),
        })  # fmt: skip
    elif step == "reprocess":
        first, last = (T0 + int(number) * HOUR for number in numbers)
        StateManager().set_last_processed_timestamp(scope, last, scope_key="project_id")
        naive = {"start_reprocess_time": first.replace(tzinfo=None),
                 "end_reprocess_time": last.replace(tzinfo=None)}  # fmt: skip
        ReprocessingSchedulerDb().persist(
            ReprocessingScheduler(identifier=scope, reason="test", **naive)
        )
        (schedule,) = ReprocessingSchedulerDb().get_all(identifier=[scope])
        orchestrator.ReprocessingWorker(Collector(), driver, schedule, 0).run()


if __name__ == "__main__":
    main()
