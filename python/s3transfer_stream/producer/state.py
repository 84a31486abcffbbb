"""What a ``DataFileUploadDirectory`` run knows of each file: one record per file.

The registry (``LOGS/``) says which chunks the broker acknowledged, across runs. This
says, for this run, where each file is in its way through the uploader -- waiting for
its quiet time, queued for a worker, being sent (which version, which chunks are still
unacknowledged) -- and what became of it. The watcher and the sender change it only
through :class:`UploadStates`, under its one lock, so no two views of a file can
disagree, and the counts the ``check`` command, the metrics and the heartbeats report
are read from it.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .versions import FileVersion

__all__ = ["FileState", "Job", "Outcome", "Phase", "UploadStates", "UploaderStatus"]


class Phase(enum.Enum):
    """Where a file is in the uploader's hands."""

    #: Nothing to do now: never looked at, skipped, uploaded, failed or given up.
    IDLE = "idle"
    #: Handed to a worker: being checked and hashed.
    QUEUED = "queued"
    #: Its chunks are being produced or waiting for the broker's acknowledgement.
    SENDING = "sending"


class Outcome(enum.Enum):
    """How the sending of one version ended."""

    UPLOADED = "uploaded"
    #: Stopped to be sent again (it changed, or could not be produced).
    ABORTED = "aborted"
    #: Given up in this run; the registry keeps it in progress for the next one.
    FAILED = "failed"


@dataclass
class Job:
    """One version of one file being sent."""

    rel: str
    filename: str
    path: Path
    version: FileVersion
    remaining: set[int]
    n_to_send: int
    #: Its ``_core.FileChunker``, closed after the first pass: it reads a chunk
    #: to resend again and checks it against the hashes of that pass.
    chunker: Any = None
    attempts: dict[int, int] = field(default_factory=dict)
    aborted: bool = False
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def chunk_bytes(self, chunk_i: int) -> int:
        """Bytes of file data in chunk ``chunk_i``."""
        v = self.version
        if chunk_i < v.n_chunks:
            return v.chunk_size
        return v.size - (v.n_chunks - 1) * v.chunk_size


@dataclass(slots=True)
class FileState:
    """What this run knows of one file (by its path relative to the upload directory)."""

    rel: str
    phase: Phase = Phase.IDLE
    #: Monotonic time of the last filesystem event not yet acted on: the file waits
    #: for its quiet time (it may be being sent meanwhile: it is looked at again after).
    event_at: float | None = None
    #: The version being sent, while :attr:`phase` is SENDING.
    job: Job | None = None
    #: A worker looked at it in this run (``files_found``).
    found: bool = False
    #: Its last attempt in this run failed.
    failed: bool = False
    #: Its last completed upload, from the registry or this run (whole seconds, local).
    completed_at: datetime | None = None


@dataclass
class UploaderStatus:
    """Counts reported by ``check`` and at shutdown."""

    files_found: int
    waiting: int
    in_progress: int
    uploaded: int
    skipped: int
    failed: int
    chunks_delivered: int
    bytes_delivered: int
    registry_in_progress: int
    registry_completed: int
    uploaded_paths: list[str]


