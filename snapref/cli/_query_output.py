"""How ``snapref query`` shows a result table: as aligned text lines, or as JSON rows
(``--json``), each value as text or JSON (times, intervals, bytes, NaN, nested
values). The table comes from :meth:`snapref.inspect.Inspector.query`."""

from __future__ import annotations

import datetime
import decimal
import json
import math
from typing import Any

import pyarrow as pa

from snapref.catalog.records import printable
from snapref.errors import InvalidInputError

__all__ = ["json_value", "rows_as_json", "rows_as_text", "text_value"]


def rows_as_text(table: pa.Table) -> list[str]:
    """A query result as aligned text lines: a header, a rule, one line per row.
    Cells are shown as by :func:`text_value`, with line breaks, tabs and other control
    characters written as escapes (``\\n``, ``\\t``, ``\\x1b``: see
    :func:`~snapref.catalog.records.printable`) so that every row stays one line."""
    names = table.column_names
    columns = [
        [printable(text_value(v)) for v in _column_values(table, i)] for i in range(len(names))
    ]
    widths = [max([len(n), *(len(c) for c in col)]) for n, col in zip(names, columns, strict=True)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in zip(*columns, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def rows_as_json(table: pa.Table) -> list[dict[str, Any]]:
    """A query result as JSON-ready rows (for ``--json``), values as by
    :func:`json_value`. A repeated column name gets ``_1``, ``_2``... so that no
    value is lost."""
    names: list[str] = []
    for name in table.column_names:
        unique, n = name, 0
        while unique in names:
            n += 1
            unique = f"{name}_{n}"
        names.append(unique)
    columns = [[json_value(v) for v in _column_values(table, i)] for i in range(len(names))]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _column_values(table: pa.Table, index: int) -> list[Any]:
    """The Python values of one column, maps as dicts."""
    column = table.column(index)
    try:
        return column.to_pylist(maps_as_pydicts="lossy")
    except (OverflowError, ValueError, pa.ArrowException):
        return [_scalar_value(s, table.column_names[index]) for s in column]


def _scalar_value(scalar: pa.Scalar, name: str) -> Any:
    """One value that may not fit Python: DuckDB's ``infinity`` and ``-infinity``
    timestamps and dates as that text, others Python cannot hold (dates before year
    1, after 9999) as Arrow's text of them."""
    try:
        return scalar.as_py(maps_as_pydicts="lossy")
    except (OverflowError, ValueError, pa.ArrowException) as exc:
        if isinstance(scalar, (pa.TimestampScalar, pa.Date32Scalar)):
            top = 2**63 - 1 if isinstance(scalar, pa.TimestampScalar) else 2**31 - 1
            if scalar.value in (top, -top):
                return "infinity" if scalar.value > 0 else "-infinity"
        try:
            return pa.array([scalar]).cast(pa.string())[0].as_py()
        except (ValueError, pa.ArrowException):
            raise InvalidInputError(
                f"Cannot show a value of column {name!r} ({scalar.type}): {exc}; "
                "cast it to VARCHAR in the query"
            ) from exc


def json_value(value: Any) -> Any:
    """A query value as JSON: numbers and text as they are; NaN and infinities as
    null; decimals as numbers (exact integers when the scale is 0, else the nearest
    double); times as in :func:`text_value`; bytes as lowercase hex; lists as
    arrays; structs and maps as objects (map keys as text)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, dict):
        return {_key_text(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not isinstance(value, pa.MonthDayNano):
        return [json_value(v) for v in value]
    return text_value(value)


def text_value(value: Any) -> str:
    """A query value as text: null as the empty string; timestamps with a time zone
    in UTC as ``2024-01-01T10:00:00.000000Z`` (like every snapref time), those
    without as ``2024-01-01T10:00:00.000000``; dates and times in ISO 8601
    (``2024-01-01``, ``10:00:00``); intervals as ISO 8601 durations (``P1M2DT3.5S``,
    negative parts with a minus sign, as PostgreSQL's ``iso_8601`` style); bytes as
    lowercase hex; NaN and infinities as ``nan``, ``inf``, ``-inf``; lists, structs
    and maps as compact JSON (:func:`json_value`); anything else as ``str``."""
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return _datetime_text(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, pa.MonthDayNano):
        return _duration_text(value.months, value.days, value.nanoseconds)
    if isinstance(value, datetime.timedelta):
        micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        sign = -1 if micros < 0 else 1
        days, rest = divmod(abs(micros), 86_400 * 1_000_000)
        return _duration_text(0, sign * days, sign * rest * 1000)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(json_value(value), ensure_ascii=False)
    return str(value)


def _datetime_text(when: datetime.datetime) -> str:
    zone = ""
    if when.tzinfo is not None and when.utcoffset() is not None:
        when, zone = when.astimezone(datetime.UTC), "Z"
    text = (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T"
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}.{when.microsecond:06d}"
    )
    nanos = getattr(when, "nanosecond", 0)  # a pandas Timestamp of a timestamp_ns column
    if nanos:
        text += f"{nanos:03d}"
    return text + zone


def _duration_text(months: int, days: int, nanos: int) -> str:
    """An interval as an ISO 8601 duration; each part keeps its own sign."""

    def part(n: int, unit: str) -> str:
        return f"{n}{unit}" if n else ""

    years = int(months / 12)  # towards zero, so both parts keep the sign of months
    date = part(years, "Y") + part(months - 12 * years, "M") + part(days, "D")
    sign = "-" if nanos < 0 else ""
    hours, rest = divmod(abs(nanos), 3_600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds, fraction = divmod(rest, 10**9)
    time = (f"{sign}{hours}H" if hours else "") + (f"{sign}{minutes}M" if minutes else "")
    if seconds or fraction:
        time += f"{sign}{seconds}" + (f".{fraction:09d}".rstrip("0") if fraction else "") + "S"
    if not date and not time:
        return "PT0S"
    return "P" + date + ("T" + time if time else "")


def _key_text(key: Any) -> str:
    return key if isinstance(key, str) else text_value(key)
