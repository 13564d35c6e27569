"""Benchmark: each SQL backend's push, total, retrieve and delete against hand-written SQL.

The data are realistic runner metrics: one point per frame (each harvested metric has its own
begin and end), three metric types, 20 hosts, 8 flavors, 400 repositories, 60 workflows, spread
over 30 days in time order (as harvests arrive). Both sides work on the same database file
in the same run:

- push: `push()` of real DataFrame objects, 1000 points per call (one transaction each),
  against a raw bulk insert of ready-made tuples (already converted to integers and JSON
  text) into a table with the same columns and indexes, also 1000 per transaction: SQLite's
  `executemany`, PostgreSQL's COPY. Building either side's input is not timed.
- push before and after: on two fresh stores side by side (batches alternated, each store
  first by turns, the batches frozen out of the garbage collector), `push()` as it is
  against the same code keeping daily rollups only (how it was before shorter spans), in the
  benchmark's shape and in a harvest's (`push_many` of 256 runners, three points each, 40
  repositories, 2 flavors, a pass every five minutes).
- totals: 28-day windows by repository and flavor that start and end at midnight UTC, at a
  local midnight (+05:30, +05:45, -03:30) and at any minute (two), each answered by `total()`, by
  the same code reading daily rollups only (before), and by the hand-written SQL scan of the
  window's points; each answer is checked equal to `total()` over points first.
- retrieve / delete: our method against the same answer written by hand in SQL over
  the same table, the result rows fetched (no Python objects built for them).

PostgreSQL runs in a throw-away server (fsync on, Debian's defaults otherwise) started by the
benchmark.

Run:  python bench/bench_storage.py --backend sqlite postgresql --n 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import decimal
import gc
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.storage import sql
from runner_fs.storage.postgresql import PostgreSQLStorage
from runner_fs.storage.sql import DAY_US, PRICE_SCALE, QTY_SCALE, SQLStorage, to_utc_us
from runner_fs.storage.sqlite import SQLiteStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.postgres import running_server

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 6, 1, tzinfo=UTC)
DAYS = 30
BATCH = 1000
TYPES = ("runner.installation", "runner.idle", "runner.job")
FLAVORS = [f"flavor-{i}" for i in range(8)]
REPOSITORIES = [f"org-{i % 20}/repo-{i}" for i in range(400)]
WORKFLOWS = [f"workflow-{i}" for i in range(60)]
UNITS = [f"runner-fs/{i}" for i in range(20)]


def _points(n: int, seed: int = 7) -> Iterator[tuple]:
    """Yield (start, end, type, qty, price, groupby, metadata) of realistic runner metrics."""
    rng = random.Random(seed)  # noqa: S311 (test data)
    for i in range(n):
        # harvests arrive in time order, each point up to an hour from its neighbours
        start = T0 + datetime.timedelta(seconds=i * DAYS * 86400 // n + rng.randrange(3600))
        seconds = decimal.Decimal(rng.randrange(1, 7200_000)) / 1000
        type_ = TYPES[i % 3]
        groupby = {"unit": rng.choice(UNITS), "flavor": rng.choice(FLAVORS)}
        if type_ != "runner.installation":
            groupby |= {
                "repository": rng.choice(REPOSITORIES),
                "workflow": rng.choice(WORKFLOWS),
                "event": rng.choice(("push", "pull_request", "schedule")),
            }
        if type_ == "runner.job":
            groupby["status"] = rng.choice(("normal", "abnormal"))
        price = (seconds / 3600 * decimal.Decimal("0.008")).quantize(decimal.Decimal("1e-9"))
        metadata = {"runner_name": f"runner-{i}", "workflow_run_id": str(10**9 + i)}
        yield (
            start,
            start + datetime.timedelta(seconds=float(seconds)),
            type_,
            seconds,
            price,
            groupby,
            metadata,
        )


def _batches(n: int) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for point in _points(n):
        batch.append(point)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _frames(batch: list[tuple]) -> list[DataFrame]:
    frames = []
    for start, end, type_, qty, price, groupby, metadata in batch:
        frame = DataFrame(start, end)
        frame.add_point(DataPoint("s", qty, price, groupby, metadata), type_)
        frames.append(frame)
    return frames


def _raw_rows(batch: list[tuple]) -> list[tuple]:
    return [
        (to_utc_us(s), to_utc_us(e), t, "s", int(q * QTY_SCALE), int(p * PRICE_SCALE),
         json.dumps(g, sort_keys=True), json.dumps(m, sort_keys=True), None)
        for s, e, t, q, p, g, m in batch
    ]  # fmt: skip


class HandSQLite:
    """The hand-written SQL on SQLite."""

    def __init__(self, storage: SQLiteStorage) -> None:
        self.db = storage.db

    def create_raw(self) -> None:
        self.db.execute(
            "CREATE TABLE raw_points (id INTEGER PRIMARY KEY, begin_us INTEGER, end_us INTEGER,"
            " type TEXT, unit TEXT, qty_micro INTEGER, price_nano INTEGER, groupby TEXT,"
            " metadata TEXT, description TEXT)"
        )
        self.db.execute("CREATE INDEX raw_points_begin ON raw_points (begin_us)")

    def insert_raw(self, rows: list[tuple]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "INSERT INTO raw_points (begin_us, end_us, type, unit, qty_micro, price_nano,"
            " groupby, metadata, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self.db.execute("COMMIT")

    def drop_raw(self) -> None:
        self.db.execute("DROP TABLE raw_points")

    def total(self, keys: list[str], begin: int, end: int) -> list:
        columns = ", ".join(f"json_extract(groupby, '$.{k}')" for k in keys)
        return self.db.execute(
            f"SELECT {columns}, SUM(qty_micro), SUM(price_nano) FROM points"
            f" WHERE begin_us >= ? AND begin_us < ? GROUP BY {columns} ORDER BY {columns}",
            (begin, end),
        ).fetchall()

    def retrieve(self, begin: int, end: int, offset: int) -> list:
        self.db.execute(
            "SELECT COUNT(*) FROM points WHERE begin_us >= ? AND begin_us < ?", (begin, end)
        ).fetchone()
        rows = self.db.execute(
            "SELECT p.begin_us, p.end_us, p.type, p.unit, p.qty_micro, p.price_nano, p.groupby,"
            " p.metadata, p.description FROM points AS p WHERE p.begin_us >= ?"
            " AND p.begin_us < ? ORDER BY p.begin_us, p.end_us, p.type, p.id LIMIT 1000 OFFSET ?",
            (begin, end, offset),
        ).fetchall()
        return [(*row[:6], json.loads(row[6]), json.loads(row[7]), row[8]) for row in rows]

    def delete(self, begin: int, end: int) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("DELETE FROM points WHERE begin_us >= ? AND begin_us < ?", (begin, end))
        self.db.execute("COMMIT")


class HandPostgreSQL:
    """The hand-written SQL on PostgreSQL: COPY, and the plain jsonb queries."""

    def __init__(self, storage: PostgreSQLStorage) -> None:
        self.db = storage.db

    def create_raw(self) -> None:
        self.db.execute("CREATE TABLE raw_points (LIKE points INCLUDING ALL)")

    def insert_raw(self, rows: list[tuple]) -> None:
        with (
            self.db.transaction(),
            self.db.cursor() as cursor,
            cursor.copy(
                "COPY raw_points (begin_us, end_us, type, unit, qty_micro, price_nano, groupby,"
                " metadata, description) FROM STDIN"
            ) as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def drop_raw(self) -> None:
        self.db.execute("DROP TABLE raw_points")

    def total(self, keys: list[str], begin: int, end: int) -> list:
        columns = ", ".join(f"groupby -> '{k}'" for k in keys)
        return self.db.execute(
            f"SELECT {columns}, SUM(qty_micro), SUM(price_nano) FROM points"
            f" WHERE begin_us >= %s AND begin_us < %s GROUP BY {columns} ORDER BY {columns}",
            (begin, end),
        ).fetchall()

    def retrieve(self, begin: int, end: int, offset: int) -> list:
        self.db.execute(
            "SELECT COUNT(*) FROM points WHERE begin_us >= %s AND begin_us < %s", (begin, end)
        ).fetchone()
        return self.db.execute(
            "SELECT p.begin_us, p.end_us, p.type, p.unit, p.qty_micro, p.price_nano, p.groupby,"
            " p.metadata, p.description FROM points AS p WHERE p.begin_us >= %s"
            " AND p.begin_us < %s ORDER BY p.begin_us, p.end_us, p.type, p.id"
            " LIMIT 1000 OFFSET %s",
            (begin, end, offset),
        ).fetchall()

    def delete(self, begin: int, end: int) -> None:
        with self.db.transaction():
            self.db.execute(
                "DELETE FROM points WHERE begin_us >= %s AND begin_us < %s", (begin, end)
            )


def bench_push(storage: SQLStorage, hand: Any, n: int) -> dict[str, float]:
    """Return points per second for `push()` and for the raw bulk insert."""
    hand.create_raw()
    ours = raw = 0.0
    for batch in _batches(n):
        frames, rows = _frames(batch), _raw_rows(batch)
        start = time.perf_counter()
        storage.push(frames)
        ours += time.perf_counter() - start
        start = time.perf_counter()
        hand.insert_raw(rows)
        raw += time.perf_counter() - start
    hand.drop_raw()
    return {"ours": n / ours, "raw": n / raw}


def _whole_days(low: int, high: int) -> tuple[list, list]:
    """Split a window as before shorter spans: whole UTC days inside it, the rest points."""
    first, last = -(-low // DAY_US) * DAY_US, high // DAY_US * DAY_US
    if first >= last:
        return [], [(1, low, high)]
    edges = [(1, *part) for part in ((low, first), (last, high)) if part[0] < part[1]]
    return [(1, DAY_US, first, last)], edges


def daily_rollups_only() -> contextlib.AbstractContextManager:
    """Run this code with daily rollups only, as before shorter spans: the rest from points."""
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(sql, "SPANS_US", (DAY_US,)))
    stack.enter_context(mock.patch.object(sql, "cover", _whole_days))
    return stack


def _harvests(passes: int, seed: int = 11) -> Iterator[list]:
    """Yield the `push_many` argument of each pass: 256 runners, three points each."""
    rng = random.Random(seed)  # noqa: S311 (test data)
    for number in range(passes):
        harvests = []
        for runner in range(256):
            start = T0 + datetime.timedelta(seconds=number * 300 + rng.randrange(300))
            groupby = {
                "flavor": f"flavor-{runner % 2}",
                "repository": f"org/repo-{rng.randrange(40)}",
            }
            frames = []
            for type_ in TYPES:
                frame = DataFrame(start, start + datetime.timedelta(seconds=60))
                metadata = {"runner_name": f"r-{number}-{runner}"}
                point = DataPoint("s", rng.randrange(1, 3600), "0.001", groupby, metadata)
                frame.add_point(point, type_)
                frames.append(frame)
            harvests.append((f"bench/{number}/{runner}", frames, {("s", "harvests"): 1}))
        yield harvests


def bench_push_before_after(before: SQLStorage, after: SQLStorage, n: int) -> list[tuple]:
    """Return rows (shape, points/s after, points/s before), pushes alternated on two stores."""
    rows = []
    shapes = (
        ("benchmark: push() of 1000 points", lambda s, b: s.push(b),
         [_frames(batch) for batch in _batches(n)]),
        ("harvest: push_many() of 256 runners", lambda s, b: s.push_many(b),
         list(_harvests(max(1, n // 768)))),
    )  # fmt: skip
    # The batches built are kept out of the collector's reach: whichever push set off a full
    # collection would otherwise pay for walking them all.
    gc.collect()
    gc.freeze()
    for name, push, batches in shapes:
        spent = {"after": 0.0, "before": 0.0}
        points = 0
        for number, batch in enumerate(batches):
            points += len(batch) * (3 if name.startswith("harvest") else 1)
            sides = [("after", after, contextlib.nullcontext),
                     ("before", before, daily_rollups_only)]  # fmt: skip
            for side, store, code in sides[:: 1 if number % 2 else -1]:  # first by turns
                with code():
                    start = time.perf_counter()
                    push(store, batch)
                    spent[side] += time.perf_counter() - start
        rows.append((name, points / spent["after"], points / spent["before"]))
    gc.unfreeze()
    return rows


def _best(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def _from_points(storage: SQLStorage, keys: list[str], begin: datetime.datetime,
                 end: datetime.datetime) -> dict:  # fmt: skip
    """Return `total()` answered from a scan of the window's points."""
    storage.rolled_up = lambda: False  # type: ignore[method-assign]
    try:
        return storage.total(keys, begin, end, paginate=False)
    finally:
        del storage.rolled_up


