"""CloudKitty's own v2 storage unit tests (`StorageUnitTest`), run against our two backends.

CloudKitty runs them against its backends with fake clients; here its test class is reused
as it ships, with our backends loaded by its loader on a real SQLite file and a real server.
Its scenarios (testscenarios, testtools) run under unittest's runner, as CloudKitty runs
them with stestr, from one pytest test.
"""

from __future__ import annotations

import collections
import itertools
import os
import shutil
import tempfile
import unittest
import warnings

import pytest

try:
    with warnings.catch_warnings():  # CloudKitty's test helpers import deprecated modules
        warnings.simplefilter("ignore")
        from cloudkitty.tests.storage.v2 import test_storage_unit
    from oslo_config import cfg
except ImportError:
    if os.environ.get("RUNNER_FS_REQUIRE_FUNCTIONAL") == "1":
        raise
    pytest.skip("CloudKitty's tests need pip install -e '.[cloudkitty]'", allow_module_level=True)

import runner_fs.storage.cloudkitty  # noqa: F401 (registers [storage_runner_fs])
from tests.postgres import PostgresServer

pytestmark = pytest.mark.filterwarnings("ignore")  # warnings of CloudKitty's own code
_databases = itertools.count()
_ran: collections.Counter[str] = collections.Counter()


class CloudKittyStorageUnit(test_storage_unit.StorageUnitTest):
    """CloudKitty's storage tests, every scenario on runner-fs."""

    __test__ = False  # run by the test below, not collected by pytest
    server: PostgresServer
    scenarios = test_storage_unit.TestCase.scenarios  # CloudKitty's database, not yet multiplied
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
            option = "postgresql_dsn"
            value = self.server.create_database(f"ck_{os.getpid()}_{next(_databases)}")
        cfg.CONF.set_override(option, value, "storage_runner_fs")
        self.addCleanup(cfg.CONF.clear_override, option, "storage_runner_fs")
        super().setUp()
        _ran[self.storage_backend] += 1

    def tearDown(self):
        """Close our connection, then CloudKitty's teardown."""
        self.storage.backend.close()
        super().tearDown()


CloudKittyStorageUnit.generate_scenarios()


def test_cloudkitty_storage_tests_pass_on_both_backends(postgres_server):
    CloudKittyStorageUnit.server = postgres_server
    names = unittest.defaultTestLoader.getTestCaseNames(CloudKittyStorageUnit)
    result = unittest.TestResult()

    unittest.defaultTestLoader.loadTestsFromTestCase(CloudKittyStorageUnit).run(result)

    problems = [f"{test.id()}: {trace}" for test, trace in result.errors + result.failures]
    assert not problems, "\n".join(problems)
    assert len(names) > 15
    assert _ran == {"runner_fs_sqlite": len(names), "runner_fs_postgresql": len(names)}
