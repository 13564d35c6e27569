"""A stand-in `juju` for the docs' commands: judges each by the charm's contract, as Juju would.

No Juju runs here (the integration tests deploy for real where it does). What this checks is
what Juju would refuse or what the charm would block on: a charm file for a platform the charm
does not build, an endpoint or action it does not have, an unknown action parameter, a config
option it does not have or a value its own validation (`CharmConfig`, then the host config)
refuses. `juju ssh UNIT [--] COMMAND...` runs COMMAND here, on this machine standing in for
the unit's. Exit 0 if the command is sound, 1 with the reason otherwise.

Run:  python docs_juju.py ARGS...   (the docs test puts it on PATH as `juju`)
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "src"), str(REPO / "lib")]

from pydantic import ValidationError  # noqa: E402

from charm_state import CharmConfig, CharmState  # noqa: E402

PROJECT = yaml.safe_load((REPO / "charmcraft.yaml").read_text())
APP = "runner-fs"
# Charms the docs deploy beside runner-fs, as the integration workflow does, and the docs'
# placeholders (`<provisioner>`: the reader's own provisioner application).
OTHERS = {"ubuntu", "postgresql", "opentelemetry-collector", "nrpe", "provisioner", "principal"}


class RefusedError(Exception):
    """Juju, or the charm, would refuse the command."""


def _charm(name: str) -> None:
    if name in (APP, *OTHERS):
        return
    match = re.fullmatch(r"\./runner-fs_(ubuntu@[\d.]+)-(\w+)\.charm", name)
    if not match or f"{match[1]}:{match[2]}" not in PROJECT["platforms"]:
        raise RefusedError(
            f"no such charm here: {name} (platforms: {', '.join(PROJECT['platforms'])})"
        )


def _endpoint(side: str) -> None:
    app, _, endpoint = side.partition(":")
    if app == APP and endpoint:
        ours = {**PROJECT.get("requires", {}), **PROJECT.get("provides", {})}
        if endpoint not in ours:
            raise RefusedError(f"runner-fs has no endpoint {endpoint!r}: {', '.join(ours)}")
    elif app not in (APP, *OTHERS):
        raise RefusedError(f"no such application in the docs' models: {app}")


def _typed(option: str, value: str) -> object:
    kind = PROJECT["config"]["options"][option]["type"]
    return {"int": int, "float": float, "boolean": lambda v: v == "true"}.get(kind, str)(value)


def config(args: list[str]) -> None:
    """`juju config APP [KEY=VALUE...]`: every option exists and the charm accepts the values."""
    app, *pairs = args
    if app != APP:
        if app not in OTHERS:
            raise RefusedError(f"no such application: {app}")
        return
    options = PROJECT["config"]["options"]
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in options:
            raise RefusedError(f"runner-fs has no option {key!r}")
        settings[key.replace("-", "_")] = _typed(key, value)
    settings.setdefault("filesystem_owner", "root:root")  # the one option without a default
    try:
        CharmState.from_config(CharmConfig(**settings), f"{APP}/0", Path("/var/lib/runner-fs"))
    except (ValidationError, ValueError) as exc:
        raise RefusedError(f"the charm would block: {exc}") from None


def run(args: list[str]) -> None:
    """`juju run UNIT ACTION [KEY=VALUE...]`: the action exists and takes those parameters."""
    unit, action, *pairs = args
    if not re.fullmatch(rf"{APP}/(\d+|leader)", unit):
        raise RefusedError(f"not a runner-fs unit: {unit}")
    actions = PROJECT["actions"]
    if action not in actions:
        raise RefusedError(f"runner-fs has no action {action!r}: {', '.join(actions)}")
    params = actions[action].get("params", {})
    given = {pair.partition("=")[0] for pair in pairs}
    if unknown := given - params.keys():
        raise RefusedError(f"action {action} has no parameter {', '.join(sorted(unknown))}")
    if missing := set(actions[action].get("required", [])) - given:
        raise RefusedError(f"action {action} needs {', '.join(sorted(missing))}")


def main(argv: list[str]) -> int:
    """Judge one juju command line; run what `juju ssh` would run on the unit."""
    command, *args = argv
    try:
        if command == "deploy":
            _charm(args[0])
        elif command == "refresh":
            if args[0] != APP or "--path" not in args:
                raise RefusedError("refresh runner-fs --path ./<charm file>")
            _charm(args[args.index("--path") + 1])
        elif command == "integrate":
            for side in args[:2]:
                _endpoint(side)
        elif command == "config":
            config(args)
        elif command == "run":
            run(args)
        elif command == "ssh":
            rest = args[1:]  # the unit's machine is this one
            if rest[:1] == ["--"]:
                rest = rest[1:]
            os.execvp(rest[0], rest)  # noqa: S606 (the unit's command, run here)
        elif command not in ("status", "debug-log", "add-model"):
            raise RefusedError(f"the docs' juju stand-in does not know `juju {command}`")
    except RefusedError as exc:
        print(f"juju {' '.join(argv)}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
