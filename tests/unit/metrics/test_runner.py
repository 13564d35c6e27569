"""Reading runner metric files, hostile ones included, from a real directory."""

from __future__ import annotations

import json
import os
import time

import pytest

from runner_fs.errors import CorruptMetricDataError
from runner_fs.metrics.runner import (
    INSTALLATION_START_FILE,
    INSTALLED_FILE,
    POST_JOB_FILE,
    PRE_JOB_FILE,
    apply_labels,
    read_runner_metrics,
)

NOW = time.time()
PRE = {"timestamp": NOW - 100, "workflow": "ci", "workflow_run_id": "42",
       "repository": "owner/repo", "event": "push"}  # fmt: skip
POST = {"timestamp": NOW - 10, "status": "normal", "status_info": None}


def _write(directory, installed=NOW - 200, start=NOW - 300, pre=PRE, post=POST):
    if start is not None:
        (directory / INSTALLATION_START_FILE).write_text(f"{start}\n")
    if installed is not None:
        (directory / INSTALLED_FILE).write_text(str(installed))
    if pre is not None:
        (directory / PRE_JOB_FILE).write_text(json.dumps(pre))
    if post is not None:
        (directory / POST_JOB_FILE).write_text(json.dumps(post))


def test_valid_files_are_read(tmp_path):
    _write(tmp_path)

    metrics = read_runner_metrics(tmp_path)

    assert metrics is not None
    assert metrics.installed == pytest.approx(NOW - 200)
    assert metrics.pre_job.repository == "owner/repo"
    assert metrics.post_job.status == "normal"


def test_a_missing_installed_timestamp_means_nothing_to_harvest(tmp_path):
    _write(tmp_path, installed=None)

    assert read_runner_metrics(tmp_path) is None


def test_missing_optional_files_are_not_corruption(tmp_path):
    _write(tmp_path, start=None, pre=None, post=POST)

    metrics = read_runner_metrics(tmp_path)

    assert metrics.installation_start is None and metrics.pre_job is None
    assert metrics.post_job is not None


def test_an_integer_run_id_is_accepted_as_a_string_and_repository_may_be_null(tmp_path):
    _write(tmp_path, pre={**PRE, "workflow_run_id": 7, "repository": None})

    metrics = read_runner_metrics(tmp_path)

    assert metrics.pre_job.workflow_run_id == "7"
    assert metrics.pre_job.repository is None


def _hostile(tmp_path, name, make):
    _write(tmp_path)
    path = tmp_path / name
    path.unlink(missing_ok=True)
    make(path)


