"""One hostile runner never stops the others: each finding, acted out as a runner would.

Every runner writes its files into its own real loop filesystem as its own uid (`nobody`,
the filesystems' owner); the host runs the real `runner-fs` command line against a real
SQLite file. A pass must harvest every healthy runner, quarantine the hostile one, say why,
and never print a traceback.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from runner_fs import host
from runner_fs.metrics import runner as files
from runner_fs.storage import get_storage

from .conftest import OWNER, wait_for, write_host_config
from .test_exporter import Exporter
from .test_reconcile import backdate

NOW = time.time()
PRE_JOB = {"workflow": "ci", "workflow_run_id": "7", "repository": "acme/web", "event": "push"}


@pytest.fixture
def config(tmp_path, base_dir) -> Path:
    return write_host_config(
        tmp_path / "config.yaml",
        base_dir,
        rates="small=0.008",
        event_log=str(tmp_path / "events.log"),
    )


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the command line; no run may ever print a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "runner_fs.cli", "--config", str(config), *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done


def as_runner(path: Path, name: str, content: str | bytes) -> None:
    """Write a file into a runner's filesystem as the runner's own uid would, from inside it."""
    data = content.encode() if isinstance(content, str) else content
    user, group = OWNER.split(":")
    subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups",
         "sh", "-c", 'cat > "$1"', "sh", name],
        input=data, cwd=path, check=True, timeout=30,
    )  # fmt: skip


def runner(config: Path, name: str, *labels: str, job: int = 100, **pre: object) -> Path:
    """Create a runner (record backdated an hour) that ran a `job` s job; return its path."""
    created = cli(config, "create", name, *(f"--label={label}" for label in labels), "--json")
    assert created.returncode == 0, created.stderr
    path = Path(json.loads(created.stdout)["path"])
    start = NOW - 3600
    backdate(_manager(config), name, start - 60)
    as_runner(path, files.INSTALLED_FILE, f"{start + 10}")
    as_runner(path, files.PRE_JOB_FILE, json.dumps({"timestamp": start + 30, **PRE_JOB, **pre}))
    post = {"timestamp": start + 30 + job, "status": "normal", "status_info": None}
    as_runner(path, files.POST_JOB_FILE, json.dumps(post))
    return path


def _manager(config: Path):
    from runner_fs.config import load_config

    return load_config(config).manager()


def reconcile(config: Path) -> dict:
    done = cli(config, "reconcile", "--json")
    return json.loads(done.stdout)


def stored(config: Path) -> list[dict]:
    """Every stored point as (type, groupby, metadata), read back from the SQLite file."""
    with get_storage("sqlite", path=config.parent / "metrics.db") as storage:
        frames = storage.retrieve(paginate=False)["dataframes"]
        return [
            {"type": type_, **point.groupby, **point.metadata}
            for frame in frames
            for type_, point in frame.iterpoints()
        ]


def archive_of(config: Path, name: str) -> Path:
    (archive,) = (config.parent / "runner-fs/quarantine").glob(f"{name}-*.tar.gz")
    return archive


HOSTILE_PRE_JOBS = {
    "huge-number": '{"timestamp": 1' + "0" * 400 + "}",
    "deep-nesting": "[" * 1024,
    "deep-object": '{"a":' * 300 + "1" + "}" * 300,
    "float-overflow": '{"timestamp": 1e999999, "workflow": "ci"}',
}


@pytest.mark.parametrize("content", HOSTILE_PRE_JOBS.values(), ids=HOSTILE_PRE_JOBS)
def test_a_runner_writing_unparseable_json_is_quarantined_and_the_others_harvested(
    config, content
):
    for name in ("good-1", "good-2"):
        runner(config, name)
    hostile = runner(config, "evil")
    as_runner(hostile, files.PRE_JOB_FILE, content)

    result = reconcile(config)

    assert (result["harvested"], result["quarantined"]) == (2, 1)
    assert {point["runner_name"] for point in stored(config)} == {"good-1", "good-2"}
    assert archive_of(config, "evil").exists()


def test_an_exit_code_beyond_any_integer_column_is_quarantined_not_an_outage(config):
    runner(config, "good")
    hostile = runner(config, "evil")
    code = {"timestamp": NOW - 3000, "status": "abnormal",
            "status_info": {"code": 1180591620717411303424}}  # fmt: skip
    as_runner(hostile, files.POST_JOB_FILE, json.dumps(code))

    first, second = reconcile(config), reconcile(config)

    assert (first["harvested"], first["quarantined"], first["errors"]) == (1, 1, 0)
    assert second == {**second, "harvested": 0, "errors": 0}  # nothing left to fail on


def test_a_value_the_storage_refuses_quarantines_its_runner_alone_by_splitting_the_batch(
    tmp_path, base_dir
):
    config = write_host_config(  # a rate so high that one flavor's price cannot be stored
        tmp_path / "config.yaml", base_dir, rates="small=0.008,absurd=99999999999999",
        harvest_batch=8,
    )  # fmt: skip
    for index in range(7):
        runner(config, f"good-{index}")
    runner(config, "pricey", "flavor=absurd")

    result = reconcile(config)

    assert (result["harvested"], result["quarantined"], result["errors"]) == (7, 1, 0)
    assert len({point["runner_name"] for point in stored(config)}) == 7


def test_a_storage_outage_is_not_taken_for_bad_data(config):
    runner(config, "good")
    database = config.parent / "metrics.db"
    get_storage("sqlite", path=database).close()
    blocker = sqlite3.connect(database, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the file for the whole pass
    try:
        done = cli(config, "reconcile", "--json")
    finally:
        blocker.rollback()
        blocker.close()

    assert done.returncode == 1
    assert "database is locked" in done.stderr
    assert not list((config.parent / "runner-fs/quarantine").glob("*.tar.gz"))
    assert reconcile(config)["harvested"] == 1  # it waited for the next pass


@pytest.mark.parametrize(
    ("pre_offset", "post_offset", "why"),
    [
        (-95 * 86400, -95 * 86400 + 86000, "before the filesystem was created"),
        (10, 20 * 3600, "after the harvest"),
    ],
    ids=["backdated-95-days", "post-job-20-hours-ahead"],
)
def test_a_job_outside_the_filesystems_life_is_not_billed(config, pre_offset, post_offset, why):
    made = cli(config, "create", "liar", "--json")
    path = Path(json.loads(made.stdout)["path"])  # created now, as the provisioner does
    now = time.time()  # not the module's NOW: a long run may collect this test minutes earlier
    as_runner(path, files.INSTALLED_FILE, f"{now}")
    pre = {**PRE_JOB, "timestamp": now + pre_offset, "repository": "victim-org/app"}
    as_runner(path, files.PRE_JOB_FILE, json.dumps(pre))
    post = {"timestamp": now + post_offset, "status": "normal", "status_info": None}
    as_runner(path, files.POST_JOB_FILE, json.dumps(post))

    result = reconcile(config)

    assert (result["harvested"], result["quarantined"]) == (0, 1)
    assert stored(config) == []
    with tarfile.open(archive_of(config, "liar")) as tar:  # the evidence is kept
        assert f"files/{files.POST_JOB_FILE}" in tar.getnames()
    assert why in _reason(config)


def _reason(config: Path) -> str:
    """Return the event log's message of the last hostile runner found."""
    log = (config.parent / "events.log").read_text().splitlines()
    return next(e["message"] for e in map(json.loads, reversed(log)) if e["event"] == "hostile")


