"""What the SQL backends share: the row format, and every rule of push, retrieve and total.

Both backends store the same columns, instants in UTC microseconds and quantities as
fixed-point integers so sums are exact and reproducible (`qty` in millionths, `price` in
billionths)::

    points(id, begin_us, end_us, type, unit, qty_micro, price_nano, groupby, metadata,
           description)
    ledger(key PRIMARY KEY, stored_us, points)      exactly-once harvest keys
    tallies(unit, series, value)                    running totals of harvests
    rollup_groups(id, type, flavor, repository)     each combination rolled up
    rollups(span_us, start_us, group_id, qty_micro, price_nano, points)
    meta(key PRIMARY KEY, value)                    schema_version, store_id, rollups

Rollups are exact sums of points by bucket and group: a UTC day, an hour or five minutes
(`SPANS_US`) from a point's start, and the point's type and its `ROLLUP_KEYS` attributes,
each coded `=value` for a text value and `` where neither groupby nor metadata has it. A
window is read as whole buckets added or taken away (`cover`) plus at most two and a half
minutes of points at each end (or all of a window under ten minutes). They are kept in the
transaction that pushes or deletes the points (`Rollup`). A point with any other value (a
number, null, an object, or the key only in metadata, where filters would find it) cannot be
rolled up exactly: the store is then marked (`meta.rollups = points`) and answers every total
from points from then on.

A backend supplies its connection, transactions, bulk insert and the few expressions where
the SQL dialects differ (JSON access, calendar fields, the parameter mark).
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import decimal
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import orjson

from runner_fs.dataframe import DataFrame, DataPoint
from runner_fs.errors import StorageDataError, StorageError
from runner_fs.storage import BaseStorage, Harvest

QTY_DIGITS, PRICE_DIGITS = 6, 9
QTY_SCALE, PRICE_SCALE = 10**QTY_DIGITS, 10**PRICE_DIGITS
COLUMNS = "begin_us, end_us, type, unit, qty_micro, price_nano, groupby, metadata, description"
ROLLUP_KEYS = ("flavor", "repository")
GROUP_COLUMNS = f"type, {', '.join(ROLLUP_KEYS)}"
ROLLUP_COLUMNS = "span_us, start_us, group_id, qty_micro, price_nano, points"
FIVE_MINUTES_US, HOUR_US, DAY_US = 300_000_000, 3_600_000_000, 86_400_000_000
SPANS_US = (DAY_US, HOUR_US, FIVE_MINUTES_US)
"""The rollups' buckets, longest first; each holds a whole number of the next."""


def bucket_start(column: str, span: int) -> str:
    """Return the SQL of the start of the bucket of `span` holding `column` (before 1970 too)."""
    whole = f"{column} / {span}"
    return f"(CASE WHEN {column} >= 0 THEN {whole} ELSE ({column} + 1) / {span} - 1 END) * {span}"


_MAX_FIXED = 2**62
_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)
_ABSENT = object()


