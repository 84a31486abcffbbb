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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, TopicCollection
from confluent_kafka.admin import AdminClient

from .. import _core
from ..config import TransferConfig
from ..errors import ConfigError, TransferError
from ..journal import TransferJournal
from ..kafka import client_log_settings, redact
from ..logs import get_logger
from ..metrics import NO_METRICS, ProcessorHooks
from ..registry import PRIVATE_PREFIX, StreamRegistry, private_name_token
from ..s3 import ObjectStore
from ..stale_uploads import OpenUploads
from .ledger import Ledger
from .loop import ConsumerLoop, consumer_settings
from .options import ProcessorOptions, Stats
from .stalls import StallMonitor
from .uploads import Uploader

#: Seconds past ``--shutdown_grace_seconds`` that the consumer threads get, all
#: together, for their last commits (``FINAL_COMMIT_TIMEOUT``) and leaving the group.
SHUTDOWN_MARGIN = 60.0

if TYPE_CHECKING:
    from ..crypto import CryptoNode


class S3TransferStreamProcessor:
    """Consumes a topic of file chunks and stores each file as an object in a bucket."""

    def __init__(
        self,
        config: TransferConfig,
        options: ProcessorOptions,
        store: ObjectStore,
        *,
        consumer_factory: Callable[[dict[str, Any]], Any] = Consumer,
        metrics: ProcessorHooks | None = None,
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
        #: Prometheus metrics (``--metrics_port``) and heartbeat counts; None: off.
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
        self._kafka_settings: dict[str, Any] = {}
        #: The one KafkaCrypto node of the process (None: the topic is plaintext),
        #: shared by the consumer threads: KafkaCrypto's key-exchange clients cannot
        #: be closed for good, so one per thread or per restart would leak them.
        self.crypto: CryptoNode | None = self._crypto_node()

    def _crypto_node(self) -> CryptoNode | None:
        settings = self.config.kafkacrypto_settings()
        if settings is None:
            return None
        from ..crypto import CryptoError, open_node

        try:
            # The loop holds and retries a message whose key is missing, so KafkaCrypto
            # must not wait for it on the consumer thread.
            return open_node(
                settings,
                self.config.broker,
                options=self.options.decrypt,
                block_on_new_key=False,
            )
        except CryptoError as err:
            raise ConfigError(f"{self.config.path}: {err}") from None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        o = self.options
        self.log.info(f"Log files and output will be in {o.output_dir}")
        self.log.info(
            f"Will process files from messages in the {o.topic} topic using {o.n_threads} thread(s)"
        )
        for w in self.config.warnings():
            self.log.warning(w)
        self.log.debug(
            f"SHA-512 by {_core.sha512_backend()}; chunk checks {_core.sha512_lanes()} at a time"
        )
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
        self._kafka_settings = dict(settings)  # what error texts are redacted against
        settings["error_cb"] = self._on_kafka_error
        settings.update(client_log_settings())
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
                crypto=self.crypto,
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
            admin = AdminClient({**self.config.broker, **client_log_settings()})
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

    def _log_holds(self) -> None:
        if self.crypto is None:
            return
        topic = self.options.topic
        held = [(p, o, t) for loop in self.loops for p, o, t in loop.holds()]
        self.log.info(
            f"Held until decryptable ({len(held)}): "
            + (", ".join(f"{topic}[{p}]@{o} for {t:.0f} s" for p, o, t in held) or "none")
        )

    def request_stop(self) -> None:
        self.stop.set()

    def shutdown(self) -> None:
        """Stops reading; lets uploads in flight finish and be committed within the
        grace period; gives up the rest without committing past it; writes the registry."""
        self.stop.set()
        # One deadline for the whole stop, not a timeout per step: each consumer
        # spends the grace on its uploads, then commits and leaves the group.
        end = time.monotonic() + self.options.shutdown_grace + SHUTDOWN_MARGIN
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        self.uploader.stop(grace=0, join_seconds=min(15.0, max(1.0, end - time.monotonic())))
        if self.crypto is not None:
            # Only now: a consumer thread may still be decrypting until it is joined.
            self.crypto.close()
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
        from ..registry import ABANDONED, FAILED, MISMATCHED_HASH

        s = self.stats
        self.log.info(
            f"{s.messages_read} messages read, {s.messages_processed} messages processed, "
            f"{s.files_transferred} files transferred so far ({s.files_failed} failed, "
            f"{s.files_abandoned} abandoned); {self.uploader.health.describe()}; "
            f"{self.ledger.buffered_bytes} bytes buffered for reassembly"
        )
        held = dict(self.uploader.held)
        uploads = {fu.info.instance: fu for fu in self.uploader.uploads()}
        lists: dict[str, dict[str, str]] = {
            "Held": {},
            "Failed": {},
            "Waiting for chunks": {},
            "Abandoned": {},
        }
        lines: list[str] = []
        for pr in self.ledger.progress():
            f = pr.file
            name = f.rel_output_path
            # Bytes received: the parts already handed to S3 plus what is buffered
            # (about: a part handed over stays buffered until the hash passes it).
            fu = uploads.get(f.instance)
            n_parts = len(fu.parts) if fu is not None else 0
            received = (
                f"about {n_parts * self.options.part_size + pr.buffered} bytes received "
                f"({n_parts} part(s) handed to S3, {pr.buffered} bytes buffered), "
                f"last chunk {pr.idle_seconds:.0f} s ago"
            )
            if f.instance in held:
                state = f"held: {held[f.instance][1]}"
                lists["Held"][name] = held[f.instance][1]
            elif f.instance in self.monitor.waiting:
                state = f"waiting for chunks: {pr.chunks}/{f.n_chunks} chunks, {received}"
                lists["Waiting for chunks"][name] = f"{pr.chunks}/{f.n_chunks} chunks"
            elif pr.state == "receiving":
                state = f"in progress: {pr.chunks}/{f.n_chunks} chunks, {received}"
            elif pr.state == "failed":
                state = "failed: being recorded"
                lists["Failed"][name] = "being recorded"
            else:
                state = f"{pr.state}: all {f.n_chunks} chunks received"
            lines.append(f"\t{name} ({state}; partitions {sorted(pr.partitions)})")
        self.log.info(f"{len(lines)} file(s) in progress" + (":" if lines else ""))
        for line in lines[:100]:
            self.log.info(line)
        if len(lines) > 100:
            self.log.info(f"\t... and {len(lines) - 100} more")
        for name in self.uploader.abandoned:
            lists["Abandoned"][name] = "in this run"
        for row in self.registry.in_progress_rows():
            rel = row.rel_filepath.as_posix()
            if row.status in (FAILED, MISMATCHED_HASH) and rel not in lists["Held"]:
                lists["Failed"].setdefault(rel, f"registry: {row.status}")
            elif row.status == ABANDONED:
                lists["Abandoned"].setdefault(rel, "registry")
        for title, files in lists.items():
            shown = "; ".join(f"{n} ({why})" for n, why in list(files.items())[:20])
            more = f"; ... and {len(files) - 20} more" if len(files) > 20 else ""
            self.log.info(f"{title} ({len(files)}): {shown or 'none'}{more}")
        self._log_holds()
        if s.recent:
            self.log.info(f"Last {min(len(s.recent), 10)} file(s) transferred:")
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
        # librdkafka's texts can quote settings back (a SASL error its username).
        level(f"Kafka: {redact(err.str(), self._kafka_settings)}")


def member_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


__all__ = ["S3TransferStreamProcessor", "TransferError", "member_id"]
