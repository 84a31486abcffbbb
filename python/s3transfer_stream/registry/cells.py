"""The cells of a registry table: each value as the Python ``repr()`` OpenMSIStream writes.

``'x.dat'`` for a str, ``'sub/x.dat'`` for a relative path (POSIX separators),
``'Mon Jan 06, 2025 at 11:47:37'`` for a naive local timestamp, digits for an int,
``{1, 4}`` or ``set()`` for a set of ints. The columns of a table are the fields of a
dataclass, each of one of these types.

Unlike upstream, str cells are unescaped properly (``ast.literal_eval``) instead of
just losing their first and last character, so names with ``\\``, quotes or control
characters survive a round trip.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, get_args, get_origin, get_type_hints

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TIMESTAMP_RE = re.compile(
    r"^\s*[A-Za-z]{3} ([A-Za-z]{3}) (\d{1,2}), (\d{1,4}) at (\d{1,2}):(\d{2}):(\d{2})\s*$"
)


def format_timestamp(value: datetime) -> str:
    """``value`` as OpenMSIStream writes it: ``Mon Jan 06, 2025 at 11:47:37``.

    Same text as ``strftime("%a %b %d, %Y at %H:%M:%S")`` in the C locale, but
    independent of the process locale.
    """
    return (
        f"{_DAYS[value.weekday()]} {_MONTHS[value.month - 1]} {value.day:02d}, "
        f"{value.year} at {value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )


def parse_timestamp(text: str) -> datetime:
    """Inverse of :func:`format_timestamp` (an ISO 8601 timestamp is accepted too)."""
    match = _TIMESTAMP_RE.match(text)
    if match is None:
        try:
            return datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(f"not a timestamp: {text!r}") from None
    month_name, day, year, hour, minute, second = match.groups()
    try:
        month = _MONTHS.index(month_name.capitalize()) + 1
    except ValueError:
        raise ValueError(f"unknown month {month_name!r} in timestamp {text!r}") from None
    return datetime(int(year), month, int(day), int(hour), int(minute), int(second))


def now() -> datetime:
    """The current naive local time in whole seconds (what the files can hold)."""
    return datetime.now().replace(microsecond=0)


def _unquote(cell: str) -> str:
    """The str a repr() cell stands for.

    A valid Python string literal is evaluated (so escapes are undone); anything
    else loses its surrounding quotes if it has a matching pair, else is kept as is.
    """
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = None
    if isinstance(value, str):
        return value
    if len(cell) >= 2 and cell[0] == cell[-1] and cell[0] in "'\"":
        return cell[1:-1]
    return cell


def _encode_str(value: Any) -> str:
    return repr(str(value))


def _encode_path(value: Any) -> str:
    return repr(PurePath(value).as_posix())


def _encode_datetime(value: Any) -> str:
    return repr(format_timestamp(value))


def _encode_int(value: Any) -> str:
    return str(int(value))


def _encode_int_set(value: Any) -> str:
    if not value:
        return "set()"
    return "{" + ", ".join(str(int(v)) for v in sorted(value)) + "}"


def _decode_str(cell: str) -> Any:
    return _unquote(cell)


def _decode_path(cell: str) -> Any:
    return Path(_unquote(cell))


def _decode_datetime(cell: str) -> Any:
    return parse_timestamp(_unquote(cell))


def _decode_int(cell: str) -> Any:
    return int(cell.strip())


def _decode_int_set(cell: str) -> Any:
    text = cell.strip()
    if text in ("", "set()", "{}", "[]", "()"):
        return set()
    if len(text) >= 2 and text[0] + text[-1] in ("{}", "[]", "()"):
        text = text[1:-1]
    return {int(part) for part in text.split(",") if part.strip()}


@dataclass(frozen=True)
class Column:
    """One field of a row type and how its cells are written and read."""

    name: str
    encode: Callable[[Any], str]
    decode: Callable[[str], Any]


_COLUMNS: dict[type[Any], tuple[Column, ...]] = {}


def columns(row_type: type[Any]) -> tuple[Column, ...]:
    """The codec of each field of ``row_type``, in field order (cached)."""
    cached = _COLUMNS.get(row_type)
    if cached is not None:
        return cached
    hints = get_type_hints(row_type)
    found = []
    for field in fields(row_type):
        hint = hints[field.name]
        if hint is str:
            codec = (_encode_str, _decode_str)
        elif hint is Path:
            codec = (_encode_path, _decode_path)
        elif hint is datetime:
            codec = (_encode_datetime, _decode_datetime)
        elif hint is int:
            codec = (_encode_int, _decode_int)
        elif get_origin(hint) is set and get_args(hint) == (int,):
            codec = (_encode_int_set, _decode_int_set)
        else:
            raise TypeError(f"{row_type.__name__}.{field.name}: unsupported column type {hint!r}")
        found.append(Column(field.name, *codec))
    result = _COLUMNS[row_type] = tuple(found)
    return result


def header(row_type: type[Any]) -> str:
    """Line 1 of a table of ``row_type``: the field names joined by ``;``."""
    return ";".join(column.name for column in columns(row_type))
