"""Running totals of harvests, kept in storage with the harvest itself (exactly once).

Each series is a Prometheus sample name with its labels, as canonical JSON
(`["runner_fs_job_duration_seconds_bucket", {"flavor": "small", "le": "60", ...}]`); values
are integers: histogram buckets count the values that fell in each (not cumulated), sums are
in microseconds. The exporter turns them back into counters and
histograms, so they survive restarts of the exporter and of the machine and count every
harvested runner once: they commit in the same transaction as its datapoints and ledger key.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

from runner_fs.dataframe import DataFrame

HARVESTED = "runner_fs_runners_harvested_total"
QUARANTINED = "runner_fs_runners_quarantined_total"
DATAPOINTS = "runner_fs_datapoints_pushed_total"
# Seconds to days: installation takes seconds to minutes, jobs minutes to hours, idle up to days.
BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800)
HISTOGRAMS = {  # metric type -> (histogram, its labels from the point's groupby)
    "runner.installation": ("runner_fs_installation_duration_seconds", ("flavor",)),
    "runner.idle": ("runner_fs_idle_duration_seconds", ("flavor",)),
    "runner.job": ("runner_fs_job_duration_seconds", ("flavor", "status")),
}
MICRO = 1_000_000


def series(name: str, **labels: str) -> str:
    """Return the stored key of a sample name and its labels."""
    return json.dumps([name, labels], sort_keys=True, separators=(",", ":"))


def parse(key: str) -> tuple[str, dict[str, str]]:
    """Return the sample name and labels of a stored key."""
    name, labels = json.loads(key)
    return str(name), {str(k): str(v) for k, v in labels.items()}


def harvested(frames: Iterable[DataFrame]) -> Counter[str]:
    """Return what harvesting one runner with `frames` adds: counts and histogram samples."""
    totals: Counter[str] = Counter({series(HARVESTED): 1})
    for frame in frames:
        for metric_type, point in frame.iterpoints():
            totals[series(DATAPOINTS)] += 1
            if metric_type not in HISTOGRAMS:
                continue
            name, keys = HISTOGRAMS[metric_type]
            labels = {key: str(point.groupby.get(key) or "") for key in keys}
            seconds = float(point.qty)
            # Only the bucket the value falls in (the exporter adds them up): three rows a
            # point, so a harvest writes a dozen small rows whatever the number of buckets.
            bound = next((str(b) for b in BUCKETS if seconds <= b), "+Inf")
            totals[series(f"{name}_bucket", **labels, le=bound)] += 1
            totals[series(f"{name}_count", **labels)] += 1
            totals[series(f"{name}_sum_us", **labels)] += round(seconds * MICRO)
    return totals


def quarantined() -> Counter[str]:
    """Return what quarantining one runner adds."""
    return Counter({series(QUARANTINED): 1})
