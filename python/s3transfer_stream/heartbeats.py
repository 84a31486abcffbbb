"""Heartbeat and log topics (``--heartbeat_topic_name``, ``--log_topic_name``).

OpenMSIStream's long-running programs can send two kinds of small JSON message to
Kafka, which lab dashboards read; our three programs send the same, with the same
keys and fields (docs/operations.md, "Heartbeats and log topics"):

* a **heartbeat** every ``--heartbeat_interval_secs`` (900): key
  ``<program id>_heartbeat``, value ``{"timestamp": <ISO 8601, UTC>, ...counts}``,
  the counts being what happened *since the previous heartbeat*. The processor
  sends ``n_messages_read``, ``n_messages_processed``, ``n_bytes_read`` and
  ``n_bytes_processed`` (and ``n_files_transferred``); the producers send
  ``n_messages_produced`` and ``n_bytes_produced`` (and ``n_files_produced``).
* the program's **log lines** every ``--log_interval_secs`` (60): key
  ``<program id>_log``, value ``{"timestamp": <seconds since the epoch>,
  "messages": [<line>, ...]}``, the lines logged since the previous one.

Both are sent once at start, then at every interval, and a last time at
shutdown. The program id is ``--heartbeat_program_id`` / ``--log_program_id``,
by default a hex number that changes with every run (as upstream).

Everything here runs on one background thread with its own Kafka producer: the
data path only ever bumps a counter it already keeps (and a log line is appended
to a bounded buffer). A topic that does not exist, a broker that is down or a full
queue costs a warning (once) and the messages of that moment, never the program.

About 520 lines: the two kinds share one thread, one producer and one warning
policy, which is most of the module.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .config import TransferConfig
from .errors import ConfigError
from .kafka import describe_kafka_error, make_side_producer, redact
from .logs import get_logger
from .metrics import ProcessorHooks

if TYPE_CHECKING:
    from .processor.options import Stats
    from .producer import DirectoryUploader

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_LOG_INTERVAL",
    "ConsumedBytes",
    "DeliveryCounter",
    "HeartbeatOptions",
    "Heartbeats",
    "directory_uploader_counts",
    "processor_counts",
]

#: OpenMSIStream's defaults (seconds).
DEFAULT_HEARTBEAT_INTERVAL = 900.0
DEFAULT_LOG_INTERVAL = 60.0
#: ``[log]`` keys that configure the log buffer, not the producer (as upstream).
_LOG_KEYS = ("max.logs.per.message", "log.level")
_SEPARATE = "prefer.separate.producer"
#: Lines kept between two log messages unless ``[log] max.logs.per.message`` says
#: otherwise (upstream's default); older lines are dropped first.
DEFAULT_MAX_LOGS = 65536
#: A log message is split so that each Kafka message stays below this (or below
#: the producer's ``message.max.bytes``, if smaller).
MAX_LOG_MESSAGE_BYTES = 900_000
#: How long shutdown waits for the last heartbeat and log to be delivered.
FINAL_FLUSH_SECONDS = 5.0

Counts = Callable[[], Mapping[str, int]]


@dataclass(frozen=True)
class HeartbeatOptions:
    """What the command line asked for (the six OpenMSIStream options)."""

    heartbeat_topic: str | None = None
    heartbeat_program_id: str | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    log_topic: str | None = None
    log_program_id: str | None = None
    log_interval: float = DEFAULT_LOG_INTERVAL

    @property
    def enabled(self) -> bool:
        return bool(self.heartbeat_topic or self.log_topic)


# --------------------------------------------------------------------------- counts


class ConsumedBytes(ProcessorHooks):
    """Processor hooks that add up the bytes of the messages read (one sum per poll
    batch, the same one the metrics make) and pass every call on to ``inner``."""

    def __init__(self, inner: ProcessorHooks | None = None) -> None:
        self.inner = inner or ProcessorHooks()
        self.bytes = 0
        self._lock = threading.Lock()

    def consumed(self, messages: Sequence[Any]) -> None:
        n = sum(map(len, messages))
        with self._lock:
            self.bytes += n
        self.inner.consumed(messages)

    def file_failed(self, reason: str) -> None:
        self.inner.file_failed(reason)

    def file_transferred(self, started: float, completed: float) -> None:
        self.inner.file_transferred(started, completed)

    def s3_error(self, err: BaseException) -> None:
        self.inner.s3_error(err)


def processor_counts(stats: Stats, consumed: ConsumedBytes) -> Counts:
    """The processor's running totals, from its :class:`Stats` (what ``check`` and
    the metrics report) and the bytes read."""

    def counts() -> dict[str, int]:
        with stats.lock:
            read, processed = stats.messages_read, stats.messages_processed
            files = stats.files_transferred
        return {
            "n_messages_read": read,
            "n_messages_processed": processed,
            "n_bytes_read": consumed.bytes,
            "n_files_transferred": files,
        }

    return counts


def directory_uploader_counts(uploader: DirectoryUploader) -> Counts:
    """``DataFileUploadDirectory``'s running totals, from its ``counts()``."""

    def counts() -> dict[str, int]:
        c = uploader.counts()
        return {
            "n_messages_produced": c["chunks_delivered"],
            "n_bytes_produced": c["bytes_delivered"],
            "n_files_produced": c["uploaded"],
        }

    return counts


