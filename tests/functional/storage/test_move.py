"""Switching from SQLite to PostgreSQL: the local history is copied exactly once."""

from __future__ import annotations

import datetime

from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.storage import get_storage

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 4, 1, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)
WINDOW = {"begin": T0, "end": T0 + 48 * HOUR}


def _frames(count: int, unit: str) -> list[DataFrame]:
    frames = []
    for index in range(count):
        frame = DataFrame(T0 + index * HOUR, T0 + (index + 1) * HOUR)
        groupby = {"unit": unit, "flavor": "small", "index": index}
        frame.add_point(DataPoint("s", f"{index}.5", "0.001", groupby, {"n": index}), "runner.job")
        frames.append(frame)
    return frames


def _local_store(tmp_path):
    local = get_storage("sqlite", path=tmp_path / "metrics.db")
    for index, frame in enumerate(_frames(20, "runner-fs/0")):
        local.push_once(f"runner-fs/0/r{index}/uuid", [frame])
    return local


def _content(storage) -> list:
    frames = storage.retrieve(**WINDOW, paginate=False)["dataframes"]
    return [(f.start, t, p) for f in frames for t, p in f.iterpoints()]


def test_the_local_history_and_ledger_are_copied_and_the_file_set_aside(tmp_path, postgres_dsn):
    local = _local_store(tmp_path)
    expected = _content(local)
    fleet = get_storage("postgresql", dsn=postgres_dsn)
    fleet.push(_frames(3, "runner-fs/1"))
    store_id = local.store_id

    assert local.move_into(fleet)

    assert [row for row in _content(fleet) if row[2].groupby["unit"] == "runner-fs/0"] == expected
    assert not fleet.push_once("runner-fs/0/r7/uuid", _frames(1, "runner-fs/0"))
    assert not (tmp_path / "metrics.db").exists()
    assert (tmp_path / f"metrics.db.moved-{store_id}").exists()
    fleet.close()


def test_a_move_interrupted_after_the_copy_never_copies_twice(tmp_path, postgres_dsn):
    local = _local_store(tmp_path)
    fleet = get_storage("postgresql", dsn=postgres_dsn)
    points = local.db.execute("SELECT * FROM points").fetchall()
    # the copy committed, then the process died before setting the file aside
    assert fleet.copy_once(f"sqlite-store/{local.store_id}", [r[1:] for r in points], [])

    assert not local.move_into(fleet)

    assert fleet.retrieve(**WINDOW)["total"] == 20
    assert not (tmp_path / "metrics.db").exists()
    fleet.close()


def test_a_new_local_file_after_a_move_is_a_new_store(tmp_path, postgres_dsn):
    fleet = get_storage("postgresql", dsn=postgres_dsn)
    _local_store(tmp_path).move_into(fleet)

    again = get_storage("sqlite", path=tmp_path / "metrics.db")
    again.push(_frames(2, "runner-fs/0"))
    assert again.move_into(fleet)

    assert fleet.retrieve(**WINDOW)["total"] == 22
    fleet.close()
