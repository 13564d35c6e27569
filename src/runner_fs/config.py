"""The host config file the command line reads (rendered by the charm), validated with pydantic."""

from __future__ import annotations

import datetime
import decimal
import logging
import os
import pwd
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runner_fs.errors import RunnerFsError, StorageError
from runner_fs.metrics.events import parse_rates
from runner_fs.reconcile import (
    RECONCILE_LOCK,
    Progress,
    Reconciler,
    ReconcileResult,
    record_reconcile,
)
from runner_fs.shared_fs import (
    SharedFilesystemManager,
    parse_bytes,
    parse_size,
    resolve_owner,
)
from runner_fs.storage import BaseStorage, get_storage
from runner_fs.storage.sql import SQLStorage
from runner_fs.storage.sqlite import SQLiteStorage

logger = logging.getLogger(__name__)

DEFAULT_PATH = Path("/etc/runner-fs/config.yaml")
CONFIG_ENV = "RUNNER_FS_CONFIG"
DEFAULT_OWNER = "ubuntu:ubuntu"
DEFAULT_BASE_DIR = Path("/var/lib/runner-fs")


class ConfigError(ValueError):
    """The host config file is missing, unreadable or invalid."""


class HostConfig(BaseModel):
    """Settings shared by the charm and the command line; keys as the charm's options."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=lambda name: name.replace("_", "-"), frozen=True
    )

    base_dir: Path = DEFAULT_BASE_DIR
    filesystem_size: str = "1M"
    filesystem_owner: str = DEFAULT_OWNER
    flavor: str = ""
    max_runner_age: float = Field(24, gt=0, description="hours")
    retention_period: float = Field(2400, gt=0, description="hours")
    rates: str = ""
    quarantine_retention: float = Field(30, gt=0, description="days")
    quarantine_max_size: str = "1G"
    harvest_batch: int = Field(256, ge=1, le=10_000, description="runners per transaction")
    storage_backend: Literal["sqlite", "postgresql"] = "sqlite"
    storage_options: dict[str, str] = Field(default_factory=dict)
    event_log: Path | None = None
    unit: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)

    @field_validator("filesystem_size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    @field_validator("filesystem_owner")
    @classmethod
    def _owner(cls, value: str) -> str:
        if value != DEFAULT_OWNER:  # the default may be absent (Debian): see `owner`
            resolve_owner(value)
        return value

    @field_validator("quarantine_max_size")
    @classmethod
    def _bytes(cls, value: str) -> str:
        parse_bytes(value)
        return value

    @field_validator("rates")
    @classmethod
    def _rates(cls, value: str) -> str:
        parse_rates(value)
        return value

    @field_validator("base_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"must be an absolute path, not {str(value)!r:.80}")
        return value

    @property
    def owner(self) -> str | None:
        """The owner of new filesystems; the default `ubuntu` falls back to root where absent."""
        if self.filesystem_owner == DEFAULT_OWNER:
            try:
                pwd.getpwnam("ubuntu")
            except KeyError:
                return None
        return self.filesystem_owner

    @property
    def rate_table(self) -> dict[str, decimal.Decimal]:
        """Price per hour by flavor."""
        return parse_rates(self.rates)

    @property
    def max_age(self) -> datetime.timedelta:
        """`max-runner-age` as a duration."""
        return datetime.timedelta(hours=self.max_runner_age)

    @property
    def retention(self) -> datetime.timedelta:
        """`retention-period` as a duration."""
        return datetime.timedelta(hours=self.retention_period)

    @property
    def local_store(self) -> Path:
        """The SQLite file of the `sqlite` backend, unless `storage-options` names another."""
        return Path(self.storage_options.get("path", self.base_dir / "metrics.db"))

    def backend_options(self) -> dict[str, Any]:
        """Options for `get_storage`: SQLite's `path` is `local_store`."""
        options: dict[str, Any] = {"retention_period": self.retention_period}
        if self.storage_backend == "sqlite":
            options["path"] = self.local_store
        return options | dict(self.storage_options)

    def move_local_store(self, lock_timeout: float = 60.0) -> bool | None:
        """Copy the local SQLite store into a remote backend once, at the start of a pass.

        Returns:
            None if there is nothing to move, else whether the copy was made now (False: the
            remote store already had it).

        Raises:
            StorageError: either store failed; the local file is kept.
            LockTimeoutError: a reconcile pass held the lock for the whole wait.
        """
        local = self.local_store
        if self.storage_backend == "sqlite" or not local.exists():
            return None
        with self.storage() as target, self.manager().lock(RECONCILE_LOCK, lock_timeout):
            if not isinstance(target, SQLStorage):
                raise StorageError(f"cannot copy the local store into {self.storage_backend}")
            source = SQLiteStorage(path=local)
            source.init()
            return source.move_into(target)

    def manager(self) -> SharedFilesystemManager:
        """Return the filesystem manager these settings describe."""
        return SharedFilesystemManager(
            self.base_dir, self.filesystem_size, self.owner, self.flavor
        )

    def storage(self) -> BaseStorage:
        """Open the configured storage backend (schema created if missing).

        Raises:
            StorageError: the backend is missing or cannot start.
        """
        return get_storage(self.storage_backend, **self.backend_options())

    def reconciler(self, lock_timeout: float = 60.0) -> Reconciler:
        """Return a reconcile pass over this host's filesystems into its storage.

        Raises:
            StorageError: the storage backend cannot start.
        """
        return Reconciler(
            self.manager(),
            self.storage(),
            self.unit,
            max_runner_age=self.max_age,
            retention=self.retention,
            rates=self.rate_table,
            lock_timeout=lock_timeout,
            quarantine_retention=datetime.timedelta(days=self.quarantine_retention),
            quarantine_max_bytes=parse_bytes(self.quarantine_max_size),
            batch=self.harvest_batch,
        )

    def reconcile(
        self, progress: Progress | None = None, lock_timeout: float = 60.0
    ) -> ReconcileResult:
        """Run one harvest pass; a pass that cannot start is recorded as failed too.

        A local store left from before PostgreSQL was reachable is moved into it first.

        Raises:
            StorageError: the storage backend cannot start.
            LockTimeoutError: another pass held the lock for the whole wait.
        """
        try:
            if self.move_local_store(lock_timeout):
                logger.info("local metrics store copied into %s", self.storage_backend)
            reconciler = self.reconciler(lock_timeout)
            with reconciler.storage:
                return reconciler.run(progress)
        except RunnerFsError as exc:
            if self.base_dir.is_dir():
                failed = ReconcileResult(
                    errors=1, problem=str(exc), storage_down=isinstance(exc, StorageError)
                )
                record_reconcile(self.base_dir, failed)
            raise


def load_config(path: Path | None = None) -> HostConfig:
    """Load the config file: `path`, else `$RUNNER_FS_CONFIG`, else the default path.

    Only the default path may be absent (the defaults apply).

    Raises:
        ConfigError: the file is missing (when named), unreadable, or has a bad key or value;
            the message names the key and the rule.
    """
    named = path or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    source = named or DEFAULT_PATH
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        if named:
            raise ConfigError(f"config file {source} does not exist") from None
        data = {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {source}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {source} must be a mapping of keys to values")
    try:
        return HostConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config file {source}: {describe(exc)}") from None


def describe(exc: ValidationError, dashes: bool = False) -> str:
    """Say which keys are wrong, with what value, and the rule, in one line.

    With `dashes`, field names are shown as the options they come from (`max_runner_age` as
    `max-runner-age`).
    """
    problems = []
    for error in exc.errors():
        key = ".".join(map(str, error["loc"])) or "file"
        key = key.replace("_", "-") if dashes else key
        value = f"={error['input']!r:.60}" if error["type"] != "extra_forbidden" else ""
        problems.append(f"{key}{value}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)
