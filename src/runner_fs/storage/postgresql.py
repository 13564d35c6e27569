"""The PostgreSQL backend: the shared schema (`runner_fs.storage.sql`) for a whole fleet.

Groupby and metadata are `jsonb`; every unit pushes into the same tables, and its points carry
groupby `unit`, so totals group and filter by it. Points arrive by COPY. The schema is
versioned in `meta`: `init()` applies the missing steps under an advisory lock, so units
starting together never race. The view `points_readable` shows instants as `timestamptz` and
quantities as `numeric` for people querying by hand.

A lost connection is reported as StorageError; the next call connects again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import psycopg
from psycopg import conninfo
from psycopg.types.json import set_json_loads

from runner_fs.errors import StorageError
from runner_fs.storage.sql import (
    COLUMNS,
    GROUP_COLUMNS,
    ROLLUP_COLUMNS,
    ROLLUP_KEYS,
    SQLStorage,
    build_rollups,
)

CONNECT_TIMEOUT = 10  # seconds


def _rollup_code(key: str) -> str:
    return f"COALESCE('=' || (p.groupby ->> '{key}'), '')"


def _regular(key: str) -> str:
    return (
        f"(jsonb_typeof(p.groupby -> '{key}') IS NOT DISTINCT FROM 'string'"
        f" OR NOT (p.groupby ? '{key}' OR p.metadata ? '{key}'))"
    )


_LOCK_ID = 0x72756E6E  # the advisory lock that serialises schema changes across units
_MIGRATIONS = (
    # version 1
    """
    CREATE TABLE points (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        begin_us bigint NOT NULL,
        end_us bigint NOT NULL,
        type text NOT NULL,
        unit text NOT NULL,
        qty_micro bigint NOT NULL,
        price_nano bigint NOT NULL,
        groupby jsonb NOT NULL,
        metadata jsonb NOT NULL,
        description text
    );
    CREATE INDEX points_begin ON points (begin_us);
    CREATE TABLE ledger (key text PRIMARY KEY, stored_us bigint NOT NULL, points integer NOT NULL);
    CREATE VIEW points_readable AS SELECT
        id, to_timestamp(begin_us / 1e6) AS begin, to_timestamp(end_us / 1e6) AS "end", type,
        groupby ->> 'unit' AS juju_unit, unit, qty_micro / 1e6 AS qty, price_nano / 1e9 AS price,
        groupby, metadata, description
        FROM points;
    """,
    # version 2: running totals of harvests (Prometheus counters and histograms)
    """
    CREATE TABLE tallies (
        unit text NOT NULL, series text NOT NULL, value bigint NOT NULL,
        PRIMARY KEY (unit, series)
    );
    """,
    # version 3: exact daily sums by type and ROLLUP_KEYS (built since by version 5)
    f"""
    CREATE TABLE rollup_groups (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        type text COLLATE "C" NOT NULL,
        {", ".join(f'{key} text COLLATE "C" NOT NULL' for key in ROLLUP_KEYS)},
        UNIQUE ({GROUP_COLUMNS})
    );
    CREATE TABLE rollups (
        day bigint NOT NULL,
        group_id bigint NOT NULL,
        qty_micro bigint NOT NULL,
        price_nano bigint NOT NULL,
        points bigint NOT NULL,
        PRIMARY KEY (day, group_id)
    ) WITH (fillfactor = 80);
    """,
    # version 4: null attributes stored absent (what they mean)
    ";".join(
        f"UPDATE points SET groupby = groupby - '{key}' WHERE groupby -> '{key}' = 'null'::jsonb"
        for key in ROLLUP_KEYS
    ),
    # version 5: rollups of any span in one table (built by version 6)
    """
    DROP TABLE rollups;
    CREATE TABLE rollups (
        span_us bigint NOT NULL,
        start_us bigint NOT NULL,
        group_id bigint NOT NULL,
        qty_micro bigint NOT NULL,
        price_nano bigint NOT NULL,
        points bigint NOT NULL,
        PRIMARY KEY (span_us, start_us, group_id)
    ) WITH (fillfactor = 80);
    """,
    # version 6: sums by every span of SPANS_US, built again from the points stored
    f"""
    DELETE FROM rollups;
    DELETE FROM rollup_groups;
    {";".join(build_rollups(_rollup_code, _regular))};
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)
# Calendar attributes when a point does not carry them (the collector's formulas), as text.
_START = "(to_timestamp(p.begin_us / 1000000) AT TIME ZONE 'UTC')"
_DAY = f"extract(doy FROM {_START})::int"
_COMPUTED = {
    "day_of_the_year": f"{_DAY}::text",
    "week_of_the_year": f"lpad((({_DAY} - 1 + 7 - extract(dow FROM {_START})::int) / 7)::text,"
    " 2, '0')",
    "month": f"extract(month FROM {_START})::int::text",
    "year": f"to_char({_START}, 'YYYY')",
}


