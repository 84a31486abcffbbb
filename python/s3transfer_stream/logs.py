"""Logging set-up shared by the programs.

Lines look like OpenMSIStream's, ``[<Program> 2026-11-27 21:20:38] message``, with
``WARNING: `` and ``ERROR: `` prefixes, on stderr and in ``<logs dir>/<Program>.log``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOGGER_NAME = "s3transfer_stream"

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
        text = f"[{self.program} {self.formatTime(record, self.datefmt)}] {prefix}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
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
) -> logging.Logger:
    """Configures the package logger once per program run and returns it."""
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(min(stream_level, file_level))
    logger.propagate = False
    fmt = _Formatter(program)
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


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
