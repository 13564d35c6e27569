"""The storage-manager contract for per-runner metric filesystems (as in github-runner-manager)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class MetricsStorage:
    """One runner's metric filesystem.

    Attributes:
        path: the host mount point the runner writes its metric files into.
        runner_name: the runner it belongs to.
    """

    path: Path
    runner_name: str


class StorageManagerProtocol(Protocol):
    """What the reconcile and the command line need from a storage manager."""

    def create(self, runner_name: str, **labels: str) -> MetricsStorage:
        """Create and mount a new filesystem for a runner."""
        ...

    def list_all(self) -> Iterator[MetricsStorage]:
        """Yield every healthy filesystem, mounted."""
        ...

    def get(self, runner_name: str) -> MetricsStorage:
        """Return a runner's filesystem, mounted."""
        ...

    def delete(self, runner_name: str) -> None:
        """Unmount and remove a runner's filesystem."""
        ...

    def move_to_quarantine(self, runner_name: str) -> Path:
        """Archive a runner's filesystem, remove it, and return the archive path."""
        ...
