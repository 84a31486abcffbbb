"""The upload-directory producer's registry: files partly and fully delivered."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from . import cells
from .base import DEFAULT_FLUSH_INTERVAL, RegistryBase, check_arguments, rel_key, row_key
from .names import ProducerRegistryPaths, is_per_producer_file, producer_registry_paths
from .table import DataclassTable, merge_files, mtime_then_name, write_lazily

# One logger for the whole package: its name is in every JSON log line.
_LOG = logging.getLogger("s3transfer_stream.registry")


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


class ProducerRegistry(RegistryBase[ProducerRegistryPaths, UploadInProgressRow]):
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
        check_arguments((("topic", topic),), flush_interval)
        logs_dir = Path(logs_dir)
        paths = producer_registry_paths(logs_dir, topic)
        super().__init__(logs_dir, topic, flush_interval, paths)
        table = self._open_in_progress(
            UploadInProgressRow, paths.in_progress, [paths.in_progress.name, paths.completed.name]
        )
        if not paths.in_progress.exists():
            table.write()
        self._completed: DataclassTable[UploadedRow] = DataclassTable(UploadedRow, paths.completed)
        upstream_files = sorted(
            (
                path
                for path in logs_dir.iterdir()
                if paths.upstream_per_producer_pattern.match(path.name)
                and path.is_file()
                and is_per_producer_file(logs_dir, path, paths.completed)
            ),
            key=mtime_then_name,
        )
        if upstream_files:
            merge_files(self._completed, upstream_files)
        self._completed_keys = {row_key(row) for row in self._completed.rows()}

    def register_started(self, rel_filepath: str, filename: str, n_chunks: int) -> None:
        """Record that the file's ``n_chunks`` chunks are about to be sent. A row with
        the same chunk count is kept, so a resumed upload keeps its delivered chunks; a
        different count starts the row over (a new version).

        Like every change but :meth:`restart_file`'s, it reaches the file within
        ``flush_interval`` (and at ``flush()``/``close()``), not at once: writing the
        tables on each start and completion made the cost of a file grow with the
        completed table (19 CPU-ms per file over 1000 files, ``benches/producers.py``).
        After a crash a file whose rows were not written yet is sent again, in full or
        its missing chunks: duplicates the processor recognises, never a loss."""
        key = rel_key(rel_filepath)
        table = self._in_progress
        with table.lock:
            row = table.get(key)
            if row is not None and row.n_chunks == n_chunks:
                return
            table.add(_new_upload_row(key, filename, n_chunks))
            write_lazily(table, self._interval)

    def restart_file(self, rel_path: str) -> None:
        """Forget the delivered chunks of an older version of the file, so that the next
        :meth:`register_started` starts it over: that method keeps a row whose chunk
        count matches (to resume), which would be wrong for a changed file that happens
        to have as many chunks. The row is dropped and the table written at once; a
        failed write is logged and left to the flush timer (or close) to retry."""
        key = rel_key(rel_path)
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
        delivered the row moves to the completed table (both written as in
        :meth:`register_started`)."""
        if not 1 <= chunk_i <= n_chunks:
            raise ValueError(f"chunk_i {chunk_i} is not in 1..{n_chunks}")
        key = rel_key(rel_filepath)
        table = self._in_progress
        with table.lock:
            row = table.get(key)
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
            if not row.chunks_to_send:
                table.pop(key)
                with self._completed.lock:
                    self._completed.add(
                        UploadedRow(filename, Path(key), n_chunks, row.started, cells.now())
                    )
                    self._completed_keys.add(key)
            write_lazily(table, self._interval)
            if not row.chunks_to_send:
                write_lazily(self._completed, self._interval)

    def chunks_to_send(self, rel_filepath: str) -> set[int]:
        """The chunk indices of an in-progress file not yet delivered (empty if the file
        has no in-progress row: either completed or never started)."""
        with self._in_progress.lock:
            row = self._in_progress.get(rel_key(rel_filepath))
            return set(row.chunks_to_send) if row is not None else set()

    def completed_rows(self) -> list[UploadedRow]:
        return self._completed.rows()

    def is_completed(self, rel_filepath: str) -> bool:
        """True if an upload of the file completed and no newer one is in progress."""
        key = rel_key(rel_filepath)
        with self._in_progress.lock, self._completed.lock:
            return key in self._completed_keys and key not in self._in_progress

    # -- internals -----------------------------------------------------------

    def _tables(self) -> list[DataclassTable[Any]]:
        return [self._in_progress, self._completed]


def _new_upload_row(key: str, filename: str, n_chunks: int) -> UploadInProgressRow:
    return UploadInProgressRow(
        filename=filename,
        rel_filepath=Path(key),
        n_chunks=n_chunks,
        n_chunks_delivered=0,
        n_chunks_to_send=n_chunks,
        started=cells.now(),
        chunks_delivered=set(),
        chunks_to_send=set(range(1, n_chunks + 1)),
    )
