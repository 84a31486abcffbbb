"""Multipart uploads left open by runs that ended badly, and how they are cleaned.

A multipart upload that is never completed or aborted keeps its parts (and their
storage cost) on the server for ever, invisible to object listings. A run that
is killed, or loses its S3 connection at the wrong moment, leaves such uploads
behind. They are cleaned in three layers, from exact to blunt:

1. **Our own, exactly.** Every upload this member starts is recorded, with its
   upload id, in an fsynced append-only file (:class:`OpenUploads`, JSON lines
   in ``LOGS/``), and recorded again when it is completed or aborted. The next
   run that takes over the record aborts precisely the uploads that were started
   and never ended -- never an upload of another member, whatever its key.
   Several processes may share one ``LOGS/`` directory: each holds an exclusive
   lock on its own numbered record (:meth:`OpenUploads.claim`), and a record whose
   lock nobody holds belongs to a process that died; the next member to start on
   that host adopts it and cleans its uploads too.

2. **Members that died and never came back, by age.** A member on another host
   cannot read our record, and one that never restarts never cleans its own. So
   at start-up every member also aborts uploads under the topic's prefix that
   were *initiated* longer ago than a threshold *and* received no part for as
   long (:func:`abort_stale_uploads`, ``older_than_seconds``). The threshold must
   exceed the longest time a live upload can go without a new part (a slow
   producer, an S3 outage ridden out by retries); hours, not minutes. Ages are
   measured against the server's clock: ours, unless the listing's ``Date``
   header shows that the two differ by more than its one-second resolution, so a
   member whose clock is off does not misjudge them. A live upload misjudged as
   dead fails at its next part or at completion with ``NoSuchUpload``; whoever
   calls this must make the processor treat that as a reason to upload the file
   afresh, never as a permanent failure.

   Marking uploads with the group in their metadata (``x-amz-meta-s3ts-group``,
   ``x-amz-meta-s3ts-member``, see :class:`~s3transfer_stream.s3.ObjectStore`)
   does not help here: S3's ListMultipartUploads returns only key, upload id,
   initiator/owner, storage class, checksum algorithm and initiation time, never
   user metadata (SeaweedFS returns key, upload id and ``Initiated`` only). The
   marking is carried to the completed object, where a person (``head-object``)
   can see which group and member wrote it.

3. **Backstop: a bucket lifecycle rule.** Whatever the processes do, the bucket
   itself should abort incomplete uploads after some days::

       aws s3api put-bucket-lifecycle-configuration --bucket MY-BUCKET \\
           --lifecycle-configuration file://lifecycle.json

   with ``lifecycle.json``::

       {
         "Rules": [
           {
             "ID": "abort-incomplete-multipart-uploads",
             "Status": "Enabled",
             "Filter": {"Prefix": ""},
             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2}
           }
         ]
       }

   (``"Filter": {"Prefix": "lab_data/"}`` limits it to one topic's keys.) The
   command *replaces* the bucket's whole lifecycle configuration: merge the rule
   into any existing one (``aws s3api get-bucket-lifecycle-configuration``)
   first. ``DaysAfterInitiation`` must exceed the longest time a file can take
   to arrive (S3 counts from initiation, not from the last part). AWS applies
   such rules asynchronously, typically within a day of the due time. The local
   SeaweedFS accepts and returns this rule (PutBucketLifecycleConfiguration,
   GetBucketLifecycleConfiguration); it executes lifecycle rules in a scheduled
   lifecycle worker job, not on the S3 gateway itself, so on a SeaweedFS
   deployment check that the worker runs.

The id of an upload is known only once CreateMultipartUpload answers, so (1)
records an *intent* first: key and time, fsynced before each attempt of the call.
A run that dies between the answer and the record line (or whose call failed
after the server had created the upload) leaves an intent without an upload id;
the next start aborts the uploads of exactly that key initiated within the call's
time bound (:data:`CREATE_CALL_SECONDS`) that have no part: ours sends its first
part only after recording the id, so an upload with a part belongs to someone
else. The same record is used when a member aborts uploads of another member
that it found for a file it has just transferred: each is recorded before its
abort, so a crash in the middle leaves it to the next start, not to (2).

About 700 lines, a sixth of them this explanation: the record and the sweep are
two halves of one job (the sweep aborts what the record says is ours).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote_plus

from botocore.exceptions import BotoCoreError, ClientError

from .s3 import describe_client_error

if TYPE_CHECKING:  # boto3-stubs[s3], a dev dependency: types only
    from mypy_boto3_s3 import S3Client

#: Record files one ``LOGS/`` directory can hold for one stem (concurrent processes).
MAX_SLOTS = 64

#: Uploads listed per ListMultipartUploads request (S3's maximum).
PAGE_SIZE = 1000


class RecordBusy(Exception):
    """Another live process holds the lock on this record."""


@dataclass(frozen=True)
class LeftOpen:
    """An upload a run started and did not end (complete or abort)."""

    key: str
    upload_id: str
    #: When the run started it (its own clock), UTC.
    initiated: datetime
    #: The bucket it went to ("" if the record did not say).
    bucket: str = ""


@dataclass(frozen=True)
class Unrecorded:
    """A CreateMultipartUpload a run began and whose answer it never recorded."""

    key: str
    #: Just before the attempt, on our clock, UTC.
    at: datetime
    bucket: str = ""
    #: Ties the attempt to the ``started`` line that records its answer.
    token: str = ""


#: How long after its intent line one CreateMultipartUpload attempt can still
#: create an upload: botocore's 3 tries of 10 s connect and 60 s read, with back-off.
CREATE_CALL_SECONDS = 300.0


class Aborted(NamedTuple):
    key: str
    upload_id: str
    why: str


class SweepResult(list[Aborted]):
    """The uploads :func:`abort_stale_uploads` aborted, plus what the sweep learnt.

    It is a list of :class:`Aborted` ``(key, upload_id, why)`` tuples; besides:
    ``complete`` is True if the whole listing was read, ``failed`` holds the ids
    whose abort failed (other than with ``NoSuchUpload``), ``seen`` the ids listed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.complete = False
        self.failed: set[str] = set()
        self.seen: set[str] = set()
        #: An upload that an unrecorded attempt may have made could not be checked
        #: or aborted: the intents are kept for the next sweep.
        self.unrecorded_unsettled = False