class DeliveryCounter:
    """``UploadDataFile``'s running totals, from the delivery reports of one file of
    ``size`` bytes in ``n_chunks`` chunks (the bytes counted are file data, as in
    the metrics)."""

    def __init__(self, size: int, n_chunks: int, chunk_size: int) -> None:
        self.n_chunks = n_chunks
        self.chunk_size = chunk_size
        self.last = size - (n_chunks - 1) * chunk_size
        self.messages = self.bytes = self.failed = 0
        self._lock = threading.Lock()

    def hook(self, inner: Callable[[int, Any], None] | None = None) -> Callable[[int, Any], None]:
        """An ``on_delivery(chunk_i, error)`` that counts, then calls ``inner``."""

        def delivered(chunk_i: int, error: Any) -> None:
            with self._lock:
                if error is not None:
                    self.failed += 1
                else:
                    self.messages += 1
                    self.bytes += self.chunk_size if chunk_i < self.n_chunks else self.last
            if inner is not None:
                inner(chunk_i, error)

        return delivered

    def counts(self) -> dict[str, int]:
        with self._lock:
            whole = self.messages == self.n_chunks and not self.failed
            return {
                "n_messages_produced": self.messages,
                "n_bytes_produced": self.bytes,
                "n_files_produced": int(whole),
            }


# --------------------------------------------------------------------------- log lines


class _LogBuffer(logging.Handler):
    """Keeps the program's log lines until the next log message (at most
    ``max_lines``; the oldest go first). Lines are formatted as upstream sends
    them: the message, with ``WARNING: `` or ``ERROR: `` in front."""

    def __init__(self, max_lines: int, level: int) -> None:
        super().__init__(level)
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prefix = ""
            if record.levelno >= logging.ERROR:
                prefix = "ERROR: "
            elif record.levelno >= logging.WARNING:
                prefix = "WARNING: "
            text = prefix + record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            if len(self.lines) == self.lines.maxlen:
                self.dropped += 1
            self.lines.append(text)
        except Exception:  # a log line must never break the program
            self.handleError(record)

    def take(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.lines.popleft())
            except IndexError:
                return out


