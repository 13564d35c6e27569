"""The charm with ops.testing: every event, action and status, on files under a test root."""

from __future__ import annotations

import base64
import datetime
import json
import lzma
import os
import re
import stat
from pathlib import Path

import pydantic
import pytest
from ops import testing
from psycopg.conninfo import conninfo_to_dict

import charm
import machine
import runner_fs
from database import Login, split_endpoint
from runner_fs import host
from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.storage import get_storage

UNIT_NAME = "runner-fs/0"


@pytest.fixture
def root(tmp_path, monkeypatch):
    """Return a machine root, with a `systemctl` first on PATH that records its arguments.

    It fails with a message on stderr, as systemctl does, while `systemctl.fail` exists.
    """
    monkeypatch.setattr(charm, "HOST_ROOT", tmp_path)
    systemctl = tmp_path / "usr/bin/systemctl"
    systemctl.parent.mkdir(parents=True)
    systemctl.write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/systemctl.log\n'
        f"if [ -e {tmp_path}/systemctl.fail ]; then\n"
        f'  echo "Failed to enable unit: Access denied" >&2; exit 1\nfi\n'
    )
    systemctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{systemctl.parent}:{os.environ['PATH']}")
    return tmp_path


def systemctl_calls(root) -> list[str]:
    log = root / "systemctl.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def ctx():
    return testing.Context(charm.RunnerFsCharm, app_name="runner-fs", unit_id=0)


VALID = {"filesystem-owner": "root:root"}


def test_install_renders_config_timer_and_wrapper(ctx, root):
    ctx.run(ctx.on.install(), testing.State(config={**VALID, "reconcile-interval": 7}))

    settings = json.loads((root / "etc/runner-fs/config.yaml").read_text().split("\n", 1)[1])
    assert settings["unit"] == UNIT_NAME
    assert settings["base-dir"] == str(root / "var/lib/runner-fs")
    assert stat.S_IMODE((root / "etc/runner-fs/config.yaml").stat().st_mode) == 0o600
    timer = (root / "etc/systemd/system/runner-fs-reconcile.timer").read_text()
    assert "OnUnitInactiveSec=7min" in timer
    assert "RandomizedDelaySec=84s" in timer
    service = (root / "etc/systemd/system/runner-fs-reconcile.service").read_text()
    assert "\nExecStart=/usr/local/bin/runner-fs reconcile\nTimeoutStartSec=420\n" in service
    assert (
        f"\nExecStopPost=/usr/bin/timeout 60 /usr/bin/juju-exec {UNIT_NAME}"
        ' "JUJU_DISPATCH_PATH=hooks/reconcile ./dispatch"\n'
    ) in service
    wrapper = root / "usr/local/bin/runner-fs"
    assert wrapper.stat().st_mode & 0o111
    assert f'RUNNER_FS_CONFIG="{root}/etc/runner-fs/config.yaml"' in wrapper.read_text()
    assert systemctl_calls(root) == [
        "daemon-reload", *RESUME_TIMER, "restart runner-fs-metrics.service"
    ]  # fmt: skip


RESUME_TIMER = [
    f"{action} runner-fs-{unit}"
    for unit in ("reconcile.timer", "metrics.service")
    for action in ("unmask", "enable --now", "--quiet is-active")
]


def test_converging_again_writes_nothing_but_keeps_the_timer_enabled_and_active(ctx, root):
    state = testing.State(config=VALID)
    ctx.run(ctx.on.install(), state)
    before = (root / "etc/runner-fs/config.yaml").stat().st_mtime_ns

    ctx.run(ctx.on.config_changed(), state)  # a timer disabled by hand is enabled again
    ctx.run(ctx.on.update_status(), state)

    assert (root / "etc/runner-fs/config.yaml").stat().st_mtime_ns == before
    assert systemctl_calls(root) == [
        "daemon-reload", *RESUME_TIMER, "restart runner-fs-metrics.service", *RESUME_TIMER * 2
    ]  # fmt: skip


