"""Harvest tallies in both backends: added with the harvest, once, and kept by upgrades."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from runner_fs import tallies
from runner_fs.storage import get_storage
from runner_fs.storage.postgresql import _MIGRATIONS
from runner_fs.storage.sqlite import SCHEMA_VERSION, SQLiteStorage

from .test_backends import HOUR, T0, _frame, options, storage  # noqa: F401 (fixtures)


def test_tallies_are_added_with_the_push_and_only_once(storage):  # noqa: F811
    counts = {("host-a", tallies.series(tallies.HARVESTED)): 1, ("host-b", "x"): 5}

    assert storage.push_once("host-a/r1/u1", [_frame(T0)], counts)
    assert not storage.push_once("host-a/r1/u1", [_frame(T0)], counts)
    assert storage.push_once("host-a/r2/u2", [], counts)

    assert storage.tallies("host-a") == {tallies.series(tallies.HARVESTED): 2}
    assert storage.tallies("host-b") == {"x": 10}
    assert storage.tallies("nobody") == {}


def test_a_harvest_counts_its_points_into_buckets_sum_and_count():
    frames = [_frame(T0, qty="90", status="normal"), _frame(T0, "runner.idle", qty="0.5")]

    counts = tallies.harvested(frames)

    job = {"flavor": "small", "status": "normal"}
    assert counts[tallies.series(tallies.HARVESTED)] == 1
    assert counts[tallies.series(tallies.DATAPOINTS)] == 2
    buckets = {key: n for key, n in counts.items() if "job_duration_seconds_bucket" in key}
    assert buckets == {tallies.series("runner_fs_job_duration_seconds_bucket", **job, le="120"): 1}
    assert counts[tallies.series("runner_fs_job_duration_seconds_count", **job)] == 1
    assert counts[tallies.series("runner_fs_job_duration_seconds_sum_us", **job)] == 90_000_000
    assert counts[tallies.series("runner_fs_idle_duration_seconds_bucket", flavor="small",
                                 le="1")] == 1  # fmt: skip


def test_a_version_1_sqlite_file_is_upgraded_and_keeps_its_points(tmp_path):
    path = tmp_path / "old.db"
    old = get_storage("sqlite", path=path)
    old.push([_frame(T0)])
    old.close()
    with sqlite3.connect(path) as db:  # as version 1 left it
        db.execute("DROP TABLE tallies")
        db.execute("DROP TABLE rollups")
        db.execute("DROP TABLE rollup_groups")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")

    upgraded = SQLiteStorage(path=path)
    upgraded.init()

    assert upgraded.retrieve(T0, T0 + HOUR)["total"] == 1
    assert upgraded.push_once("k", [], {("u", "s"): 1})
    assert upgraded.tallies("u") == {"s": 1}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
    upgraded.close()


def test_a_version_1_postgresql_database_is_upgraded(postgres_dsn):
    with psycopg.connect(postgres_dsn, autocommit=True) as db:  # as version 1 made it
        db.execute("CREATE TABLE meta (key text PRIMARY KEY, value text)")
        db.execute(_MIGRATIONS[0])
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")

    upgraded = get_storage("postgresql", dsn=postgres_dsn)

    assert upgraded.push_once("k", [], {("u", "s"): 3})
    assert upgraded.tallies("u") == {"s": 3}
    upgraded.close()


@pytest.mark.parametrize("points", [0, 3])
def test_moving_the_local_store_carries_its_tallies(tmp_path, postgres_dsn, points):
    local = get_storage("sqlite", path=tmp_path / "metrics.db")
    local.push_once("host-a/r1/u", [_frame(T0)] * points, {("host-a", "c"): 7})
    fleet = get_storage("postgresql", dsn=postgres_dsn)
    fleet.push_once("host-a/r9/u", [], {("host-a", "c"): 1})

    assert local.move_into(fleet)

    assert fleet.tallies("host-a") == {"c": 8}
    fleet.close()


def test_reading_tallies_is_one_indexed_lookup_not_a_scan(tmp_path):
    store = get_storage("sqlite", path=tmp_path / "metrics.db")
    store.push([_frame(T0)] * 50)

    plan = store.db.execute(
        "EXPLAIN QUERY PLAN SELECT series, value FROM tallies WHERE unit = ?", ("u",)
    ).fetchall()

    assert "USING INDEX sqlite_autoindex_tallies_1" in plan[0][-1]  # the (unit, series) key
    store.close()
