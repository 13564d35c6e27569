"""What the SQL backends share: the row format, and every rule of push, retrieve and total.

Both backends store the same columns, instants in UTC microseconds and quantities as
fixed-point integers so sums are exact and reproducible (`qty` in millionths, `price` in
billionths)::

    points(id, begin_us, end_us, type, unit, qty_micro, price_nano, groupby, metadata,
           description)
    ledger(key PRIMARY KEY, stored_us, points)      exactly-once harvest keys
    meta(key PRIMARY KEY, value)                    schema_version

A backend supplies its connection, transactions, bulk insert and the few expressions where
the SQL dialects differ (JSON access, calendar fields, the parameter mark).
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import decimal
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import orjson

from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.errors import StorageError
from runner_fs.storage import BaseStorage

QTY_DIGITS, PRICE_DIGITS = 6, 9
QTY_SCALE, PRICE_SCALE = 10**QTY_DIGITS, 10**PRICE_DIGITS
COLUMNS = "begin_us, end_us, type, unit, qty_micro, price_nano, groupby, metadata, description"
_MAX_FIXED = 2**62
_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


def _to_json(value: object, what: str) -> str:
    """Return compact JSON; numbers outside JSON's range become strings via `str`."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError as exc:
        raise StorageError(f"{what} cannot be stored as JSON: {exc}") from None


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


def to_rows(dataframes: Iterable[DataFrame]) -> list[tuple]:
    """Return the rows of `COLUMNS` of every point, all validated first: bad input stores none.

    Raises:
        StorageError: a frame or point is invalid.
    """
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
                         _to_json(point.groupby, f"{type_} groupby"),
                         _to_json(point.metadata, f"{type_} metadata"),
                         point.description))  # fmt: skip
    return rows


