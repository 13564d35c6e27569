"""What only the SQLite backend has: one file, opened by several processes at once."""

from __future__ import annotations

import datetime
import subprocess
import sys
import time

from runner_fs.storage.sqlite import SQLiteStorage


def test_retention_comes_from_configuration(tmp_path):
    storage = SQLiteStorage(path=tmp_path / "m.db", retention_period=48, period=3600)

    assert storage.get_retention() == datetime.timedelta(hours=48)


_OPEN_AT = """
import sys, time
from runner_fs.storage import get_storage
while time.time() < float(sys.argv[2]):
    pass
get_storage("sqlite", path=sys.argv[1])
"""


def test_processes_creating_one_new_file_together_all_succeed(tmp_path):
    for round_ in range(5):
        path = tmp_path / f"new-{round_}.db"
        argv = [sys.executable, "-c", _OPEN_AT, str(path), str(time.time() + 0.5)]
        openers = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for _ in range(3)]

        errors = [p.communicate(timeout=60)[1] for p in openers]

        assert [p.returncode for p in openers] == [0, 0, 0], errors
