"""Rollups in both backends: totals from them equal totals from points, whatever the history."""

from __future__ import annotations

import datetime
import sqlite3

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.storage import get_storage
from runner_fs.storage.postgresql import _MIGRATIONS
from runner_fs.storage.sql import DAY_US, FIVE_MINUTES_US, HOUR_US, bucket_start
from runner_fs.storage.sqlite import SQLiteStorage

from .test_backends import HOUR, T0, _frame, options, storage  # noqa: F401 (fixtures)
from .test_properties import new_storage, prices, quantities, relaxed  # noqa: F401 (fixture)

# ruff: noqa: F811 (the fixtures above are arguments below)

DAY = 24 * HOUR
MINUTE = datetime.timedelta(minutes=1)
ATTRIBUTES = ("flavor", "repository")

SECOND = datetime.timedelta(seconds=1)

# A point: second from T0 (four days), type, qty, price, flavor, repository (None: absent).
points = st.tuples(
    st.integers(0, 4 * 86400),
    st.sampled_from(["runner.job", "runner.idle", "runner.installation"]),
    quantities,
    prices,
    st.sampled_from(["small", "large", ""]),
    st.sampled_from(["o/a", "o/b", "é/ü", None]),
)
# Any second, minute or quarter hour (every zone's midnight is one), from an hour before T0.
instants = st.one_of(
    st.integers(-3600, 5 * 86400),
    st.integers(-60, 5 * 1440).map(lambda minute: minute * 60),
    st.integers(-4, 5 * 96).map(lambda quarter: quarter * 900),
).map(lambda second: T0 + second * SECOND)
filters = st.dictionaries(
    st.sampled_from(["type", *ATTRIBUTES]),
    st.lists(
        st.sampled_from(["small", "", "o/a", "é/ü", "runner.job", "runner.idle"]),
        min_size=1,
        max_size=2,
    ),
    max_size=2,
)
queries = st.tuples(
    instants,
    instants,
    st.lists(st.sampled_from(["type", *ATTRIBUTES]), unique=True, max_size=3),
    filters,
    st.one_of(st.none(), st.sampled_from(["runner.job", "runner.idle"])),
)
deletions = st.tuples(
    st.one_of(st.none(), instants), st.one_of(st.none(), instants), st.one_of(st.none(), filters)
)


def _point_frame(second, type_, qty, price, flavor, repository):
    groupby = {"flavor": flavor} | ({} if repository is None else {"repository": repository})
    frame = DataFrame(T0 + second * SECOND, T0 + (second + 300) * SECOND)
    frame.add_point(DataPoint("s", qty, price, groupby, {"runner_name": "r"}), type_)
    return frame


def _from_points(storage, monkeypatch, **query):
    """Return `total()` answered from points only, as a store without rollups answers."""
    with monkeypatch.context() as patch:
        patch.setattr(storage, "rolled_up", lambda: False)
        return storage.total(paginate=False, **query)


def _rows(result):
    return sorted(result["results"], key=repr)


class Model:
    """What the store holds and what its totals must be, as Decimal sums in Python."""

    def __init__(self):
        self.points = []  # (start, type, qty, price, attributes)

    def push(self, second, type_, qty, price, flavor, repository):
        attributes = {"flavor": flavor} | (
            {} if repository is None else {"repository": repository}
        )
        self.points.append((T0 + second * SECOND, type_, qty, price, attributes))

    @staticmethod
    def _selected(point, low, high, where, metric_types=None):
        start, type_, _, _, attributes = point
        wanted = {**(where or {})}
        return (
            (low is None or start >= low)
            and (high is None or start < high)
            and metric_types in (None, type_)
            and type_ in wanted.pop("type", [type_])
            and all(attributes.get(key) in values for key, values in wanted.items())
        )

    def delete(self, low, high, where):
        self.points = [p for p in self.points if not self._selected(p, low, high, where)]

    def total(self, begin, end, groupby, filters, metric_types):
        sums = {}
        for point in self.points:
            if self._selected(point, begin, end, filters, metric_types):
                _, type_, qty, price, attributes = point
                values = {"type": type_, **attributes}
                key = tuple(values.get(name) for name in groupby)
                qty_sum, price_sum = sums.get(key, (0, 0))
                sums[key] = (qty_sum + qty, price_sum + price)
        if not groupby and not sums:
            sums[()] = (0, 0)
        return sorted(
            [
                {"begin": begin, "end": end, "qty": float(qty), "rate": float(price)}
                | dict(zip(groupby, key, strict=True))
                for key, (qty, price) in sums.items()
            ],
            key=repr,
        )


