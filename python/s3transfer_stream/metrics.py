"""Prometheus metrics and health checks of the three programs (``--metrics_port``).

Every metric is defined here; docs/operations.md ("Metrics and health") lists
them. Each program run has its own :class:`~prometheus_client.CollectorRegistry`
(never the global default one), so several instances in one process, as in the
tests, do not collide.

Two kinds of metric:

* **Hooks**: what only the hot paths see (bytes of the messages read, why a file
  failed, latencies, S3 error codes) is counted through the small methods of
  :class:`ProcessorHooks`, called once per poll batch, per file or per failed S3
  call, never per message. With metrics off the processor holds
  :data:`NO_METRICS`, whose methods do nothing.
* **Read at scrape time**: counts the processor already keeps (:class:`Stats`)
  and every gauge that follows from its state (files in progress, bytes
  buffered, oldest file, committed offsets and lag, S3 reachable) are computed
  by a collector when ``/metrics`` is read, so nothing is updated for them on
  the hot path.

No label or value ever holds a secret: labels are the topic, the partition,
the bucket, the group id, a bounded failure reason, and S3 error codes (which
are checked to be short identifiers).

About 550 lines, on purpose: every metric of the three programs is defined in
this one place, so names, labels and units stay consistent and docs/operations.md
has one source.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from . import __version__
from .health import BrokerProbe, Check
from .s3 import error_code, is_transient

if TYPE_CHECKING:
    from .processor.main import S3TransferStreamProcessor
    from .producer import DirectoryUploader

__all__ = [
    "FAILURE_REASONS",
    "NO_METRICS",
    "DirectoryUploaderMetrics",
    "ProcessorHooks",
    "ProcessorMetrics",
    "ProducerMetrics",
    "directory_uploader_health",
    "processor_health",
    "processor_ready",
    "producer_ready",
]

PREFIX = "s3ts_"

#: ``s3ts_files_failed_total{reason}``: why a file was recorded as failed.
FAILURE_REASONS = (
    "bad_chunk",  # a chunk's data does not match its SHA-512 (or cannot be decoded)
    "hash_mismatch",  # the reassembled file does not match the producer's hash
    "s3_refused",  # S3 refused the file for good (access denied, a key it rejects, ...)
    "validation",  # the stored object did not validate (or could not be read back)
)

#: From the file's last chunk to its object validated in the bucket.
UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: From the file's first chunk to its object validated in the bucket.
END_TO_END_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _code_label(err: BaseException) -> str:
    code = error_code(err)
    return code if _CODE.fullmatch(code) else "other"


def _new_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes
    return registry


# --------------------------------------------------------------------------- processor


class ProcessorHooks:
    """What the processor's hot paths call. This base class does nothing: it is
    what runs with metrics off (:data:`NO_METRICS`)."""

    def consumed(self, messages: Sequence[Any]) -> None:
        """A poll batch was read (once per batch)."""

    def file_failed(self, reason: str) -> None:
        """A file was recorded as failed; ``reason`` is one of :data:`FAILURE_REASONS`."""

    def file_transferred(self, started: float, completed: float) -> None:
        """A file was validated in the bucket; ``time.monotonic()`` of its first and
        last chunk."""

    def s3_error(self, err: BaseException) -> None:
        """An S3 call failed (each attempt, retried or not)."""


#: The hooks with metrics off.
NO_METRICS = ProcessorHooks()


class ProcessorMetrics(ProcessorHooks):
    """The metrics of one ``S3TransferStreamProcessor``: the hooks' counters and
    histograms, plus (after :meth:`watch`) what is read from it at scrape time."""

    def __init__(self) -> None:
        self.registry = _new_registry()
        r = self.registry
        self.consumed_bytes = Counter(
            f"{PREFIX}consumed_bytes",
            "Bytes of the Kafka message values read from the topic",
            registry=r,
        )
        self.files_failed = Counter(
            f"{PREFIX}files_failed",
            "Files recorded as failed and committed past, by reason",
            ["reason"],
            registry=r,
        )
        for reason in FAILURE_REASONS:
            self.files_failed.labels(reason)
        self.upload_seconds = Histogram(
            f"{PREFIX}upload_duration_seconds",
            "Seconds from a file's last chunk read to its object validated in the bucket",
            buckets=UPLOAD_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            f"{PREFIX}end_to_end_duration_seconds",
            "Seconds from a file's first chunk read to its object validated in the bucket",
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.s3_errors = Counter(
            f"{PREFIX}s3_errors",
            "Failed S3 calls (every attempt) by S3 error code (or exception name), and whether "
            "the error is retried",
            ["code", "transient"],
            registry=r,
        )

    # -- hooks (hot paths) ---------------------------------------------------------

    def consumed(self, messages: Sequence[Any]) -> None:
        # len() of a confluent_kafka.Message is its value's length (C, no copy).
        self.consumed_bytes.inc(sum(map(len, messages)))

    def file_failed(self, reason: str) -> None:
        self.files_failed.labels(reason).inc()

    def file_transferred(self, started: float, completed: float) -> None:
        now = time.monotonic()
        if completed:
            self.upload_seconds.observe(max(0.0, now - completed))
        self.end_to_end_seconds.observe(max(0.0, now - started))

    def s3_error(self, err: BaseException) -> None:
        self.s3_errors.labels(_code_label(err), "true" if is_transient(err) else "false").inc()

    # -- scrape time -----------------------------------------------------------------

    def watch(
        self, processor: S3TransferStreamProcessor, broker: BrokerProbe | None = None
    ) -> None:
        """Adds what is read from ``processor`` (and ``broker``) at every scrape."""
        self.registry.register(_ProcessorCollector(processor, broker))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}{name}", doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}{name}", doc, value=value)


class _ProcessorCollector(Collector):
    def __init__(self, processor: S3TransferStreamProcessor, broker: BrokerProbe | None) -> None:
        self.p = processor
        self.broker = broker

    def describe(self) -> Iterable[Metric]:
        return []  # nothing is asked of the processor (or the broker) at registration

    def collect(self) -> Iterable[Metric]:
        p = self.p
        o = p.options
        yield InfoMetricFamily(
            f"{PREFIX}processor",
            "What this S3TransferStreamProcessor reads and writes",
            value={
                "topic": o.topic,
                "group": o.group_id,
                "bucket": o.bucket,
                "version": __version__,
            },
        )
        s = p.stats
        with s.lock:
            counts = (
                s.messages_read,
                s.messages_processed,
                s.messages_rejected,
                s.messages_deferred,
                s.files_transferred,
                s.bytes_transferred,
                s.files_abandoned,
            )
        read, processed, rejected, deferred, transferred, uploaded, abandoned = counts
        yield _counter("messages_consumed", "Kafka messages read from the topic", read)
        yield _counter(
            "messages_processed",
            "Messages that were usable chunks (new or duplicate) and were handed to reassembly",
            processed,
        )
        yield _counter(
            "messages_rejected", "Messages that are not usable chunks (skipped)", rejected
        )
        yield _counter(
            "messages_deferred",
            "Messages put back to be read again later because reassembly memory was full",
            deferred,
        )
        yield _counter("files_transferred", "Files stored in the bucket and validated", transferred)
        yield _counter(
            "uploaded_bytes", "Bytes of the files stored in the bucket and validated", uploaded
        )
        yield _counter(
            "files_abandoned",
            "Files given up because no chunk arrived for --abandon_seconds while newer messages "
            "did (registry status abandoned)",
            abandoned,
        )

        # Files not yet settled, from the ledger (the one owner of every file).
        progress = p.ledger.progress()
        by_state = {"receiving": 0, "uploading": 0, "failed": 0}
        started = {fu.info.instance: fu.started for fu in p.uploader.uploads()}
        now = time.monotonic()
        oldest = idle = 0.0
        for pr in progress:
            by_state[pr.state] = by_state.get(pr.state, 0) + 1
            idle = max(idle, pr.idle_seconds)
            t0 = started.get(pr.file.instance)
            if t0 is not None:
                oldest = max(oldest, now - t0)
        g = GaugeMetricFamily(
            f"{PREFIX}files_in_progress",
            "Files read from the topic and not yet settled (stored, or recorded as given up), "
            "by state: receiving chunks, uploading (all chunks arrived), failed (being recorded)",
            labels=["state"],
        )
        for state, n in sorted(by_state.items()):
            g.add_metric([state], n)
        yield g
        yield _gauge(
            "oldest_file_in_progress_seconds",
            "Seconds since the first chunk of the oldest file in progress arrived (0: none)",
            oldest,
        )
        yield _gauge(
            "longest_idle_file_seconds",
            "Seconds since the file in progress that waited longest got its last chunk (0: none)",
            idle,
        )
        yield _gauge(
            "files_held",
            "Files whose upload cannot go on in this run (kept uncommitted for the next run)",
            len(p.uploader.held),
        )
        yield _gauge(
            "files_waiting_for_chunks",
            "Files reported as waiting for chunks this process cannot see "
            "(registry status waiting_for_chunks)",
            len(p.monitor.waiting),
        )
        yield _gauge(
            "reassembly_buffered_bytes",
            "Bytes held for reassembly by files still being received",
            p.ledger.buffered_bytes,
        )
        yield _gauge(
            "reassembly_buffer_limit_bytes",
            "The reassembly memory limit (--max_buffer_mib)",
            o.max_buffered,
        )

        # Partitions: what each consumer thread owns, had confirmed, and saw as log end.
        committed = GaugeMetricFamily(
            f"{PREFIX}partition_committed_offset",
            "Offset of the partition last committed by this process and confirmed by the broker",
            labels=["topic", "partition"],
        )
        log_end = GaugeMetricFamily(
            f"{PREFIX}partition_log_end_offset",
            "Log end offset (high watermark) of the partition, as seen every few seconds",
            labels=["topic", "partition"],
        )
        lag = GaugeMetricFamily(
            f"{PREFIX}partition_lag_messages",
            "Log end minus committed offset: messages not yet safely done",
            labels=["topic", "partition"],
        )
        n_owned = 0
        for lp in list(p.loops):
            owned, acked, ends = set(lp.owned), dict(lp.acked), dict(lp.log_end)
            n_owned += len(owned)
            for part in sorted(owned):
                labels = [o.topic, str(part)]
                done = acked.get(part)
                end = ends.get(part)
                if done is not None:
                    committed.add_metric(labels, done[0])
                if end is not None:
                    log_end.add_metric(labels, end)
                if done is not None and end is not None:
                    lag.add_metric(labels, max(0, end - done[0]))
        yield committed
        yield log_end
        yield lag
        yield _gauge(
            "partitions_assigned", "Partitions of the topic this process owns now", n_owned
        )
        yield _gauge("consumer_threads", "Consumer threads started (--n_threads)", len(p.loops))
        yield _gauge("consumer_threads_alive", "Consumer threads running now", p.alive_threads())

        health = p.uploader.health
        down = health.down_since
        yield _gauge(
            "s3_reachable",
            "1 if the last S3 call got an answer, 0 while S3 is unreachable",
            down is None,
        )
        yield _gauge(
            "s3_unreachable_seconds",
            "Seconds since S3 became unreachable (0 while reachable)",
            0.0 if down is None else max(0.0, time.monotonic() - down),
        )
        if self.broker is not None:
            ok, _ = self.broker.check()
            yield _gauge(
                "broker_reachable",
                "1 if the broker answered a metadata request for the topic (asked at most every 5 s)",
                ok,
            )


def processor_health(p: S3TransferStreamProcessor) -> list[Check]:
    """``/healthz``: the process answers and its consumer threads run."""
    n = len(p.loops)
    if n == 0:
        return [Check("consumer_threads", True, "starting")]
    alive = p.alive_threads()
    errors = list(getattr(p, "_thread_errors", []))
    if errors:
        err = errors[0]
        return [Check("consumer_threads", False, f"a thread stopped: {type(err).__name__}")]
    if alive == n:
        return [Check("consumer_threads", True, f"{alive} of {n} alive")]
    if p.stop.is_set():
        return [Check("consumer_threads", True, f"stopping, {alive} of {n} still finishing")]
    return [Check("consumer_threads", False, f"{alive} of {n} alive")]


def processor_ready(p: S3TransferStreamProcessor, broker: BrokerProbe | None) -> list[Check]:
    """``/ready``: running, the broker answers, partitions are assigned, S3 answers."""
    if not p.loops:
        return [Check("running", False, "starting")]
    if p.stop.is_set():
        return [Check("running", False, "stopping")]
    checks = [Check("running", True), *processor_health(p)]
    if broker is not None:
        ok, detail = broker.check()
        checks.append(Check("broker", ok, detail))
    owned = sum(len(lp.owned) for lp in list(p.loops))
    checks.append(
        Check(
            "partitions",
            owned > 0,
            f"{owned} assigned"
            if owned
            else "none assigned (joining the group, or more members than partitions)",
        )
    )
    h = p.uploader.health
    checks.append(Check("s3", h.reachable, h.describe()))
    return checks


# --------------------------------------------------------------------------- producers


class ProducerMetrics:
    """The metrics of one ``UploadDataFile``: messages, bytes and files the broker
    acknowledged, and delivery errors, counted from the delivery reports."""

    def __init__(self, topic: str) -> None:
        self.registry = _new_registry()
        r = self.registry
        InfoGauge(r, "UploadDataFile", topic)
        self.messages = Counter(
            f"{PREFIX}messages_produced", "Chunk messages the broker acknowledged", registry=r
        )
        self.bytes = Counter(
            f"{PREFIX}produced_bytes",
            "Bytes of file data in the chunk messages the broker acknowledged",
            registry=r,
        )
        self.files = Counter(
            f"{PREFIX}files_produced",
            "Files all of whose chunks the broker acknowledged",
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}produce_errors", "Chunk messages that could not be delivered", registry=r
        )

    def delivery_hook(
        self, size: int, n_chunks: int, chunk_size: int
    ) -> Callable[[int, object], None]:
        """An ``on_delivery(chunk_i, error)`` for :func:`~s3transfer_stream.producer.send_file`
        of a file of ``size`` bytes in ``n_chunks`` chunks of ``chunk_size``."""
        last = size - (n_chunks - 1) * chunk_size
        counts = {"delivered": 0, "failed": 0}
        lock = threading.Lock()  # every thread that polls the producer serves reports

        def delivered(chunk_i: int, error: object) -> None:
            if error is not None:
                self.errors.inc()
                with lock:
                    counts["failed"] += 1
                return
            self.messages.inc()
            self.bytes.inc(chunk_size if chunk_i < n_chunks else last)
            with lock:
                counts["delivered"] += 1
                whole = counts["delivered"] == n_chunks and not counts["failed"]
            if whole:
                self.files.inc()

        return delivered


class InfoGauge(Collector):
    """``s3ts_<program>_info{topic, version}`` for a producer."""

    def __init__(self, registry: CollectorRegistry, program: str, topic: str) -> None:
        self.name = f"{PREFIX}{_snake(program)}"
        self.topic = topic
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        yield InfoMetricFamily(
            self.name,
            "What this program sends",
            value={"topic": self.topic, "version": __version__},
        )


def _snake(name: str) -> str:
    """``DataFileUploadDirectory`` -> ``data_file_upload_directory``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class DirectoryUploaderMetrics:
    """The metrics of one ``DataFileUploadDirectory``, read from its counts at scrape time."""

    def __init__(self, uploader: DirectoryUploader, topic: str) -> None:
        self.registry = _new_registry()
        InfoGauge(self.registry, "DataFileUploadDirectory", topic)
        self.registry.register(_DirectoryCollector(uploader))