def _to_json(value: object, type_: str, field: str) -> str:
    """Return compact JSON; numbers outside JSON's range become strings via `str`."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError as exc:
        raise StorageDataError(f"{type_} {field} cannot be stored as JSON: {exc}") from None


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


def _fixed(value: object, digits: int, type_: str, field: str) -> int:
    """Return `value` * 10**digits rounded half-even: an exact integer for SQL sums."""
    try:
        number = value if type(value) is decimal.Decimal else decimal.Decimal(value)  # type: ignore[arg-type]
        scaled = round(number.scaleb(digits))  # a Decimal rounds half-even to an int
    except (decimal.InvalidOperation, TypeError, ValueError, OverflowError):
        raise StorageDataError(
            f"{type_} {field} must be a finite number, not {value!r:.40}"
        ) from None
    if not -_MAX_FIXED < scaled < _MAX_FIXED:
        raise StorageDataError(f"{type_} {field} {value} is too large to store")
    return scaled


def cover(
    low: int, high: int, spans: Sequence[int] = SPANS_US, sign: int = 1
) -> tuple[list, list]:
    """Split [low, high) into whole buckets and point ranges, each added or taken away.

    Each end moves to the nearest boundary of the longest span that leaves a whole bucket
    between them; what lies between an end and its boundary is added (inside the window) or
    taken away (outside it) by the same rule with the shorter spans, and as points below the
    shortest. So each end reads at most half of each shorter span's buckets and, unless the
    window is shorter than two of the shortest buckets, scans at most half of one of points.

    Returns:
        Bucket ranges `(sign, span_us, first_start_us, end_start_us)` and point ranges
        `(sign, low, high)`: added with their signs, exactly [low, high).
    """
    if low >= high:
        return [], []
    if not spans:
        return [], [(sign, low, high)]
    span, shorter = spans[0], spans[1:]
    first, last = (low + span // 2) // span * span, (high + span // 2) // span * span
    if first >= last:
        return cover(low, high, shorter, sign)
    buckets, edges = [(sign, span, first, last)], []
    for inside, outside in (((low, first), (first, low)), ((last, high), (high, last))):
        part_buckets, part_edges = cover(*inside, shorter, sign)
        taken_buckets, taken_edges = cover(*outside, shorter, -sign)
        buckets += part_buckets + taken_buckets
        edges += part_edges + taken_edges
    return buckets, edges


def same_group(code: Callable[[str], str]) -> str:
    """Return the SQL joining a point `p` to its rollup group `g`, given the dialect's code."""
    return " AND ".join(["g.type = p.type", *(f"g.{key} = {code(key)}" for key in ROLLUP_KEYS)])


def build_rollups(code: Callable[[str], str], regular: Callable[[str], str]) -> list[str]:
    """Return the SQL that builds the rollups of the points stored, into empty tables.

    Points are read once, into the shortest span; each longer span is summed from the one
    below it.

    Args:
        code: the dialect's `rollup_code`.
        regular: the dialect's SQL that a point can be rolled up exactly for a key.
    """
    codes = [code(key) for key in ROLLUP_KEYS]
    shortest = SPANS_US[-1]
    statements = [
        "DELETE FROM meta WHERE key = 'rollups'",
        f"INSERT INTO rollup_groups ({GROUP_COLUMNS}) SELECT DISTINCT p.type, {', '.join(codes)}"
        " FROM points AS p",
        f"INSERT INTO rollups ({ROLLUP_COLUMNS})"
        f" SELECT {shortest}, {bucket_start('p.begin_us', shortest)}, g.id, SUM(p.qty_micro),"
        f" SUM(p.price_nano), COUNT(*) FROM points AS p"
        f" JOIN rollup_groups AS g ON {same_group(code)} GROUP BY 2, 3",
    ]
    for span, shorter in zip(SPANS_US[-2::-1], SPANS_US[:0:-1], strict=True):
        statements.append(
            f"INSERT INTO rollups ({ROLLUP_COLUMNS}) SELECT {span},"
            f" {bucket_start('r.start_us', span)}, r.group_id,"
            " SUM(r.qty_micro), SUM(r.price_nano), SUM(r.points) FROM rollups AS r"
            f" WHERE r.span_us = {shorter} GROUP BY 2, 3"
        )
    statements.append(
        "INSERT INTO meta (key, value) SELECT 'rollups', 'points' WHERE EXISTS (SELECT 1"
        f" FROM points AS p WHERE NOT ({' AND '.join(map(regular, ROLLUP_KEYS))}))"
    )
    return statements


def _decoded(code: str) -> str | None:
    """Return the attribute value a rollup code stands for (None: absent)."""
    return code[1:] if code else None


