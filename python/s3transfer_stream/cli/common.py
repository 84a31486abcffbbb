"""Argument parsing and start-up helpers shared by the command-line programs.

Options keep OpenMSIStream's spelling (``--name_with_underscores``) and every
option's help ends with ``(default = X)``. Usage errors print one line on stderr
and exit with status 2; so do config errors (see :func:`fail`).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import NoReturn

from ..config import TransferConfig, load_config
from ..errors import ConfigError
from ..health import HealthServer
from ..heartbeats import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LOG_INTERVAL, HeartbeatOptions
from ..kafka import DEFAULT_CHUNK_SIZE
from ..logs import LOG_FORMATS, parse_level, setup_logging

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_TOPIC",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "MAX_CHUNK_SIZE",
    "ArgumentParser",
    "add_chunk_size_arg",
    "add_config_arg",
    "add_heartbeat_args",
    "add_logger_args",
    "add_metrics_args",
    "add_n_threads_arg",
    "add_topic_arg",
    "chunk_size",
    "existing_dir",
    "existing_file",
    "fail",
    "heartbeat_options",
    "load_producer_config",
    "log_config_notes",
    "logs_dir_from",
    "non_negative_float",
    "open_health_server",
    "port_number",
    "positive_float",
    "positive_int",
    "regex",
    "setup_program_logging",
    "topic_from",
]

#: Our packaged config (broker from ``$LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS``);
#: OpenMSIStream's default config name is ``test``.
DEFAULT_CONFIG = "local"
#: OpenMSIStream's default topic name.
DEFAULT_TOPIC = "test"
#: The largest chunk size accepted (librdkafka caps a message at about 1 GB).
MAX_CHUNK_SIZE = 1 << 29

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends ``(default = X)`` to options."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default =" in text or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            default = action.default
            shown = "none" if default is None or default == "" else "%(default)s"
            text = f"{text} (default = {shown})"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line: ``PROG: error: ... (see PROG -h)``."""

    def __init__(self, prog: str, description: str) -> None:
        super().__init__(
            prog=prog,
            description=description,
            formatter_class=_HelpFormatter,
            allow_abbrev=False,
        )

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


# --------------------------------------------------------------------------- types


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number >= 0")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number > 0")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535)")
    return value


def chunk_size(text: str) -> int:
    """A chunk size in bytes: a positive power of two, at most :data:`MAX_CHUNK_SIZE`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"chunk size {text!r} is not an integer") from None
    if value < 1 or value & (value - 1):
        raise argparse.ArgumentTypeError(
            f"chunk size {value} is not a positive power of two (e.g. 16384, 524288, 1048576)"
        )
    if value > MAX_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(f"chunk size {value} is larger than {MAX_CHUNK_SIZE}")
    return value


def existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a regular file")
    return path.resolve()


def existing_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return path.resolve()


def regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid regular expression ({exc})"
        ) from None


def _level(text: str) -> int:
    try:
        return parse_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --------------------------------------------------------------------------- options


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help=(
            "config file (OpenMSIStream's format): a path, or a name looked up (with "
            ".config appended if it has no '.') in $S3TRANSFER_STREAM_CONFIG_DIR, else "
            "$OPENMSISTREAM_CONFIG_FILE_DIR, then among the packaged configs. The packaged "
            "'local' config reads the broker from $LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS; "
            "OpenMSIStream's own default is 'test'"
        ),
    )


def add_topic_arg(parser: argparse.ArgumentParser, *, producer_alias: bool = False) -> None:
    parser.add_argument(
        "--topic_name",
        default=DEFAULT_TOPIC,
        help="name of the Kafka topic to send the files to (it must exist)",
    )
    if producer_alias:
        parser.add_argument(
            "--producer_topic_name",
            default=DEFAULT_TOPIC,
            help=(
                "OpenMSIStream's other name for the upload topic: used instead of "
                "--topic_name when given with a value other than 'test'"
            ),
        )


def add_chunk_size_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chunk_size",
        type=chunk_size,
        default=DEFAULT_CHUNK_SIZE,
        help="size in bytes of the file chunks sent as messages; a power of two",
    )


def add_n_threads_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--n_threads", type=positive_int, default=2, help=help_text)


def add_logger_args(parser: argparse.ArgumentParser, file_note: str) -> None:
    parser.add_argument(
        "--logger_stream_level",
        type=_level,
        default="info",
        help="level of the messages shown on stderr: notset, debug, info, warning, "
        "error, critical, or an integer >= 0",
    )
    parser.add_argument(
        "--logger_file_level",
        type=_level,
        default="warning",
        help="level of the messages written to the log file (same choices)",
    )
    parser.add_argument(
        "--logger_file_path",
        type=Path,
        default=None,
        help=(
            "where the log file goes: a directory if the name has no '.', else the "
            f"directory holding that path (the file is <program>.log there). {file_note}"
        ),
    )
    parser.add_argument(
        "--log_format",
        choices=LOG_FORMATS,
        default="text",
        help="format of the log lines on stderr and in the log file: 'text' "
        "(OpenMSIStream's '[<program> <time>] message' lines) or 'json' (one JSON object "
        "per line: time, level, program, message and fields such as file, key, partition)",
    )


def add_heartbeat_args(parser: argparse.ArgumentParser) -> None:
    """OpenMSIStream's six heartbeat and log-topic options."""
    parser.add_argument(
        "--heartbeat_topic_name",
        default=None,
        help="send a heartbeat message (JSON: timestamp and counts since the previous one) "
        "to this topic at start, every --heartbeat_interval_secs and at shutdown; "
        "without it no heartbeats are sent",
    )
    parser.add_argument(
        "--heartbeat_program_id",
        default=None,
        help="the id in the heartbeat messages' key (<id>_heartbeat); default: a hex "
        "number that changes with every run",
    )
    parser.add_argument(
        "--heartbeat_interval_secs",
        type=positive_float,
        default=DEFAULT_HEARTBEAT_INTERVAL,
        help="seconds between two heartbeats",
    )
    parser.add_argument(
        "--log_topic_name",
        default=None,
        help="send the program's log lines (JSON: timestamp and the lines logged since "
        "the previous message) to this topic at start, every --log_interval_secs and at "
        "shutdown; without it nothing is sent",
    )
    parser.add_argument(
        "--log_program_id",
        default=None,
        help="the id in the log messages' key (<id>_log); default: a hex number that "
        "changes with every run",
    )
    parser.add_argument(
        "--log_interval_secs",
        type=positive_float,
        default=DEFAULT_LOG_INTERVAL,
        help="seconds between two log messages",
    )


