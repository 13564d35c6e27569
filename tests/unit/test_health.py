"""Health rules shared by the charm's status and the Nagios checks, and `runner-fs check`."""

from __future__ import annotations

import datetime
import json

import pytest

from runner_fs import health
from runner_fs.cli import main
from runner_fs.reconcile import ReconcileResult, record_reconcile, start_harvest_clock

FIVE_MINUTES = datetime.timedelta(minutes=5)


def _ago(minutes: float) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (now - datetime.timedelta(minutes=minutes)).isoformat(timespec="seconds")


def _record(tmp_path, **record) -> None:
    (tmp_path / "last-reconcile.json").write_text(json.dumps(record))


def test_a_host_with_no_pass_and_no_clock_is_not_judged(tmp_path):
    assert health.freshness(tmp_path, FIVE_MINUTES).code == health.OK
    assert health.last_pass(tmp_path) == health.Finding(health.OK, "last harvest: none yet")


def test_stalled_after_three_intervals_since_the_last_success(tmp_path):
    _record(tmp_path, ended=_ago(16), errors=0, last_success=_ago(16))

    stale = health.freshness(tmp_path, FIVE_MINUTES)

    assert stale.code == health.CRITICAL
    assert stale.message.startswith(f"no harvest since {_ago(16)[:16]}")
    assert health.freshness(tmp_path, datetime.timedelta(minutes=6)).code == health.OK


def test_the_clock_starts_when_passes_are_set_up_and_survives_failed_passes(tmp_path):
    start_harvest_clock(tmp_path)
    record_reconcile(tmp_path, ReconcileResult(errors=1, problem="storage down"))
    record = json.loads((tmp_path / "last-reconcile.json").read_text())
    record["since"] = _ago(20)
    _record(tmp_path, **record)

    assert health.freshness(tmp_path, FIVE_MINUTES).code == health.CRITICAL
    failed = health.last_pass(tmp_path)
    assert failed.code == health.CRITICAL
    assert failed.message.endswith("failed: storage down")
    record_reconcile(tmp_path, ReconcileResult())
    assert health.freshness(tmp_path, FIVE_MINUTES).code == health.OK
    assert health.last_pass(tmp_path).code == health.OK


def test_free_space_thresholds(tmp_path):
    assert health.free_space(tmp_path, warning=0, critical=0).code == health.OK
    assert health.free_space(tmp_path, warning=101, critical=0).code == health.WARNING
    critical = health.free_space(tmp_path, warning=101, critical=101)
    assert critical.code == health.CRITICAL
    assert f"free under {tmp_path}" in critical.message


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [(["harvest"], 2, "RUNNER-FS HARVEST CRITICAL - no harvest since"),
     (["harvest", "--interval", "10"], 0, "RUNNER-FS HARVEST OK - last successful harvest"),
     (["errors"], 0, "RUNNER-FS ERRORS OK - last harvest: "),
     (["free-space", "--warning", "101"], 1, "RUNNER-FS FREE-SPACE WARNING - ")],
)  # fmt: skip
def test_the_check_command_speaks_nagios_without_a_config_file(tmp_path, capsys, args, code, line):
    _record(tmp_path, ended=_ago(16), errors=0, last_success=_ago(16))

    exit_code = main(["--config", str(tmp_path / "absent.yaml"), "check", *args,
                      "--base-dir", str(tmp_path)])  # fmt: skip

    assert exit_code == code
    assert capsys.readouterr().out.startswith(line)
