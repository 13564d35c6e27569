"""CloudKitty v2 storage drivers that delegate to runner-fs backends.

Import this module only where CloudKitty is installed: CloudKitty's loader does, through the
`cloudkitty.storage.v2.backends` entry points `runner_fs_sqlite` and `runner_fs_postgresql`.
Settings come from the oslo.config group `[storage_runner_fs]`.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from cloudkitty import dataframe as ck_dataframe
from cloudkitty.storage import v2 as ck_v2
from oslo_config import cfg

from runner_fs.storage import BaseStorage, backend_class

CONFIG_GROUP = "storage_runner_fs"
cfg.CONF.register_opts(
    [
        cfg.StrOpt(
            "sqlite_path",
            default="/var/lib/cloudkitty/runner-fs.db",
            help="SQLite file of the runner_fs_sqlite backend; a new file is an empty store.",
        ),
        cfg.StrOpt(
            "postgresql_dsn",
            secret=True,
            help="libpq connection string or URI of the runner_fs_postgresql backend's database.",
        ),
    ],
    CONFIG_GROUP,
)


class _Delegating(ck_v2.BaseStorage):
    """A CloudKitty backend whose work is done by one runner-fs backend."""

    backend_name: ClassVar[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Build the runner-fs backend from `[storage_runner_fs]`; ignore CloudKitty's kwargs."""
        super().__init__(*args, **kwargs)
        self.backend: BaseStorage = backend_class(self.backend_name)(**self._options())

    @abc.abstractmethod
    def _options(self) -> dict[str, Any]:
        """Return the runner-fs backend's options, read from `[storage_runner_fs]`."""

    def init(self) -> None:
        """Create the schema if missing."""
        self.backend.init()

    def push(self, dataframes: list, scope_id: str | None = None) -> None:
        """Store CloudKitty DataFrames; `scope_id` is ignored (v1 legacy)."""
        self.backend.push(dataframes)

    def retrieve(self, *args: Any, **kwargs: Any) -> dict:
        """Return matching points as CloudKitty DataFrames."""
        result = self.backend.retrieve(*args, **kwargs)
        return {
            "total": result["total"],
            "dataframes": [_to_cloudkitty(f) for f in result["dataframes"]],
        }

    def total(self, groupby: list[str] | None = None, *args: Any, **kwargs: Any) -> dict:
        """Aggregate, after CloudKitty's own parsing of `time-d/w/m/y` groupbys."""
        return self.backend.total(
            self.parse_groupby_syntax_to_groupby_elements(groupby), *args, **kwargs
        )

    def delete(self, begin: Any = None, end: Any = None, filters: dict | None = None) -> None:
        """Delete matching points; a None bound is open."""
        self.backend.delete(begin, end, filters)


def _to_cloudkitty(frame: Any) -> ck_dataframe.DataFrame:
    converted = ck_dataframe.DataFrame(frame.start, frame.end)
    for metric_type, point in frame.iterpoints():
        converted.add_point(ck_dataframe.DataPoint(*point), metric_type)
    return converted


class SQLiteStorage(_Delegating):
    """`runner_fs_sqlite`: the embedded SQLite backend, file from `sqlite_path`."""

    backend_name = "sqlite"

    def _options(self) -> dict[str, Any]:
        return {"path": cfg.CONF[CONFIG_GROUP].sqlite_path}


class PostgreSQLStorage(_Delegating):
    """`runner_fs_postgresql`: the fleet's PostgreSQL database, from `postgresql_dsn`."""

    backend_name = "postgresql"

    def _options(self) -> dict[str, Any]:
        return {"dsn": cfg.CONF[CONFIG_GROUP].postgresql_dsn or ""}
