"""Registry CSV files: which files are in progress, failed, processed or uploaded.

The tables use OpenMSIStream's ``DataclassTable`` CSV layout so that either
program can read what the other wrote (see ``docs/compatibility.md``, "Registry files"):

* UTF-8, ``;`` as delimiter, ``"`` as quote character, minimal quoting;
* line 1 is the field names joined by ``;`` (a Windows ``sep=;`` line before it is skipped);
* every cell is the Python ``repr()`` of the value: ``'x.dat'`` for a str,
  ``'sub/x.dat'`` for a relative path (POSIX separators), ``'Mon Jan 06, 2025 at 11:47:37'``
  for a naive local timestamp, digits for an int, ``{1, 4}`` or ``set()`` for a set of ints;
* lines are joined with ``\\n`` and there is no newline after the last one.

Differences from upstream, all invisible to a reader of the files:

* str cells are unescaped properly (``ast.literal_eval``) instead of just losing
  their first and last character, so names with ``\\``, quotes or control
  characters survive a round trip;
* every write is atomic (temp file in the same directory, fsync, ``os.replace``),
  so a copy of a file taken at any moment is a complete table;
* as upstream, a change does not rewrite its table each time: a changed table is
  written when it was not written for ``flush_interval`` (5 s, upstream's
  ``UPDATE_FILE_EVERY``), and, unlike upstream, also by a timer thread every
  ``flush_interval`` and at ``flush()`` / ``close()``, so a file is never more than
  ``flush_interval`` behind memory even when nothing else changes, and the cost of a
  file does not grow with the table. What a crash loses of the consumer's tables is
  restored from its transfer journal (see :class:`StreamRegistry`); its failure rows,
  and most changes of the producer's tables, are still written at once;
* no file of another topic or consumer group is ever read, merged or deleted as
  ours (see "File names" below).

File names
----------

OpenMSIStream finds its per-thread files with the prefix glob ``<stem>*<suffix>``,
so the names it uses cannot tell every topic/group pair apart: group ``g`` takes
group ``g_t1``'s ``processed_from_x_by_g_t1.csv`` for a per-thread file of its own,
topic ``test``'s producer registry takes topic ``test_p1``'s ``uploaded_to_test_p1.csv``
for a per-producer file, and topic ``a_by_b``/group ``c`` and topic ``a``/group
``b_by_c`` have *the same* ``processed_from_a_by_b_by_c.csv``. This module therefore
sorts the files in ``LOGS/`` in three kinds:

1. **Files upstream reads keep upstream's names** (``processed_from_<topic>_by_<group>.csv``,
   ``consuming_from_<topic>_by_<group>_in_progress.csv``, ``upload_to_<topic>_in_progress.csv``,
   ``uploaded_to_<topic>.csv``), with byte-identical tables: upstream readers and the
   interop tests find them where they always were. Each is opened by its exact name.
2. **Files only we read have private, unambiguous names**: the per-thread processed
   files (``s3transfer-stream_processed_<T>_by_<G>_t<ident>[_<ts>].csv``), the transfer
   journal (``transfers_<T>_by_<G>.jsonl``) and the claim described below, where
   ``<T>``/``<G>`` are the topic and group percent-encoded (everything but ASCII
   letters, digits, ``.`` and ``-``, so ``_`` is ``%5F``): no ``_`` is left in either
   part, so the name determines the pair, and no OpenMSIStream file starts with
   ``s3transfer-stream_`` or ``transfers_``. Plain names (``lab``, ``g-42``) encode to
   themselves, so their journal keeps its name; a pair too long for a file name is
   replaced by a SHA-256 of it. Private files are found by exact name or by a
   regular expression that only that pair's names can match.
3. **Upstream-named files we merge and delete** (OpenMSIStream's per-thread and
   per-producer files, left by a crash of upstream or of an earlier version of this
   package; and upstream's in-progress file ``consuming_from_<topic>_in_progress_by_<group>.csv``,
   which is only read) are taken only if no other pair can claim them: every other
   reading of the name (e.g. "the processed file of group ``g_t1``") is looked up, and
   if that pair shows any sign of having used this directory -- its claim, its
   journal, or an in-progress file of its own whose name could not also be ours
   (OpenMSIStream and this package both create the in-progress file of every pair they
   run, at start, before anything else) -- the file is left alone with a warning.

Where upstream's own name is ambiguous (``processed_from_a_by_b_by_c.csv``, or an
in-progress name that is also another pair's legacy in-progress name), nothing in the
file can say whose it is without changing the table format, which must stay
upstream's byte for byte. So the pair writes a small **claim** next to it,
``s3transfer-stream_claim_<T>_by_<G>.json`` (its exact, private name; content for
humans: topic, group, the shared names), and a processor whose names are shared with
another pair that shows a sign of use (its claim, journal or unambiguous in-progress
file) **refuses to start** with an error that names the file and both readings,
rather than mixing two consumers' rows. Refusing is the only safe choice: the files
of the first pair are already in upstream's format and upstream's names, and any
renaming would hide them from upstream readers. The claim is created before the
check and removed again on refusal, so of two processors starting at the same moment
at most one goes on. Files with an ambiguous name that exist but are unclaimed (an
upstream run, or an earlier version of this package) are taken as ours with a
warning, unless the other reading shows a sign of use.
"""

from __future__ import annotations

import ast
import copy
import csv
import hashlib
import io
import json
import logging
import os
import re
import string
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path, PurePath, PurePosixPath
from types import TracebackType
from typing import Any, Generic, TypeVar, get_args, get_origin, get_type_hints

from . import failpoints
from .errors import S3TransferStreamError

__all__ = [
    "DEFAULT_FLUSH_INTERVAL",
    "MAX_ROWS_PER_FILE",
    "PRIVATE_PREFIX",
    "DataclassTable",
    "InProgressRow",
    "NameReading",
    "ProcessedRow",
    "ProducerRegistry",
    "ProducerRegistryPaths",
    "RegistryError",
    "StreamRegistry",
    "StreamRegistryPaths",
    "UploadInProgressRow",
    "UploadedRow",
    "format_timestamp",
    "journal_name",
    "journal_path",
    "name_readings",
    "parse_table",
    "parse_timestamp",
    "private_name_token",
    "read_table",
    "render_table",
]

_LOG = logging.getLogger(__name__)

#: A table changed in memory reaches its file within this many seconds.
DEFAULT_FLUSH_INTERVAL = 5.0
#: A per-thread "processed" file is rotated when it holds this many rows.
MAX_ROWS_PER_FILE = 1000

IN_PROGRESS = "in_progress"
FAILED = "failed"
MISMATCHED_HASH = "mismatched_hash"
#: Not an OpenMSIStream status: the file cannot complete from what this process reads.
WAITING = "waiting_for_chunks"
#: Given up: no chunk arrived for a long time while the log moved on (producer stopped).
ABANDONED = "abandoned"
_FAILED_STATUSES = (FAILED, MISMATCHED_HASH, ABANDONED)