def test_a_failing_systemctl_blocks_with_its_stderr_and_is_retried(ctx, root):
    (root / "systemctl.fail").touch()

    out = ctx.run(ctx.on.install(), testing.State(config=VALID))

    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "reconcile timer could not be started" in out.unit_status.message
    assert any("Access denied" in line.message for line in ctx.juju_log)
    (root / "systemctl.fail").unlink()
    out = ctx.run(ctx.on.update_status(), out)
    assert out.unit_status == ACTIVE


ACTIVE = testing.ActiveStatus("harvesting every 5 min into sqlite")


def test_a_valid_config_is_active_with_a_stable_message(ctx, root):
    out = ctx.run(ctx.on.config_changed(), testing.State(config=VALID))
    out = ctx.run(ctx.on.action("reconcile"), out)

    assert out.unit_status == ACTIVE


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("filesystem-size", "10T", "filesystem-size='10T'"),
        ("filesystem-size", "64K", "filesystem-size='64K'"),
        ("filesystem-size", "lots", "filesystem-size='lots'"),
        (
            "reconcile-interval",
            0,
            "reconcile-interval=0: Input should be greater than or equal to 1",
        ),
        (
            "reconcile-interval",
            5000,
            "reconcile-interval=5000: Input should be less than or equal to 1440",
        ),
        ("max-runner-age", 0.0, "max-runner-age=0.0: Input should be greater than 0"),
        ("max-runner-age", -3.0, "max-runner-age=-3.0"),
        ("retention-period", 0.0, "retention-period=0.0"),
        ("storage-backend", "influxdb", "storage-backend='influxdb'"),
        ("filesystem-owner", "no-such-user", "filesystem-owner='no-such-user'"),
        ("filesystem-owner", "root:no-such-group", "group 'no-such-group' does not exist"),
        ("rates", "small=cheap", "rates='small=cheap': invalid rate"),
    ],
)
def test_each_invalid_option_is_blocked_naming_it(ctx, root, option, value, message):
    out = ctx.run(ctx.on.config_changed(), testing.State(config={**VALID, option: value}))

    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert message in out.unit_status.message
    assert not (root / "etc/runner-fs/config.yaml").exists()


def test_no_loop_devices_is_blocked_saying_so(ctx, root, monkeypatch):
    monkeypatch.setattr(host, "LOOP_CONTROL", root / "dev/loop-control")

    out = ctx.run(ctx.on.start(), testing.State(config=VALID))

    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "no loop devices here" in out.unit_status.message


def test_stop_removes_timer_and_wrapper_but_keeps_data(ctx, root):
    state = testing.State(config=VALID)
    ctx.run(ctx.on.install(), state)
    (root / "var/lib/runner-fs/metrics.db").write_text("kept")

    ctx.run(ctx.on.stop(), state)

    assert not (root / "etc/systemd/system/runner-fs-reconcile.timer").exists()
    assert not (root / "usr/local/bin/runner-fs").exists()
    assert (root / "var/lib/runner-fs/metrics.db").read_text() == "kept"
    assert systemctl_calls(root)[-4:] == [
        "disable --now runner-fs-reconcile.timer",
        "stop runner-fs-reconcile.service",
        "disable --now runner-fs-metrics.service",
        "daemon-reload",
    ]
    assert (root / "etc/runner-fs/config.yaml").exists()  # until remove


def test_list_action_returns_filesystems_and_counts(ctx, root):
    ctx.run(ctx.on.action("list"), testing.State(config=VALID))

    assert ctx.action_results == {"filesystems": "[]", "counts": "{}", "archives": "[]"}


def test_list_action_fails_with_a_message_when_the_filesystems_cannot_be_read(ctx, root):
    base = root / "var/lib/runner-fs"
    base.mkdir(parents=True)
    (base / "images").write_text("a file where the images directory belongs")

    with pytest.raises(testing.ActionFailed, match="cannot list filesystems: "):
        ctx.run(ctx.on.action("list"), testing.State(config=VALID))


