"""Turn one runner's validated metrics into CloudKitty DataFrames (unit of measure: seconds)."""

from __future__ import annotations

import decimal
import re
from collections.abc import Mapping
from datetime import datetime, timezone

from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.metrics.runner import RunnerMetrics

INSTALLATION = "runner.installation"
IDLE = "runner.idle"
JOB = "runner.job"
METRIC_TYPES = (INSTALLATION, IDLE, JOB)
_RATE = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*=\s*(\d+(?:\.\d+)?)\s*")
_MICRO = decimal.Decimal("0.000001")


def parse_rates(text: str) -> dict[str, decimal.Decimal]:
    """Parse `small=0.008,large=0.032` (price per hour by flavor).

    Raises:
        ValueError: an item is not `flavor=number`.
    """
    rates: dict[str, decimal.Decimal] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = _RATE.fullmatch(item)
        if not match:
            raise ValueError(
                f"invalid rate {item!r:.40}: use flavor=price-per-hour, e.g. small=0.008"
            )
        rates[match.group(1)] = decimal.Decimal(match.group(2))
    return rates


def to_dataframes(
    metrics: RunnerMetrics,
    runner_name: str,
    unit: str,
    flavor: str,
    rates: Mapping[str, decimal.Decimal],
) -> list[DataFrame]:
    """Build one frame per metric type whose two endpoints exist.

    Args:
        metrics: the runner's validated metrics.
        runner_name: the runner, kept as metadata.
        unit: the host's identity (groupby `unit`).
        flavor: the runner's flavor (groupby `flavor`).
        rates: price per hour by flavor; 0 for a flavor without one.

    Returns:
        The frames; a negative duration is clamped to 0 (the frame ends where it begins).
    """
    rate = rates.get(flavor, decimal.Decimal(0))
    base = {"unit": unit, "flavor": flavor}
    frames = []

    def add(type_: str, begin: float, end: float, groupby: dict, metadata: dict) -> None:
        end = max(begin, end)
        qty = decimal.Decimal(str(end - begin)).quantize(_MICRO)
        price = (qty * rate / 3600).quantize(decimal.Decimal("1e-9"))
        frame = DataFrame(_utc(begin), _utc(end))
        frame.add_point(DataPoint("s", qty, price, groupby, metadata), type_)
        frames.append(frame)

    if metrics.installation_start is not None:
        add(INSTALLATION, metrics.installation_start, metrics.installed, base,
            {"runner_name": runner_name})  # fmt: skip
    pre, post = metrics.pre_job, metrics.post_job
    if pre is not None:
        job_groupby = {**base, "workflow": pre.workflow, "event": pre.event}
        if pre.repository is not None:  # absent, never null: totals stay on rollups
            job_groupby["repository"] = pre.repository
        job_metadata = {"runner_name": runner_name, "workflow_run_id": pre.workflow_run_id}
        add(IDLE, metrics.installed, pre.timestamp, job_groupby, job_metadata)
        if post is not None:
            code = post.status_info.code if post.status_info else None
            add(JOB, pre.timestamp, post.timestamp, {**job_groupby, "status": post.status},
                {**job_metadata, "status_code": code})  # fmt: skip
    return frames


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)