class RegistryError(S3TransferStreamError, ValueError):
    """A registry file cannot be read (wrong header, bad cell) or written consistently."""


# --------------------------------------------------------------------------- rows


@dataclass
class InProgressRow:
    """A file some of whose chunks were consumed but which is not yet in the bucket."""

    filename: str
    rel_filepath: Path
    status: str
    n_chunks: int
    first_message: datetime
    most_recent_message: datetime


@dataclass
class ProcessedRow:
    """A file transferred successfully (one row per transfer: a file sent twice has two)."""

    filename: str
    rel_filepath: Path
    n_chunks: int
    first_message: datetime
    processed_at: datetime


@dataclass
class UploadInProgressRow:
    """A file whose chunks the upload-directory producer is still sending."""

    filename: str
    rel_filepath: Path
    n_chunks: int
    n_chunks_delivered: int
    n_chunks_to_send: int
    started: datetime
    chunks_delivered: set[int]
    chunks_to_send: set[int]


@dataclass
class UploadedRow:
    """A file all of whose chunks the broker acknowledged."""

    filename: str
    rel_filepath: Path
    n_chunks: int
    started: datetime
    completed: datetime


# --------------------------------------------------------------------------- cells

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


def _now() -> datetime:
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
class _Column:
    name: str
    encode: Callable[[Any], str]
    decode: Callable[[str], Any]


_COLUMNS: dict[type[Any], tuple[_Column, ...]] = {}


def _columns(row_type: type[Any]) -> tuple[_Column, ...]:
    """The codec of each field of ``row_type``, in field order (cached)."""
    cached = _COLUMNS.get(row_type)
    if cached is not None:
        return cached
    hints = get_type_hints(row_type)
    columns = []
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
        columns.append(_Column(field.name, *codec))
    result = _COLUMNS[row_type] = tuple(columns)
    return result


def _header(row_type: type[Any]) -> str:
    return ";".join(column.name for column in _columns(row_type))


# --------------------------------------------------------------------------- files

RowT = TypeVar("RowT")


def render_table(row_type: type[RowT], rows: Iterable[RowT]) -> str:
    """The full text of a table file holding ``rows`` (no trailing newline)."""
    columns = _columns(row_type)
    buffer = io.StringIO()
    writer = csv.writer(
        buffer, delimiter=";", quoting=csv.QUOTE_MINIMAL, quotechar='"', lineterminator="\n"
    )
    for row in rows:
        writer.writerow([column.encode(getattr(row, column.name)) for column in columns])
    body = buffer.getvalue()
    header = _header(row_type)
    # csv.writer ends every row with "\n"; the format has no newline after the last line.
    return header + "\n" + body[:-1] if body else header


def parse_table(row_type: type[RowT], text: str, source: str) -> list[RowT]:
    """The rows of a table file's ``text``; ``source`` names the file in errors."""
    columns = _columns(row_type)
    expected = _header(row_type)
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        return []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=";", quotechar='"')
    rows: list[RowT] = []
    header_seen = False
    for cells in reader:
        line = reader.line_num
        if not header_seen:
            first = ";".join(cells).strip()
            if first == "sep=;":
                continue
            if first != expected:
                raise RegistryError(
                    f"{source}, line {line}: the header is {first!r} but a "
                    f"{row_type.__name__} table needs {expected!r}"
                )
            header_seen = True
            continue
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if len(cells) != len(columns):
            raise RegistryError(
                f"{source}, line {line}: {len(cells)} cells, expected {len(columns)} ({expected})"
            )
        values: dict[str, Any] = {}
        for index, column in enumerate(columns):
            cell = cells[index]
            try:
                values[column.name] = column.decode(cell)
            except ValueError as exc:
                raise RegistryError(
                    f"{source}, line {line}: bad {column.name} cell {cell!r}: {exc}"
                ) from None
        rows.append(row_type(**values))
    if not header_seen:
        raise RegistryError(
            f"{source}: no header line; a {row_type.__name__} table needs {expected!r}"
        )
    return rows


def read_table(row_type: type[RowT], path: Path) -> list[RowT]:
    """The rows of the table file at ``path`` (a missing file is an empty table)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(f"{path}: not UTF-8 ({exc})") from None
    return parse_table(row_type, text, str(path))


def _new_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (0o666 minus the umask).

    The umask is read from /proc where possible: setting it to read it back would
    race with other threads creating files.
    """
    umask = 0o022
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
                    break
    except (OSError, ValueError, IndexError):
        pass
    return 0o666 & ~umask


_NEW_FILE_MODE = _new_file_mode()