class Rollup:
    """Exact sums of points by (shortest bucket's start, type, codes), for rollups."""

    def __init__(self) -> None:
        """Start empty."""
        self.span = SPANS_US[-1]
        self.sums: dict[tuple, list[int]] = {}
        self.irregular = False
        """A point could not be rolled up: the store must answer totals from points."""

    def add(
        self, begin_us: int, type_: str, qty: int, price: int, groupby: Mapping, metadata: Mapping
    ) -> None:
        """Count one point (in the hot path of every push: kept lean)."""
        key = [begin_us - begin_us % self.span, type_]
        for name in ROLLUP_KEYS:
            value = groupby.get(name, _ABSENT)
            if type(value) is str:
                key.append("=" + value)
            elif value is _ABSENT and name not in metadata:
                key.append("")
            else:
                self.irregular = True
                return
        group = tuple(key)
        sums = self.sums.get(group)
        if sums is None:
            self.sums[group] = [qty, price, 1]
        else:
            sums[0] += qty
            sums[1] += price
            sums[2] += 1

    def merge(self, other: Rollup) -> None:
        """Add another rollup's sums."""
        self.irregular |= other.irregular
        for group, (qty, price, points) in other.sums.items():
            sums = self.sums.setdefault(group, [0, 0, 0])
            sums[0] += qty
            sums[1] += price
            sums[2] += points


def to_rows(dataframes: Iterable[DataFrame]) -> tuple[list[tuple], Rollup]:
    """Return the rows of `COLUMNS` of every point and their rollup; all validated first.

    Raises:
        StorageError: a frame or point is invalid.
    """
    rows = []
    rollup = Rollup()
    for frame in dataframes:
        if not isinstance(frame, DataFrame) and not hasattr(frame, "iterpoints"):
            raise StorageError(f"push takes DataFrames, not {type(frame).__name__}")
        begin, end = to_utc_us(frame.start), to_utc_us(frame.end)
        if end < begin:
            raise StorageError(f"a frame ends ({frame.end}) before it starts ({frame.start})")
        for metric_type, point in frame.iterpoints():
            type_ = str(metric_type)
            qty = _fixed(point.qty, QTY_DIGITS, type_, "qty")
            price = _fixed(point.price, PRICE_DIGITS, type_, "price")
            rows.append((begin, end, type_, str(point.unit), qty, price,
                         _to_json(point.groupby, type_, "groupby"),
                         _to_json(point.metadata, type_, "metadata"),
                         point.description))  # fmt: skip
            rollup.add(begin, type_, qty, price, point.groupby, point.metadata)
    return rows, rollup


