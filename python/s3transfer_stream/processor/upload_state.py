"""The state of the uploads: one file's upload, whether S3 answers, and the two
ways an upload is cut short (the process stops, or the file is not needed here)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from .. import _core
from ..s3 import describe_client_error

if TYPE_CHECKING:  # boto3-stubs[s3], a dev dependency: types only
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef


class ShuttingDown(Exception):
    """Raised inside an upload that is given up because the process stops; its
    file stays unsettled, so its offsets stay uncommitted."""


class Discarded(Exception):
    """Raised inside a part upload of a file that will not be completed here."""


class S3Health:
    """Whether S3 answers, since when it does not, and the last reason."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self.down_since_wall: datetime | None = None
        self.last_error = ""
        self._last_report = 0.0
        self.waiting: Callable[[], int] = lambda: 0

    @property
    def reachable(self) -> bool:
        return self.down_since is None

    def failed(self, what: str, err: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            self.last_error = f"{what}: {describe_client_error(err)}"  # type: ignore[arg-type]
            first = self.down_since is None
            if first:
                self.down_since = now
                self.down_since_wall = datetime.now().replace(microsecond=0)
            if first or now - self._last_report >= 30.0:
                self._last_report = now
                since = self.down_since_wall.isoformat(sep=" ") if self.down_since_wall else "?"
                self._log.warning(
                    f"S3 unreachable since {since} ({self.last_error}); {self.waiting()} file(s) "
                    "waiting, retrying with back-off; nothing is committed past them"
                )

    def ok(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is None:
                return
            took = time.monotonic() - self.down_since
            self.down_since = self.down_since_wall = None
        self._log.info(f"S3 reachable again after {took:.0f} s; uploads go on")

    def describe(self) -> str:
        if self.down_since is None:
            return "S3 reachable"
        since = self.down_since_wall.isoformat(sep=" ") if self.down_since_wall else "?"
        return f"S3 unreachable since {since}: {self.last_error}"


@dataclass
class FileUpload:
    """Upload state of one file instance (as numbered by the ledger)."""

    info: _core.FileInfo
    key: str
    first_message: datetime
    # Parts of a file spread over partitions can arrive on two consumer threads at once.
    lock: threading.Lock = field(default_factory=threading.Lock)
    parts_lock: threading.Lock = field(default_factory=threading.Lock)
    upload_id: str | None = None
    upload_started: datetime | None = None
    parts: list[Future[CompletedPartTypeDef | None]] = field(default_factory=list)
    error: str | None = None
    ignored: bool = False
    offsets: list[tuple[int, list[tuple[int, int]]]] = field(default_factory=list)
    #: Set once this instance's upload is finished one way or another; the next
    #: instance of the same key waits for it before writing.
    finished: threading.Event = field(default_factory=threading.Event)
    after: FileUpload | None = None
    state: str = "receiving"
    #: One of its partitions left this process while it was owned: another member
    #: may write the key meanwhile, so the final write is conditional.
    moved: bool = False
    #: It will not be completed here (dropped by a revocation, failed, superseded,
    #: abandoned): no more parts are sent, and its multipart upload is aborted once
    #: the parts already on the wire have ended.
    dropped: bool = False
    #: Its multipart upload was aborted (once is enough: no part is sent after).
    aborted: bool = False
    #: time.monotonic() of its first and its last chunk (for the latency metrics).
    started: float = field(default_factory=time.monotonic)
    completed: float = 0.0
