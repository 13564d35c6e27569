"""The host config file, and the report arguments shared by the CLI and the charm."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from runner_fs import config as config_module
from runner_fs.config import ConfigError, HostConfig, load_config
from runner_fs.report import parse_instant, parse_list


@pytest.fixture(autouse=True)
def _no_host_config(monkeypatch, tmp_path):
    monkeypatch.delenv(config_module.CONFIG_ENV, raising=False)
    monkeypatch.setattr(config_module, "DEFAULT_PATH", tmp_path / "absent" / "config.yaml")


def test_without_a_file_every_key_has_the_charm_default():
    config = load_config()

    assert config.base_dir == Path("/var/lib/runner-fs")
    assert (config.filesystem_size, config.max_runner_age, config.retention_period) == (
        "1M",
        24,
        2400,
    )
    assert config.storage_backend == "sqlite"
    assert config.backend_options()["path"] == Path("/var/lib/runner-fs/metrics.db")


def test_a_file_overrides_keys_named_like_the_charm_options(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "base-dir: /srv/fs\nmax-runner-age: 2\nrates: small=0.5\nunit: runner-fs/3\n"
        "storage-options: {path: /srv/m.db}\n"
    )

    config = load_config(path)

    assert config.max_age == datetime.timedelta(hours=2)
    assert config.rate_table == {"small": 0.5}
    assert config.backend_options()["path"] == "/srv/m.db"
    assert config.unit == "runner-fs/3"


def test_the_environment_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "env.yaml"
    path.write_text("flavor: large\n")
    monkeypatch.setenv(config_module.CONFIG_ENV, str(path))

    assert load_config().flavor == "large"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("filesystem-size: 5T\n", "filesystem-size"),
        ("max-runner-age: 0\n", "max-runner-age"),
        ("rates: small=cheap\n", "rates.*invalid rate 'small=cheap'"),
        ("storage-backend: influxdb\n", "storage-backend"),
        ("base-dir: relative/dir\n", "base-dir.*absolute"),
        ("filesystem-owner: no-such-user-here\n", "filesystem-owner.*does not exist"),
        ("max_runner_age: 3\n", "max_runner_age: Extra inputs"),
        ("- a list\n", "must be a mapping"),
        ("key: [unclosed\n", "cannot read"),
    ],
)
def test_a_bad_key_or_value_is_named(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_named_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_the_default_owner_falls_back_to_root_where_there_is_no_ubuntu_user():
    config = HostConfig()
    try:
        import pwd

        pwd.getpwnam("ubuntu")
    except KeyError:
        assert config.owner is None
    else:
        assert config.owner == "ubuntu:ubuntu"


def test_instants_are_iso_8601_and_utc_without_a_zone():
    assert parse_instant("2026-11-01") == datetime.datetime(
        2026, 11, 1, tzinfo=datetime.timezone.utc
    )
    assert parse_instant("2026-11-01T08:00:00Z").hour == 8
    with pytest.raises(ValueError, match="not ISO 8601: use 2026-11-01"):
        parse_instant("yesterday")


def test_lists_are_comma_separated():
    assert parse_list("repository, flavor,") == ["repository", "flavor"]
    assert parse_list("") is None
