"""The stream processor's registry: files in progress or failed, and files processed."""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from . import cells
from .base import DEFAULT_FLUSH_INTERVAL, RegistryBase, check_arguments, rel_key, row_key
from .names import (
    NameReading,
    StreamRegistryPaths,
    claim_shared_names,
    foreign_sign,
    stream_registry_paths,
)
from .table import (
    DataclassTable,
    flush_all,
    merge_files,
    mtime_then_name,
    read_table,
    write_lazily,
    write_logged,
)

# One logger for the whole package: its name is in every JSON log line.
_LOG = logging.getLogger("s3transfer_stream.registry")

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


class StreamRegistry(RegistryBase[StreamRegistryPaths, InProgressRow]):
    """The stream processor's registry of in-progress, failed and processed files.

    Files in ``logs_dir``, for consumer group ``group_id`` on ``topic``:

    * ``consuming_from_<topic>_by_<group>_in_progress.csv`` (one row per file not yet
      in the bucket, status ``in_progress``, ``failed`` or ``mismatched_hash``). At
      start the upstream 1.8.x name ``consuming_from_<topic>_in_progress_by_<group>.csv``
      is read too, when it is newer than ours, and its rows merged (that file itself
      is never changed);
    * ``s3transfer-stream_processed_<T>_by_<G>_t<thread ident>.csv`` (``<T>``, ``<G>``:
      the topic and group percent-encoded, see :mod:`.names`), one per thread
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
        check_arguments((("topic", topic), ("consumer group id", group_id)), flush_interval)
        if max_rows_per_file < 1:
            raise ValueError(f"max_rows_per_file must be >= 1, got {max_rows_per_file}")
        logs_dir = Path(logs_dir)
        paths, shared = stream_registry_paths(logs_dir, topic, group_id)
        super().__init__(logs_dir, topic, flush_interval, paths)
        self.group_id = group_id
        self._max_rows = max_rows_per_file
        self._warned: set[Path] = set()
        claim_shared_names(paths, topic, group_id, shared)
        table = self._open_in_progress(
            InProgressRow,
            paths.in_progress,
            [paths.in_progress.name, paths.processed.name],
            paths.processed_pattern,
        )
        if self._merge_legacy_in_progress() or not paths.in_progress.exists():
            table.write()
        self._rerun = sorted(row.rel_filepath.as_posix() for row in table.rows())
        self._processed_lock = threading.RLock()
        self._thread_tables: dict[int, DataclassTable[ProcessedRow]] = {}
        self.consolidate()

    # -- setup ---------------------------------------------------------------

    def _foreign_sign(self, path: Path) -> tuple[NameReading, Path] | None:
        return foreign_sign(self._paths.logs_dir, (self.topic, self.group_id), path)

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
                current = self._in_progress.get(row_key(row))
                if current is None or row.most_recent_message > current.most_recent_message:
                    self._in_progress.add(row)
        _LOG.info("merged in-progress rows of %s into %s", legacy, self._paths.in_progress)
        return True

    # -- public API ----------------------------------------------------------

    def rerun_paths(self) -> list[str]:
        """Relative paths (POSIX) of the files in progress or failed when this registry
        was opened: the files a new run must read again."""
        return list(self._rerun)

    def register_in_progress(self, rel_filepath: str, filename: str, n_chunks: int) -> None:
        """Record that a chunk of the file arrived (written lazily, like every change
        but failures: see the class docstring)."""
        key = rel_key(rel_filepath)
        now = cells.now()
        table = self._in_progress
        with table.lock:
            row = table.get(key)
            if row is None:
                table.add(InProgressRow(filename, Path(key), IN_PROGRESS, n_chunks, now, now))
                write_lazily(table, self._interval)
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
                write_lazily(table, self._interval)

    def register_failed(
        self, rel_filepath: str, filename: str, n_chunks: int, status: str = FAILED
    ) -> None:
        """Record that the file failed (``failed``) or its hash did not match
        (``mismatched_hash``); written at once. The next run re-reads it."""
        if status not in _FAILED_STATUSES:
            raise ValueError(f"status must be one of {_FAILED_STATUSES}, got {status!r}")
        key = rel_key(rel_filepath)
        now = cells.now()
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
            write_logged(table)

    def mark_waiting(self, rel_filepath: str, filename: str, n_chunks: int) -> None:
        """Status ``waiting_for_chunks``: the file cannot complete from what this process
        reads (its remaining chunks are elsewhere or not produced yet)."""
        key = rel_key(rel_filepath)
        now = cells.now()
        with self._in_progress.lock:
            row = self._in_progress.get(key)
            if row is None:
                self._in_progress.add(
                    InProgressRow(filename, Path(key), WAITING, n_chunks, now, now)
                )
            else:
                row.status = WAITING
                self._in_progress.mark_dirty()
            write_logged(self._in_progress)

    def discard_in_progress(self, rel_filepath: str, *, started_by: datetime) -> bool:
        """Removes the in-progress row of a file known to be transferred (a crash came
        between recording it as processed and writing out the removal of this row), or
        accounted for otherwise (written lazily). A row for an instance first seen after
        ``started_by`` is newer and stays."""
        key = rel_key(rel_filepath)
        with self._in_progress.lock:
            row = self._in_progress.get(key)
            if row is None or row.first_message > started_by.replace(microsecond=0):
                return False
            self._in_progress.pop(key)
            write_lazily(self._in_progress, self._interval)
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
        key = rel_key(rel_filepath)
        now = cells.now() if processed_at is None else processed_at.replace(microsecond=0)
        if first_message is None:
            with self._in_progress.lock:
                current = self._in_progress.get(key)
                first_message = current.first_message if current is not None else now
        row = ProcessedRow(filename, Path(key), n_chunks, first_message, now)
        table = self._thread_table()
        with table.lock:
            table.add(row)
            write_lazily(table, self._interval)
        with self._in_progress.lock:
            if self._in_progress.pop(key) is not None:
                write_lazily(self._in_progress, self._interval)

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
            flush_all(owned)
            files = sorted(self._per_thread_files(), key=mtime_then_name)
            if not files:
                return 0
            main: DataclassTable[ProcessedRow] = DataclassTable(ProcessedRow, self._paths.processed)
            n_merged = merge_files(main, files)
            for table in owned:
                if not table.path.exists():
                    table.clear()
                    table.dirty = False
            return n_merged

    # -- internals -----------------------------------------------------------

    def _tables(self) -> list[DataclassTable[Any]]:
        """The processed tables first, then the in-progress table, so that a file whose
        in-progress row a flush removes is in a processed file on disk already (unless
        it was processed meanwhile)."""
        with self._processed_lock:
            tables: list[DataclassTable[Any]] = list(self._thread_tables.values())
        tables.append(self._in_progress)
        return tables

    def _finish(self) -> None:
        """Consolidate the processed files."""
        self.consolidate()

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


def _rotation_suffix() -> str:
    return str(datetime.now().timestamp()).replace(".", "_")