def test_the_host_config_is_never_readable_by_others_even_over_a_stale_temporary_file(
    ctx, root, monkeypatch
):
    config = root / "etc/runner-fs/config.yaml"
    config.parent.mkdir(parents=True)
    stale = config.with_name(".config.yaml.tmp")
    stale.write_text("left by an older charm")
    stale.chmod(0o644)
    modes = {}
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):  # each file's mode before its first byte is written
        modes[os.readlink(f"/proc/self/fd/{fd}")] = stat.S_IMODE(os.fstat(fd).st_mode)
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(machine.os, "fdopen", fdopen)
    ctx.run(ctx.on.install(), testing.State(config=VALID))
    monkeypatch.undo()

    (written,) = (name for name in modes if "/.config.yaml." in name)
    assert modes[written] == 0o600
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_the_database_login_repr_never_shows_the_password():
    login = Login("postgresql://runner_fs:s3cret-pw@db:5432/runner_fs", True, None)

    assert "s3cret-pw" not in repr(login)
    assert "s3cret-pw" not in str(login)


@pytest.mark.parametrize(
    ("runner", "message"),
    [("ghost", "runner ghost has no filesystem"), ("Bad/Name", "invalid runner name")],
)
def test_quarantine_action_fails_clearly(ctx, root, runner, message):
    with pytest.raises(testing.ActionFailed, match=message):
        ctx.run(
            ctx.on.action("quarantine", params={"runner": runner}), testing.State(config=VALID)
        )


def test_reconcile_action_returns_the_counts(ctx, root):
    ctx.run(ctx.on.action("reconcile"), testing.State(config=VALID))

    assert ctx.action_results == {
        "harvested": 0, "quarantined": 0, "skipped": 0, "datapoints": 0, "errors": 0
    }  # fmt: skip


def test_report_action_returns_rows(ctx, root):
    storage = get_storage("sqlite", path=root / "var/lib/runner-fs/metrics.db")
    frame = DataFrame(datetime.datetime(2026, 1, 5), datetime.datetime(2026, 1, 5, 1))
    frame.add_point(
        DataPoint("s", 3600, "0.008", {"repository": "o/r", "flavor": "small"}, {}), "runner.job"
    )
    storage.push([frame])
    params = {"groupby": "repository,flavor", "begin": "2026-01-01", "end": "2026-02-01"}

    ctx.run(ctx.on.action("report", params=params), testing.State(config=VALID))

    assert ctx.action_results == {"total": 1, "results": json.dumps([
        {"begin": "2026-01-01T00:00:00+00:00", "end": "2026-02-01T00:00:00+00:00",
         "qty": 3600.0, "rate": 0.008, "repository": "o/r", "flavor": "small"}
    ])}  # fmt: skip


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"begin": "last week"}, "begin 'last week' is not ISO 8601: use 2026-11-01"),
        ({"groupby": "time-q"}, "invalid time groupby 'time-q'"),
        ({"begin": "2026-02-01", "end": "2026-01-01"}, "is before begin"),
    ],
)
def test_report_action_refuses_bad_input_with_the_accepted_form(ctx, root, params, message):
    with pytest.raises(testing.ActionFailed, match=message):
        ctx.run(ctx.on.action("report", params=params), testing.State(config=VALID))


def test_an_action_under_invalid_config_fails_naming_the_option(ctx, root):
    with pytest.raises(testing.ActionFailed, match="rates="):
        ctx.run(ctx.on.action("list"), testing.State(config={**VALID, "rates": "x"}))


def test_the_core_imports_nothing_from_ops():
    core = Path(runner_fs.__file__).parent

    importing_ops = [
        path.name
        for path in core.rglob("*.py")
        if re.search(r"^\s*(import|from) ops\b", path.read_text(), re.M)
    ]

    assert importing_ops == []


def test_start_converges_and_is_active(ctx, root):
    out = ctx.run(ctx.on.start(), testing.State(config=VALID))

    assert (root / "etc/systemd/system/runner-fs-reconcile.timer").exists()
    assert isinstance(out.unit_status, testing.ActiveStatus)