def _remove_torn_writes(
    directory: Path, names: list[str], pattern: re.Pattern[str] | None = None
) -> None:
    """Deletes temp files a crash inside :func:`_write_atomic` left behind for these tables
    (the table itself is intact: the rename never happened)."""
    for tmp in directory.glob(".*.tmp"):
        base = tmp.name[1:].rsplit(".", 2)[0]
        if base in names or (pattern is not None and pattern.match(base)):
            try:
                tmp.unlink()
            except OSError:
                pass


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by a file holding ``text`` so that no reader sees a partial file.

    The temp file lives in the same directory (so the rename is atomic), is fsynced
    before the rename, and gets the mode of the file it replaces (else the umask's).
    """
    data = text.encode("utf-8")
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = _NEW_FILE_MODE
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        failpoints.hit("registry_write")
        for attempt in range(3):
            try:
                os.replace(tmp_name, path)
                break
            except PermissionError:
                # Windows refuses to replace a file another process has open: retry briefly.
                if attempt == 2:
                    raise
                time.sleep(0.1)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise


class DataclassTable(Generic[RowT]):
    """Rows of one dataclass kept in memory and mirrored to one CSV file.

    ``key`` makes the table a mapping (one row per key, e.g. the relative path);
    without it the table is an append-only list. All access goes through ``lock``
    (re-entrant), which callers may hold across several calls; rows returned by
    :meth:`get` are the live objects, so change them only while holding the lock
    and call :meth:`mark_dirty` afterwards.
    """

    def __init__(
        self,
        row_type: type[RowT],
        path: Path,
        *,
        key: Callable[[RowT], str] | None = None,
        load: bool = True,
    ) -> None:
        self.row_type = row_type
        self.path = path
        self.lock = threading.RLock()
        self.dirty = False
        self._key = key
        self._rows: dict[object, RowT] = {}
        self._serial = 0
        # When a write was last tried (successful or not): lazy writes are throttled by it.
        self._last_write = float("-inf")
        if load:
            for row in read_table(row_type, path):
                self._insert(row)

    def _insert(self, row: RowT) -> None:
        if self._key is None:
            self._rows[self._serial] = row
            self._serial += 1
        else:
            self._rows[self._key(row)] = row

    def __len__(self) -> int:
        with self.lock:
            return len(self._rows)

    def __contains__(self, key: object) -> bool:
        with self.lock:
            return key in self._rows

    def get(self, key: str) -> RowT | None:
        """The live row for ``key`` (keyed tables only)."""
        with self.lock:
            return self._rows.get(key)

    def add(self, row: RowT) -> None:
        """Append ``row`` (or replace the row with its key) and mark the table dirty."""
        with self.lock:
            self._insert(row)
            self.dirty = True

    def extend(self, rows: Iterable[RowT]) -> None:
        with self.lock:
            for row in rows:
                self._insert(row)
            self.dirty = True

    def pop(self, key: str) -> RowT | None:
        """Remove and return the row for ``key`` (keyed tables only)."""
        with self.lock:
            row = self._rows.pop(key, None)
            if row is not None:
                self.dirty = True
            return row

    def clear(self) -> None:
        with self.lock:
            if self._rows:
                self.dirty = True
            self._rows.clear()

    def mark_dirty(self) -> None:
        with self.lock:
            self.dirty = True

    def rows(self) -> list[RowT]:
        """Copies of the rows, in insertion order."""
        with self.lock:
            return [copy.deepcopy(row) for row in self._rows.values()]

    def render(self) -> str:
        with self.lock:
            return render_table(self.row_type, self._rows.values())

    def write(self) -> None:
        """Write the table to its file now (atomically), dirty or not."""
        with self.lock:
            self._last_write = time.monotonic()
            _write_atomic(self.path, self.render())
            self.dirty = False

    def flush(self) -> bool:
        """Write the table if it changed since the last write; True if it wrote."""
        with self.lock:
            if not self.dirty:
                return False
            self.write()
            return True

    def flush_if_older_than(self, seconds: float) -> bool:
        """Write the table if it is dirty and the last write (or failed attempt) is
        ``seconds`` old or more: at most one write per ``seconds``, whatever the rate of
        changes, so that the cost of a change does not grow with the table."""
        with self.lock:
            if not self.dirty or time.monotonic() - self._last_write < seconds:
                return False
            self.write()
            return True


def _write_logged(table: DataclassTable[Any]) -> None:
    """A forced write that must not break the caller: on failure the table stays dirty
    and the flush timer (or close) tries again."""
    try:
        table.write()
    except OSError as exc:
        _LOG.warning("could not write %s (will retry): %s", table.path, exc)


def _write_lazily(table: DataclassTable[Any], interval: float) -> None:
    """After a change: write the table only if it was not written for ``interval``
    seconds (else the flush timer, :meth:`flush` or :meth:`close` does). Never raises
    for a failed write: the table stays dirty and is tried again."""
    try:
        table.flush_if_older_than(interval)
    except OSError as exc:
        _LOG.warning("could not write %s (will retry): %s", table.path, exc)


def _flush_all(tables: Iterable[DataclassTable[Any]]) -> None:
    """Flush every table; raise the first error after trying them all."""
    first: BaseException | None = None
    for table in tables:
        try:
            table.flush()
        except (OSError, RegistryError) as exc:
            _LOG.warning("could not write %s: %s", table.path, exc)
            if first is None:
                first = exc
    if first is not None:
        raise first


def _merge_files(main: DataclassTable[RowT], files: list[Path]) -> int:
    """Append the rows of ``files`` to ``main``, write it, check it, delete ``files``.

    Files that cannot be read are left alone (logged). Returns the number of files merged.
    """
    with main.lock:
        merged: list[Path] = []
        new_rows: list[RowT] = []
        for path in files:
            try:
                new_rows.extend(read_table(main.row_type, path))
            except (OSError, RegistryError) as exc:
                _LOG.warning("not merging %s into %s: %s", path, main.path, exc)
                continue
            merged.append(path)
        if not merged:
            return 0
        main.extend(new_rows)
        main.write()
        expected = main.render()
        on_disk = main.path.read_bytes().decode("utf-8")
        if on_disk != expected:
            raise RegistryError(
                f"{main.path}: the consolidated table read back differs from what was "
                f"written; the {len(merged)} file(s) merged into it were kept"
            )
        for path in merged:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        return len(merged)


class _FlushTimer:
    """One daemon thread calling ``flush`` every ``interval`` seconds until stopped."""

    def __init__(self, flush: Callable[[], None], interval: float, name: str) -> None:
        if interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {interval}")
        self._flush = flush
        self._interval = interval
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._flush()
            except Exception as exc:  # keep the timer alive; the next tick retries
                _LOG.warning("registry flush failed (will retry): %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _check_name_part(what: str, value: str) -> None:
    if not value or any(c in value for c in "/\\\0") or value in (".", ".."):
        raise RegistryError(
            f"the {what} {value!r} cannot be part of a registry file name "
            "(it is empty or contains a path separator or NUL)"
        )


def _rel_key(rel_filepath: str | PurePath) -> str:
    """The table key of a relative path: POSIX form without ``.`` parts."""
    text = rel_filepath.as_posix() if isinstance(rel_filepath, PurePath) else rel_filepath
    key = PurePosixPath(text).as_posix()
    if key in ("", "."):
        raise ValueError(f"not a relative file path: {rel_filepath!r}")
    return key


def _row_key(row: Any) -> str:
    return _rel_key(row.rel_filepath)


def _rotation_suffix() -> str:
    return str(datetime.now().timestamp()).replace(".", "_")


# --------------------------------------------------------------------------- file names

#: Every file of ours in ``LOGS/`` that OpenMSIStream does not read starts with this
#: (or with ``transfers_``, the journal); no OpenMSIStream file does.
PRIVATE_PREFIX = "s3transfer-stream_"
_PLAIN_CHARS = frozenset(string.ascii_letters + string.digits + ".-")
#: Longer encoded pairs are replaced by a hash so that names stay under 255 bytes.
_MAX_TOKEN = 150
#: What Kafka accepts as a topic name: a reading with another topic is impossible.
_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")

_PROCESSED = "processed file"
_PER_THREAD = "per-thread processed file"
_IN_PROGRESS = "in-progress file"
_LEGACY_IN_PROGRESS = "in-progress file (OpenMSIStream 1.8 name)"
# OpenMSIStream's names, each with the separator between topic and group.
_UPSTREAM_NAME_FORMS = (
    (re.compile(r"processed_from_(.+)\.csv", re.DOTALL), "_by_", _PROCESSED),
    (
        re.compile(r"processed_from_(.+)_t\d+(?:_\d+_\d+)?\.csv", re.DOTALL),
        "_by_",
        _PER_THREAD,
    ),
    (re.compile(r"consuming_from_(.+)_in_progress\.csv", re.DOTALL), "_by_", _IN_PROGRESS),
    (re.compile(r"consuming_from_(.+)\.csv", re.DOTALL), "_in_progress_by_", _LEGACY_IN_PROGRESS),
)


def _encode_part(value: str) -> str:
    """``value`` percent-encoded: ASCII letters, digits, ``.`` and ``-`` stay, every
    other character (``_`` and ``%`` included) becomes its UTF-8 bytes as ``%XX``."""
    out: list[str] = []
    for char in value:
        if char in _PLAIN_CHARS:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def private_name_token(topic: str, group: str) -> str:
    """The part of our private file names that stands for ``topic`` and ``group``:
    ``<encoded topic>_by_<encoded group>`` (neither part holds a ``_``, so the token
    determines the pair), or ``h<sha-256>`` of the pair when that would be too long."""
    token = f"{_encode_part(topic)}_by_{_encode_part(group)}"
    if len(token) <= _MAX_TOKEN:
        return token
    digest = hashlib.sha256(f"{topic}\0{group}".encode("utf-8", "surrogatepass"))
    return f"h{digest.hexdigest()[:40]}"


def journal_name(topic: str, group: str) -> str:
    """File name of the transfer journal of ``topic`` and ``group`` (exact, private)."""
    return f"transfers_{private_name_token(topic, group)}.jsonl"


def _claim_name(topic: str, group: str) -> str:
    return f"{PRIVATE_PREFIX}claim_{private_name_token(topic, group)}.json"


@dataclass(frozen=True, order=True)
class NameReading:
    """One way to read an OpenMSIStream registry file name: whose file it would be."""

    topic: str
    group: str
    kind: str

    def describe(self) -> str:
        return f"the {self.kind} of topic {self.topic!r} / group {self.group!r}"


def _splits(text: str, separator: str) -> list[tuple[str, str]]:
    """Every ``(before, after)`` of ``text`` around one occurrence of ``separator``."""
    found = []
    start = text.find(separator)
    while start != -1:
        found.append((text[:start], text[start + len(separator) :]))
        start = text.find(separator, start + 1)
    return found


def _is_name_part(value: str) -> bool:
    return bool(value) and not any(c in value for c in "/\\\0") and value not in (".", "..")


def name_readings(name: str) -> set[NameReading]:
    """Every topic/group pair (with a topic Kafka accepts) whose OpenMSIStream registry
    files (consolidated or per-thread processed file, in-progress file under our or
    upstream's 1.8 name) include a file called ``name``."""
    readings = set()
    for pattern, separator, kind in _UPSTREAM_NAME_FORMS:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        for topic, group in _splits(match.group(1), separator):
            if _KAFKA_TOPIC.fullmatch(topic) and _is_name_part(group):
                readings.add(NameReading(topic, group, kind))
    return readings


def _pairs(readings: Iterable[NameReading]) -> set[tuple[str, str]]:
    return {(r.topic, r.group) for r in readings}


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long for the file system: no such file
        return False


def _journal_topics(path: Path) -> set[str]:
    """The topics named by the object keys (``<topic>/<path>``) of a journal file."""
    topics = set()
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    key = json.loads(line)["key"]
                except (ValueError, KeyError, TypeError):
                    continue
                if isinstance(key, str) and "/" in key:
                    topics.add(key.split("/", 1)[0])
    except OSError:
        pass
    return topics


def _sign_of_use(logs_dir: Path, topic: str, group: str, us: tuple[str, str]) -> Path | None:
    """A file showing that ``topic``/``group`` has used ``logs_dir``: its claim, its
    journal, an in-progress file (ours or upstream's, both are created at start) whose
    name could not also be one of ``us``'s, or a journal of an earlier version whose
    object keys name ``topic``. None if there is no such file."""
    candidates = [logs_dir / _claim_name(topic, group), logs_dir / journal_name(topic, group)]
    for name in (
        f"consuming_from_{topic}_by_{group}_in_progress.csv",
        f"consuming_from_{topic}_in_progress_by_{group}.csv",
    ):
        if us not in _pairs(name_readings(name)):
            candidates.append(logs_dir / name)
    for path in candidates:
        if _is_file(path):
            return path
    old_journal = logs_dir / f"transfers_{topic}_by_{group}.jsonl"
    if _is_file(old_journal) and topic in _journal_topics(old_journal):
        return old_journal
    return None


def _old_journal_is_ours(path: Path, topic: str, group: str) -> bool:
    """Whether a journal under the name earlier versions used
    (``transfers_<topic>_by_<group>.jsonl``, ambiguous) belongs to ``topic``/``group``."""
    stem = path.name[len("transfers_") : -len(".jsonl")]
    readings = {
        (t, g) for t, g in _splits(stem, "_by_") if _KAFKA_TOPIC.fullmatch(t) and _is_name_part(g)
    }
    if readings <= {(topic, group)}:
        return True
    # Several pairs have this name; the object keys (<topic>/...) tell whose it is.
    return _journal_topics(path) == {topic}


def journal_path(logs_dir: Path, topic: str, group: str) -> Path:
    """Where the transfer journal of ``topic``/``group`` lives (:func:`journal_name`).

    A journal an earlier version left under the old, ambiguous name
    ``transfers_<topic>_by_<group>.jsonl`` is renamed to it when it is this pair's;
    one that may be another pair's is left alone (a warning says so)."""
    path = logs_dir / journal_name(topic, group)
    old = logs_dir / f"transfers_{topic}_by_{group}.jsonl"
    if old == path or _is_file(path) or not _is_file(old):
        return path
    if _old_journal_is_ours(old, topic, group):
        try:
            os.replace(old, path)
            _LOG.info("renamed the transfer journal %s to %s", old, path)
        except OSError as exc:
            _LOG.warning("could not rename the transfer journal %s to %s: %s", old, path, exc)
    else:
        _LOG.warning(
            "not using %s as the transfer journal of topic %r / group %r: its name is also "
            "that of another topic/group pair and its entries are not this topic's",
            old,
            topic,
            group,
        )
    return path


# --------------------------------------------------------------------------- consumer side


@dataclass(frozen=True)
class StreamRegistryPaths:
    """Where a :class:`StreamRegistry` keeps its files."""

    logs_dir: Path
    #: ``consuming_from_<topic>_by_<group>_in_progress.csv`` (OpenMSIStream's documented name).
    in_progress: Path
    #: ``consuming_from_<topic>_in_progress_by_<group>.csv`` (OpenMSIStream 1.8's, read only).
    legacy_in_progress: Path
    #: ``processed_from_<topic>_by_<group>.csv``, the consolidated processed file.
    processed: Path
    #: Matches the names of our per-thread processed files, and no other pair's.
    processed_pattern: re.Pattern[str]
    #: Matches OpenMSIStream's per-thread names of this pair (and, possibly, another
    #: pair's processed file: see :func:`name_readings`).
    legacy_processed_pattern: re.Pattern[str]
    #: ``s3transfer-stream_claim_<T>_by_<G>.json`` when an upstream name of this pair
    #: is also another pair's, else None.
    claim: Path | None
    #: Our per-thread files are ``<thread_file_stem>_t<ident>[_<ts>].csv``.
    thread_file_stem: str

    def processed_for_thread(self, ident: int) -> Path:
        return self.logs_dir / f"{self.thread_file_stem}_t{ident}.csv"


class StreamRegistry:
    """The stream processor's registry of in-progress, failed and processed files.

    Files in ``logs_dir``, for consumer group ``group_id`` on ``topic``:

    * ``consuming_from_<topic>_by_<group>_in_progress.csv`` (one row per file not yet
      in the bucket, status ``in_progress``, ``failed`` or ``mismatched_hash``). At
      start the upstream 1.8.x name ``consuming_from_<topic>_in_progress_by_<group>.csv``
      is read too, when it is newer than ours, and its rows merged (that file itself
      is never changed);
    * ``s3transfer-stream_processed_<T>_by_<G>_t<thread ident>.csv`` (``<T>``, ``<G>``:
      the topic and group percent-encoded, see the module docstring), one per thread
      that registers a success, rotated to ``..._t<ident>_<ts>.csv`` at
      ``max_rows_per_file`` rows, and consolidated into
      ``processed_from_<topic>_by_<group>.csv`` at start and at :meth:`close`.
      OpenMSIStream's per-thread files of this pair (``processed_from_<topic>_by_<group>_t<ident>.csv``)
      are consolidated too, unless another pair may own them;
    * ``s3transfer-stream_claim_<T>_by_<G>.json`` only when OpenMSIStream's names of this
      pair are also another pair's; a :class:`RegistryError` at start if that other pair
      has used the directory.

    When things are written: failures (:meth:`register_failed`) and
    :meth:`mark_waiting` are written at once (nothing else could restore them after a
    crash). Every other change -- new in-progress rows and their updates, processed
    rows, removed in-progress rows -- only marks its table dirty; the table is written
    at once when it was not written for ``flush_interval`` seconds, else by the timer
    :meth:`start` runs (every ``flush_interval`` s), at :meth:`flush`, at rotation and
    at :meth:`close`. So a change reaches its file within ``flush_interval`` (with the
    timer running), each table is rewritten at most about twice per interval whatever
    the rate of files, and the cost of a file does not grow with the table. A crash
    (SIGKILL, power loss) loses the changes not yet written (with the timer running,
    those of the last ``flush_interval`` seconds); the files on disk are then an
    older, complete state. The durable record of
    a transfer is the caller's: the processor fsyncs a transfer journal entry before
    :meth:`register_processed` and, at start, restores the processed rows missing from
    :meth:`processed_rows` and discards the stale in-progress rows
    (:meth:`discard_in_progress`), so every file ends up listed exactly once.
    """

    def __init__(
        self,
        logs_dir: Path,
        topic: str,
        group_id: str,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_rows_per_file: int = MAX_ROWS_PER_FILE,
    ) -> None:
        _check_name_part("topic", topic)
        _check_name_part("consumer group id", group_id)
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        if max_rows_per_file < 1:
            raise ValueError(f"max_rows_per_file must be >= 1, got {max_rows_per_file}")
        logs_dir = Path(logs_dir)
        logs_dir.mkdir(parents=True, exist_ok=True)
        self.topic = topic
        self.group_id = group_id
        self._interval = flush_interval
        self._max_rows = max_rows_per_file
        in_progress = logs_dir / f"consuming_from_{topic}_by_{group_id}_in_progress.csv"
        processed = logs_dir / f"processed_from_{topic}_by_{group_id}.csv"
        us = (topic, group_id)
        # Upstream-named files we write whose name is also another pair's.
        self._shared = {
            path: sorted(r for r in name_readings(path.name) if (r.topic, r.group) != us)
            for path in (processed, in_progress)
        }
        self._shared = {path: others for path, others in self._shared.items() if others}
        thread_file_stem = f"{PRIVATE_PREFIX}processed_{private_name_token(topic, group_id)}"
        self._paths = StreamRegistryPaths(
            logs_dir=logs_dir,
            in_progress=in_progress,
            legacy_in_progress=logs_dir / f"consuming_from_{topic}_in_progress_by_{group_id}.csv",
            processed=processed,
            processed_pattern=re.compile(
                rf"^{re.escape(thread_file_stem)}_t\d+(_\d+_\d+)?\.csv$", re.DOTALL
            ),
            legacy_processed_pattern=re.compile(
                rf"^processed_from_{re.escape(topic)}_by_{re.escape(group_id)}"
                r"_t\d+(_\d+_\d+)?\.csv$",
                re.DOTALL,
            ),
            claim=logs_dir / _claim_name(topic, group_id) if self._shared else None,
            thread_file_stem=thread_file_stem,
        )
        self._warned: set[Path] = set()
        self._claim_shared_names()
        _remove_torn_writes(
            logs_dir,
            [self._paths.in_progress.name, self._paths.processed.name],
            self._paths.processed_pattern,
        )
        self._in_progress: DataclassTable[InProgressRow] = DataclassTable(
            InProgressRow, self._paths.in_progress, key=_row_key
        )
        if self._merge_legacy_in_progress() or not self._paths.in_progress.exists():
            self._in_progress.write()
        self._rerun = sorted(row.rel_filepath.as_posix() for row in self._in_progress.rows())
        self._processed_lock = threading.RLock()
        self._thread_tables: dict[int, DataclassTable[ProcessedRow]] = {}
        self._timer = _FlushTimer(self.flush, flush_interval, f"registry-flush-{topic}")
        self._closed = False
        self.consolidate()

    # -- setup ---------------------------------------------------------------

    def _claim_shared_names(self) -> None:
        """Where an upstream name of ours is another pair's too: refuse if that pair has
        used this directory, else write our claim (see the module docstring)."""
        claim = self._paths.claim
        if claim is None:
            return
        us = (self.topic, self.group_id)
        existing = sorted(path.name for path in self._shared if _is_file(path))
        created = False
        if not _is_file(claim):
            record = {
                "topic": self.topic,
                "group": self.group_id,
                "files": sorted(path.name for path in self._shared),
                "why": "these OpenMSIStream file names are also another topic/group pair's; "
                "this pair uses them, so the other one is refused in this directory",
            }
            try:
                with open(claim, "x", encoding="utf-8") as handle:
                    handle.write(json.dumps(record, ensure_ascii=False, indent=1) + "\n")
                created = True
            except FileExistsError:
                pass
        for path, others in self._shared.items():
            for other in others:
                if other.kind not in (_PROCESSED, _IN_PROGRESS):
                    # A reader (upstream's 1.8 in-progress name) or a merger (a per-thread
                    # name): that pair leaves the file alone when it sees our claim.
                    continue
                sign = _sign_of_use(self._paths.logs_dir, other.topic, other.group, us)
                if sign is None:
                    continue
                if created:
                    try:
                        claim.unlink()
                    except OSError:
                        pass
                hint = (
                    f" If that pair no longer uses this directory, delete {sign}."
                    if sign.name.startswith(PRIVATE_PREFIX)
                    else ""
                )
                raise RegistryError(
                    f"{path} cannot be used: OpenMSIStream's file name reads both as the "
                    f"{other.kind} of topic {self.topic!r} / group {self.group_id!r} (this "
                    f"processor) and as {other.describe()}, which has used "
                    f"{self._paths.logs_dir} ({sign.name} exists). Give one of them another "
                    f"--output_dir or --consumer_group_id.{hint}"
                )
        if created and existing:
            readings = "; ".join(
                other.describe() for others in self._shared.values() for other in others
            )
            _LOG.warning(
                "%s already exist(s) in %s and the name(s) could also be %s; no sign that "
                "another topic/group used this directory, so they are taken as topic %r / "
                "group %r's (claimed in %s)",
                ", ".join(existing),
                self._paths.logs_dir,
                readings,
                self.topic,
                self.group_id,
                claim.name,
            )

    def _foreign_sign(self, path: Path) -> tuple[NameReading, Path] | None:
        """Another reading of the upstream name ``path`` whose pair has used this
        directory (with the file showing it), or None: then the file is ours."""
        us = (self.topic, self.group_id)
        for other in sorted(name_readings(path.name)):
            if (other.topic, other.group) == us:
                continue
            sign = _sign_of_use(self._paths.logs_dir, other.topic, other.group, us)
            if sign is not None:
                return other, sign
        return None

    def _warn_foreign(self, path: Path, other: NameReading, sign: Path, what: str) -> None:
        if path in self._warned:
            return
        self._warned.add(path)
        _LOG.warning(
            "not %s %s: its name is also %s, which has used this directory (%s exists)",
            what,
            path,
            other.describe(),
            sign.name,
        )

    def _merge_legacy_in_progress(self) -> bool:
        """Merge the rows of upstream's in-progress file if it is newer than ours (and
        cannot be another pair's)."""
        legacy = self._paths.legacy_in_progress
        try:
            legacy_mtime = legacy.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        try:
            ours_mtime: int | None = self._paths.in_progress.stat().st_mtime_ns
        except FileNotFoundError:
            ours_mtime = None
        if ours_mtime is not None and ours_mtime >= legacy_mtime:
            return False  # merged by an earlier run, or older than our own records
        foreign = self._foreign_sign(legacy)
        if foreign is not None:
            self._warn_foreign(legacy, *foreign, "reading the in-progress rows of")
            return False
        with self._in_progress.lock:
            for row in read_table(InProgressRow, legacy):
                current = self._in_progress.get(_row_key(row))
                if current is None or row.most_recent_message > current.most_recent_message:
                    self._in_progress.add(row)
        _LOG.info("merged in-progress rows of %s into %s", legacy, self._paths.in_progress)
        return True

    # -- public API ----------------------------------------------------------

    @property
    def paths(self) -> StreamRegistryPaths:
        return self._paths

    def rerun_paths(self) -> list[str]:
        """Relative paths (POSIX) of the files in progress or failed when this registry
        was opened: the files a new run must read again."""
        return list(self._rerun)

    def in_progress_rows(self) -> list[InProgressRow]:
        return self._in_progress.rows()

    def register_in_progress(self, rel_filepath: str, filename: str, n_chunks: int) -> None:
        """Record that a chunk of the file arrived (written lazily, like every change
        but failures: see the class docstring)."""
        key = _rel_key(rel_filepath)
        now = _now()
        table = self._in_progress
        with table.lock:
            row = table.get(key)
            if row is None:
                table.add(InProgressRow(filename, Path(key), IN_PROGRESS, n_chunks, now, now))
                _write_lazily(table, self._interval)
                return
            changed = False
            if row.most_recent_message != now:
                row.most_recent_message = now
                changed = True
            if row.status != IN_PROGRESS:
                row.status = IN_PROGRESS
                changed = True
            if row.n_chunks != n_chunks or row.filename != filename:
                row.n_chunks = n_chunks
                row.filename = filename
                changed = True
            if changed:
                table.mark_dirty()
                _write_lazily(table, self._interval)

    def register_failed(
        self, rel_filepath: str, filename: str, n_chunks: int, status: str = FAILED
    ) -> None:
        """Record that the file failed (``failed``) or its hash did not match
        (``mismatched_hash``); written at once. The next run re-reads it."""
        if status not in _FAILED_STATUSES:
            raise ValueError(f"status must be one of {_FAILED_STATUSES}, got {status!r}")
        key = _rel_key(rel_filepath)
        now = _now()
        table = self._in_progress
        with table.lock:
            row = table.get(key)
            if row is None:
                table.add(InProgressRow(filename, Path(key), status, n_chunks, now, now))
            else:
                row.status = status
                row.filename = filename
                row.n_chunks = n_chunks
                row.most_recent_message = now
                table.mark_dirty()
            _write_logged(table)

    def mark_waiting(self, rel_filepath: str, filename: str, n_chunks: int) -> None:
        """Status ``waiting_for_chunks``: the file cannot complete from what this process
        reads (its remaining chunks are elsewhere or not produced yet)."""
        key = _rel_key(rel_filepath)
        now = _now()
        with self._in_progress.lock:
            row = self._in_progress.get(key)
            if row is None:
                self._in_progress.add(
                    InProgressRow(filename, Path(key), WAITING, n_chunks, now, now)
                )
            else:
                row.status = WAITING
                self._in_progress.mark_dirty()
            _write_logged(self._in_progress)

    def discard_in_progress(self, rel_filepath: str, *, started_by: datetime) -> bool:
        """Removes the in-progress row of a file known to be transferred (a crash came
        between recording it as processed and writing out the removal of this row), or
        accounted for otherwise (written lazily). A row for an instance first seen after
        ``started_by`` is newer and stays."""
        key = _rel_key(rel_filepath)
        with self._in_progress.lock:
            row = self._in_progress.get(key)
            if row is None or row.first_message > started_by.replace(microsecond=0):
                return False
            self._in_progress.pop(key)
            _write_lazily(self._in_progress, self._interval)
            return True

    def register_processed(
        self,
        rel_filepath: str,
        filename: str,
        n_chunks: int,
        first_message: datetime | None = None,
        processed_at: datetime | None = None,
    ) -> None:
        """Record that the file is safely in the bucket: a row is appended to the calling
        thread's processed table and the in-progress row removed. Both are written
        lazily (see the class docstring): a crash may lose the row, so the caller must
        have recorded the transfer durably first (the processor's transfer journal) and
        restore lost rows at the next start by calling this again with the same
        ``processed_at`` (default now), which gives the row exactly as it would have been."""
        key = _rel_key(rel_filepath)
        now = _now() if processed_at is None else processed_at.replace(microsecond=0)
        if first_message is None:
            with self._in_progress.lock:
                current = self._in_progress.get(key)
                first_message = current.first_message if current is not None else now
        row = ProcessedRow(filename, Path(key), n_chunks, first_message, now)
        table = self._thread_table()
        with table.lock:
            table.add(row)
            _write_lazily(table, self._interval)
        with self._in_progress.lock:
            if self._in_progress.pop(key) is not None:
                _write_lazily(self._in_progress, self._interval)

    def processed_rows(self) -> list[ProcessedRow]:
        """Every processed row: the consolidated file, files of other or earlier threads
        and runs, and this registry's own per-thread tables (nothing is consolidated)."""
        with self._processed_lock:
            owned = {table.path: table for table in self._thread_tables.values()}
            rows = read_table(ProcessedRow, self._paths.processed)
            for path in self._per_thread_files():
                if path not in owned:
                    rows.extend(read_table(ProcessedRow, path))
            for table in owned.values():
                rows.extend(table.rows())
            return rows

    def per_thread_files(self) -> list[Path]:
        """The per-thread and rotated processed files of this topic and group now on
        disk: ours, and OpenMSIStream's that cannot be another pair's."""
        return self._per_thread_files()

    def consolidate(self) -> int:
        """Move the rows of every per-thread/rotated processed file into the consolidated
        file, check it, delete the merged files. Returns how many files were merged."""
        with ExitStack() as stack:
            stack.enter_context(self._processed_lock)
            owned = list(self._thread_tables.values())
            for table in owned:
                stack.enter_context(table.lock)
            _flush_all(owned)
            files = sorted(self._per_thread_files(), key=_mtime_then_name)
            if not files:
                return 0
            main: DataclassTable[ProcessedRow] = DataclassTable(ProcessedRow, self._paths.processed)
            n_merged = _merge_files(main, files)
            for table in owned:
                if not table.path.exists():
                    table.clear()
                    table.dirty = False
            return n_merged

    def start(self) -> None:
        """Start the timer that writes out dirty tables every ``flush_interval`` s."""
        self._timer.start()

    def flush(self) -> None:
        """Write every table changed since its last write: the processed tables first,
        then the in-progress table, so that a file whose in-progress row a flush removes
        is in a processed file on disk already (unless it was processed meanwhile)."""
        with self._processed_lock:
            tables: list[DataclassTable[Any]] = list(self._thread_tables.values())
        tables.append(self._in_progress)
        _flush_all(tables)

    def close(self) -> None:
        """Stop the timer, write everything and consolidate the processed files."""
        if self._closed:
            return
        self._timer.stop()
        self.flush()
        self.consolidate()
        self._closed = True

    def __enter__(self) -> StreamRegistry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------

    def _per_thread_files(self) -> list[Path]:
        ours = self._paths.processed_pattern
        upstream = self._paths.legacy_processed_pattern
        found = []
        with os.scandir(self._paths.logs_dir) as entries:
            for entry in entries:
                if ours.match(entry.name):
                    if entry.is_file():
                        found.append(Path(entry.path))
                elif upstream.match(entry.name) and entry.is_file():
                    path = Path(entry.path)
                    foreign = self._foreign_sign(path)
                    if foreign is None:
                        found.append(path)
                    else:
                        self._warn_foreign(path, *foreign, "merging")
        return sorted(found)

    def _thread_table(self) -> DataclassTable[ProcessedRow]:
        """The calling thread's processed table, rotated first if it is full."""
        ident = threading.get_ident()
        with self._processed_lock:
            table = self._thread_tables.get(ident)
            if table is None:
                path = self._paths.processed_for_thread(ident)
                table = DataclassTable(ProcessedRow, path)
                self._thread_tables[ident] = table
            if len(table) >= self._max_rows:
                table = self._rotate(ident, table)
            return table

    def _rotate(
        self, ident: int, table: DataclassTable[ProcessedRow]
    ) -> DataclassTable[ProcessedRow]:
        with table.lock:
            try:
                table.flush()
                if table.path.exists():
                    target = table.path.with_name(
                        f"{table.path.stem}_{_rotation_suffix()}{table.path.suffix}"
                    )
                    while target.exists():
                        time.sleep(0.001)
                        target = table.path.with_name(
                            f"{table.path.stem}_{_rotation_suffix()}{table.path.suffix}"
                        )
                    os.replace(table.path, target)
            except OSError as exc:
                _LOG.warning("could not rotate %s (keeps growing): %s", table.path, exc)
                return table
        fresh: DataclassTable[ProcessedRow] = DataclassTable(ProcessedRow, table.path, load=False)
        self._thread_tables[ident] = fresh
        return fresh


def _mtime_then_name(path: Path) -> tuple[int, str]:
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    return (mtime, path.name)


# --------------------------------------------------------------------------- producer side


@dataclass(frozen=True)
class ProducerRegistryPaths:
    """Where a :class:`ProducerRegistry` keeps its files."""

    logs_dir: Path
    #: ``upload_to_<topic>_in_progress.csv`` (created at start, as upstream does).
    in_progress: Path
    #: ``uploaded_to_<topic>.csv``.
    completed: Path
    #: ``upload_to_<topic>_versions.jsonl``, the upload directory's own version log.
    versions: Path
    #: Matches OpenMSIStream's per-producer names of this topic (and, possibly, the
    #: completed file of a topic named ``<topic>_p<hex>``: see :class:`ProducerRegistry`).
    upstream_per_producer_pattern: re.Pattern[str]


class ProducerRegistry:
    """The upload-directory producer's registry of partly and fully delivered files.

    ``upload_to_<topic>_in_progress.csv`` holds one row per file with chunks still to
    deliver; ``uploaded_to_<topic>.csv`` one row per completed upload (a file uploaded
    twice has two rows). Unlike upstream there are no per-producer completed files;
    upstream's (``uploaded_to_<topic>_p<id>[_<ts>].csv``) found at start are merged
    into the completed file and deleted, as upstream itself would -- except that such a
    name is also the completed file of topic ``<topic>_p<id>[_<ts>]``: a file is left
    alone (with a warning) when that topic's in-progress file or version log exists.
    Every registry, upstream's and ours, creates its in-progress file at start, before
    it can write a completed file, so that file marks the topic as present.
    """

    def __init__(
        self,
        logs_dir: Path,
        topic: str,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        _check_name_part("topic", topic)
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        logs_dir = Path(logs_dir)
        logs_dir.mkdir(parents=True, exist_ok=True)
        self.topic = topic
        self._interval = flush_interval
        self._paths = ProducerRegistryPaths(
            logs_dir=logs_dir,
            in_progress=logs_dir / f"upload_to_{topic}_in_progress.csv",
            completed=logs_dir / f"uploaded_to_{topic}.csv",
            versions=logs_dir / f"upload_to_{topic}_versions.jsonl",
            upstream_per_producer_pattern=re.compile(
                rf"^uploaded_to_{re.escape(topic)}_p[0-9a-f]+(_\d+_\d+)?\.csv$", re.DOTALL
            ),
        )
        _remove_torn_writes(logs_dir, [self._paths.in_progress.name, self._paths.completed.name])
        self._in_progress: DataclassTable[UploadInProgressRow] = DataclassTable(
            UploadInProgressRow, self._paths.in_progress, key=_row_key
        )
        if not self._paths.in_progress.exists():
            self._in_progress.write()
        self._completed: DataclassTable[UploadedRow] = DataclassTable(
            UploadedRow, self._paths.completed
        )
        upstream_files = sorted(
            (
                path
                for path in logs_dir.iterdir()
                if self._paths.upstream_per_producer_pattern.match(path.name)
                and path.is_file()
                and self._is_per_producer_file(path)
            ),
            key=_mtime_then_name,
        )
        if upstream_files:
            _merge_files(self._completed, upstream_files)
        self._completed_keys = {_row_key(row) for row in self._completed.rows()}
        self._timer = _FlushTimer(self.flush, flush_interval, f"registry-flush-{topic}")
        self._closed = False

    @property
    def paths(self) -> ProducerRegistryPaths:
        return self._paths

    def _is_per_producer_file(self, path: Path) -> bool:
        """False if ``path`` may be the completed file of the topic its name spells."""
        other = path.name[len("uploaded_to_") : -len(".csv")]
        for sign in (
            self._paths.logs_dir / f"upload_to_{other}_in_progress.csv",
            self._paths.logs_dir / f"upload_to_{other}_versions.jsonl",
        ):
            if _is_file(sign):
                _LOG.warning(
                    "not merging %s into %s: it is also the completed file of topic %r, "
                    "which has used this directory (%s exists)",
                    path,
                    self._paths.completed,
                    other,
                    sign.name,
                )
                return False
        return True

    def register_started(self, rel_filepath: str, filename: str, n_chunks: int) -> None:
        """Record that the file's ``n_chunks`` chunks are about to be sent (written at
        once). A row with the same chunk count is kept, so a resumed upload keeps its
        delivered chunks; a different count starts the row over (a new version)."""
        key = _rel_key(rel_filepath)
        table = self._in_progress
        with table.lock:
            row = table.get(key)
            if row is not None and row.n_chunks == n_chunks:
                return
            table.add(_new_upload_row(key, filename, n_chunks))
            _write_logged(table)

    def restart_file(self, rel_path: str) -> None:
        """Forget the delivered chunks of an older version of the file, so that the next
        :meth:`register_started` starts it over: that method keeps a row whose chunk
        count matches (to resume), which would be wrong for a changed file that happens
        to have as many chunks. The row is dropped and the table written at once; a
        failed write is logged and left to the flush timer (or close) to retry."""
        key = _rel_key(rel_path)
        table = self._in_progress
        with table.lock:
            if table.pop(key) is None:
                return
            try:
                table.write()
            except OSError as exc:
                _LOG.warning(
                    "could not write %s after restarting %s (will retry): %s",
                    table.path,
                    key,
                    exc,
                )

    def register_chunk_delivered(
        self, rel_filepath: str, filename: str, n_chunks: int, chunk_i: int
    ) -> None:
        """Record the broker's ack of chunk ``chunk_i`` (1-based). When every chunk is
        delivered the row moves to the completed table (both written at once)."""
        if not 1 <= chunk_i <= n_chunks:
            raise ValueError(f"chunk_i {chunk_i} is not in 1..{n_chunks}")
        key = _rel_key(rel_filepath)
        table = self._in_progress
        with table.lock:
            row = table.get(key)
            new_row = row is None or row.n_chunks != n_chunks
            if row is None or row.n_chunks != n_chunks:
                row = _new_upload_row(key, filename, n_chunks)
                table.add(row)
            if chunk_i in row.chunks_delivered:
                return
            row.chunks_delivered.add(chunk_i)
            row.chunks_to_send.discard(chunk_i)
            row.n_chunks_delivered = len(row.chunks_delivered)
            row.n_chunks_to_send = len(row.chunks_to_send)
            table.mark_dirty()
            if row.chunks_to_send:
                if new_row:
                    _write_logged(table)
                else:
                    try:
                        table.flush_if_older_than(self._interval)
                    except OSError as exc:
                        _LOG.warning("could not write %s (will retry): %s", table.path, exc)
                return
            with self._completed.lock:
                self._completed.add(UploadedRow(filename, Path(key), n_chunks, row.started, _now()))
                self._completed_keys.add(key)
                _write_logged(self._completed)
            table.pop(key)
            _write_logged(table)

    def chunks_to_send(self, rel_filepath: str) -> set[int]:
        """The chunk indices of an in-progress file not yet delivered (empty if the file
        has no in-progress row: either completed or never started)."""
        with self._in_progress.lock:
            row = self._in_progress.get(_rel_key(rel_filepath))
            return set(row.chunks_to_send) if row is not None else set()

    def in_progress_rows(self) -> list[UploadInProgressRow]:
        return self._in_progress.rows()

    def completed_rows(self) -> list[UploadedRow]:
        return self._completed.rows()

    def is_completed(self, rel_filepath: str) -> bool:
        """True if an upload of the file completed and no newer one is in progress."""
        key = _rel_key(rel_filepath)
        with self._in_progress.lock, self._completed.lock:
            return key in self._completed_keys and key not in self._in_progress

    def start(self) -> None:
        self._timer.start()

    def flush(self) -> None:
        _flush_all([self._in_progress, self._completed])

    def close(self) -> None:
        if self._closed:
            return
        self._timer.stop()
        self.flush()
        self._closed = True

    def __enter__(self) -> ProducerRegistry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _new_upload_row(key: str, filename: str, n_chunks: int) -> UploadInProgressRow:
    return UploadInProgressRow(
        filename=filename,
        rel_filepath=Path(key),
        n_chunks=n_chunks,
        n_chunks_delivered=0,
        n_chunks_to_send=n_chunks,
        started=_now(),
        chunks_delivered=set(),
        chunks_to_send=set(range(1, n_chunks + 1)),
    )
