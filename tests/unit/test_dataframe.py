"""DataFrame and DataPoint, as CloudKitty's callers use them."""

from __future__ import annotations

import datetime
import decimal
import json

import pytest

from runner_fs.dataframe import DataFrame, DataPoint

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
END = START + datetime.timedelta(hours=1)


def _point(**overrides) -> DataPoint:
    values = {
        "unit": "s",
        "qty": 0.121,
        "price": "1.5",
        "groupby": {"flavor": "small", "year": 2026},
        "metadata": {"runner_name": "r1"},
    }
    return DataPoint(**{**values, **overrides})


def test_floats_become_exact_decimals_and_mappings_are_immutable():
    point = _point()

    assert point.qty == decimal.Decimal("0.121")
    assert point.price == decimal.Decimal("1.5")
    with pytest.raises(TypeError):
        point.groupby["flavor"] = "large"  # type: ignore[index]
    assert point.groupby["year"] == 2026


@pytest.mark.parametrize("qty", ["abc", None, float("nan"), "Infinity"])
def test_a_non_numeric_qty_is_refused(qty):
    with pytest.raises(ValueError, match="DataPoint qty must be"):
        _point(qty=qty)


def test_desc_merges_metadata_under_groupby():
    point = _point(metadata={"flavor": "meta", "runner_name": "r1"})

    assert point.desc == {"flavor": "small", "year": 2026, "runner_name": "r1"}


def test_point_round_trips_through_dict_and_legacy_dict():
    point = _point(description="one job")

    assert DataPoint.from_dict(point.as_dict(mutable=True)) == point
    legacy = DataPoint.from_dict(point.as_dict(legacy=True, mutable=True), legacy=True)
    assert legacy.groupby == point.desc
    assert json.loads(point.json())["vol"] == {"unit": "s", "qty": 0.121}


def test_frame_iterates_points_and_types_in_insertion_order():
    frame = DataFrame(START, END)
    frame.add_point(_point(), "runner.job")
    frame.add_points([_point(qty=2), _point(qty=3)], "runner.idle")

    assert [t for t, _ in frame.iterpoints()] == ["runner.job", "runner.idle", "runner.idle"]
    assert [(t, len(p)) for t, p in frame.itertypes()] == [("runner.job", 1), ("runner.idle", 2)]


def test_frame_round_trips_through_dict_and_json():
    frame = DataFrame(START, END, usage={"runner.job": [_point()]})

    again = DataFrame.from_dict(json.loads(frame.json()))

    assert (again.start, again.end) == (START, END)
    assert list(again.iterpoints()) == list(frame.iterpoints())


def test_a_frame_ending_before_it_starts_is_refused():
    with pytest.raises(ValueError, match="cannot end"):
        DataFrame(END, START)


def test_frame_types_are_checked():
    with pytest.raises(TypeError, match='"start" must be of type datetime'):
        DataFrame("2026-01-01", END)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="isn't a valid DataFrame"):
        DataFrame.from_dict({"period": {}})
