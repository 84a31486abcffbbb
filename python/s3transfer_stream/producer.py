"""The producer side: files cut into OpenMSIStream chunk messages and sent to Kafka.

* :func:`send_file` sends one file (all of its chunks, or a subset when resuming),
  with OpenMSIStream's message keys and values, every chunk of the file to the same
  partition ("file-affine partitioning", :func:`~s3transfer_stream.kafka.file_partition`).
  The Rust core reads and hashes the file and encodes the messages with the GIL
  released; Python only hands the encoded buffers to librdkafka, in batches, so the
  memory used is one batch per sending thread plus the producer's bounded queue.
* :class:`DirectoryUploader` is the engine of ``DataFileUploadDirectory``: it watches a
  directory tree, sends files once they have been quiet for ``watchdog_lag_time``
  seconds, keeps OpenMSIStream's upload registry in ``<upload_dir>/LOGS/`` (updated
  only after the broker acknowledged a chunk) and resumes partly sent files after a
  restart by sending only the chunks not yet acknowledged.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePath, PurePosixPath
from queue import Queue
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from . import _core
from .errors import TransferError
from .kafka import DEFAULT_CHUNK_SIZE, describe_kafka_error, file_partition, partition_count
from .logs import get_logger
from .registry import ProducerRegistry

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_STALL_TIMEOUT",
    "LOGS_SUBDIR",
    "DirectoryUploader",
    "FileSendResult",
    "UploaderStatus",
    "is_eligible",
    "relative_location",
    "send_file",
]

#: Chunks encoded per call into the Rust core (memory per sending thread: this many chunks).
DEFAULT_BATCH_SIZE = 16
#: :func:`send_file` gives up when the producer's queue stays full this long.
DEFAULT_STALL_TIMEOUT = 60.0
#: Registry and log files of an upload directory live in this subdirectory; never uploaded.
LOGS_SUBDIR = "LOGS"
#: A chunk whose delivery fails is produced again at most this many times per run.
MAX_DELIVERY_ATTEMPTS = 3


# --------------------------------------------------------------------------- paths


def relative_location(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None
) -> tuple[str, str]:
    """``(subdir_str, filename)`` of ``path`` for the wire format.

    ``subdir_str`` is the parent directory of ``path`` relative to ``root`` with POSIX
    separators, ``""`` when the file is directly in ``root`` or when ``root`` is None.
    Raises ValueError if ``path`` is not inside ``root``. Paths are compared as given
    (made absolute, not resolved), so a symlinked root works as the user sees it.
    """
    absolute = Path(os.path.abspath(path))
    if root is None:
        return "", absolute.name
    base = Path(os.path.abspath(root))
    try:
        relative = absolute.relative_to(base)
    except ValueError:
        raise ValueError(f"{path} is not inside {root}") from None
    if not relative.parts:
        raise ValueError(f"{path} is the root directory itself, not a file inside it")
    parent = PurePosixPath(*relative.parts[:-1]).as_posix()
    return ("" if parent == "." else parent), relative.name


def _rel_path(subdir: str, filename: str) -> str:
    return f"{subdir}/{filename}" if subdir else filename


def is_eligible(rel_path: str | PurePath, upload_regex: re.Pattern[str] | None = None) -> bool:
    """True if the file at ``rel_path`` (relative to the upload directory) is uploaded.

    Never uploaded: anything under the top-level ``LOGS/`` directory (registry and log
    files), any path with a component starting with ``.`` (hidden files and
    directories, editors' temp files), and names ending in ``.log``. OpenMSIStream's
    default regex also skips every path containing "<any char>log" (``catalog.csv``,
    ``blog/a.dat``); this does not. ``upload_regex`` must then ``re.match`` the POSIX
    relative path.
    """
    text = rel_path.as_posix() if isinstance(rel_path, PurePath) else str(rel_path)
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if not parts:
        return False
    if parts[0] == LOGS_SUBDIR or any(part.startswith(".") for part in parts):
        return False
    if parts[-1].lower().endswith(".log"):
        return False
    return upload_regex is None or upload_regex.match("/".join(parts)) is not None


# --------------------------------------------------------------------------- one file


@dataclass
class FileSendResult:
    """What :func:`send_file` did. The delivery counts keep changing after it returned
    with ``wait=False``, until the producer delivered (or failed) every message."""

    path: Path
    topic: str
    subdir: str
    filename: str
    rel_path: str
    partition: int
    size: int
    n_chunks: int
    file_hash: bytes
    chunks: list[int]
    n_produced: int = 0
    bytes_produced: int = 0
    n_delivered: int = 0
    bytes_delivered: int = 0
    n_failed: int = 0
    errors: list[str] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def n_to_send(self) -> int:
        return len(self.chunks)

    @property
    def n_outstanding(self) -> int:
        """Messages produced whose delivery report has not arrived yet."""
        with self._lock:
            return self.n_produced - self.n_delivered - self.n_failed

    @property
    def complete(self) -> bool:
        """Every chunk asked for was acknowledged by the broker."""
        with self._lock:
            return self.n_delivered == len(self.chunks) and self.n_failed == 0

    def _delivered(self, size: int, error: object) -> None:
        with self._lock:
            if error is None:
                self.n_delivered += 1
                self.bytes_delivered += size
            else:
                self.n_failed += 1
                text = describe_kafka_error(error)
                if len(self.errors) < 10 and text not in self.errors:
                    self.errors.append(text)


def _runs(chunks: Iterable[int], batch: int) -> Iterator[tuple[int, int]]:
    """``(first, count)`` batches covering the sorted chunk indices, each contiguous."""
    ordered = sorted(set(chunks))
    i = 0
    while i < len(ordered):
        first = ordered[i]
        count = 1
        while i + count < len(ordered) and count < batch and ordered[i + count] == first + count:
            count += 1
        yield first, count
        i += count


def _produce(
    producer: Any,
    stop: threading.Event | None,
    stall_timeout: float | None,
    what: str,
    **kwargs: Any,
) -> bool:
    """``producer.produce(**kwargs)``, waiting while the local queue is full.

    Returns False if ``stop`` was set while waiting. Raises TransferError if the queue
    did not shrink for ``stall_timeout`` seconds (None: wait as long as needed, with a
    warning every minute).
    """
    waiting_since: float | None = None
    lowest = 0
    warned_at = 0.0
    while True:
        try:
            producer.produce(**kwargs)
            return True
        except BufferError:
            pass
        if stop is not None and stop.is_set():
            return False
        now = time.monotonic()
        queued = len(producer)
        if waiting_since is None or queued < lowest:
            waiting_since, lowest, warned_at = now, queued, now
        producer.poll(0.1)
        stalled = time.monotonic() - waiting_since
        if stall_timeout is not None and stalled > stall_timeout:
            raise TransferError(
                f"{what}: the Kafka producer's queue stayed full for {stall_timeout:g} s "
                f"({queued} messages waiting); is the broker reachable?"
            )
        if stall_timeout is None and now - warned_at > DEFAULT_STALL_TIMEOUT:
            warned_at = now
            get_logger().warning(
                f"{what}: no message delivered for {stalled:.0f} s ({queued} waiting); "
                "is the broker reachable? Still trying"
            )


def send_file(
    producer: Any,
    topic: str,
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    filename_append: str = "",
    chunks: Iterable[int] | None = None,
    on_delivery: Callable[[int, KafkaError | None], None] | None = None,
    n_partitions: int | None = None,
    n_threads: int = 1,
    wait: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    stop: threading.Event | None = None,
    chunker: Any = None,
) -> FileSendResult:
    """Send the file at ``path`` to ``topic`` as OpenMSIStream chunk messages.

    ``root``: the upload root; the wire's ``subdir_str`` is ``path``'s parent relative
    to it (``""`` if None). ``chunks``: 1-based chunk indices to send (default all),
    to resume a partly sent file. ``on_delivery(chunk_i, error_or_None)`` runs for
    each broker acknowledgement (in the thread that polls the producer; exceptions it
    raises are logged, not propagated). ``n_partitions``: the topic's partition count
    (asked from the broker if None). ``n_threads`` threads encode and produce batches of
    ``batch_size`` chunks in parallel. ``wait``: flush until every message is
    delivered or failed. ``stop``: when set, production stops early (``stopped``).
    ``chunker``: a ``_core.FileChunker`` of ``path`` already made with ``chunk_size``.

    Raises TransferError if the file changed while it was sent, cannot be read, has a
    name that is not UTF-8, or if the producer queue stayed full ``stall_timeout`` s.
    """
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = Path(path)
    subdir, filename = relative_location(path, root)
    rel_path = _rel_path(subdir, filename)
    try:
        (rel_path + filename_append).encode("utf-8")
    except UnicodeEncodeError:
        raise TransferError(
            f"cannot send {path!r}: its name is not valid UTF-8, which chunk messages require"
        ) from None
    started = time.monotonic()
    if chunker is None:
        try:
            chunker = _core.FileChunker(path, chunk_size)
        except OSError as exc:
            raise TransferError(f"cannot read {path}: {exc.strerror or exc}") from None
    n_chunks = int(chunker.n_chunks)
    wanted = list(range(1, n_chunks + 1)) if chunks is None else sorted(set(chunks))
    bad = [i for i in wanted if not 1 <= i <= n_chunks]
    if bad:
        raise ValueError(f"chunk indices {bad[:5]} are not in 1..{n_chunks} for {path}")
    if n_partitions is None:
        n_partitions = partition_count(producer, topic)
    result = FileSendResult(
        path=path,
        topic=topic,
        subdir=subdir,
        filename=filename,
        rel_path=rel_path,
        partition=file_partition(rel_path, n_partitions),
        size=int(chunker.size),
        n_chunks=n_chunks,
        file_hash=bytes(chunker.file_hash),
        chunks=wanted,
    )
    log = get_logger()

    def delivered(chunk_i: int, size: int, error: KafkaError | None, _msg: Any) -> None:
        result._delivered(size, error)
        if on_delivery is not None:
            try:
                on_delivery(chunk_i, error)
            except Exception:
                log.exception(f"delivery callback for chunk {chunk_i} of {rel_path} failed")

    batches = _runs(wanted, batch_size)
    batches_lock = threading.Lock()
    halt = threading.Event()
    failures: list[BaseException] = []
    what = f"sending {rel_path}"

    def work() -> None:
        while not halt.is_set():
            with batches_lock:
                batch = next(batches, None)
            if batch is None:
                return
            first, count = batch
            try:
                buffers = chunker.messages(first, count, subdir, filename, filename_append)
            except (ValueError, OSError) as exc:
                failure = TransferError(f"cannot send {path}: {exc}")
                failure.__cause__ = exc  # a caller tells a changed file from an unreadable one
                failures.append(failure)
                halt.set()
                return
            for offset, buffer in enumerate(buffers):
                chunk_i = first + offset
                size = len(buffer)
                try:
                    sent = _produce(
                        producer,
                        stop,
                        stall_timeout,
                        what,
                        topic=topic,
                        key=_core.message_key(subdir, filename, chunk_i, n_chunks),
                        value=buffer,
                        partition=result.partition,
                        on_delivery=functools.partial(delivered, chunk_i, size),
                    )
                except KafkaException as exc:
                    # Refused at once (unknown partition, message too large...): the
                    # same outcome as a failed delivery report.
                    with result._lock:
                        result.n_produced += 1
                    error = exc.args[0] if exc.args else None
                    if not isinstance(error, KafkaError):
                        error = KafkaError(KafkaError._FAIL, str(exc))
                    delivered(chunk_i, size, error, None)
                    continue
                except BaseException as exc:
                    failures.append(exc)
                    halt.set()
                    return
                if not sent:
                    result.stopped = True
                    halt.set()
                    return
                with result._lock:
                    result.n_produced += 1
                    result.bytes_produced += size
            del buffers
            producer.poll(0)
            if stop is not None and stop.is_set():
                result.stopped = True
                halt.set()

    if n_threads == 1 or len(wanted) <= batch_size:
        work()
    else:
        threads = [
            threading.Thread(target=work, name=f"send-{i}", daemon=True)
            for i in range(min(n_threads, (len(wanted) + batch_size - 1) // batch_size))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if wait:
        while result.n_outstanding > 0:
            producer.flush(1.0)
    result.seconds = time.monotonic() - started
    if failures:
        raise failures[0]
    return result


# --------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class _Version:
    """The version of a file last sent: what it looked like when it was hashed."""

    size: int
    mtime_ns: int
    file_hash: str
    chunk_size: int
    n_chunks: int
    state: str  # "sending" or "sent"


class _VersionLog:
    """``LOGS/upload_to_<topic>_versions.jsonl``: one JSON line per file version started
    or completed, so that a restart can tell whether a partly sent file is still the
    same (same SHA-512 and chunk size: resume) and whether a completed file was
    modified since (other size or mtime: send again). OpenMSIStream's registry tables
    have no column for this, and their format must stay as it is. The log is compacted
    (last line per file) when opened; a torn last line is ignored.
    """

    #: The log is rewritten when it has this many more lines than twice its files.
    compact_slack = 10_000

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._latest: dict[str, _Version] = {}
        lines = 0
        try:
            with path.open(encoding="utf-8", errors="surrogateescape") as handle:
                for line in handle:
                    lines += 1
                    try:
                        record = json.loads(line)
                        self._latest[str(record["path"])] = _Version(
                            size=int(record["size"]),
                            mtime_ns=int(record["mtime_ns"]),
                            file_hash=str(record["hash"]),
                            chunk_size=int(record["chunk_size"]),
                            n_chunks=int(record["n_chunks"]),
                            state=str(record["state"]),
                        )
                    except (ValueError, KeyError, TypeError):
                        continue
        except FileNotFoundError:
            pass
        if lines != len(self._latest):
            self._rewrite()
        self._lines = len(self._latest)
        self._handle = path.open("a", encoding="utf-8", errors="surrogateescape")

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", encoding="utf-8", errors="surrogateescape") as handle:
            for rel, version in self._latest.items():
                handle.write(self._line(rel, version))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    @staticmethod
    def _line(rel: str, v: _Version) -> str:
        record = {
            "path": rel,
            "size": v.size,
            "mtime_ns": v.mtime_ns,
            "hash": v.file_hash,
            "chunk_size": v.chunk_size,
            "n_chunks": v.n_chunks,
            "state": v.state,
        }
        return json.dumps(record, ensure_ascii=False) + "\n"

    def get(self, rel: str) -> _Version | None:
        with self._lock:
            return self._latest.get(rel)

    def record(self, rel: str, version: _Version) -> None:
        with self._lock:
            self._latest[rel] = version
            if self._handle.closed:
                return
            try:
                if self._lines > 2 * len(self._latest) + self.compact_slack:
                    # Compact while running too, so a long run's log stays small.
                    self._handle.close()
                    self._rewrite()
                    self._lines = len(self._latest)
                    self._handle = self.path.open("a", encoding="utf-8", errors="surrogateescape")
                else:
                    self._handle.write(self._line(rel, version))
                    self._lines += 1
                self._handle.flush()
            except OSError as exc:
                get_logger().warning(f"could not write {self.path}: {exc}")

    def close(self) -> None:
        with self._lock:
            if not self._handle.closed:
                self._handle.close()


# --------------------------------------------------------------------------- directory


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


@dataclass
class _Job:
    """One version of one file being sent."""

    rel: str
    filename: str
    path: Path
    version: _Version
    remaining: set[int]
    n_to_send: int
    chunker: Any = None
    attempts: dict[int, int] = field(default_factory=dict)
    aborted: bool = False
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _modified_after(st: os.stat_result, completed: datetime) -> bool:
    """Whether a file's mtime is after a completion time of whole seconds (local)."""
    return st.st_mtime >= completed.timestamp() + 1.0


class DirectoryUploader:
    """Uploads the files of a directory tree as they appear (``DataFileUploadDirectory``).

    A file is sent once no filesystem event touched it for ``watchdog_lag_time``
    seconds; see :func:`is_eligible` for what is never sent. With ``upload_existing``
    the files already there at :meth:`start` are sent too. Files partly sent by an
    earlier run (registry rows in ``<upload_dir>/LOGS/``) are always resumed.

    ``n_threads`` worker threads hash and encode files and hand the messages to one
    shared producer. One producer, because librdkafka's producer is thread-safe and
    does its network I/O on its own threads: sharing it gives one memory bound for
    the whole program (``queue.buffering.max.kbytes``, i.e. ``--queue_max_size``),
    one set of broker connections, and fuller batches per partition, while the
    CPU-heavy hashing and encoding already runs in parallel (GIL released) in the
    workers. A separate thread polls the producer, so delivery reports (which update
    the registry) are served even while every worker is busy reading a large file.
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
        self.logs_dir = self.root / LOGS_SUBDIR
        self.registry = ProducerRegistry(self.logs_dir, topic)
        self.versions = _VersionLog(self.registry.paths.versions)
        self._log = get_logger()

        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}  # rel path -> monotonic time of its last event
        self._busy: set[str] = set()  # queued, being hashed, or being sent
        self._active: dict[str, _Job] = {}
        self._seen: set[str] = set()
        self._uploaded: list[str] = []
        self._skipped = 0
        self._failed: set[str] = set()
        self._chunks_delivered = 0
        self._bytes_delivered = 0
        self._delivery_errors = 0
        self._completed_at: dict[str, datetime] = {}
        self._work: Queue[tuple[str, Any, int] | None] = Queue()
        self._stopping = threading.Event()
        self._poller_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._observer: Any = None
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
            key = PurePath(row.rel_filepath).as_posix()
            previous = self._completed_at.get(key)
            if previous is None or row.completed > previous:
                self._completed_at[key] = row.completed
        old = time.monotonic() - self.lag - 1.0
        resumed = 0
        for in_progress in self.registry.in_progress_rows():
            rel = PurePath(in_progress.rel_filepath).as_posix()
            if (self.root / rel).is_file():
                with self._lock:
                    self._pending[rel] = old
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
        self._start_observer()
        if self.upload_existing:
            self._scan(self.root, initial=True)
        self._threads.append(
            threading.Thread(target=self._poll_loop, name="uploader-poll", daemon=True)
        )
        self._threads.append(
            threading.Thread(target=self._schedule_loop, name="uploader-schedule", daemon=True)
        )
        for i in range(self.n_threads):
            self._threads.append(
                threading.Thread(target=self._work_loop, name=f"uploader-{i}", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def _start_observer(self) -> None:
        observer: Any = PollingObserver(timeout=1.0) if self.use_polling_observer else Observer()
        observer.schedule(_EventHandler(self), str(self.root), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> UploaderStatus:
        """Stop watching, finish the message being produced, wait up to ``flush_timeout``
        s for the broker to acknowledge what was produced, close the registry, and
        return the final counts. Chunks not acknowledged are sent by the next run."""
        if self._stopped:
            return self.status()
        self._stopped = True
        self._stopping.set()
        if self._observer is not None:
            self._observer.stop()
        for _ in range(self.n_threads):
            self._work.put(None)
        for thread in self._threads:
            if thread.name.startswith("uploader-") and thread.name != "uploader-poll":
                thread.join()
        if self._observer is not None:
            self._observer.join(timeout=10)
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
        with self._lock:
            waiting = len(self._pending) + max(len(self._busy) - len(self._active), 0)
            in_progress = sum(1 for job in self._active.values() if not job.done)
            status = UploaderStatus(
                files_found=len(self._seen),
                waiting=waiting,
                in_progress=in_progress,
                uploaded=len(self._uploaded),
                skipped=self._skipped,
                failed=len(self._failed),
                chunks_delivered=self._chunks_delivered,
                bytes_delivered=self._bytes_delivered,
                registry_in_progress=0,
                registry_completed=0,
                uploaded_paths=list(self._uploaded),
            )
        status.registry_in_progress = len(self.registry.in_progress_rows())
        status.registry_completed = len(self.registry.completed_rows())
        return status

    def counts(self) -> dict[str, int]:
        """What the metrics report (cheap: no registry read)."""
        with self._lock:
            counts = {
                "waiting": len(self._pending) + max(len(self._busy) - len(self._active), 0),
                "in_progress": sum(1 for job in self._active.values() if not job.done),
                "uploaded": len(self._uploaded),
                "skipped": self._skipped,
                "failed": len(self._failed),
                "chunks_delivered": self._chunks_delivered,
                "bytes_delivered": self._bytes_delivered,
                "delivery_errors": self._delivery_errors,
            }
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
        with self._lock:
            active = sorted(self._active)
        if active:
            self._log.debug("Being sent:\n\t" + "\n\t".join(active))

    # ---------------------------------------------------------------- events

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
        with self._lock:
            self._pending[rel] = time.monotonic() if when is None else when

    def forget_path(self, path: str | os.PathLike[str]) -> None:
        """A file was deleted or moved away: do not send it."""
        rel = self._rel(path)
        if rel is not None:
            with self._lock:
                self._pending.pop(rel, None)

    def _scan(self, directory: Path, *, initial: bool = False) -> None:
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

    # ---------------------------------------------------------------- threads

    def _poll_loop(self) -> None:
        while not self._poller_stop.is_set():
            try:
                self.producer.poll(0.1)
            except Exception:
                self._log.exception("error while serving Kafka delivery reports")

    def _schedule_loop(self) -> None:
        while not self._stopping.wait(self.scan_interval):
            try:
                self._dispatch_ready()
            except Exception:
                self._log.exception("error while looking for files to upload")

    def _dispatch_ready(self) -> None:
        now = time.monotonic()
        ready: list[str] = []
        with self._lock:
            for rel, last in list(self._pending.items()):
                if now - last <= self.lag or rel in self._busy:
                    continue
                del self._pending[rel]
                self._busy.add(rel)
                ready.append(rel)
        for rel in ready:
            self._work.put(("file", rel, 0))

    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            if self._stopping.is_set():
                if item[0] == "file":
                    self._release(item[1])
                continue
            kind, target, chunk_i = item
            try:
                if kind == "file":
                    self._process(target)
                else:
                    self._retry(target, chunk_i)
            except Exception:
                self._log.exception(f"unexpected error while uploading {target}")
                if kind == "file":
                    self._release(target)

    def _release(self, rel: str) -> None:
        with self._lock:
            if rel not in self._active:
                self._busy.discard(rel)

    def _repend(self, rel: str) -> None:
        """Look at ``rel`` again after the lag time."""
        with self._lock:
            self._pending.setdefault(rel, time.monotonic())

    # ---------------------------------------------------------------- sending

    def _process(self, rel: str) -> None:
        path = self.root / rel
        if not is_eligible(rel, self.upload_regex):
            self._release(rel)
            return
        try:
            before = path.stat()
        except OSError:
            self._release(rel)
            return
        if not stat.S_ISREG(before.st_mode):
            self._release(rel)
            return
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            self._log.error(f"cannot upload {path!r}: its name is not valid UTF-8")
            with self._lock:
                self._failed.add(rel)
            self._release(rel)
            return
        with self._lock:
            self._seen.add(rel)
        previous = self.versions.get(rel)
        if self.registry.is_completed(rel) and self._unchanged(rel, before, previous):
            self._log.debug(f"{rel} was uploaded before and has not changed since; skipped")
            with self._lock:
                self._skipped += 1
            self._release(rel)
            return
        try:
            chunker = _core.FileChunker(path, self.chunk_size)
            after = path.stat()
        except OSError as exc:
            self._log.warning(f"cannot read {path} ({exc.strerror or exc}); will try again")
            self._release(rel)
            self._repend(rel)
            return
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            self._log.debug(f"{rel} changed while it was being hashed; waiting for it to settle")
            self._release(rel)
            self._repend(rel)
            return
        version = _Version(
            size=int(chunker.size),
            mtime_ns=after.st_mtime_ns,
            file_hash=bytes(chunker.file_hash).hex(),
            chunk_size=self.chunk_size,
            n_chunks=int(chunker.n_chunks),
            state="sending",
        )
        n_chunks = version.n_chunks
        missing = self.registry.chunks_to_send(rel)
        resume = (
            bool(missing)
            and previous is not None
            and previous.state == "sending"
            and previous.file_hash == version.file_hash
            and previous.chunk_size == version.chunk_size
            and previous.n_chunks == n_chunks
            and max(missing) <= n_chunks
        )
        if resume:
            chunks = sorted(missing)
            self._log.info(f"Resuming {rel}: {len(chunks)} of {n_chunks} chunk(s) still to send")
        else:
            chunks = list(range(1, n_chunks + 1))
            if missing:
                self._restart_registry_row(rel)
        self.versions.record(rel, version)
        self.registry.register_started(rel, path.name, n_chunks)
        job = _Job(
            rel=rel,
            filename=path.name,
            path=path,
            version=version,
            remaining=set(chunks),
            n_to_send=len(chunks),
            chunker=chunker,
        )
        with self._lock:
            self._active[rel] = job
        self._send(job, chunks)
        # Keeps the hashes for a resend, not the file: a resend opens it again.
        chunker.close()

    def _unchanged(self, rel: str, st: os.stat_result, previous: _Version | None) -> bool:
        """A completed file is skipped unless it was modified since it was sent."""
        if previous is not None:
            return previous.size == st.st_size and previous.mtime_ns == st.st_mtime_ns
        completed = self._completed_at.get(rel)
        return completed is not None and not _modified_after(st, completed)

    def _restart_registry_row(self, rel: str) -> None:
        """Forget the delivered chunks of an older version of ``rel``.

        ProducerRegistry keeps a row whose chunk count matches on ``register_started``
        (to resume), so a changed file with the same count needs its row dropped first.
        """
        restart = getattr(self.registry, "restart_file", None)
        if callable(restart):
            restart(rel)
            return
        table = getattr(self.registry, "_in_progress", None)
        if table is None:
            return
        with table.lock:
            if table.pop(rel) is not None:
                try:
                    table.write()
                except OSError as exc:
                    self._log.warning(f"could not write {table.path}: {exc}")

    def _send(self, job: _Job, chunks: list[int], *, reraise: bool = False) -> None:
        try:
            send_file(
                self.producer,
                self.topic,
                job.path,
                root=self.root,
                chunk_size=self.chunk_size,
                chunks=chunks,
                on_delivery=functools.partial(self._on_delivery, job),
                n_partitions=self.n_partitions,
                wait=False,
                batch_size=self.batch_size,
                stall_timeout=None,
                stop=self._stopping,
                chunker=job.chunker,
            )
        except TransferError as exc:
            if reraise:
                raise
            self._abort(job, f"{exc}; it will be sent again in full")
            self._repend(job.rel)

    def _retry(self, job: _Job, chunk_i: int) -> None:
        """Send chunk ``chunk_i`` of ``job`` again: the closed chunker reads just that
        chunk from the file and checks it against the chunk hash it recorded when the
        file was first hashed (the rest of the file may have changed since; the chunks
        already delivered are of the version hashed, and a change is sent later as a
        new version)."""
        if job.aborted or job.done:
            return
        try:
            self._send(job, [chunk_i], reraise=True)
        except TransferError as exc:
            if isinstance(exc.__cause__, OSError):
                self._fail(job, f"cannot read it again to resend chunk {chunk_i} ({exc.__cause__})")
                return
            self._abort(job, f"{exc}; it will be sent again in full")
            self._repend(job.rel)

    def _on_delivery(self, job: _Job, chunk_i: int, error: KafkaError | None) -> None:
        if job.aborted:
            return
        if error is None:
            self.registry.register_chunk_delivered(
                job.rel, job.filename, job.version.n_chunks, chunk_i
            )
            size = self._chunk_bytes(job, chunk_i)
            with job.lock:
                if chunk_i not in job.remaining:
                    return
                job.remaining.discard(chunk_i)
                finished = not job.remaining and not job.done
                if finished:
                    job.done = True
            with self._lock:
                self._chunks_delivered += 1
                self._bytes_delivered += size
            if finished:
                self._finish(job)
            return
        with job.lock:
            attempts = job.attempts[chunk_i] = job.attempts.get(chunk_i, 0) + 1
        with self._lock:
            self._delivery_errors += 1
        text = describe_kafka_error(error)
        if self._stopping.is_set():
            return
        if attempts >= MAX_DELIVERY_ATTEMPTS:
            self._fail(job, f"chunk {chunk_i} could not be delivered {attempts} times ({text})")
            return
        self._log.warning(f"chunk {chunk_i} of {job.rel} was not delivered ({text}); resending it")
        self._work.put(("retry", job, chunk_i))

    def _chunk_bytes(self, job: _Job, chunk_i: int) -> int:
        if chunk_i < job.version.n_chunks:
            return job.version.chunk_size
        return job.version.size - (job.version.n_chunks - 1) * job.version.chunk_size

    def _finish(self, job: _Job) -> None:
        done = _Version(
            size=job.version.size,
            mtime_ns=job.version.mtime_ns,
            file_hash=job.version.file_hash,
            chunk_size=job.version.chunk_size,
            n_chunks=job.version.n_chunks,
            state="sent",
        )
        self.versions.record(job.rel, done)
        with self._lock:
            if self._active.get(job.rel) is job:
                del self._active[job.rel]
                self._busy.discard(job.rel)
            self._uploaded.append(job.rel)
            self._failed.discard(job.rel)
            self._completed_at[job.rel] = datetime.now().replace(microsecond=0)
        self._log.info(
            f"Uploaded {job.rel} ({job.version.size} bytes, {job.version.n_chunks} chunk(s)) "
            f"to the {self.topic} topic",
            extra={"file": job.rel, "topic": self.topic, "size": job.version.size},
        )

    def _abort(self, job: _Job, reason: str) -> None:
        job.aborted = True
        with self._lock:
            if self._active.get(job.rel) is job:
                del self._active[job.rel]
                self._busy.discard(job.rel)
        self._log.warning(f"{job.rel}: {reason}", extra={"file": job.rel, "reason": reason})

    def _fail(self, job: _Job, reason: str) -> None:
        job.aborted = True
        with self._lock:
            if self._active.get(job.rel) is job:
                del self._active[job.rel]
                self._busy.discard(job.rel)
            self._failed.add(job.rel)
        self._log.error(
            f"could not upload {job.rel}: {reason}. It stays in progress in the registry and "
            "the next run sends its missing chunks",
            extra={"file": job.rel, "reason": reason},
        )


class _EventHandler(FileSystemEventHandler):
    """Watchdog event handler feeding a :class:`DirectoryUploader`."""

    _IGNORED = frozenset({"opened", "closed_no_write"})

    def __init__(self, uploader: DirectoryUploader) -> None:
        super().__init__()
        self._uploader = uploader

    def dispatch(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind in self._IGNORED:
            return
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if getattr(event, "dest_path", "") else ""
        up = self._uploader
        if event.is_directory:
            if kind in ("created", "moved"):
                target = Path(dest if kind == "moved" else src)
                if target.is_dir():
                    up._scan(target)
            return
        if kind == "deleted":
            up.forget_path(src)
        elif kind == "moved":
            up.forget_path(src)
            if dest:
                up.note_path(dest)
        else:  # created, modified, closed (after writing), attrib
            up.note_path(src)
