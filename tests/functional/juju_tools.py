#!/usr/bin/env python3
"""A stand-in for Juju's hook tools: `juju_tools.py TOOL ARGS...`, behind one shim per tool.

It answers from the JSON file `$FAKE_JUJU_STATE`: `config`, `params` (of the action),
`relations` (`{endpoint: {"id", "app", "units", "app_data", "local_app_data",
"local_unit_data", "remote_units_data"}}`) and `secrets` (`{id: content}`); `relation-set`
writes the local application's or unit's data back into it (from `--file PATH` or
`--file -`, as ops and charmhelpers call it). Every call is appended to `$FAKE_JUJU_LOG`
as a JSON line `[tool, args]`.

`juju-exec UNIT COMMAND` runs COMMAND in the unit's charm directory under a machine lock (a
lock file beside the state) and logs how long it held the lock: `["juju-exec-held", [s]]`.

Juju's tools are small Go programs that answer in milliseconds; so that a hook's time is the
charm's own, these run as `python -I -S` and import only what the tool needs (`relation-set`,
which parses YAML, runs with the site packages).
"""

import json
import os
import sys

TOOLS = (
    "config-get", "is-leader", "status-set", "status-get", "juju-log", "action-get",
    "action-set", "action-log", "action-fail", "application-version-set", "goal-state",
    "relation-ids", "relation-list", "relation-get", "relation-set", "secret-get", "juju-exec",
)  # fmt: skip


def juju_exec(command: str, log_path: str) -> int:
    """Run `command` in the charm directory holding the machine lock; log the time held."""
    import fcntl  # only this tool needs these three
    import subprocess
    import time

    lock_path = os.path.join(os.path.dirname(os.environ["FAKE_JUJU_STATE"]), "machine.lock")
    with open(lock_path, "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.monotonic()
        code = subprocess.run(
            ["sh", "-c", command], cwd=os.environ["JUJU_CHARM_DIR"], check=False
        ).returncode
        held = time.monotonic() - started
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(json.dumps(["juju-exec-held", [held]]) + "\n")
    return code


def _relation(state: dict, args: list[str]) -> dict:
    """Return the relation named by `-r endpoint:id` or `-r id`."""
    ref = args[args.index("-r") + 1]
    number = int(ref.rpartition(":")[2])
    return next(rel for rel in state.get("relations", {}).values() if rel["id"] == number)


def answer(tool: str, args: list[str], state: dict, stdin: str) -> object:
    """Return what the tool prints as JSON (None: nothing); may change `state`."""
    if tool.startswith("relation-"):
        return _relation_tool(tool, args, state, stdin)
    fixed = {
        "is-leader": True,
        "status-get": {"status": "unknown", "message": ""},
        "goal-state": {"units": {}, "relations": {}},
    }
    if tool in fixed:
        return fixed[tool]
    if tool == "config-get":
        return state["config"]
    if tool == "action-get":
        return state.get("params", {})
    if tool == "secret-get":
        (secret_id,) = (arg for arg in args if not arg.startswith("--"))
        return state["secrets"][secret_id]
    return None


def _relation_tool(tool: str, args: list[str], state: dict, stdin: str) -> object:  # noqa: PLR0911
    relations = state.get("relations", {})
    if tool == "relation-ids":
        (endpoint,) = (arg for arg in args if not arg.startswith("-"))
        return [f"{endpoint}:{relations[endpoint]['id']}"] if endpoint in relations else []
    if tool == "relation-set" and "--help" in args:
        print("--file")  # charmhelpers asks whether --file is understood
        return None
    relation = _relation(state, args)
    if tool == "relation-list":
        return relation["app"] if "--app" in args else relation["units"]
    if tool == "relation-get":
        member = args[-1]
        if "--app" in args:
            mine = member != relation["app"]
            return relation["local_app_data"] if mine else relation["app_data"]
        if member == os.environ["JUJU_UNIT_NAME"]:
            return relation["local_unit_data"]
        return relation.get("remote_units_data", {}).get(member, {})
    data = "local_app_data" if "--app" in args else "local_unit_data"  # relation-set
    import yaml  # relation-set alone runs with the site packages

    relation[data].update(yaml.safe_load(stdin) or {})
    return None


def main() -> None:
    """Answer one hook tool call."""
    tool, args = sys.argv[1], sys.argv[2:]
    with open(os.environ["FAKE_JUJU_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps([tool, args]) + "\n")
    if tool == "juju-exec":  # juju-exec [--unit] UNIT COMMAND
        sys.exit(juju_exec(args[-1], os.environ["FAKE_JUJU_LOG"]))
    path = os.environ["FAKE_JUJU_STATE"]
    with open(path, encoding="utf-8") as file:
        state = json.load(file)
    source = args[args.index("--file") + 1] if "--file" in args else None
    if source == "-":
        stdin = sys.stdin.read()
    elif source:
        with open(source, encoding="utf-8") as file:
            stdin = file.read()
    else:
        stdin = ""
    result = answer(tool, args, state, stdin)
    if tool == "relation-set":
        with open(path, "w", encoding="utf-8") as file:
            json.dump(state, file)
    if result is not None:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
