"""Text from the outside world (file names from messages, server answers) made safe
to print on one log line.

A chunk message may name a file ``"x\\n[S3TransferStreamProcessor 2026-01-01 00:00:00]
ERROR: ..."``; printed as it is, the name would forge a log line, and escape sequences
in a name would drive the terminal. :func:`printable` writes every non-printable
character (control characters, line and paragraph separators, bidirectional
overrides, lone surrogates) as a Python escape (``\\n``, ``\\x1b``, ``\\u202e``);
tabs are kept and printable text, non-ASCII included, is left as it is. The text log
formatter applies it to every message (:mod:`s3transfer_stream.logs`).
"""

from __future__ import annotations

__all__ = ["printable"]


def printable(text: str) -> str:
    """``text`` with every non-printable character but the tab escaped."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c == "\t" else c.encode("unicode_escape").decode("ascii")
        for c in text
    )
