"""``S3TransferStreamProcessor``: the consumer threads, the uploader, the ledger
and the stall monitor of one process, started and stopped together.

The data flow, one module per step: :mod:`.loop` (poll, rebalance, commit) ->
:mod:`.ledger` (the one owner of each file's lifecycle, in Rust) ->
:mod:`.uploads` (parts, PUTs, completion, validation, records) and
:mod:`.stalls` (files that cannot complete, pins, files given up).
docs/architecture.md draws it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, TopicCollection
from confluent_kafka.admin import AdminClient

from ..config import TransferConfig
from ..errors import TransferError
from ..journal import TransferJournal
from ..logs import get_logger
from ..metrics import NO_METRICS, ProcessorMetrics
from ..registry import PRIVATE_PREFIX, StreamRegistry, private_name_token
from ..s3 import ObjectStore
from ..stale_uploads import OpenUploads
from .ledger import Ledger
from .loop import ConsumerLoop, consumer_settings
from .options import ProcessorOptions, Stats
from .stalls import StallMonitor
from .uploads import Uploader


class S3TransferStreamProcessor:
    """Consumes a topic of file chunks and stores each file as an object in a bucket."""

    def __init__(
        self,
        config: TransferConfig,
        options: ProcessorOptions,
        store: ObjectStore,
        *,
        consumer_factory: Callable[[dict[str, Any]], Any] = Consumer,
        metrics: ProcessorMetrics | None = None,
    ) -> None:
        self.config = config
        self.options = options
        self.store = store
        self.consumer_factory = consumer_factory
        self.log = get_logger()
        self.stats = Stats()
        self.ledger = Ledger(options.part_size, options.max_buffered)
        self.logs_dir = options.output_dir / "LOGS"
        self.registry = StreamRegistry(self.logs_dir, options.topic, options.group_id)
        self.journal = TransferJournal(self.logs_dir, options.topic, options.group_id)
        self.open_uploads = OpenUploads.claim(
            self.logs_dir,
            f"{PRIVATE_PREFIX}open_uploads_{private_name_token(options.topic, options.group_id)}",
            log=self.log,
        )
        self.stop = threading.Event()
        #: Prometheus metrics (``--metrics_port``); None: off.
        self.metrics = metrics
        self.uploader = Uploader(
            options=options,
            store=store,
            ledger=self.ledger,
            journal=self.journal,
            registry=self.registry,
            stats=self.stats,
            log=self.log,
            open_uploads=self.open_uploads,
            metrics=metrics or NO_METRICS,
        )
        self.loops: list[ConsumerLoop] = []
        self.monitor = StallMonitor(
            options=options,
            ledger=self.ledger,
            uploader=self.uploader,
            registry=self.registry,
            loops=lambda: list(self.loops),
            log=self.log,
        )
        self._threads: list[threading.Thread] = []
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
        topic_id = self._topic_id()
        self.ledger.topic_id = self.uploader.topic_id = topic_id
        self._recover(topic_id)
        rerun = self.registry.rerun_paths()
        if rerun:
            self.log.info(
                f"{len(rerun)} file(s) were unfinished in an earlier run of group {o.group_id}; they are re-read from the committed offsets"
            )
        settings, incremental = consumer_settings(
            dict(self.config.consumer_settings(o.group_id)), self.log
        )
        settings["error_cb"] = self._on_kafka_error
        for i in range(o.n_threads):
            loop = ConsumerLoop(
                i,
                options=o,
                settings=settings,
                incremental=incremental,
                ledger=self.ledger,
                uploader=self.uploader,
                stats=self.stats,
                log=self.log,
                stop=self.stop,
                consumer_factory=self.consumer_factory,
                metrics=self.metrics or NO_METRICS,
            )
            self.loops.append(loop)
            t = threading.Thread(target=self._run_guarded, args=(loop,), name=f"consumer-{i}")
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

    def _recover(self, topic_id: str) -> None:
        """Makes the registry, the ledger's done offsets and the bucket agree with
        the journal after an earlier run of this group stopped, cleanly or not."""
        have = {
            (r.rel_filepath.as_posix(), r.processed_at.replace(microsecond=0))
            for r in self.registry.processed_rows()
        }
        restored = 0
        for e in self.journal.entries:
            if topic_id and e.topic_id == topic_id:
                for partition, runs in e.offsets:
                    self.ledger.skip_offsets(partition, runs)
            if e.outcome == "superseded":
                # A newer version was in the bucket: nothing to list, but its
                # in-progress row may not have been written out before the crash.
                self.registry.discard_in_progress(e.rel_path, started_by=e.processed_at)
            if not e.transferred:
                continue
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
        self.open_uploads.sweep(
            self.store.client,
            self.options.bucket,
            f"{self.options.topic}/",
            older_than_seconds=self.options.stale_upload_seconds,
            log=self.log,
        )

    def request_stop(self) -> None:
        self.stop.set()

    def shutdown(self) -> None:
        """Stops reading; lets uploads in flight finish and be committed within the
        grace period; gives up the rest without committing past it; writes the registry."""
        self.stop.set()
        for t in self._threads:
            t.join(self.options.shutdown_grace + 60)
        self.uploader.stop(grace=0)
        self.registry.close()
        self.journal.close()
        self.open_uploads.close()
        s = self.stats
        self.log.info(
            f"{s.messages_read} total messages were consumed, {s.messages_processed} messages were "
            f"successfully processed, and {s.files_transferred} files were transferred to the "
            f"{self.options.bucket} bucket"
        )
        if s.messages_rejected:
            self.log.warning(
                f"{s.messages_rejected} messages were skipped as unusable (not file chunks, or "
                "malformed; each is logged above with its partition and offset)"
            )
        if s.files_failed or s.files_abandoned:
            self.log.warning(
                f"{s.files_failed} file(s) failed and {s.files_abandoned} were abandoned; see the "
                f"in-progress registry in {self.logs_dir}"
            )

    def alive_threads(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def check_stalled_files(self) -> None:
        self.monitor.check()

    def on_check(self) -> None:
        s = self.stats
        self.log.info(
            f"{s.messages_read} messages read, {s.messages_processed} messages processed, "
            f"{s.files_transferred} files transferred so far ({s.files_failed} failed, "
            f"{s.files_abandoned} abandoned); {self.uploader.health.describe()}; "
            f"{self.ledger.buffered_bytes} bytes buffered for reassembly"
        )
        held = self.uploader.held
        for pr in self.ledger.progress()[:100]:
            f = pr.file
            if f.instance in held:
                state = f"held: {held[f.instance][1]}"
            elif f.instance in self.monitor.waiting:
                state = f"waiting for chunks: {pr.chunks}/{f.n_chunks} chunks"
            elif pr.state == "receiving":
                state = (
                    f"in progress: {pr.chunks}/{f.n_chunks} chunks, {pr.buffered} bytes buffered"
                )
            else:
                state = pr.state
            self.log.info(f"\t{f.rel_output_path} ({state}; partitions {sorted(pr.partitions)})")
        for p in self.uploader.abandoned[-10:]:
            self.log.info(f"\t{p} (abandoned)")
        for p in s.recent[-10:]:
            self.log.info(f"\t{p} (completed)")

    # -- consumer threads ---------------------------------------------------------

    def _run_guarded(self, loop: ConsumerLoop) -> None:
        try:
            loop.run()
        except BaseException as err:  # a dead consumer thread must not go unnoticed
            self._thread_errors.append(err)
            self.log.error(
                f"Consumer thread {loop.index} stopped: {type(err).__name__}: {err}", exc_info=True
            )
            self.stop.set()

    def _on_kafka_error(self, err: Any) -> None:
        level = self.log.error if err.fatal() else self.log.warning
        level(f"Kafka: {err.str()}")


def member_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


__all__ = ["S3TransferStreamProcessor", "TransferError", "member_id"]
