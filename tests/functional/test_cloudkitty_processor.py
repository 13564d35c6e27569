"""CloudKitty's own processor writing into runner-fs's store, through our drivers.

Each step runs in a process of its own (`cloudkitty_processor.py`), as CloudKitty's processor
and RPC endpoint do, building the driver with `storage.get_storage()` and never calling
`init()`. Only the collector (where usage comes from) is a stand-in. After each step,
runner-fs's own `retrieve()` must show exactly what the step wrote or removed.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner_fs.storage import get_storage

from .test_cloudkitty_api import cloudkitty_config, store_options

if os.environ.get("RUNNER_FS_REQUIRE_FUNCTIONAL") == "1":
    import cloudkitty  # noqa: F401 (CI must run these: CloudKitty missing is a failure)
else:
    pytest.importorskip(
        "cloudkitty", reason="CloudKitty is not installed: pip install -e .[cloudkitty]"
    )

HERE = Path(__file__).resolve().parent
T0 = datetime.datetime(2026, 11, 2, tzinfo=datetime.timezone.utc)


def _step(config: Path, *args: str, qty: int = 10) -> None:
    done = subprocess.run(
        [sys.executable, HERE / "cloudkitty_processor.py", config, *args],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "QTY": str(qty)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_cloudkittys_worker_reset_and_reprocessing_with_a_stand_in_collector_land_in_our_store(
    request, tmp_path, backend
):
    options, option = store_options(backend, request, tmp_path)
    config = cloudkitty_config(tmp_path, backend, option)
    ours = get_storage(backend, **options)

    def stored() -> list[tuple[int, str, float]]:
        window = ours.retrieve(T0, T0 + datetime.timedelta(days=1), paginate=False)
        return sorted(
            ((frame.start - T0) // datetime.timedelta(hours=1), point.groupby["project_id"],
             float(point.qty))
            for frame in window["dataframes"] for _, point in frame.iterpoints()
        )  # fmt: skip

    _step(config, "process", "project-a", "3")
    _step(config, "process", "project-b", "3")
    processed = stored()
    _step(config, "reset", "project-a", "1")
    reset = stored()
    _step(config, "reprocess", "project-b", "0", "1", qty=20)
    reprocessed = stored()
    ours.close()

    hours = range(3)
    assert processed == sorted((h, p, 10.0) for h in hours for p in ("project-a", "project-b"))
    assert reset == [(0, "project-a", 10.0)] + [(h, "project-b", 10.0) for h in hours]
    # CloudKitty's reprocessing deletes [start, end) and processes start through end.
    assert reprocessed == [
        (0, "project-a", 10.0), (0, "project-b", 20.0), (1, "project-b", 10.0),
        (1, "project-b", 20.0), (2, "project-b", 10.0),
    ]  # fmt: skip
