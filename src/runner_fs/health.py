"""Whether a host's harvests are healthy: one rule each, for the charm's status and Nagios.

Each check returns a `Finding` with a Nagios code (0 OK, 1 WARNING, 2 CRITICAL) and a line
that says what is wrong and what to look at.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path

from runner_fs.reconcile import last_reconcile

OK, WARNING, CRITICAL = 0, 1, 2
STALE_INTERVALS = 3  # passes missed before harvesting counts as stalled


@dataclasses.dataclass(frozen=True)
class Finding:
    """A check's result: a Nagios code and what it means."""

    code: int
    message: str


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def last_pass(base_dir: Path) -> Finding:
    """CRITICAL when the last pass failed (or could not start), with its first problem."""
    record = last_reconcile(base_dir) or {}
    if record.get("errors"):
        return Finding(
            CRITICAL,
            f"last harvest ({record.get('ended')}) failed: {record.get('problem')!s:.200}",
        )
    return Finding(OK, f"last harvest: {record.get('ended', 'none yet')}")


def freshness(base_dir: Path, interval: datetime.timedelta) -> Finding:
    """CRITICAL when no pass has succeeded for `STALE_INTERVALS` intervals.

    Counted from the last successful pass, else from when passes were set up
    (`start_harvest_clock`); a host where neither happened is not judged.
    """
    record = last_reconcile(base_dir) or {}
    start_text = record.get("last_success") or record.get("since")
    start = datetime.datetime.fromisoformat(start_text) if start_text else None
    if start is not None and _now() - start > STALE_INTERVALS * interval:
        return Finding(
            CRITICAL,
            f"no harvest since {start_text}: is the timer running?"
            " systemctl status runner-fs-reconcile.timer",
        )
    return Finding(OK, f"last successful harvest: {record.get('last_success') or 'none yet'}")


def free_space(base_dir: Path, warning: float, critical: float) -> Finding:
    """WARNING or CRITICAL when the free share of `base_dir`'s filesystem is below a percentage."""
    stats = os.statvfs(base_dir)
    free = 100 * stats.f_bavail / stats.f_blocks if stats.f_blocks else 0.0
    line = f"{free:.1f}% free under {base_dir} ({stats.f_bavail * stats.f_frsize} bytes)"
    if free < critical:
        return Finding(CRITICAL, line)
    if free < warning:
        return Finding(WARNING, line)
    return Finding(OK, line)
