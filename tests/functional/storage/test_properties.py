"""Properties of every backend over generated data, and exact sums at scale."""

from __future__ import annotations

import datetime
import decimal
import itertools
import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.storage import get_storage

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 5, 1, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)

quantities = st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False)
prices = st.decimals(min_value=0, max_value=10**3, places=9, allow_nan=False)
labels = st.one_of(st.sampled_from(["a", "b", "c", "o/r"]), st.integers(0, 3))
points = st.tuples(
    st.integers(0, 71),  # hour from T0
    st.sampled_from(["runner.job", "runner.idle"]),
    quantities,
    prices,
    labels,
)
zones = st.sampled_from([UTC, datetime.timezone(datetime.timedelta(hours=5, minutes=30))])
relaxed = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_fresh = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_storage(request, tmp_path_factory):
    """Return a function that opens a new, empty store of one backend; close them after."""
    opened = []

    def new():
        if request.param == "sqlite":
            options = {"path": tmp_path_factory.mktemp("prop") / "metrics.db"}
        else:
            server = request.getfixturevalue("postgres_server")
            options = {"dsn": server.create_database(f"prop_{os.getpid()}_{next(_fresh)}")}
        opened.append(get_storage(request.param, **options))
        return opened[-1]

    yield new
    for storage in opened:
        storage.close()


def _stored(new_storage, generated):
    """Push the generated points into a new store and return it."""
    storage = new_storage()
    frames = []
    for hour, type_, qty, price, label in generated:
        frame = DataFrame(T0 + hour * HOUR, T0 + (hour + 1) * HOUR)
        frame.add_point(DataPoint("s", qty, price, {"label": label}, {"hour": hour}), type_)
        frames.append(frame)
    storage.push(frames)
    return storage


@relaxed
@given(st.lists(points, max_size=60))
def test_total_is_the_exact_decimal_sum(new_storage, generated):
    storage = _stored(new_storage, generated)

    (row,) = storage.total(begin=T0, end=T0 + 72 * HOUR)["results"]

    assert decimal.Decimal(str(row["qty"])) == round(sum(p[2] for p in generated), 6)
    assert row["rate"] == float(sum((p[3] for p in generated), decimal.Decimal(0)))


@relaxed
@given(st.lists(points, max_size=60), st.integers(1, 7))
def test_pages_concatenate_to_the_unpaginated_answer(new_storage, generated, limit):
    storage = _stored(new_storage, generated)
    window = {"groupby": ["label", "type", "time"], "begin": T0, "end": T0 + 72 * HOUR}

    whole = storage.total(**window, paginate=False)
    pages = [
        storage.total(**window, offset=offset, limit=limit)["results"]
        for offset in range(0, whole["total"], limit)
    ]

    assert [row for page in pages for row in page] == whole["results"]
    retrieved = [
        storage.retrieve(T0, T0 + 72 * HOUR, offset=offset, limit=limit)
        for offset in range(0, len(generated), limit)
    ]
    points_seen = [p for r in retrieved for f in r["dataframes"] for p in f.iterpoints()]
    assert len(points_seen) == len(generated)


@relaxed
@given(st.lists(points, min_size=1, max_size=30))
def test_points_round_trip_with_their_values_and_types(new_storage, generated):
    storage = _stored(new_storage, generated)

    frames = storage.retrieve(T0, T0 + 72 * HOUR, paginate=False)["dataframes"]

    got = [
        ((f.start - T0) // HOUR, t, p.qty, p.price, p.groupby["label"])
        for f in frames
        for t, p in f.iterpoints()
    ]
    assert Counter(got) == Counter(generated)


@relaxed
@given(st.lists(points, max_size=40), st.integers(0, 72), st.integers(0, 72), zones)
def test_a_point_counts_when_its_start_is_in_the_half_open_window(
    new_storage, generated, a, b, zone
):
    storage = _stored(new_storage, generated)
    begin, end = (T0 + a * HOUR).astimezone(zone), (T0 + b * HOUR).astimezone(zone)

    counted = storage.retrieve(begin, end, paginate=False)["total"]

    assert counted == sum(1 for p in generated if a <= p[0] < b)


@pytest.mark.slow
def test_one_million_prices_sum_to_the_cent(new_storage):
    storage = new_storage()
    expected = decimal.Decimal(0)
    for batch in range(100):
        frames = []
        for i in range(10_000):
            price = decimal.Decimal((batch * 10_000 + i) % 9973) / 100  # cents, up to 99.72
            expected += price
            frame = DataFrame(T0 + (i % 700) * HOUR, T0 + (i % 700 + 1) * HOUR)
            frame.add_point(DataPoint("s", "0.01", price, {"flavor": "small"}, {}), "runner.job")
            frames.append(frame)
        storage.push(frames)

    (row,) = storage.total(begin=T0, end=T0 + 800 * HOUR)["results"]

    assert decimal.Decimal(str(row["rate"])) == expected
    assert decimal.Decimal(str(row["qty"])) == decimal.Decimal("10000.00")
    assert storage.retrieve(T0, T0 + 800 * HOUR, limit=1)["total"] == 1_000_000
