"""The watcher and scheduler of ``DataFileUploadDirectory``: which files to send, and when.

It finds files (filesystem events from watchdog, and a scan of the tree at start),
keeps each one's quiet-time clock in :class:`~.state.UploadStates`, hands a file to the
workers once no event touched it for ``watchdog_lag_time`` seconds, and decides there
whether it is to be sent at all: eligible, still a regular file, a name chunk messages
can carry, and not uploaded before unless it changed since.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from ..logs import get_logger
from ..registry import ProducerRegistry
from .paths import LOGS_SUBDIR, is_eligible
from .state import UploadStates
from .versions import FileVersion, VersionLog

__all__ = ["Watcher"]


class Watcher:
    """Finds the files under ``root`` to send and submits each when it is ready."""

    def __init__(
        self,
        root: Path,
        *,
        upload_regex: re.Pattern[str] | None,
        lag: float,
        use_polling_observer: bool,
        states: UploadStates,
        registry: ProducerRegistry,
        versions: VersionLog,
    ) -> None:
        self.root = root
        self.upload_regex = upload_regex
        self.lag = lag
        self.use_polling_observer = use_polling_observer
        self.states = states
        self.registry = registry
        self.versions = versions
        self._observer: Any = None
        self._log = get_logger()

    # ---------------------------------------------------------------- finding files

    def _rel(self, path: str | os.PathLike[str]) -> str | None:
        try:
            relative = Path(os.path.abspath(path)).relative_to(self.root)
        except ValueError:
            return None
        return relative.as_posix() if relative.parts else None

    def note_path(self, path: str | os.PathLike[str], when: float | None = None) -> None:
        """A file was created or changed: (re)start its quiet-time clock."""
        rel = self._rel(path)
        if rel is None or not is_eligible(rel, self.upload_regex):
            return
        self.states.note_event(rel, time.monotonic() if when is None else when)

    def forget_path(self, path: str | os.PathLike[str]) -> None:
        """A file was deleted or moved away: do not send it."""
        rel = self._rel(path)
        if rel is not None:
            self.states.forget_event(rel)

    def scan(self, directory: Path, *, initial: bool = False) -> None:
        """Note every eligible file under ``directory`` (skipping LOGS and hidden dirs).

        At start, a file last modified more than the lag time ago is ready at once."""
        now_wall = time.time()
        now = time.monotonic()
        for current, dirnames, filenames in os.walk(directory):
            base = Path(current)
            rel_dir = self._rel(base)
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(".") and not (rel_dir is None and d == LOGS_SUBDIR)
            ]
            for name in filenames:
                path = base / name
                if not initial:
                    self.note_path(path)
                    continue
                try:
                    age = now_wall - path.stat().st_mtime
                except OSError:
                    continue
                self.note_path(path, now - min(max(age, 0.0), self.lag + 1.0))

    def start_observer(self) -> None:
        observer: Any = PollingObserver(timeout=1.0) if self.use_polling_observer else Observer()
        observer.schedule(_EventHandler(self), str(self.root), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()

    def join_observer(self) -> None:
        if self._observer is not None:
            self._observer.join(timeout=10)

    # ---------------------------------------------------------------- scheduling

    def schedule(
        self, submit: Callable[[str], None], stopping: threading.Event, interval: float
    ) -> None:
        """Until ``stopping`` is set, every ``interval`` s: submit the files whose
        quiet time passed (each one once, until a worker releases it)."""
        while not stopping.wait(interval):
            try:
                for rel in self.states.take_ready(time.monotonic(), self.lag):
                    submit(rel)
            except Exception:
                self._log.exception("error while looking for files to upload")

    def examine(self, rel: str) -> os.stat_result | None:
        """The file's status if it is to be sent now; else None, and it is released."""
        path = self.root / rel
        before: os.stat_result | None = None
        if is_eligible(rel, self.upload_regex):
            try:
                before = path.stat()
            except OSError:
                pass
        if before is None or not stat.S_ISREG(before.st_mode):
            self.states.release(rel)
            return None
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            self._log.error(f"cannot upload {path!r}: its name is not valid UTF-8")
            self.states.refused(rel)
            return None
        self.states.found(rel)
        if self.registry.is_completed(rel) and self._unchanged(rel, before):
            self._log.debug(f"{rel} was uploaded before and has not changed since; skipped")
            self.states.skipped(rel)
            return None
        return before

    def _unchanged(self, rel: str, st: os.stat_result) -> bool:
        """A completed file is skipped unless it was modified since it was sent."""
        previous: FileVersion | None = self.versions.get(rel)
        if previous is not None:
            return previous.size == st.st_size and previous.mtime_ns == st.st_mtime_ns
        completed = self.states.completed_at(rel)
        return completed is not None and not _modified_after(st, completed)


def _modified_after(st: os.stat_result, completed: datetime) -> bool:
    """Whether a file's mtime is after a completion time of whole seconds (local)."""
    return st.st_mtime >= completed.timestamp() + 1.0


class _EventHandler(FileSystemEventHandler):
    """Watchdog event handler feeding a :class:`Watcher`."""

    _IGNORED = frozenset({"opened", "closed_no_write"})

    def __init__(self, watcher: Watcher) -> None:
        super().__init__()
        self._watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind in self._IGNORED:
            return
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if getattr(event, "dest_path", "") else ""
        watcher = self._watcher
        if event.is_directory:
            if kind in ("created", "moved"):
                target = Path(dest if kind == "moved" else src)
                if target.is_dir():
                    watcher.scan(target)
            return
        if kind == "deleted":
            watcher.forget_path(src)
        elif kind == "moved":
            watcher.forget_path(src)
            if dest:
                watcher.note_path(dest)
        else:  # created, modified, closed (after writing), attrib
            watcher.note_path(src)
