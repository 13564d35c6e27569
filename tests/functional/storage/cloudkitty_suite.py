"""CloudKitty's own v2 storage unit tests (`StorageUnitTest`) on our two backends.

CloudKitty runs this class against its backends with fake clients, under stestr; here it runs
as it ships, under unittest, with our backends loaded by CloudKitty's loader on a real SQLite
file and on the PostgreSQL database named by `RUNNER_FS_CLOUDKITTY_DSN`. Run in its own
process (`test_cloudkitty_suite.py` does): importing CloudKitty's test helpers brings in
eventlet, which hooks every later fork of the process.

Run, with RUNNER_FS_CLOUDKITTY_DSN set:
    python -m unittest tests.functional.storage.cloudkitty_suite
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings

import psycopg

with warnings.catch_warnings():  # CloudKitty's test helpers import deprecated modules
    warnings.simplefilter("ignore")
    from cloudkitty.tests.storage.v2 import test_storage_unit
    from oslo_config import cfg

    import runner_fs.storage.cloudkitty  # noqa: F401 (registers [storage_runner_fs])

OUR_TABLES = "points, ledger, meta, tallies, rollups, rollup_groups"


class CloudKittyStorageUnit(test_storage_unit.StorageUnitTest):
    """CloudKitty's storage tests, every scenario on runner-fs."""

    scenarios = test_storage_unit.TestCase.scenarios  # CloudKitty's database, not multiplied
    storage_scenarios = [
        ("runner_fs_sqlite", {"storage_backend": "runner_fs_sqlite"}),
        ("runner_fs_postgresql", {"storage_backend": "runner_fs_postgresql"}),
    ]

    def setUp(self):
        """Point our backend at an empty store, then let CloudKitty's setUp load it."""
        if self.storage_backend == "runner_fs_sqlite":
            option, value = "sqlite_path", os.path.join(tempfile.mkdtemp(), "ck.db")
            self.addCleanup(shutil.rmtree, os.path.dirname(value))
        else:
            option, value = "postgresql_dsn", os.environ["RUNNER_FS_CLOUDKITTY_DSN"]
            with psycopg.connect(value, autocommit=True) as db:
                db.execute(f"DROP TABLE IF EXISTS {OUR_TABLES} CASCADE")
        cfg.CONF.set_override(option, value, "storage_runner_fs")
        self.addCleanup(cfg.CONF.clear_override, option, "storage_runner_fs")
        super().setUp()

    def tearDown(self):
        """Close our connection, then CloudKitty's teardown."""
        self.storage.backend.close()
        super().tearDown()


CloudKittyStorageUnit.generate_scenarios()
