"""Uploads: parts, single PUTs, completion and validation (what is recorded
after is in :mod:`.outcomes`, the state of one upload in :mod:`.upload_state`).

The uploader acts on the ledger's events. What S3 can heal by itself (the
server unreachable, timeouts, 5xx, throttling, refused credentials) is retried
for as long as it takes with capped, jittered exponential back-off, while the
consumer loops pause at the memory bound (:meth:`Uploader.can_accept`); such a
file stays owned by the ledger, so nothing is committed past it. What retrying
cannot fix (access denied on a key, a key S3 refuses, an object that does not
validate, bad chunk data) is recorded with its reason in the journal and the
registry, and only then settled, so its offsets are committed past.

Uploads of one key are finished in the order their files completed, so an
older instance that is slow to upload never overwrites a newer one.

About 600 lines, on purpose: the part, single-PUT, completion and abort paths
share each upload's locks, the two pools and the backlog count, and split
apart each would have to reach into the others.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from .. import _core, failpoints
from ..journal import TransferJournal
from ..metrics import NO_METRICS, ProcessorHooks
from ..registry import ABANDONED, FAILED, MISMATCHED_HASH, StreamRegistry
from ..s3 import (
    Condition,
    ObjectStore,
    Validation,
    describe_client_error,
    error_code,
    is_transient,
    newer_position,
)
from ..stale_uploads import OpenUploads
from .ledger import Ledger
from .options import ProcessorOptions, Stats
from .outcomes import RecordsOutcomes
from .upload_state import Discarded, FileUpload, S3Health, ShuttingDown

if TYPE_CHECKING:  # boto3-stubs[s3], a dev dependency: types only
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

T = TypeVar("T")

#: Back-off between attempts of an S3 call that failed transiently.
FIRST_DELAY = 0.5
MAX_DELAY = 20.0

#: What one queued upload counts against the backlog at least, so that a burst of
#: empty or tiny files is bounded in number too.
MIN_BACKLOG_COST = 64 << 10

#: How long an abort waits for the file's parts already on the wire to end.
PARTS_ON_THE_WIRE_WAIT = 120.0


class RecordWriteError(Exception):
    """The local record of open uploads could not be written: not a failure of S3,
    so never retried (nor counted against S3's health) as one."""


@contextlib.contextmanager
def _local_io(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        raise RecordWriteError(f"could not write the record of open uploads {path}: {err}") from err


class Uploader(RecordsOutcomes):
    """Turns the ledger's events into S3 calls, on two pools: part workers (one
    part each, bounded by the memory budget) and finishers (single PUTs,
    completions, aborts)."""

    def __init__(
        self,
        *,
        options: ProcessorOptions,
        store: ObjectStore,
        ledger: Ledger,
        journal: TransferJournal,
        registry: StreamRegistry,
        stats: Stats,
        log: logging.Logger,
        open_uploads: OpenUploads | None = None,
        metrics: ProcessorHooks = NO_METRICS,
    ) -> None:
        self.o = options
        self.store = store
        self.ledger = ledger
        self.journal = journal
        self.registry = registry
        self.stats = stats
        self.log = log
        self.open_uploads = open_uploads
        self.metrics = metrics
        self.health = S3Health(log)
        self.health.waiting = self.n_waiting
        self.stopping = threading.Event()
        self._uploads: dict[int, FileUpload] = {}
        self._lock = threading.Lock()
        self._last_of_key: dict[str, FileUpload] = {}
        #: Bytes handed over for upload and not yet sent (parts and whole small files).
        self._backlog = 0
        self._backlog_limit = options.max_parts_in_flight * options.part_size
        #: Notified whenever the backlog shrinks (the consumer loops wait on it).
        self._room = threading.Condition(self._lock)
        self._part_pool = ThreadPoolExecutor(
            options.max_parts_in_flight, thread_name_prefix="s3-part"
        )
        self._finish_pool = ThreadPoolExecutor(
            options.finish_workers, thread_name_prefix="s3-finish"
        )
        #: Aborts refused for now (S3 unreachable), tried again with back-off one at
        #: a time, so they take no finishing thread from the files. Its name makes
        #: ``stop`` wait for it like the finishing threads.
        self._abort_pool = ThreadPoolExecutor(1, thread_name_prefix="s3-finish-abort")
        #: Files whose upload cannot go on in this run (e.g. the multipart upload
        #: vanished): kept pinned, and listed by ``check``.
        self.held: dict[int, tuple[str, str]] = {}
        self.abandoned: list[str] = []
        self.topic_id = ledger.topic_id

    # -- what the consumer loops ask --------------------------------------------

    def can_accept(self) -> bool:
        """False while the bytes handed over for upload are at the memory bound
        (``max_parts_in_flight`` parts' worth). Counted in bytes, not uploads: a
        count would let only that many small files be sent at once, far fewer
        than the finish workers could PUT side by side."""
        return self._backlog < self._backlog_limit

    def wait_for_room(self, timeout: float) -> bool:
        """Waits up to ``timeout`` s until the backlog is below its bound."""
        with self._room:
            return self._room.wait_for(self.can_accept, timeout)

    def _grow_backlog(self, size: int) -> int:
        """Counts ``size`` bytes in; returns what to count out when they are sent."""
        cost = max(size, MIN_BACKLOG_COST)
        with self._lock:
            self._backlog += cost
        return cost

    def _shrink_backlog(self, cost: int) -> None:
        with self._lock:
            self._backlog -= cost
            self._room.notify_all()

    def n_waiting(self) -> int:
        with self._lock:
            return sum(fu.state in ("uploading", "finishing") for fu in self._uploads.values())

    def uploads(self) -> list[FileUpload]:
        with self._lock:
            return list(self._uploads.values())

    def busy(self) -> bool:
        with self._lock:
            return any(fu.state in ("uploading", "finishing") for fu in self._uploads.values())

    # -- events ---------------------------------------------------------------------

    def handle(self, events: list[_core.Event]) -> None:
        for ev in events:
            if isinstance(ev, _core.PartReady):
                self._on_part(ev)
            elif isinstance(ev, _core.FileStarted):
                self._on_started(ev)
            elif isinstance(ev, _core.FileComplete):
                self._on_complete(ev)
            elif isinstance(ev, _core.FileFailed):
                self._on_failed(ev)
            elif isinstance(ev, _core.FileSuperseded):
                self._on_superseded(ev)
            elif isinstance(ev, _core.MessageRejected):
                self.log.error(
                    f"Skipping message at {self.o.topic}[{ev.partition}]@{ev.offset}: {ev.reason}"
                )
                # Accounted for: the commit metadata carries it as done, so a reader
                # after a restart or rebalance skips it instead of logging it again.
                self.ledger.skip_offsets(ev.partition, [(ev.offset, ev.offset + 1)])

    def _key(self, info: _core.FileInfo) -> str:
        return f"{self.o.topic}/{info.rel_output_path}"

    def _get(self, info: _core.FileInfo) -> FileUpload:
        with self._lock:
            fu = self._uploads.get(info.instance)
            if fu is None:
                fu = FileUpload(info=info, key=self._key(info), first_message=datetime.now())
                self._uploads[info.instance] = fu
            return fu

    def _pop(self, instance: int) -> FileUpload | None:
        with self._lock:
            return self._uploads.pop(instance, None)

    def _on_started(self, ev: _core.FileStarted) -> None:
        info = ev.file
        fu = self._get(info)
        rx = self.o.download_regex
        if rx is not None and not rx.match(info.rel_path):
            fu.ignored = True
            return
        if info.echo:
            # Possibly stray duplicates of a file already transferred: it is
            # recorded only if it completes (then it was really produced again).
            return
        self.registry.register_in_progress(info.rel_path, info.filename, info.n_chunks)

    def _on_part(self, ev: _core.PartReady) -> None:
        fu = self._get(ev.file)
        if fu.ignored:
            return
        fu.state = "uploading"
        cost = self._grow_backlog(len(ev.data))
        try:
            fut = self._part_pool.submit(
                self._upload_part, fu, ev.part_number, ev.data, ev.crc64nvme, cost
            )
        except BaseException:
            self._shrink_backlog(cost)
            raise
        # Not fu.lock: a part worker holds it while starting the upload, which can
        # hang on S3; the consumer thread must never wait for S3.
        with fu.parts_lock:
            fu.parts.append(fut)

    def _on_complete(self, ev: _core.FileComplete) -> None:
        info = ev.file
        fu = self._get(info)
        fu.offsets = ev.offsets
        fu.completed = time.monotonic()
        if fu.ignored:
            self._pop(info.instance)
            self.ledger.settle(info.instance)
            return
        fu.state = "finishing"
        with self._lock:
            # Completion order is the order the key is written in.
            fu.after = self._last_of_key.get(fu.key)
            self._last_of_key[fu.key] = fu
        if ev.data is not None:
            cost = self._grow_backlog(ev.size)
            self._finish_pool.submit(self._finish_single, fu, ev.data, ev.size, ev.crc64nvme, cost)
        else:
            self._finish_pool.submit(self._finish_multipart, fu, ev.size, ev.crc64nvme, ev.parts)

    def _on_failed(self, ev: _core.FileFailed) -> None:
        info = ev.file
        fu = self._pop(info.instance) or FileUpload(
            info=info, key=self._key(info), first_message=datetime.now()
        )
        fu.offsets = ev.offsets
        if fu.ignored:
            self.ledger.settle(info.instance)
            return
        self._discard(fu)
        status = MISMATCHED_HASH if ev.hash_mismatch else FAILED
        self.log.error(
            f"File {info.rel_output_path} cannot be reassembled ({status}; {self._culprit(ev)}): "
            f"{ev.reason}; nothing was stored"
        )
        # Reading the same bad bytes again cannot help: record, then commit past.
        self.metrics.file_failed("hash_mismatch" if ev.hash_mismatch else "bad_chunk")
        self._give_up(fu, status, ev.reason)

    def _culprit(self, ev: _core.FileFailed) -> str:
        """The message at which the file failed (else, if not known, its first chunk)."""
        partition, offset = ev.error.partition, ev.error.offset
        if partition is None or offset is None:
            return self._where(ev.file)
        return f"message at {self.o.topic}[{partition}]@{offset}"

    def _on_superseded(self, ev: _core.FileSuperseded) -> None:
        fu = self._pop(ev.file.instance)
        self.log.info(
            f"A newer version of {ev.file.rel_output_path} completed; the one being received is "
            "not needed"
        )
        if fu is not None:
            fu.finished.set()
            self._discard(fu)

    # -- S3 calls with retries ------------------------------------------------------

    def _retry(
        self, what: str, call: Callable[[], T], discarded: Callable[[], bool] | None = None
    ) -> T:
        delay = FIRST_DELAY
        while True:
            if self.stopping.is_set():
                raise ShuttingDown(what)
            if discarded is not None and discarded():
                raise Discarded(what)
            try:
                result = call()
            except Exception as err:
                self.metrics.s3_error(err)
                if not is_transient(err):
                    raise
                self.health.failed(what, err)
                if self.stopping.wait(delay * random.uniform(0.5, 1.0)):
                    raise ShuttingDown(what) from err
                delay = min(delay * 2, MAX_DELAY)
                continue
            self.health.ok()
            return result

    def _start_multipart(self, fu: FileUpload) -> str:
        """One CreateMultipartUpload attempt, recorded before (the intent: the answer
        may never be recorded) and after (the upload id), both before any part."""
        record = self.open_uploads
        token = ""
        if record is not None:
            with _local_io(record.path):
                token = record.starting(fu.key, bucket=self.o.bucket)
        upload_id = self.store.start_multipart(fu.key, position=self._position(fu))
        if record is not None:
            with _local_io(record.path):
                record.started(fu.key, upload_id, bucket=self.o.bucket, token=token)
        return upload_id

    def _upload_part(
        self, fu: FileUpload, number: int, data: Any, crc: int, cost: int
    ) -> CompletedPartTypeDef | None:
        try:
            with fu.lock:
                if fu.upload_id is None and fu.error is None and not fu.dropped:
                    try:
                        fu.upload_started = datetime.now(UTC)
                        fu.upload_id = self._retry(
                            f"starting the multipart upload of {fu.key}",
                            lambda: self._start_multipart(fu),
                        )
                        self.log.debug(f"Started the multipart upload {fu.upload_id} of {fu.key}")
                    except ShuttingDown:
                        raise
                    except Exception as err:
                        fu.error = (
                            f"starting the multipart upload failed: {describe_client_error(err)}"
                        )
                    if fu.upload_id is not None and (fu.dropped or self.stopping.is_set()):
                        # Dropped or stopping while the upload was being started (S3
                        # slow or down): nobody will complete it, and the abort of a
                        # revocation or of stop() may have run before it existed.
                        fu.aborted = True
                        self._abort_now(fu.key, fu.upload_id)
                        return None
                if fu.error or fu.upload_id is None or fu.dropped:
                    return None
                upload_id = fu.upload_id
            result = self._retry(
                f"uploading part {number} of {fu.key}",
                lambda: self.store.upload_part(fu.key, upload_id, number, data, crc),
                discarded=lambda: fu.dropped,
            )
            failpoints.hit("part_uploaded")
            return result
        except Discarded:
            return None
        finally:
            data = None  # the part's memory goes as soon as it is sent
            self._shrink_backlog(cost)

    def _wait_turn(self, fu: FileUpload) -> None:
        """Waits until the instance of the same key that completed before this one
        has finished writing, so the newer one is written last."""
        prev = fu.after
        while prev is not None and not prev.finished.wait(0.2):
            if self.stopping.is_set():
                raise ShuttingDown(fu.key)
        fu.after = None

    def _done_with(self, fu: FileUpload) -> None:
        fu.finished.set()
        with self._lock:
            if self._last_of_key.get(fu.key) is fu:
                del self._last_of_key[fu.key]

    def _finish_single(self, fu: FileUpload, data: Any, size: int, crc: int, cost: int) -> None:
        try:
            try:
                self._wait_turn(fu)
                position = self._position(fu)
                written = self._write(
                    fu,
                    f"PUT of {fu.key}",
                    lambda cond: self.store.put(
                        fu.key, data, crc64nvme=crc, position=position, condition=cond
                    ),
                )
            finally:
                data = None
                self._shrink_backlog(cost)
            if written is None:
                self._newer_in_bucket(fu)
                return
            self._validated(fu, size, written, parts=0)
        except ShuttingDown:
            self.log.info(f"Stopping: {fu.info.rel_output_path} is left for the next run")
        except Exception as err:
            self._upload_failed(fu, f"PUT failed: {describe_client_error(err)}", err)
        finally:
            self._done_with(fu)

    def _finish_multipart(self, fu: FileUpload, size: int, crc: int, n_parts: int) -> None:
        try:
            # Another consumer thread may still be handing over the file's last part.
            while len(fu.parts) < n_parts and not fu.error:
                if self.stopping.wait(0.005):
                    raise ShuttingDown(fu.key)
            wait(fu.parts)
            errors = [f.exception() for f in fu.parts if f.exception() is not None]
            if any(isinstance(e, ShuttingDown) for e in errors):
                raise ShuttingDown(fu.key)
            if fu.error or errors:
                reason = fu.error or f"uploading a part failed: {describe_client_error(errors[0])}"  # type: ignore[arg-type]
                self._abort(fu)
                self._upload_failed(fu, reason, errors[0] if errors else None)
                return
            upload_id = fu.upload_id
            assert upload_id is not None
            parts = [p for p in (f.result() for f in fu.parts) if p is not None]
            self._wait_turn(fu)
            failpoints.hit("before_complete")
            attempts = 0

            def complete(cond: Condition | None) -> dict[str, str]:
                nonlocal attempts
                attempts += 1
                try:
                    return self.store.complete_multipart(
                        fu.key, upload_id, parts, crc, condition=cond
                    )
                except ClientError as err:
                    # A retried completion whose first attempt did complete: the
                    # validation below checks the object that is there.
                    if attempts > 1 and error_code(err) == "NoSuchUpload":
                        return {"ChecksumCRC64NVME": ""}
                    raise

            written = self._write(fu, f"completing the multipart upload of {fu.key}", complete)
            if written is None:
                self._abort(fu)
                self._newer_in_bucket(fu)
                return
            sent = written
            if sent.get("ChecksumCRC64NVME") == "":
                sent = {}
            if self.open_uploads is not None:
                self.open_uploads.ended(upload_id)
            self._validated(fu, size, sent, parts=len(parts))
            if fu.upload_started is not None:
                self._abort_older_uploads(fu.key, upload_id, fu.upload_started)
        except ShuttingDown:
            self.log.info(f"Stopping: {fu.info.rel_output_path} is left for the next run")
        except Exception as err:
            self._abort(fu)
            self._upload_failed(
                fu,
                f"completing the multipart upload failed: {describe_client_error(err)}",
                err,
            )
        finally:
            self._done_with(fu)

    def _position(self, fu: FileUpload) -> str:
        return f"{self.topic_id}/{fu.info.first_partition}/{fu.info.first_offset}"

    def _write(
        self,
        fu: FileUpload,
        what: str,
        write: Callable[[Condition | None], dict[str, str]],
    ) -> dict[str, str] | None:
        """The final write of a file. When one of its partitions moved to another
        member while it was owned, the write is conditional on the object not having
        changed since it was read, and skipped (None) if the bucket already holds a
        newer version (a later message of the same partition)."""
        if not fu.moved:
            return self._retry(what, lambda: write(None))
        ours = self._position(fu)
        while True:
            stored = self._retry(f"reading {fu.key}", lambda: self.store.stored_position(fu.key))
            if stored is not None and newer_position(stored[1], ours):
                return None
            cond: Condition = ("match", stored[0]) if stored is not None else ("none", "*")
            try:
                return self._retry(what, lambda c=cond: write(c))  # type: ignore[misc]
            except ClientError as err:
                if error_code(err) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    continue  # written by someone else meanwhile: look again
                raise

    def _abort_older_uploads(self, key: str, ours: str, started: datetime) -> None:
        """Aborts open multipart uploads of ``key`` started no later than ours: those
        of a member that died (or lost the partition) while uploading the same
        file, which this member has now transferred. Their owner, if it still
        runs, gets ``NoSuchUpload`` and leaves the file to be read again."""
        try:
            listing = self.store.client.list_multipart_uploads(Bucket=self.o.bucket, Prefix=key)
        except Exception as err:
            self.log.debug(f"Could not list open uploads of {key}: {describe_client_error(err)}")
            return
        own = {u.upload_id for u in self.open_uploads.open_now()} if self.open_uploads else set()
        own.add(ours)
        for u in listing.get("Uploads", []):
            if u.get("Key") != key or u["UploadId"] in own or u["Initiated"] >= started:
                continue
            self.log.info(
                f"Aborting the multipart upload {u['UploadId']} of {key} left by another member "
                "(this one transferred the file)"
            )
            if self.open_uploads is not None:
                # Nobody else records it: a crash mid-abort leaves it to our next start.
                try:
                    self.open_uploads.started(
                        key, u["UploadId"], u["Initiated"], bucket=self.o.bucket
                    )
                except OSError as err:  # the file is transferred: this must not fail it
                    self.log.warning(
                        f"Could not record the upload {u['UploadId']} of {key} before aborting "
                        f"it ({err}); if this run dies now, the age sweep cleans it up"
                    )
            self._abort_now(key, u["UploadId"])

    def _discard(self, fu: FileUpload) -> None:
        """The file will not be completed here: its multipart upload, if it has or
        is getting one, is aborted in the background once its parts have ended."""
        fu.dropped = True
        if fu.upload_id is not None or fu.parts:
            self._finish_pool.submit(self._abort, fu)

    def _abort(self, fu: FileUpload) -> None:
        """Aborts the file's multipart upload once no part of it is on the wire any
        more. A part that reaches S3 after the abort may be stored anyway (AWS says
        an upload may need aborting again; SeaweedFS lists the upload again), so
        the abort waits for them; no part starts once ``fu.dropped`` is set."""
        deadline = time.monotonic() + PARTS_ON_THE_WIRE_WAIT
        while True:
            with fu.parts_lock:
                pending = [f for f in fu.parts if not f.done()]
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                break
            wait(pending, timeout=left)
        with fu.lock:  # a part worker may be starting the upload
            upload_id = None if fu.aborted else fu.upload_id
            fu.aborted = True
        if upload_id is not None:
            self._abort_now(fu.key, upload_id)

    def _abort_now(self, key: str, upload_id: str) -> None:
        """Aborts an upload. One that S3 refuses for now is tried again in the
        background, with back-off, until it goes through or the run stops; one that
        cannot go through stays in the record of open uploads, which the next
        start's sweep aborts. The caller never waits for the retries."""
        try:
            self.store.abort_multipart(key, upload_id)
        except Exception as err:
            if error_code(err) != "NoSuchUpload":  # else aborted already
                again = is_transient(err) and not self.stopping.is_set()
                self.log.warning(
                    f"Could not abort the multipart upload {upload_id} of {key}: "
                    f"{describe_client_error(err)}; "
                    + ("trying again in the background" if again else "the next start cleans it up")
                )
                if again:
                    try:
                        self._abort_pool.submit(self._abort_again, key, upload_id)
                    except RuntimeError:  # shut down meanwhile: left for the next start
                        pass
                return
        if self.open_uploads is not None:
            self.open_uploads.ended(upload_id)

    def _abort_again(self, key: str, upload_id: str) -> None:
        def abort() -> None:
            try:
                self.store.abort_multipart(key, upload_id)
            except ClientError as err:
                if error_code(err) != "NoSuchUpload":
                    raise

        what = f"aborting the multipart upload {upload_id} of {key}"
        try:
            self._retry(what, abort)
        except ShuttingDown:
            self.log.info(f"Stopping: {what} is left for the next start")
            return
        except Exception as err:
            self.log.warning(
                f"Could not abort the multipart upload {upload_id} of {key}: "
                f"{describe_client_error(err)}; the next start cleans it up"
            )
            return
        self.log.info(f"Aborted the multipart upload {upload_id} of {key}")
        if self.open_uploads is not None:
            self.open_uploads.ended(upload_id)

    def _validated(self, fu: FileUpload, size: int, sent: dict[str, str], parts: int) -> None:
        info = fu.info
        failpoints.hit("uploaded")
        v: Validation
        try:
            v = self._retry(
                f"reading back {fu.key}",
                lambda: self.store.validate_object(fu.key, size, sent, info.file_hash),
            )
        except ShuttingDown:
            raise
        except Exception as err:
            v = Validation(
                False,
                "error",
                f"could not read back the object: {describe_client_error(err)}",
            )
        if not v.ok:
            self._upload_failed(fu, f"validation failed: {v.text}", None)
            return
        failpoints.hit("validated")
        self._record_transferred(fu, size, parts, v)

    def abandon(
        self, info: _core.FileInfo, offsets: list[tuple[int, list[tuple[int, int]]]], why: str
    ) -> None:
        """The ledger gave the file up (its producer stopped): record it and settle."""
        fu = self._pop(info.instance) or FileUpload(
            info=info, key=self._key(info), first_message=datetime.now()
        )
        self._discard(fu)
        fu.offsets = offsets
        if info.echo or fu.ignored:
            self.ledger.settle(info.instance)
            return
        self.log.warning(
            f"Giving up {info.rel_output_path} ({self._where(info)}): {why}; "
            f"recorded as {ABANDONED}"
        )
        self._give_up(fu, ABANDONED, why)

    def revoked(self, dropped: list[_core.FileInfo], partitions: set[int]) -> None:
        for up in self.uploads():
            if up.info.first_partition in partitions or any(p in partitions for p, _ in up.offsets):
                up.moved = True
        for info in dropped:
            fu = self._pop(info.instance)
            if fu is None:
                continue
            self._discard(fu)

    # -- shutdown ---------------------------------------------------------------------

    def stop(self, grace: float, join_seconds: float = 15.0) -> None:
        """Lets uploads in flight finish for up to ``grace`` seconds, then gives
        up the rest (unsettled: their offsets stay uncommitted). S3 calls still on
        the wire are waited for up to ``join_seconds`` more; the CLI leaves the
        ones that outlast that."""
        deadline = time.monotonic() + grace
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stopping.set()
        self._part_pool.shutdown(wait=False, cancel_futures=True)
        self._finish_pool.shutdown(wait=False, cancel_futures=True)
        self._abort_pool.shutdown(wait=False, cancel_futures=True)
        end = time.monotonic() + max(0.0, join_seconds)
        for t in threading.enumerate():
            if t.name.startswith(("s3-part", "s3-finish")):
                t.join(max(0.0, end - time.monotonic()))
        leftovers = self.uploads()
        with self._lock:
            self._uploads.clear()
        for fu in leftovers:
            # Unfinished files: their offsets stay uncommitted, so the next run
            # reads them again; an open multipart upload would only be garbage.
            if fu.upload_id and self.health.reachable:
                fu.dropped = True
                self._abort(fu)  # may be aborted already (dropped, or stopping)