@relaxed
@given(
    st.lists(st.lists(points, max_size=15), min_size=1, max_size=4),
    st.lists(deletions, max_size=3),
    st.lists(queries, min_size=1, max_size=6),
)
def test_totals_of_windows_at_any_second_equal_a_decimal_model_and_the_points(
    new_storage, monkeypatch, pushes, deleted, asked
):
    store, model = new_storage(), Model()
    for batch in pushes:
        store.push([_point_frame(*point) for point in batch])
        for point in batch:
            model.push(*point)
    for low, high, where in deleted:  # None: open
        bounds = (high, low) if low and high and high < low else (low, high)
        store.delete(*bounds, where)
        model.delete(*bounds, where)

    for begin, end, groupby, where, metric_types in asked:
        query = {"begin": min(begin, end), "end": max(begin, end) + SECOND, "groupby": groupby,
                 "filters": where, "metric_types": metric_types}  # fmt: skip
        assert store.rolled_up()
        answer = _rows(store.total(paginate=False, **query))
        assert answer == model.total(**query)
        assert answer == _rows(_from_points(store, monkeypatch, **query))


def test_whole_buckets_are_read_from_rollups_and_only_the_ends_from_points(storage):
    # A point every 5 minutes for two days, alternating repositories.
    storage.push(
        [_frame(T0 + step * 5 * MINUTE, repository=f"o/{step % 2}") for step in range(576)]
    )
    # Points removed behind the rollups' back show what is answered from rollups.
    storage._execute("DELETE FROM points")

    def qty(begin, end):
        rows = storage.total(["repository"], begin, end)["results"]
        return [(row["repository"], row["qty"]) for row in rows]

    assert qty(T0, T0 + 2 * DAY) == [("o/0", 432.0), ("o/1", 432.0)]  # days
    india = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    local_day = datetime.datetime(2026, 3, 2, tzinfo=india)  # 18:30 UTC: all three spans
    assert qty(local_day, local_day + DAY) == [("o/0", 216.0), ("o/1", 216.0)]
    assert qty(T0 + 15 * MINUTE, T0 + 30 * MINUTE) == [("o/0", 1.5), ("o/1", 3.0)]
    # Rollups give the hour less its first and last 15 minutes; the minute at each end would
    # come from points (removed above, so only the rollups' part shows).
    assert qty(T0 + 16 * MINUTE, T0 + 44 * MINUTE) == [("o/0", 4.5), ("o/1", 4.5)]
    assert qty(T0 + 16 * MINUTE, T0 + 17 * MINUTE) == []  # a minute: points only


def test_deleting_takes_points_out_of_the_rollups_and_drops_empty_cells(storage):
    storage.push([_frame(T0 + hour * HOUR, flavor=f"f{hour % 3}") for hour in range(48)])

    storage.delete(T0, T0 + DAY, {"flavor": "f1"})
    storage.delete(T0 + DAY, T0 + 2 * DAY)

    totals = storage.total(["flavor"], T0, T0 + 2 * DAY)["results"]
    assert [(row["flavor"], row["qty"]) for row in totals] == [("f0", 12.0), ("f2", 12.0)]
    cells = storage._execute("SELECT span_us, COUNT(*) FROM rollups GROUP BY span_us").fetchall()
    assert dict(cells) == {DAY_US: 2, HOUR_US: 16, FIVE_MINUTES_US: 16}  # f0, f2: 8 hours each


