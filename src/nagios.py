"""NRPE checks over the `nrpe-external-master` relation, written with charmhelpers' NRPE support.

charmhelpers' `NRPE` writes each check's command into `/etc/nagios/nrpe.d`, its service
definition into `/var/lib/nagios/export`, and the `monitors` the relation carries, as every
classic charm's checks are. It reads the machine's os-release when imported and refuses what
is not Ubuntu (the charm's only platform), so it is imported only while the relation exists.
Each check runs `check_runner_fs` (`runner-fs check`), which reads no config file and so runs
as the `nagios` user.
"""

from __future__ import annotations

RELATION = "nrpe-external-master"


def checks(interval: int) -> list[tuple[str, str, str]]:
    """Return (shortname, description, command) of every check, for `interval` minutes."""
    return [
        ("runner_fs_harvest", "runner-fs harvests are not stalled",
         f"check_runner_fs harvest --interval {interval}"),
        ("runner_fs_errors", "runner-fs last harvest had no error", "check_runner_fs errors"),
        ("runner_fs_free_space", "runner-fs free space where images live",
         "check_runner_fs free-space --warning 20 --critical 10"),
    ]  # fmt: skip


def write_checks(interval: int) -> None:
    """Write every check and hand the monitors to the relation."""
    from charmhelpers.contrib.charmsupport import nrpe  # noqa: PLC0415 (Ubuntu only)

    checker = nrpe.NRPE()
    for shortname, description, command in checks(interval):
        checker.add_check(shortname, description, command)
    checker.write()


def remove_checks() -> None:
    """Remove every check's files (the relation is gone)."""
    from charmhelpers.contrib.charmsupport import nrpe  # noqa: PLC0415 (Ubuntu only)

    checker = nrpe.NRPE()
    for shortname, _, _ in checks(0):
        checker.remove_check(shortname=shortname)
