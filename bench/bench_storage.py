"""Benchmark: each SQL backend's push, total, retrieve and delete against hand-written SQL.

The data are realistic runner metrics: one point per frame (each harvested metric has its own
begin and end), three metric types, 20 hosts, 8 flavors, 400 repositories, 60 workflows, spread
over 30 days in time order (as harvests arrive). Both sides work on the same database file
in the same run:

- push: `push()` of real DataFrame objects, 1000 points per call (one transaction each),
  against a raw bulk insert of ready-made tuples (already converted to integers and JSON
  text) into a table with the same columns and indexes, also 1000 per transaction: SQLite's
  `executemany`, PostgreSQL's COPY. Building either side's input is not timed.
- total / retrieve / delete: our method against the same answer written by hand in SQL over
  the same table, the result rows fetched (no Python objects built for them). Totals are
  also answered by today's point scan (the same `total()` with rollups switched off), so
  rollups, the scan they replace and the hand-written scan are compared in one run.

PostgreSQL runs in a throw-away server (fsync on, Debian's defaults otherwise) started by the
benchmark, or in the database given with --dsn (its tables are dropped first).

Run:  python bench/bench_storage.py --backend sqlite postgresql --n 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import decimal
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.storage.postgresql import PostgreSQLStorage
from runner_fs.storage.sql import PRICE_SCALE, QTY_SCALE, SQLStorage, to_utc_us
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


def _best(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def _from_points(storage: SQLStorage, keys: list[str], end: datetime.datetime) -> dict:
    """Return `total()` as it was before rollups: a scan of the window's points."""
    storage.rolled_up = lambda: False  # type: ignore[method-assign]
    try:
        return storage.total(keys, T0, end, paginate=False)
    finally:
        del storage.rolled_up


def run(storage: SQLStorage, hand: Any, n: int, repeat: int) -> list[tuple]:
    """Return rows (operation, ours, hand-written[, point scan]) in s, or points/s for push."""
    push = bench_push(storage, hand, n)
    rows: list[tuple] = [("push (points/s)", push["ours"], push["raw"])]
    for days in (1, 7, 30):
        end = T0 + datetime.timedelta(days=days)
        window = (to_utc_us(T0), to_utc_us(end))
        for keys in (["repository"], ["repository", "flavor"]):
            answer = storage.total(keys, T0, end, paginate=False)
            assert answer == _from_points(storage, keys, end), "rollups and points disagree"
            rows.append((
                f"total by {'+'.join(keys)}, {days} d",
                _best(lambda k=keys, e=end: storage.total(k, T0, e, paginate=False), repeat),
                _best(lambda k=keys, w=window: hand.total(k, *w), repeat),
                _best(lambda k=keys, e=end: _from_points(storage, k, e), repeat),
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
    return rows


@contextlib.contextmanager
def _stores(backend: str, n: int, dsn: str | None) -> Iterator[tuple[SQLStorage, Any]]:
    """Yield an empty store of `backend` and its hand-written SQL."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="runner-fs-bench-") as directory:
            sqlite = SQLiteStorage(path=Path(directory) / f"bench-{n}.db")
            sqlite.init()
            yield sqlite, HandSQLite(sqlite)
            sqlite.close()
        return
    with contextlib.ExitStack() as stack:
        if dsn is None:
            server = stack.enter_context(running_server(durable=True))
            dsn = server.create_database(f"bench_{n}")
        postgresql = PostgreSQLStorage(dsn=dsn)
        postgresql.db.execute(
            "DROP TABLE IF EXISTS points, ledger, meta, tallies, rollups, raw_points CASCADE"
        )
        postgresql.init()
        yield postgresql, HandPostgreSQL(postgresql)
        postgresql.close()


def main() -> None:
    """Run the sizes given and print one Markdown table per backend and size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", nargs="+", choices=["sqlite", "postgresql"],
                        default=["sqlite", "postgresql"])  # fmt: skip
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3, help="best of this many (reads)")
    parser.add_argument("--dsn", help="PostgreSQL database to use (its tables are dropped)")
    args = parser.parse_args()
    for backend in args.backend:
        for n in args.n:
            print(f"\n### {backend}, {n:,} datapoints\n")
            print("| operation | ours | hand-written SQL | ratio | points scan (before) | ratio |")
            print("| --- | --- | --- | --- | --- | --- |")
            with _stores(backend, n, args.dsn) as (storage, hand):
                start = time.perf_counter()
                for name, ours, raw, *scan in run(storage, hand, n, args.repeat):
                    if name.startswith("push"):
                        print(f"| {name} | {ours:,.0f} | {raw:,.0f} | {ours / raw:.0%} of raw"
                              " | | |")  # fmt: skip
                    else:
                        before = f"{scan[0]:.4f} s | {ours / scan[0]:.3f}x" if scan else "|"
                        print(f"| {name} | {ours:.4f} s | {raw:.4f} s | {ours / raw:.3f}x"
                              f" | {before} |")  # fmt: skip
                spent = time.perf_counter() - start
                print(f"\n(the whole run, generating and pushing included: {spent:.0f} s)")


if __name__ == "__main__":
    main()