def _windows() -> list[tuple[str, datetime.datetime, datetime.datetime]]:
    """Return 28-day windows from the second day: UTC, local midnights, any minute.

    From 13:07 to 09:41 scans three minutes of points at its ends, from 13:01 to 09:59 two.
    """
    first = T0 + datetime.timedelta(days=1)
    windows = [("UTC days", first, first + datetime.timedelta(days=28))]
    for hours, minutes in ((5, 30), (5, 45), (-3, -30)):
        zone = datetime.timezone(datetime.timedelta(hours=hours, minutes=minutes))
        local = datetime.datetime.combine(first.date(), datetime.time(), zone)
        windows.append(
            (f"days at {local:%z} midnight", local, local + datetime.timedelta(days=28))
        )
    for (hour, minute), (end_hour, end_minute) in (((13, 7), (9, 41)), ((13, 1), (9, 59))):
        windows.append((
            f"any minute ({hour}:{minute:02} to {end_hour:02}:{end_minute})",
            first.replace(hour=hour, minute=minute),
            first + datetime.timedelta(days=28, hours=end_hour, minutes=end_minute),
        ))  # fmt: skip
    return windows


def run(storage: SQLStorage, hand: Any, n: int, repeat: int) -> list[tuple]:
    """Return rows (operation, ours, hand-written[, before]) in s, or points/s for push."""
    push = bench_push(storage, hand, n)
    rows: list[tuple] = [("push (points/s)", push["ours"], push["raw"])]
    keys = ["repository", "flavor"]
    for name, begin, end in _windows():
        answer = storage.total(keys, begin, end, paginate=False)
        assert answer == _from_points(storage, keys, begin, end), "rollups and points disagree"
        with daily_rollups_only():
            before = _best(
                lambda b=begin, e=end: storage.total(keys, b, e, paginate=False), repeat
            )
        rows.append((
            f"28-day total by repository+flavor, {name}",
            _best(lambda b=begin, e=end: storage.total(keys, b, e, paginate=False), repeat),
            _best(lambda b=begin, e=end: hand.total(keys, to_utc_us(b), to_utc_us(e)), repeat),
            before,
        ))  # fmt: skip
    end = T0 + datetime.timedelta(days=DAYS)
    offset = max(0, n - 1000)
    rows.append((
        f"retrieve 1000 at offset {offset}",
        _best(lambda: storage.retrieve(T0, end, offset=offset), repeat),
        _best(lambda: hand.retrieve(to_utc_us(T0), to_utc_us(end), offset), repeat),
    ))  # fmt: skip
    day = T0 + datetime.timedelta(days=DAYS // 2)
    next_day = day + datetime.timedelta(days=1)
    start = time.perf_counter()
    storage.delete(day, next_day)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    hand.delete(to_utc_us(next_day), to_utc_us(next_day + datetime.timedelta(days=1)))
    rows.append(("delete a day", ours, time.perf_counter() - start))
    rows.append(("upgrade from version 4 (rollups built)", upgrade_from_version_4(storage)))
    return rows


def upgrade_from_version_4(storage: SQLStorage) -> float:
    """Return the seconds `init()` takes to upgrade the store as version 4 left it."""
    storage._execute("DROP TABLE rollups")
    storage._execute(
        "CREATE TABLE rollups (day bigint NOT NULL, group_id bigint NOT NULL, qty_micro bigint"
        " NOT NULL, price_nano bigint NOT NULL, points bigint NOT NULL,"
        " PRIMARY KEY (day, group_id))"
    )
    storage._execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    storage.close()
    reopened = (
        SQLiteStorage(path=storage.path)
        if isinstance(storage, SQLiteStorage)
        else PostgreSQLStorage(dsn=storage.dsn)  # type: ignore[attr-defined]
    )
    start = time.perf_counter()
    reopened.init()
    spent = time.perf_counter() - start
    reopened.close()
    return spent


@contextlib.contextmanager
def _stores(backend: str) -> Iterator[Callable[[str], tuple[SQLStorage, Any]]]:
    """Yield a function that opens a new empty store of `backend` and its hand-written SQL."""
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        else:
            server = stack.enter_context(running_server(durable=True))

        def new_store(name: str) -> tuple[SQLStorage, Any]:
            storage: SQLStorage
            if backend == "sqlite":
                storage = SQLiteStorage(path=directory / f"{name}.db")
                hand: Any = HandSQLite(storage)
            else:
                storage = PostgreSQLStorage(dsn=server.create_database(name))
                hand = HandPostgreSQL(storage)
            stack.callback(storage.close)
            return storage, hand

        yield new_store


def main() -> None:
    """Run the sizes given and print Markdown tables per backend and size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", nargs="+", choices=["sqlite", "postgresql"],
                        default=["sqlite", "postgresql"])  # fmt: skip
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--push-n", type=int, default=200_000,
                        help="points pushed before and after, in each shape")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="best of this many (reads)")
    parser.add_argument("--repositories", type=int, default=len(REPOSITORIES),
                        help="repositories (15: 120 groups with the flavors)")  # fmt: skip
    args = parser.parse_args()
    REPOSITORIES[:] = REPOSITORIES[: args.repositories]
    for backend in args.backend:
        with _stores(backend) as new_store:
            print(f"\n### {backend}: push before and after, {args.push_n:,} points each\n")
            print("| shape | after (points/s) | before (points/s) | after / before |")
            print("| --- | --- | --- | --- |")
            before_after = bench_push_before_after(
                new_store("push_before")[0], new_store("push_after")[0], args.push_n
            )
            for name, after, before in before_after:
                print(f"| {name} | {after:,.0f} | {before:,.0f} | {after / before:.2f}x |")
            for n in args.n:
                print(f"\n### {backend}, {n:,} datapoints\n")
                print("| operation | ours | hand-written SQL | ratio | daily rollups (before)"
                      " | ratio |\n| --- | --- | --- | --- | --- | --- |")  # fmt: skip
                start = time.perf_counter()
                for name, ours, *raw_before in run(*new_store(f"bench_{n}"), n, args.repeat):
                    if name.startswith("upgrade"):
                        print(f"| {name} | {ours:.2f} s | | | | |")
                    elif name.startswith("push"):
                        raw = raw_before[0]
                        print(f"| {name} | {ours:,.0f} | {raw:,.0f} | {ours / raw:.0%} of raw"
                              " | | |")  # fmt: skip
                    else:
                        raw, *before = raw_before
                        then = f"{before[0]:.4f} s | {ours / before[0]:.3f}x" if before else "|"
                        print(f"| {name} | {ours:.4f} s | {raw:.4f} s | {ours / raw:.3f}x"
                              f" | {then} |")  # fmt: skip
                spent = time.perf_counter() - start
                print(f"\n(the whole run, generating and pushing included: {spent:.0f} s)")


if __name__ == "__main__":
    main()
