"""Every SQL backend, on a real SQLite file and a real PostgreSQL server: one semantics."""

from __future__ import annotations

import datetime
import decimal
import os
import subprocess
import sys

import pytest

from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.errors import StorageError
from runner_fs.storage import get_storage

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 3, 1, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)


def _frame(start, type_="runner.job", qty="1.5", price="0.25", **groupby):
    frame = DataFrame(start, start + HOUR)
    groupby = {"flavor": "small", "repository": "o/a", **groupby}
    frame.add_point(DataPoint("s", qty, price, groupby, {"runner_name": "r1"}), type_)
    return frame


@pytest.fixture(params=["sqlite", "postgresql"])
def options(request, tmp_path):
    """Return the backend name and the options of a new, empty store."""
    if request.param == "sqlite":
        return "sqlite", {"path": tmp_path / "metrics.db"}
    return "postgresql", {"dsn": request.getfixturevalue("postgres_dsn")}


@pytest.fixture
def storage(options):
    name, settings = options
    opened = get_storage(name, **settings)
    yield opened
    opened.close()


def test_init_is_idempotent_and_keeps_data(options, storage):
    storage.push([_frame(T0)])

    again = get_storage(options[0], **options[1])

    assert again.retrieve(T0, T0 + HOUR)["total"] == 1
    again.close()


def test_unknown_backend_names_the_installed_ones():
    with pytest.raises(StorageError, match=r"unknown storage backend 'nope'.*'sqlite'"):
        get_storage("nope")


def test_retrieve_is_half_open_and_counts_points(storage):
    storage.push([_frame(T0), _frame(T0 + HOUR), _frame(T0 + 2 * HOUR)])

    result = storage.retrieve(T0, T0 + 2 * HOUR)

    assert set(result) == {"total", "dataframes"}
    assert result["total"] == 2
    assert [f.start for f in result["dataframes"]] == [T0, T0 + HOUR]
    assert all(f.start.tzinfo is not None for f in result["dataframes"])


def test_naive_datetimes_mean_utc(storage):
    storage.push([_frame(T0)])

    naive = T0.replace(tzinfo=None)
    assert storage.retrieve(naive, naive + HOUR)["total"] == 1
    tokyo = datetime.timezone(datetime.timedelta(hours=9))
    assert storage.retrieve(T0.astimezone(tokyo), (T0 + HOUR).astimezone(tokyo))["total"] == 1


def test_retrieve_paginates_deterministically(storage):
    storage.push([_frame(T0 + i * HOUR, qty=i) for i in range(7)])

    pages = [storage.retrieve(T0, T0 + 10 * HOUR, offset=o, limit=3) for o in (0, 3, 6)]

    qtys = [p.qty for page in pages for f in page["dataframes"] for _, p in f.iterpoints()]
    assert qtys == list(range(7))
    assert all(page["total"] == 7 for page in pages)


def test_filters_use_groupby_then_metadata_and_accept_lists(storage):
    storage.push([_frame(T0, repository="o/a"), _frame(T0, repository="o/b"),
                  _frame(T0, repository="o/c", type_="runner.idle")])  # fmt: skip
    window = (T0, T0 + HOUR)

    assert storage.retrieve(*window, filters={"repository": "o/a"})["total"] == 1
    assert storage.retrieve(*window, filters={"repository": ["o/a", "o/b"]})["total"] == 2
    assert storage.retrieve(*window, filters={"runner_name": "r1"})["total"] == 3
    assert storage.retrieve(*window, filters={"type": "runner.idle"})["total"] == 1
    assert storage.retrieve(*window, metric_types=["runner.job", "runner.idle"])["total"] == 3
    assert storage.retrieve(*window, metric_types="runner.idle")["total"] == 1


def test_total_without_groupby_is_one_row_with_exact_sums(storage):
    storage.push([_frame(T0 + i * HOUR, qty="0.1", price="0.000000001") for i in range(10)])

    result = storage.total(begin=T0, end=T0 + 10 * HOUR)

    assert list(result) == ["total", "results"]
    assert result["total"] == 1
    row = result["results"][0]
    assert list(row) == ["begin", "end", "qty", "rate"]
    assert row["qty"] == 1.0 and row["rate"] == pytest.approx(1e-8)


def test_total_groups_by_attributes_type_and_time(storage):
    storage.push([_frame(T0, flavor="small"), _frame(T0, flavor="large"),
                  _frame(T0 + HOUR, flavor="large", type_="runner.idle")])  # fmt: skip

    by_flavor = storage.total(["flavor"], T0, T0 + 2 * HOUR)["results"]
    by_type_time = storage.total(["type", "time"], T0, T0 + 2 * HOUR)["results"]

    assert [(r["flavor"], r["qty"]) for r in by_flavor] == [("large", 3.0), ("small", 1.5)]
    assert list(by_flavor[0]) == ["begin", "end", "qty", "rate", "flavor"]
    assert [(r["type"], r["begin"], r["qty"]) for r in by_type_time] == [
        ("runner.idle", T0 + HOUR, 1.5), ("runner.job", T0, 3.0)
    ]  # fmt: skip


