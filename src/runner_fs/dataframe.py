"""DataFrame and DataPoint, attribute- and method-compatible with `cloudkitty.dataframe`."""

from __future__ import annotations

import datetime
import decimal
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple


class ImmutableDict(dict):
    """A dict that refuses every change after construction (as werkzeug's)."""

    def _immutable(self, *_: object, **__: object) -> None:
        raise TypeError(f"{type(self).__name__} objects are immutable")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _immutable  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=repr)))


def _decimal(value: object, what: str) -> decimal.Decimal:
    try:
        number = decimal.Decimal(str(value) if isinstance(value, float) else value)  # type: ignore[arg-type]
    except (decimal.InvalidOperation, TypeError, ValueError):
        raise ValueError(f"DataPoint {what} must be a number, not {value!r:.40}") from None
    if not number.is_finite():
        raise ValueError(f"DataPoint {what} must be finite, not {number}")
    return number


class _DataPointBase(NamedTuple):
    unit: str
    qty: decimal.Decimal
    price: decimal.Decimal
    groupby: ImmutableDict
    metadata: ImmutableDict
    description: str | None


class DataPoint(_DataPointBase):
    """One rated measurement: unit of measure, quantity, price, grouping and metadata."""

    __slots__ = ()

    def __new__(
        cls,
        unit: str,
        qty: object,
        price: object,
        groupby: Mapping[str, Any],
        metadata: Mapping[str, Any],
        description: str | None = None,
    ) -> DataPoint:
        """Build a point; floats go through `str` so 0.121 stays 0.121.

        Raises:
            ValueError: qty or price is not a finite number.
        """
        return super().__new__(
            cls,
            unit or "undefined",
            _decimal(qty, "qty"),
            _decimal(price, "price"),
            ImmutableDict(groupby),
            ImmutableDict(metadata),
            description,
        )

    def set_price(self, price: object) -> DataPoint:
        """Return a copy with another price."""
        return self._replace(price=_decimal(price, "price"))

    def as_dict(self, legacy: bool = False, mutable: bool = False) -> dict:
        """Return `{vol: {unit, qty}, rating: {price}, groupby, metadata}` (legacy: `desc`)."""
        output: dict[str, Any] = {
            "vol": {"unit": self.unit, "qty": self.qty},
            "rating": {"price": self.price},
            "groupby": dict(self.groupby) if mutable else self.groupby,
            "metadata": dict(self.metadata) if mutable else self.metadata,
        }
        if self.description is not None:
            output["description"] = self.description
        if legacy:
            desc = dict(output.pop("metadata"))
            desc.update(output.pop("groupby"))
            output["desc"] = desc
        return output if mutable else ImmutableDict(output)

    def json(self, legacy: bool = False) -> str:
        """Return `as_dict` as JSON."""
        return json.dumps(self.as_dict(legacy=legacy, mutable=True), default=_json_default)

    @classmethod
    def from_dict(cls, dict_: Mapping[str, Any], legacy: bool = False) -> DataPoint:
        """Build a point from `as_dict` output.

        Raises:
            ValueError: the dict is not a valid point.
        """
        try:
            groupby = dict_["desc"] if legacy else dict_["groupby"]
            return cls(
                unit=str(dict_["vol"]["unit"]),
                qty=dict_["vol"]["qty"],
                price=dict_.get("rating", {}).get("price", 0),
                groupby=groupby,
                metadata={} if legacy else dict_["metadata"],
                description=dict_.get("description"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{dict_!r:.200} isn't a valid DataPoint: {exc!r}") from None

    @property
    def desc(self) -> ImmutableDict:
        """Return metadata and groupby merged (groupby wins), as v1 storage read them."""
        return ImmutableDict({**self.metadata, **self.groupby})


class DataFrame:
    """The points of one period, by metric type."""

    __slots__ = ("_usage", "end", "start")

    def __init__(
        self,
        start: datetime.datetime,
        end: datetime.datetime,
        usage: Mapping[str, Iterable[DataPoint]] | None = None,
    ) -> None:
        """Build a frame.

        Raises:
            TypeError: start or end is not a datetime, or usage is not a dict.
            ValueError: the frame ends before it starts.
        """
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, datetime.datetime):
                raise TypeError(f'"{name}" must be of type datetime.datetime, not {type(value)}')
        if usage is not None and not isinstance(usage, dict):
            raise TypeError(f'"usage" must be a dict, not {type(usage)}')
        if _aware(end) < _aware(start):
            raise ValueError(f"a DataFrame cannot end ({end}) before it starts ({start})")
        self.start = start
        self.end = end
        self._usage: dict[str, list[DataPoint]] = {}
        for key in sorted(usage or {}):
            self.add_points(list(usage[key]), key)  # type: ignore[index]

    def add_points(self, points: list[DataPoint], type_: str) -> None:
        """Add several points of one metric type."""
        self._usage.setdefault(type_, []).extend(points)

    def add_point(self, point: DataPoint, type_: str) -> None:
        """Add one point of a metric type."""
        self._usage.setdefault(type_, []).append(point)

    def iterpoints(self) -> Iterator[tuple[str, DataPoint]]:
        """Yield (type, point) pairs."""
        for type_, points in self._usage.items():
            for point in points:
                yield type_, point

    def itertypes(self) -> Iterator[tuple[str, list[DataPoint]]]:
        """Yield (type, points) pairs."""
        yield from self._usage.items()

    def as_dict(self, legacy: bool = False, mutable: bool = False) -> dict:
        """Return `{period: {begin, end}, usage: {type: [point dicts]}}`."""
        output = {
            "period": {"begin": self.start, "end": self.end},
            "usage": {
                key: [p.as_dict(legacy=legacy, mutable=mutable) for p in points]
                for key, points in self._usage.items()
            },
        }
        return output if mutable else ImmutableDict(output)

    def json(self, legacy: bool = False) -> str:
        """Return `as_dict` as JSON."""
        return json.dumps(self.as_dict(legacy=legacy, mutable=True), default=_json_default)

    @classmethod
    def from_dict(cls, dict_: Mapping[str, Any], legacy: bool = False) -> DataFrame:
        """Build a frame from `as_dict` output (dates as datetimes or ISO 8601 strings).

        Raises:
            ValueError: the dict is not a valid frame.
        """
        try:
            begin, end = (
                value if isinstance(value, datetime.datetime) else _from_iso(value)
                for value in (dict_["period"]["begin"], dict_["period"]["end"])
            )
            usage = {
                key: [DataPoint.from_dict(point, legacy=legacy) for point in points]
                for key, points in dict_["usage"].items()
            }
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{dict_!r:.200} isn't a valid DataFrame: {exc!r}") from None
        return cls(begin, end, usage=usage)

    def __repr__(self) -> str:
        """Name the metric types held."""
        return f"DataFrame(metrics=[{','.join(self._usage)}])"


def _aware(moment: datetime.datetime) -> datetime.datetime:
    """Read a naive datetime as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def _from_iso(text: str) -> datetime.datetime:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise ValueError(f"{text!r:.40} is not an ISO 8601 date") from None


def _json_default(value: object) -> object:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")
