"""Sending one file: its chunks produced to Kafka, acknowledged by the broker.

:func:`send_file` is all of ``UploadDataFile`` and the part of ``DataFileUploadDirectory``
that produces a file (or the chunks of it still to send). The Rust core reads the
chunks into their messages and checks them with the GIL released; Python only hands
the encoded buffers to librdkafka, in batches, so the memory used is one batch per
sending thread plus the producer's bounded queue. With an :class:`~.encryption.Encryptor`
each message's key and value are encrypted (KafkaCrypto) between the two.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from .. import _core
from ..errors import TransferError
from ..kafka import DEFAULT_CHUNK_SIZE, describe_kafka_error, file_partition, partition_count
from ..logs import get_logger
from .encryption import Encryptor
from .paths import rel_path as _rel_path
from .paths import relative_location

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_STALL_TIMEOUT", "FileSendResult", "runs", "send_file"]

#: Chunks encoded per call into the Rust core (memory per sending thread: this many chunks).
DEFAULT_BATCH_SIZE = 16
#: :func:`send_file` gives up when the producer's queue stays full this long.
DEFAULT_STALL_TIMEOUT = 60.0


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


def runs(chunks: Iterable[int], batch: int) -> Iterator[tuple[int, int]]:
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
    crypto: Encryptor | None = None,
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
    ``crypto``: encrypts each message's key and value before it is produced.

    Raises TransferError if the file changed while it was sent, cannot be read, has a
    name that is not UTF-8, cannot be encrypted, or if the producer queue stayed full
    ``stall_timeout`` s.
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

    batches = runs(wanted, batch_size)
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
                plain_key = _core.message_key(subdir, filename, chunk_i, n_chunks)
                key: str | bytes = plain_key
                value: Any = buffer
                try:
                    if crypto is not None:
                        key, value = crypto.encrypt(topic, plain_key, buffer)
                    sent = _produce(
                        producer,
                        stop,
                        stall_timeout,
                        what,
                        topic=topic,
                        key=key,
                        value=value,
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
