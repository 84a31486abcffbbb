"""``S3TransferStreamProcessor``: reads file chunks from a topic and stores each
reassembled, validated file in an S3 bucket under ``<topic>/<subdir>/<file>``."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..config import load_config
from ..console import Console
from ..direct_put import DirectPut
from ..errors import ConfigError, S3TransferStreamError, TransferError
from ..health import BrokerProbe
from ..heartbeats import ConsumedBytes, Heartbeats, processor_counts
from ..kafka import make_admin, partition_count
from ..metrics import ProcessorMetrics, processor_health, processor_ready
from ..processor import MiB, ProcessorOptions, S3TransferStreamProcessor, member_id
from ..s3 import VALIDATE_CHOICES, ObjectStore, check_bucket, make_client
from .common import (
    EXIT_FAILED,
    EXIT_USAGE,
    ArgumentParser,
    add_config_arg,
    add_heartbeat_args,
    add_logger_args,
    add_metrics_args,
    fail,
    heartbeat_options,
    non_negative_float,
    open_health_server,
    positive_int,
    regex,
    setup_program_logging,
)

if TYPE_CHECKING:
    from ..crypto import DecryptOptions

PROGRAM = "S3TransferStreamProcessor"
DEFAULT_OUTPUT_DIR = f"./{PROGRAM}_output"
#: Characters OpenMSIStream refuses in a bucket name; we refuse the same.
BAD_BUCKET_CHARS = set(" `#%&{}\\/<>*?$!'\":@+|=")


def bucket_name(value: str) -> str:
    bad = sorted(BAD_BUCKET_CHARS.intersection(value))
    if not value or bad:
        raise argparse.ArgumentTypeError(
            f"bucket name {value!r} is empty or contains characters S3 does not allow: {' '.join(bad)}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        PROGRAM,
        "Consume OpenMSIStream file chunks from a Kafka topic, reassemble and verify each file\n"
        "(chunk and whole-file SHA-512), and upload it to s3://<bucket>/<topic>/<subdir>/<file>.\n"
        "Offsets are committed only once every file they cover is validated in the bucket, so\n"
        "stopping or crashing never loses a file. While running, type 'check' (c) for status and\n"
        "'quit' (q) to stop; SIGINT and SIGTERM also stop cleanly.",
    )
    p.add_argument(
        "bucket_name", type=bucket_name, help="name of the S3 bucket to upload files into"
    )
    add_config_arg(p)
    p.add_argument("--topic_name", default="test", help="topic to consume file chunks from")
    p.add_argument(
        "--consumer_topic_name",
        default=None,
        help="same as --topic_name (kept for OpenMSIStream compatibility); wins if both are given",
    )
    p.add_argument(
        "--producer_topic_name",
        default=None,
        help="accepted for OpenMSIStream compatibility; unused",
    )
    p.add_argument(
        "--consumer_group_id",
        default="create_new",
        help="consumer group id; 'create_new' makes a new group each run (reads the topic from the "
        "start); reuse a group id to resume where the last run stopped (files that were in "
        "progress are read again; failed files are recorded and must be sent again). "
        "Overrides group.id from the config file",
    )
    p.add_argument("--n_threads", type=positive_int, default=2, help="number of consumer threads")
    p.add_argument(
        "--mode",
        choices=("memory", "disk", "both"),
        default="memory",
        help="accepted for OpenMSIStream compatibility: files always stream to S3 in bounded memory "
        "and are never written to the output directory",
    )
    p.add_argument(
        "--output_dir",
        type=Path,
        default=Path(DEFAULT_OUTPUT_DIR),
        help="directory for the log file and the registry CSV files (in its LOGS/ folder); created if missing",
    )
    p.add_argument(
        "--download_regex",
        type=regex,
        default=None,
        help="only transfer files whose relative path (subdir/filename) matches this regular expression",
    )
    p.add_argument(
        "--update_seconds",
        type=int,
        default=300,
        help="log a '.' line this often while running, to show the program is alive (-1 disables)",
    )
    p.add_argument(
        "--validate",
        choices=VALIDATE_CHOICES,
        default="checksum",
        help="how each stored object is checked: 'checksum' compares the checksum the server "
        "reports for the stored object with ours (the server also verifies it on upload); 'full' "
        "re-reads every object and compares its SHA-512 with the producer's file hash",
    )
    p.add_argument(
        "--part_size",
        type=positive_int,
        default=8,
        help="multipart part size in MiB (at least 5); files up to this size go as one PUT",
    )
    p.add_argument(
        "--max_parts_in_flight",
        type=positive_int,
        default=4,
        help="parts being uploaded at once; with the part size this bounds the memory used for uploads",
    )
    p.add_argument(
        "--max_buffer_mib",
        type=positive_int,
        default=1024,
        help="memory (MiB) that files still being received may hold for reassembly; when it is "
        "full, chunks that arrive far out of order wait in Kafka (are read again later) while "
        "in-order chunks go on",
    )
    p.add_argument(
        "--stall_report_seconds",
        type=non_negative_float,
        default=30.0,
        help="report (once, as a warning and with registry status waiting_for_chunks) a file that "
        "got no chunk for this long although every partition this process owns is read to its end",
    )
    p.add_argument(
        "--abandon_seconds",
        type=non_negative_float,
        default=900.0,
        help="give up a file that got no chunk for this long while --abandon_offset_gap newer "
        "messages arrived in its partitions (its producer stopped): registry status 'abandoned', "
        "and its offsets are committed past so it cannot hold back the partition for ever",
    )
    p.add_argument(
        "--abandon_offset_gap",
        type=positive_int,
        default=1000,
        help="see --abandon_seconds: how many newer messages must have arrived",
    )
    p.add_argument(
        "--shutdown_grace_seconds",
        type=non_negative_float,
        default=30.0,
        help="on quit, SIGINT or SIGTERM: how long uploads in flight may still finish and be "
        "committed; what is unfinished then is left uncommitted for the next run",
    )
    p.add_argument(
        "--stale_upload_hours",
        type=non_negative_float,
        default=24.0,
        help="at start, abort open multipart uploads under the topic's prefix that were started "
        "this long ago and received no part since (left by members that died); the uploads an "
        "earlier run of this group left open are aborted whatever their age",
    )
    add_logger_args(p, "Default: <output_dir>/LOGS.")
    add_metrics_args(p)
    add_heartbeat_args(p)
    # The three KafkaCrypto options keep OpenMSIStream's names, defaults and meaning
    # (docs/encryption.md); without a [kafkacrypto] section they change nothing.
    p.add_argument(
        "--treat_undecryptable_as_plaintext",
        action="store_true",
        help="with [kafkacrypto]: a message value that is not KafkaCrypto output at all (so no "
        "key could ever open it) is processed as a plaintext chunk instead of being held. "
        "This gives up the guarantee that only encrypted messages are accepted",
    )
    p.add_argument(
        "--max_wait_per_decrypt",
        type=non_negative_float,
        default=5.0,
        help="with [kafkacrypto]: once a first message has waited out its key, how many "
        "seconds each further one may wait before a warning is logged. The message stays held "
        "and is retried; it is never skipped, and nothing past it is committed",
    )
    p.add_argument(
        "--max_initial_wait_per_decrypt",
        type=non_negative_float,
        default=60.0,
        help="with [kafkacrypto]: how many seconds the first message that lacks its key may "
        "wait before that warning; after that the shorter --max_wait_per_decrypt applies",
    )
    return p


def decrypt_options(args: argparse.Namespace) -> DecryptOptions:
    """The three KafkaCrypto options; call only for a config with ``[kafkacrypto]``."""
    # Imported here: it loads KafkaCrypto, which a plaintext run never needs.
    from ..crypto import DecryptOptions

    return DecryptOptions(
        treat_undecryptable_as_plaintext=args.treat_undecryptable_as_plaintext,
        max_wait_per_decrypt=args.max_wait_per_decrypt,
        max_initial_wait_per_decrypt=args.max_initial_wait_per_decrypt,
    )


def options_from_args(args: argparse.Namespace) -> ProcessorOptions:
    if args.part_size < 5:
        raise ConfigError(f"--part_size {args.part_size} is below S3's minimum part size of 5 MiB")
    if args.max_buffer_mib < 2 * args.part_size:
        raise ConfigError(
            f"--max_buffer_mib {args.max_buffer_mib} must be at least twice --part_size ({args.part_size})"
        )
    group = args.consumer_group_id
    if group.lower() == "create_new":
        group = str(uuid.uuid1())
    return ProcessorOptions(
        bucket=args.bucket_name,
        topic=args.consumer_topic_name or args.topic_name,
        group_id=group,
        output_dir=args.output_dir.resolve(),
        n_threads=args.n_threads,
        part_size=args.part_size * MiB,
        max_parts_in_flight=args.max_parts_in_flight,
        max_buffered=args.max_buffer_mib * MiB,
        stall_seconds=args.stall_report_seconds,
        abandon_seconds=args.abandon_seconds,
        abandon_offset_gap=args.abandon_offset_gap,
        shutdown_grace=args.shutdown_grace_seconds,
        stale_upload_seconds=args.stale_upload_hours * 3600.0,
        validate=args.validate,
        download_regex=args.download_regex,
    )


def main(argv: list[str] | None = None, *, stdin: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args)
    except ConfigError as err:
        return fail(None, f"{PROGRAM}: {err}", EXIT_USAGE)
    options.output_dir.mkdir(parents=True, exist_ok=True)
    log = setup_program_logging(PROGRAM, args, options.output_dir / "LOGS")
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1"):
        # `kill -USR1 <pid>` prints every thread's stack to stderr: what a stuck
        # process (a shutdown that does not end) is waiting for.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    if args.mode != "memory":
        log.info(
            f"--mode {args.mode}: files stream to S3 in bounded memory; nothing is written to disk"
        )
    try:
        config = load_config(args.config, require=("broker", "consumer", "s3"))
        crypto = config.kafkacrypto_settings()
        if crypto is not None:
            options.decrypt = decrypt_options(args)
            log.info(f"Decrypting {options.topic} with KafkaCrypto node {crypto.node_config}")
        assert config.s3 is not None
        connections = options.max_parts_in_flight + 8
        client = make_client(config.s3, max_connections=connections)
        check_bucket(client, options.bucket)
        admin, refusals = make_admin(config.broker)
        partition_count(
            admin,
            options.topic,
            bootstrap=config.broker.get("bootstrap.servers"),
            errors=refusals,
        )
        server = open_health_server(args)
    except ConfigError as err:
        return fail(log, str(err), EXIT_USAGE)
    except (TransferError, S3TransferStreamError) as err:
        return fail(log, str(err), EXIT_FAILED)
    store = ObjectStore(
        client,
        options.bucket,
        validate=options.validate,
        group=options.group_id,
        member=member_id(),
        direct=DirectPut(client, config.s3, max_connections=connections),
    )
    metrics = ProcessorMetrics() if server is not None else None
    beats = heartbeat_options(args)
    consumed = ConsumedBytes(metrics) if beats.enabled else None
    heartbeats: Heartbeats | None = None
    try:
        processor = S3TransferStreamProcessor(config, options, store, metrics=consumed or metrics)
        if consumed is not None:
            heartbeats = Heartbeats(
                PROGRAM,
                config,
                beats,
                processor_counts(processor.stats, consumed),
                program_settings={**config.broker, **config.producer},
            )
    except ConfigError as err:
        if server is not None:
            server.close()
        return fail(log, str(err), EXIT_USAGE)
    except S3TransferStreamError as err:
        if server is not None:
            server.close()
        return fail(log, str(err), EXIT_FAILED)
    if heartbeats is not None:
        heartbeats.start()
    if server is not None and metrics is not None:
        broker = BrokerProbe(config.broker, options.topic)
        metrics.watch(processor, broker)
        server.start(
            metrics.registry,
            health=lambda: processor_health(processor),
            ready=lambda: processor_ready(processor, broker),
        )
        log.info(f"Metrics at {server.url}/metrics, health checks at /healthz and /ready")
    console = Console(processor.on_check, alive_seconds=args.update_seconds, stdin=stdin)
    console.start()
    processor.start()

    def watch() -> None:
        if processor.stop.is_set():
            console.request_stop("a consumer thread stopped")
        processor.check_stalled_files()

    try:
        console.run_until_stopped(tick=watch)
    finally:
        processor.shutdown()
        if heartbeats is not None:
            heartbeats.stop()
        console.restore_signals()
        if server is not None:
            server.close()
    code = EXIT_FAILED if processor._thread_errors else 0
    stuck = [t for t in threading.enumerate() if t.name.startswith(("s3-part", "s3-finish"))]
    if any(t.is_alive() for t in stuck):
        # An S3 call still hanging on the wire: its file is uncommitted and the
        # registry is written, so nothing is lost by not waiting for it.
        log.warning("Leaving S3 calls that are still running; their files are re-read next run")
        logging.shutdown()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