def test_the_provisioners_repository_label_binds_what_the_runner_claims(config):
    runner(config, "claims-other", "repository=acme/web", repository="victim-org/app")
    runner(config, "claims-none", "repository=acme/web", repository=None)
    runner(config, "owner-ok", "owner=acme", repository="acme/api")
    runner(config, "owner-other", "owner=acme", repository="victim-org/api")

    result = reconcile(config)

    assert (result["harvested"], result["quarantined"]) == (2, 2)
    repositories = {(p["runner_name"], p.get("repository")) for p in stored(config)
                    if p["type"] == "runner.job"}  # fmt: skip
    assert repositories == {("claims-none", "acme/web"), ("owner-ok", "acme/api")}


def test_a_missing_repository_is_stored_absent_and_totals_stay_on_rollups(config):
    runner(config, "no-repo", repository=None)

    assert reconcile(config)["harvested"] == 1

    job = next(point for point in stored(config) if point["type"] == "runner.job")
    assert "repository" not in job
    with get_storage("sqlite", path=config.parent / "metrics.db") as storage:
        assert storage.rolled_up()


def test_after_a_failed_quarantine_list_and_reconcile_work_for_everyone(config, tmp_path):
    runner(config, "good")
    hostile = runner(config, "evil")
    as_runner(hostile, files.POST_JOB_FILE, "[" * 1024)
    quarantine = config.parent / "runner-fs/quarantine"
    quarantine.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", quarantine], check=True)
    try:
        as_runner(hostile, "filler", os.urandom(600 * 1024))  # cannot fit in 4 KiB: ENOSPC
        first = reconcile(config)
        listed = cli(config, "list", "--json")
        again = reconcile(config)
    finally:
        subprocess.run(["umount", quarantine], check=True)
    healed = reconcile(config)

    assert (first["harvested"], first["quarantined"], first["errors"]) == (1, 0, 1)
    assert listed.returncode == 0
    assert [(row["runner"], row["state"]) for row in json.loads(listed.stdout)] == [
        ("evil", "broken")
    ]
    assert again["errors"] >= 1  # tried again, still no space
    assert healed["errors"] == 0
    assert archive_of(config, "evil").exists()
    assert cli(config, "list", "--json").stdout.strip() == "[]"


