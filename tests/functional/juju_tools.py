#!/usr/bin/env python3
"""A stand-in for Juju's hook tools: `juju_tools.py TOOL ARGS...`, behind one shim per tool.

It answers from the JSON file `$FAKE_JUJU_STATE`: `config`, `params` (of the action),
`relations` (`{endpoint: {"id", "app", "units", "app_data", "local_app_data",
"local_unit_data", "remote_units_data"}}`) and `secrets` (`{id: content}`); `relation-set`
writes the local application's or unit's data back into it (from `--file PATH` or
`--file -`, as ops and charmhelpers call it). Every call is appended to `$FAKE_JUJU_LOG`
as a JSON line `[tool, args]`.
"""

import json
import os
import sys
from pathlib import Path

import yaml

TOOLS = (
    "config-get", "is-leader", "status-set", "status-get", "juju-log", "action-get",
    "action-set", "action-log", "action-fail", "application-version-set", "goal-state",
    "relation-ids", "relation-list", "relation-get", "relation-set", "secret-get",
)  # fmt: skip


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
    relation[data].update(yaml.safe_load(stdin) or {})
    return None


def main() -> None:
    """Answer one hook tool call."""
    tool, args = sys.argv[1], sys.argv[2:]
    path = Path(os.environ["FAKE_JUJU_STATE"])
    state = json.loads(path.read_text())
    source = args[args.index("--file") + 1] if "--file" in args else None
    stdin = (sys.stdin.read() if source == "-" else Path(source).read_text()) if source else ""
    with open(os.environ["FAKE_JUJU_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps([tool, args]) + "\n")
    result = answer(tool, args, state, stdin)
    if tool == "relation-set":
        path.write_text(json.dumps(state))
    if result is not None:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