def _utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC (as S3 sends times)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OpenUploads:
    """The durable record of the multipart uploads one process has open.

    One JSON line per event, appended and fsynced: ``starting`` (key, when,
    bucket, token) before each CreateMultipartUpload attempt, ``started`` (key,
    upload id, when, bucket, token) after it answered and before the first part,
    ``ended`` (upload id) after it was completed or aborted, ``settled`` (token)
    once a sweep has dealt with an attempt that was never answered. The process holds an
    exclusive lock (``<path>.lock``, ``flock``) for as long as the object is open,
    so no other process reads its uploads as left open; the kernel releases it
    when the process dies, however it dies.

    At load, uploads started and never ended by earlier runs become
    :meth:`left_open`; a torn last line (a crash mid-append) is ignored, and the
    file is rewritten with just the open uploads. It is compacted in the same way
    while running once ended lines dominate. Thread-safe.
    """

    def __init__(self, path: Path, *, log: logging.Logger | None = None) -> None:
        self.path = Path(path)
        self._log = log or logging.getLogger("s3transfer_stream")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = _lock(self.path)
        if self._lock_fd is None:
            raise RecordBusy(f"{self.path} is in use by another process")
        self._mutex = threading.Lock()
        self._lines = 0
        self._fh: Any = None
        try:
            self._open, self._pending = _read_record(self.path, self._log)
            self._earlier: dict[str, LeftOpen] = dict(self._open)
            self._earlier_pending: dict[str, Unrecorded] = dict(self._pending)
            self._rewrite()
        except BaseException:
            self.close()
            raise

    # -- finding a record -------------------------------------------------------

    @classmethod
    def claim(
        cls,
        directory: Path,
        stem: str,
        *,
        log: logging.Logger | None = None,
        max_slots: int = MAX_SLOTS,
    ) -> OpenUploads:
        """The first free record ``<directory>/<stem>.<n>.jsonl`` (n = 0, 1, ...).

        Every other record of the same stem that no live process holds belongs
        to a process that died: its open uploads are adopted into this one (so
        they appear in :meth:`left_open`) and its file is removed. ``stem`` must
        name the topic and group unambiguously; records are found by exact name.
        """
        directory = Path(directory)
        mine: OpenUploads | None = None
        for n in range(max_slots):
            try:
                mine = cls(directory / f"{stem}.{n}.jsonl", log=log)
                break
            except RecordBusy:
                continue
        if mine is None:
            raise RecordBusy(f"all {max_slots} records {directory}/{stem}.N.jsonl are in use")
        for n in range(max_slots):
            other = directory / f"{stem}.{n}.jsonl"
            if other != mine.path and other.exists():
                mine._adopt(other)
        return mine

    def _adopt(self, other: Path) -> None:
        fd = _lock(other)
        if fd is None:
            return  # a live process's record
        try:
            found, pending = _read_record(other, self._log)
            with self._mutex:
                for up in found.values():
                    if up.upload_id not in self._open:
                        self._open[up.upload_id] = up
                        self._earlier[up.upload_id] = up
                        self._append(_started_line(up), sync=False)
                for tok, intent in pending.items():
                    if tok not in self._pending:
                        self._pending[tok] = intent
                        self._earlier_pending[tok] = intent
                        self._append(_starting_line(intent), sync=False)
                self._fh.flush()
                os.fsync(self._fh.fileno())
            # Only once our copy is durable.
            other.unlink(missing_ok=True)
            _fsync_dir(other.parent)
            if found or pending:
                self._log.info(
                    f"Took over {len(found)} open multipart upload(s) and {len(pending)} "
                    f"unanswered start(s) recorded by a process that ended ({other})"
                )
        finally:
            os.close(fd)  # the lock file stays: deleting it would race with others

    # -- the record ---------------------------------------------------------------

    def left_open(self) -> list[LeftOpen]:
        """Uploads started and never ended by earlier runs (and not yet forgotten)."""
        with self._mutex:
            return sorted(self._earlier.values(), key=lambda u: (u.initiated, u.upload_id))

    def left_unrecorded(self) -> list[Unrecorded]:
        """Upload starts of earlier runs whose answer was never recorded."""
        with self._mutex:
            return sorted(self._earlier_pending.values(), key=lambda u: (u.at, u.token))

    def open_now(self) -> list[LeftOpen]:
        """Every upload recorded as open, this run's and earlier runs'."""
        with self._mutex:
            return list(self._open.values())

    def starting(self, key: str, *, bucket: str = "") -> str:
        """Records that an upload of ``key`` is about to be started; call before
        each CreateMultipartUpload attempt and pass the token to :meth:`started`."""
        intent = Unrecorded(key, datetime.now(UTC), bucket, os.urandom(8).hex())
        with self._mutex:
            self._pending[intent.token] = intent
            self._append(_starting_line(intent))
        return intent.token

    def started(
        self,
        key: str,
        upload_id: str,
        initiated_time: datetime | None = None,
        *,
        bucket: str = "",
        token: str = "",
    ) -> None:
        """Records an upload as open; call before its first part is sent. Also for
        an upload of someone else that this process is about to abort."""
        up = LeftOpen(key, upload_id, _utc(initiated_time or datetime.now(UTC)), bucket)
        with self._mutex:
            self._open[upload_id] = up
            self._pending.pop(token, None)
            self._append(_started_line(up, token))

    def ended(self, upload_id: str) -> None:
        """Records an upload as completed or aborted (or found gone)."""
        with self._mutex:
            if upload_id not in self._open:
                return
            del self._open[upload_id]
            self._earlier.pop(upload_id, None)
            self._append(json.dumps({"ev": "ended", "id": upload_id}))
            if self._lines > 1000 and self._lines > 4 * (len(self._open) + len(self._pending)):
                self._rewrite()

    def sweep(
        self,
        client: S3Client,
        bucket: str,
        prefix: str,
        *,
        older_than_seconds: float | None,
        log: logging.Logger | None = None,
        page_size: int = PAGE_SIZE,
    ) -> SweepResult:
        """:func:`abort_stale_uploads` with this record's left-open uploads and
        unanswered starts, then forgets those that are settled: aborted, or no
        longer on the server (completed or aborted before the crash was recorded),
        or, for a start, every upload it may have made dealt with. Uploads recorded
        for another bucket or outside ``prefix`` are kept for a sweep there."""
        mine = [
            u for u in self.left_open() if u.bucket in ("", bucket) and u.key.startswith(prefix)
        ]
        intents = [
            u
            for u in self.left_unrecorded()
            if u.bucket in ("", bucket) and u.key.startswith(prefix)
        ]
        result = abort_stale_uploads(
            client,
            bucket,
            prefix,
            own_left_open={u.upload_id for u in mine},
            unrecorded=intents,
            older_than_seconds=older_than_seconds,
            log=log or self._log,
            page_size=page_size,
        )
        aborted = {a.upload_id for a in result}
        for u in mine:
            if u.upload_id in aborted or (result.complete and u.upload_id not in result.failed):
                self.ended(u.upload_id)
        if result.complete and not result.unrecorded_unsettled:
            with self._mutex:
                for intent in intents:
                    self._pending.pop(intent.token, None)
                    self._earlier_pending.pop(intent.token, None)
                    self._append(json.dumps({"ev": "settled", "tok": intent.token}), sync=False)
                self._fh.flush()
        return result

    def close(self) -> None:
        with self._mutex:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> OpenUploads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- file handling --------------------------------------------------------------

    def _append(self, line: str, *, sync: bool = True) -> None:
        self._fh.write(line + "\n")
        self._lines += 1
        if sync:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def _rewrite(self) -> None:
        """Replaces the file with one ``started`` line per open upload (atomically)."""
        if self._fh is not None:
            self._fh.close()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for up in self._open.values():
                fh.write(_started_line(up) + "\n")
            for intent in self._pending.values():
                fh.write(_starting_line(intent) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self._lines = len(self._open) + len(self._pending)
        self._fh = open(self.path, "a", encoding="utf-8")


def _lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``<path>.lock``, or None if another holds it."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _started_line(up: LeftOpen, token: str = "") -> str:
    line = {
        "ev": "started",
        "key": up.key,
        "id": up.upload_id,
        "at": up.initiated.isoformat(),
        "bucket": up.bucket,
    }
    if token:
        line["tok"] = token
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def _starting_line(intent: Unrecorded) -> str:
    return json.dumps(
        {
            "ev": "starting",
            "key": intent.key,
            "at": intent.at.isoformat(),
            "bucket": intent.bucket,
            "tok": intent.token,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _read_record(
    path: Path, log: logging.Logger
) -> tuple[dict[str, LeftOpen], dict[str, Unrecorded]]:
    """The uploads a record file lists as started and not ended, in order, and the
    starts it lists as attempted and neither answered nor settled (by token)."""
    open_: dict[str, LeftOpen] = {}
    pending: dict[str, Unrecorded] = {}
    if not path.exists():
        return open_, pending
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if d["ev"] == "started":
                up = LeftOpen(
                    key=str(d["key"]),
                    upload_id=str(d["id"]),
                    initiated=_utc(datetime.fromisoformat(d["at"])),
                    bucket=str(d.get("bucket", "")),
                )
                open_[up.upload_id] = up
                pending.pop(str(d.get("tok", "")), None)
            elif d["ev"] == "ended":
                open_.pop(str(d["id"]), None)
            elif d["ev"] == "starting":
                intent = Unrecorded(
                    key=str(d["key"]),
                    at=_utc(datetime.fromisoformat(d["at"])),
                    bucket=str(d.get("bucket", "")),
                    token=str(d["tok"]),
                )
                pending[intent.token] = intent
            elif d["ev"] == "settled":
                pending.pop(str(d["tok"]), None)
            else:
                raise ValueError(d["ev"])
        except (ValueError, KeyError, TypeError):
            # A crash mid-append leaves at most a torn last line.
            where = "last line" if n >= len(lines) - 1 else f"line {n}"
            log.warning(f"Ignoring an unreadable {where} of {path}")
    return open_, pending


# -- the sweep ---------------------------------------------------------------------------


def abort_stale_uploads(
    client: S3Client,
    bucket: str,
    prefix: str,
    *,
    own_left_open: Collection[str],
    older_than_seconds: float | None,
    log: logging.Logger,
    unrecorded: Collection[Unrecorded] = (),
    page_size: int = PAGE_SIZE,
) -> SweepResult:
    """Aborts the open multipart uploads under ``prefix`` that nobody will finish.

    Pages through the whole ListMultipartUploads listing of ``bucket`` under
    ``prefix`` and aborts exactly

    (a) the uploads whose id is in ``own_left_open`` (an earlier run of ours
        started them and never ended them),
    (b) the uploads an ``unrecorded`` start may have made: of its key, initiated
        within :data:`CREATE_CALL_SECONDS` after it, and without a part, and
    (c) if ``older_than_seconds`` is given, uploads initiated longer ago than
        that on the server's clock *and* with no part received for as long
        (ListParts; an upload whose parts cannot be listed is left alone):
        uploads of members that died and did not come back.

    Never any other upload. One log line per abort names key, upload id and why.
    A listing that fails is a warning naming the bucket (what was read up to
    then is still acted on, and ``complete`` stays False); a failed abort is a
    warning. Returns the aborted uploads (a :class:`SweepResult`).
    """
    if older_than_seconds is not None and older_than_seconds <= 0:
        raise ValueError(f"older_than_seconds must be > 0, got {older_than_seconds}")
    own = set(own_left_open)
    result = SweepResult()
    listed, server_now, complete = _list_uploads(client, bucket, prefix, log, page_size)
    # Intents carry our clock; initiation times are the server's, in whole seconds.
    skew = server_now - datetime.now(UTC)
    margin = timedelta(seconds=CLOCK_TOLERANCE_SECONDS + 1)
    windows: dict[str, list[tuple[datetime, datetime]]] = {}
    for intent in unrecorded:
        start = intent.at + skew - margin
        end = intent.at + skew + timedelta(seconds=CREATE_CALL_SECONDS) + margin
        windows.setdefault(intent.key, []).append((start, end))
    result.complete = complete
    for key, upload_id, initiated in listed:
        result.seen.add(upload_id)
        why = None
        if upload_id in own:
            why = "left open by an earlier run of this group's member"
        elif initiated is not None and any(a <= initiated <= b for a, b in windows.get(key, ())):
            known, last = _last_part_time(client, bucket, key, upload_id, log)
            if not known:
                result.unrecorded_unsettled = True
            elif last is None:
                why = (
                    "started by an earlier run of this group's member that died before recording it"
                )
        if why is None:
            if older_than_seconds is None or initiated is None or not key.startswith(prefix):
                continue
            age = (server_now - initiated).total_seconds()
            if age <= older_than_seconds:
                continue
            known, last = _last_part_time(client, bucket, key, upload_id, log)
            if not known:
                continue
            idle = age if last is None else (server_now - last).total_seconds()
            if idle <= older_than_seconds:
                continue
            why = (
                f"initiated {_duration(age)} ago and idle for {_duration(idle)} "
                f"(> {_duration(older_than_seconds)}): its member is gone"
            )
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as err:
            if _code(err) == "NoSuchUpload":
                continue  # finished or aborted meanwhile
            result.failed.add(upload_id)
            if upload_id not in own:
                result.unrecorded_unsettled = True
            log.warning(
                f"Could not abort the multipart upload {upload_id} of {bucket}/{key}: "
                f"{describe_client_error(err)}"
            )
            continue
        log.info(f"Aborted the multipart upload {upload_id} of {bucket}/{key}: {why}")
        result.append(Aborted(key, upload_id, why))
    return result


def _list_uploads(
    client: S3Client, bucket: str, prefix: str, log: logging.Logger, page_size: int
) -> tuple[list[tuple[str, str, datetime | None]], datetime, bool]:
    """Every open upload under ``prefix`` as (key, upload id, initiated), the
    server's time at the first answer, and whether the listing was read to its end."""
    out: list[tuple[str, str, datetime | None]] = []
    server_now: datetime | None = None
    params: dict[str, Any] = {
        "Bucket": bucket,
        "Prefix": prefix,
        "MaxUploads": page_size,
        # Keys with characters XML 1.0 cannot carry would otherwise break the page.
        "EncodingType": "url",
    }
    while True:
        try:
            page = client.list_multipart_uploads(**params)
        except (ClientError, BotoCoreError) as err:
            log.warning(
                f"Could not list the open multipart uploads in bucket {bucket!r} "
                f"(prefix {prefix!r}): {describe_client_error(err)}; stale uploads are not "
                f"cleaned this time"
            )
            return out, server_now or datetime.now(UTC), False
        if server_now is None:
            server_now = _server_time(page)
        decode = page.get("EncodingType") == "url"

        def dec(value: str, decode: bool = decode) -> str:
            return unquote_plus(value) if decode else value

        for up in page.get("Uploads", []):
            initiated = up.get("Initiated")
            out.append(
                (
                    dec(str(up["Key"])),
                    str(up["UploadId"]),
                    _utc(initiated) if isinstance(initiated, datetime) else None,
                )
            )
        if not page.get("IsTruncated"):
            return out, server_now, True
        next_key = dec(str(page.get("NextKeyMarker") or ""))
        next_id = str(page.get("NextUploadIdMarker") or "")
        if not next_key or (next_key, next_id) == (
            params.get("KeyMarker"),
            params.get("UploadIdMarker"),
        ):
            log.warning(
                f"The listing of open multipart uploads in bucket {bucket!r} is truncated but "
                f"gives no next position; stopped after {len(out)} upload(s)"
            )
            return out, server_now, False
        params["KeyMarker"] = next_key
        params["UploadIdMarker"] = next_id


def _last_part_time(
    client: S3Client, bucket: str, key: str, upload_id: str, log: logging.Logger
) -> tuple[bool, datetime | None]:
    """(known, when the upload's newest part arrived or None if it has none);
    known is False if that cannot be learnt (the upload is then left alone)."""
    last: datetime | None = None
    params: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
    for _ in range(10_000):  # at most 10,000 parts, so fewer pages
        try:
            page = client.list_parts(**params)
        except (ClientError, BotoCoreError) as err:
            if _code(err) != "NoSuchUpload":
                log.warning(
                    f"Could not list the parts of the multipart upload {upload_id} of "
                    f"{bucket}/{key} ({describe_client_error(err)}); leaving it alone"
                )
            return False, None
        for part in page.get("Parts", []):
            t = part.get("LastModified")
            if isinstance(t, datetime):
                t = _utc(t)
                last = t if last is None or t > last else last
        marker = page.get("NextPartNumberMarker")
        if not page.get("IsTruncated") or not marker or marker == params.get("PartNumberMarker"):
            break
        params["PartNumberMarker"] = marker
    return True, last


#: Our clock is trusted if the server's ``Date`` header is this close to it
#: (the header has a resolution of one second).
CLOCK_TOLERANCE_SECONDS = 2.0


def _server_time(page: Mapping[str, Any]) -> datetime:
    """Now, on the server's clock: ours, unless the answer's ``Date`` header says
    the server's clock differs by more than the header's resolution (then the
    header's time, plus half its resolution)."""
    local = datetime.now(UTC)
    date = page.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        with contextlib.suppress(TypeError, ValueError):
            server = _utc(parsedate_to_datetime(date))
            if abs((server - local).total_seconds()) > CLOCK_TOLERANCE_SECONDS:
                return server + timedelta(seconds=0.5)
    return local


def _code(err: Exception) -> str:
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return ""


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
