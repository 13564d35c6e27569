"""The charm's settings: Juju config validated once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runner_fs.config import DEFAULT_OWNER, HostConfig, describe

MAX_INTERVAL = 1440  # minutes: a day


class InvalidConfigError(ValueError):
    """A config option has a bad value; the message names it, the value and the rule."""


class CharmConfig(BaseModel):
    """The Juju options (`self.load_config`), dashes read as underscores.

    Options only the charm uses are validated here; those it hands to the host config file are
    validated by the core's `HostConfig`, so a charm-only option never reaches core validation.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    filesystem_size: str = "1M"
    reconcile_interval: int = Field(5, ge=1, le=MAX_INTERVAL, description="minutes")
    max_runner_age: float = 24
    retention_period: float = 2400
    flavor: str = ""
    storage_backend: Literal["sqlite", "postgresql"] = "sqlite"
    filesystem_owner: str = DEFAULT_OWNER
    rates: str = ""
    quarantine_retention: float = 30
    quarantine_max_size: str = "1G"
    metrics_port: int = Field(10242, ge=1, le=65535)
    nagios_context: str = "juju"  # read by charmhelpers' NRPE support
    nagios_servicegroups: str = ""

    def with_requests(self, requested: Mapping[str, str]) -> CharmConfig:
        """Take the provisioner's `owner` and `flavor` where the operator left the default.

        An option the operator set explicitly (any value but its default) wins.
        """
        defaults = CharmConfig.model_construct()
        changes = {
            option: requested[key]
            for key, option in (("owner", "filesystem_owner"), ("flavor", "flavor"))
            if requested.get(key) and getattr(self, option) == getattr(defaults, option)
        }
        return self.model_copy(update=changes) if changes else self

    def host_settings(self) -> dict[str, object]:
        """Return the options the host config file takes, under its keys."""
        charm_only = {
            "reconcile_interval",
            "metrics_port",
            "nagios_context",
            "nagios_servicegroups",
        }
        options = self.model_dump(exclude=charm_only)
        return {key.replace("_", "-"): value for key, value in options.items()}


@dataclasses.dataclass(frozen=True)
class CharmState:
    """What the charm converges the machine to.

    Attributes:
        config: the charm's validated options.
        host: the host config file's settings (the CLI and the core read the same).
    """

    config: CharmConfig
    host: HostConfig

    @property
    def reconcile_interval(self) -> int:
        """Minutes between two reconcile passes."""
        return self.config.reconcile_interval

    @classmethod
    def from_config(
        cls,
        config: CharmConfig,
        unit_name: str,
        base_dir: Path,
        database_dsn: str | None = None,
        event_log: Path | None = None,
    ) -> CharmState:
        """Map the charm's options onto the host config.

        The machine gives the unit's name, `base_dir` and where events are logged.

        With `storage-backend=postgresql` but no `database_dsn` from the relation yet, harvests
        go on into the local SQLite file (moved into PostgreSQL once it is reachable).

        Raises:
            InvalidConfigError: an option is invalid (named in the message with the rule).
        """
        settings = config.host_settings()
        if config.storage_backend == "postgresql":
            if database_dsn:
                settings["storage-options"] = {"dsn": database_dsn}
            else:
                settings["storage-backend"] = "sqlite"
        try:
            host = HostConfig.model_validate(
                {**settings, "unit": unit_name, "base-dir": base_dir, "event-log": event_log}
            )
        except ValidationError as exc:
            raise InvalidConfigError(f"invalid config: {describe(exc)}") from None
        return cls(config=config, host=host)


def option_error(exc: ValidationError) -> InvalidConfigError:
    """Turn a `CharmConfig` validation error into one naming the Juju options."""
    return InvalidConfigError(f"invalid config: {describe(exc, dashes=True)}")
