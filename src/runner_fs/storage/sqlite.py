"""The embedded SQLite backend: exact fixed-point sums, half-open time windows, one file.

Schema (version 1), instants in UTC microseconds, quantities as fixed-point integers so sums are
exact and reproducible: `qty` in millionths, `price` in billionths::

    meta(key PRIMARY KEY, value)                    schema_version
    groups(id PRIMARY KEY, groupby UNIQUE)          one row per distinct groupby (JSON)
    points(id PRIMARY KEY, begin_us, end_us, type, unit, qty_micro, price_nano,
           group_id -> groups, metadata JSON, description)
    ledger(key PRIMARY KEY, stored_us, points)      exactly-once harvest keys
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.errors import StorageError
from runner_fs.storage import BaseStorage

SCHEMA_VERSION = 1
QTY_SCALE = 10**6
PRICE_SCALE = 10**9
_MAX_FIXED = 2**62
_UTC = datetime.timezone.utc
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups (id INTEGER PRIMARY KEY, groupby TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY,
    begin_us INTEGER NOT NULL,
    end_us INTEGER NOT NULL,
    type TEXT NOT NULL,
    unit TEXT NOT NULL,
    qty_micro INTEGER NOT NULL,
    price_nano INTEGER NOT NULL,
    group_id INTEGER NOT NULL REFERENCES groups (id),
    metadata TEXT NOT NULL,
    description TEXT
);
CREATE INDEX IF NOT EXISTS points_begin ON points (begin_us);
CREATE TABLE IF NOT EXISTS ledger (
    key TEXT PRIMARY KEY, stored_us INTEGER NOT NULL, points INTEGER NOT NULL
);
"""
# Expressions for the time attributes when a point does not carry them (collector formulas).
_START = "p.begin_us / 1000000, 'unixepoch'"
_COMPUTED = {
    "day_of_the_year": f"CAST(CAST(strftime('%j', {_START}) AS INTEGER) AS TEXT)",
    "week_of_the_year": f"printf('%02d', (strftime('%j', {_START}) - 1 + 7"
    f" - strftime('%w', {_START})) / 7)",
    "month": f"CAST(CAST(strftime('%m', {_START}) AS INTEGER) AS TEXT)",
    "year": f"strftime('%Y', {_START})",
}


def to_utc_us(moment: datetime.datetime) -> int:
    """Return UTC microseconds since the epoch; a naive datetime is UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_UTC)
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=_UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_utc_us(micros: int) -> datetime.datetime:
    """Return an aware datetime in the server's local zone."""
    return (
        datetime.datetime(1970, 1, 1, tzinfo=_UTC) + datetime.timedelta(microseconds=micros)
    ).astimezone()


def month_window() -> tuple[datetime.datetime, datetime.datetime]:
    """Return the start of this month and of the next, in the server's local zone."""
    start = (
        datetime.datetime.now()
        .astimezone()
        .replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    )
    following = (start + datetime.timedelta(days=32)).replace(day=1)
    return start, following.replace(tzinfo=None).astimezone()


def _fixed(value: decimal.Decimal, scale: int, what: str) -> int:
    scaled = int((value * scale).to_integral_value(decimal.ROUND_HALF_EVEN))
    if abs(scaled) >= _MAX_FIXED:
        raise StorageError(f"{what} {value} is too large to store")
    return scaled


def _canonical(mapping: Any) -> str:
    return json.dumps(dict(mapping), sort_keys=True, separators=(",", ":"), default=str)


