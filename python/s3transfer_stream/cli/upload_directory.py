"""``DataFileUploadDirectory``: watch a directory and send every file added to it."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from ..console import Console
from ..errors import ConfigError
from ..health import BrokerProbe, HealthServer
from ..heartbeats import Heartbeats, directory_uploader_counts
from ..kafka import make_producer, partition_count
from ..metrics import DirectoryUploaderMetrics, directory_uploader_health, producer_ready
from ..producer import LOGS_SUBDIR, DirectoryUploader, Encryptor, open_encryptor
from ..progress import StatusLine
from ..registry import RegistryError
from . import common

PROG = "DataFileUploadDirectory"

DESCRIPTION = f"""\
Watch a directory (and its subdirectories) and send every file added to or changed in
it to a Kafka topic as OpenMSIStream-format chunk messages, once the file has had no
new filesystem event for --watchdog_lag_time seconds. A file's subdir on the wire is
its parent directory relative to upload_dir; all chunks of a file go to one partition.

Never sent: anything under upload_dir/{LOGS_SUBDIR}/ (where the registry of uploads
and the log file are kept), files or directories whose name starts with ".", and
files whose name ends in ".log". (OpenMSIStream's default regex also skips any path
containing "<any character>log", e.g. catalog.csv; this program does not.)

