"""One harvest pass: push the metrics of finished runners exactly once, then delete them.

Order per batch of filesystems: read and validate each, `push_many` (every runner's frames and
ledger key in one transaction), then delete them. A kill between the push and the deletes
leaves the filesystems for the next pass, whose push finds the keys and stores nothing: no
metric lost, none twice.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runner_fs import tallies
from runner_fs.errors import (
    CorruptMetricDataError,
    MetricsStorageError,
    StorageDataError,
    StorageError,
)
from runner_fs.metrics.events import to_dataframes
from runner_fs.metrics.runner import (
    CLOCK_SKEW,
    POST_JOB_FILE,
    apply_labels,
    read_runner_metrics,
)
from runner_fs.shared_fs import FilesystemInfo, FilesystemRecord, SharedFilesystemManager
from runner_fs.storage import BaseStorage, Harvest

logger = logging.getLogger(__name__)

RECONCILE_LOCK = "reconcile"
DELETERS = 4  # filesystems deleted at once: unmounts wait on the kernel, not the CPU
LAST_RECONCILE_FILE = "last-reconcile.json"
Progress = Callable[[int, int], None]


@dataclasses.dataclass
class ReconcileResult:
    """What one pass did; `errors` counts problems, each logged once; `problem` is the first."""

    harvested: int = 0
    quarantined: int = 0
    skipped: int = 0
    datapoints: int = 0
    errors: int = 0
    problem: str | None = None
    duration: float = 0.0  # seconds
    storage_down: bool = False  # the storage backend failed: nothing could be pushed

    def as_dict(self) -> dict[str, int]:
        """Return the counts by name."""
        return {
            "harvested": self.harvested,
            "quarantined": self.quarantined,
            "skipped": self.skipped,
            "datapoints": self.datapoints,
            "errors": self.errors,
        }

    def fail(self, message: str) -> None:
        """Log one problem and count it."""
        logger.error("%s", message)
        self.errors += 1
        self.problem = self.problem or message


@dataclasses.dataclass(frozen=True)
class _Ready:
    """A runner read and validated, waiting for its batch's push."""

    record: FilesystemRecord
    state: str
    harvest: Harvest
    points: int


def _described(exc: BaseException) -> str:
    """Name an unexpected failure in one bounded line (never a traceback of runner data)."""
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def filesystem_state(
    info: FilesystemInfo, now: datetime.datetime, max_runner_age: datetime.timedelta
) -> str:
    """Return running, finished, released, expired or broken; all but running are harvested."""
    if info.broken or info.record is None:
        return "broken"
    if _exists(info.path / POST_JOB_FILE):
        return "finished"
    if info.record.released:
        return "released"
    if now - info.record.created > max_runner_age:
        return "expired"
    return "running"


def at_tenth(done: int, total: int) -> bool:
    """Whether `done` of `total` crosses a tenth of the way (the last step always does)."""
    return done * 10 // total != (done - 1) * 10 // total


