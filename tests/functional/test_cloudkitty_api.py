"""CloudKitty's own API reading and writing runner-fs's store, through our drivers.

CloudKitty 25's WSGI application (`cloudkitty.wsgi.api`, a minimal paste pipeline, `noauth`)
runs in a process of its own on a threaded server, with `runner_fs_sqlite` or
`runner_fs_postgresql` as its v2 storage, never `init()`ed (CloudKitty's API never calls it).
Many requests are in flight at once; every answer must equal what runner-fs's own `total()`
and `retrieve()` say for the same store.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.storage import get_storage

if os.environ.get("RUNNER_FS_REQUIRE_FUNCTIONAL") == "1":
    import cloudkitty  # noqa: F401 (CI must run these: CloudKitty missing is a failure)
else:
    pytest.importorskip(
        "cloudkitty", reason="CloudKitty is not installed: pip install -e .[cloudkitty]"
    )

HERE = Path(__file__).resolve().parent
UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 11, 2, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)
WINDOW = {"begin": T0.isoformat(), "end": (T0 + 3 * 24 * HOUR).isoformat()}
PASTE = """\
[composite:cloudkitty+noauth]
use = egg:Paste#urlmap
/ = cloudkitty_api

[pipeline:cloudkitty_api]
pipeline = request_id cloudkitty

[app:cloudkitty]
paste.app_factory = cloudkitty.api.app:app_factory

[filter:request_id]
paste.filter_factory = oslo_middleware:RequestId.factory
"""


def _harvests() -> list[DataFrame]:
    """Frames shaped as runner-fs harvests write them: three types, six repositories."""
    frames = []
    for index in range(48):
        start = T0 + index * HOUR + datetime.timedelta(minutes=index % 7)
        groupby = {
            "unit": f"runner-fs/{index % 2}",
            "flavor": ("small", "large")[index % 2],
            "repository": f"acme/repo-{index % 6}",
            "workflow": "ci",
            "event": "push",
        }
        metric_type = ("runner.job", "runner.idle", "runner.installation")[index % 3]
        if metric_type == "runner.job":
            groupby["status"] = "normal"
        qty = Decimal(60 + 17 * index)
        frame = DataFrame(start, start + datetime.timedelta(seconds=int(qty)))
        frame.add_point(
            DataPoint("s", qty, qty * Decimal("0.008") / 3600, groupby,
                      {"runner_name": f"r{index}", "workflow_run_id": str(index)}),
            metric_type,
        )  # fmt: skip
        frames.append(frame)
    return frames


def cloudkitty_config(directory: Path, backend: str, option: str) -> Path:
    """Write CloudKitty's config (and paste file) for `runner_fs_<backend>`; prepare its DB.

    `option` is the `[storage_runner_fs]` line naming our store. CloudKitty's own database
    (scopes, states) is SQLite; its rating modules are not used.
    """
    (directory / "api_paste.ini").write_text(PASTE)
    (directory / "metrics.yml").write_text(
        "metrics:\n  runner.job:\n    unit: s\n    groupby: [project_id, flavor]\n"
        "    metadata: [runner_name]\n"
    )
    config = directory / "cloudkitty.conf"
    config.write_text(
        "[DEFAULT]\nauth_strategy = noauth\ntransport_url = fake:/\n"
        f"api_paste_config = {directory / 'api_paste.ini'}\n"
        f"[database]\nconnection = sqlite:///{directory / 'cloudkitty.db'}\n"
        f"[storage]\nbackend = runner_fs_{backend}\nversion = 2\n"
        f"[storage_runner_fs]\n{option}\n"
        f"[orchestrator]\ncoordination_url = file://{directory / 'locks'}\n"
        f"[collect]\nmetrics_conf = {directory / 'metrics.yml'}\n"
    )
    dbsync = Path(sys.executable).with_name("cloudkitty-dbsync")
    subprocess.run(
        [dbsync, "--config-file", config, "upgrade", "--module", "cloudkitty"],
        capture_output=True, check=True, timeout=300,
    )  # fmt: skip
    return config


def store_options(
    backend: str, request: pytest.FixtureRequest, directory: Path
) -> tuple[dict, str]:
    """Return our backend's options for a new store, and CloudKitty's line naming it."""
    if backend == "sqlite":
        path = directory / "metrics.db"
        return {"path": path}, f"sqlite_path = {path}"
    dsn = request.getfixturevalue("postgres_dsn")
    return {"dsn": dsn}, f"postgresql_dsn = {dsn}"


class CloudKittyApi:
    """CloudKitty's API process over one of our drivers."""

    def __init__(self, config: Path) -> None:
        """Start it with `config`, and wait for its port."""
        self.process = subprocess.Popen(
            [sys.executable, HERE / "cloudkitty_api.py", config],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = ""
        for line in self.process.stdout:  # its log goes to stdout too; the port comes last
            if line.strip().isdigit():
                break
        assert line.strip().isdigit(), "CloudKitty's API did not start"
        self.url = f"http://127.0.0.1:{line.strip()}"

    def get(self, path: str, **query: object) -> tuple[int, dict]:
        """GET with repeated keys for list values; return the status and the JSON body."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(query, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=60) as answer:  # noqa: S310 (127.0.0.1)
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def post(self, path: str, body: dict) -> int:
        """POST JSON; return the status."""
        request = urllib.request.Request(  # noqa: S310 (127.0.0.1)
            f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 (127.0.0.1)
            return answer.status

    def stop(self) -> None:
        """Stop it."""
        self.process.terminate()
        self.process.communicate(timeout=30)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Iterator[tuple[CloudKittyApi, object]]:
    """Yield a runner-fs store holding harvests, and CloudKitty's API over it."""
    options, option = store_options(request.param, request, tmp_path)
    ours = get_storage(request.param, **options)
    ours.push(_harvests())
    api = CloudKittyApi(cloudkitty_config(tmp_path, request.param, option))
    yield api, ours
    api.stop()
    ours.close()


def _rows(total: dict) -> list[dict]:
    """Our `total()` rows as CloudKitty's API serialises them (times ISO 8601, numbers)."""
    return [
        {key: value.isoformat() if isinstance(value, datetime.datetime) else value
         for key, value in row.items()}
        for row in total["results"]
    ]  # fmt: skip


def _table(answer: dict) -> list[dict]:
    """Turn the API's table format back into rows."""
    return [dict(zip(answer["columns"], row, strict=True)) for row in answer["results"]]


def _same(api_rows: list[dict], our_rows: list[dict]) -> bool:
    def normal(row: dict) -> dict:
        return {key: round(float(value), 6) if key in ("qty", "rate") else
                (datetime.datetime.fromisoformat(value).astimezone(UTC) if key in ("begin", "end")
                 else value) for key, value in row.items()}  # fmt: skip

    return [normal(row) for row in api_rows] == [normal(row) for row in our_rows]


SUMMARIES = [
    ({"groupby": ["repository", "flavor"]}, {"groupby": ["repository", "flavor"]}),
    ({"groupby": ["type"]}, {"groupby": ["type"]}),
    ({"groupby": ["repository"], "filters": "type:runner.job"},
     {"groupby": ["repository"], "metric_types": ["runner.job"]}),
    ({"groupby": ["unit"], "filters": "repository:acme/repo-1"},
     {"groupby": ["unit"], "filters": {"repository": "acme/repo-1"}}),
    ({"groupby": ["repository", "type"], "limit": 4, "offset": 4},
     {"groupby": ["repository", "type"], "limit": 4, "offset": 4}),
    ({}, {}),
]  # fmt: skip


def test_cloudkittys_summary_equals_our_totals_with_many_requests_in_flight(store):
    api, ours = store
    requests = SUMMARIES * 4  # 24 requests, 12 at once

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda q: api.get("/v2/summary", **WINDOW, **q[0]), requests))

    begin, end = (datetime.datetime.fromisoformat(WINDOW[key]) for key in ("begin", "end"))
    for (_, ours_query), (status, answer) in zip(requests, answers, strict=True):
        assert status == 200, answer
        expected = ours.total(begin=begin, end=end, **ours_query)
        assert answer["total"] == expected["total"]
        assert _same(_table(answer), _rows(expected)), (ours_query, answer)


