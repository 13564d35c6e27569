#!/usr/bin/env python3
"""A stand-in for Juju's hook tools: `juju_tools.py TOOL ARGS...`, behind one shim per tool.

It answers from the JSON file `$FAKE_JUJU_STATE` (`config`, `params`) and appends every call
to `$FAKE_JUJU_LOG` as a JSON line `[tool, args]`.
"""

import json
import os
import sys
from pathlib import Path

TOOLS = (
    "config-get", "is-leader", "status-set", "status-get", "juju-log", "action-get",
    "action-set", "action-log", "action-fail", "application-version-set", "goal-state",
    "relation-ids",
)  # fmt: skip


def main() -> None:
    """Answer one hook tool call."""
    tool, args = sys.argv[1], sys.argv[2:]
    state = json.loads(Path(os.environ["FAKE_JUJU_STATE"]).read_text())
    with open(os.environ["FAKE_JUJU_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps([tool, args]) + "\n")
    if tool == "config-get":
        print(json.dumps(state["config"]))
    elif tool == "is-leader":
        print(json.dumps(True))
    elif tool == "action-get":
        print(json.dumps(state.get("params", {})))
    elif tool == "status-get":
        print(json.dumps({"status": "unknown", "message": ""}))
    elif tool == "relation-ids":
        print(json.dumps([]))  # no relations
    elif tool == "goal-state":
        print(json.dumps({"units": {}, "relations": {}}))


if __name__ == "__main__":
    main()