@pytest.mark.parametrize(
    ("groupby", "metadata"),
    [
        ({"flavor": "small", "repository": 7}, {}),  # a number
        ({"flavor": "small", "repository": None}, {}),  # null
        ({"flavor": "small"}, {"repository": "o/a"}),  # only in metadata: filters see it
        ({"flavor": {"cpu": 2}}, {}),  # an object
    ],
)
def test_a_point_rollups_cannot_hold_exactly_makes_totals_scan_points(
    storage,
    monkeypatch,
    groupby,
    metadata,
):
    storage.push([_frame(T0), _frame(T0 + HOUR, repository="o/b")])
    assert storage.rolled_up()
    frame = DataFrame(T0 + 2 * HOUR, T0 + 3 * HOUR)
    frame.add_point(DataPoint("s", "2", "1", groupby, metadata), "runner.job")

    storage.push([frame])

    assert not storage.rolled_up()
    for query in ({"groupby": ["repository"]}, {"filters": {"repository": "o/a"}}):
        query |= {"begin": T0, "end": T0 + DAY}
        assert _rows(storage.total(paginate=False, **query)) == _rows(
            _from_points(storage, monkeypatch, **query)
        )


def _version_2(db):
    db.execute("DROP TABLE rollups")
    db.execute("DROP TABLE rollup_groups")
    db.execute("DELETE FROM meta WHERE key = 'rollups'")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")


@pytest.mark.parametrize("irregular", [False, True])
def test_upgrading_a_version_2_sqlite_file_builds_its_rollups(tmp_path, monkeypatch, irregular):
    path = tmp_path / "old.db"
    old = get_storage("sqlite", path=path)
    old.push([_frame(T0 + hour * HOUR, repository=f"o/{hour % 5}") for hour in range(60)])
    if irregular:
        old.push([_frame(T0, repository=5)])
    old.close()
    with sqlite3.connect(path) as db:
        _version_2(db)

    upgraded = SQLiteStorage(path=path)
    upgraded.init()

    assert upgraded.rolled_up() is not irregular
    query = {"groupby": ["repository"], "begin": T0, "end": T0 + 2 * DAY}
    assert upgraded.total(paginate=False, **query) == _from_points(upgraded, monkeypatch, **query)
    cells = upgraded._execute("SELECT span_us, COUNT(*) FROM rollups GROUP BY span_us").fetchall()
    assert dict(cells) == {
        DAY_US: 15 + irregular,
        HOUR_US: 60 + irregular,
        FIVE_MINUTES_US: 60 + irregular,
    }
    upgraded.close()


@pytest.mark.parametrize("irregular", [False, True])
def test_upgrading_a_version_2_postgresql_database_builds_its_rollups(
    postgres_dsn, monkeypatch, irregular
):
    with psycopg.connect(postgres_dsn, autocommit=True) as db:  # as version 2 made it
        db.execute("CREATE TABLE meta (key text PRIMARY KEY, value text)")
        db.execute(_MIGRATIONS[0])
        db.execute(_MIGRATIONS[1])
        db.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        db.execute(
            "INSERT INTO points (begin_us, end_us, type, unit, qty_micro, price_nano, groupby,"
            " metadata) SELECT h * 3600000000 + %s, h * 3600000000 + %s, 'runner.job', 's',"
            " 1500000, 250000000, jsonb_build_object('flavor', 'small', 'repository',"
            " 'o/' || (h %% 5)), '{}' FROM generate_series(0, 59) AS h",
            (int(T0.timestamp() * 1e6), int(T0.timestamp() * 1e6) + 1),
        )
        if irregular:  # only in metadata
            db.execute(
                "INSERT INTO points (begin_us, end_us, type, unit, qty_micro, price_nano, groupby,"
                " metadata) VALUES (%s, %s, 'runner.job', 's', 1, 1, '{}',"
                """ '{"repository": 1}')""",
                (int(T0.timestamp() * 1e6), int(T0.timestamp() * 1e6)),
            )

    upgraded = get_storage("postgresql", dsn=postgres_dsn)

    assert upgraded.rolled_up() is not irregular
    query = {"groupby": ["repository"], "begin": T0, "end": T0 + 2 * DAY}
    answer = upgraded.total(paginate=False, **query)
    assert answer == _from_points(upgraded, monkeypatch, **query)
    assert [row["qty"] for row in answer["results"]][-5:] == [15.0, 15.0, 15.0, 13.5, 13.5]
    upgraded.close()


def test_moving_the_local_store_carries_its_rollups(tmp_path, postgres_dsn):
    local = get_storage("sqlite", path=tmp_path / "metrics.db")
    local.push([_frame(T0 + hour * HOUR, repository=f"o/{hour % 2}") for hour in range(48)])
    fleet = get_storage("postgresql", dsn=postgres_dsn)

    assert local.move_into(fleet)
    fleet._execute("DELETE FROM points")  # what remains comes from the rollups

    totals = fleet.total(["repository"], T0, T0 + 2 * DAY)["results"]
    assert [(row["repository"], row["qty"]) for row in totals] == [("o/0", 36.0), ("o/1", 36.0)]
    fleet.close()