def test_upgrade_charm_restarts_the_exporter_and_starts_a_pass_outside_the_hook(ctx, root):
    ctx.run(ctx.on.install(), testing.State(config=VALID))
    (root / "systemctl.log").unlink()
    (root / "version").write_text("0.1.0+second\n")

    ctx.run(ctx.on.upgrade_charm(), testing.State(config=VALID))

    calls = systemctl_calls(root)
    assert calls[-2:] == [
        "restart runner-fs-metrics.service", "start --no-block runner-fs-reconcile.service"
    ]  # fmt: skip
    metrics = (root / "etc/systemd/system/runner-fs-metrics.service").read_text()
    assert "Environment=RUNNER_FS_VERSION=" in metrics
    assert not (root / "var/lib/runner-fs/metrics.db").exists()  # the pass opens storage


def test_remove_takes_the_timer_and_the_host_config_away(ctx, root):
    state = testing.State(config=VALID)
    ctx.run(ctx.on.install(), state)

    ctx.run(ctx.on.remove(), state)

    assert not (root / "etc/systemd/system/runner-fs-reconcile.service").exists()
    assert not (root / "etc/runner-fs/config.yaml").exists()


def test_stop_and_remove_never_fail_even_when_systemd_does(ctx, root):
    state = testing.State(config=VALID)
    ctx.run(ctx.on.install(), state)
    (root / "systemctl.fail").touch()

    out = ctx.run(ctx.on.stop(), state)
    ctx.run(ctx.on.remove(), out)

    assert not (root / "etc/runner-fs/config.yaml").exists()
    assert any("could not disable" in line.message for line in ctx.juju_log)


def test_a_second_unit_on_the_machine_is_blocked_naming_the_first(ctx, root):
    state = testing.State(config=VALID)
    ctx.run(ctx.on.install(), state)
    second = testing.Context(charm.RunnerFsCharm, app_name="runner-fs", unit_id=1)
    rendered = (root / "etc/runner-fs/config.yaml").read_text()

    out = second.run(second.on.install(), state)
    second.run(second.on.remove(), out)

    assert out.unit_status == testing.BlockedStatus(
        f"runner-fs/0 already manages runner filesystems on this machine"
        f" ({root}/etc/runner-fs/config.yaml): remove this unit (runner-fs/1)"
    )
    assert (root / "etc/runner-fs/config.yaml").read_text() == rendered  # untouched
    assert (root / "etc/systemd/system/runner-fs-reconcile.timer").exists()


def _last_pass(root, **record) -> None:
    base = root / "var/lib/runner-fs"
    base.mkdir(parents=True, exist_ok=True)
    (base / "last-reconcile.json").write_text(json.dumps(record))


def test_a_failed_last_pass_shows_in_status_with_its_reason(ctx, root):
    _last_pass(root, ended="2026-11-30T10:00:00+00:00", errors=1,
               problem="storage failed; filesystems wait for the next pass: disk I/O error",
               last_success=None)  # fmt: skip

    out = ctx.run(ctx.on.update_status(), testing.State(config=VALID))

    assert isinstance(out.unit_status, testing.ActiveStatus)  # the next pass may heal it
    assert out.unit_status.message.startswith("harvesting every 5 min into sqlite; last harvest")
    assert "last harvest (2026-11-30T10:00:00+00:00) failed: storage failed" in (
        out.unit_status.message
    )


def test_a_storage_that_cannot_open_is_recorded_as_a_failed_pass(ctx, root):
    database = root / "var/lib/runner-fs/metrics.db"
    database.mkdir(parents=True)  # a directory where the file should be

    out = ctx.run(ctx.on.update_status(), testing.State(config=VALID))
    with pytest.raises(testing.ActionFailed):
        ctx.run(ctx.on.action("reconcile"), out)
    out = ctx.run(ctx.on.update_status(), out)

    assert "failed: " in out.unit_status.message