def test_time_groupbys_use_the_point_attribute_else_the_start(storage):
    storage.push([_frame(T0), _frame(T0, month=7)])

    rows = storage.total(["time-m", "time-y", "time-d", "time-w"], T0, T0 + HOUR)["results"]

    assert [(r["month"], r["year"]) for r in rows] == [(7, "2026"), ("3", "2026")]
    assert rows[1]["day_of_the_year"] == T0.strftime("%-j")
    assert rows[1]["week_of_the_year"] == T0.strftime("%U")


def test_a_missing_groupby_attribute_is_none_and_sorted_first(storage):
    storage.push([_frame(T0), _frame(T0, workflow="ci")])

    rows = storage.total(["workflow"], T0, T0 + HOUR)["results"]

    assert [r["workflow"] for r in rows] == [None, "ci"]


def test_total_pages_concatenate_to_the_whole(storage):
    storage.push([_frame(T0, repository=f"o/r{i}") for i in range(9)])

    whole = storage.total(["repository"], T0, T0 + HOUR, paginate=False)
    pages = [
        storage.total(["repository"], T0, T0 + HOUR, offset=o, limit=2) for o in range(0, 9, 2)
    ]

    assert [row for page in pages for row in page["results"]] == whole["results"]
    assert all(page["total"] == 9 for page in pages)


def test_unknown_time_groupby_is_refused(storage):
    with pytest.raises(ValueError, match="invalid time groupby 'time-x'"):
        storage.total(["time-x"], T0, T0 + HOUR)


def test_custom_fields_are_accepted(storage):
    assert storage.total(custom_fields="SUM(qty)", begin=T0, end=T0 + HOUR)["total"] == 1


def test_delete_honours_filters_and_open_bounds(storage):
    storage.push([_frame(T0, repository="o/a"), _frame(T0 + HOUR, repository="o/b"),
                  _frame(T0 + 2 * HOUR, repository="o/a")])  # fmt: skip

    storage.delete(begin=T0 + HOUR, end=None, filters={"repository": "o/a"})

    left = storage.retrieve(T0, T0 + 3 * HOUR)["dataframes"]
    assert [f.start for f in left] == [T0, T0 + HOUR]
    storage.delete(end=T0 + HOUR)
    assert storage.retrieve(T0, T0 + 3 * HOUR)["total"] == 1


def test_bad_input_stores_nothing(storage):
    bad = DataFrame(T0, T0 + HOUR)
    bad.add_point(DataPoint("s", 1, 0, {}, {}), "runner.job")
    bad.end = T0 - HOUR  # made invalid after construction

    with pytest.raises(StorageError, match=r"ends .* before it starts"):
        storage.push([_frame(T0), bad])

    assert storage.retrieve(T0 - HOUR, T0 + HOUR)["total"] == 0


def test_an_attribute_json_cannot_hold_stores_nothing(storage):
    with pytest.raises(StorageError, match=r"runner\.job groupby cannot be stored as JSON"):
        storage.push([_frame(T0), _frame(T0, huge=2**70)])

    assert storage.retrieve(T0 - HOUR, T0 + HOUR)["total"] == 0


def test_push_once_stores_a_key_exactly_once(storage):
    assert storage.push_once("unit/r1/uuid", [_frame(T0)])
    assert not storage.push_once("unit/r1/uuid", [_frame(T0)])

    assert storage.retrieve(T0, T0 + HOUR)["total"] == 1


def test_push_many_stores_each_new_key_once_in_one_transaction(storage):
    assert storage.push_once("unit/r2/uuid", [_frame(T0, qty="5")], {("unit", "n"): 1})
    harvests = [
        (f"unit/r{index}/uuid", [_frame(T0 + index * HOUR, qty=str(index))], {("unit", "n"): 1})
        for index in range(1, 4)
    ]

    assert storage.push_many(harvests) == [True, False, True]
    assert storage.push_many(harvests) == [False, False, False]
    with pytest.raises(StorageError, match="groupby cannot be stored as JSON"):
        storage.push_many([("u/r9/u", [_frame(T0)], {}), ("u/r8/u", [_frame(T0, n=2**70)], {})])

    (row,) = storage.total(begin=T0, end=T0 + 4 * HOUR)["results"]
    assert row["qty"] == 1 + 5 + 3  # r2 kept its first push; nothing of the failed batch
    assert storage.tallies("unit") == {"n": 3}


def test_values_round_trip_with_their_types(storage):
    storage.push([_frame(T0, year=2026, flag=True)])

    (frame,) = storage.retrieve(T0, T0 + HOUR)["dataframes"]
    (_, point), = frame.iterpoints()  # fmt: skip
    assert point.groupby["year"] == 2026 and point.groupby["flag"] is True
    assert point.qty == decimal.Decimal("1.5")


@pytest.mark.skipif(os.environ.get("TZ") == "Asia/Kolkata", reason="already in a non-UTC zone")
def test_the_suite_passes_in_a_non_utc_time_zone():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env={**os.environ, "TZ": "Asia/Kolkata"}, capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout[-2000:]
