"""What the processor is told, and what it counts."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..crypto import DecryptOptions
    from ..s3 import Validate

MiB = 1 << 20


@dataclass
class ProcessorOptions:
    bucket: str
    topic: str
    group_id: str
    output_dir: Path
    n_threads: int = 2
    part_size: int = 8 * MiB
    max_parts_in_flight: int = 4
    max_buffered: int = 1024 * MiB
    validate: Validate = "checksum"
    download_regex: re.Pattern[str] | None = None
    commit_interval: float = 2.0
    batch_size: int = 16
    poll_timeout: float = 0.5
    #: SIGTERM/quit: how long uploads in flight may still finish (and be committed).
    shutdown_grace: float = 30.0
    #: A file that gets no chunk for this long while every owned partition is read
    #: to its end is reported (once) as waiting for chunks it cannot see; a file or
    #: upload that pins a partition this long while the log moves on is reported too.
    stall_seconds: float = 30.0
    #: A file in progress that got no chunk for this long, while at least
    #: ``abandon_offset_gap`` newer messages arrived in one of its partitions, is
    #: given up (registry status ``abandoned``) so it cannot pin the partition for ever.
    abandon_seconds: float = 900.0
    abandon_offset_gap: int = 1000
    #: Concurrent single-PUT uploads and multipart completions.
    finish_workers: int = 8
    #: Open multipart uploads under the topic's prefix older than this are
    #: aborted at start-up (uploads of members that died and never came back).
    stale_upload_seconds: float = 24 * 3600.0
    #: How long a KafkaCrypto-encrypted message may wait for its key before each
    #: warning, and whether non-KafkaCrypto values pass as plaintext; used only with a
    #: ``[kafkacrypto]`` section (None: upstream's defaults). Typed lazily: building it
    #: imports KafkaCrypto's wrapper, which a plaintext run never loads.
    decrypt: DecryptOptions | None = None


@dataclass(frozen=True)
class TransferResult:
    """One file safely in the bucket, and how that was checked."""

    rel_path: str
    key: str
    size: int
    parts: int
    validation: str


@dataclass
class Stats:
    messages_read: int = 0
    messages_processed: int = 0
    messages_rejected: int = 0
    messages_deferred: int = 0
    #: Times a message was held back because it could not be decrypted (yet).
    messages_held: int = 0
    files_transferred: int = 0
    files_failed: int = 0
    files_abandoned: int = 0
    bytes_transferred: int = 0
    recent: list[str] = field(default_factory=list)
    results: list[TransferResult] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **deltas: int) -> None:
        with self.lock:
            for k, v in deltas.items():
                setattr(self, k, getattr(self, k) + v)

    def transferred(self, result: TransferResult) -> None:
        with self.lock:
            self.files_transferred += 1
            self.bytes_transferred += result.size
            self.recent.append(result.rel_path)
            del self.recent[:-50]
            self.results.append(result)
            del self.results[:-1000]
