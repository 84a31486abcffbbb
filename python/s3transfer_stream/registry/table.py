"""A registry table: rows of one dataclass in memory, mirrored to one CSV file.

The files use OpenMSIStream's ``DataclassTable`` CSV layout so that either program
can read what the other wrote (see ``docs/compatibility.md``, "Registry files"):

* UTF-8, ``;`` as delimiter, ``"`` as quote character, minimal quoting;
* line 1 is the field names joined by ``;`` (a Windows ``sep=;`` line before it is skipped);
* every cell is the Python ``repr()`` of the value (see :mod:`.cells`);
* lines are joined with ``\\n`` and there is no newline after the last one.

Differences from upstream, all invisible to a reader of the files:

* every write is atomic (temp file in the same directory, fsync, ``os.replace``),
  so a copy of a file taken at any moment is a complete table, and the temp files a
  crash leaves are removed at the next start (:func:`remove_torn_writes`);
* as upstream, a change does not rewrite its table each time: a changed table is
  written when it was not written for ``flush_interval`` (:func:`write_lazily`), and,
  unlike upstream, also by a :class:`FlushTimer` and at ``flush()`` / ``close()`` of
  the registry, so a file is never more than ``flush_interval`` behind memory even
  when nothing else changes, and the cost of a change does not grow with the table;
* merged files are deleted only once the table holding their rows has been read
  back from disk as written (:func:`merge_files`).
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

from .. import failpoints
from ..errors import S3TransferStreamError
from .cells import columns, header

# One logger for the whole package: its name is in every JSON log line.
_LOG = logging.getLogger("s3transfer_stream.registry")

RowT = TypeVar("RowT")


class RegistryError(S3TransferStreamError, ValueError):
    """A registry file cannot be read (wrong header, bad cell) or written consistently."""


def render_table(row_type: type[RowT], rows: Iterable[RowT]) -> str:
    """The full text of a table file holding ``rows`` (no trailing newline)."""
    codecs = columns(row_type)
    buffer = io.StringIO()
    writer = csv.writer(
        buffer, delimiter=";", quoting=csv.QUOTE_MINIMAL, quotechar='"', lineterminator="\n"
    )
    for row in rows:
        writer.writerow([column.encode(getattr(row, column.name)) for column in codecs])
    body = buffer.getvalue()
    first = header(row_type)
    # csv.writer ends every row with "\n"; the format has no newline after the last line.
    return first + "\n" + body[:-1] if body else first


def parse_table(row_type: type[RowT], text: str, source: str) -> list[RowT]:
    """The rows of a table file's ``text``; ``source`` names the file in errors."""
    codecs = columns(row_type)
    expected = header(row_type)
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
        if len(cells) != len(codecs):
            raise RegistryError(
                f"{source}, line {line}: {len(cells)} cells, expected {len(codecs)} ({expected})"
            )
        values: dict[str, Any] = {}
        for index, column in enumerate(codecs):
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


def remove_torn_writes(
    directory: Path, names: list[str], pattern: re.Pattern[str] | None = None
) -> None:
    """Deletes temp files a crash inside :func:`write_atomic` left behind for these tables
    (the table itself is intact: the rename never happened)."""
    for tmp in directory.glob(".*.tmp"):
        base = tmp.name[1:].rsplit(".", 2)[0]
        if base in names or (pattern is not None and pattern.match(base)):
            try:
                tmp.unlink()
            except OSError:
                pass


def write_atomic(path: Path, text: str) -> None:
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
            write_atomic(self.path, self.render())
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


def write_logged(table: DataclassTable[Any]) -> None:
    """A forced write that must not break the caller: on failure the table stays dirty
    and the flush timer (or close) tries again."""
    try:
        table.write()
    except OSError as exc:
        _LOG.warning("could not write %s (will retry): %s", table.path, exc)


def write_lazily(table: DataclassTable[Any], interval: float) -> None:
    """After a change: write the table only if it was not written for ``interval``
    seconds (else the flush timer, ``flush()`` or ``close()`` does). Never raises
    for a failed write: the table stays dirty and is tried again."""
    try:
        table.flush_if_older_than(interval)
    except OSError as exc:
        _LOG.warning("could not write %s (will retry): %s", table.path, exc)


def flush_all(tables: Iterable[DataclassTable[Any]]) -> None:
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


def mtime_then_name(path: Path) -> tuple[int, str]:
    """Sort key for files to merge: oldest first, so merged rows keep their order."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    return (mtime, path.name)


def merge_files(main: DataclassTable[RowT], files: list[Path]) -> int:
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


class FlushTimer:
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