def test_cloudkittys_dataframes_equal_our_retrieve_and_its_post_lands_in_our_store(store):
    api, ours = store
    queries = [
        {"limit": 10, "offset": 0}, {"limit": 10, "offset": 10},
        {"filters": "type:runner.idle"}, {"filters": "repository:acme/repo-2"},
    ] * 3  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda query: api.get("/v2/dataframes", **WINDOW, **query),
                                queries))  # fmt: skip

    begin, end = (datetime.datetime.fromisoformat(WINDOW[key]) for key in ("begin", "end"))
    for query, (status, answer) in zip(queries, answers, strict=True):
        assert status == 200, answer
        key, _, value = query.get("filters", "").partition(":")
        expected = ours.retrieve(
            begin, end, filters={key: value} if key and key != "type" else None,
            metric_types=value if key == "type" else None,
            offset=query.get("offset", 0), limit=query.get("limit", 100),
        )  # fmt: skip
        assert answer["total"] == expected["total"]
        got = [
            (frame["period"]["begin"], sorted(frame["usage"])) for frame in answer["dataframes"]
        ]
        want = [(f.start.isoformat(), sorted(t for t, _ in f.iterpoints()))
                for f in expected["dataframes"]]  # fmt: skip
        assert [(datetime.datetime.fromisoformat(b), t) for b, t in got] == [
            (datetime.datetime.fromisoformat(b), t) for b, t in want
        ]

    posted = {"dataframes": [{
        "period": {"begin": "2026-11-06T00:00:00+00:00", "end": "2026-11-06T01:00:00+00:00"},
        "usage": {"runner.job": [{"vol": {"unit": "s", "qty": 120}, "rating": {"price": 0.5},
                                  "groupby": {"repository": "acme/posted", "flavor": "small"},
                                  "metadata": {"runner_name": "posted"}}]},
    }]}  # fmt: skip
    assert api.post("/v2/dataframes", posted) == 204
    day = datetime.datetime(2026, 11, 6, tzinfo=UTC)
    landed = ours.total(groupby=["repository"], begin=day, end=day + 24 * HOUR)["results"]
    assert [(row["repository"], float(row["qty"])) for row in landed] == [("acme/posted", 120.0)]


def test_cloudkittys_default_custom_fields_mean_what_ours_do(store):
    api, ours = store

    status, answer = api.get(
        "/v2/summary",
        **WINDOW,
        groupby=["flavor"],
        custom_fields="SUM(qty) AS qty, SUM(price) AS rate",
    )

    assert status == 200, answer
    begin, end = (datetime.datetime.fromisoformat(WINDOW[key]) for key in ("begin", "end"))
    assert _same(_table(answer), _rows(ours.total(groupby=["flavor"], begin=begin, end=end)))
