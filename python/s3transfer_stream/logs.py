"""Logging set-up shared by the programs.

Lines look like OpenMSIStream's, ``[<Program> 2026-11-27 21:20:38] message``, with
``WARNING: `` and ``ERROR: `` prefixes, on stderr and in ``<logs dir>/<Program>.log``.

``--log_format json`` writes one JSON object per line instead (for log shippers):
``time`` (ISO 8601, UTC, milliseconds), ``level``, ``program``, ``message``, the
name of the thread, ``exception`` when there is a traceback, and whichever of
:data:`FIELDS` the log call gave through ``extra=``. JSON escaping keeps a message
with line breaks (a file name holding a newline) on one line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from .printable import printable

LOGGER_NAME = "s3transfer_stream"

#: The formats of ``--log_format``.
LOG_FORMATS = ("text", "json")

#: Structured fields a log call may pass with ``extra={...}``; the JSON format
#: writes those present (the text format ignores them).
FIELDS = (
    "file",
    "key",
    "topic",
    "partition",
    "offset",
    "bucket",
    "size",
    "chunks",
    "reason",
)

_FORMAT = "text"

LEVELS = {
    "notset": logging.NOTSET,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _Formatter(logging.Formatter):
    def __init__(self, program: str) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")
        self.program = program

    def format(self, record: logging.LogRecord) -> str:
        prefix = ""
        if record.levelno >= logging.ERROR:
            prefix = "ERROR: "
        elif record.levelno >= logging.WARNING:
            prefix = "WARNING: "
        # Names from messages may hold line breaks: one record, one line.
        message = printable(record.getMessage())
        text = f"[{self.program} {self.formatTime(record, self.datefmt)}] {prefix}{message}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "program": self.program,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        if record.name != LOGGER_NAME:
            out["logger"] = record.name
        attrs = record.__dict__
        for name in FIELDS:
            value = attrs.get(name)
            if value is not None:
                out[name] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        text = json.dumps(out, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a name that is not UTF-8 (surrogate escapes)
            text = json.dumps(out)
        return text


def parse_level(value: str) -> int:
    """A level name (notset..critical) or a non-negative int, as upstream's option takes."""
    v = value.strip().lower()
    if v in LEVELS:
        return LEVELS[v]
    if v.isdigit():
        return int(v)
    raise ValueError(f"{value!r} is not a logging level ({', '.join(LEVELS)} or an integer >= 0)")


def setup_logging(
    program: str,
    logs_dir: Path | None,
    *,
    stream_level: int = logging.INFO,
    file_level: int = logging.WARNING,
    log_format: str = "text",
) -> logging.Logger:
    """Configures the package logger once per program run and returns it.

    ``log_format`` is ``text`` (OpenMSIStream's lines) or ``json`` (one object per
    line), for the console and the log file alike."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(min(stream_level, file_level))
    logger.propagate = False
    global _FORMAT
    _FORMAT = log_format
    fmt: logging.Formatter = JsonFormatter(program) if log_format == "json" else _Formatter(program)
    stream = logging.StreamHandler(sys.stderr)
    stream.setLevel(stream_level)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(logs_dir / f"{program}.log", encoding="utf-8")
        fh.setLevel(file_level)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def log_format() -> str:
    """The format :func:`setup_logging` was last asked for (``text`` before)."""
    return _FORMAT


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
