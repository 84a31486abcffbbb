"""Named crash points for the crash-recovery tests.

``S3TS_FAILPOINT=<name>:<n>`` makes the process SIGKILL itself the n-th time it
passes the point ``<name>`` — a real ``kill -9`` at a precise moment (mid
multipart upload, between upload and commit, inside a registry write, ...).
Unset, a point costs one ``is None`` check.
"""

from __future__ import annotations

import os
import signal
import threading

_SPEC = os.environ.get("S3TS_FAILPOINT") or None
_lock = threading.Lock()
_count = 0


def hit(name: str) -> None:
    if _SPEC is None:
        return
    _hit(name)


def _hit(name: str) -> None:
    global _count
    assert _SPEC is not None
    point, _, nth = _SPEC.partition(":")
    if point != name:
        return
    with _lock:
        _count += 1
        if _count == int(nth or "1"):
            os.kill(os.getpid(), signal.SIGKILL)