def test_a_torn_directory_in_the_image_is_archived_around(config, base_dir):
    path = runner(config, "torn")
    (path / "dir").mkdir()
    (path / "dir/inner").write_text("x")
    inode = os.stat(path / "dir").st_ino
    image = base_dir / "images/torn.img"
    subprocess.run(["umount", path], check=True)
    subprocess.run(  # a directory block the runner tore: ext4 can no longer list it
        ["debugfs", "-w", "-R", f"sif <{inode}> block[0] 0", str(image)],
        check=True, capture_output=True,
    )  # fmt: skip

    done = cli(config, "quarantine", "torn", "--json")

    assert done.returncode == 0, done.stderr
    with tarfile.open(json.loads(done.stdout)["archive"]) as tar:
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
        assert f"files/{files.POST_JOB_FILE}" in tar.getnames()
    assert manifest["source"] == "files"
    assert [e["path"] for e in manifest["entries"] if "skipped" in e] == ["./dir"]


def test_a_sparse_file_named_to_sort_last_cannot_crowd_out_the_metric_files(config):
    path = runner(config, "sparse")
    as_runner(path, files.POST_JOB_FILE, '{"status": "hostile"}')
    subprocess.run(["truncate", "-s", "64M", path / "zzzz"], check=True)

    done = cli(config, "quarantine", "sparse", "--json")

    with tarfile.open(json.loads(done.stdout)["archive"]) as tar:
        kept = tar.extractfile(f"files/{files.POST_JOB_FILE}").read()  # type: ignore[union-attr]
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    assert kept == b'{"status": "hostile"}'
    truncated = [e for e in manifest["entries"] if e.get("truncated")]
    assert [e["path"] for e in truncated] == ["./zzzz"]


def test_quarantines_of_runners_whose_names_share_a_prefix_never_touch_each_others_files(
    config,
):
    runner(config, "web")
    runner(config, "web-2")
    quarantine = config.parent / "runner-fs/quarantine"
    quarantine.mkdir(parents=True, exist_ok=True)
    in_progress = quarantine / ".web-2+inprogress.tmp"  # web-2's archiver, mid-way
    in_progress.write_bytes(b"partial")
    views_before = set(Path(tempfile.gettempdir()).glob("runner-fs-view-*"))

    done = cli(config, "quarantine", "web", "--json")

    assert done.returncode == 0, done.stderr
    assert in_progress.read_bytes() == b"partial"
    assert set(Path(tempfile.gettempdir()).glob("runner-fs-view-*")) == views_before


def test_a_foreign_loop_device_with_any_bytes_in_its_path_is_skipped(config, tmp_path):
    runner(config, "good")
    foreign = os.path.join(os.fsencode(tmp_path), b"\xff\xfe-not-utf8.img")
    with open(foreign, "wb") as image:
        image.truncate(1 << 20)
    device = (
        subprocess.run(["losetup", "--find", "--show", foreign], capture_output=True, check=True)
        .stdout.decode()
        .strip()
    )
    exporter = None
    try:
        listed = cli(config, "list", "--json")
        exporter = Exporter(config)
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=30) as r:
            status = r.status
        result = reconcile(config)
    finally:
        if exporter:
            exporter.stop()
        subprocess.run(["losetup", "--detach", device], check=True)

    assert listed.returncode == 0
    assert status == 200
    assert result["harvested"] == 1