def _split(lines: list[str], limit: int) -> list[list[str]]:
    """``lines`` in groups whose JSON stays below ``limit`` bytes (a line longer than
    that is cut)."""
    groups: list[list[str]] = [[]]
    size = 0
    for line in lines:
        n = len(json.dumps(line).encode("utf-8", "replace")) + 2
        if n > limit:
            line = line[: limit // 8] + " [cut]"
            n = len(json.dumps(line).encode("utf-8", "replace")) + 2
        if size + n > limit and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append(line)
        size += n
    return groups


# --------------------------------------------------------------------------- settings


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("true", "1", "yes", "on")


def side_settings(
    config: TransferConfig, section: str, program_settings: Mapping[str, str]
) -> dict[str, str]:
    """The producer settings for the heartbeat or log topic, by upstream's rule:
    the program's own producer settings (``[broker]`` + ``[producer]``), unless the
    config's ``[heartbeat]`` / ``[log]`` section sets ``prefer.separate.producer``:
    then that section's settings, on top of ``[broker]`` unless it names its own
    ``bootstrap.servers``."""
    own = dict(config.heartbeat if section == "heartbeat" else config.log)
    if not _truthy(own.get(_SEPARATE)):
        return dict(program_settings)
    for key in (_SEPARATE, *_LOG_KEYS):
        own.pop(key, None)
    if "bootstrap.servers" in own:
        return own
    return {**config.broker, **own}


def _log_level(config: TransferConfig) -> int:
    value = config.log.get("log.level")
    if value is None:
        return logging.NOTSET
    text = value.strip().upper()
    level = logging.getLevelName(text)
    if isinstance(level, int):
        return level
    if text.isdigit():
        return int(text)
    raise ConfigError(f"{config.path}: [log] log.level {value!r} is not a logging level")


def _max_logs(config: TransferConfig) -> int:
    value = config.log.get("max.logs.per.message")
    if value is None:
        return DEFAULT_MAX_LOGS
    try:
        n = int(float(value))
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(
            f"{config.path}: [log] max.logs.per.message {value!r} is not a positive number"
        )
    return n


# --------------------------------------------------------------------------- sender


class _Channel:
    """One topic (heartbeats or logs), its producer and whether it works."""

    def __init__(
        self, kind: str, topic: str, program_id: str | None, interval: float, producer: Any
    ) -> None:
        self.kind = kind
        self.topic = topic
        self.producer = producer
        self.program_id = program_id or hex(id(producer))[2:]
        self.key = f"{self.program_id}_{kind}"
        self.interval = interval
        self.due = 0.0  # the first one goes at start
        self.failing = False
        self.sent = 0
        self.lock = threading.Lock()


class Heartbeats:
    """Sends one program's heartbeats and/or log lines (see the module docstring).

    ``counts()`` returns the program's running totals (key: the JSON field name);
    each heartbeat carries how much each grew since the previous one.
    ``program_settings``: the Kafka settings of the program's own producer.
    """

    def __init__(
        self,
        program: str,
        config: TransferConfig,
        options: HeartbeatOptions,
        counts: Counts,
        *,
        program_settings: Mapping[str, str] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.program = program
        self.options = options
        self.counts = counts
        self.log = logger or get_logger()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = {k: 0 for k in counts()}
        self._warned: set[str] = set()
        self._buffer: _LogBuffer | None = None
        base = dict(program_settings if program_settings is not None else config.broker)
        self.channels: list[_Channel] = []
        producers: list[tuple[dict[str, str], Any]] = []

        def producer_for(settings: dict[str, str]) -> Any:
            for known, made in producers:
                if known == settings:
                    return made
            made = make_side_producer(settings, error_cb=self._client_error)
            producers.append((settings, made))
            return made

        o = options
        if o.heartbeat_topic:
            settings = side_settings(config, "heartbeat", base)
            self.heartbeat: _Channel | None = _Channel(
                "heartbeat",
                o.heartbeat_topic,
                o.heartbeat_program_id,
                o.heartbeat_interval,
                producer_for(settings),
            )
            self.channels.append(self.heartbeat)
        else:
            self.heartbeat = None
        if o.log_topic:
            settings = side_settings(config, "log", base)
            level, max_lines = _log_level(config), _max_logs(config)
            self.logs: _Channel | None = _Channel(
                "log", o.log_topic, o.log_program_id, o.log_interval, producer_for(settings)
            )
            self.channels.append(self.logs)
            self._buffer = _LogBuffer(max_lines, level)
            self._limit = min(MAX_LOG_MESSAGE_BYTES, _message_max(settings) - 16 * 1024)
        else:
            self.logs = None
        self._producers = [p for _, p in producers]
        self._settings = [s for s, _ in producers]

    def _redact(self, text: str) -> str:
        for settings in self._settings:
            text = redact(text, settings)
        return text

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Starts collecting log lines and the sending thread; says where they go."""
        if self._buffer is not None:
            self.log.addHandler(self._buffer)
        for ch in self.channels:
            self.log.info(
                f"{'Heartbeat' if ch.kind == 'heartbeat' else 'Log'} messages will be sent "
                f"to the {ch.topic} topic every {ch.interval:g} s with key {ch.key}"
            )
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
        self._thread.start()

    def stop(self, flush_seconds: float = FINAL_FLUSH_SECONDS) -> None:
        """Sends a last heartbeat and log, waits up to ``flush_seconds`` for them,
        and closes the producer. What is not delivered by then is dropped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(flush_seconds + 10)
        if self._buffer is not None:
            self.log.removeHandler(self._buffer)
        if self._thread is None or self._thread.is_alive():
            return
        self._send_all()
        deadline = time.monotonic() + flush_seconds
        for p in self._producers:
            left = p.flush(max(0.0, deadline - time.monotonic()))
            if left:
                p.purge()
                p.flush(0)

    # -- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            for ch in self.channels:
                if now >= ch.due:
                    ch.due = now + ch.interval
                    self._send(ch)
            for p in self._producers:
                p.poll(0)
            wait = min(ch.due for ch in self.channels) - time.monotonic()
            if self._stop.wait(max(0.05, min(wait, 1.0))):
                return

    def _send_all(self) -> None:
        for ch in self.channels:
            self._send(ch)

    def _send(self, ch: _Channel) -> None:
        try:
            if ch.kind == "heartbeat":
                self._produce(ch, json.dumps(self._heartbeat_value()))
            else:
                assert self._buffer is not None
                for group in _split(self._buffer.take(), self._limit):
                    self._produce(ch, json.dumps({"timestamp": time.time(), "messages": group}))
        except Exception as err:  # never let the side channel stop the program
            self._warn_once(ch, f"could not send a {ch.kind} message ({type(err).__name__}: {err})")

    def _heartbeat_value(self) -> dict[str, object]:
        now = self.counts()
        delta = {key: total - self._last.get(key, 0) for key, total in now.items()}
        self._last = dict(now)
        value: dict[str, object] = {"timestamp": datetime.now(UTC).isoformat()}
        for key, n in delta.items():
            value[key] = n
            if key == "n_bytes_read":
                # Bytes of the messages processed: the bytes read, in the share of the
                # messages that were usable chunks (the same unless some were not).
                read, done = delta.get("n_messages_read", 0), delta.get("n_messages_processed", 0)
                value["n_bytes_processed"] = n if done >= read else n * done // max(read, 1)
        return value

    def _produce(self, ch: _Channel, value: str) -> None:
        try:
            ch.producer.produce(
                ch.topic,
                key=ch.key,
                value=value.encode("utf-8", "surrogateescape"),
                on_delivery=lambda err, _msg: self._delivered(ch, err),
            )
        except BufferError:
            self._warn_once(ch, "the producer's queue is full; a message was dropped")

    def _delivered(self, ch: _Channel, err: Any) -> None:
        if err is None:
            with ch.lock:
                ch.sent += 1
                recovered = ch.failing
                ch.failing = False
            if recovered:
                self.log.info(f"{ch.kind.capitalize()} messages reach the {ch.topic} topic again")
                self._warned.discard(ch.kind)
            return
        with ch.lock:
            ch.failing = True
        self._warn_once(ch, self._redact(describe_kafka_error(err)))

    def _warn_once(self, ch: _Channel, why: str) -> None:
        if ch.kind in self._warned:
            return
        self._warned.add(ch.kind)
        self.log.warning(
            f"Could not send {ch.kind} messages to the {ch.topic} topic: {why}. The program "
            "goes on; this is said once (and again if they get through and then fail again)"
        )

    def _client_error(self, err: Any) -> None:
        if "client" in self._warned:
            return
        self._warned.add("client")
        topics = " and ".join(sorted({ch.topic for ch in self.channels}))
        self.log.warning(
            f"The Kafka producer for the {topics} topic(s) reports: "
            f"{self._redact(describe_kafka_error(err))}. The program goes on; said once"
        )


def _message_max(settings: Mapping[str, str]) -> int:
    try:
        return int(float(settings.get("message.max.bytes", 1_000_000)))
    except ValueError:
        return 1_000_000