class SQLiteStorage(BaseStorage):
    """Metrics in one SQLite file (WAL, synchronous=FULL)."""

    def __init__(self, *, path: str | Path = "metrics.db", **options: Any) -> None:
        """Point at a database file; nothing is opened until `init()`.

        Args:
            path: the SQLite file; created with its directory's permissions.
            options: `retention_period` (hours); others are ignored.
        """
        super().__init__(**options)
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._group_ids: dict[str, int] = {}

    @property
    def db(self) -> sqlite3.Connection:
        """Return the open connection.

        Raises:
            StorageError: `init()` was not called.
        """
        if self._db is None:
            raise StorageError("storage not initialised: call init() first")
        return self._db

    def init(self) -> None:
        """Open the file and create the schema if missing; idempotent.

        Raises:
            StorageError: the file cannot be opened or has a newer schema.
        """
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            (version,) = self._db.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
            if int(version) > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path} has schema version {version}, newer than this runner-fs "
                    f"({SCHEMA_VERSION}); upgrade runner-fs"
                )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open metrics database {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- writing ---------------------------------------------------------------------------

    def _rows(self, dataframes: Iterable[DataFrame]) -> list[tuple]:
        """Validate every frame and point first, so bad input stores nothing."""
        rows = []
        for frame in dataframes:
            if not isinstance(frame, DataFrame) and not hasattr(frame, "iterpoints"):
                raise StorageError(f"push takes DataFrames, not {type(frame).__name__}")
            begin, end = to_utc_us(frame.start), to_utc_us(frame.end)
            if end < begin:
                raise StorageError(f"a frame ends ({frame.end}) before it starts ({frame.start})")
            for type_, point in frame.iterpoints():
                try:
                    qty = decimal.Decimal(point.qty)
                    price = decimal.Decimal(point.price)
                except (decimal.InvalidOperation, TypeError, ValueError):
                    raise StorageError(f"{type_}: qty and price must be numbers") from None
                rows.append((begin, end, str(type_), str(point.unit),
                             _fixed(qty, QTY_SCALE, "qty"), _fixed(price, PRICE_SCALE, "price"),
                             _canonical(point.groupby), _canonical(point.metadata),
                             point.description))  # fmt: skip
        return rows

    def _insert(self, rows: list[tuple]) -> None:
        db = self.db
        for groupby in {row[6] for row in rows} - self._group_ids.keys():
            db.execute("INSERT OR IGNORE INTO groups (groupby) VALUES (?)", (groupby,))
            self._group_ids[groupby] = db.execute(
                "SELECT id FROM groups WHERE groupby = ?", (groupby,)
            ).fetchone()[0]
        ids = self._group_ids
        db.executemany(
            "INSERT INTO points (begin_us, end_us, type, unit, qty_micro, price_nano, group_id,"
            " metadata, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(*row[:6], ids[row[6]], *row[7:]) for row in rows],
        )

    def push(self, dataframes: Iterable[DataFrame], scope_id: str | None = None) -> None:
        """Store frames in one transaction.

        Raises:
            StorageError: a frame or point is invalid (nothing stored), or the database failed.
        """
        rows = self._rows(dataframes)
        try:
            with self._transaction():
                self._insert(rows)
        except sqlite3.Error as exc:
            self._group_ids.clear()
            raise StorageError(f"push to {self.path} failed: {exc}") from exc

    def push_once(self, key: str, dataframes: Iterable[DataFrame]) -> bool:
        """Store frames and a ledger key in one transaction, unless the key is stored.

        Returns:
            True if stored now, False if the key was already there (nothing stored).

        Raises:
            StorageError: a frame is invalid, or the database failed (nothing stored).
        """
        rows = self._rows(dataframes)
        try:
            with self._transaction():
                if self.db.execute("SELECT 1 FROM ledger WHERE key = ?", (key,)).fetchone():
                    return False
                self._insert(rows)
                now = to_utc_us(datetime.datetime.now(_UTC))
                self.db.execute("INSERT INTO ledger VALUES (?, ?, ?)", (key, now, len(rows)))
        except sqlite3.Error as exc:
            self._group_ids.clear()
            raise StorageError(f"push to {self.path} failed: {exc}") from exc
        return True

    def delete(
        self,
        begin: datetime.datetime | None = None,
        end: datetime.datetime | None = None,
        filters: dict | None = None,
    ) -> None:
        """Delete matching points; None bounds are open (no default month here)."""
        where, args = self._where(begin, end, filters, None, open_bounds=True)
        try:
            with self._transaction():
                self.db.execute(f"DELETE FROM points AS p WHERE {where}", args)
        except sqlite3.Error as exc:
            raise StorageError(f"delete in {self.path} failed: {exc}") from exc

    # -- reading ---------------------------------------------------------------------------

    def _where(
        self,
        begin: datetime.datetime | None,
        end: datetime.datetime | None,
        filters: dict | None,
        metric_types: str | list[str] | None,
        open_bounds: bool = False,
    ) -> tuple[str, list]:
        if not open_bounds:
            default_begin, default_end = month_window()
            begin, end = begin or default_begin, end or default_end
        clauses: list[str] = ["1"]
        args: list[Any] = []
        if begin is not None:
            clauses.append("p.begin_us >= ?")
            args.append(to_utc_us(begin))
        if end is not None:
            clauses.append("p.begin_us < ?")
            args.append(to_utc_us(end))
        types = [metric_types] if isinstance(metric_types, str) else list(metric_types or [])
        for key, value in (filters or {}).items():
            values = [
                str(v) for v in (value if isinstance(value, (list, tuple, set)) else [value])
            ]
            marks = ", ".join("?" * len(values))
            if key == "type":
                types = [t for t in types if t in values] if types else values
                if not types:
                    return "0", []
                continue
            path = "$." + json.dumps(str(key))
            clauses.append(
                "(p.group_id IN (SELECT id FROM groups WHERE"
                f" CAST(json_extract(groupby, ?) AS TEXT) IN ({marks}))"
                " OR (p.group_id IN (SELECT id FROM groups WHERE"
                f" json_type(groupby, ?) IS NULL) AND CAST(json_extract(p.metadata, ?) AS TEXT)"
                f" IN ({marks})))"
            )
            args += [path, *values, path, path, *values]
        if types:
            clauses.append(f"p.type IN ({', '.join('?' * len(types))})")
            args += types
        return " AND ".join(clauses), args

    def retrieve(
        self,
        begin: datetime.datetime | None = None,
        end: datetime.datetime | None = None,
        filters: dict | None = None,
        metric_types: str | list[str] | None = None,
        offset: int = 0,
        limit: int = 1000,
        paginate: bool = True,
    ) -> dict:
        """Return `{'total': points, 'dataframes': [frames]}`, ordered by start, type, id."""
        where, args = self._where(begin, end, filters, metric_types)
        total = self.db.execute(
            f"SELECT COUNT(*) FROM points AS p WHERE {where}", args
        ).fetchone()[0]
        page = " LIMIT ? OFFSET ?" if paginate else ""
        rows = self.db.execute(
            "SELECT p.begin_us, p.end_us, p.type, p.unit, p.qty_micro, p.price_nano, g.groupby,"
            f" p.metadata, p.description FROM points AS p JOIN groups AS g ON g.id = p.group_id"
            f" WHERE {where} ORDER BY p.begin_us, p.end_us, p.type, p.id{page}",
            [*args, limit, offset] if paginate else args,
        )
        frames: dict[tuple[int, int], DataFrame] = {}
        for begin_us, end_us, type_, unit, qty, price, groupby, metadata, description in rows:
            frame = frames.get((begin_us, end_us))
            if frame is None:
                frame = frames[(begin_us, end_us)] = DataFrame(
                    from_utc_us(begin_us), from_utc_us(end_us)
                )
            frame.add_point(
                DataPoint(unit, decimal.Decimal(qty) / QTY_SCALE,
                          decimal.Decimal(price) / PRICE_SCALE,
                          json.loads(groupby), json.loads(metadata), description),
                type_,
            )  # fmt: skip
        return {"total": total, "dataframes": [frames[k] for k in sorted(frames)]}

    def total(
        self,
        groupby: list[str] | None = None,
        begin: datetime.datetime | None = None,
        end: datetime.datetime | None = None,
        metric_types: str | list[str] | None = None,
        filters: dict | None = None,
        custom_fields: Any = None,
        offset: int = 0,
        limit: int = 1000,
        paginate: bool = True,
    ) -> dict:
        """Sum qty and price by the groupby attributes; exact, deterministic, paginated.

        Raises:
            ValueError: an unknown `time-` groupby syntax.
        """
        groupby = self.parse_groupby_syntax_to_groupby_elements(groupby) or []
        if not begin or not end:
            default_begin, default_end = month_window()
            begin, end = begin or default_begin, end or default_end
        where, args = self._where(begin, end, filters, metric_types)
        by_time = "time" in groupby
        inner_keys = ["p.group_id", "p.type"] + (["p.begin_us", "p.end_us"] if by_time else [])
        if any(key in _COMPUTED for key in groupby):
            inner_keys += ["p.begin_us"] if not by_time else []
        outer, names = [], []
        for key in groupby:
            if key == "time":
                continue
            names.append(key)
            path = "'$." + str(key).replace("'", "''").replace('"', "") + "'"
            if key == "type":
                outer.append("s.type")
            elif key in _COMPUTED:
                computed = _COMPUTED[key].replace("p.begin_us", "s.begin_us")
                outer.append(f"COALESCE(json_extract(g.groupby, {path}), {computed})")
            else:
                outer.append(f"json_extract(g.groupby, {path})")
        if by_time:
            outer += ["s.begin_us", "s.end_us"]
        select_keys = ", ".join(outer) if outer else "NULL"
        group_clause = f" GROUP BY {', '.join(outer)} ORDER BY {', '.join(outer)}" if outer else ""
        inner_select = ", ".join(f"{k} AS {k.split('.')[1]}" for k in dict.fromkeys(inner_keys))
        sql = (
            f"WITH s AS (SELECT {inner_select}, SUM(p.qty_micro) AS q, SUM(p.price_nano) AS c"
            f" FROM points AS p WHERE {where} GROUP BY {', '.join(dict.fromkeys(inner_keys))})"
            f" SELECT {select_keys}, SUM(s.q), SUM(s.c)"
            " FROM s JOIN groups AS g ON g.id = s.group_id"
            f"{group_clause}"
        )
        results = []
        for row in self.db.execute(sql, args):
            values, qty, price = row[: len(outer) or 1], row[-2] or 0, row[-1] or 0
            if by_time:
                row_begin, row_end = from_utc_us(values[-2]), from_utc_us(values[-1])
            else:
                row_begin, row_end = _local(begin), _local(end)
            result = {"begin": row_begin, "end": row_end,
                      "qty": float(decimal.Decimal(qty) / QTY_SCALE),
                      "rate": float(decimal.Decimal(price) / PRICE_SCALE)}  # fmt: skip
            result.update(zip(names, values[: len(names)], strict=True))
            results.append(result)
        page = results[offset : offset + limit] if paginate else results
        return {"total": len(results), "results": page}


def _local(moment: datetime.datetime) -> datetime.datetime:
    return from_utc_us(to_utc_us(moment))
