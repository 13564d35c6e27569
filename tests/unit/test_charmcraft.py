"""charmcraft.yaml against the design's contract; rendered units (packing: test_packed_charm)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from charm_state import CharmConfig, CharmState

REPO = Path(__file__).resolve().parents[2]
PROJECT = yaml.safe_load((REPO / "charmcraft.yaml").read_text())


def test_config_options_are_the_contract():
    options = PROJECT["config"]["options"]

    assert {name: (o["type"], o["default"]) for name, o in options.items()} == {
        "filesystem-size": ("string", "1M"),
        "reconcile-interval": ("int", 5),
        "max-runner-age": ("float", 24),
        "retention-period": ("float", 2400),
        "flavor": ("string", ""),
        "storage-backend": ("string", "sqlite"),
        "filesystem-owner": ("string", "ubuntu:ubuntu"),
        "rates": ("string", ""),
        "quarantine-retention": ("float", 30),
        "quarantine-max-size": ("string", "1G"),
        "metrics-port": ("int", 10242),
        "nagios_context": ("string", "juju"),
        "nagios_servicegroups": ("string", ""),
    }


def test_the_defaults_are_a_valid_config(tmp_path):
    defaults = {name: o["default"] for name, o in PROJECT["config"]["options"].items()}
    defaults["filesystem-owner"] = "root:root"  # this host may have no ubuntu user

    config = CharmConfig(**{name.replace("-", "_"): value for name, value in defaults.items()})
    state = CharmState.from_config(config, "runner-fs/0", tmp_path)

    assert state.reconcile_interval == 5


def test_actions_are_the_contract_and_refuse_unknown_params():
    actions = PROJECT["actions"]

    assert set(actions) == {"list", "quarantine", "reconcile", "report"}
    assert all(action["additionalProperties"] is False for action in actions.values())
    assert actions["quarantine"]["required"] == ["runner"]
    assert set(actions["report"]["params"]) == {"groupby", "metric-types", "begin", "end"}


def test_the_reference_page_is_generated_from_charmcraft_yaml():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/reference.py"), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
