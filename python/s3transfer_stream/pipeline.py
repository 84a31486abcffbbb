"""The consumer pipeline: Kafka messages in, validated objects in the bucket out.

Consumer threads (one confluent-kafka consumer each, same group) poll batches
and hand the raw messages to the Rust assembler, which decodes, verifies and
reassembles them with the GIL released. What comes back are events: a file
started, a part is ready, a file is complete or failed. Parts are uploaded by a
pool as soon as they are ready; completed files are finished (multipart
completed, or one PUT), validated against the bucket, recorded in the registry,
and only then released for the offset commit.

Offset commits follow a low watermark (see :mod:`s3transfer_stream.offsets`):
a partition's offset is committed only up to the lowest offset still needed by
a file that is not yet safely in the bucket, so a crash, ``kill -9``, broker
restart or rebalance never loses a file, and the next owner re-reads from the
watermark and only from there, skipping messages of files already done.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from . import _core, failpoints
from .config import TransferConfig
from .errors import TransferError
from .journal import JournalEntry, TransferJournal
from .logs import get_logger
from .offsets import OffsetRuns, Watermarks
from .registry import StreamRegistry
from .s3 import ObjectStore, Validation, describe_client_error

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
    validate: str = "checksum"
    download_regex: re.Pattern[str] | None = None
    commit_interval: float = 2.0
    batch_size: int = 16
    poll_timeout: float = 0.5
    shutdown_timeout: float = 120.0
    #: A file that gets no chunk for this long while every owned partition is read
    #: to its end is reported (once) as waiting for chunks it cannot see.
    stall_seconds: float = 30.0


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
    files_transferred: int = 0
    files_failed: int = 0
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


@dataclass
class FileUpload:
    """Upload state of one file instance (as numbered by the assembler)."""

    info: _core.FileInfo
    key: str
    first_message: datetime
    # Parts of a file spread over partitions can arrive on two consumer threads at once.
    lock: threading.Lock = field(default_factory=threading.Lock)
    upload_id: str | None = None
    parts: list[Future[dict[str, Any]]] = field(default_factory=list)
    error: str | None = None
    ignored: bool = False
    offsets: list[tuple[int, list[tuple[int, int]]]] = field(default_factory=list)


class S3TransferStreamProcessor:
    """Consumes a topic of file chunks and stores each file as an object in a bucket."""

    def __init__(
        self, config: TransferConfig, options: ProcessorOptions, store: ObjectStore
    ) -> None:
        self.config = config
        self.options = options
        self.store = store
        self.log = get_logger()
        self.stats = Stats()
        self.assembler = _core.Assembler(options.part_size, options.max_buffered)
        self.watermarks = Watermarks()
        self.logs_dir = options.output_dir / "LOGS"
        self.registry = StreamRegistry(self.logs_dir, options.topic, options.group_id)
        self.journal = TransferJournal(self.logs_dir, options.topic, options.group_id)
        self.stop = threading.Event()
        self._uploads: dict[int, FileUpload] = {}
        self._uploads_lock = threading.Lock()
        self._in_flight = threading.BoundedSemaphore(options.max_parts_in_flight)
        self._part_pool = ThreadPoolExecutor(
            options.max_parts_in_flight, thread_name_prefix="s3-part"
        )
        self._finish_pool = ThreadPoolExecutor(4, thread_name_prefix="s3-finish")
        self._threads: list[threading.Thread] = []
        # Per consumer thread: partitions owned, and whether they are read to their end.
        self._caught_up: dict[int, tuple[frozenset[int], bool, int]] = {}
        self._progress: dict[int, tuple[int, float]] = {}
        self._stalled: set[int] = set()
        self._last_stall_check = 0.0
        self._thread_errors: list[BaseException] = []

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        o = self.options
        self.log.info(f"Log files and output will be in {o.output_dir}")
        self.log.info(
            f"Will process files from messages in the {o.topic} topic using {o.n_threads} thread(s)"
        )
        for w in self.config.warnings():
            self.log.warning(w)
        self.registry.start()
        self.watermarks.topic_id = self._topic_id()
        self._recover()
        rerun = self.registry.rerun_paths()
        if rerun:
            self.log.info(
                f"{len(rerun)} file(s) were unfinished or failed in an earlier run of group {o.group_id}; they are re-read from the committed offsets"
            )
        for i in range(o.n_threads):
            t = threading.Thread(target=self._consume_guarded, args=(i,), name=f"consumer-{i}")
            t.start()
            self._threads.append(t)
        self.log.info(
            f"Listening to the {o.topic} topic for files to add to the {o.bucket} bucket...."
        )

    def _topic_id(self) -> str:
        """Kafka's id of the topic, which tells a re-created topic from the old one."""
        topic = self.options.topic
        try:
            admin = AdminClient(dict(self.config.broker))
            return str(
                admin.describe_topics(TopicCollection([topic]))[topic].result(timeout=30).topic_id
            )
        except Exception as err:  # an old broker, or no describe permission
            self.log.warning(
                f"Could not read the id of topic {topic} ({err}); files done before a restart may be transferred again"
            )
            return ""

    def _recover(self) -> None:
        """Makes the registry, the skip list and the bucket agree with the journal
        after an earlier run of this group stopped, cleanly or not."""
        have = {
            (r.rel_filepath.as_posix(), r.processed_at.replace(microsecond=0))
            for r in self.registry.processed_rows()
        }
        restored = 0
        topic_id = self.watermarks.topic_id
        for e in self.journal.entries:
            if topic_id and e.topic_id == topic_id:
                for partition, runs in e.offsets:
                    self.assembler.skip_offsets(partition, runs)
            self.registry.discard_in_progress(e.rel_path, started_by=e.processed_at)
            if (e.rel_path, e.processed_at.replace(microsecond=0)) not in have:
                self.registry.register_processed(
                    e.rel_path, e.filename, e.n_chunks, e.first_message, processed_at=e.processed_at
                )
                restored += 1
        if restored:
            self.log.info(
                f"Restored {restored} processed-file row(s) from {self.journal.path} after an interrupted run"
            )
        self._abort_stale_uploads()

    def _abort_stale_uploads(self) -> None:
        """Aborts multipart uploads an interrupted run of this group left open for
        files it was receiving (they are re-read and uploaded afresh)."""
        rerun = set(self.registry.rerun_paths())
        if not rerun:
            return
        keys = {f"{self.options.topic}/{rel}" for rel in rerun}
        try:
            listing = self.store.client.list_multipart_uploads(
                Bucket=self.options.bucket, Prefix=f"{self.options.topic}/"
            )
        except Exception as err:
            self.log.warning(
                f"Could not list open multipart uploads in {self.options.bucket}: {describe_client_error(err)}"
            )
            return
        for up in listing.get("Uploads", []):
            if up["Key"] in keys:
                self.log.info(
                    f"Aborting the multipart upload of {up['Key']} left open by an interrupted run"
                )
                self.store.abort_multipart(up["Key"], up["UploadId"])

    def request_stop(self) -> None:
        self.stop.set()

    def shutdown(self) -> None:
        """Stops consuming, lets uploads finish, commits, and writes the registry."""
        self.stop.set()
        for t in self._threads:
            t.join()
        self._finish_pool.shutdown(wait=True)
        self._part_pool.shutdown(wait=True)
        with self._uploads_lock:
            leftovers = list(self._uploads.values())
            self._uploads.clear()
        for fu in leftovers:
            # Unfinished files: their offsets stay uncommitted, so the next run
            # reads them again; an open multipart upload would only be garbage.
            if fu.upload_id:
                self.store.abort_multipart(fu.key, fu.upload_id)
        self.registry.close()
        self.journal.close()
        s = self.stats
        self.log.info(
            f"{s.messages_read} total messages were consumed, {s.messages_processed} messages were "
            f"successfully processed, and {s.files_transferred} files were transferred to the "
            f"{self.options.bucket} bucket"
        )
        if s.files_failed:
            self.log.warning(
                f"{s.files_failed} file(s) failed; see the in-progress registry in {self.logs_dir}"
            )

    def alive_threads(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def on_check(self) -> None:
        s = self.stats
        self.log.info(
            f"{s.messages_read} messages read, {s.messages_processed} messages processed, {s.files_transferred} files transferred so far"
        )
        in_progress = self.assembler.in_progress()
        with self._uploads_lock:
            uploading = [
                fu
                for fu in self._uploads.values()
                if fu.info.instance not in {f.instance for f, _, _, _ in in_progress}
            ]
        for f, chunks, buffered, _ in in_progress[:50]:
            self.log.info(
                f"\t{f.rel_output_path} (in progress: {chunks}/{f.n_chunks} chunks, {buffered} bytes buffered)"
            )
        for fu in uploading[:50]:
            self.log.info(f"\t{fu.info.rel_output_path} (uploading)")
        for p in s.recent[-10:]:
            self.log.info(f"\t{p} (completed)")

    # -- consumer threads ---------------------------------------------------------

    def _consume_guarded(self, index: int) -> None:
        try:
            self._consume(index)
        except BaseException as err:  # a dead consumer thread must not go unnoticed
            self._thread_errors.append(err)
            self.log.error(
                f"Consumer thread {index} stopped: {type(err).__name__}: {err}", exc_info=True
            )
            self.stop.set()

    def _consume(self, index: int) -> None:
        o = self.options
        settings: dict[str, Any] = dict(self.config.consumer_settings(o.group_id))
        settings["enable.auto.commit"] = "false"
        settings["enable.auto.offset.store"] = "false"
        settings.setdefault("auto.offset.reset", "earliest")
        # Measured with benches/rss_big_file.py --sweep (BENCHMARKS.md): librdkafka's
        # default 1 s back-off once its prefetch queue is full idles the consumer for
        # most of a second at a time with 512 KiB messages (about 3x slower); a 16 MiB
        # queue per consumer bounds what is prefetched.
        settings.setdefault("fetch.queue.backoff.ms", "10")
        settings.setdefault("queued.max.messages.kbytes", "16384")
        # A crashed member's partitions move on after this; librdkafka's 45 s is long.
        settings.setdefault("session.timeout.ms", "10000")
        settings["on_commit"] = self._on_commit
        settings["error_cb"] = self._on_kafka_error
        consumer = Consumer(settings)
        owned: set[int] = set()
        committed: dict[int, tuple[int, str]] = {}

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            owned.update(tp.partition for tp in partitions)
            self._resume(c, partitions)

        def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
            revoked = [tp.partition for tp in partitions]
            self._release_partitions(c, revoked, owned, committed)

        consumer.subscribe([o.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
        last_commit = last_lag_check = time.monotonic()
        try:
            while not self.stop.is_set():
                msgs = consumer.consume(num_messages=o.batch_size, timeout=o.poll_timeout)
                good = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        good.append(m)
                    elif err.code() != KafkaError._PARTITION_EOF:
                        self.log.error(f"Kafka error while consuming {o.topic}: {err}")
                if good:
                    self._handle_batch(good)
                    self._seek_past_done(consumer, good)
                    failpoints.hit("batch")
                # Let the batch's message buffers go before the next poll.
                msgs = good = []
                # Committing after every batch keeps what a crash makes us re-read
                # to the files in flight; the commit itself is asynchronous.
                if good or time.monotonic() - last_commit >= o.commit_interval:
                    self._commit(consumer, owned, committed, asynchronous=True)
                    last_commit = time.monotonic()
                if time.monotonic() - last_lag_check >= 5.0:
                    self._check_lag(consumer, index, owned)
                    last_lag_check = time.monotonic()
            self._drain(owned)
            self._commit(consumer, owned, committed)
        finally:
            consumer.close()

    def _check_lag(self, consumer: Consumer, index: int, owned: set[int]) -> None:
        """Notes whether this thread has read its partitions to their end."""
        topic = self.options.topic
        caught_up = True
        try:
            n_partitions = len(consumer.list_topics(topic, timeout=5).topics[topic].partitions)
            for tp in consumer.position([TopicPartition(topic, p) for p in owned]):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, tp.partition), timeout=5
                )
                position = tp.offset if tp.offset >= 0 else low
                caught_up &= position >= high
        except (KafkaException, KeyError):
            caught_up, n_partitions = False, 0
        self._caught_up[index] = (frozenset(owned), caught_up, n_partitions)

    def check_stalled_files(self) -> None:
        """Reports files that cannot complete from what this process can read: their
        other chunks were not produced (yet), or sit in partitions another member of
        the group owns (a producer that spreads a file's chunks over partitions)."""
        now = time.monotonic()
        if now - self._last_stall_check < 5.0:
            return
        self._last_stall_check = now
        states = [self._caught_up.get(i) for i in range(self.options.n_threads)]
        if not all(st is not None and st[1] for st in states):
            self._progress.clear()  # still reading: nothing is stalled yet
            return
        owned = frozenset().union(*(st[0] for st in states if st is not None))
        n_partitions = max(st[2] for st in states if st is not None)
        for info, chunks, _, partitions in self.assembler.in_progress():
            seen = self._progress.get(info.instance)
            if seen is None or seen[0] != chunks:
                self._progress[info.instance] = (chunks, now)
                continue
            if now - seen[1] < self.options.stall_seconds or info.instance in self._stalled:
                continue
            self._stalled.add(info.instance)
            topic, group = self.options.topic, self.options.group_id
            if len(owned) < n_partitions:
                others = sorted(set(range(n_partitions)) - owned)
                why = (
                    f"its other chunks must be in partitions {others} of {topic}, which another member of "
                    f"group {group} owns (the producer spread this file over partitions {sorted(partitions)}"
                    "...); it completes once one process owns all of them: for topics written that way run "
                    "one process with more --n_threads"
                )
            else:
                why = "the producer has not sent its other chunks (stopped, or still sending)"
            self.log.warning(
                f"{info.rel_output_path} has {chunks} of {info.n_chunks} chunks and no more arrived for "
                f"{self.options.stall_seconds:g} s although partitions {sorted(owned)} are read to their end: {why}. "
                "Its offsets stay uncommitted, so nothing is lost"
            )
            self.registry.mark_waiting(info.rel_path, info.filename, info.n_chunks)

    def _handle_batch(self, msgs: list[Any]) -> None:
        events, n_stored = self.assembler.add_messages(msgs)
        for m in msgs:
            self.watermarks.consumed(m.partition(), m.offset())
        if self.log.isEnabledFor(logging.DEBUG):
            spans: dict[int, tuple[int, int, int]] = {}
            for m in msgs:
                lo, hi, n = spans.get(m.partition(), (m.offset(), m.offset(), 0))
                spans[m.partition()] = (min(lo, m.offset()), max(hi, m.offset()), n + 1)
            self.log.debug(
                f"Read {self.options.topic}: "
                + ", ".join(f"{p}@{lo}-{hi}({n})" for p, (lo, hi, n) in sorted(spans.items()))
            )
        self.stats.add(
            messages_read=len(msgs),
            messages_processed=n_stored,
            messages_rejected=len(msgs) - n_stored,
        )
        for ev in events:
            handler = getattr(self, f"_on_{ev.kind}")
            handler(ev)

    def _seek_past_done(self, consumer: Consumer, msgs: list[Any]) -> None:
        """Jumps over messages of files already transferred (known from the commit
        metadata or the journal) instead of fetching them again."""
        topic = self.options.topic
        nxt: dict[int, int] = {}
        for m in msgs:
            nxt[m.partition()] = max(nxt.get(m.partition(), 0), m.offset() + 1)
        for p, offset in nxt.items():
            end = self.assembler.skip_end(p, offset)
            if end is not None and end > offset:
                self.watermarks.consumed(p, end - 1)
                try:
                    consumer.seek(TopicPartition(topic, p, end))
                except KafkaException as err:  # e.g. revoked meanwhile: reading on is correct too
                    self.log.debug(f"Could not skip to {topic}[{p}]@{end}: {err}")

    def _resume(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Learns, from the committed offsets' metadata, which messages above the
        watermark belong to files already done, so they are skipped."""
        topic = self.options.topic
        try:
            committed = consumer.committed(partitions, timeout=30)
        except KafkaException as err:
            self.log.warning(
                f"Could not read committed offsets of {topic}: {err}; files above them may be transferred again"
            )
            return
        starts = []
        for tp in committed:
            if tp.offset < 0:
                self.log.info(
                    f"Partition {tp.partition} of {topic}: no committed offset, starting from auto.offset.reset"
                )
                starts.append(TopicPartition(topic, tp.partition))
                continue
            runs = OffsetRuns.decode(tp.metadata, tp.offset, self.watermarks.topic_id)
            if runs.runs():
                self.assembler.skip_offsets(tp.partition, runs.runs())
            # The journal may know that the messages at the committed offset itself are
            # done (the commit was lost in a crash): start after them.
            start = self.assembler.skip_end(tp.partition, tp.offset) or tp.offset
            starts.append(TopicPartition(topic, tp.partition, start))
            self.log.info(
                f"Partition {tp.partition} of {topic}: resuming at offset {tp.offset}"
                + (f", reading from {start}" if start != tp.offset else "")
                + (
                    f" ({len(runs)} messages of files already transferred above it are skipped)"
                    if runs.runs()
                    else ""
                )
            )
        if any(st.offset >= 0 for st in starts):
            try:
                consumer.assign(starts)
            except KafkaException as err:  # e.g. a cooperative assignor: reading on is correct too
                self.log.debug(f"Could not set start offsets of {topic}: {err}")

    def _commit(
        self,
        consumer: Consumer,
        partitions: set[int],
        committed: dict[int, tuple[int, str]],
        *,
        asynchronous: bool = False,
    ) -> None:
        positions = self.watermarks.commit_positions(
            partitions, dict(self.assembler.pinned_offsets())
        )
        changed = {p: v for p, v in positions.items() if committed.get(p) != v}
        if not changed:
            return
        offsets = [
            TopicPartition(self.options.topic, p, off, meta) for p, (off, meta) in changed.items()
        ]
        try:
            if asynchronous:
                consumer.commit(offsets=offsets, asynchronous=True)
            else:
                consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as err:
            if err.args and err.args[0].code() == KafkaError._NO_OFFSET:
                return
            self.log.warning(
                f"Committing offsets of {self.options.topic} failed (will retry): {err}"
            )
            return
        committed.update(changed)
        if self.log.isEnabledFor(logging.DEBUG):
            read = self.watermarks.next_offsets()
            self.log.debug(
                f"Committed {self.options.topic}: "
                + ", ".join(
                    f"{p}@{off} (read to {read.get(p)})" for p, (off, _) in sorted(changed.items())
                )
            )
        failpoints.hit("commit")

    def _drain(self, partitions: set[int], timeout: float | None = None) -> None:
        """Waits for uploads of files whose chunks sit in ``partitions``."""
        deadline = time.monotonic() + (
            self.options.shutdown_timeout if timeout is None else timeout
        )
        while time.monotonic() < deadline:
            with self._uploads_lock:
                busy = [
                    fu
                    for fu in self._uploads.values()
                    if self.watermarks.pinned_partitions(fu.info.instance) & partitions
                ]
            if not busy:
                return
            time.sleep(0.05)
        self.log.warning(
            f"Gave up waiting for {len(busy)} upload(s) to finish; they will be re-read next run"
        )

    def _release_partitions(
        self,
        consumer: Consumer,
        revoked: list[int],
        owned: set[int],
        committed: dict[int, tuple[int, str]],
    ) -> None:
        self._drain(set(revoked), timeout=30.0)
        self._commit(consumer, set(revoked) & owned, committed)
        for info in self.assembler.drop_partitions(revoked):
            fu = self._pop_upload(info.instance)
            if fu is not None and fu.upload_id:
                self._finish_pool.submit(self.store.abort_multipart, fu.key, fu.upload_id)
        # Skip lists stay: the offsets they name belong to files already done, whoever
        # reads the partition next (another of our threads, typically, at start-up).
        self.watermarks.forget(revoked)
        owned.difference_update(revoked)
        for p in revoked:
            committed.pop(p, None)
        if not self.stop.is_set():
            self.log.info(
                f"Partitions {sorted(revoked)} of {self.options.topic} were reassigned; their next "
                "owner goes on from the committed offsets"
            )

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            self.log.warning(f"Offset commit failed: {err}")

    def _on_kafka_error(self, err: KafkaError) -> None:
        level = self.log.error if err.fatal() else self.log.warning
        level(f"Kafka: {err.str()}")

    # -- assembler events ---------------------------------------------------------

    def _key(self, info: Any) -> str:
        return f"{self.options.topic}/{info.rel_output_path}"

    def _get_upload(self, info: Any) -> FileUpload:
        with self._uploads_lock:
            fu = self._uploads.get(info.instance)
            if fu is None:
                fu = FileUpload(info=info, key=self._key(info), first_message=datetime.now())
                self._uploads[info.instance] = fu
            return fu

    def _pop_upload(self, instance: int) -> FileUpload | None:
        with self._uploads_lock:
            return self._uploads.pop(instance, None)

    def _on_started(self, ev: Any) -> None:
        info = ev.file
        fu = self._get_upload(info)
        rx = self.options.download_regex
        if rx is not None and not rx.match(info.rel_path):
            fu.ignored = True
            return
        if info.echo:
            # Possibly stray duplicates of a file already transferred: it is
            # recorded only if it completes (then it was really produced again).
            return
        self.registry.register_in_progress(info.rel_path, info.filename, info.n_chunks)

    def _on_part(self, ev: Any) -> None:
        fu = self._get_upload(ev.file)
        if fu.ignored or fu.error:
            return
        with fu.lock:
            if fu.upload_id is None and fu.error is None:
                try:
                    fu.upload_id = self.store.start_multipart(fu.key)
                except Exception as err:
                    fu.error = f"starting the multipart upload failed: {describe_client_error(err)}"
            if fu.error:
                return
        self._in_flight.acquire()
        try:
            fut = self._part_pool.submit(
                self._upload_part, fu, ev.part_number, ev.data, ev.crc64nvme
            )
        except BaseException:
            self._in_flight.release()
            raise
        with fu.lock:
            fu.parts.append(fut)

    def _upload_part(self, fu: FileUpload, number: int, data: Any, crc: int) -> dict[str, Any]:
        try:
            assert fu.upload_id is not None
            result = self.store.upload_part(fu.key, fu.upload_id, number, data, crc)
            failpoints.hit("part_uploaded")
            return result
        finally:
            del data  # the part's memory goes as soon as it is sent
            self._in_flight.release()

    def _on_complete(self, ev: Any) -> None:
        fu = self._get_upload(ev.file)
        fu.offsets = ev.offsets
        self.watermarks.pin(ev.file.instance, ev.pins)
        if fu.ignored:
            self._pop_upload(ev.file.instance)
            self.watermarks.done(ev.file.instance, ev.offsets)
            return
        if ev.data is not None:
            self._in_flight.acquire()
            self._part_pool.submit(self._finish_single, fu, ev.data, ev.size, ev.crc64nvme)
        else:
            self._finish_pool.submit(self._finish_multipart, fu, ev.size, ev.crc64nvme, ev.parts)

    def _finish_single(self, fu: FileUpload, data: Any, size: int, crc: int) -> None:
        try:
            try:
                sent = self.store.put(fu.key, data, crc64nvme=crc)
            finally:
                del data
                self._in_flight.release()
            self._validated(fu, size, sent, parts=0)
        except Exception as err:
            self._upload_failed(fu, f"PUT failed: {describe_client_error(err)}")

    def _finish_multipart(self, fu: FileUpload, size: int, crc: int, n_parts: int) -> None:
        try:
            # Another consumer thread may still be handing over the file's last part.
            deadline = time.monotonic() + 60
            while len(fu.parts) < n_parts and not fu.error and time.monotonic() < deadline:
                time.sleep(0.005)
            with fu.lock:
                if len(fu.parts) < n_parts and not fu.error:
                    fu.error = (
                        f"only {len(fu.parts)} of its {n_parts} parts were handed over for upload"
                    )
            wait(fu.parts)
            errors = [f.exception() for f in fu.parts if f.exception() is not None]
            if fu.error or errors:
                reason = fu.error or f"uploading a part failed: {describe_client_error(errors[0])}"  # type: ignore[arg-type]
                if fu.upload_id:
                    self.store.abort_multipart(fu.key, fu.upload_id)
                self._upload_failed(fu, reason)
                return
            assert fu.upload_id is not None
            parts = [f.result() for f in fu.parts]
            failpoints.hit("before_complete")
            sent = self.store.complete_multipart(fu.key, fu.upload_id, parts, crc)
            self._validated(fu, size, sent, parts=len(parts))
        except Exception as err:
            if fu.upload_id:
                self.store.abort_multipart(fu.key, fu.upload_id)
            self._upload_failed(
                fu, f"completing the multipart upload failed: {describe_client_error(err)}"
            )

    def _validated(self, fu: FileUpload, size: int, sent: dict[str, str], parts: int) -> None:
        info = fu.info
        failpoints.hit("uploaded")
        try:
            v = self.store.validate_object(fu.key, size, sent, info.file_hash)
        except Exception as err:
            v = Validation(
                False, "error", f"could not read back the object: {describe_client_error(err)}"
            )
        if not v.ok:
            self._upload_failed(fu, f"validation failed: {v.text}")
            return
        failpoints.hit("validated")
        entry = JournalEntry(
            rel_path=info.rel_path,
            filename=info.filename,
            n_chunks=info.n_chunks,
            key=fu.key,
            size=size,
            first_message=fu.first_message,
            processed_at=datetime.now().replace(microsecond=0),
            offsets=fu.offsets,
            topic_id=self.watermarks.topic_id,
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
        self._pop_upload(info.instance)
        self.watermarks.done(info.instance, fu.offsets)
        self.stats.transferred(TransferResult(info.rel_output_path, fu.key, size, parts, v.text))
        how = f"{parts} parts" if parts else "single PUT"
        self.log.info(
            f"Transferred {info.rel_output_path} -> s3://{self.options.bucket}/{fu.key} ({size} bytes, {how}); validated: {v.text}"
        )

    def _upload_failed(self, fu: FileUpload, reason: str) -> None:
        info = fu.info
        self.log.error(
            f"Failed to transfer {info.rel_output_path} to s3://{self.options.bucket}/{fu.key}: {reason}"
        )
        self.registry.register_failed(info.rel_path, info.filename, info.n_chunks, status="failed")
        self._pop_upload(info.instance)
        self.watermarks.hold(info.instance)
        self.stats.add(files_failed=1)

    def _on_failed(self, ev: Any) -> None:
        info = ev.file
        fu = self._pop_upload(info.instance)
        if fu is not None and fu.ignored:
            return
        if fu is not None and fu.upload_id:
            self._finish_pool.submit(self.store.abort_multipart, fu.key, fu.upload_id)
        status = "mismatched_hash" if ev.hash_mismatch else "failed"
        self.log.error(
            f"File {info.rel_output_path} cannot be reassembled ({status}): {ev.reason}; nothing was stored"
        )
        self.registry.register_failed(info.rel_path, info.filename, info.n_chunks, status=status)
        # Recorded; reading the same bad bytes again cannot help, so commit past them.
        self.watermarks.done(info.instance, ev.offsets)
        self.stats.add(files_failed=1)

    def _on_superseded(self, ev: Any) -> None:
        fu = self._pop_upload(ev.file.instance)
        self.log.info(
            f"A newer version of {ev.file.rel_output_path} replaces the one being received"
        )
        if fu is not None and fu.upload_id:
            self._finish_pool.submit(self.store.abort_multipart, fu.key, fu.upload_id)

    def _on_rejected(self, ev: Any) -> None:
        self.log.error(
            f"Skipping message at {self.options.topic}[{ev.partition}]@{ev.offset}: {ev.reason}"
        )


__all__ = [
    "ProcessorOptions",
    "S3TransferStreamProcessor",
    "Stats",
    "TransferError",
]