The registry (upload_to_<topic>_in_progress.csv and uploaded_to_<topic>.csv, in
OpenMSIStream's format) records a chunk only once the broker acknowledged it; its
files are written within 5 s of a change and when the program stops. After a
restart, partly sent files are resumed by sending only their missing chunks (if
the file is unchanged; else it is sent again in full); files already uploaded are
skipped unless they were modified since. Files modified while the program runs are
sent again in full. After a crash, files uploaded in its last seconds may be sent
again: duplicates the processor recognises.

While running, type "check" (or "c") and Enter for counts of files found, in
progress and uploaded; "quit" (or "q"), Ctrl-C or SIGTERM stops cleanly: the chunks
already handed to Kafka are flushed, the registry is written, and what is left of
partly sent files is sent by the next run.

Exit status: 0 after a clean stop, 1 if some file failed in this run, 2 for a usage
or config error (missing directory, bad config, missing topic, unreachable broker)."""

# OpenMSIStream options this program accepts so that existing command lines and
# service units keep working, but does not use (consuming, decryption).
_IGNORED_OPTIONS: tuple[tuple[str, type | None], ...] = (
    ("--consumer_topic_name", str),
    ("--consumer_group_id", str),
    ("--max_wait_per_decrypt", float),
    ("--max_initial_wait_per_decrypt", float),
    ("--treat_undecryptable_as_plaintext", None),
)


def build_parser() -> argparse.ArgumentParser:
    parser = common.ArgumentParser(PROG, DESCRIPTION)
    parser.add_argument(
        "upload_dir", type=common.existing_dir, help="the directory to watch (must exist)"
    )
    common.add_config_arg(parser)
    common.add_topic_arg(parser, producer_alias=True)
    parser.add_argument(
        "--upload_regex",
        type=common.regex,
        default=None,
        help=(
            "only files whose path relative to upload_dir (with '/' separators) matches "
            "this regular expression (Python re.match, i.e. anchored at the start) are "
            "sent, on top of the rules above"
        ),
    )
    common.add_chunk_size_arg(parser)
    parser.add_argument(
        "--queue_max_size",
        type=common.positive_int,
        default=500,
        help=(
            "maximum size in MB (10^6 bytes) of the chunk messages waiting in memory to "
            "be sent (the Kafka producer's queue.buffering.max.kbytes, unless the config "
            "file sets that)"
        ),
    )
    parser.add_argument(
        "--upload_existing",
        action="store_true",
        help="also send the files already in upload_dir at start (skipping those "
        "uploaded before and not modified since)",
    )
    parser.add_argument(
        "--watchdog_lag_time",
        type=common.non_negative_float,
        default=3,
        help="seconds a file must go without a new filesystem event before it is sent",
    )
    parser.add_argument(
        "--use_polling_observer",
        action="store_true",
        help="watch by polling the directory (every second) instead of using OS "
        "notifications; needed on network filesystems (NFS, SMB) and some mounts",
    )
    common.add_n_threads_arg(
        parser,
        "number of threads reading, hashing and producing files (they share one Kafka producer)",
    )
    parser.add_argument(
        "--update_seconds",
        type=float,
        default=300,
        help="log a '.' alive marker every this many seconds (-1 for never)",
    )
    common.add_logger_args(
        parser, f"Without it the log file is upload_dir/{LOGS_SUBDIR}/{PROG}.log."
    )
    common.add_metrics_args(parser)
    common.add_heartbeat_args(parser)
    ignored = parser.add_argument_group(
        "accepted for compatibility with OpenMSIStream and ignored (a warning is logged)"
    )
    for option, kind in _IGNORED_OPTIONS:
        if kind is None:
            ignored.add_argument(option, action="store_true", help="ignored")
        else:
            ignored.add_argument(option, type=kind, default=None, help="ignored")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    upload_dir = args.upload_dir
    log: logging.Logger | None = None
    logs_dir = common.logs_dir_from(args.logger_file_path, upload_dir / LOGS_SUBDIR)
    try:
        log = common.setup_program_logging(PROG, args, upload_dir / LOGS_SUBDIR)
    except OSError as exc:
        return common.fail(None, f"cannot open the log file in {logs_dir}: {exc}", 2)
    log.info(f"Log files and output will be in {logs_dir}")
    for option, kind in _IGNORED_OPTIONS:
        value = getattr(args, option[2:])
        if (kind is None and value) or (kind is not None and value is not None):
            log.warning(f"{option} is not supported by this program and is ignored")
    topic = common.topic_from(args)
    server: HealthServer | None = None
    crypto: Encryptor | None = None
    try:
        config = common.load_producer_config(args.config)
        common.log_config_notes(config, log)
        producer = make_producer(
            config.producer,
            chunk_size=args.chunk_size,
            queue_kbytes=args.queue_max_size * 1_000_000 // 1024,
        )
        n_partitions = partition_count(producer, topic)
        crypto = open_encryptor(config)
        server = common.open_health_server(args)
        uploader = DirectoryUploader(
            upload_dir,
            producer,
            topic,
            n_partitions=n_partitions,
            chunk_size=args.chunk_size,
            upload_regex=args.upload_regex,
            upload_existing=args.upload_existing,
            watchdog_lag_time=args.watchdog_lag_time,
            use_polling_observer=args.use_polling_observer,
            n_threads=args.n_threads,
            crypto=crypto,
        )
        beats = common.heartbeat_options(args)
        heartbeats = (
            Heartbeats(
                PROG,
                config,
                beats,
                directory_uploader_counts(uploader),
                program_settings=config.producer,
            )
            if beats.enabled
            else None
        )
    except (ConfigError, RegistryError, OSError) as exc:
        if server is not None:
            server.close()
        if crypto is not None:
            crypto.close()
        if isinstance(exc, OSError):
            return common.fail(log, f"cannot use {upload_dir}: {exc}", common.EXIT_USAGE)
        return common.fail(log, str(exc), common.EXIT_USAGE)
    log.info(
        f"Will upload {'files in' if args.upload_existing else 'new files added to'} "
        f"{upload_dir} to the {topic} topic ({n_partitions} partition(s)) as "
        f"{args.chunk_size}-byte chunks using {args.n_threads} thread(s)"
    )
    if server is not None:
        metrics = DirectoryUploaderMetrics(uploader, topic)
        broker = BrokerProbe(config.broker, topic)
        server.start(
            metrics.registry,
            health=lambda: directory_uploader_health(uploader),
            ready=lambda: producer_ready(broker, lambda: directory_uploader_health(uploader)),
        )
        log.info(f"Metrics at {server.url}/metrics, health checks at /healthz and /ready")
    console = Console(uploader.check, alive_seconds=args.update_seconds)
    console.start()
    status_line = StatusLine(uploader.counts, log=log)
    try:
        uploader.start()
        if heartbeats is not None:
            heartbeats.start()
        log.info(
            f"Listening for files {'in/' if args.upload_existing else ''}added to "
            f"{upload_dir}; type 'check' for counts, 'quit' to stop"
        )
        status_line.start()
        console.run_until_stopped(None, 0.2)
    finally:
        status_line.close()
        status = uploader.stop()
        if heartbeats is not None:
            heartbeats.stop()
        console.restore_signals()
        if server is not None:
            server.close()
    return common.EXIT_FAILED if status.failed else common.EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