HOSTILE = {
    "symlink to a host file": (PRE_JOB_FILE, lambda p: p.symlink_to("/etc/passwd"), "symlink"),
    "symlink to /dev/zero": (INSTALLED_FILE, lambda p: p.symlink_to("/dev/zero"), "symlink"),
    "fifo": (PRE_JOB_FILE, os.mkfifo, "FIFO"),
    "directory": (POST_JOB_FILE, lambda p: p.mkdir(), "directory"),
    "oversized": (PRE_JOB_FILE, lambda p: p.write_text(" " * 2000), "2000 bytes"),
    "sparse": (POST_JOB_FILE, lambda p: p.write_text("") or os.truncate(p, 1 << 30),
               "bytes, more than"),
    "invalid utf-8": (PRE_JOB_FILE, lambda p: p.write_bytes(b'{"a": "\xff"}'), "not UTF-8"),
    "nan": (PRE_JOB_FILE, lambda p: p.write_text(json.dumps({**PRE, "timestamp": float("nan")})),
            "NaN is not a number"),
    "infinity timestamp": (INSTALLED_FILE, lambda p: p.write_text("inf"), "not a Unix timestamp"),
    "not an object": (PRE_JOB_FILE, lambda p: p.write_text("[1, 2]"), "must be a JSON object"),
    "wrong type": (PRE_JOB_FILE, lambda p: p.write_text(json.dumps({**PRE, "workflow": 3})),
                   "workflow"),
    "string timestamp": (POST_JOB_FILE,
                         lambda p: p.write_text(json.dumps({**POST, "timestamp": "1700000000"})),
                         "timestamp"),
    "missing field": (PRE_JOB_FILE, lambda p: p.write_text(json.dumps({"timestamp": NOW})),
                      "Field required"),
    "bad status": (POST_JOB_FILE, lambda p: p.write_text(json.dumps({**POST, "status": "ok"})),
                   "status"),
    "far future": (INSTALLED_FILE, lambda p: p.write_text(str(NOW + 3 * 86400)),
                   "more than 24 hours ahead"),
    "before 2015": (INSTALLED_FILE, lambda p: p.write_text("1000"), "before 2015-01-01"),
    "negative": (INSTALLED_FILE, lambda p: p.write_text("-5"), "not a Unix timestamp"),
    "bad repository": (PRE_JOB_FILE,
                       lambda p: p.write_text(json.dumps({**PRE, "repository": "../../x"})),
                       "owner/repo"),
    "control characters": (PRE_JOB_FILE,
                           lambda p: p.write_text(json.dumps({**PRE, "event": "a\x1b[2J"})),
                           "printable"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_are_corrupt_with_a_message_naming_file_and_rule(tmp_path, case):
    name, make, message = HOSTILE[case]
    _hostile(tmp_path, name, make)

    with pytest.raises(CorruptMetricDataError, match=message) as raised:
        read_runner_metrics(tmp_path)

    assert str(raised.value).startswith(name)
    assert len(str(raised.value)) < 400


def test_the_directory_itself_must_not_be_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")

    with pytest.raises(OSError):
        read_runner_metrics(tmp_path / "link")


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ('{"timestamp": 1' + "0" * 400 + "}", "more than 20 digits"),
        ("[" * 1024, "nested deeper than 4 levels"),
        ('{"a": "[[[[[[[[", "b": ' + "[" * 5 + "]" * 5 + "}", "nested deeper than 4 levels"),
        ('{"timestamp": -1e99999}', "finite number"),
        ('{"timestamp": 1e400, "workflow": "x", "workflow_run_id": "1", "event": "e"}',
         "finite number"),
    ],
)  # fmt: skip
def test_json_too_deep_or_numbers_too_large_are_refused_before_they_cost_anything(
    tmp_path, text, rule
):
    _write(tmp_path)
    (tmp_path / PRE_JOB_FILE).write_text(text)

    with pytest.raises(CorruptMetricDataError, match=rule):
        read_runner_metrics(tmp_path)


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path):
    _write(tmp_path, pre={**PRE, "workflow": "[[[[[[{{{{{{", "event": '\\"[[[[['})

    assert read_runner_metrics(tmp_path).pre_job.workflow == "[[[[[[{{{{{{"


def test_an_exit_code_outside_32_bits_is_refused(tmp_path):
    _write(tmp_path, post={**POST, "status_info": {"code": 2**63}})

    with pytest.raises(CorruptMetricDataError, match=r"status_info\.code"):
        read_runner_metrics(tmp_path)


@pytest.mark.parametrize(
    ("window", "rule"),
    [
        ((NOW - 100, NOW + 600), r"start\.timestamp: timestamp .* is before the filesystem"),
        ((NOW - 1000, NOW - 50), r"post-job-metrics\.json: timestamp .* is after the harvest"),
    ],
)
def test_timestamps_outside_the_filesystems_life_are_refused(tmp_path, window, rule):
    _write(tmp_path)

    with pytest.raises(CorruptMetricDataError, match=rule):
        read_runner_metrics(tmp_path, window=window)


def test_timestamps_within_the_window_are_read(tmp_path):
    _write(tmp_path)

    assert read_runner_metrics(tmp_path, window=(NOW - 1000, NOW)) is not None


@pytest.mark.parametrize(
    ("labels", "claimed", "stored"),
    [
        ({"repository": "acme/web"}, "acme/web", "acme/web"),
        ({"repository": "acme/web"}, None, "acme/web"),
        ({"owner": "Acme"}, "acme/api", "acme/api"),
        ({"owner": "acme"}, None, None),
        ({"flavor": "small"}, "anyone/repo", "anyone/repo"),
    ],
)
def test_the_provisioners_label_decides_the_repository(tmp_path, labels, claimed, stored):
    _write(tmp_path, pre={**PRE, "repository": claimed})

    metrics = apply_labels(read_runner_metrics(tmp_path), labels)

    assert metrics.pre_job.repository == stored


@pytest.mark.parametrize(
    "labels", [{"repository": "acme/web"}, {"owner": "acme"}], ids=["repository", "owner"]
)
def test_a_runner_claiming_another_tenant_is_refused(tmp_path, labels):
    _write(tmp_path, pre={**PRE, "repository": "victim-org/app"})

    with pytest.raises(CorruptMetricDataError, match="'victim-org/app' is not"):
        apply_labels(read_runner_metrics(tmp_path), labels)
