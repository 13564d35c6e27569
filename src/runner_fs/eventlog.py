"""Harvest, quarantine and error events as JSON, one object a line, for log collectors.

The host config's `event-log` names the file (the charm sets `/var/log/runner-fs/runner-fs.log`,
which logrotate rotates); every process that works on the host's filesystems appends to it. An
event carries only what runner-fs decided (runner name, archive, counts, our own error
messages), never the content of a runner's files.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path

FIELDS = ("runner", "archive", "datapoints", "state")


class JsonEventHandler(logging.Handler):
    """Append records that carry an `event` (and every error) to a file as JSON lines."""

    def __init__(self, path: Path) -> None:
        """Append to `path` (mode 0640, its directory 0750, both made if missing)."""
        super().__init__(logging.INFO)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        """Write one JSON object, if the record is an event or an error."""
        event = getattr(record, "event", None)
        if event is None and record.levelno < logging.ERROR:
            return
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": event or "error",
            "message": record.getMessage(),
        }  # fmt: skip
        line |= {key: getattr(record, key) for key in FIELDS if hasattr(record, key)}
        try:
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            with os.fdopen(fd, "a", encoding="utf-8") as stream:
                stream.write(json.dumps(line) + "\n")  # one write: lines never interleave
        except OSError:
            self.handleError(record)


def attach(path: Path | None) -> None:
    """Send the core's events to `path` (once per process); None sends them nowhere."""
    core = logging.getLogger("runner_fs")
    if path is None or any(
        isinstance(handler, JsonEventHandler) and handler.path == path for handler in core.handlers
    ):
        return
    core.addHandler(JsonEventHandler(path))
    if core.getEffectiveLevel() > logging.INFO:
        core.setLevel(logging.INFO)  # events are INFO; other handlers keep their own levels
