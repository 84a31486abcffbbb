"""Encrypting what the producers send, when their config has a ``[kafkacrypto]`` section.

Both producers build one :class:`Encryptor` per process (:func:`open_encryptor`): one
KafkaCrypto node, with its key-exchange clients on the config's ``[broker]`` settings,
shared by every sending thread. :func:`~.send.send_file` encrypts each message's key
and value with it after the Rust core encoded the chunk and before ``produce``, as
OpenMSIStream's producers do (its consumers decrypt both).

KafkaCrypto hands its keys to consumers only from a running producer node, so
:meth:`Encryptor.finish`, called after the final flush, keeps the node open until
KafkaCrypto has saved the keys it used in the node file, and then serves key requests
until :data:`KEY_SERVE_SECONDS` have passed since the last message was encrypted, so
that a consumer reading close behind still gets them. A consumer that starts later
needs the producer node started again (:meth:`~s3transfer_stream.crypto.CryptoNode.serve_keys`).

This module never imports :mod:`s3transfer_stream.crypto` (and KafkaCrypto) itself
unless a config has the section.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, S3TransferStreamError, TransferError
from ..logs import get_logger

if TYPE_CHECKING:
    from ..config import TransferConfig
    from ..crypto import CryptoNode

__all__ = ["KEYS_SAVED_TIMEOUT", "KEY_SERVE_SECONDS", "Encryptor", "open_encryptor"]

#: After the final flush the node keeps answering key requests until this many
#: seconds have passed since the last message was encrypted.
KEY_SERVE_SECONDS = 10.0
#: How long :meth:`Encryptor.finish` waits for KafkaCrypto to save its keys.
KEYS_SAVED_TIMEOUT = 10.0


class Encryptor:
    """One producing process's KafkaCrypto node (thread-safe: KafkaCrypto serialises
    encryption under its own lock)."""

    def __init__(self, node: CryptoNode) -> None:
        self.node = node
        self._last = 0.0
        self._topics: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def node_id(self) -> str:
        return self.node.node_id

    def encrypt(self, topic: str, key: str, value: Any) -> tuple[bytes, bytes]:
        """The encrypted key and value of one chunk message (``value``: the encoded
        chunk, any bytes-like object)."""
        # KafkaCrypto's serializer accepts only bytes or bytearray (it checks the type),
        # so the Rust core's buffer is copied once into bytes here; nothing else is
        # copied on our side (the encrypted bytes go to produce() as they are).
        plain = value if isinstance(value, bytes) else bytes(value)
        try:
            enc_key, enc_value = self.node.encrypt(topic, key.encode("utf-8"), plain)
        except S3TransferStreamError as exc:
            raise TransferError(str(exc)) from exc
        if enc_key is None:  # CryptoNode.encrypt returns a key whenever it is given one
            raise TransferError(f"KafkaCrypto returned no encrypted key for a message to {topic}")
        with self._lock:
            self._last = time.monotonic()
            self._topics.add(topic)
        return enc_key, enc_value

    def finish(
        self,
        *,
        serve_seconds: float = KEY_SERVE_SECONDS,
        saved_timeout: float = KEYS_SAVED_TIMEOUT,
        stop: threading.Event | None = None,
    ) -> bool:
        """Call after the final flush: waits until KafkaCrypto saved the keys it used,
        serves key requests until ``serve_seconds`` after the last encryption (sooner if
        ``stop`` is set), then closes the node. Returns whether the keys were saved."""
        log = get_logger()
        saved = True
        try:
            with self._lock:
                last, used = self._last, bool(self._topics)
            if used:
                saved = self.node.wait_keys_saved(saved_timeout)
                if not saved:
                    log.warning(
                        f"KafkaCrypto node {self.node_id} did not save the keys it used "
                        f"within {saved_timeout:g} s; once this program exits, no consumer "
                        "that has not got them yet can decrypt what it sent"
                    )
                left = last + serve_seconds - time.monotonic()
                if left > 0:
                    log.info(
                        f"Serving the KafkaCrypto keys of node {self.node_id} for {left:.0f} s "
                        "more, so that consumers reading behind can still get them"
                    )
                    if stop is None:
                        time.sleep(left)
                    else:
                        stop.wait(left)
        finally:
            self.close()
        return saved

    def close(self) -> None:
        """Closes the node at once (idempotent)."""
        if not self._closed:
            self._closed = True
            self.node.close()


def open_encryptor(config: TransferConfig) -> Encryptor | None:
    """The :class:`Encryptor` of ``config``'s ``[kafkacrypto]`` node, or None without the
    section. Raises :class:`ConfigError` (naming the config file) when the extra is
    missing, the node cannot be found or opened, or another process uses it."""
    settings = config.kafkacrypto_settings()
    if settings is None:
        return None
    from ..crypto import CryptoError, open_node

    try:
        node = open_node(settings, config.broker)
    except CryptoError as err:
        raise ConfigError(f"{config.path}: {err}") from None
    get_logger().info(f"Encrypting with KafkaCrypto node {node.node_id} ({settings.node_config})")
    return Encryptor(node)