def test_no_pass_for_three_intervals_shows_in_status(ctx, root):
    now = datetime.datetime.now(datetime.timezone.utc)
    _last_pass(root, ended=(now - datetime.timedelta(minutes=16)).isoformat(), errors=0,
               last_success=(now - datetime.timedelta(minutes=16)).isoformat())  # fmt: skip

    stale = ctx.run(ctx.on.update_status(), testing.State(config=VALID))
    fresh = ctx.run(
        ctx.on.update_status(), testing.State(config={**VALID, "reconcile-interval": 6})
    )

    assert isinstance(stale.unit_status, testing.ActiveStatus)
    assert "; no harvest since" in stale.unit_status.message
    assert fresh.unit_status.name == "active"


# -- the database relation (a real PostgreSQL server behind it) -------------------------------

POSTGRESQL = {**VALID, "storage-backend": "postgresql"}


def _database(
    server, dbname: str, *, in_secret: bool = True, port: int | None = None, **more: str
):
    """Return the relation and secrets a charmed PostgreSQL would give for `dbname`.

    `more` adds fields (`endpoints`, `uris`, `tls`, `tls-ca`); TLS ones go into a second secret.
    """
    server.create_database(dbname)
    login = {"username": "runner_fs_test", "password": server.password}
    answer = {"endpoints": f"127.0.0.1:{port or server.port}", "database": dbname}
    tls = {key: more.pop(key) for key in ("tls", "tls-ca") if key in more}
    login |= {key: more.pop(key) for key in ("uris",) if key in more}
    answer |= more
    secrets = [testing.Secret(tracked_content=login)]
    if in_secret:
        answer["secret-user"] = secrets[0].id
        if tls:
            secrets.append(testing.Secret(tracked_content=tls))
            answer["secret-tls"] = secrets[1].id
    else:
        answer |= login | tls
    relation = testing.Relation(
        "database", remote_app_name="postgresql", remote_app_data=answer, remote_units_data={0: {}}
    )
    return relation, secrets[0], secrets


def _rendered(root) -> dict:
    return json.loads((root / "etc/runner-fs/config.yaml").read_text().split("\n", 1)[1])


def test_postgresql_without_the_relation_is_blocked_saying_how_to_integrate(ctx, root):
    out = ctx.run(ctx.on.config_changed(), testing.State(config=POSTGRESQL))

    assert out.unit_status == testing.BlockedStatus(
        "integrate with a postgresql charm: juju integrate runner-fs postgresql"
    )
    assert _rendered(root)["storage-backend"] == "sqlite"  # harvests go on locally


def test_the_leader_asks_for_a_database_and_waits_for_credentials(ctx, root):
    relation = testing.Relation("database", remote_app_name="postgresql")

    out = ctx.run(
        ctx.on.relation_joined(relation),
        testing.State(config=POSTGRESQL, relations=[relation], leader=True),
    )

    assert out.get_relation(relation.id).local_app_data == {
        "database": "runner_fs",
        "requested-secrets": '["username", "password", "uris", "tls", "tls-ca"]',
    }
    assert out.unit_status == testing.WaitingStatus(
        "waiting for database credentials from postgresql (harvests go to a local file)"
    )


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [("10.0.0.5:5433", ("10.0.0.5", 5433)), ("db.internal", ("db.internal", 5432)),
     ("[fd00::5]:6432", ("fd00::5", 6432)), ("fd00::5", ("fd00::5", 5432)),
     ("db:", ("db", 5432))],
)  # fmt: skip
def test_endpoints_with_and_without_port_and_in_ipv6(endpoint, expected):
    assert split_endpoint(endpoint) == expected


def test_a_non_numeric_port_is_named():
    with pytest.raises(ValueError, match="'db:http': the port must be a number"):
        split_endpoint("db:http")


