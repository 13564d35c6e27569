"""The charm's settings: Juju config validated once, by the core's own rules."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runner_fs.config import HostConfig, describe

MAX_INTERVAL = 1440  # minutes: a day


class InvalidConfigError(ValueError):
    """A config option has a bad value; the message names it, the value and the rule."""


@dataclasses.dataclass(frozen=True)
class CharmState:
    """What the charm converges the machine to.

    Attributes:
        host: the host config file's settings (the CLI and the core read the same).
        reconcile_interval: minutes between two reconcile passes.
    """

    host: HostConfig
    reconcile_interval: int

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        unit_name: str,
        base_dir: Path,
        database_dsn: str | None = None,
    ) -> CharmState:
        """Validate the charm's options; `unit_name` and `base_dir` come from the machine.

        With `storage-backend=postgresql` but no `database_dsn` from the relation yet, harvests
        go on into the local SQLite file (moved into PostgreSQL once it is reachable).

        Raises:
            InvalidConfigError: an option is invalid (named in the message with the fix).
        """
        interval = config.get("reconcile-interval", 5)
        if not isinstance(interval, int) or not 1 <= interval <= MAX_INTERVAL:
            raise InvalidConfigError(
                f"reconcile-interval={interval!r}: must be minutes from 1 to {MAX_INTERVAL}"
            )
        options = {key: value for key, value in config.items() if key != "reconcile-interval"}
        if options.get("storage-backend") == "postgresql":
            if database_dsn:
                options["storage-options"] = {"dsn": database_dsn}
            else:
                options["storage-backend"] = "sqlite"
        try:
            host = HostConfig.model_validate({**options, "unit": unit_name, "base-dir": base_dir})
        except ValidationError as exc:
            raise InvalidConfigError(f"invalid config: {describe(exc)}") from None
        return cls(host=host, reconcile_interval=interval)