class UploadStates:
    """Every file's :class:`FileState`, and the run's totals, under one lock.

    Every change goes through :meth:`_changing`, which keeps the counts and the index
    of files with a pending event in step with the states themselves, so reading the
    counts and finding the files ready are cheap however many files completed before.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, FileState] = {}
        #: Completed uploads of this run, in order (a file sent twice is listed twice).
        self._uploads: list[str] = []
        self._skipped = 0
        self._chunks_delivered = 0
        self._bytes_delivered = 0
        self._delivery_errors = 0
        # Derived from the states by _tally only.
        self._with_event: dict[str, FileState] = {}
        self._n_queued = 0
        self._n_sending = 0
        self._n_failed = 0
        self._n_found = 0

    def _tally(self, state: FileState, sign: int) -> None:
        if state.event_at is not None:
            if sign > 0:
                self._with_event[state.rel] = state
            else:
                del self._with_event[state.rel]
        self._n_queued += sign * (state.phase is Phase.QUEUED)
        self._n_sending += sign * (state.phase is Phase.SENDING)
        self._n_failed += sign * state.failed
        self._n_found += sign * state.found

    @contextmanager
    def _changing(self, rel: str) -> Iterator[FileState]:
        """The state of ``rel`` (made if new) to change, under the lock."""
        with self._lock:
            state = self._files.get(rel)
            if state is None:
                state = self._files[rel] = FileState(rel)
                self._tally(state, +1)
            with self._editing(state):
                yield state

    @contextmanager
    def _editing(self, state: FileState) -> Iterator[FileState]:
        """``state`` to change; the lock is held."""
        self._tally(state, -1)
        try:
            yield state
        finally:
            self._tally(state, +1)

    # ------------------------------------------------------------ the watcher's

    def note_event(self, rel: str, when: float) -> None:
        """A filesystem event at ``when``: its quiet time starts over."""
        with self._changing(rel) as state:
            state.event_at = when

    def forget_event(self, rel: str) -> None:
        """Deleted or moved away: nothing to wait for."""
        with self._lock:
            state = self._files.get(rel)
            if state is not None and state.event_at is not None:
                with self._editing(state):
                    state.event_at = None

    def look_again(self, rel: str) -> None:
        """Look at the file again after its quiet time (unless an event is waiting)."""
        with self._changing(rel) as state:
            if state.event_at is None:
                state.event_at = time.monotonic()

    def take_ready(self, now: float, lag: float) -> list[str]:
        """The files whose quiet time passed and that are not in a worker's hands,
        now QUEUED."""
        ready: list[str] = []
        with self._lock:
            for state in list(self._with_event.values()):
                last = state.event_at
                if last is None or now - last <= lag or state.phase is not Phase.IDLE:
                    continue
                with self._editing(state):
                    state.event_at = None
                    state.phase = Phase.QUEUED
                ready.append(state.rel)
        return ready

    def release(self, rel: str) -> None:
        """A worker is done with a QUEUED file without sending it."""
        with self._changing(rel) as state:
            if state.phase is Phase.QUEUED:
                state.phase = Phase.IDLE

    def found(self, rel: str) -> None:
        with self._changing(rel) as state:
            state.found = True

    def skipped(self, rel: str) -> None:
        """Uploaded before and unchanged: released without sending."""
        with self._changing(rel) as state:
            self._skipped += 1
            if state.phase is Phase.QUEUED:
                state.phase = Phase.IDLE

    def refused(self, rel: str) -> None:
        """It cannot be sent at all (its name): failed, released."""
        with self._changing(rel) as state:
            state.failed = True
            if state.phase is Phase.QUEUED:
                state.phase = Phase.IDLE

    def completed_before(self, rel: str, when: datetime) -> None:
        """The registry lists an upload completed at ``when`` (the latest is kept)."""
        with self._changing(rel) as state:
            if state.completed_at is None or when > state.completed_at:
                state.completed_at = when

    def completed_at(self, rel: str) -> datetime | None:
        with self._lock:
            state = self._files.get(rel)
            return state.completed_at if state is not None else None

    # ------------------------------------------------------------ the sender's

    def sending(self, job: Job) -> None:
        with self._changing(job.rel) as state:
            state.phase = Phase.SENDING
            state.job = job

    def delivered(self, n_bytes: int) -> None:
        with self._lock:
            self._chunks_delivered += 1
            self._bytes_delivered += n_bytes

    def delivery_failed(self) -> None:
        with self._lock:
            self._delivery_errors += 1

    def ended(self, job: Job, outcome: Outcome) -> None:
        """The sending of ``job`` ended (``job.done`` or ``job.aborted`` is set): the
        file is IDLE unless a newer job took over."""
        with self._changing(job.rel) as state:
            if state.job is job:
                state.job = None
                state.phase = Phase.IDLE
            if outcome is Outcome.UPLOADED:
                self._uploads.append(job.rel)
                state.failed = False
                state.completed_at = datetime.now().replace(microsecond=0)
            elif outcome is Outcome.FAILED:
                state.failed = True

    # ------------------------------------------------------------ reading

    def sending_paths(self) -> list[str]:
        with self._lock:
            return sorted(s.rel for s in self._files.values() if s.phase is Phase.SENDING)

    def counts(self) -> dict[str, int]:
        """``waiting`` (for their quiet time, or for a worker), ``in_progress``
        (being sent), ``uploaded``, ``skipped``, ``failed``, ``chunks_delivered``,
        ``bytes_delivered``, ``delivery_errors`` and ``files_found``."""
        with self._lock:
            return {
                "waiting": len(self._with_event) + self._n_queued,
                "in_progress": self._n_sending,
                "uploaded": len(self._uploads),
                "skipped": self._skipped,
                "failed": self._n_failed,
                "chunks_delivered": self._chunks_delivered,
                "bytes_delivered": self._bytes_delivered,
                "delivery_errors": self._delivery_errors,
                "files_found": self._n_found,
            }

    def status(self, registry_in_progress: int, registry_completed: int) -> UploaderStatus:
        counts = self.counts()
        with self._lock:
            uploads = list(self._uploads)
        return UploaderStatus(
            files_found=counts["files_found"],
            waiting=counts["waiting"],
            in_progress=counts["in_progress"],
            uploaded=counts["uploaded"],
            skipped=counts["skipped"],
            failed=counts["failed"],
            chunks_delivered=counts["chunks_delivered"],
            bytes_delivered=counts["bytes_delivered"],
            registry_in_progress=registry_in_progress,
            registry_completed=registry_completed,
            uploaded_paths=uploads,
        )