class SQLStorage(BaseStorage):
    """The semantics of CloudKitty's v2 storage over the shared schema, dialect left open."""

    MARK: ClassVar[str]
    """The driver's parameter mark."""
    BEFORE_ROLLUP_READ: ClassVar[str | None] = None
    """A statement run in the read transaction before rollups are summed."""
    ERRORS: ClassVar[tuple[type[Exception], ...]]
    DATA_ERRORS: ClassVar[tuple[type[Exception], ...]]  # a value the database refuses
    """The driver's exceptions, reported as StorageError."""

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Name the database for messages; never includes a secret."""

    @abc.abstractmethod
    def _execute(self, sql: str, args: Iterable[Any] = ()) -> Any:
        """Run one statement and return its cursor."""

    @abc.abstractmethod
    def _insert_rollups(self, rows: list[tuple], on_conflict: str) -> None:
        """Insert rows (day, group_id, qty_micro, price_nano, points) with `on_conflict`."""

    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        """Commit what runs inside, or roll all of it back."""

    @abc.abstractmethod
    def _snapshot(self) -> contextlib.AbstractContextManager[None]:
        """Read what runs inside from one snapshot of the database."""

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

    @staticmethod
    @abc.abstractmethod
    def rollup_code(key: str) -> str:
        """Return the SQL of a regular point's rollup code for `key` (see `Rollup.add`)."""

    @staticmethod
    @abc.abstractmethod
    def regular(key: str) -> str:
        """Return the SQL that a point can be rolled up exactly for `key` (see `Rollup.add`)."""

    def __init__(self, **options: Any) -> None:
        """Keep the options; nothing is opened until first use, or `init()`.

        One instance may serve many threads (CloudKitty's API does): each thread gets a
        connection of its own on first use, and the schema is created or upgraded once, by
        the first. Rollup group ids are cached, shared, once committed.
        """
        super().__init__(**options)
        self._group_ids: dict[tuple, int] = {}
        self._groups: dict[int, tuple] = {}
        self._local = threading.local()  # this thread's connection and new group ids
        self._opened: list[Any] = []  # every thread's connection, for close()
        self._opened_lock = threading.Lock()
        self._schema_lock = threading.RLock()  # one thread prepares it; the others wait
        self._ready = False  # the schema was checked by this instance

    @abc.abstractmethod
    def _connect(self) -> Any:
        """Open a new connection for the calling thread.

        Raises:
            StorageError: the store cannot be opened.
        """

    @property
    def db(self) -> Any:
        """Return this thread's connection, opened (and the schema made ready) on first use.

        Raises:
            StorageError: the store cannot be opened or its schema is newer than ours.
        """
        connection = getattr(self._local, "connection", None)
        if connection is None or self._lost(connection):
            connection = self._connect()
            with self._opened_lock:
                self._opened.append(connection)
            self._local.connection = connection
        if not (self._ready or getattr(self._local, "preparing", False)):
            with self._schema_lock:
                if not self._ready:
                    self.init()
        return connection

    @staticmethod
    def _lost(connection: Any) -> bool:
        """Return whether a connection can no longer be used (a backend may say so)."""
        return False

    def init(self) -> None:
        """Create or upgrade the schema (idempotent); a store is also made ready on first use.

        Raises:
            StorageError: the store cannot be opened or its schema is newer than ours.
        """
        with self._schema_lock:
            self._local.preparing = True  # its own queries go straight to `db`
            try:
                self._prepare_schema()
            finally:
                self._local.preparing = False
            self._ready = True

    @abc.abstractmethod
    def _prepare_schema(self) -> None:
        """Create or upgrade the schema through `db`."""

    def close(self) -> None:
        """Close every thread's connection; the next use opens again."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
            self._local = threading.local()
        for connection in opened:
            connection.close()

    @contextlib.contextmanager
    def _reporting(self, action: str) -> Iterator[None]:
        try:
            yield
        except self.DATA_ERRORS as exc:
            raise StorageDataError(f"{action} {self.location} refused a value: {exc}") from exc
        except self.ERRORS as exc:
            raise StorageError(f"{action} {self.location} failed: {exc}") from exc

    @contextlib.contextmanager
    def _writing(self, action: str) -> Iterator[None]:
        """Run one write transaction; group ids it made are cached only once it commits."""
        self._local.new_group_ids = {}
        with self._reporting(action), self._transaction():
            yield
        self._remember(self._local.new_group_ids)

    def _remember(self, group_ids: Mapping[tuple, int]) -> None:
        self._group_ids.update(group_ids)
        self._groups.update((number, group) for group, number in group_ids.items())

    # -- writing ---------------------------------------------------------------------------

    def push(self, dataframes: Iterable[DataFrame], scope_id: str | None = None) -> None:
        """Store frames in one transaction.

        Raises:
            StorageError: a frame or point is invalid (nothing stored), or the database failed.
        """
        rows, rollup = to_rows(dataframes)
        with self._writing("push to"):
            self._insert(rows)
            self._add_rollup(rollup)

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
        return self.push_many([(key, dataframes, tallies or {})])[0]

    def push_many(self, harvests: Sequence[Harvest]) -> list[bool]:
        """Store several harvests in one transaction, each only if its key is not stored yet.

        Returns:
            For each harvest, True if stored now, False if its key was already there.

        Raises:
            StorageError: a frame is invalid, or the database failed (nothing stored).
        """
        prepared = [(key, *to_rows(frames), tallies) for key, frames, tallies in harvests]
        now = to_utc_us(datetime.datetime.now(_UTC))
        mark = self.MARK
        stored, rows, rollup, sums = [], [], Rollup(), Counter[tuple[str, str]]()
        with self._writing("push to"):
            for key, key_rows, key_rollup, key_tallies in prepared:
                # The key goes in first: a concurrent pusher of the same key waits on it, then
                # finds it taken.
                claimed = self._execute(
                    f"INSERT INTO ledger (key, stored_us, points) VALUES ({mark}, {mark}, {mark})"
                    " ON CONFLICT (key) DO NOTHING RETURNING key",
                    (key, now, len(key_rows)),
                ).fetchall()
                stored.append(bool(claimed))
                if claimed:
                    rows += key_rows
                    rollup.merge(key_rollup)
                    sums.update(key_tallies)
            self._insert(rows)
            self._add_rollup(rollup)
            self._add_tallies(
                (unit, series, value) for (unit, series), value in sorted(sums.items())
            )
        return stored

    def _add_rollup(self, rollup: Rollup, sign: int = 1) -> None:
        """Add (or with sign -1, take) sums to the rollups, inside the current transaction."""
        if rollup.irregular:
            self._execute(
                "INSERT INTO meta (key, value) VALUES ('rollups', 'points')"
                " ON CONFLICT (key) DO NOTHING"
            )
        if not rollup.sums:
            return
        ids = self._ids_of({key[1:] for key in rollup.sums})
        buckets: dict[tuple[int, int, int], list[int]] = {}
        for key, (qty, price, points) in rollup.sums.items():  # in the hot path: kept lean
            start, number = key[0], ids[key[1:]]
            for span in SPANS_US:
                bucket = (span, start - start % span, number)
                sums = buckets.get(bucket)
                if sums is None:
                    buckets[bucket] = [sign * qty, sign * price, sign * points]
                else:
                    sums[0] += sign * qty
                    sums[1] += sign * price
                    sums[2] += sign * points
        rows = sorted(  # so concurrent writers lock rows in one order
            [(*bucket, *sums) for bucket, sums in buckets.items()]
        )
        add = ", ".join(f"{name} = rollups.{name} + excluded.{name}"
                        for name in ("qty_micro", "price_nano", "points"))  # fmt: skip
        self._insert_rollups(
            rows, f"ON CONFLICT (span_us, start_us, group_id) DO UPDATE SET {add}"
        )
        if sign < 0:
            starts = [row[1] for row in rows]
            where, args = self._rollups_where(None, min(starts), max(starts) + 1, [], {})
            self._execute(f"DELETE FROM rollups AS r WHERE {where} AND r.points = 0", args)

    def _ids_of(self, groups: set[tuple]) -> dict[tuple, int]:
        """Return the ids of rollup groups, adding the new ones (inside a write transaction)."""
        ids = {group: self._group_ids[group] for group in groups if group in self._group_ids}
        missing = sorted(
            groups - ids.keys()
        )  # added in one order: concurrent units never deadlock
        for start in range(0, len(missing), 1000):
            chunk = missing[start : start + 1000]
            rows = ", ".join([f"({', '.join([self.MARK] * len(chunk[0]))})"] * len(chunk))
            values = [value for group in chunk for value in group]
            self._execute(
                f"INSERT INTO rollup_groups ({GROUP_COLUMNS}) VALUES {rows}"
                f" ON CONFLICT ({GROUP_COLUMNS}) DO NOTHING",
                values,
            )
            found = self._execute(
                f"SELECT id, {GROUP_COLUMNS} FROM rollup_groups"
                f" WHERE ({GROUP_COLUMNS}) IN (VALUES {rows})",
                values,
            ).fetchall()
            for number, *group in found:
                ids[tuple(group)] = self._local.new_group_ids[tuple(group)] = number
        return ids

    def _groups_of(self, ids: Iterable[int]) -> dict[int, tuple]:
        """Return committed rollup groups by id, reading the table again for unknown ones."""
        if not set(ids) <= self._groups.keys():
            rows = self._execute(f"SELECT id, {GROUP_COLUMNS} FROM rollup_groups").fetchall()
            self._remember({tuple(row[1:]): row[0] for row in rows})
        return self._groups

    def rolled_up(self) -> bool:
        """Return whether totals may be answered from rollups (no irregular point was stored)."""
        return self._execute("SELECT value FROM meta WHERE key = 'rollups'").fetchone() is None

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
        rollup = Rollup()

        def counted(rows: Iterable[tuple]) -> Iterator[tuple]:  # streamed, never all in memory
            for row in rows:
                begin_us, _, type_, _, qty, price, groupby, metadata, _ = row
                rollup.add(
                    begin_us, type_, qty, price, self._decode(groupby), self._decode(metadata)
                )
                yield row

        with self._writing("copy into"):
            if not self._execute(claim, (key, now, 0)).fetchall():
                return False
            self._insert(counted(points))
            self._add_rollup(rollup)
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
        """Delete matching points and take them from the rollups; None bounds are open."""
        begin_us = None if begin is None else to_utc_us(begin)
        end_us = None if end is None else to_utc_us(end)
        types, attributes = _selection(filters, None)
        where, args = self._where_us(begin_us, end_us, types, attributes)
        with self._writing("delete in"):
            if self.rolled_up():
                self._take_from_rollups(begin_us, end_us, types, attributes)
            self._execute(f"DELETE FROM points AS p WHERE {where}", args)

    def _take_from_rollups(
        self,
        begin_us: int | None,
        end_us: int | None,
        types: list[str] | None,
        attributes: dict[str, list[str]],
    ) -> None:
        """Drop the rollups of whole days in the window; subtract the points of the rest."""
        edges: list[tuple[int | None, int | None]] = [(begin_us, end_us)]
        first = None if begin_us is None else -(-begin_us // DAY_US) * DAY_US
        last = None if end_us is None else end_us // DAY_US * DAY_US
        if set(attributes) <= set(ROLLUP_KEYS) and (first is None or last is None or first < last):
            where, args = self._rollups_where(None, first, last, types, attributes)
            self._execute(f"DELETE FROM rollups AS r WHERE {where}", args)
            edges = [(begin_us, first)] if first is not None and begin_us is not None else []
            if last is not None and end_us is not None:
                edges.append((last, end_us))
        codes = ", ".join(self.rollup_code(key) for key in ROLLUP_KEYS)
        rollup = Rollup()
        bucket = bucket_start("p.begin_us", rollup.span)
        for low, high in edges:
            if low is not None and high is not None and low >= high:
                continue
            where, args = self._where_us(low, high, types, attributes)
            for row in self._execute(
                f"SELECT {bucket}, p.type, {codes}, SUM(p.qty_micro), SUM(p.price_nano),"
                f" COUNT(*) FROM points AS p WHERE {where}"
                f" GROUP BY {', '.join(map(str, range(1, 3 + len(ROLLUP_KEYS))))}",
                args,
            ):
                rollup.sums[tuple(row[:-3])] = [int(sum_) for sum_ in row[-3:]]
        self._add_rollup(rollup, sign=-1)

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
            begin, end = _window(begin, end)
        return self._where_us(
            None if begin is None else to_utc_us(begin),
            None if end is None else to_utc_us(end),
            *_selection(filters, metric_types),
        )

    def _range(self, column: str, low: int | None, high: int | None) -> tuple[list[str], list]:
        """Return the clauses and arguments of `low <= column < high` (None: unbounded)."""
        clauses, args = ["1 = 1"], []
        if low is not None:
            clauses.append(f"{column} >= {self.MARK}")
            args.append(low)
        if high is not None:
            clauses.append(f"{column} < {self.MARK}")
            args.append(high)
        return clauses, args

    def _where_us(
        self,
        begin_us: int | None,
        end_us: int | None,
        types: list[str] | None,
        attributes: dict[str, list[str]],
    ) -> tuple[str, list]:
        """Return the condition on points for a half-open window and a `_selection`."""
        if types is None:
            return "1 = 0", []
        mark = self.MARK
        clauses, args = self._range("p.begin_us", begin_us, end_us)
        for key, values in attributes.items():
            value_of, key_args = self._filter_value(key)
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
        begin, end = _window(begin, end)
        begin_us, end_us = to_utc_us(begin), to_utc_us(end)
        types, attributes = _selection(filters, metric_types)
        names = [key for key in groupby if key != "time"]
        by_time = "time" in groupby
        buckets, edges = cover(begin_us, end_us)
        with self._reporting("reading"), self._snapshot():  # rollups and edges agree
            if (
                not by_time
                and buckets
                and {*names, *attributes} <= {"type", *ROLLUP_KEYS}
                and self.rolled_up()
            ):
                rows = self._sum_rollups(names, buckets, edges, types, attributes)
                rows = _merged(rows) or ([] if names else [(0, 0)])  # as SUM over no rows
            else:
                rows = self._sum_points(names, by_time, begin_us, end_us, types, attributes)
        # Sorted here, not in SQL, so every dialect orders mixed value types alike.
        width = len(names) + 2 * by_time
        rows.sort(key=lambda row: [_sort_key(value) for value in row[:width]])
        results = []
        row_begin, row_end = _local(begin), _local(end)
        for row in rows:
            if by_time:
                row_begin, row_end = from_utc_us(row[-4]), from_utc_us(row[-3])
            qty, price = int(row[-2]), int(row[-1])
            result = {"begin": row_begin, "end": row_end,
                      "qty": qty / QTY_SCALE, "rate": price / PRICE_SCALE}  # fmt: skip
            result.update(zip(names, row[: len(names)], strict=True))
            results.append(result)
        page = results[offset : offset + limit] if paginate else results
        return {"total": len(results), "results": page}

    def _sum_points(
        self,
        names: list[str],
        by_time: bool,
        begin_us: int,
        end_us: int,
        types: list[str] | None,
        attributes: dict[str, list[str]],
    ) -> list[tuple]:
        """Return rows (values of `names`, [begin_us, end_us,] qty sum, price sum) from points."""
        where, where_args = self._where_us(begin_us, end_us, types, attributes)
        keys, args = [], []
        for key in names:
            expression, key_args = ("p.type", []) if key == "type" else self._group_value(key)
            keys.append(expression)
            args += key_args
        if by_time:
            keys += ["p.begin_us", "p.end_us"]
        grouping = f" GROUP BY {', '.join(map(str, range(1, len(keys) + 1)))}" if keys else ""
        rows = self._execute(
            f"SELECT {''.join(f'{key}, ' for key in keys)}SUM(p.qty_micro), SUM(p.price_nano)"
            f" FROM points AS p WHERE {where}{grouping}",
            args + where_args,
        ).fetchall()
        return [(*row[:-2], row[-2] or 0, row[-1] or 0) for row in rows]

    def _sum_rollups(
        self,
        names: list[str],
        buckets: list[tuple[int, int, int, int]],
        edges: list[tuple[int, int, int]],
        types: list[str] | None,
        attributes: dict[str, list[str]],
    ) -> list[tuple]:
        """Return rows (values of `names`, points, qty sum, price sum) of `cover`'s ranges."""
        # One statement; one indexed range scan per range, added up once: an OR of the ranges
        # costs SQLite a de-duplication of every row read (1.8x at 1M points). Points join
        # their rollup group, which every point of a store rolled up has.
        ranges, args = [], []
        for sign, span, low, high in buckets:
            where, range_args = self._rollups_where(span, low, high, types, attributes)
            minus = "-" if sign < 0 else ""
            ranges.append(
                f"SELECT r.group_id, {minus}r.points AS points, {minus}r.qty_micro AS qty_micro,"
                f" {minus}r.price_nano AS price_nano FROM rollups AS r WHERE {where}"
            )
            args += range_args
        for sign, low, high in edges:
            where, range_args = self._where_us(low, high, types, attributes)
            minus = "-" if sign < 0 else ""
            ranges.append(
                f"SELECT g.id, {minus}1, {minus}p.qty_micro, {minus}p.price_nano FROM points AS p"
                f" JOIN rollup_groups AS g ON {same_group(self.rollup_code)} WHERE {where}"
            )
            args += range_args
        if self.BEFORE_ROLLUP_READ:
            self._execute(self.BEFORE_ROLLUP_READ)
        rows = self._execute(
            "SELECT b.group_id, SUM(b.points), SUM(b.qty_micro), SUM(b.price_nano)"
            f" FROM ({' UNION ALL '.join(ranges)}) AS b GROUP BY b.group_id",
            args,
        ).fetchall()
        groups = self._groups_of(row[0] for row in rows)
        results = []
        for number, *sums in rows:
            type_, *codes = groups[number]
            values = dict(zip(ROLLUP_KEYS, map(_decoded, codes), strict=True), type=type_)
            results.append((*(values[name] for name in names), *sums))
        return results

    def _rollups_where(
        self,
        span: int | None,
        low: int | None,
        high: int | None,
        types: list[str] | None,
        attributes: dict[str, list[str]],
    ) -> tuple[str, list]:
        """Return the condition on rollups `r` of `span` starting in [low, high), selected.

        A None span is every span; a None bound is unbounded. `types` and `attributes` are as
        `_selection` returns them.
        """
        if types is None:
            return "1 = 0", []
        mark = self.MARK
        spans = SPANS_US if span is None else (span,)
        clauses, args = self._range("r.start_us", low, high)
        clauses.append(f"r.span_us IN ({', '.join([mark] * len(spans))})")
        args = [*args, *spans]
        kinds = [("type", types)] if types else []
        kinds += [(key, ["=" + value for value in values]) for key, values in attributes.items()]
        if kinds:
            wanted_groups = " AND ".join(
                f"g.{name} IN ({', '.join([mark] * len(wanted))})" for name, wanted in kinds
            )
            clauses.append(
                f"r.group_id IN (SELECT g.id FROM rollup_groups AS g WHERE {wanted_groups})"
            )
            args += [value for _, wanted in kinds for value in wanted]
        return " AND ".join(clauses), args


