"""``UploadDataFile``: send one file to a Kafka topic as OpenMSIStream chunk messages."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from typing import Any

from .. import _core
from ..errors import ConfigError, TransferError
from ..health import BrokerProbe, Check
from ..heartbeats import DeliveryCounter, Heartbeats
from ..kafka import make_producer, partition_count
from ..metrics import ProducerMetrics, producer_ready
from ..producer import Encryptor, open_encryptor, send_file
from ..progress import FileProgress
from . import common

PROG = "UploadDataFile"

DESCRIPTION = """\
Send one file to a Kafka topic as OpenMSIStream-format chunk messages (readable by
S3TransferStreamProcessor and by OpenMSIStream's consumers), then wait until the
broker has acknowledged every chunk. The file is sent at the top level (its subdir
is ""); all its chunks go to one partition of the topic.

Exit status: 0 when every chunk was delivered, 1 when some could not be (or the file
changed while it was sent), 2 for a usage or config error (missing file, bad config,
missing topic, unreachable broker).

Unlike OpenMSIStream, no UploadDataFile.log is written next to the file: messages go
to stderr, and to a log file only if --logger_file_path is given."""


def build_parser() -> argparse.ArgumentParser:
    parser = common.ArgumentParser(PROG, DESCRIPTION)
    parser.add_argument(
        "filepath", type=common.existing_file, help="path of the file to send (must exist)"
    )
    common.add_config_arg(parser)
    common.add_topic_arg(parser)
    common.add_chunk_size_arg(parser)
    common.add_n_threads_arg(
        parser, "number of threads reading, hashing and producing chunks of the file"
    )
    common.add_logger_args(parser, "Without it there is no log file.")
    common.add_metrics_args(parser)
    common.add_heartbeat_args(parser)
    return parser


def _mb_per_s(size: int, seconds: float) -> str:
    return f"{size / 1e6 / seconds:.1f} MB/s" if seconds > 0 else "-"


def main(argv: Sequence[str] | None = None) -> int:
    running: list[Heartbeats] = []
    encrypting: list[Encryptor] = []
    try:
        return _run(argv, running, encrypting)
    finally:
        for crypto in encrypting:  # at once if the send failed; finish() closed it otherwise
            crypto.close()
        for heartbeats in running:  # after the last line is logged: it goes out too
            heartbeats.stop()


def _run(argv: Sequence[str] | None, running: list[Heartbeats], encrypting: list[Encryptor]) -> int:
    args = build_parser().parse_args(argv)
    log: logging.Logger | None = None
    try:
        log = common.setup_program_logging(PROG, args, None)
    except OSError as exc:
        return common.fail(None, f"cannot open the log file: {exc}", common.EXIT_USAGE)
    topic = common.topic_from(args)
    try:
        config = common.load_producer_config(args.config)
        common.log_config_notes(config, log)
        producer = make_producer(config.producer, chunk_size=args.chunk_size)
        n_partitions = partition_count(producer, topic)
        crypto = open_encryptor(config)
        if crypto is not None:
            encrypting.append(crypto)
        server = common.open_health_server(args)
    except ConfigError as exc:
        return common.fail(log, str(exc), common.EXIT_USAGE)
    path = args.filepath
    chunker: Any = None
    on_delivery: Callable[[int, Any], None] | None = None
    metrics: ProducerMetrics | None = None
    try:
        if path.stat().st_size >= 100_000_000:  # a few seconds, or minutes, without output
            log.info(f"Reading {path.name} ({path.stat().st_size} bytes) to compute its SHA-512")
        chunker = _core.FileChunker(path, args.chunk_size)
    except OSError as exc:
        if server is not None:
            server.close()
        return common.fail(log, f"cannot read {path}: {exc.strerror or exc}", common.EXIT_FAILED)
    if server is not None:
        metrics = ProducerMetrics(topic)
        on_delivery = metrics.delivery_hook(chunker.size, chunker.n_chunks, args.chunk_size)
        broker = BrokerProbe(config.broker, topic)
        server.start(
            metrics.registry,
            health=lambda: [Check("program", True, f"sending {path.name}")],
            ready=lambda: producer_ready(broker),
        )
        log.info(f"Metrics at {server.url}/metrics, health checks at /healthz and /ready")
    heartbeats: Heartbeats | None = None
    if common.heartbeat_options(args).enabled:
        sent = DeliveryCounter(chunker.size, chunker.n_chunks, args.chunk_size)
        on_delivery = sent.hook(on_delivery)
        try:
            heartbeats = Heartbeats(
                PROG,
                config,
                common.heartbeat_options(args),
                sent.counts,
                program_settings=config.producer,
            )
        except ConfigError as exc:
            if server is not None:
                server.close()
            return common.fail(log, str(exc), common.EXIT_USAGE)
        heartbeats.start()
        running.append(heartbeats)
    log.info(
        f"Sending {path} to the {topic} topic as {args.chunk_size}-byte chunks using "
        f"{args.n_threads} thread(s)"
    )
    progress = FileProgress(path.name, chunker.size, chunker.n_chunks, args.chunk_size, log=log)
    progress.start()
    try:
        result = send_file(
            producer,
            topic,
            path,
            root=path.parent,
            chunk_size=args.chunk_size,
            n_partitions=n_partitions,
            n_threads=args.n_threads,
            wait=True,
            on_delivery=progress.hook(on_delivery),
            chunker=chunker,
            crypto=crypto,
        )
    except TransferError as exc:
        producer.flush(10)
        return common.fail(log, str(exc), common.EXIT_FAILED)
    except KeyboardInterrupt:
        log.warning("interrupted: the file was not sent completely")
        producer.flush(5)
        return 130
    finally:
        progress.close()
        if server is not None:
            server.close()
    if not result.complete:
        errors = "; ".join(result.errors) or "no delivery report"
        return common.fail(
            log,
            f"{result.n_failed} of {result.n_to_send} chunk(s) of {path} could not be "
            f"delivered to the {topic} topic ({errors})",
            common.EXIT_FAILED,
        )
    log.info(
        f"Sent {path.name} ({result.size} bytes, {result.n_chunks} chunk(s)) to partition "
        f"{result.partition} of the {topic} topic in {result.seconds:.2f} s "
        f"({_mb_per_s(result.size, result.seconds)})",
        extra={
            "file": result.rel_path,
            "topic": topic,
            "partition": result.partition,
            "size": result.size,
            "chunks": result.n_chunks,
        },
    )
    if crypto is not None:
        crypto.finish()  # keeps serving the keys a few seconds after the last message
    return common.EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
