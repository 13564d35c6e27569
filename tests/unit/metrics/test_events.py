"""Metrics to DataFrames, per the metric-types table."""

from __future__ import annotations

import decimal

import pytest

from runner_fs.metrics.events import IDLE, INSTALLATION, JOB, parse_rates, to_dataframes
from runner_fs.metrics.runner import PostJobMetrics, PreJobMetrics, RunnerMetrics

T0 = 1_750_000_000.0
PRE = PreJobMetrics(timestamp=T0 + 100, workflow="ci", workflow_run_id="9",
                    repository="o/r", event="push")  # fmt: skip
POST = PostJobMetrics(timestamp=T0 + 400, status="abnormal", status_info={"code": 137})
RATES = {"large": decimal.Decimal("0.036")}


def _frames(**fields):
    values = {"installation_start": T0 - 60, "installed": T0, "pre_job": PRE, "post_job": POST}
    metrics = RunnerMetrics(**{**values, **fields})
    return {
        type_: (frame, point)
        for frame in to_dataframes(metrics, "r1", "runner-fs/0", "large", RATES)
        for type_, point in frame.iterpoints()
    }


def test_all_three_types_with_groupby_metadata_and_price():
    frames = _frames()

    frame, job = frames[JOB]
    assert job.qty == decimal.Decimal("300.000000")
    assert job.price == decimal.Decimal("0.003000000")
    assert dict(job.groupby) == {
        "unit": "runner-fs/0", "flavor": "large", "repository": "o/r",
        "workflow": "ci", "event": "push", "status": "abnormal",
    }  # fmt: skip
    assert dict(job.metadata) == {"runner_name": "r1", "workflow_run_id": "9", "status_code": 137}
    assert frame.start.timestamp() == T0 + 100 and frame.end.timestamp() == T0 + 400
    assert frames[IDLE][1].qty == 100
    assert dict(frames[INSTALLATION][1].groupby) == {"unit": "runner-fs/0", "flavor": "large"}
    assert frames[INSTALLATION][1].unit == "s"


def test_negative_durations_are_clamped_and_the_frame_ends_where_it_begins():
    frames = _frames(post_job=POST.model_copy(update={"timestamp": T0 + 50}))

    frame, job = frames[JOB]
    assert job.qty == 0
    assert frame.end == frame.start


def test_only_types_with_both_endpoints_are_pushed():
    assert set(_frames(installation_start=None, post_job=None)) == {IDLE}
    assert set(_frames(pre_job=None)) == {INSTALLATION}


def test_a_flavor_without_a_rate_costs_nothing():
    metrics = RunnerMetrics(installation_start=None, installed=T0, pre_job=PRE, post_job=POST)

    frames = to_dataframes(metrics, "r1", "u", "small", RATES)

    assert all(point.price == 0 for frame in frames for _, point in frame.iterpoints())


def test_rates_parse_and_bad_rates_say_the_form():
    assert parse_rates("small=0.008, large=0.032") == {
        "small": decimal.Decimal("0.008"), "large": decimal.Decimal("0.032")
    }  # fmt: skip
    assert parse_rates("") == {}
    with pytest.raises(ValueError, match="use flavor=price-per-hour"):
        parse_rates("small:1")
