"""The file sender of ``DataFileUploadDirectory``: one file hashed, chunked and produced.

A file handed over by the watcher is hashed (``_core.FileChunker``), recorded in the
version log and the registry, and produced with :func:`~.send.send_file`: all of it,
or, when the registry and the version log say an earlier run sent this very version in
part, only the chunks not yet acknowledged. Each acknowledgement is recorded in the
registry as it arrives; a chunk whose delivery failed is produced again (up to
:data:`MAX_DELIVERY_ATTEMPTS` times), read alone from the file and checked against the
hash it had in the first pass.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError

from .. import _core
from ..errors import TransferError
from ..kafka import describe_kafka_error
from ..logs import get_logger
from ..registry import ProducerRegistry
from .encryption import Encryptor
from .send import send_file
from .state import Job, Outcome, UploadStates
from .versions import FileVersion, VersionLog

__all__ = ["MAX_DELIVERY_ATTEMPTS", "FileSender"]

#: A chunk whose delivery fails is produced again at most this many times per run.
MAX_DELIVERY_ATTEMPTS = 3


class FileSender:
    """Sends the files the watcher submits, through one shared producer."""

    def __init__(
        self,
        producer: Any,
        topic: str,
        root: Path,
        *,
        n_partitions: int,
        chunk_size: int,
        batch_size: int,
        states: UploadStates,
        registry: ProducerRegistry,
        versions: VersionLog,
        stopping: threading.Event,
        resubmit: Callable[[Job, int], None],
        crypto: Encryptor | None = None,
    ) -> None:
        self.producer = producer
        self.crypto = crypto
        self.topic = topic
        self.root = root
        self.n_partitions = n_partitions
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.states = states
        self.registry = registry
        self.versions = versions
        self._stopping = stopping
        #: Hands a chunk to resend to a worker (delivery reports arrive on the
        #: polling thread, which must not read files).
        self._resubmit = resubmit
        self._log = get_logger()

    def send(self, rel: str, before: os.stat_result) -> None:
        """Hash the file at ``rel`` (``before``: its status when it was examined) and
        produce the chunks of it still to send; acknowledgements arrive later."""
        path = self.root / rel
        try:
            chunker = _core.FileChunker(path, self.chunk_size)
            after = path.stat()
        except OSError as exc:
            self._log.warning(f"cannot read {path} ({exc.strerror or exc}); will try again")
            self._later(rel)
            return
        try:
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                self._log.debug(
                    f"{rel} changed while it was being hashed; waiting for it to settle"
                )
                self._later(rel)
                return
            version = FileVersion(
                size=int(chunker.size),
                mtime_ns=after.st_mtime_ns,
                file_hash=bytes(chunker.file_hash).hex(),
                chunk_size=self.chunk_size,
                n_chunks=int(chunker.n_chunks),
                state="sending",
            )
            chunks = self._chunks_to_send(rel, version)
            self.versions.record(rel, version)
            self.registry.register_started(rel, path.name, version.n_chunks)
            job = Job(
                rel=rel,
                filename=path.name,
                path=path,
                version=version,
                remaining=set(chunks),
                n_to_send=len(chunks),
                chunker=chunker,
            )
            self.states.sending(job)
            self._produce(job, chunks)
        finally:
            # Keeps the hashes for a resend, not the file: a resend opens it again.
            chunker.close()

    def _later(self, rel: str) -> None:
        self.states.release(rel)
        self.states.look_again(rel)

    def _chunks_to_send(self, rel: str, version: FileVersion) -> list[int]:
        """The chunks an earlier run left unacknowledged if it sent this very version
        (same hash, chunk size and count); else all, and the registry starts over."""
        n_chunks = version.n_chunks
        missing = self.registry.chunks_to_send(rel)
        previous = self.versions.get(rel)
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
            self._log.info(f"Resuming {rel}: {len(missing)} of {n_chunks} chunk(s) still to send")
            return sorted(missing)
        if missing:
            # register_started keeps a row whose chunk count matches (to resume).
            self.registry.restart_file(rel)
        return list(range(1, n_chunks + 1))

    def _produce(self, job: Job, chunks: list[int], *, reraise: bool = False) -> None:
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
                crypto=self.crypto,
            )
        except TransferError as exc:
            if reraise:
                raise
            self._abort(job, f"{exc}; it will be sent again in full")

    def resend(self, job: Job, chunk_i: int) -> None:
        """Produce chunk ``chunk_i`` of ``job`` again. Its closed chunker reads just
        that chunk and checks it against the chunk hash of the first pass: the rest
        of the file may have changed since, but the chunks delivered are of the
        version hashed, and a change is sent later as a version of its own."""
        if job.aborted or job.done:
            return
        try:
            self._produce(job, [chunk_i], reraise=True)
        except TransferError as exc:
            if isinstance(exc.__cause__, OSError):
                self._fail(job, f"cannot read it again to resend chunk {chunk_i} ({exc.__cause__})")
            else:
                self._abort(job, f"{exc}; it will be sent again in full")

    def _on_delivery(self, job: Job, chunk_i: int, error: KafkaError | None) -> None:
        if job.aborted:
            return
        if error is None:
            self.registry.register_chunk_delivered(
                job.rel, job.filename, job.version.n_chunks, chunk_i
            )
            with job.lock:
                if chunk_i not in job.remaining:
                    return
                job.remaining.discard(chunk_i)
                finished = not job.remaining and not job.done
                if finished:
                    job.done = True
            self.states.delivered(job.chunk_bytes(chunk_i))
            if finished:
                self._finish(job)
            return
        with job.lock:
            attempts = job.attempts[chunk_i] = job.attempts.get(chunk_i, 0) + 1
        self.states.delivery_failed()
        text = describe_kafka_error(error)
        if self._stopping.is_set():
            return
        if attempts >= MAX_DELIVERY_ATTEMPTS:
            self._fail(job, f"chunk {chunk_i} could not be delivered {attempts} times ({text})")
            return
        self._log.warning(f"chunk {chunk_i} of {job.rel} was not delivered ({text}); resending it")
        self._resubmit(job, chunk_i)

    def _finish(self, job: Job) -> None:
        self.versions.record(job.rel, dataclasses.replace(job.version, state="sent"))
        self.states.ended(job, Outcome.UPLOADED)
        self._log.info(
            f"Uploaded {job.rel} ({job.version.size} bytes, {job.version.n_chunks} chunk(s)) "
            f"to the {self.topic} topic",
            extra={"file": job.rel, "topic": self.topic, "size": job.version.size},
        )

    def _abort(self, job: Job, reason: str) -> None:
        """Stop sending this version; the file is looked at again after its quiet time."""
        job.aborted = True
        self.states.ended(job, Outcome.ABORTED)
        self.states.look_again(job.rel)
        self._log.warning(f"{job.rel}: {reason}", extra={"file": job.rel, "reason": reason})

    def _fail(self, job: Job, reason: str) -> None:
        job.aborted = True
        self.states.ended(job, Outcome.FAILED)
        self._log.error(
            f"could not upload {job.rel}: {reason}. It stays in progress in the registry and "
            "the next run sends its missing chunks",
            extra={"file": job.rel, "reason": reason},
        )