class SQLStorage(BaseStorage):
    """The semantics of CloudKitty's v2 storage over the shared schema, dialect left open."""

    MARK: ClassVar[str]
    """The driver's parameter mark."""
    ERRORS: ClassVar[tuple[type[Exception], ...]]
    """The driver's exceptions, reported as StorageError."""

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Name the database for messages; never includes a secret."""

    @abc.abstractmethod
    def _execute(self, sql: str, args: Iterable[Any] = ()) -> Any:
        """Run one statement and return its cursor."""

    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        """Commit what runs inside, or roll all of it back."""

    @abc.abstractmethod
    def _decode(self, stored: Any) -> dict:
        """Return a stored groupby or metadata as a dict."""

    @abc.abstractmethod
    def _insert(self, rows: Iterable[tuple]) -> None:
        """Insert rows of `COLUMNS` into points, inside the current transaction."""

    @abc.abstractmethod
    def _filter_value(self, key: str) -> tuple[str, list]:
        """Return the text of attribute `key` (groupby first, then metadata) and its args."""

    @abc.abstractmethod
    def _group_value(self, key: str) -> tuple[str, list]:
        """Return groupby attribute `key` (calendar fields computed if absent) and its args."""

    @contextlib.contextmanager
    def _reporting(self, action: str) -> Iterator[None]:
        try:
            yield
        except self.ERRORS as exc:
            raise StorageError(f"{action} {self.location} failed: {exc}") from exc

    # -- writing ---------------------------------------------------------------------------

    def push(self, dataframes: Iterable[DataFrame], scope_id: str | None = None) -> None:
        """Store frames in one transaction.

        Raises:
            StorageError: a frame or point is invalid (nothing stored), or the database failed.
        """
        rows = to_rows(dataframes)
        with self._reporting("push to"), self._transaction():
            self._insert(rows)

    def push_once(
        self,
        key: str,
        dataframes: Iterable[DataFrame],
        tallies: Mapping[tuple[str, str], int] | None = None,
    ) -> bool:
        """Store frames, a ledger key and tallies in one transaction, unless the key is stored.

        Args:
            key: the ledger key.
            dataframes: what to store.
            tallies: amounts to add to `(unit, series)` running totals (counters of harvests).

        Returns:
            True if stored now, False if the key was already there (nothing stored).

        Raises:
            StorageError: a frame is invalid, or the database failed (nothing stored).
        """
        rows = to_rows(dataframes)
        now = to_utc_us(datetime.datetime.now(_UTC))
        mark = self.MARK
        with self._reporting("push to"), self._transaction():
            # The key goes in first: a concurrent pusher of the same key waits on it, then
            # finds it taken.
            claimed = self._execute(
                f"INSERT INTO ledger (key, stored_us, points) VALUES ({mark}, {mark}, {mark})"
                " ON CONFLICT (key) DO NOTHING RETURNING key",
                (key, now, len(rows)),
            ).fetchall()
            if not claimed:
                return False
            self._insert(rows)
            self._add_tallies(
                (unit, series, value) for (unit, series), value in (tallies or {}).items()
            )
        return True

    def _add_tallies(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """Add to running totals, inside the current transaction."""
        mark = self.MARK
        for row in rows:
            self._execute(
                f"INSERT INTO tallies (unit, series, value) VALUES ({mark}, {mark}, {mark})"
                " ON CONFLICT (unit, series) DO UPDATE SET value = tallies.value + excluded.value",
                row,
            )

    def tallies(self, unit: str) -> dict[str, int]:
        """Return the running totals of `unit` by series (one indexed read, never a scan).

        Raises:
            StorageError: the database failed.
        """
        with self._reporting("read tallies from"):
            rows = self._execute(
                f"SELECT series, value FROM tallies WHERE unit = {self.MARK}", (unit,)
            ).fetchall()
        return {series: int(value) for series, value in rows}

    def copy_once(
        self,
        key: str,
        points: Iterable[tuple],
        ledger: Iterable[tuple],
        tallies: Iterable[tuple[str, str, int]] = (),
    ) -> bool:
        """Store rows of `COLUMNS`, of the ledger and tallies from another store, once for `key`.

        Ledger keys already here are kept as they are.

        Returns:
            True if stored now, False if `key` was already there (nothing stored).

        Raises:
            StorageError: the database failed (nothing stored).
        """
        now = to_utc_us(datetime.datetime.now(_UTC))
        mark = self.MARK
        claim = (
            f"INSERT INTO ledger (key, stored_us, points) VALUES ({mark}, {mark}, {mark})"
            " ON CONFLICT (key) DO NOTHING RETURNING key"
        )
        with self._reporting("copy into"), self._transaction():
            if not self._execute(claim, (key, now, 0)).fetchall():
                return False
            self._insert(points)
            for row in ledger:
                self._execute(claim, row)
            self._add_tallies(tallies)
        return True

    def delete(
        self,
        begin: datetime.datetime | None = None,
        end: datetime.datetime | None = None,
        filters: dict | None = None,
    ) -> None:
        """Delete matching points; None bounds are open (no default month here)."""
        where, args = self._where(begin, end, filters, None, open_bounds=True)
        with self._reporting("delete in"), self._transaction():
            self._execute(f"DELETE FROM points AS p WHERE {where}", args)

    # -- reading ---------------------------------------------------------------------------

    def _where(
        self,
        begin: datetime.datetime | None,
        end: datetime.datetime | None,
        filters: dict | None,
        metric_types: str | list[str] | None,
        open_bounds: bool = False,
    ) -> tuple[str, list]:
        mark = self.MARK
        if not open_bounds:
            default_begin, default_end = month_window()
            begin, end = begin or default_begin, end or default_end
        clauses: list[str] = ["1 = 1"]
        args: list[Any] = []
        if begin is not None:
            clauses.append(f"p.begin_us >= {mark}")
            args.append(to_utc_us(begin))
        if end is not None:
            clauses.append(f"p.begin_us < {mark}")
            args.append(to_utc_us(end))
        types = [metric_types] if isinstance(metric_types, str) else list(metric_types or [])
        for key, value in (filters or {}).items():
            values = [
                str(v) for v in (value if isinstance(value, (list, tuple, set)) else [value])
            ]
            if key == "type":
                types = [t for t in types if t in values] if types else values
                if not types:
                    return "1 = 0", []
                continue
            value_of, key_args = self._filter_value(str(key))
            clauses.append(f"{value_of} IN ({', '.join([mark] * len(values))})")
            args += key_args + values
        if types:
            clauses.append(f"p.type IN ({', '.join([mark] * len(types))})")
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
        page = f" LIMIT {self.MARK} OFFSET {self.MARK}" if paginate else ""
        decode = self._decode
        with self._reporting("reading"):
            (total,) = self._execute(
                f"SELECT COUNT(*) FROM points AS p WHERE {where}", args
            ).fetchone()
            rows = self._execute(
                f"SELECT {COLUMNS} FROM points AS p WHERE {where}"
                f" ORDER BY p.begin_us, p.end_us, p.type, p.id{page}",
                [*args, limit, offset] if paginate else args,
            ).fetchall()
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
                          decode(groupby), decode(metadata), description),
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
        where, where_args = self._where(begin, end, filters, metric_types)
        names = [key for key in groupby if key != "time"]
        keys, args = [], []
        for key in names:
            expression, key_args = ("p.type", []) if key == "type" else self._group_value(key)
            keys.append(expression)
            args += key_args
        by_time = "time" in groupby
        if by_time:
            keys += ["p.begin_us", "p.end_us"]
        grouping = f" GROUP BY {', '.join(map(str, range(1, len(keys) + 1)))}" if keys else ""
        sql = (
            f"SELECT {', '.join(keys) or 'NULL'}, SUM(p.qty_micro), SUM(p.price_nano)"
            f" FROM points AS p WHERE {where}{grouping}"
        )
        with self._reporting("reading"):
            rows = self._execute(sql, args + where_args).fetchall()
        # Sorted here, not in SQL, so every dialect orders mixed value types alike.
        rows.sort(key=lambda row: [_sort_key(value) for value in row[: len(keys)]])
        results = []
        row_begin, row_end = _local(begin), _local(end)
        for row in rows:
            values, qty, price = row[: len(keys) or 1], row[-2] or 0, row[-1] or 0
            if by_time:
                row_begin, row_end = from_utc_us(values[-2]), from_utc_us(values[-1])
            result = {"begin": row_begin, "end": row_end,
                      "qty": int(qty) / QTY_SCALE, "rate": int(price) / PRICE_SCALE}  # fmt: skip
            result.update(zip(names, values[: len(names)], strict=True))
            results.append(result)
        page = results[offset : offset + limit] if paginate else results
        return {"total": len(results), "results": page}


def _sort_key(value: object) -> tuple:
    """Order missing values first, then numbers, then text."""
    if value is None:
        return (0,)
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))


def _local(moment: datetime.datetime) -> datetime.datetime:
    return from_utc_us(to_utc_us(moment))