def test_with_nrpe_related_the_check_plugin_is_installed_and_goes_with_it(ctx, root):
    nrpe = testing.SubordinateRelation("nrpe-external-master", remote_app_name="nrpe")
    state = testing.State(config=VALID, relations=[nrpe])
    plugin = root / "usr/local/lib/nagios/plugins/check_runner_fs"

    out = ctx.run(ctx.on.relation_changed(nrpe), state)
    installed = plugin.read_text()
    ctx.run(ctx.on.relation_broken(nrpe), out)

    assert 'exec /usr/local/bin/runner-fs check "$@"' in installed
    assert not plugin.exists()


def test_cos_agent_gets_the_scrape_job_rules_and_dashboard_a_collector_decodes(ctx, root):
    cos = testing.SubordinateRelation("cos-agent", remote_app_name="opentelemetry-collector")
    state = testing.State(config={**VALID, "metrics-port": 10300}, relations=[cos])

    out = ctx.run(ctx.on.relation_joined(cos), state)

    data = json.loads(out.get_relation(cos.id).local_unit_data["config"])  # as a collector reads
    assert data["metrics_scrape_jobs"] == [{
        "job_name": "runner-fs_metrics", "metrics_path": "/metrics",
        "static_configs": [{"targets": ["localhost:10300"]}],
    }]  # fmt: skip
    rules = [rule for g in data["metrics_alert_rules"]["groups"] for rule in g["rules"]]
    assert "RunnerFsHarvestStale" in {rule["alert"] for rule in rules}
    (dashboard,) = data["dashboards"]
    decoded = json.loads(lzma.decompress(base64.b64decode(dashboard)))
    assert decoded["title"] == "runner-fs"
    assert (data["log_slots"], data["log_alert_rules"], data["subordinate"]) == ([], {}, True)


class CosAgentProviderUnitData(pydantic.BaseModel):
    """The cos_agent interface's unit databag, as its library publishes the model."""

    model_config = pydantic.ConfigDict(extra="forbid")

    metrics_alert_rules: dict
    log_alert_rules: dict
    dashboards: list[str]
    subordinate: bool | None = None
    metrics_scrape_jobs: list[dict]
    log_slots: list[str]
    tracing_protocols: list[str] | None = None


def test_the_cos_agent_databag_fits_a_model_written_from_the_librarys_with_this_topology(
    ctx, root
):
    cos = testing.SubordinateRelation("cos-agent", remote_app_name="opentelemetry-collector")
    model = testing.Model(name="fleet", uuid="9f2c3a1e-54b2-4c43-9d4e-3f2a1b0c9d8e")
    state = testing.State(config=VALID, relations=[cos], model=model)

    out = ctx.run(ctx.on.relation_changed(cos), state)

    data = CosAgentProviderUnitData.model_validate_json(
        out.get_relation(cos.id).local_unit_data["config"]
    )
    topology = {"juju_model": "fleet", "juju_model_uuid": model.uuid,
                "juju_application": "runner-fs", "juju_charm": "runner-fs"}  # fmt: skip
    rules = [rule for group in data.metrics_alert_rules["groups"] for rule in group["rules"]]
    assert len(rules) == 6
    assert all(rule["labels"].items() >= topology.items() for rule in rules)
    assert all(rule["labels"]["juju_model_uuid"] == model.uuid for rule in rules)
    (down,) = (rule for rule in rules if rule["alert"] == "RunnerFsExporterDown")
    assert down["expr"] == (
        f'up{{juju_model="fleet", juju_model_uuid="{model.uuid}",'
        ' juju_application="runner-fs"} == 0'
    )


def test_the_metrics_service_listens_on_the_configured_port_on_loopback(ctx, root):
    ctx.run(ctx.on.config_changed(), testing.State(config={**VALID, "metrics-port": 10300}))

    service = (root / "etc/systemd/system/runner-fs-metrics.service").read_text()

    assert (
        "ExecStart=/usr/local/bin/runner-fs serve-metrics --address 127.0.0.1 --port 10300"
        " --interval 5" in service
    )


def test_a_bad_metrics_port_is_blocked_naming_it(ctx, root):
    out = ctx.run(ctx.on.config_changed(), testing.State(config={**VALID, "metrics-port": 0}))

    assert out.unit_status.message.startswith("invalid config: metrics-port=0")