@pytest.mark.parametrize("irregular", [False, True])
def test_upgrading_a_version_3_store_stores_null_attributes_absent_and_rolls_up_again(
    options, monkeypatch, irregular
):
    name, settings = options
    old = get_storage(name, **settings)
    old.push([_frame(T0 + hour * HOUR, repository=f"o/{hour % 3}") for hour in range(30)])
    old.push([_frame(T0 + hour * HOUR, repository=None) for hour in range(4)])  # as harvests did
    if irregular:
        old.push([_frame(T0, repository=5)])
    assert not old.rolled_up()
    old._execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    old.close()

    upgraded = get_storage(name, **settings)

    assert upgraded.rolled_up() is not irregular
    query = {"groupby": ["repository"], "begin": T0, "end": T0 + 2 * DAY}
    answer = upgraded.total(paginate=False, **query)
    assert answer == _from_points(upgraded, monkeypatch, **query)
    assert (None, 6.0) in [(row["repository"], row["qty"]) for row in answer["results"]]
    stored = upgraded.retrieve(T0, T0 + 2 * DAY, paginate=False)["dataframes"]
    groupbys = [point.groupby for frame in stored for _, point in frame.iterpoints()]
    assert sum("repository" not in groupby for groupby in groupbys) == 4
    assert None not in [groupby.get("repository", "absent") for groupby in groupbys]
    upgraded.close()


def _version_4(store):
    """Leave the rollups table as version 4 had it: daily sums only."""
    store._execute("DROP TABLE rollups")
    store._execute(
        "CREATE TABLE rollups (day bigint NOT NULL, group_id bigint NOT NULL, qty_micro"
        " bigint NOT NULL, price_nano bigint NOT NULL, points bigint NOT NULL,"
        " PRIMARY KEY (day, group_id))"
    )
    store._execute("INSERT INTO rollups VALUES (20513, 1, 1, 1, 1)")


def _version_5(store):
    """Leave the rollups as version 5 had them: days, hours and quarter hours."""
    quarter = 900_000_000
    store._execute(
        f"INSERT INTO rollups SELECT {quarter}, {bucket_start('start_us', quarter)}, group_id,"
        f" SUM(qty_micro), SUM(price_nano), SUM(points) FROM rollups"
        f" WHERE span_us = {FIVE_MINUTES_US} GROUP BY 2, 3"
    )
    store._execute(f"DELETE FROM rollups WHERE span_us = {FIVE_MINUTES_US}")


@pytest.mark.parametrize(("version", "make_old"), [(4, _version_4), (5, _version_5)])
def test_upgrading_an_older_store_builds_every_span(options, monkeypatch, version, make_old):
    name, settings = options
    old = get_storage(name, **settings)
    old.push([_frame(T0 + step * 7 * MINUTE, repository=f"o/{step % 3}") for step in range(500)])
    make_old(old)
    old._execute(f"UPDATE meta SET value = '{version}' WHERE key = 'schema_version'")
    old.close()

    upgraded = get_storage(name, **settings)

    assert upgraded.rolled_up()
    nepal = datetime.timezone(datetime.timedelta(hours=5, minutes=45))
    for begin, end in [
        (T0, T0 + 3 * DAY),
        (datetime.datetime(2026, 3, 2, tzinfo=nepal), datetime.datetime(2026, 3, 3, tzinfo=nepal)),
        (T0 + 13 * HOUR + 7 * MINUTE, T0 + 2 * DAY + 9 * HOUR + 41 * MINUTE),
    ]:
        query = {"groupby": ["repository", "type"], "begin": begin, "end": end}
        answer = upgraded.total(paginate=False, **query)
        assert answer == _from_points(upgraded, monkeypatch, **query)
        assert len(answer["results"]) == 3
    spans = upgraded._execute("SELECT DISTINCT span_us FROM rollups ORDER BY 1").fetchall()
    assert spans == [(FIVE_MINUTES_US,), (HOUR_US,), (DAY_US,)]
    upgraded.close()