def list_filesystems(
    manager: SharedFilesystemManager, max_runner_age: datetime.timedelta, mount: bool = True
) -> list[dict[str, Any]]:
    """Describe every filesystem as `list` shows it: sizes in bytes, `created` ISO 8601 UTC.

    `path` is the mount point (mounted or not: `get` mounts it again).
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    return [
        {
            "runner": info.runner,
            "path": str(info.path),
            "mounted": info.mounted,
            "size": info.record.size if info.record else None,
            "used": info.used,
            "created": info.record.created.isoformat() if info.record else None,
            "released": info.record.released if info.record else None,
            "state": filesystem_state(info, now, max_runner_age),
        }
        for info in manager.list_info(mount)
    ]


def last_reconcile(base_dir: Path) -> dict[str, Any] | None:
    """Return the last pass's record, or None before the first.

    Keys: `ended` (ISO 8601 UTC), the counts, `problem` (the first error, or None),
    `storage_down` (whether the storage backend failed),
    `duration_seconds`, `errors_total` (errors of every pass so far), `last_success` (when a
    pass last ended without an error, or None) and `since` (when passes were set up here, if
    that was noted before the first pass).
    """
    try:
        data = json.loads((base_dir / LAST_RECONCILE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_reconcile(base_dir: Path, result: ReconcileResult) -> None:
    """Keep what the last pass (or a pass that could not start) did, for status and checks."""
    ended = _utc_now()
    previous = last_reconcile(base_dir) or {}
    success = ended if not result.errors else previous.get("last_success")
    record: dict[str, Any] = {"ended": ended, **result.as_dict(), "problem": result.problem}
    record["storage_down"] = result.storage_down
    record |= {
        "duration_seconds": round(result.duration, 3),
        "errors_total": int(previous.get("errors_total") or 0) + result.errors,
        "last_success": success,
        "since": previous.get("since"),
    }
    _write_record(base_dir, record)


def start_harvest_clock(base_dir: Path) -> None:
    """Note when passes were set up here, unless a pass already ran (stalls count from it)."""
    if last_reconcile(base_dir) is None:
        _write_record(base_dir, {"since": _utc_now(), "last_success": None})


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_record(base_dir: Path, record: dict[str, Any]) -> None:
    path = base_dir / LAST_RECONCILE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, path)


def _exists(path: Path) -> bool:
    """Whether anything is at `path`, a link or FIFO included (never followed or opened)."""
    try:
        os.lstat(path)
    except OSError:
        return False
    return True


@dataclasses.dataclass
class Reconciler:
    """Harvests one host's filesystems into one storage backend.

    Attributes:
        manager: the host's filesystems.
        storage: where datapoints go (initialised).
        unit: this host's identity, the `unit` groupby and the ledger key prefix.
        max_runner_age: a filesystem older than this is harvested even if its runner runs on.
        retention: datapoints older than this are deleted from storage after each pass.
        rates: price per hour by flavor.
        lock_timeout: seconds to wait for another pass before giving up.
        quarantine_retention: archives older than this are removed after each pass.
        quarantine_max_bytes: the oldest archives are removed while they exceed this.
        batch: runners pushed in one storage transaction, then deleted.
    """

    manager: SharedFilesystemManager
    storage: BaseStorage
    unit: str
    max_runner_age: datetime.timedelta = datetime.timedelta(hours=24)
    retention: datetime.timedelta | None = None
    rates: Mapping[str, decimal.Decimal] = dataclasses.field(default_factory=dict)
    lock_timeout: float = 60.0
    quarantine_retention: datetime.timedelta | None = None
    quarantine_max_bytes: int | None = None
    batch: int = 256

    def run(self, progress: Progress | None = None) -> ReconcileResult:
        """Run one pass under the reconcile lock.

        Raises:
            LockTimeoutError: another pass held the lock for the whole wait (names its pid).
        """
        result = ReconcileResult()
        started = time.monotonic()
        with (
            self.manager.lock(RECONCILE_LOCK, self.lock_timeout),
            ThreadPoolExecutor(DELETERS, thread_name_prefix="delete") as deleters,
        ):
            now = datetime.datetime.now(datetime.timezone.utc)
            infos = self.manager.list_info()
            done = itertools.count(1)

            def step() -> None:
                number = next(done)
                if progress:
                    progress(number, len(infos))

            batch: list[tuple[Path, FilesystemRecord, str]] = []
            storage_ok = True
            for info in infos:
                state = filesystem_state(info, now, self.max_runner_age)
                if state == "running":
                    result.skipped += 1
                    step()
                elif state == "broken" or info.record is None:
                    result.fail(f"runner {info.runner}: broken ({info.broken})")
                    self._quarantine(info.runner, info.record, result)
                    step()
                else:
                    batch.append((info.path, info.record, state))
                if len(batch) == self.batch or (batch and info is infos[-1]):
                    storage_ok = self._harvest(batch, storage_ok, result, deleters, step)
                    batch = []
            if storage_ok:
                self._apply_retention(now, result)
            self._prune_quarantine(result)
            result.duration = time.monotonic() - started
            record_reconcile(self.manager.base_dir, result)
        logger.info("reconcile: %s", result.as_dict())
        return result

    def _harvest(
        self,
        batch: list[tuple[Path, FilesystemRecord, str]],
        storage_ok: bool,
        result: ReconcileResult,
        deleters: ThreadPoolExecutor,
        step: Callable[[], None],
    ) -> bool:
        """Harvest a batch: read each, push all in one transaction, delete; return storage ok."""
        ready: list[_Ready] = []
        for path, record, state in batch:
            try:  # the boundary: whatever a runner wrote fails here, as that runner's fault
                harvest, points = self._read(path, record)
            except Exception as exc:  # any type: one runner never stops a pass
                reason = exc if isinstance(exc, CorruptMetricDataError) else _described(exc)
                logger.warning(
                    "runner %s: hostile or corrupt metrics, quarantining: %s", record.runner,
                    reason, extra={"event": "hostile", "runner": record.runner},
                )  # fmt: skip
                self._quarantine(record.runner, record, result)
                step()
                continue
            if not storage_ok:
                result.skipped += 1
                step()
                continue
            ready.append(_Ready(record, state, harvest, points))
        if not ready:
            return storage_ok
        try:
            stored = self._push(ready, result)
        except StorageError as exc:
            result.fail(f"storage failed; filesystems wait for the next pass: {exc}")
            result.storage_down = True
            result.skipped += len(ready)
            for _ in ready:
                step()
            return False
        pushed = [
            (entry, was) for entry, was in zip(ready, stored, strict=True) if was is not None
        ]
        for _ in range(len(ready) - len(pushed)):
            step()  # quarantined by _push
        # Stored: now each filesystem can go; the kernel's unmounts overlap in threads.
        deletions = [deleters.submit(self.manager.delete, e.record.runner) for e, _ in pushed]
        for (entry, was_stored), deletion in zip(pushed, deletions, strict=True):
            name, state, points = entry.record.runner, entry.state, entry.points
            new_points = points if was_stored else 0
            result.datapoints += new_points
            try:
                deletion.result()
            except (MetricsStorageError, OSError) as exc:
                result.fail(f"runner {name}: harvested but not deleted: {exc}")
            else:
                result.harvested += 1
                logger.info(
                    "harvested runner %s (%s): %d datapoints", name, state, new_points,
                    extra={"event": "harvest", "runner": name, "state": state,
                           "datapoints": new_points},
                )  # fmt: skip
            step()
        return True

    def _read(self, path: Path, record: FilesystemRecord) -> tuple[Harvest, int]:
        """Read, validate and price one runner's metrics; return its harvest and point count.

        Every timestamp must lie between the filesystem's creation and now (each widened by
        the clock-skew allowance); the provisioner's `repository`/`owner` labels bind it.
        """
        created = record.created.timestamp()
        window = (created - CLOCK_SKEW, time.time() + CLOCK_SKEW)
        metrics = read_runner_metrics(path, window=window)
        frames = []
        if metrics is not None:
            metrics = apply_labels(metrics, record.labels)
            flavor = record.labels.get("flavor") or self.manager.flavor
            frames = to_dataframes(metrics, record.runner, self.unit, flavor, self.rates)
        points = sum(1 for frame in frames for _ in frame.iterpoints())
        counts = {(self.unit, series): n for series, n in tallies.harvested(frames).items()}
        return (f"{self.unit}/{record.runner}/{record.uuid}", frames, counts), points

    def _push(self, ready: list[_Ready], result: ReconcileResult) -> list[bool | None]:
        """Push a batch; where storage refuses a value, split it to find the runner at fault.

        Returns:
            Per runner: whether its frames were stored now (False: stored before), or None
            when the storage refused its data (it is then quarantined).

        Raises:
            StorageError: the storage itself failed.
        """
        try:
            return list(self.storage.push_many([entry.harvest for entry in ready]))
        except StorageDataError as exc:
            if len(ready) > 1:
                half = len(ready) // 2
                return self._push(ready[:half], result) + self._push(ready[half:], result)
            record = ready[0].record
            logger.warning(
                "runner %s: storage refused its metrics, quarantining: %s", record.runner, exc,
                extra={"event": "hostile", "runner": record.runner},
            )  # fmt: skip
            self._quarantine(record.runner, record, result)
            return [None]

    def _quarantine(
        self, name: str, record: FilesystemRecord | None, result: ReconcileResult
    ) -> None:
        """Count the quarantine (exactly once, by its ledger key), then quarantine."""
        if record is not None:
            counts = {(self.unit, series): n for series, n in tallies.quarantined().items()}
            try:
                self.storage.push_once(f"{self.unit}/{name}/{record.uuid}/quarantine", [], counts)
            except StorageError as exc:
                logger.warning("runner %s: quarantine not counted: %s", name, exc)
        try:
            self.manager.move_to_quarantine(name)  # logs where the archive is
        except (MetricsStorageError, OSError) as exc:
            result.fail(f"runner {name}: cannot quarantine: {exc}")
            return
        result.quarantined += 1

    def _prune_quarantine(self, result: ReconcileResult) -> None:
        if self.quarantine_retention is None and self.quarantine_max_bytes is None:
            return
        try:
            self.manager.prune_quarantine(
                self.quarantine_retention or datetime.timedelta.max,
                self.quarantine_max_bytes if self.quarantine_max_bytes is not None else 1 << 62,
            )
        except OSError as exc:
            result.fail(f"quarantine housekeeping: {exc}")

    def _apply_retention(self, now: datetime.datetime, result: ReconcileResult) -> None:
        if self.retention is None:
            return
        try:
            self.storage.delete(end=now - self.retention)
        except StorageError as exc:
            result.fail(f"retention: cannot delete old datapoints: {exc}")
