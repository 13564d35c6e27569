"""The machine the charm converges: host config file, reconcile timer, command wrapper.

No Juju here: paths are constants, systemd is driven through charmlibs-systemd (which logs
systemctl's output and raises with its stderr), and every file is written only when its
content changes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import jinja2
from charmlibs import systemd

from charm_state import CharmState
from runner_fs.config import DEFAULT_BASE_DIR, ConfigError, load_config
from runner_fs.config import DEFAULT_PATH as CONFIG_PATH
from runner_fs.reconcile import start_harvest_clock

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
JUJU_EXEC = "/usr/bin/juju-exec"
HOOK_TIMEOUT = 60  # seconds the timer's reconcile hook may take (it only reads a record)
SERVICE = "runner-fs-reconcile.service"
TIMER = "runner-fs-reconcile.timer"
METRICS = "runner-fs-metrics.service"
SYSTEMD_DIR = Path("/etc/systemd/system")
WRAPPER = Path("/usr/local/bin/runner-fs")
DATABASE_CA = CONFIG_PATH.parent / "postgresql-ca.pem"
NAGIOS_PLUGIN = Path("/usr/local/lib/nagios/plugins/check_runner_fs")
EVENT_LOG = Path("/var/log/runner-fs/runner-fs.log")
LOGROTATE = Path("/etc/logrotate.d/runner-fs")


@dataclasses.dataclass
class Machine:
    """Files and systemd units under `root` (`/` in production; a directory in tests)."""

    root: Path = Path("/")

    def _path(self, path: Path) -> Path:
        return self.root / path.relative_to("/")

    @property
    def base_dir(self) -> Path:
        """Where filesystems, archives and the SQLite database live."""
        return self._path(DEFAULT_BASE_DIR)

    @property
    def config_path(self) -> Path:
        """The host config file the command line reads."""
        return self._path(CONFIG_PATH)

    @property
    def event_log(self) -> Path:
        """The JSON event log (rotated by logrotate)."""
        return self._path(EVENT_LOG)

    @property
    def timer_path(self) -> Path:
        """The reconcile timer's unit file."""
        return self._path(SYSTEMD_DIR / TIMER)

    @property
    def database_ca_path(self) -> Path:
        """The CA that verifies the PostgreSQL server, when the provider gives one."""
        return self._path(DATABASE_CA)

    def keep_database_ca(self, ca: str | None) -> None:
        """Write the database's CA (0600), or remove it when there is none."""
        if ca is None:
            self.database_ca_path.unlink(missing_ok=True)
        else:
            _write_if_changed(self.database_ca_path, ca, 0o600)

    def managed_by(self) -> str | None:
        """Return the unit named in the host config file, if one was rendered here."""
        try:
            return load_config(self.config_path).unit if self.config_path.exists() else None
        except ConfigError:
            return None

    def converge(
        self,
        state: CharmState,
        unit_name: str,
        charm_dir: Path,
        nagios: bool = False,
        upgraded: bool = False,
    ) -> list[Path]:
        """Render every file from `state`; leave the timer and the metrics service active.

        Both are enabled and started on every call (one stopped by hand comes back), and the
        metrics service is restarted when its settings change or the charm was `upgraded`
        (it runs the charm's code), which also starts a pass now (it upgrades the storage
        schema outside the hook). With `nagios`, the NRPE plugin `check_runner_fs` is
        installed too (else removed).

        Returns:
            The files that changed.

        Raises:
            SystemdError: systemd refused (its stderr is in the message and the log).
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
                {
                    "unit": unit_name,
                    "wrapper": WRAPPER,
                    "juju_exec": JUJU_EXEC,
                    "timeout": max(300, interval * 60),
                    "hook_timeout": HOOK_TIMEOUT,
                },
                0o644,
            ),
            SYSTEMD_DIR / TIMER: (
                "runner-fs-reconcile.timer.j2",
                {"interval": interval, "delay": interval * 12},
                0o644,
            ),
            SYSTEMD_DIR / METRICS: (
                "runner-fs-metrics.service.j2",
                {
                    "wrapper": WRAPPER,
                    "port": state.config.metrics_port,
                    "interval": interval,
                    "version": charm_version(charm_dir),
                },
                0o644,
            ),
            LOGROTATE: ("logrotate.j2", {"path": self.event_log}, 0o644),
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
        if nagios:
            files[NAGIOS_PLUGIN] = ("check_runner_fs.j2", {"wrapper": WRAPPER}, 0o755)
        else:
            self._path(NAGIOS_PLUGIN).unlink(missing_ok=True)
        changed = [
            path
            for path, (template, context, mode) in files.items()
            if _write_if_changed(
                self._path(path), env.get_template(template).render(context), mode
            )
        ]
        state.host.base_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        start_harvest_clock(state.host.base_dir)
        if any(path.parent == SYSTEMD_DIR for path in changed):
            systemd.daemon_reload()
        for unit in (TIMER, METRICS):
            systemd.service_resume(unit)  # unmask, enable --now, then check it is active
        if upgraded or {CONFIG_PATH, SYSTEMD_DIR / METRICS} & set(changed):
            systemd.service_restart(METRICS)  # it reads the host config when it starts
        if upgraded:
            systemd.service_start("--no-block", SERVICE)
        return changed

    def remove(self, *, host_config: bool) -> None:
        """Stop and remove the timer and the wrapper, and the host config file if asked.

        Images, archives and the database stay. Best effort: every step is tried, and what
        could not be done is logged.
        """
        steps: list[tuple[str, Callable[[], object]]] = []
        if self.timer_path.exists():
            steps += [
                (f"disable {TIMER}", lambda: systemd.service_disable("--now", TIMER)),
                (f"stop {SERVICE}", lambda: systemd.service_stop(SERVICE)),
                (f"disable {METRICS}", lambda: systemd.service_disable("--now", METRICS)),
            ]
        removed = [SYSTEMD_DIR / TIMER, SYSTEMD_DIR / SERVICE, SYSTEMD_DIR / METRICS, WRAPPER]
        removed += [NAGIOS_PLUGIN, LOGROTATE]
        removed += [CONFIG_PATH, DATABASE_CA] if host_config else []
        steps += [
            (f"remove {path}", functools.partial(self._path(path).unlink, missing_ok=True))
            for path in removed
        ]
        steps.append(("reload systemd", systemd.daemon_reload))
        for what, step in steps:
            try:
                step()
            except (systemd.SystemdError, OSError) as exc:
                logger.warning("could not %s: %s", what, exc)


def charm_version(charm_dir: Path) -> str:
    """Return the charm's build version (its `version` file), or `unknown`."""
    try:
        return (charm_dir / "version").read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


def _write_if_changed(path: Path, content: str, mode: int) -> bool:
    """Atomically replace `path` with `content` unless it already holds it."""
    try:
        if path.read_text(encoding="utf-8") == content and (path.stat().st_mode & 0o777) == mode:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # A new file of its own, 0600 from its first byte (the host config holds the database
    # login); widened to `mode` only once written.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("wrote %s", path)
    return True
