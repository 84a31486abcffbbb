"""What the stream and producer registries share: opening, the flush timer, closing."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path, PurePath, PurePosixPath
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from .names import check_name_part
from .table import DataclassTable, FlushTimer, flush_all, remove_torn_writes

#: A table changed in memory reaches its file within this many seconds (upstream's
#: ``UPDATE_FILE_EVERY``).
DEFAULT_FLUSH_INTERVAL = 5.0

PathsT = TypeVar("PathsT")
InProgressT = TypeVar("InProgressT")


def rel_key(rel_filepath: str | PurePath) -> str:
    """The table key of a relative path: POSIX form without ``.`` parts."""
    text = rel_filepath.as_posix() if isinstance(rel_filepath, PurePath) else rel_filepath
    key = PurePosixPath(text).as_posix()
    if key in ("", "."):
        raise ValueError(f"not a relative file path: {rel_filepath!r}")
    return key


def row_key(row: Any) -> str:
    return rel_key(row.rel_filepath)


def check_arguments(name_parts: Iterable[tuple[str, str]], flush_interval: float) -> None:
    """Refuse bad names and intervals before the directory is touched."""
    for what, value in name_parts:
        check_name_part(what, value)
    if flush_interval <= 0:
        raise ValueError(f"flush_interval must be positive, got {flush_interval}")


class RegistryBase(Generic[PathsT, InProgressT]):
    """A registry of one topic: an in-progress table keyed by relative path, more
    tables the subclass adds, and a timer writing the changed ones every
    ``flush_interval`` seconds between :meth:`start` and :meth:`close`.

    Subclasses check their arguments with :func:`check_arguments` before calling
    ``__init__`` (which creates ``logs_dir``), and say in :meth:`_tables` what a
    flush writes, in which order.
    """

    _in_progress: DataclassTable[InProgressT]

    def __init__(self, logs_dir: Path, topic: str, flush_interval: float, paths: PathsT) -> None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        self.topic = topic
        self._interval = flush_interval
        self._paths = paths
        self._timer = FlushTimer(self.flush, flush_interval, f"registry-flush-{topic}")
        self._closed = False

    def _open_in_progress(
        self,
        row_type: type[InProgressT],
        path: Path,
        torn: list[str],
        torn_pattern: re.Pattern[str] | None = None,
    ) -> DataclassTable[InProgressT]:
        """Remove the torn writes of the tables named ``torn`` (and matching
        ``torn_pattern``), then load the in-progress table at ``path``."""
        remove_torn_writes(path.parent, torn, torn_pattern)
        table: DataclassTable[InProgressT] = DataclassTable(row_type, path, key=row_key)
        self._in_progress = table
        return table

    @property
    def paths(self) -> PathsT:
        return self._paths

    def in_progress_rows(self) -> list[InProgressT]:
        return self._in_progress.rows()

    def start(self) -> None:
        """Start the timer that writes out dirty tables every ``flush_interval`` s."""
        self._timer.start()

    def flush(self) -> None:
        """Write every table changed since its last write (see :meth:`_tables`); raise
        the first error after trying them all."""
        flush_all(self._tables())

    def close(self) -> None:
        """Stop the timer, write everything, then :meth:`_finish`."""
        if self._closed:
            return
        self._timer.stop()
        self.flush()
        self._finish()
        self._closed = True

    def _tables(self) -> list[DataclassTable[Any]]:
        """The tables a flush writes, in that order."""
        raise NotImplementedError

    def _finish(self) -> None:
        """What :meth:`close` does after the last flush."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
