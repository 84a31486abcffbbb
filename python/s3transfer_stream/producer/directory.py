"""``DataFileUploadDirectory``'s engine: the watcher, the sender and their threads."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path, PurePath
from queue import Queue
from typing import Any

from ..kafka import DEFAULT_CHUNK_SIZE, partition_count
from ..logs import get_logger
from ..registry import ProducerRegistry
from .encryption import Encryptor
from .paths import LOGS_SUBDIR
from .send import DEFAULT_BATCH_SIZE
from .sender import FileSender
from .state import Job, UploaderStatus, UploadStates
from .versions import VersionLog
from .watcher import Watcher

__all__ = ["DirectoryUploader"]

#: What the workers are given: a file the watcher found ready, or a chunk to resend.
_Work = str | tuple[Job, int]


class DirectoryUploader:
    """Uploads the files of a directory tree as they appear (``DataFileUploadDirectory``).

    A file is sent once no filesystem event touched it for ``watchdog_lag_time``
    seconds; see :func:`~.paths.is_eligible` for what is never sent. With
    ``upload_existing`` the files already there at :meth:`start` are sent too. Files
    partly sent by an earlier run (registry rows in ``<upload_dir>/LOGS/``) are always
    resumed.

    ``n_threads`` worker threads hash and encode files and hand the messages to one
    shared producer. One producer, because librdkafka's producer is thread-safe and
    does its network I/O on its own threads: sharing it gives one memory bound for
    the whole program (``queue.buffering.max.kbytes``, i.e. ``--queue_max_size``),
    one set of broker connections, and fuller batches per partition, while the
    CPU-heavy hashing and encoding already runs in parallel (GIL released) in the
    workers. A separate thread polls the producer, so delivery reports (which update
    the registry) are served even while every worker is busy reading a large file.

    ``crypto``: every message is encrypted with it; :meth:`stop` then keeps its node
    serving keys a little after the final flush (:meth:`.Encryptor.finish`) and
    closes it.
    """

    def __init__(
        self,
        upload_dir: str | os.PathLike[str],
        producer: Any,
        topic: str,
        *,
        n_partitions: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        upload_regex: str | re.Pattern[str] | None = None,
        upload_existing: bool = False,
        watchdog_lag_time: float = 3.0,
        use_polling_observer: bool = False,
        n_threads: int = 2,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_timeout: float = 60.0,
        scan_interval: float = 0.2,
        crypto: Encryptor | None = None,
    ) -> None:
        root = Path(upload_dir)
        if not root.is_dir():
            raise ValueError(f"{upload_dir} is not a directory")
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        if watchdog_lag_time < 0:
            raise ValueError(f"watchdog_lag_time must be >= 0, got {watchdog_lag_time}")
        self.root = Path(os.path.abspath(root))
        self.producer = producer
        self.topic = topic
        self.n_partitions = (
            n_partitions if n_partitions is not None else partition_count(producer, topic)
        )
        self.chunk_size = chunk_size
        self.upload_regex = (
            re.compile(upload_regex) if isinstance(upload_regex, str) else upload_regex
        )
        self.upload_existing = upload_existing
        self.lag = float(watchdog_lag_time)
        self.use_polling_observer = use_polling_observer
        self.n_threads = n_threads
        self.batch_size = batch_size
        self.flush_timeout = flush_timeout
        self.scan_interval = scan_interval
        self.crypto = crypto
        self.logs_dir = self.root / LOGS_SUBDIR
        self.registry = ProducerRegistry(self.logs_dir, topic)
        self.versions = VersionLog(self.registry.paths.versions)
        self.states = UploadStates()
        self._log = get_logger()
        self._work: Queue[_Work | None] = Queue()
        self._stopping = threading.Event()
        self._poller_stop = threading.Event()
        self.watcher = Watcher(
            self.root,
            upload_regex=self.upload_regex,
            lag=self.lag,
            use_polling_observer=use_polling_observer,
            states=self.states,
            registry=self.registry,
            versions=self.versions,
        )
        self.sender = FileSender(
            producer,
            topic,
            self.root,
            n_partitions=self.n_partitions,
            chunk_size=chunk_size,
            batch_size=batch_size,
            states=self.states,
            registry=self.registry,
            versions=self.versions,
            stopping=self._stopping,
            resubmit=lambda job, chunk_i: self._work.put((job, chunk_i)),
            crypto=crypto,
        )
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopped = False
        self._start_time = time.monotonic()

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Resume partly sent files, scan existing ones if asked, start watching."""
        if self._started:
            return
        self._started = True
        self._start_time = time.monotonic()
        self.registry.start()
        for row in self.registry.completed_rows():
            self.states.completed_before(PurePath(row.rel_filepath).as_posix(), row.completed)
        old = time.monotonic() - self.lag - 1.0
        resumed = 0
        for in_progress in self.registry.in_progress_rows():
            rel = PurePath(in_progress.rel_filepath).as_posix()
            if (self.root / rel).is_file():
                self.states.note_event(rel, old)
                resumed += 1
            else:
                self._log.warning(
                    f"{rel} was being uploaded by an earlier run but is no longer in "
                    f"{self.root}; it stays listed as in progress"
                )
        if resumed:
            self._log.info(
                f"Found {resumed} file(s) partly uploaded by an earlier run: will send the "
                "chunks not yet delivered"
            )
        self.watcher.start_observer()
        if self.upload_existing:
            self.watcher.scan(self.root, initial=True)
        self._threads.append(
            threading.Thread(target=self._poll_loop, name="uploader-poll", daemon=True)
        )
        self._threads.append(
            threading.Thread(
                target=self.watcher.schedule,
                args=(self._work.put, self._stopping, self.scan_interval),
                name="uploader-schedule",
                daemon=True,
            )
        )
        for i in range(self.n_threads):
            self._threads.append(
                threading.Thread(target=self._work_loop, name=f"uploader-{i}", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def stop(self) -> UploaderStatus:
        """Stop watching, finish the message being produced, wait up to ``flush_timeout``
        s for the broker to acknowledge what was produced, close the registry, and
        return the final counts. Chunks not acknowledged are sent by the next run."""
        if self._stopped:
            return self.status()
        self._stopped = True
        self._stopping.set()
        self.watcher.stop_observer()
        for _ in range(self.n_threads):
            self._work.put(None)
        for thread in self._threads:
            if thread.name.startswith("uploader-") and thread.name != "uploader-poll":
                thread.join()
        self.watcher.join_observer()
        deadline = time.monotonic() + self.flush_timeout
        left = len(self.producer)
        while left > 0 and time.monotonic() < deadline:
            left = self.producer.flush(min(1.0, max(deadline - time.monotonic(), 0.0)))
        self._poller_stop.set()
        for thread in self._threads:
            if thread.name == "uploader-poll":
                thread.join()
        if left > 0:
            self._log.warning(
                f"{left} message(s) were not acknowledged by the broker within "
                f"{self.flush_timeout:g} s; their chunks will be sent again by the next run"
            )
        try:
            self.registry.close()
        except Exception as exc:
            self._log.error(f"could not write the upload registry in {self.logs_dir}: {exc}")
        self.versions.close()
        if self.crypto is not None:
            # After the registry is written: serving keys a few seconds more must not
            # delay it.
            self.crypto.finish()
        status = self.status()
        partly = status.in_progress
        self._log.info(
            f"Uploaded {status.uploaded} file(s) ({status.chunks_delivered} chunks, "
            f"{status.bytes_delivered} bytes) from {self.root} to the {self.topic} topic in "
            f"{time.monotonic() - self._start_time:.1f} s; {partly} file(s) partly sent will "
            f"be resumed by the next run; {status.failed} failed; "
            f"{status.registry_completed} upload(s) listed as completed in the registry"
        )
        if status.uploaded_paths:
            self._log.debug("Files uploaded in this run:\n\t" + "\n\t".join(status.uploaded_paths))
        return status

    def __enter__(self) -> DirectoryUploader:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- status

    def status(self) -> UploaderStatus:
        return self.states.status(
            len(self.registry.in_progress_rows()), len(self.registry.completed_rows())
        )

    def counts(self) -> dict[str, int]:
        """What the metrics report (cheap: no registry read)."""
        counts = self.states.counts()
        del counts["files_found"]
        threads = list(self._threads)
        counts["threads"] = len(threads)
        counts["threads_alive"] = sum(t.is_alive() for t in threads)
        return counts

    def check(self) -> None:
        """Log the counts (the console's ``check`` command)."""
        s = self.status()
        self._log.info(
            f"Of the {s.files_found} file(s) found in {self.root}: {s.waiting} waiting, "
            f"{s.in_progress} being sent, {s.uploaded} uploaded in this run, {s.skipped} "
            f"already uploaded before, {s.failed} failed. Registry: "
            f"{s.registry_in_progress} in progress, {s.registry_completed} completed upload(s)"
        )
        active = self.states.sending_paths()
        if active:
            self._log.debug("Being sent:\n\t" + "\n\t".join(active))

    # ---------------------------------------------------------------- events

    def note_path(self, path: str | os.PathLike[str], when: float | None = None) -> None:
        """A file was created or changed: (re)start its quiet-time clock."""
        self.watcher.note_path(path, when)

    def forget_path(self, path: str | os.PathLike[str]) -> None:
        """A file was deleted or moved away: do not send it."""
        self.watcher.forget_path(path)

    # ---------------------------------------------------------------- threads

    def _poll_loop(self) -> None:
        while not self._poller_stop.is_set():
            try:
                self.producer.poll(0.1)
            except Exception:
                self._log.exception("error while serving Kafka delivery reports")

    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            if self._stopping.is_set():
                if isinstance(item, str):
                    self.states.release(item)
                continue
            try:
                if isinstance(item, str):
                    before = self.watcher.examine(item)
                    if before is not None:
                        self.sender.send(item, before)
                else:
                    self.sender.resend(*item)
            except Exception:
                what = item if isinstance(item, str) else item[0].rel
                self._log.exception(f"unexpected error while uploading {what}")
                if isinstance(item, str):
                    self.states.release(item)
