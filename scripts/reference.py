#!/usr/bin/env python3
"""Write docs/reference/charm.md from charmcraft.yaml, so the reference cannot drift from the charm.

Run:  python scripts/reference.py          (a test checks the committed file is current)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "docs" / "reference" / "charm.md"


def render(project: dict) -> str:
    """Return the reference page for the charm's config options and actions."""
    lines = [
        "# Reference: config options and actions",
        "",
        "Generated from `charmcraft.yaml` by `scripts/reference.py`; do not edit by hand.",
        "",
        "## Config options",
        "",
        "| option | type | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for name, option in project["config"]["options"].items():
        default = option.get("default")
        shown = f"`{default}`" if default != "" else '`""`'
        lines.append(f"| `{name}` | {option['type']} | {shown} | {option['description']} |")
    lines += ["", "## Actions", ""]
    for name, action in project["actions"].items():
        lines += [f"### `{name}`", "", action["description"], ""]
        params = action.get("params", {})
        required = set(action.get("required", []))
        if params:
            lines += ["| parameter | type | required | description |", "| --- | --- | --- | --- |"]
            lines += [
                f"| `{p}` | {spec['type']} | {'yes' if p in required else 'no'} |"
                f" {spec['description']} |"
                for p, spec in params.items()
            ]
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Write the reference page (or, with --check, fail when it is out of date)."""
    text = render(yaml.safe_load((REPO / "charmcraft.yaml").read_text()))
    if "--check" in sys.argv:
        sys.exit(0 if TARGET.read_text() == text else "docs/reference/charm.md is out of date")
    TARGET.write_text(text)


if __name__ == "__main__":
    main()
