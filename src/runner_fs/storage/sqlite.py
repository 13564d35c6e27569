"""The embedded SQLite backend: exact fixed-point sums, half-open time windows, one file.

Schema (version 1), instants in UTC microseconds, quantities as fixed-point integers so sums are
exact and reproducible: `qty` in millionths, `price` in billionths::

    meta(key PRIMARY KEY, value)                    schema_version
    points(id PRIMARY KEY, begin_us, end_us, type, unit, qty_micro, price_nano,
           groupby JSON, metadata JSON, description)
    ledger(key PRIMARY KEY, stored_us, points)      exactly-once harvest keys

One flat table: runner groupbys (host, flavor, repository, workflow, event, status) are nearly
unique per point, so a separate table of distinct groupbys only added a lookup per point.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.errors import StorageError
from runner_fs.storage import BaseStorage

SCHEMA_VERSION = 1
BUSY_TIMEOUT = 30.0  # seconds to wait for another writer
QTY_DIGITS, PRICE_DIGITS = 6, 9
QTY_SCALE, PRICE_SCALE = 10**QTY_DIGITS, 10**PRICE_DIGITS
_MAX_FIXED = 2**62
_UTC = datetime.timezone.utc
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY,
    begin_us INTEGER NOT NULL,
    end_us INTEGER NOT NULL,
    type TEXT NOT NULL,
    unit TEXT NOT NULL,
    qty_micro INTEGER NOT NULL,
    price_nano INTEGER NOT NULL,
    groupby TEXT NOT NULL,
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


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


def to_utc_us(moment: datetime.datetime) -> int:
    """Return UTC microseconds since the epoch; a naive datetime is UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_UTC)
    return (moment - _EPOCH) // _MICROSECOND


def from_utc_us(micros: int) -> datetime.datetime:
    """Return an aware datetime in the server's local zone."""
    return (_EPOCH + micros * _MICROSECOND).astimezone()


def month_window() -> tuple[datetime.datetime, datetime.datetime]:
    """Return the start of this month and of the next, in the server's local zone."""
    start = (
        datetime.datetime.now()
        .astimezone()
        .replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    )
    following = (start + datetime.timedelta(days=32)).replace(day=1)
    return start, following.replace(tzinfo=None).astimezone()


def _fixed(value: object, digits: int, what: str) -> int:
    """Return `value` * 10**digits rounded half-even: an exact integer for SQL sums."""
    try:
        number = value if type(value) is decimal.Decimal else decimal.Decimal(value)  # type: ignore[arg-type]
        scaled = int(number.scaleb(digits).to_integral_value(decimal.ROUND_HALF_EVEN))
    except (decimal.InvalidOperation, TypeError, ValueError, OverflowError):
        raise StorageError(f"{what} must be a finite number, not {value!r:.40}") from None
    if not -_MAX_FIXED < scaled < _MAX_FIXED:
        raise StorageError(f"{what} {value} is too large to store")
    return scaled


def _json_path(key: object) -> str:
    """Return the SQLite JSON path of a top-level key, quoted so dots stay in the name."""
    return "$." + json.dumps(str(key))


_to_json = json.JSONEncoder(separators=(",", ":"), default=str).encode


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
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT)
                self._create_schema(self._db)
                return
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL fails at once, without waiting, while another
                # process is creating it: retry until the timeout.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StorageError(f"cannot open metrics database {self.path}: {exc}") from exc
                time.sleep(0.02)
            except (OSError, sqlite3.Error) as exc:
                raise StorageError(f"cannot open metrics database {self.path}: {exc}") from exc

    def _create_schema(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        (version,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if int(version) > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} has schema version {version}, newer than this runner-fs "
                f"({SCHEMA_VERSION}); upgrade runner-fs"
            )

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
                rows.append((begin, end, str(type_), str(point.unit),
                             _fixed(point.qty, QTY_DIGITS, f"{type_} qty"),
                             _fixed(point.price, PRICE_DIGITS, f"{type_} price"),
                             _to_json(point.groupby), _to_json(point.metadata),
                             point.description))  # fmt: skip
        return rows

    def _insert(self, rows: list[tuple]) -> None:
        self.db.executemany(
            "INSERT INTO points (begin_us, end_us, type, unit, qty_micro, price_nano, groupby,"
            " metadata, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
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
            path = _json_path(key)
            clauses.append(
                f"CAST(CASE WHEN json_type(p.groupby, ?) IS NULL THEN json_extract(p.metadata, ?)"
                f" ELSE json_extract(p.groupby, ?) END AS TEXT) IN ({marks})"
            )
            args += [path, path, path, *values]
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
            "SELECT p.begin_us, p.end_us, p.type, p.unit, p.qty_micro, p.price_nano, p.groupby,"
            f" p.metadata, p.description FROM points AS p WHERE {where}"
            f" ORDER BY p.begin_us, p.end_us, p.type, p.id{page}",
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
        keys, names = [], []
        for key in groupby:
            if key == "time":
                continue
            names.append(key)
            path = "'" + _json_path(key).replace("'", "''") + "'"
            if key == "type":
                keys.append("p.type")
            elif key in _COMPUTED:
                keys.append(f"COALESCE(json_extract(p.groupby, {path}), {_COMPUTED[key]})")
            else:
                keys.append(f"json_extract(p.groupby, {path})")
        if by_time:
            keys += ["p.begin_us", "p.end_us"]
        grouping = f" GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}" if keys else ""
        sql = (
            f"SELECT {', '.join(keys) or 'NULL'}, SUM(p.qty_micro), SUM(p.price_nano)"
            f" FROM points AS p WHERE {where}{grouping}"
        )
        results = []
        row_begin, row_end = _local(begin), _local(end)
        for row in self.db.execute(sql, args):
            values, qty, price = row[: len(keys) or 1], row[-2] or 0, row[-1] or 0
            if by_time:
                row_begin, row_end = from_utc_us(values[-2]), from_utc_us(values[-1])
            result = {"begin": row_begin, "end": row_end,
                      "qty": qty / QTY_SCALE, "rate": price / PRICE_SCALE}  # fmt: skip
            result.update(zip(names, values[: len(names)], strict=True))
            results.append(result)
        page = results[offset : offset + limit] if paginate else results
        return {"total": len(results), "results": page}


def _local(moment: datetime.datetime) -> datetime.datetime:
    return from_utc_us(to_utc_us(moment))
