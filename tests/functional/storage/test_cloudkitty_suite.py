"""CloudKitty's own storage unit tests pass on both backends (see `cloudkitty_suite`)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def test_cloudkitty_storage_unit_tests_pass_on_both_backends(postgres_dsn):
    if importlib.util.find_spec("cloudkitty") is None:
        if os.environ.get("RUNNER_FS_REQUIRE_FUNCTIONAL") == "1":
            pytest.fail("CloudKitty is not installed: pip install -e '.[test,cloudkitty]'")
        pytest.skip("CloudKitty is not installed: pip install -e '.[test,cloudkitty]'")

    run = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "unittest", "-v",
         "tests.functional.storage.cloudkitty_suite"],
        cwd=ROOT, env={**os.environ, "RUNNER_FS_CLOUDKITTY_DSN": postgres_dsn},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip

    assert run.returncode == 0, run.stderr[-4000:]
    (ran,) = re.findall(r"^Ran (\d+) tests", run.stderr, re.MULTILINE)
    sqlite, postgresql = (
        run.stderr.count(f",runner_fs_{name}) ...") for name in ("sqlite", "postgresql")
    )
    assert int(ran) == sqlite + postgresql and sqlite == postgresql > 15, run.stderr[-4000:]
