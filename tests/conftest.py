"""Fixtures shared by unit and functional tests: a real PostgreSQL server."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests.postgres import PostgresServer, running_server, server_binaries

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Yield one throw-away PostgreSQL server for the session; fail in CI if there is none."""
    if server_binaries() is None:
        reason = "no PostgreSQL server installed (apt-get install postgresql)"
        if os.environ.get("RUNNER_FS_REQUIRE_FUNCTIONAL") == "1":
            pytest.fail(f"RUNNER_FS_REQUIRE_FUNCTIONAL=1 but {reason}")
        pytest.skip(reason)
    with running_server() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """Return the DSN of a new, empty database."""
    return postgres_server.create_database(f"test_{os.getpid()}_{next(_databases)}")
