"""The charm (ops.testing) with a real PostgreSQL server behind the database relation."""

from __future__ import annotations

import datetime
import json
import stat

import ops
import psycopg
import pytest
from ops import testing

from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.storage import get_storage
from tests.postgres import has_ipv6_loopback, make_ca
from tests.unit.test_charm import (  # noqa: F401 (ctx and root are fixtures)
    ACTIVE,
    POSTGRESQL,
    UNIT_NAME,
    VALID,
    _database,
    _judged,
    _rendered,
    ctx,
    root,
    systemctl_calls,
)

# ruff: noqa: F811 (the fixtures above are arguments below)


@pytest.mark.parametrize("in_secret", [True, False])
def test_credentials_go_into_the_host_config_only(ctx, root, postgres_server, in_secret):
    relation, secret, _ = _database(
        postgres_server, f"charm_login_{in_secret}", in_secret=in_secret
    )
    state = testing.State(config=POSTGRESQL, relations=[relation], secrets=[secret])

    out = ctx.run(ctx.on.relation_changed(relation), state)
    ctx.run(ctx.on.action("report"), out)

    assert out.unit_status.name == "active", out.unit_status
    config = root / "etc/runner-fs/config.yaml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    settings = _rendered(root)
    assert settings["storage-backend"] == "postgresql"
    assert postgres_server.password in settings["storage-options"]["dsn"]
    said = json.dumps(ctx.action_results) + "".join(line.message for line in ctx.juju_log)
    assert postgres_server.password not in said


def test_switching_to_postgresql_moves_local_metrics_exactly_once(ctx, root, postgres_server):
    local = get_storage("sqlite", path=root / "var/lib/runner-fs/metrics.db")
    day = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None).date()
    day = datetime.datetime.combine(day, datetime.time()) - datetime.timedelta(days=1)
    frames = []
    for hour in range(5):  # within the retention period: the pass keeps them
        start = day + datetime.timedelta(hours=hour)
        frame = DataFrame(start, start + datetime.timedelta(minutes=30))
        frame.add_point(DataPoint("s", 1800, 0, {"unit": UNIT_NAME}, {}), "runner.job")
        frames.append(frame)
    assert local.push_once("runner-fs/0/r1/uuid", frames)
    local.close()
    relation, secret, _ = _database(postgres_server, "charm_switch")
    state = testing.State(config=POSTGRESQL, relations=[relation], secrets=[secret])

    out = ctx.run(ctx.on.config_changed(), state)
    assert (root / "var/lib/runner-fs/metrics.db").exists()  # hooks never wait on storage
    ctx.run(ctx.on.action("reconcile"), out)  # a pass, as the timer's service runs it
    ctx.run(ctx.on.action("reconcile"), out)

    fleet = get_storage("postgresql", dsn=_rendered(root)["storage-options"]["dsn"])
    assert fleet.retrieve(day, day + datetime.timedelta(days=1))["total"] == 5
    assert not fleet.push_once("runner-fs/0/r1/uuid", frames)
    assert not (root / "var/lib/runner-fs/metrics.db").exists()
    fleet.close()


def test_an_unreachable_postgresql_keeps_the_local_store_and_filesystems_waiting(
    ctx, root, postgres_server
):
    get_storage("sqlite", path=root / "var/lib/runner-fs/metrics.db").close()  # not moved yet
    relation, secret, _ = _database(postgres_server, "charm_unreachable", port=1)
    state = testing.State(config=POSTGRESQL, relations=[relation], secrets=[secret])

    out = ctx.run(ctx.on.relation_changed(relation), state)
    with pytest.raises(testing.ActionFailed, match="Connection refused"):
        ctx.run(ctx.on.action("reconcile"), out)  # a pass: it records why it failed
    out = ctx.run(ctx.on.update_status(), out)

    assert isinstance(out.unit_status, testing.WaitingStatus)
    assert out.unit_status.message.startswith(
        "postgresql unreachable, filesystems wait for it: initialising postgresql://"
    )
    assert _rendered(root)["storage-backend"] == "postgresql"
    assert (root / "var/lib/runner-fs/metrics.db").exists()


def test_a_removed_relation_blocks_again(ctx, root, postgres_server):
    relation, secret, _ = _database(postgres_server, "charm_broken")
    state = testing.State(config=POSTGRESQL, relations=[relation], secrets=[secret])
    ctx.run(ctx.on.relation_changed(relation), state)

    out = ctx.run(ctx.on.relation_broken(relation), state)

    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert _rendered(root)["storage-backend"] == "sqlite"


def _connected_over_tls(dsn: str) -> bool:
    with psycopg.connect(dsn) as db:
        return db.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]


@pytest.mark.parametrize("in_secret", [True, False])
def test_tls_offered_with_a_ca_is_required_and_verified(ctx, root, postgres_server, in_secret):
    relation, _, secrets = _database(postgres_server, f"charm_tls_{in_secret}",
                                     in_secret=in_secret, tls="True",
                                     **{"tls-ca": postgres_server.ca_pem})  # fmt: skip

    out = ctx.run(
        ctx.on.relation_changed(relation),
        testing.State(config=POSTGRESQL, relations=[relation], secrets=secrets),
    )

    assert out.unit_status.name == "active", out.unit_status
    dsn = _rendered(root)["storage-options"]["dsn"]
    ca = root / "etc/runner-fs/postgresql-ca.pem"
    assert f"sslmode=verify-full&sslrootcert={ca}" in dsn.replace("%2F", "/")
    assert ca.read_text() == postgres_server.ca_pem
    assert stat.S_IMODE(ca.stat().st_mode) == 0o600
    assert _connected_over_tls(dsn)


