"""The embedded SQLite backend: the shared schema (`runner_fs.storage.sql`) in one file.

Groupby and metadata are JSON text. One flat table: runner groupbys (host, flavor, repository,
workflow, event, status) are nearly unique per point, so a separate table of distinct groupbys
only added a lookup per point.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from runner_fs.errors import StorageError
from runner_fs.storage.sql import (
    COLUMNS,
    GROUP_COLUMNS,
    ROLLUP_COLUMNS,
    ROLLUP_KEYS,
    SQLStorage,
    build_rollups,
)

SCHEMA_VERSION = 6  # 2: tallies, 3: daily rollups, 4: null attributes absent, 5: spans,
# 6: five minutes
BUSY_TIMEOUT = 30.0  # seconds to wait for another writer
_ROWS_PER_STATEMENT = 4096  # rollup rows per INSERT: 6 parameters each, under SQLite's 32766
_ROLLUPS = """
CREATE TABLE IF NOT EXISTS rollups (
    span_us INTEGER NOT NULL,
    start_us INTEGER NOT NULL,
    group_id INTEGER NOT NULL,
    qty_micro INTEGER NOT NULL,
    price_nano INTEGER NOT NULL,
    points INTEGER NOT NULL,
    PRIMARY KEY (span_us, start_us, group_id)
) WITHOUT ROWID;
"""
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
CREATE TABLE IF NOT EXISTS tallies (
    unit TEXT NOT NULL, series TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (unit, series)
);
CREATE TABLE IF NOT EXISTS rollup_groups (
    id INTEGER PRIMARY KEY, type TEXT NOT NULL, {codes}, UNIQUE ({group})
);
""".format(codes=", ".join(f"{key} TEXT NOT NULL" for key in ROLLUP_KEYS), group=GROUP_COLUMNS)
# Calendar attributes when a point does not carry them (the collector's formulas), as text.
_START = "p.begin_us / 1000000, 'unixepoch'"
_COMPUTED = {
    "day_of_the_year": f"CAST(CAST(strftime('%j', {_START}) AS INTEGER) AS TEXT)",
    "week_of_the_year": f"printf('%02d', (strftime('%j', {_START}) - 1 + 7"
    f" - strftime('%w', {_START})) / 7)",
    "month": f"CAST(CAST(strftime('%m', {_START}) AS INTEGER) AS TEXT)",
    "year": f"strftime('%Y', {_START})",
}