def test_one_idle_connection_never_blocks_a_scrape(config):
    exporter = Exporter(config)
    try:
        with socket.create_connection(("127.0.0.1", exporter.port)):  # says nothing
            url = f"http://127.0.0.1:{exporter.port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:
                assert answer.status == 200
    finally:
        exporter.stop()


def test_the_metrics_database_is_readable_by_root_only(config):
    runner(config, "good")
    reconcile(config)

    database = config.parent / "metrics.db"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("args", "accepted"),
    [
        (("create", "x1", "--label", "runner_name=v"), True),
        (("create", "x2", "--label", "self=v"), True),
        (("create", "x3", "--label", "bad key=v"), False),
        (("report", "--begin", "0001-01-01T00:00:00+14:00"), False),
        (("report", "--end", "9999-12-31T23:59:59-14:00"), False),
    ],
)
def test_the_command_line_answers_every_argument_without_a_traceback(config, args, accepted):
    done = cli(config, *args)

    assert done.returncode == (0 if accepted else 2), done.stderr
    if not accepted:  # what is wrong, after argparse's usage line where it parsed the value
        assert "invalid label" in done.stderr or "is out of range" in done.stderr


class RunnerNamespace:
    """A runner's own mount namespace holding its filesystem's mount, as an LXD disk device.

    `script` runs inside it first, as the runner's uid in the mount point (it may keep a file
    open); the namespace lives until `close`.
    """

    def __init__(self, path: Path, script: str = "true") -> None:
        """Enter a private copy of the host's mounts, move the filesystem, run `script`.

        As LXD's disk device, the runner sees it at a path of its own (`<path>.container`),
        and the host's path is no longer mounted in its namespace.
        """
        user, group = OWNER.split(":")
        self.path = path.with_name(f"{path.name}.container")
        self.path.mkdir()
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount --bind "$1" "$2" && umount "$1" && cd "$2" &&'
             f' exec setpriv --reuid={user} --regid={group} --clear-groups'
             f' sh -c \'{script}; echo ready; exec cat\'', "sh", str(path), str(self.path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "ready\n"

    def write(self, name: str, text: str) -> subprocess.CompletedProcess:
        """Write a file as the runner, from inside its namespace."""
        user, group = OWNER.split(":")
        return subprocess.run(
            ["nsenter", "-t", str(self.process.pid), "-m", "--", "sh", "-c",
             f'cd "$1" && exec setpriv --reuid={user} --regid={group} --clear-groups'
             ' sh -c "cat > $2"', "sh", str(self.path), name],
            input=text, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    def close(self) -> None:
        """End the namespace: its mount goes with it."""
        self.process.communicate(timeout=30)
        self.path.rmdir()


def _still_held(config: Path) -> list[dict]:
    log = (config.parent / "events.log").read_text().splitlines()
    return [event for event in map(json.loads, log) if event["event"] == "still-held"]


def test_a_runner_mounting_its_filesystem_in_its_own_namespace_is_cut_off_and_named(config):
    path = runner(config, "lxd")
    device = _manager(config).list_info()[0].path
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(device)], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    namespace = RunnerNamespace(path)
    try:
        assert namespace.write("note", "written before\n").returncode == 0

        done = cli(config, "quarantine", "lxd", "--json")
        late = namespace.write("late", "written after\n")
        held = _still_held(config)
    finally:
        namespace.close()

    assert done.returncode == 0, done.stderr
    assert late.returncode != 0 and "Read-only file system" in late.stderr
    with tarfile.open(json.loads(done.stdout)["archive"]) as tar:
        assert tar.extractfile("files/note").read() == b"written before\n"  # type: ignore[union-attr]
        assert "files/late" not in tar.getnames()
    assert [event["runner"] for event in held] == ["lxd"]
    assert f"{namespace.process.pid} (cat)" in held[0]["message"]
    assert wait_for(lambda: host.loop_backing(device) is None)


def test_a_runner_keeping_a_file_open_for_writing_is_frozen_while_archived(config):
    path = runner(config, "writer")
    namespace = RunnerNamespace(path, "exec 3>>open-file; echo kept >&3")
    try:
        done = cli(config, "-v", "quarantine", "writer", "--json")
    finally:
        namespace.close()

    assert done.returncode == 0, done.stderr
    assert "frozen while archived" in done.stderr
    with tarfile.open(json.loads(done.stdout)["archive"]) as tar:
        assert tar.extractfile("files/open-file").read() == b"kept\n"  # type: ignore[union-attr]