def test_a_server_certificate_from_another_ca_is_refused(ctx, root, postgres_server, tmp_path):
    other_ca, _ = make_ca(tmp_path, "impostor-ca")
    relation, _, secrets = _database(postgres_server, "charm_tls_impostor", tls="True",
                                     **{"tls-ca": other_ca.read_text()})  # fmt: skip

    state = testing.State(config=POSTGRESQL, relations=[relation], secrets=secrets)
    out = ctx.run(ctx.on.relation_changed(relation), state)

    with pytest.raises(testing.ActionFailed, match="certificate verify failed"):
        ctx.run(ctx.on.action("reconcile"), out)
    out = ctx.run(ctx.on.update_status(), out)
    assert isinstance(out.unit_status, testing.WaitingStatus)
    assert "initialising postgresql://runner_fs_test@127.0.0.1" in out.unit_status.message


def test_uris_from_the_provider_are_used_as_given(ctx, root, postgres_server):
    uri = postgres_server.dsn("charm_uris")
    relation, _, secrets = _database(
        postgres_server, "charm_uris", uris=uri, endpoints="nowhere:1"
    )

    out = ctx.run(
        ctx.on.relation_changed(relation),
        testing.State(config=POSTGRESQL, relations=[relation], secrets=secrets),
    )
    ctx.run(ctx.on.action("reconcile"), out)  # a pass reaches it

    assert ctx.action_results["errors"] == 0
    assert _rendered(root)["storage-options"]["dsn"] == uri


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_endpoint_is_reached(ctx, root, postgres_server):
    relation, _, secrets = _database(
        postgres_server, "charm_ipv6", endpoints=f"[::1]:{postgres_server.port}"
    )

    out = ctx.run(
        ctx.on.relation_changed(relation),
        testing.State(config=POSTGRESQL, relations=[relation], secrets=secrets),
    )
    ctx.run(ctx.on.action("reconcile"), out)  # a pass reaches it

    assert ctx.action_results["errors"] == 0
    assert f"@[::1]:{postgres_server.port}/" in _rendered(root)["storage-options"]["dsn"]


def test_the_login_secret_is_read_once_per_hook(ctx, root, postgres_server, monkeypatch):
    relation, _, secrets = _database(postgres_server, "charm_once")
    reads = []
    real = ops.Model.get_secret
    monkeypatch.setattr(ops.Model, "get_secret", lambda *a, **k: reads.append(k) or real(*a, **k))

    ctx.run(
        ctx.on.relation_changed(relation),
        testing.State(config=POSTGRESQL, relations=[relation], secrets=secrets),
    )

    assert len(reads) == 1


def test_upgrade_with_postgresql_down_never_waits_on_it_in_the_hook(ctx, root, postgres_server):
    relation, _, secrets = _database(postgres_server, "charm_upgrade_down", port=1)
    state = testing.State(config=POSTGRESQL, relations=[relation], secrets=secrets)

    out = ctx.run(ctx.on.upgrade_charm(), state)  # the schema is upgraded by the next pass

    assert out.unit_status.name == "active", out.unit_status
    assert "start --no-block runner-fs-reconcile.service" in systemctl_calls(root)
    assert _rendered(root)["storage-backend"] == "postgresql"


@pytest.mark.parametrize(
    ("answer", "login", "expected"),
    [
        pytest.param(  # uris in the login secret, several hosts: used whole
            {"endpoints": "h1:5432,h2:5432", "database": "fleet"},
            {"uris": "postgresql://op:p%40ss@h1,h2:5432/fleet"},
            {"host": "h1,h2", "port": ",5432", "dbname": "fleet", "user": "op",  # h1: default port
             "password": "p@ss"},
            id="uris-multi-host",
        ),
        pytest.param(  # endpoints only, several hosts and ports: one multi-host URI
            {"endpoints": "10.0.0.1:5432,10.0.0.2:5433,[fd00::3]:5434", "database": "fleet"},
            {},
            {"host": "10.0.0.1,10.0.0.2,fd00::3", "port": "5432,5433,5434", "dbname": "fleet",
             "user": "runner_fs_test", "target_session_attrs": "read-write"},
            id="endpoints-multi-host",
        ),
        pytest.param(
            {"endpoints": "10.0.0.1:5432", "database": "fleet"},
            {},
            {"host": "10.0.0.1", "port": "5432", "dbname": "fleet", "user": "runner_fs_test"},
            id="endpoints-one-host",
        ),
    ],
)  # fmt: skip
def test_the_dsn_libpq_reads_names_every_published_host_user_and_database(
    ctx, root, postgres_server, answer, login, expected
):
    secret = testing.Secret(
        tracked_content={"username": "runner_fs_test", "password": "pw", **login}
    )
    relation = testing.Relation(
        "database", remote_app_name="postgresql",
        remote_app_data={**answer, "secret-user": secret.id, "version": "16.6"},
    )  # fmt: skip

    ctx.run(
        ctx.on.relation_changed(relation),
        testing.State(config=POSTGRESQL, relations=[relation], secrets=[secret]),
    )

    judged = _judged(root)
    assert {key: judged.get(key) for key in expected} == expected
    assert judged["password"] == expected.get("password", "pw")


def test_a_multi_host_dsn_reaches_the_host_that_answers(ctx, root, postgres_server):
    relation, _, secrets = _database(
        postgres_server, "charm_multi_host",
        endpoints=f"127.0.0.1:1,127.0.0.1:{postgres_server.port}",  # the first refuses
    )  # fmt: skip
    state = testing.State(config=POSTGRESQL, relations=[relation], secrets=secrets)

    out = ctx.run(ctx.on.relation_changed(relation), state)
    ctx.run(ctx.on.action("reconcile"), out)

    assert ctx.action_results["errors"] == 0
    assert _judged(root)["port"] == f"1,{postgres_server.port}"