def heartbeat_options(args: argparse.Namespace) -> HeartbeatOptions:
    return HeartbeatOptions(
        heartbeat_topic=args.heartbeat_topic_name or None,
        heartbeat_program_id=args.heartbeat_program_id or None,
        heartbeat_interval=args.heartbeat_interval_secs,
        log_topic=args.log_topic_name or None,
        log_program_id=args.log_program_id or None,
        log_interval=args.log_interval_secs,
    )


def add_metrics_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics_port",
        type=port_number,
        default=None,
        help="serve Prometheus metrics at http://<metrics_host>:<port>/metrics and health "
        "checks at /healthz and /ready (200 or 503); 0 picks a free port (the log says which); "
        "without it no server is started",
    )
    parser.add_argument(
        "--metrics_host",
        default="127.0.0.1",
        help="address the metrics server listens on (0.0.0.0 or :: for every interface)",
    )


# --------------------------------------------------------------------------- start-up


def open_health_server(args: argparse.Namespace) -> HealthServer | None:
    """The bound (not yet serving) server of ``--metrics_port``, or None when not
    asked for. Raises :class:`ConfigError` if the address cannot be bound."""
    if args.metrics_port is None:
        return None
    try:
        return HealthServer(args.metrics_host, args.metrics_port)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: "
            f"{exc.strerror or exc}"
        ) from None


def logs_dir_from(logger_file_path: Path | None, default: Path | None) -> Path | None:
    """The directory of the log file, following OpenMSIStream's rule for
    ``--logger_file_path``: the path itself if its name has no ``.``, else its parent."""
    if logger_file_path is None:
        return default
    path = logger_file_path.expanduser().resolve()
    return path if "." not in path.name else path.parent


def setup_program_logging(
    program: str, args: argparse.Namespace, default_logs_dir: Path | None
) -> logging.Logger:
    logs_dir = logs_dir_from(args.logger_file_path, default_logs_dir)
    return setup_logging(
        program,
        logs_dir,
        stream_level=args.logger_stream_level,
        file_level=args.logger_file_level,
        log_format=getattr(args, "log_format", "text"),
    )


def load_producer_config(name_or_path: str) -> TransferConfig:
    """The config file for a producer program (``[broker]`` and ``[producer]`` required)."""
    return load_config(name_or_path, require=("broker", "producer"))


def log_config_notes(config: TransferConfig, logger: logging.Logger) -> None:
    """Things in the config a producer does not use are only worth a debug line."""
    for note in config.warnings():
        logger.debug(note)


def topic_from(args: argparse.Namespace) -> str:
    """OpenMSIStream's rule: ``--producer_topic_name`` wins when given with a value
    other than the default ``test``, else ``--topic_name``."""
    alias = getattr(args, "producer_topic_name", DEFAULT_TOPIC)
    return str(alias if alias != DEFAULT_TOPIC else args.topic_name)


def fail(logger: logging.Logger | None, message: str, code: int) -> int:
    """Report an expected error on one line (through the logger if set up) and
    return the exit status ``code``."""
    if logger is not None and logger.handlers:
        logger.error(message)
    else:
        print(f"error: {message}", file=sys.stderr)
    return code