def _keep_private(path: Path) -> None:
    """Create the file 0600 (it names every tenant's repositories), or take others' access.

    SQLite gives its -wal and -shm files the database file's mode.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & 0o007:
            os.fchmod(fd, mode & 0o770)
    finally:
        os.close(fd)


def _json_path(key: str) -> str:
    """Return the SQLite JSON path of a top-level key, quoted so dots stay in the name."""
    return "$." + json.dumps(key)


class SQLiteStorage(SQLStorage):
    """Metrics in one SQLite file (WAL, synchronous=FULL)."""

    MARK = "?"
    ERRORS = (sqlite3.Error,)
    DATA_ERRORS = (sqlite3.DataError, OverflowError)

    def __init__(self, *, path: str | Path = "metrics.db", **options: Any) -> None:
        """Point at a database file; it is opened on first use (or `init()`).

        Args:
            path: the SQLite file; created with its directory's permissions.
            options: `retention_period` (hours); others are ignored.
        """
        super().__init__(**options)
        self.path = Path(path)

    @property
    def location(self) -> str:
        """Name the database file."""
        return str(self.path)

    def _connect(self) -> sqlite3.Connection:
        """Open the file (0600, WAL, synchronous=FULL) for this thread.

        Raises:
            StorageError: the file cannot be opened.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                _keep_private(self.path)
                db = sqlite3.connect(
                    self.path, isolation_level=None, timeout=BUSY_TIMEOUT,
                    check_same_thread=False,  # used by one thread; closed by any (close())
                )  # fmt: skip
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=FULL")
                except BaseException:
                    db.close()
                    raise
                return db
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL fails at once, without waiting, while another
                # process is creating it: retry until the timeout.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StorageError(f"cannot open metrics database {self.path}: {exc}") from exc
                time.sleep(0.02)
            except (OSError, sqlite3.Error) as exc:
                raise StorageError(f"cannot open metrics database {self.path}: {exc}") from exc

    def _prepare_schema(self) -> None:
        """Create or upgrade the schema.

        Raises:
            StorageError: the file cannot be read, or has a newer schema.
        """
        try:
            self._create_schema(self.db)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open metrics database {self.path}: {exc}") from exc

    def _create_schema(self, db: sqlite3.Connection) -> None:
        db.executescript(_SCHEMA + _ROLLUPS)
        db.execute("BEGIN IMMEDIATE")  # one process upgrades; the others wait, then see it done
        try:
            db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            db.execute("INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (uuid.uuid4().hex,))
            (version,) = db.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
            if int(version) > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path} has schema version {version}, newer than this runner-fs "
                    f"({SCHEMA_VERSION}); upgrade runner-fs"
                )
            if int(version) < 4:  # null attributes mean absent
                for key in ROLLUP_KEYS:
                    db.execute(
                        f"UPDATE points SET groupby = json_remove(groupby, '{_json_path(key)}')"
                        f" WHERE json_type(groupby, '{_json_path(key)}') = 'null'"
                    )
            if int(version) < 5:  # rollups of any span in one table
                db.execute("DROP TABLE rollups")
                db.execute(_ROLLUPS)
            if int(version) < 6:  # every span of `SPANS_US`, built again from points
                db.execute("DELETE FROM rollups")
                db.execute("DELETE FROM rollup_groups")
                for statement in build_rollups(self.rollup_code, self.regular):
                    db.execute(statement)
            db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        self.db.execute("BEGIN")  # deferred: a read transaction sees one state of the file
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    def _execute(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, tuple(args))

    def _insert_rollups(self, rows: list[tuple], on_conflict: str) -> None:
        for start in range(0, len(rows), _ROWS_PER_STATEMENT):  # one statement: 15% faster
            chunk = rows[start : start + _ROWS_PER_STATEMENT]
            self.db.execute(
                f"INSERT INTO rollups ({ROLLUP_COLUMNS})"
                f" VALUES {', '.join(['(?, ?, ?, ?, ?, ?)'] * len(chunk))} {on_conflict}",
                [value for row in chunk for value in row],
            )

    def _decode(self, stored: str) -> dict:
        decoded: dict = orjson.loads(stored)
        return decoded

    @property
    def store_id(self) -> str:
        """Return this file's random identity, kept for its lifetime."""
        (value,) = self.db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        return str(value)

    def move_into(self, target: SQLStorage) -> bool:
        """Copy every point, ledger key and tally into `target` once, then set this file aside.

        The copy is keyed by this file's identity in the target's ledger, so a crash after the
        copy and before the file is renamed `<name>.moved-<id>` never copies twice.

        Returns:
            True if copied now, False if `target` already had this file's data.

        Raises:
            StorageError: either database failed; this file is then kept where it was.
        """
        store_id = self.store_id
        points = self.db.execute(f"SELECT {COLUMNS} FROM points ORDER BY id")
        ledger = self.db.execute("SELECT key, stored_us, points FROM ledger").fetchall()
        tallies = self.db.execute("SELECT unit, series, value FROM tallies").fetchall()
        copied = target.copy_once(f"sqlite-store/{store_id}", points, ledger, tallies)
        self.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").rename(f"{self.path}.moved-{store_id}{suffix}")
        return copied

    def _insert(self, rows: Iterable[tuple]) -> None:
        self.db.executemany(
            f"INSERT INTO points ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
        )

    def _filter_value(self, key: str) -> tuple[str, list]:
        path = _json_path(key)
        return (
            "CAST(CASE WHEN json_type(p.groupby, ?) IS NULL THEN json_extract(p.metadata, ?)"
            " ELSE json_extract(p.groupby, ?) END AS TEXT)",
            [path, path, path],
        )

    @staticmethod
    def rollup_code(key: str) -> str:
        """Return the SQL of a regular point's rollup code for `key`."""
        return f"COALESCE('=' || json_extract(p.groupby, '{_json_path(key)}'), '')"

    @staticmethod
    def regular(key: str) -> str:
        """Return the SQL that a point can be rolled up exactly for `key`."""
        path = _json_path(key)
        return (
            f"(json_type(p.groupby, '{path}') IS 'text' OR (json_type(p.groupby, '{path}') IS NULL"
            f" AND json_type(p.metadata, '{path}') IS NULL))"
        )

    def _group_value(self, key: str) -> tuple[str, list]:
        if key in _COMPUTED:
            return f"COALESCE(json_extract(p.groupby, ?), {_COMPUTED[key]})", [_json_path(key)]
        return "json_extract(p.groupby, ?)", [_json_path(key)]
