"""Our backends driven by CloudKitty itself: its loader, its DataFrames, its configuration."""

from __future__ import annotations

import concurrent.futures
import datetime
import decimal
import os
import threading

import pytest

try:
    from cloudkitty import dataframe as ck_dataframe
    from cloudkitty import storage as ck_storage
    from cloudkitty.storage import v2 as ck_v2
    from oslo_config import cfg
    from werkzeug import exceptions as http_exceptions
except ImportError:
    if os.environ.get("RUNNER_FS_REQUIRE_FUNCTIONAL") == "1":
        raise
    pytest.skip(
        "CloudKitty is not installed: pip install -e '.[cloudkitty]'", allow_module_level=True
    )

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 3, 1, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)


def _frame(start, project, qty, price, metric_type="instance"):
    frame = ck_dataframe.DataFrame(start, start + HOUR)
    groupby = {"project_id": project, "year": start.year, "month": start.month}
    frame.add_point(
        ck_dataframe.DataPoint("s", qty, price, groupby, {"flavor": "m1"}), metric_type
    )
    return frame


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """Load `runner_fs_<backend>` the way CloudKitty does, on an empty store."""
    import runner_fs.storage.cloudkitty  # noqa: F401 (registers [storage_runner_fs])

    option, value = (
        ("sqlite_path", str(tmp_path / "ck.db"))
        if request.param == "sqlite"
        else ("postgresql_dsn", request.getfixturevalue("postgres_dsn"))
    )
    cfg.CONF.set_override(option, value, "storage_runner_fs")
    loaded = ck_storage.get_storage(backend=f"runner_fs_{request.param}", version=2)
    yield loaded
    loaded.backend.close()
    cfg.CONF.clear_override(option, "storage_runner_fs")


def test_cloudkitty_loader_builds_a_cloudkitty_backend(backend):
    backend.init()
    backend.init()

    assert isinstance(backend, ck_v2.BaseStorage)
    assert backend.get_retention() == datetime.timedelta(hours=cfg.CONF.storage.retention_period)


def test_cloudkitty_frames_round_trip_with_their_types(backend):
    backend.init()
    backend.push([_frame(T0, "p1", "1.25", "0.1"), _frame(T0 + HOUR, "p2", 2, "0.2")], "legacy")

    result = backend.retrieve(T0, T0 + 2 * HOUR)

    assert result["total"] == 2
    frames = result["dataframes"]
    assert all(isinstance(f, ck_dataframe.DataFrame) for f in frames)
    assert [f.start for f in frames] == [T0, T0 + HOUR]
    metric_type, point = next(frames[0].iterpoints())
    assert metric_type == "instance"
    assert point.qty == decimal.Decimal("1.25")
    assert point.groupby["year"] == 2026
    assert point.metadata["flavor"] == "m1"
    assert frames[1].as_dict()["usage"]["instance"][0]["vol"]["qty"] == 2


def test_cloudkitty_time_groupby_and_exact_sums(backend):
    backend.init()
    backend.push(
        [_frame(T0 + day * 24 * HOUR, "p1", "0.1", "0.01") for day in range(3) for _ in range(10)]
    )

    result = backend.total(groupby=["time-d", "project_id"], begin=T0, end=T0 + 72 * HOUR)

    assert result["total"] == 3
    assert [row["day_of_the_year"] for row in result["results"]] == [
        "60",
        "61",
        "62",
    ]  # strings, as the collector writes
    assert {row["qty"] for row in result["results"]} == {1.0}
    assert {row["rate"] for row in result["results"]} == {0.1}
    assert list(result["results"][0]) == [
        "begin",
        "end",
        "qty",
        "rate",
        "day_of_the_year",
        "project_id",
    ]


def test_cloudkitty_rejects_an_unknown_time_groupby_with_its_own_error(backend):
    backend.init()

    with pytest.raises(http_exceptions.BadRequest, match="time-q"):
        backend.total(groupby=["time-q"], begin=T0, end=T0 + HOUR)


def test_cloudkitty_delete_honours_filters_and_open_bounds(backend):
    backend.init()
    backend.push([_frame(T0, "p1", 1, 0), _frame(T0, "p2", 1, 0), _frame(T0 + HOUR, "p1", 1, 0)])

    backend.delete(begin=T0 + HOUR, end=None, filters={"project_id": "p1"})

    remaining = backend.total(groupby=["project_id"], begin=T0, end=T0 + 2 * HOUR)
    assert [(r["project_id"], r["qty"]) for r in remaining["results"]] == [
        ("p1", 1.0),
        ("p2", 1.0),
    ]


def test_cloudkitty_pages_concatenate_to_the_whole(backend):
    backend.init()
    backend.push([_frame(T0 + i * HOUR, f"p{i % 5}", i, 0) for i in range(12)])
    window = {"groupby": ["project_id", "time"], "begin": T0, "end": T0 + 12 * HOUR}

    whole = backend.total(**window, paginate=False)["results"]
    pages = [backend.total(**window, offset=o, limit=5)["results"] for o in range(0, 12, 5)]

    assert [row for page in pages for row in page] == whole
    assert len(whole) == 12


def test_a_driver_cloudkitty_never_initialised_opens_its_store_on_first_use(backend):
    frames = [_frame(T0 + index * HOUR, f"p{index % 2}", "2", "1") for index in range(4)]

    backend.push(frames, "scope")  # as CloudKitty's processor does: no init() in its process

    summary = backend.total(groupby=["project_id"], begin=T0, end=T0 + 24 * HOUR)
    assert sorted((row["project_id"], row["qty"]) for row in summary["results"]) == [
        ("p0", 4.0), ("p1", 4.0)
    ]  # fmt: skip


def test_one_driver_serves_many_threads_at_once_as_cloudkittys_api_does(backend):
    threads = 12
    barrier = threading.Barrier(threads)

    def request(index: int) -> int:
        barrier.wait()  # every thread's first use lands together
        backend.push([_frame(T0 + index * HOUR, f"p{index % 3}", "1", "1")])
        backend.total(groupby=["project_id"], begin=T0, end=T0 + 24 * HOUR)
        return backend.retrieve(begin=T0, end=T0 + 24 * HOUR, paginate=False)["total"]

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        seen = list(pool.map(request, range(threads)))

    assert all(1 <= total <= threads for total in seen)
    totals = backend.total(groupby=["project_id"], begin=T0, end=T0 + 24 * HOUR)["results"]
    assert sorted((row["project_id"], row["qty"]) for row in totals) == [
        ("p0", 4.0), ("p1", 4.0), ("p2", 4.0)
    ]  # fmt: skip
