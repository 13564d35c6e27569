"""The machine the charm converges: host config file, reconcile timer, command wrapper.

No Juju here: paths and binaries are constants, systemctl is called with argument lists, and
every file is written only when its content changes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import jinja2

from charm_state import CharmState
from runner_fs.config import DEFAULT_PATH as CONFIG_PATH

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SYSTEMCTL = "/usr/bin/systemctl"
JUJU_EXEC = "/usr/bin/juju-exec"
SERVICE = "runner-fs-reconcile.service"
TIMER = "runner-fs-reconcile.timer"
SYSTEMD_DIR = Path("/etc/systemd/system")
WRAPPER = Path("/usr/local/bin/runner-fs")
BASE_DIR = Path("/var/lib/runner-fs")


@dataclasses.dataclass
class Machine:
    """Files, units and systemctl under `root` (`/` in production; a directory in tests)."""

    root: Path = Path("/")

    def _path(self, path: Path) -> Path:
        return self.root / path.relative_to("/")

    @property
    def base_dir(self) -> Path:
        """Where filesystems, archives and the SQLite database live."""
        return self._path(BASE_DIR)

    @property
    def config_path(self) -> Path:
        """The host config file the command line reads."""
        return self._path(CONFIG_PATH)

    def converge(self, state: CharmState, unit_name: str, charm_dir: Path) -> list[Path]:
        """Render every file from `state`; reload systemd when a unit changed.

        Returns:
            The files that changed.
        """
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=False,  # noqa: S701 (config files, not HTML)
            keep_trailing_newline=True,
            undefined=jinja2.StrictUndefined,
        )
        interval = state.reconcile_interval
        charm_paths = [p for p in sys.path if p.startswith(str(charm_dir))]
        settings = state.host.model_dump(mode="json", by_alias=True)
        files = {
            CONFIG_PATH: ("config.yaml.j2", {"settings": settings}, 0o600),
            SYSTEMD_DIR / SERVICE: (
                "runner-fs-reconcile.service.j2",
                {"unit": unit_name, "juju_exec": JUJU_EXEC, "timeout": max(300, interval * 60)},
                0o644,
            ),
            SYSTEMD_DIR / TIMER: (
                "runner-fs-reconcile.timer.j2",
                {"interval": interval, "delay": interval * 12},
                0o644,
            ),
            WRAPPER: (
                "runner-fs.j2",
                {
                    "config_path": self.config_path,
                    "python": sys.executable,
                    "python_path": ":".join(charm_paths),
                },
                0o755,
            ),
        }
        changed = [
            path
            for path, (template, context, mode) in files.items()
            if _write_if_changed(
                self._path(path), env.get_template(template).render(context), mode
            )
        ]
        state.host.base_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        if any(path.parent == SYSTEMD_DIR for path in changed):
            self._systemctl("daemon-reload")
            self._systemctl("enable", "--now", TIMER)
        return changed

    def remove(self) -> None:
        """Stop and remove the timer and the wrapper (images, archives, database stay)."""
        if self._path(SYSTEMD_DIR / TIMER).exists():
            self._systemctl("disable", "--now", TIMER)
        for path in (SYSTEMD_DIR / TIMER, SYSTEMD_DIR / SERVICE, WRAPPER):
            self._path(path).unlink(missing_ok=True)
        self._systemctl("daemon-reload")

    def _systemctl(self, *args: str) -> None:
        systemctl = str(self._path(Path(SYSTEMCTL)))
        subprocess.run([systemctl, *args], check=True, capture_output=True, text=True)


def _write_if_changed(path: Path, content: str, mode: int) -> bool:
    """Atomically replace `path` with `content` unless it already holds it."""
    try:
        if path.read_text(encoding="utf-8") == content and (path.stat().st_mode & 0o777) == mode:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(content)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    logger.info("wrote %s", path)
    return True
