"""v2 metrics storage with CloudKitty's `BaseStorage` interface, and the backend loader."""

from __future__ import annotations

import abc
import datetime
from collections.abc import Iterable, Mapping, Sequence
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from runner_fs.dataframe import DataFrame
from runner_fs.errors import StorageError

ENTRY_POINT_GROUP = "runner_fs.storage.v2.backends"  # third-party backends
BUILTIN_BACKENDS = {  # found by name: a packed charm has the code but no package metadata
    "sqlite": "runner_fs.storage.sqlite:SQLiteStorage",
    "postgresql": "runner_fs.storage.postgresql:PostgreSQLStorage",
}
DEFAULT_RETENTION_HOURS = 2400
Harvest = tuple[str, Iterable[DataFrame], Mapping[tuple[str, str], int]]
"""A ledger key, its frames, and the amounts to add to `(unit, series)` tallies."""
TIME_GROUPBYS = {
    "time-d": "day_of_the_year",
    "time-w": "week_of_the_year",
    "time-m": "month",
    "time-y": "year",
}


class BaseStorage(abc.ABC):
    """CloudKitty's v2 storage interface, plus `push_once` for exactly-once harvests."""

    def __init__(self, *, retention_period: float = DEFAULT_RETENTION_HOURS, **_: Any) -> None:
        """Keep the retention; unknown options (CloudKitty's `period`, `conf`) are ignored."""
        self.retention_period = float(retention_period)

    @abc.abstractmethod
    def init(self) -> None:
        """Create or upgrade the schema; idempotent, never wipes data."""

    @abc.abstractmethod
    def push(self, dataframes: Iterable[DataFrame], scope_id: str | None = None) -> None:
        """Store frames in one transaction; `scope_id` is ignored (v1 legacy)."""

    @abc.abstractmethod
    def push_once(
        self,
        key: str,
        dataframes: Iterable[DataFrame],
        tallies: Mapping[tuple[str, str], int] | None = None,
    ) -> bool:
        """Store frames, a ledger key and `(unit, series)` tallies in one transaction.

        Nothing is stored if the key is stored already.
        """

    def push_many(self, harvests: Sequence[Harvest]) -> list[bool]:
        """Store several `(key, dataframes, tallies)` as `push_once` does; return each result.

        A backend that can should store them in one transaction; this default stores each in
        its own, which is still exactly once per key.
        """
        return [self.push_once(key, frames, tallies) for key, frames, tallies in harvests]

    @abc.abstractmethod
    def tallies(self, unit: str) -> dict[str, int]:
        """Return the running totals `push_once` added for `unit`, by series."""

    @abc.abstractmethod
    def retrieve(
        self,
        begin: datetime.datetime | None = None,
        end: datetime.datetime | None = None,
        filters: dict | None = None,
        metric_types: str | list[str] | None = None,
        offset: int = 0,
        limit: int = 1000,
        paginate: bool = True,
    ) -> dict:
        """Return `{'total': points, 'dataframes': [frames]}`, points starting in [begin, end)."""

    @abc.abstractmethod
    def total(
        self,
        groupby: list[str] | None = None,
        begin: datetime.datetime | None = None,
        end: datetime.datetime | None = None,
        metric_types: str | list[str] | None = None,
        filters: dict | None = None,
        custom_fields: Any = None,
        offset: int = 0,
        limit: int = 1000,
        paginate: bool = True,
    ) -> dict:
        """Return `{'total': groups, 'results': [{begin, end, qty, rate, *groupby}]}`."""

    @abc.abstractmethod
    def delete(
        self,
        begin: datetime.datetime | None = None,
        end: datetime.datetime | None = None,
        filters: dict | None = None,
    ) -> None:
        """Delete the points starting in [begin, end) that match the filters; None is open."""

    def close(self) -> None:  # noqa: B027 (a backend may hold nothing to close)
        """Release connections; the backend may be used again after `init()`."""

    def __enter__(self) -> BaseStorage:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def get_retention(self) -> datetime.timedelta:
        """Return how long datapoints are kept."""
        return datetime.timedelta(hours=self.retention_period)

    @staticmethod
    def parse_groupby_syntax_to_groupby_elements(groupby: list[str] | None) -> list[str] | None:
        """Turn `time-d/-w/-m/-y` into the attribute names CloudKitty's collector writes.

        Raises:
            ValueError: an unknown `time-` syntax.
        """
        if not groupby:
            return groupby
        for element in groupby:
            if element.startswith("time-") and element not in TIME_GROUPBYS:
                raise ValueError(
                    f"invalid time groupby {element!r:.40}: use one of "
                    f"{', '.join(TIME_GROUPBYS)}, or 'time'"
                )
        return [TIME_GROUPBYS.get(element, element) for element in groupby]


def backend_class(name: str) -> type[BaseStorage]:
    """Return the built-in backend `name`, or the one registered as `name` by another package.

    Raises:
        StorageError: no backend of that name exists.
    """
    if name in BUILTIN_BACKENDS:
        module, _, attribute = BUILTIN_BACKENDS[name].partition(":")
        builtin: type[BaseStorage] = getattr(import_module(module), attribute)
        return builtin
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        names = sorted(
            {*BUILTIN_BACKENDS, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))}
        )
        raise StorageError(f"unknown storage backend {name!r:.40}: available are {names}")
    loaded: type[BaseStorage] = next(iter(found)).load()
    return loaded


def get_storage(name: str, **options: Any) -> BaseStorage:
    """Load the backend registered as `name` and make it ready (`init()`).

    Raises:
        StorageError: no such backend, or it cannot start.
    """
    backend = backend_class(name)(**options)
    try:
        backend.init()
    except BaseException:
        backend.close()  # a connection made before the failure is not left to the collector
        raise
    return backend
