"""Storage totals for people: parsing report arguments, and rows ready for JSON."""

from __future__ import annotations

import datetime
from typing import Any

from runner_fs.storage import BaseStorage

ISO_EXAMPLE = "2026-11-01 or 2026-11-01T08:00:00Z"


def parse_instant(text: str, what: str = "date") -> datetime.datetime:
    """Parse an ISO 8601 date or instant; without a zone it is UTC.

    Raises:
        ValueError: not ISO 8601 (the message shows the accepted form).
    """
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} {text!r:.40} is not ISO 8601: use {ISO_EXAMPLE}") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)
    try:
        moment.astimezone(datetime.timezone.utc)
    except OverflowError:
        raise ValueError(f"{what} {text!r:.40} is out of range: use {ISO_EXAMPLE}") from None
    return moment


def parse_list(text: str | None) -> list[str] | None:
    """Split `a,b` into names; empty means none."""
    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    return names or None


def report(
    storage: BaseStorage,
    groupby: list[str] | None = None,
    begin: datetime.datetime | None = None,
    end: datetime.datetime | None = None,
    metric_types: list[str] | None = None,
) -> dict[str, Any]:
    """Return `total()` over the window with every row's times as ISO 8601 strings.

    Raises:
        ValueError: an unknown `time-` groupby, or `end` before `begin`.
    """
    if begin and end and end < begin:
        raise ValueError(f"end {end.isoformat()} is before begin {begin.isoformat()}")
    result = storage.total(
        groupby=groupby, begin=begin, end=end, metric_types=metric_types, paginate=False
    )
    rows = [
        {**row, "begin": row["begin"].isoformat(), "end": row["end"].isoformat()}
        for row in result["results"]
    ]
    return {"total": result["total"], "results": rows}