def _window(
    begin: datetime.datetime | None, end: datetime.datetime | None
) -> tuple[datetime.datetime, datetime.datetime]:
    """Fill missing bounds with this month's."""
    if begin and end:
        return begin, end
    default_begin, default_end = month_window()
    return begin or default_begin, end or default_end


def _selection(
    filters: dict | None, metric_types: str | list[str] | None
) -> tuple[list[str] | None, dict[str, list[str]]]:
    """Return the types to keep ([] for all, None for none) and other filters as text values."""
    types = [metric_types] if isinstance(metric_types, str) else list(metric_types or [])
    attributes = {}
    for key, value in (filters or {}).items():
        values = [str(v) for v in (value if isinstance(value, (list, tuple, set)) else [value])]
        if key == "type":
            types = [t for t in types if t in values] if types else values
            if not types:
                return None, {}
        else:
            attributes[str(key)] = values
    return types, attributes


def _merged(rows: list[tuple]) -> list[tuple]:
    """Add up rows (values, points, qty, price) whose values are equal into (values, qty, price).

    Values left with no points are dropped: what was added for them was all taken away.
    """
    sums: dict[tuple, list[int]] = {}
    for row in rows:
        total = sums.setdefault(row[:-3], [0, 0, 0])
        for index, value in enumerate(row[-3:]):
            total[index] += int(value)
    return [(*values, qty, price) for values, (points, qty, price) in sums.items() if points]


def _sort_key(value: object) -> tuple:
    """Order missing values first, then numbers, then text."""
    if value is None:
        return (0,)
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))


def _local(moment: datetime.datetime) -> datetime.datetime:
    return from_utc_us(to_utc_us(moment))