class _DirectoryCollector(Collector):
    def __init__(self, uploader: DirectoryUploader) -> None:
        self.u = uploader

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        c = self.u.counts()
        yield _counter(
            "messages_produced", "Chunk messages the broker acknowledged", c["chunks_delivered"]
        )
        yield _counter(
            "produced_bytes",
            "Bytes of file data in the chunk messages the broker acknowledged",
            c["bytes_delivered"],
        )
        yield _counter(
            "files_produced",
            "Files all of whose chunks the broker acknowledged in this run",
            c["uploaded"],
        )
        yield _counter(
            "produce_errors",
            "Chunk messages that could not be delivered (each attempt; most are sent again)",
            c["delivery_errors"],
        )
        yield _counter(
            "files_skipped",
            "Files not sent because they were uploaded before and did not change",
            c["skipped"],
        )
        yield _gauge(
            "files_failed",
            "Files that failed in this run and were not sent successfully since",
            c["failed"],
        )
        yield _gauge(
            "files_waiting",
            "Files found and waiting to be sent (quiet time not over, or queued)",
            c["waiting"],
        )
        yield _gauge("files_in_progress", "Files being sent now", c["in_progress"])
        yield _gauge(
            "uploader_threads_alive", "Worker threads of the uploader running", c["threads_alive"]
        )


def directory_uploader_health(u: DirectoryUploader) -> list[Check]:
    c = u.counts()
    ok = c["threads_alive"] == c["threads"]
    return [Check("threads", ok, f"{c['threads_alive']} of {c['threads']} alive")]


def producer_ready(
    broker: BrokerProbe | None, health: Callable[[], list[Check]] | None = None
) -> list[Check]:
    checks = list(health()) if health is not None else []
    if broker is not None:
        ok, detail = broker.check()
        checks.append(Check("broker", ok, detail))
    return checks
