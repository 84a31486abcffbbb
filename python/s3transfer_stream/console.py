"""The interactive side of a long-running program: stdin commands and signals.

``check``/``c`` asks for a status line, ``quit``/``q`` for a clean shutdown, one
command per line. SIGINT and SIGTERM shut down cleanly too, so a service
manager's stop gets the same final commit and summary as a typed ``quit``. A
stdin that is closed, at EOF (``/dev/null``, systemd, CI) or not readable is
simply not listened to; it never stops the program.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TextIO

from .logs import get_logger

QUIT_WORDS = frozenset({"q", "quit"})
CHECK_WORDS = frozenset({"c", "check"})


class Console:
    """Turns stdin lines and signals into ``on_check`` calls and a stop request."""

    def __init__(
        self,
        on_check: Callable[[], None],
        *,
        alive_seconds: float = 300.0,
        stdin: TextIO | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.on_check = on_check
        self.alive_seconds = alive_seconds
        self.stdin = sys.stdin if stdin is None else stdin
        self.handle_signals = handle_signals
        self.stop_requested = threading.Event()
        self.stop_reason = ""
        self._check_requested = threading.Event()
        self._previous: dict[int, object] = {}
        self._log = get_logger()

    def request_stop(self, reason: str) -> None:
        if not self.stop_requested.is_set():
            self.stop_reason = reason
            self.stop_requested.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop_requested.is_set():
            self._log.warning(f"{name} received again while shutting down; still finishing cleanly")
            return
        self._log.info(f"{name} received: shutting down")
        self.request_stop(name)

    def _read_stdin(self) -> None:
        stream = self.stdin
        while not self.stop_requested.is_set():
            try:
                line = stream.readline()
            except (OSError, ValueError):
                return
            if line == "":
                return  # EOF: nobody will type anything; keep running.
            word = line.strip().lower()
            if word in QUIT_WORDS:
                self.request_stop("quit command")
            elif word in CHECK_WORDS:
                self._check_requested.set()
            elif word:
                self._log.info(f"Unknown command {word!r}: type 'check' (c) or 'quit' (q)")

    def start(self) -> None:
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        if self.stdin is not None and not self.stdin.closed:
            threading.Thread(target=self._read_stdin, name="console-stdin", daemon=True).start()

    def restore_signals(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def run_until_stopped(
        self, tick: Callable[[], None] | None = None, interval: float = 0.2
    ) -> None:
        """Serves commands until a stop is requested; ``tick`` runs every ``interval`` s."""
        next_alive = time.monotonic() + self.alive_seconds if self.alive_seconds > 0 else None
        while not self.stop_requested.wait(interval):
            if self._check_requested.is_set():
                self._check_requested.clear()
                self.on_check()
            if next_alive is not None and time.monotonic() >= next_alive:
                self._log.info(".")
                next_alive = time.monotonic() + self.alive_seconds
            if tick is not None:
                tick()