class PostgreSQLStorage(SQLStorage):
    """Metrics of many units in one PostgreSQL database."""

    MARK = "%s"
    # A few thousand rollup rows: starting parallel workers would cost more than the sum
    # (15 ms of a 21 ms total with 2 workers, against 4 ms without).
    BEFORE_ROLLUP_READ = "SET LOCAL max_parallel_workers_per_gather = 0"
    ERRORS = (psycopg.Error,)
    DATA_ERRORS = (psycopg.DataError,)

    def __init__(self, *, dsn: str = "", **options: Any) -> None:
        """Point at a database; it is connected to on first use (or `init()`).

        Args:
            dsn: a libpq connection string or URI; its password never appears in messages.
            options: `retention_period` (hours); others are ignored.

        Raises:
            StorageError: the DSN is not a valid connection string.
        """
        super().__init__(**options)
        try:
            parts = conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            raise StorageError(
                "postgresql option dsn is not a valid connection string: give a URI"
                " (postgresql://user:password@host:5432/dbname) or key=value pairs"
            ) from None
        self.dsn = dsn
        self._location = "postgresql://{}@{}:{}/{}".format(
            parts.get("user", ""), parts.get("host", ""), parts.get("port", 5432),
            parts.get("dbname", ""),
        )  # fmt: skip

    @property
    def location(self) -> str:
        """Name the database without its password."""
        return self._location

    def _connect(self) -> psycopg.Connection:
        """Connect for this thread (again, where its last connection was lost).

        Raises:
            psycopg.OperationalError: the server cannot be reached or refuses the login
                (reported as a StorageError by the operation that needed it).
        """
        connection = psycopg.connect(
            self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
            application_name="runner-fs",
        )  # fmt: skip
        try:
            # A harvested filesystem is deleted once its commit returns: the commit must be
            # durable even where the server defaults to synchronous_commit=off.
            connection.execute("SET synchronous_commit = on")
        except BaseException:
            connection.close()
            raise
        set_json_loads(orjson.loads, connection)
        return connection

    @staticmethod
    def _lost(connection: psycopg.Connection) -> bool:
        return connection.closed or connection.broken

    def _prepare_schema(self) -> None:
        """Create or upgrade the schema under an advisory lock (one unit at a time).

        Raises:
            StorageError: the server cannot be reached, or has a newer schema.
        """
        with self._reporting("initialising"), self._transaction():
            self._execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            self._execute("CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text)")
            row = self._execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.location} has schema version {version}, newer than this runner-fs "
                    f"({SCHEMA_VERSION}); upgrade runner-fs"
                )
            for step in _MIGRATIONS[version:]:
                self._execute(step)
            self._execute(
                "INSERT INTO meta VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self.db.transaction():
            yield

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        with self.db.transaction():
            self.db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    def _execute(self, sql: str, args: Iterable[Any] = ()) -> psycopg.Cursor:
        return self.db.execute(sql, tuple(args))

    def _insert_rollups(self, rows: list[tuple], on_conflict: str) -> None:
        # One statement over one JSON array: a round trip, or an adapted array element, per
        # row would cost more than the row (measured: 5.2 against 7.2 us per row with arrays).
        self.db.execute(
            f"INSERT INTO rollups ({ROLLUP_COLUMNS})"
            " SELECT (r ->> 0)::bigint, (r ->> 1)::bigint, (r ->> 2)::bigint, (r ->> 3)::bigint,"
            " (r ->> 4)::bigint, (r ->> 5)::bigint"
            f" FROM jsonb_array_elements(%s::jsonb) AS r {on_conflict}",
            (orjson.dumps(rows).decode(),),
        )

    def _decode(self, stored: dict | str) -> dict:
        return orjson.loads(stored) if isinstance(stored, str) else stored  # jsonb comes decoded

    rollup_code = staticmethod(_rollup_code)
    regular = staticmethod(_regular)

    def _insert(self, rows: Iterable[tuple]) -> None:
        with (
            self.db.cursor() as cursor,
            cursor.copy(f"COPY points ({COLUMNS}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def _filter_value(self, key: str) -> tuple[str, list]:
        return (
            "(CASE WHEN p.groupby ? %s THEN p.groupby ->> %s ELSE p.metadata ->> %s END)",
            [key, key, key],
        )

    def _group_value(self, key: str) -> tuple[str, list]:
        if key in _COMPUTED:
            return f"COALESCE(p.groupby -> %s, to_jsonb({_COMPUTED[key]}))", [key]
        return "p.groupby -> %s", [key]
