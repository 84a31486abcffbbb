"""Progress people can see: a bar on a terminal, plain log lines everywhere else.

* :class:`FileProgress` (``UploadDataFile``): the bytes of one file acknowledged by
  the broker, with rate and ETA.
* :class:`StatusLine` (``DataFileUploadDirectory``): files pending, sending and
  done, and the bytes sent, as one live line.

On a terminal (stderr is a TTY and ``TERM`` is not ``dumb``) both draw with tqdm on
stderr, and the program's log lines are routed through tqdm so they print above the
bar instead of through it. Anywhere else (a pipe, a file, systemd's journal, tests)
nothing is drawn: a plain log line reports progress every ``log_seconds`` instead,
so what a service or a test reads carries no carriage returns or escape codes.

Both are driven from a thread of their own that samples counters a few times a
second; the counters are updated under a lock by whichever thread serves the
producer's delivery reports, which never touches the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm

from .logs import get_logger

__all__ = ["FileProgress", "StatusLine", "format_bytes", "on_terminal"]


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether progress is drawn on ``stream`` (default stderr): a TTY, not TERM=dumb."""
    stream = sys.stderr if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def format_bytes(n: float) -> str:
    """``n`` bytes in decimal units, as the rest of the programs' messages use."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    if seconds < 0.5:
        return "less than 1 s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class _TqdmHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes a record through ``tqdm.write``, so it prints above the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _log_above_bar(log: logging.Logger, stream: TextIO) -> Iterator[None]:
    """Swaps ``log``'s handlers writing to ``stream`` for ones that write through
    tqdm, keeping their level, formatter and filters (tqdm's own
    ``logging_redirect_tqdm`` drops the level); puts them back afterwards."""
    original = list(log.handlers)
    swapped: list[logging.Handler] = []
    for handler in original:
        if (
            isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler)
            and handler.stream is stream
        ):
            replacement = _TqdmHandler(stream)
            replacement.setLevel(handler.level)
            replacement.setFormatter(handler.formatter)
            for item in handler.filters:
                replacement.addFilter(item)
            swapped.append(replacement)
        else:
            swapped.append(handler)
    log.handlers = swapped
    try:
        yield
    finally:
        log.handlers = original


class _Sampler:
    """A daemon thread calling ``tick`` every ``interval`` s until closed."""

    def __init__(self, name: str, interval: float, tick: Callable[[], None]) -> None:
        self._tick = tick
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._tick()
            except Exception:  # progress must never take the program down
                get_logger().debug("progress display failed", exc_info=True)
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


class _Display:
    """What both displays share: the terminal decision, tqdm set-up, log routing."""

    def __init__(
        self,
        *,
        stream: TextIO | None,
        tty: bool | None,
        log: logging.Logger | None,
        refresh_seconds: float,
        log_seconds: float,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.tty = on_terminal(self.stream) if tty is None else tty
        self.log = get_logger() if log is None else log
        self.log_seconds = log_seconds
        self._interval = refresh_seconds if self.tty else min(1.0, log_seconds)
        self._bar: Any = None
        self._redirect: contextlib.ExitStack | None = None
        self._sampler: _Sampler | None = None
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self._last_log = self.started

    def _new_bar(self) -> Any:
        raise NotImplementedError

    def _draw(self) -> None:
        raise NotImplementedError

    def _log_line(self) -> None:
        raise NotImplementedError

    def _tick(self) -> None:
        if self.tty:
            self._draw()
        elif time.monotonic() - self._last_log >= self.log_seconds:
            self._last_log = time.monotonic()
            self._log_line()

    def start(self) -> None:
        self.started = self._last_log = time.monotonic()
        if self.tty:
            self._bar = self._new_bar()
            stack = contextlib.ExitStack()
            stack.enter_context(_log_above_bar(self.log, self.stream))
            self._redirect = stack
        self._sampler = _Sampler(f"progress-{type(self).__name__}", self._interval, self._tick)
        self._sampler.start()

    def close(self) -> None:
        """Stops drawing; the bar's last state is drawn, then the bar is removed
        from the screen (the program's own summary line follows)."""
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
        if self._bar is not None:
            self._draw()
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None

    def __enter__(self) -> _Display:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FileProgress(_Display):
    """The bytes of one file acknowledged by the broker (``UploadDataFile``).

    Pass :meth:`hook` as ``send_file``'s ``on_delivery``; it counts each chunk
    delivered, then calls the ``then`` hook given to it (e.g. the metrics')."""

    def __init__(
        self,
        name: str,
        size: int,
        n_chunks: int,
        chunk_size: int,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        log: logging.Logger | None = None,
        refresh_seconds: float = 0.1,
        log_seconds: float = 10.0,
    ) -> None:
        super().__init__(
            stream=stream,
            tty=tty,
            log=log,
            refresh_seconds=refresh_seconds,
            log_seconds=log_seconds,
        )
        self.name = name
        self.size = size
        self.n_chunks = n_chunks
        self.chunk_size = chunk_size
        self.bytes_done = 0
        self.chunks_done = 0
        self._shown = 0

    def _chunk_bytes(self, chunk_i: int) -> int:
        if chunk_i < self.n_chunks:
            return self.chunk_size
        return self.size - (self.n_chunks - 1) * self.chunk_size

    def delivered(self, chunk_i: int, error: object) -> None:
        if error is None:
            with self._lock:
                self.chunks_done += 1
                self.bytes_done += self._chunk_bytes(chunk_i)

    def hook(self, then: Callable[[int, Any], None] | None = None) -> Callable[[int, Any], None]:
        """An ``on_delivery`` callback counting for this display, then calling ``then``."""

        def on_delivery(chunk_i: int, error: Any) -> None:
            self.delivered(chunk_i, error)
            if then is not None:
                then(chunk_i, error)

        return on_delivery

    def _new_bar(self) -> Any:
        return tqdm(
            total=self.size,
            desc=self.name,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            file=self.stream,
            dynamic_ncols=True,
            mininterval=0,
            miniters=1,
            leave=False,
        )

    def _draw(self) -> None:
        with self._lock:
            done = self.bytes_done
        if self._bar is not None and done != self._shown:
            self._bar.update(done - self._shown)
            self._shown = done

    def _log_line(self) -> None:
        with self._lock:
            done, chunks = self.bytes_done, self.chunks_done
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (
            f", about {_duration((self.size - done) / rate)} left"
            if rate > 0 and done < self.size
            else ""
        )
        percent = 100.0 * done / self.size if self.size else 100.0
        self.log.info(
            f"Sending {self.name}: {format_bytes(done)} of {format_bytes(self.size)} "
            f"({percent:.0f}%, {chunks} of {self.n_chunks} chunks) acknowledged, "
            f"{format_bytes(rate)}/s{left}"
        )


class StatusLine(_Display):
    """Files pending, sending and done (``DataFileUploadDirectory``).

    ``counts`` returns :meth:`DirectoryUploader.counts`-style numbers: ``waiting``,
    ``in_progress``, ``uploaded``, ``skipped``, ``failed`` and ``bytes_delivered``.
    Off a terminal a line is logged every ``log_seconds`` when something changed."""

    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        log: logging.Logger | None = None,
        refresh_seconds: float = 0.5,
        log_seconds: float = 60.0,
    ) -> None:
        super().__init__(
            stream=stream,
            tty=tty,
            log=log,
            refresh_seconds=refresh_seconds,
            log_seconds=log_seconds,
        )
        self.counts = counts
        self._rate = 0.0
        self._last_bytes: int | None = None
        self._last_time = 0.0
        self._last_logged: tuple[int, ...] | None = None

    def describe(self, *, rate: bool = True) -> str:
        c = self.counts()
        sent = c.get("bytes_delivered", 0)
        now = time.monotonic()
        if self._last_bytes is not None and now > self._last_time:
            current = (sent - self._last_bytes) / (now - self._last_time)
            # Smoothed over a few seconds, so the rate does not jump with every file.
            self._rate = current if self._rate == 0 else 0.7 * self._rate + 0.3 * current
        self._last_bytes, self._last_time = sent, now
        text = (
            f"{c.get('waiting', 0)} pending, {c.get('in_progress', 0)} sending, "
            f"{c.get('uploaded', 0)} done"
        )
        if c.get("skipped", 0):
            text += f", {c['skipped']} skipped"
        if c.get("failed", 0):
            text += f", {c['failed']} failed"
        text += f" | {format_bytes(sent)} sent"
        if rate:
            text += f", {format_bytes(self._rate)}/s"
        return text

    def _new_bar(self) -> Any:
        return tqdm(
            total=None,
            bar_format="{desc}",
            desc=f"files: {self.describe(rate=False)}",
            file=self.stream,
            dynamic_ncols=True,
            mininterval=0,
            miniters=1,
            leave=False,
        )

    def _draw(self) -> None:
        if self._bar is not None:
            self._bar.set_description_str(f"files: {self.describe()}", refresh=True)

    def _log_line(self) -> None:
        c = self.counts()
        state = tuple(
            c.get(k, 0) for k in ("waiting", "in_progress", "uploaded", "failed", "bytes_delivered")
        )
        if state == self._last_logged:
            return
        self._last_logged = state
        self.log.info(f"Files: {self.describe(rate=False)}")
