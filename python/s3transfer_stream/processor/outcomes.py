"""What is recorded when a file's upload ends, one way or another.

Every outcome is journaled first (the durable record a restart trusts), then
written to the registry, and only then is the file settled in the ledger, so its
offsets may be committed past. The :class:`~.uploads.Uploader` inherits this
half; the other half talks to S3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from .. import _core, failpoints
from ..journal import JournalEntry, TransferJournal
from ..metrics import ProcessorHooks
from ..registry import ABANDONED, FAILED, StreamRegistry
from ..s3 import Validation, error_code
from .ledger import Ledger
from .options import ProcessorOptions, Stats, TransferResult
from .upload_state import FileUpload


class RecordsOutcomes:
    """Records transfers, failures and files given up, then settles them."""

    o: ProcessorOptions
    journal: TransferJournal
    registry: StreamRegistry
    ledger: Ledger
    stats: Stats
    metrics: ProcessorHooks
    log: logging.Logger
    topic_id: str
    #: Files whose upload cannot go on in this run, by instance: (path, reason).
    held: dict[int, tuple[str, str]]
    #: The latest files given up (at most 50), for the check listing.
    abandoned: list[str]
    _pop: Callable[[int], FileUpload | None]

    def _where(self, info: _core.FileInfo) -> str:
        """Where a file's first chunk sits in the log, for messages about the file."""
        return f"first chunk at {self.o.topic}[{info.first_partition}]@{info.first_offset}"

    def _record_transferred(self, fu: FileUpload, size: int, parts: int, v: Validation) -> None:
        """Journal first (the durable record), then the registry, then the offsets go."""
        info = fu.info
        entry = JournalEntry(
            rel_path=info.rel_path,
            filename=info.filename,
            n_chunks=info.n_chunks,
            key=fu.key,
            size=size,
            first_message=fu.first_message,
            processed_at=datetime.now().replace(microsecond=0),
            offsets=fu.offsets,
            topic_id=self.topic_id,
        )
        self.journal.append(entry)
        self.registry.register_processed(
            info.rel_path,
            info.filename,
            info.n_chunks,
            fu.first_message,
            processed_at=entry.processed_at,
        )
        failpoints.hit("registered")
        self._pop(info.instance)
        self.ledger.settle(info.instance)
        self.stats.transferred(TransferResult(info.rel_output_path, fu.key, size, parts, v.text))
        self.metrics.file_transferred(fu.started, fu.completed)
        how = f"{parts} parts" if parts else "single PUT"
        self.log.info(
            f"Transferred {info.rel_output_path} -> s3://{self.o.bucket}/{fu.key} ({size} bytes, {how}); validated: {v.text}"
        )

    def _upload_failed(self, fu: FileUpload, reason: str, err: BaseException | None) -> None:
        info = fu.info
        if err is not None and error_code(err) == "NoSuchUpload":
            # The multipart upload vanished (aborted by someone else): its parts are
            # gone from memory too, so only reading the file again can help. Keep it
            # pinned; the next run re-reads it.
            self.log.error(
                f"Cannot finish {info.rel_output_path} -> s3://{self.o.bucket}/{fu.key}: {reason}; "
                "it stays uncommitted and is transferred again by the next run"
            )
            self.held[info.instance] = (info.rel_output_path, reason)
            self.registry.register_failed(
                info.rel_path, info.filename, info.n_chunks, status=FAILED
            )
            fu.state = "held"
            return
        self.log.error(
            f"Failed to transfer {info.rel_output_path} to s3://{self.o.bucket}/{fu.key} "
            f"({self._where(info)}): {reason}; "
            "recorded as failed and committed past (send the file again to retry it)"
        )
        self.metrics.file_failed("validation" if reason.startswith("validation") else "s3_refused")
        self._give_up(fu, FAILED, reason)

    def _journal_not_transferred(self, fu: FileUpload, outcome: str, reason: str) -> None:
        """The durable record that the file's offsets are accounted for without a transfer."""
        info = fu.info
        self.journal.append(
            JournalEntry(
                rel_path=info.rel_path,
                filename=info.filename,
                n_chunks=info.n_chunks,
                key=fu.key,
                size=0,
                first_message=fu.first_message,
                processed_at=datetime.now().replace(microsecond=0),
                offsets=fu.offsets,
                topic_id=self.topic_id,
                outcome=outcome,
                reason=reason,
            )
        )

    def _give_up(self, fu: FileUpload, status: str, reason: str) -> None:
        """Records a file that will not be transferred, durably, then settles it."""
        info = fu.info
        self._journal_not_transferred(fu, status, reason)
        self.registry.register_failed(info.rel_path, info.filename, info.n_chunks, status=status)
        self._pop(info.instance)
        self.ledger.settle(info.instance)
        if status == ABANDONED:
            self.stats.add(files_abandoned=1)
            self.abandoned.append(info.rel_output_path)
            del self.abandoned[:-50]
        else:
            self.stats.add(files_failed=1)

    def _newer_in_bucket(self, fu: FileUpload) -> None:
        info = fu.info
        self.log.info(
            f"Not writing {info.rel_output_path}: s3://{self.o.bucket}/{fu.key} already holds a "
            "newer version, written by the member that took over its partition"
        )
        self._journal_not_transferred(fu, "superseded", "a newer version is in the bucket")
        self.registry.discard_in_progress(info.rel_path, started_by=datetime.now())
        self._pop(info.instance)
        self.ledger.settle(info.instance)
