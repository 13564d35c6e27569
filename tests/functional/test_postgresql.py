"""Reconcile into a real PostgreSQL server: down, crashed, refusing logins, shared by units.

Several units pushing at once are simulated by processes with different unit names.
"""

from __future__ import annotations

import collections
import decimal
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from runner_fs.errors import StorageError
from runner_fs.reconcile import Reconciler
from runner_fs.shared_fs import SharedFilesystemManager, purge
from runner_fs.storage import get_storage
from runner_fs.storage.postgresql import SCHEMA_VERSION, PostgreSQLStorage
from tests.postgres import PostgresServer, running_server

from .conftest import OWNER, bound_images, kill_after_lines, write_host_config
from .test_reconcile import WINDOW, _cli, totals, write_runner

UNIT = "runner-fs/0"


@pytest.fixture
def own_server(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """Yield a server this test may stop and start (the session's stays up)."""
    with running_server() as server:
        yield server


def _written_by_halves(dsn: str) -> tuple[int, int]:
    """Return the points stored and the points the ledger says were stored."""
    with psycopg.connect(dsn) as db:
        (points,) = db.execute("SELECT count(*) FROM points").fetchone()
        (claimed,) = db.execute("SELECT coalesce(sum(points), 0) FROM ledger").fetchone()
    return points, claimed


def test_a_server_crash_mid_pass_keeps_the_rest_and_the_next_pass_reconnects(manager, own_server):
    dsn = own_server.create_database("crash")
    storage = get_storage("postgresql", dsn=dsn)
    for index in range(12):
        write_runner(manager, f"r{index}", job=index + 1)

    def crash_after_four(done: int, _: int) -> None:
        if done == 4:
            own_server.stop("immediate")

    down = Reconciler(manager, storage, UNIT, batch=3).run(crash_after_four)  # in batch 2

    assert down.errors == 1
    assert down.harvested < 12 and len(manager.list_info()) == 12 - down.harvested
    own_server.start()
    up = Reconciler(manager, storage, UNIT).run()
    assert (up.errors, down.harvested + up.harvested) == (0, 12)
    assert totals(storage)[0]["runner.job"] == sum(range(1, 13))
    points, claimed = _written_by_halves(dsn)
    assert points == claimed == 36
    storage.close()


def test_a_server_that_is_down_keeps_every_filesystem_and_says_why(manager, own_server, tmp_path):
    dsn = own_server.create_database("down")
    for index in range(3):
        write_runner(manager, f"r{index}", job=10)
    config = _config(tmp_path, manager.base_dir, dsn, UNIT)
    own_server.stop()

    cli = _cli(config, "reconcile")
    _, errors = cli.communicate(timeout=60)

    assert cli.returncode == 1
    assert f"127.0.0.1:{own_server.port}/down" in errors and own_server.password not in errors
    assert len(manager.list_info()) == 3
    own_server.start()
    again = _cli(config, "reconcile")
    _, errors = again.communicate(timeout=60)
    assert again.returncode == 0, errors
    assert not manager.list_info()


def test_refused_credentials_are_reported_without_the_password(postgres_server):
    wrong = "not-the-password"
    with pytest.raises(StorageError, match="password authentication failed") as raised:
        get_storage("postgresql", dsn=postgres_server.dsn(password=wrong))

    assert wrong not in str(raised.value)
    assert "runner_fs_test@127.0.0.1" in str(raised.value)


def test_a_malformed_dsn_is_refused_with_the_expected_form():
    with pytest.raises(StorageError, match="dsn is not a valid connection string: give a URI"):
        PostgreSQLStorage(dsn="host=a port")


def test_units_starting_together_create_the_schema_once(postgres_server):
    dsn = postgres_server.create_database("together")
    code = (
        "import sys; from runner_fs.storage import get_storage;"
        " get_storage('postgresql', dsn=sys.argv[1])"
    )
    starters = [
        subprocess.Popen([sys.executable, "-c", code, dsn], stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]

    errors = [s.communicate(timeout=60)[1] for s in starters]

    assert [s.returncode for s in starters] == [0] * 6, errors
    with psycopg.connect(dsn) as db:
        assert db.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION),)]


def _config(tmp_path: Path, base: Path, dsn: str, unit: str) -> Path:
    path = tmp_path / f"config-{unit.replace('/', '-')}.yaml"
    return write_host_config(
        path, base, unit, storage_backend="postgresql", storage_options={"dsn": dsn}
    )


@pytest.mark.slow
def test_four_units_killed_at_random_lose_and_double_nothing(postgres_server, tmp_path):
    dsn = postgres_server.create_database("fleet")
    units = [f"runner-fs/{index}" for index in range(4)]
    managers = {
        unit: SharedFilesystemManager(tmp_path / f"base-{index}", "1M", OWNER, "small")
        for index, unit in enumerate(units)
    }
    configs = {unit: _config(tmp_path, managers[unit].base_dir, dsn, unit) for unit in units}
    rng = random.Random(6)  # noqa: S311 (test timing)
    expected: collections.Counter[str] = collections.Counter()
    interrupted = 0
    try:
        for iteration in range(8):
            for unit, manager in managers.items():
                for index in range(10):
                    job = rng.randrange(1, 500)
                    write_runner(manager, f"i{iteration}-{index}", job=job)
                    expected[unit] += 30 + job
            pending = {unit: len(managers[unit].runner_names()) for unit in units}
            passes = [_cli(configs[unit], "reconcile") for unit in units]
            for unit, process in zip(units, passes, strict=True):
                if rng.random() < 0.75:  # after 1 to 8 of its 10 progress lines
                    kill_after_lines(process, rng.randrange(1, 9), "reconcile: ")
                process.communicate(timeout=120)
                assert process.returncode in (0, -signal.SIGKILL), f"iteration {iteration}"
                interrupted += 0 < len(managers[unit].runner_names()) < pending[unit]
        assert interrupted >= 3  # enough kills landed in the middle of a pass
        for unit in units:
            final = _cli(configs[unit], "reconcile")
            _, errors = final.communicate(timeout=300)
            assert final.returncode == 0, errors

        storage = get_storage("postgresql", dsn=dsn)
        rows = storage.total(groupby=["unit"], **WINDOW)["results"]
        assert {row["unit"]: decimal.Decimal(str(row["qty"])) for row in rows} == expected
        assert totals(storage)[1] == 3 * 10 * 8 * len(units)
        assert _written_by_halves(dsn) == (960, 960)
        storage.close()
        for manager in managers.values():
            assert not manager.list_info()
            assert not bound_images(manager.base_dir)
    finally:
        for manager in managers.values():
            purge(manager.base_dir)
