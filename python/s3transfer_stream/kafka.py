"""Thin glue around confluent-kafka shared by the producers (and later the consumer side).

* :func:`make_producer` builds a ``confluent_kafka.Producer`` from a config file's
  ``[producer]`` settings, filling in what chunk messages need when it is missing,
  routing librdkafka's own log lines to our logger, and never showing secrets.
* :func:`partition_count` asks the broker how many partitions a topic has and fails
  fast with a clear :class:`~s3transfer_stream.errors.ConfigError` when the topic
  does not exist or the broker cannot be reached (librdkafka would otherwise retry
  silently until ``message.timeout.ms``).
* :func:`file_partition` is the file-affine partitioner: all chunks of one file go to
  one partition, chosen by a stable hash of the file's relative path.
* :func:`create_topic` / :func:`delete_topic` for tests and the demo (the brokers we
  run have topic auto-creation disabled).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from .errors import ConfigError
from .logs import get_logger, log_format

__all__ = [
    "CHUNK_MESSAGE_OVERHEAD",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_QUEUE_KBYTES",
    "StreamProducer",
    "client_log_settings",
    "create_topic",
    "delete_topic",
    "describe_kafka_error",
    "file_partition",
    "make_admin",
    "make_producer",
    "make_side_producer",
    "partition_count",
    "redact",
]

#: OpenMSIStream's default chunk size (bytes).
DEFAULT_CHUNK_SIZE = 524_288
#: Bytes a chunk message holds besides its data: msgpack framing, two 64-byte hashes,
#: the name and subdir (a few KiB at most in practice), plus Kafka record overhead.
CHUNK_MESSAGE_OVERHEAD = 64 * 1024
#: librdkafka's own smallest sensible request size (its default ``message.max.bytes``).
_LIBRDKAFKA_DEFAULT_MESSAGE_MAX = 1_000_000
#: Default bound of the producer's local queue (librdkafka's default is 1 GiB): the
#: producer's memory is this plus one batch of encoded chunks per sending thread.
DEFAULT_QUEUE_KBYTES = 128 * 1024

# Setting names whose values are never shown (in errors, logs or reprs).
# (``sasl.oauthbearer.config`` holds the unsecured JWT's claims, extensions may hold tokens.)
_SECRET_PARTS = (
    "password",
    "secret",
    "sasl.username",
    "ssl.key.pem",
    "credentials",
    "token",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.extensions",
)


def _is_secret(key: str) -> bool:
    key = key.lower()
    return any(part in key for part in _SECRET_PARTS)


def redact(text: str, settings: Mapping[str, Any]) -> str:
    """``text`` with the value of every secret setting in ``settings`` replaced by ``***``."""
    for key, value in settings.items():
        shown = str(value)
        if _is_secret(str(key)) and shown:
            text = text.replace(shown, "***")
    return text


def describe_kafka_error(error: object) -> str:
    """A short human-readable form of a ``KafkaError`` / ``KafkaException`` (name and text)."""
    if isinstance(error, KafkaException) and error.args:
        error = error.args[0]
    if isinstance(error, KafkaError):
        return f"{error.name()}: {error.str()}"
    return str(error)


class StreamProducer(Producer):
    """A ``confluent_kafka.Producer`` that remembers its bootstrap servers (for messages)
    and its error callback (whose ``refused`` says why the broker refused it, if so)."""

    bootstrap_servers: str
    client_errors: Any = None


#: Client errors that say the broker refused us (SASL login, TLS handshake, e.g. a
#: certificate that does not verify): retrying with the same settings cannot help.
_REFUSED_CODES = frozenset(
    code
    for code in (getattr(KafkaError, "_AUTHENTICATION", None), getattr(KafkaError, "_SSL", None))
    if code is not None
)


class _ErrorLogger:
    """librdkafka ``error_cb``: logs each distinct client-level error (e.g. "all brokers
    down") at most once a minute, so an outage is visible without flooding the log.
    Remembers the last authentication or TLS failure in :attr:`refused` (redacted), so
    that :func:`partition_count` can say why the broker did not answer; with
    ``log=False`` it only remembers."""

    def __init__(
        self, settings: Mapping[str, Any], every: float = 60.0, *, log: bool = True
    ) -> None:
        self._settings = dict(settings)
        self._every = every
        self._log = log
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self.refused = ""
        #: While True (during :func:`partition_count`, whose error says what failed),
        #: client errors are only remembered, not logged as well.
        self.muted = False

    def __call__(self, error: KafkaError) -> None:
        text = redact(describe_kafka_error(error), self._settings)
        refused = error.code() in _REFUSED_CODES
        if refused:
            self.refused = text
        if not self._log or self.muted:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(text, float("-inf")) < self._every:
                return
            self._last[text] = now
        level = logging.ERROR if error.fatal() else logging.WARNING
        get_logger().log(level, f"Kafka client: {text}")


class _LibrdkafkaLog:
    """librdkafka's own log lines (connection failures every second while a broker is
    down, ...), as DEBUG lines of ``s3transfer_stream.librdkafka``: what matters
    reaches the user once a minute through :class:`_ErrorLogger` instead."""

    def __init__(self, logger: logging.Logger | None) -> None:
        self._logger = logger if logger is not None else get_logger().getChild("librdkafka")

    def log(self, level: int, msg: str, *args: object) -> None:
        self._logger.debug(msg, *args)


def client_log_settings() -> dict[str, Any]:
    """Settings that send librdkafka's own log lines to our logger (DEBUG) instead of
    raw ``%3|...`` lines on stderr, when the logs are JSON (``--log_format json``),
    so that every line stays one JSON object; empty in the text format."""
    return {"logger": _LibrdkafkaLog(None)} if log_format() == "json" else {}


def _int_setting(settings: Mapping[str, Any], key: str) -> int | None:
    value = settings.get(key)
    if value is None:
        return None
    try:
        return int(float(str(value)))
    except ValueError:
        raise ConfigError(f"[producer] {key} must be a number, not {value!r}") from None


def producer_settings(
    settings: Mapping[str, Any],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    queue_kbytes: int | None = None,
) -> dict[str, Any]:
    """``settings`` completed with what chunk messages need (the settings given win,
    except that a ``message.max.bytes`` too small for one chunk is an error).

    * ``message.max.bytes``: at least one chunk plus overhead (librdkafka's 1 MB
      default otherwise). It is *not* raised beyond what one chunk needs, because a
      client limit above the broker's own ``message.max.bytes`` makes the broker
      reject whole batches;
    * ``queue.buffering.max.kbytes``: ``queue_kbytes`` (default 128 MiB instead of
      librdkafka's 1 GiB), the memory bound of messages waiting to be sent;
    * ``linger.ms`` 100 and ``compression.type`` lz4 as OpenMSIStream ships them.
    """
    out: dict[str, Any] = {str(k): v for k, v in settings.items()}
    if not str(out.get("bootstrap.servers", "")).strip():
        raise ConfigError(
            "no bootstrap.servers in the [broker] or [producer] section of the config file"
        )
    needed = chunk_size + CHUNK_MESSAGE_OVERHEAD
    given = _int_setting(out, "message.max.bytes")
    if given is None:
        out["message.max.bytes"] = str(max(_LIBRDKAFKA_DEFAULT_MESSAGE_MAX, needed))
    elif given < needed:
        raise ConfigError(
            f"[producer] message.max.bytes = {given} is too small for {chunk_size}-byte "
            f"chunks: it must be at least {needed} (chunk size + {CHUNK_MESSAGE_OVERHEAD}); "
            "raise it or use a smaller --chunk_size"
        )
    if "queue.buffering.max.kbytes" not in out:
        kbytes = DEFAULT_QUEUE_KBYTES if queue_kbytes is None else queue_kbytes
        # librdkafka needs room for at least one message in its queue.
        out["queue.buffering.max.kbytes"] = str(max(kbytes, (needed + 1023) // 1024))
    out.setdefault("linger.ms", "100")
    out.setdefault("compression.type", "lz4")
    return out


def make_producer(
    settings: Mapping[str, Any],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    queue_kbytes: int | None = None,
    logger: logging.Logger | None = None,
) -> StreamProducer:
    """A producer for chunk messages of ``chunk_size`` bytes (see :func:`producer_settings`).

    librdkafka's log lines go to ``logger`` at DEBUG level (default: the package
    logger's ``librdkafka`` child), and client errors such as "all brokers down" are
    logged as warnings, each at most once a minute.
    Raises :class:`ConfigError` for a bad setting; the message never contains the value
    of a password/secret setting.
    """
    full = producer_settings(settings, chunk_size=chunk_size, queue_kbytes=queue_kbytes)
    full.setdefault("error_cb", _ErrorLogger(full))
    full.setdefault("logger", _LibrdkafkaLog(logger))
    try:
        producer = StreamProducer(full)
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(
            f"bad Kafka producer settings: {redact(describe_kafka_error(exc), full)}"
        ) from None
    producer.bootstrap_servers = str(full["bootstrap.servers"])
    producer.client_errors = full["error_cb"]
    return producer


def make_admin(settings: Mapping[str, Any]) -> tuple[AdminClient, _ErrorLogger]:
    """An ``AdminClient`` for ``settings`` (e.g. a config's ``[broker]``) whose librdkafka
    log lines go to our logger at DEBUG level and whose client errors are only
    remembered: pass the second value to :func:`partition_count` as ``errors``, which
    then names an authentication or TLS failure instead of a timeout."""
    errors = _ErrorLogger(settings, log=False)
    full: dict[str, Any] = {**settings, "logger": _LibrdkafkaLog(None), "error_cb": errors}
    try:
        return AdminClient(full), errors
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(
            f"bad Kafka settings: {redact(describe_kafka_error(exc), full)}"
        ) from None


#: Bounds of a side producer's local queue (heartbeats and log lines are small and
#: few; while the broker is away, what does not fit is dropped, not kept).
SIDE_QUEUE_KBYTES = 16 * 1024
SIDE_QUEUE_MESSAGES = 1000


def make_side_producer(
    settings: Mapping[str, Any],
    *,
    error_cb: Any = None,
    logger: logging.Logger | None = None,
) -> Producer:
    """A small producer for heartbeats and log lines (not chunk messages), with
    a bounded queue (:data:`SIDE_QUEUE_KBYTES`, :data:`SIDE_QUEUE_MESSAGES`) and a
    one-minute delivery timeout unless ``settings`` say otherwise. ``error_cb``
    gets client-level errors (broker down, ...); librdkafka's log lines go to
    ``logger`` at DEBUG level. Raises :class:`ConfigError` for a bad setting."""
    full: dict[str, Any] = {str(k): v for k, v in settings.items()}
    if not str(full.get("bootstrap.servers", "")).strip():
        raise ConfigError("no bootstrap.servers for the heartbeat/log producer in the config file")
    full.setdefault("queue.buffering.max.kbytes", str(SIDE_QUEUE_KBYTES))
    full.setdefault("queue.buffering.max.messages", str(SIDE_QUEUE_MESSAGES))
    full.setdefault("message.timeout.ms", "60000")
    full.setdefault("linger.ms", "100")
    if error_cb is not None:
        full["error_cb"] = error_cb
    full.setdefault("logger", _LibrdkafkaLog(logger))
    try:
        return Producer(full)
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(
            f"bad Kafka settings for the heartbeat/log producer: "
            f"{redact(describe_kafka_error(exc), full)}"
        ) from None


def _bootstrap_of(client: Any, bootstrap: str | None) -> str:
    if bootstrap:
        return bootstrap
    return str(getattr(client, "bootstrap_servers", "") or "the configured bootstrap servers")


def _refused(errors: Any, where: str) -> ConfigError | None:
    text = str(getattr(errors, "refused", "") or "")
    if not text:
        return None
    return ConfigError(
        f"the Kafka broker at {where} refused the connection: {text} "
        "(check sasl.username / sasl.password / sasl.mechanism, security.protocol and "
        "ssl.ca.location)"
    )


def partition_count(
    client: Any,
    topic: str,
    timeout: float = 10.0,
    *,
    bootstrap: str | None = None,
    errors: Any = None,
) -> int:
    """The number of partitions of ``topic``, from the broker's metadata.

    ``client`` is a Producer, Consumer or AdminClient (anything with ``list_topics``).
    Raises :class:`ConfigError` naming the topic and the bootstrap servers if the
    broker cannot be reached within ``timeout`` seconds or the topic does not exist,
    and at once, naming the broker and librdkafka's reason, if the client's error
    callback (``errors``, default the producer's ``client_errors``, see
    :func:`make_admin`) saw the broker refuse the SASL login or the TLS handshake.
    """
    where = _bootstrap_of(client, bootstrap)
    if errors is None:
        errors = getattr(client, "client_errors", None)
    if not isinstance(errors, _ErrorLogger):
        return _partition_count(client, topic, timeout, where, errors)
    muted, errors.muted = errors.muted, True
    try:
        return _partition_count(client, topic, timeout, where, errors)
    finally:
        errors.muted = muted


def _partition_count(client: Any, topic: str, timeout: float, where: str, errors: Any) -> int:
    deadline = time.monotonic() + timeout
    last = "no answer"
    unreachable = ""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # Short slices while a refusal can still be seen, so it is reported at once.
        step = remaining if errors is None else min(remaining, 0.5)
        try:
            metadata = client.list_topics(topic=topic, timeout=max(step, 0.1))
        except KafkaException as exc:
            if isinstance(client, (Producer, AdminClient)):
                client.poll(0)  # serves the error callback (never a consumer's messages)
            refused = _refused(errors, where)
            if refused is not None:
                raise refused from None
            unreachable = describe_kafka_error(exc)
            if errors is not None and time.monotonic() < deadline:
                time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
                continue
            break
        unreachable = ""
        found = metadata.topics.get(topic)
        if found is None:
            last = "the broker did not describe it"
        elif found.error is not None:
            if found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise ConfigError(
                    f"topic {topic!r} does not exist on the Kafka broker at {where} "
                    "(create it first: topics are not created automatically)"
                )
            if found.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise ConfigError(f"not authorized to use topic {topic!r} at {where}")
            last = describe_kafka_error(found.error)
            if not found.error.retriable():
                break
        elif found.partitions:
            return len(found.partitions)
        else:
            last = "it has no partitions yet"
        time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
    if unreachable:
        raise ConfigError(
            f"cannot reach the Kafka broker at {where} within {timeout:g} s to look up "
            f"topic {topic!r} ({unreachable})"
        )
    raise ConfigError(f"cannot use topic {topic!r} at {where}: {last}")


def file_partition(rel_path: str, n_partitions: int) -> int:
    """The partition for every chunk of the file ``rel_path`` (POSIX relative path,
    without ``filename_append``): CRC-32 of its UTF-8 bytes modulo ``n_partitions``.

    Stable across processes, hosts and Python versions (unlike ``hash()``).
    """
    if n_partitions < 1:
        raise ValueError(f"n_partitions must be >= 1, got {n_partitions}")
    return zlib.crc32(rel_path.encode("utf-8", "surrogateescape")) % n_partitions


def _admin(bootstrap: str, extra: Mapping[str, Any] | None = None) -> AdminClient:
    settings: dict[str, Any] = {"bootstrap.servers": bootstrap}
    settings.update(extra or {})
    return AdminClient(settings)


def create_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    config: Mapping[str, str] | None = None,
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
    admin_settings: Mapping[str, Any] | None = None,
) -> None:
    """Create ``topic`` and wait until the broker reports all its partitions.

    An existing topic with the same partition count is accepted as is.
    """
    admin = _admin(bootstrap, admin_settings)
    new = NewTopic(
        topic,
        num_partitions=partitions,
        replication_factor=replication_factor,
        config=dict(config or {}),
    )
    futures = admin.create_topics([new], operation_timeout=timeout, request_timeout=timeout)
    try:
        futures[topic].result(timeout=timeout)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise ConfigError(
                f"cannot create topic {topic!r} at {bootstrap}: {describe_kafka_error(exc)}"
            ) from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            count = partition_count(admin, topic, timeout=max(deadline - time.monotonic(), 0.5))
        except ConfigError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
            continue
        if count != partitions:
            raise ConfigError(f"topic {topic!r} exists with {count} partitions, not {partitions}")
        metadata = admin.list_topics(topic=topic, timeout=5)
        leaders = [p.leader for p in metadata.topics[topic].partitions.values()]
        if all(leader >= 0 for leader in leaders):
            return
        if time.monotonic() >= deadline:
            raise ConfigError(f"topic {topic!r} has partitions without a leader after {timeout} s")
        time.sleep(0.1)


def delete_topic(bootstrap: str, topics: str | Iterable[str], *, timeout: float = 30.0) -> None:
    """Delete ``topics`` (missing ones are ignored)."""
    names = [topics] if isinstance(topics, str) else list(topics)
    if not names:
        return
    admin = _admin(bootstrap)
    futures = admin.delete_topics(names, operation_timeout=timeout, request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise ConfigError(
                f"cannot delete topic {name!r} at {bootstrap}: {describe_kafka_error(exc)}"
            ) from None