def _documented_statuses() -> list[tuple[str, re.Pattern]]:
    """Return the statuses reference: each status name and its message as a pattern."""
    page = (Path(__file__).resolve().parents[2] / "docs/reference/statuses.md").read_text()
    rows = re.findall(r"^\| (Active|Waiting|Blocked|Maintenance) \| `([^`]+)`", page, re.M)
    placeholders = r"\.\.\.|\b(?:N|TIME|REASON|OPTION|VALUE|RULE|UNIT)\b"
    return [
        (name.lower(), re.compile(".*".join(map(re.escape, re.split(placeholders, text)))))
        for name, text in rows
    ]


def test_every_status_the_charm_sets_is_in_the_statuses_reference(ctx, root, monkeypatch):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    record = {"ended": now, "errors": 1, "problem": "storage failed: x", "last_success": now}
    relation = testing.Relation("database", remote_app_name="postgresql")
    scenarios = [
        (lambda: None, testing.State(config=VALID)),
        (lambda: _last_pass(root, **record), testing.State(config=VALID)),
        (lambda: _last_pass(root, ended=now, errors=0, last_success="2020-01-01T00:00:00+00:00"),
         testing.State(config=VALID)),
        (lambda: None, testing.State(config=POSTGRESQL, relations=[relation])),
        (lambda: None, testing.State(config=POSTGRESQL)),
        (lambda: None, testing.State(config={**VALID, "filesystem-size": "10T"})),
        (lambda: monkeypatch.setattr(host, "LOOP_CONTROL", root / "dev/none"),
         testing.State(config=VALID)),
    ]  # fmt: skip
    documented = _documented_statuses()
    seen = []
    for arrange, state in scenarios:
        arrange()
        status = ctx.run(ctx.on.update_status(), state).unit_status
        message = status.message.replace(str(root / "dev/none"), "/dev/loop-control")
        seen.append(status.name)
        assert any(
            name == status.name and pattern.fullmatch(message) for name, pattern in documented
        ), status

    assert {"active", "waiting", "blocked"} <= set(seen)
    assert len(documented) == 11


# -- the provider's answers in the shapes charmed PostgreSQL's data_interfaces writes ---------


def _judged(root) -> dict:
    """Return the rendered DSN as libpq itself parses it."""
    return conninfo_to_dict(_rendered(root)["storage-options"]["dsn"])


def test_credentials_in_the_databag_of_older_providers_are_read(ctx, root):
    relation = testing.Relation(
        "database", remote_app_name="postgresql",
        remote_app_data={"endpoints": "db:5432", "database": "fleet", "username": "old",
                         "password": "pw"},
    )  # fmt: skip

    ctx.run(ctx.on.relation_changed(relation), testing.State(config=POSTGRESQL,
                                                              relations=[relation]))  # fmt: skip

    judged = _judged(root)
    assert (judged["host"], judged["user"], judged["dbname"]) == ("db", "old", "fleet")


def test_tls_in_the_tls_secret_is_verified_against_the_published_ca(ctx, root):
    user = testing.Secret(tracked_content={"username": "u", "password": "pw"})
    tls = testing.Secret(tracked_content={"tls": "True", "tls-ca": "-----BEGIN CERTIFICATE-----"})
    relation = testing.Relation(
        "database", remote_app_name="postgresql",
        remote_app_data={"endpoints": "h1:5432,h2:5432", "database": "fleet",
                         "secret-user": user.id, "secret-tls": tls.id},
    )  # fmt: skip

    ctx.run(
        ctx.on.relation_changed(relation),
        testing.State(config=POSTGRESQL, relations=[relation], secrets=[user, tls]),
    )

    judged = _judged(root)
    assert (judged["sslmode"], judged["host"]) == ("verify-full", "h1,h2")
    assert judged["sslrootcert"] == str(root / "etc/runner-fs/postgresql-ca.pem")
