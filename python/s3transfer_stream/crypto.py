"""KafkaCrypto message encryption, interoperable with OpenMSIStream's ``[kafkacrypto]``.

Import this module only when a config file has a ``[kafkacrypto]`` section. It loads
``kafkacrypto`` (the optional extra ``s3transfer-stream[crypto]``) at import time; without
it the import still works and building a node raises :class:`CryptoUnavailable`, which
names the extra to install.

What it offers, independent of the processor and the producers:

* :class:`KafkaCryptoSettings` finds the node's KafkaCrypto config file the way
  OpenMSIStream does (``config_file`` or ``node_id`` in ``[kafkacrypto]``).
* :class:`CryptoNode` owns one KafkaCrypto instance (its key-exchange producer and
  consumer on ``<root>.keys``/``.reqs``/``.subs``) and encrypts or decrypts one message's
  key and value. :meth:`CryptoNode.decrypt` returns :class:`Decrypted` or
  :class:`NotYetDecryptable`; it never raises for a missing key, so a caller can hold the
  message (and its offset) and retry.
* :func:`provision_nodes` makes fresh node directories (``<dir>/<node_id>/<node_id>.config``,
  ``.crypto``, ``.seed``) with KafkaCrypto's key classes, for tests and small set-ups.

KafkaCrypto ships no type information, so the handful of objects taken from it are
typed ``Any`` at the boundary below.

About 730 lines: KafkaCrypto has no types and no non-interactive provisioning, so
the node lookup, provisioning and the decrypt/encrypt wrapper that hides it sit
together in the one module that may import it.
"""

from __future__ import annotations

import configparser
import contextlib
import importlib
import io
import logging
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import S3TransferStreamError

# KafkaCrypto (and msgpack, which it brings) is optional and untyped: its modules are
# loaded by name and used as Any, so mypy checks this file the same with or without it.
_IMPORT_ERROR: Exception | None = None
try:
    _msgpack: Any = importlib.import_module("msgpack")
    _pysodium: Any = importlib.import_module("pysodium")
    with warnings.catch_warnings():
        # It announces its version hash and backend through RuntimeWarnings at import.
        warnings.simplefilter("ignore", RuntimeWarning)
        _kc: Any = importlib.import_module("kafkacrypto")
    _kc_chain: Any = importlib.import_module("kafkacrypto.chain")
    _kc_cryptokey: Any = importlib.import_module("kafkacrypto.cryptokey")
    _kc_provisioners: Any = importlib.import_module("kafkacrypto.provisioners")
    _kc_ratchet: Any = importlib.import_module("kafkacrypto.ratchet")
    _kc_utils: Any = importlib.import_module("kafkacrypto.utils")
# Not only ImportError: pysodium fails with OSError or AttributeError when the system
# libsodium it loads through ctypes is missing.
except Exception as exc:  # pragma: no cover - depends on the installed extras
    _IMPORT_ERROR = exc

__all__ = [
    "KAFKACRYPTO_VERSION",
    "CryptoError",
    "CryptoNode",
    "CryptoUnavailable",
    "DecryptOptions",
    "Decrypted",
    "KafkaCryptoSettings",
    "NodeSpec",
    "NotYetDecryptable",
    "is_encrypted",
    "open_node",
    "provision_nodes",
    "require_kafkacrypto",
]

#: The version the ``crypto`` extra pins and the tests ran against.
KAFKACRYPTO_VERSION = "0.9.11.3"

log = logging.getLogger(__name__)

SECTION = "kafkacrypto"
_FILE_PREFIX = "file#"
# KafkaCrypto's first byte of an encrypted key or value (its format version); anything
# else is not KafkaCrypto output and can never be decrypted.
_ENCRYPTED_MARK = 0x01
_POLL_STEP = 0.1


class CryptoError(S3TransferStreamError):
    """A KafkaCrypto set-up that cannot work (missing node files, bad section)."""


class CryptoUnavailable(CryptoError):
    """The ``kafkacrypto`` package (extra ``s3transfer-stream[crypto]``) is not installed."""


def require_kafkacrypto() -> None:
    """Raises :class:`CryptoUnavailable` (naming the extra) unless KafkaCrypto loaded."""
    if _IMPORT_ERROR is not None:
        raise CryptoUnavailable(
            "a [kafkacrypto] section needs the kafkacrypto package: "
            f"pip install 's3transfer-stream[crypto]' (kafkacrypto=={KAFKACRYPTO_VERSION}, "
            f"and the system libsodium); import failed: {_IMPORT_ERROR}"
        ) from _IMPORT_ERROR


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class KafkaCryptoSettings:
    """Where a node's KafkaCrypto files are, from a ``[kafkacrypto]`` section."""

    #: The node's KafkaCrypto config file (``<node_id>.config``); its ``.crypto`` and
    #: ``.seed`` files are named inside it, relative to its directory.
    node_config: Path
    #: The OpenMSIStream-style config file the section came from, if any.
    source: Path | None = None

    @classmethod
    def from_section(
        cls,
        values: Mapping[str, str],
        source: Path | None,
        *,
        search_dirs: Sequence[Path] = (),
    ) -> KafkaCryptoSettings:
        """``config_file`` wins over ``node_id``, as in OpenMSIStream. A ``node_id`` names a
        directory ``<node_id>`` holding ``<node_id>.config``, looked for in
        ``search_dirs``, then beside ``source``, then in the working directory."""
        raw_file = values.get("config_file", "").strip()
        if raw_file:
            # Only the literal "file#" prefix goes: OpenMSIStream strips any leading
            # f/i/l/e/# characters, which also eats the start of a path like "files/x".
            path_text = (
                raw_file[len(_FILE_PREFIX) :] if raw_file.startswith(_FILE_PREFIX) else raw_file
            )
            path = Path(path_text).expanduser()
            if not path.is_absolute() and source is not None and not path.is_file():
                beside = source.parent / path
                if beside.is_file():
                    path = beside
            if not path.is_file():
                raise CryptoError(
                    f"[kafkacrypto] config_file {raw_file!r}"
                    + (f" in {source}" if source else "")
                    + " is not a file"
                )
            return cls(path.resolve(), source)
        node_id = values.get("node_id", "").strip()
        if not node_id:
            raise CryptoError(
                "[kafkacrypto]" + (f" in {source}" if source else "") + " sets neither "
                "config_file nor node_id"
            )
        dirs = [*search_dirs]
        if source is not None:
            dirs.append(source.parent)
        dirs.append(Path.cwd())
        candidates = [d / node_id / f"{node_id}.config" for d in dirs]
        for candidate in candidates:
            if candidate.is_file():
                return cls(candidate.resolve(), source)
        raise CryptoError(
            f"no KafkaCrypto node for [kafkacrypto] node_id = {node_id!r}"
            + (f" (from {source})" if source else "")
            + ": none of "
            + ", ".join(str(c) for c in candidates)
            + " exists; provision it first (services/kafkacrypto.sh provision)"
        )

    @classmethod
    def from_config_file(
        cls, path: Path, *, search_dirs: Sequence[Path] = ()
    ) -> KafkaCryptoSettings | None:
        """The settings of ``path``'s ``[kafkacrypto]`` section, or None without one."""
        parser = configparser.ConfigParser()
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
        if not parser.has_section(SECTION):
            return None
        return cls.from_section(dict(parser.items(SECTION)), path, search_dirs=search_dirs)


# ---------------------------------------------------------------- decrypt results


@dataclass(frozen=True)
class Decrypted:
    """A message whose key and value are plaintext now."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    #: True when a part that was never KafkaCrypto output was passed through as it was
    #: (only with ``treat_undecryptable_as_plaintext``).
    passed_through: bool = False


@dataclass(frozen=True)
class NotYetDecryptable:
    """A message this node cannot decrypt (yet). Hold it: do not commit its offset."""

    topic: str
    partition: int
    offset: int
    #: Which parts failed.
    parts: tuple[Literal["key", "value"], ...]
    #: False when no key can ever open it (not KafkaCrypto output, or empty).
    possibly_decryptable: bool
    #: Seconds this call waited for the key exchange before giving up.
    waited: float
    reason: str

    def __str__(self) -> str:
        return (
            f"message at topic {self.topic} partition {self.partition} offset {self.offset} "
            f"not decryptable ({'/'.join(self.parts)}): {self.reason}"
        )


@dataclass
class DecryptOptions:
    """OpenMSIStream's three consumer options, with its defaults.

    Each part (key, value) keeps its own "has waited" state, as upstream's two
    deserializers do: until a part first fails, a decryption may wait up to
    ``max_initial_wait_per_decrypt``; after that, up to ``max_wait_per_decrypt``.
    """

    treat_undecryptable_as_plaintext: bool = False
    max_wait_per_decrypt: float = 5.0
    max_initial_wait_per_decrypt: float = 60.0
    _has_waited: dict[str, bool] = field(default_factory=dict, repr=False)

    def budget(self, part: str) -> float:
        if self._has_waited.get(part, False):
            return self.max_wait_per_decrypt
        return self.max_initial_wait_per_decrypt

    def failed(self, part: str) -> None:
        self._has_waited[part] = True


# ---------------------------------------------------------------- the node


# KafkaCrypto's clients take kafka-python names; these are the confluent names they map
# to, so a broker setting given in confluent form replaces the node file's value.
def _drop_overridden(kc_config: dict[str, Any], broker: Mapping[str, Any], wrapper: Any) -> None:
    mapping: Mapping[str, str] = wrapper.CONFIG_MAP
    for name in list(kc_config):
        if mapping.get(name) in broker or name in broker:
            del kc_config[name]


class CryptoNode:
    """One provisioned node: encrypts for producing and decrypts consumed messages.

    It runs KafkaCrypto's key-exchange thread (its own producer and consumer on
    ``<root>.keys``, ``<root>.reqs``, ``<root>.subs``, where ``<root>`` is the topic name
    up to the first ``.``) from construction to :meth:`close`. A producer node must stay
    open while consumers still need its keys: KafkaCrypto hands keys over only from a
    running producer. Thread-safe (KafkaCrypto serialises under its own lock), but
    :meth:`decrypt` can block for seconds, so keep it off a consumer's poll loop.
    """

    def __init__(
        self,
        settings: KafkaCryptoSettings,
        broker: Mapping[str, Any],
        *,
        options: DecryptOptions | None = None,
        block_on_new_key: bool = True,
    ) -> None:
        """``block_on_new_key=False``: the first :meth:`decrypt` of a new key index
        returns at once instead of waiting up to about 10 s inside KafkaCrypto (its
        key request goes out all the same), for a caller that holds the message and
        retries it itself, so that one missing key never stalls its thread."""
        require_kafkacrypto()
        self.settings = settings
        self.options = options if options is not None else DecryptOptions()
        self._options_lock = threading.Lock()
        node_config = settings.node_config
        if not node_config.is_file():
            raise CryptoError(f"KafkaCrypto node config {node_config} does not exist")
        store: Any = _kc.KafkaCryptoStore(str(node_config), conf_global_logger=False)
        try:
            self.node_id: str = str(store.get_nodeID())
            crypto_file = self._node_file(store.load_value("cryptokey"), ".crypto")
            seed_file = self._node_file(store.load_value("ratchet"), ".seed")
            consumer_cfg: dict[str, Any] = store.get_kafka_config("consumer", extra="crypto")
            producer_cfg: dict[str, Any] = store.get_kafka_config("producer", extra="crypto")
        finally:
            store.close()
        for path in (crypto_file, seed_file):
            if not path.is_file():
                raise CryptoError(f"KafkaCrypto node {self.node_id}: {path} does not exist")
        _drop_overridden(consumer_cfg, broker, _kc.KafkaConsumer)
        _drop_overridden(producer_cfg, broker, _kc.KafkaProducer)
        consumer_cfg.update(broker)
        producer_cfg.update(broker)
        # The node files are passed as absolute paths: KafkaCrypto would otherwise open
        # them relative to the working directory, and changing that is process-wide.
        self._exchange_producer: Any = _kc.KafkaProducer(**producer_cfg)
        self._exchange_consumer: Any = _kc.KafkaConsumer(**consumer_cfg)
        self._crypto: Any = _kc.KafkaCrypto(
            None,
            self._exchange_producer,
            self._exchange_consumer,
            str(node_config),
            str(crypto_file),
            str(seed_file),
        )
        if not block_on_new_key:
            # KafkaCrypto counts this many 1 s steps down, sleeping between them; one
            # step means no sleep. It is read per call, from the instance.
            self._crypto.DESER_INITIAL_WAIT_INTERVALS = 1
        self._key_ser: Any = self._crypto.getKeySerializer()
        self._value_ser: Any = self._crypto.getValueSerializer()
        self._key_des: Any = self._crypto.getKeyDeserializer()
        self._value_des: Any = self._crypto.getValueDeserializer()
        self._closed = False

    def _node_file(self, stored: object, suffix: str) -> Path:
        name = str(stored) if stored else f"{self.node_id}{suffix}"
        if name.startswith(_FILE_PREFIX):
            name = name[len(_FILE_PREFIX) :]
        path = Path(name)
        if not path.is_absolute():
            path = self.settings.node_config.parent / path
        return path

    # -- producing

    def encrypt(self, topic: str, key: bytes | None, value: bytes) -> tuple[bytes | None, bytes]:
        """The encrypted (key, value) to produce to ``topic``."""
        enc_key = None if key is None else self._serialize(self._key_ser, topic, key, "key")
        return enc_key, self._serialize(self._value_ser, topic, value, "value")

    def _serialize(self, serializer: Any, topic: str, data: bytes, part: str) -> bytes:
        # KafkaCrypto logs an encryption failure and then fails on an unset local;
        # both come out here as one clear error.
        try:
            out = serializer.serialize(topic, data)
        except Exception as exc:
            raise CryptoError(f"KafkaCrypto could not encrypt a {part} for {topic}: {exc}") from exc
        if not isinstance(out, bytes | bytearray):
            raise CryptoError(f"KafkaCrypto returned {type(out).__name__} encrypting a {part}")
        return bytes(out)

    def serve_keys(self, topic: str) -> None:
        """Makes this (producer) node answer key requests for ``topic``'s root.

        KafkaCrypto listens on ``<root>.reqs`` only once it has encrypted something for
        that root in this process. A producer node restarted after its producer exited
        (OpenMSIStream's ``UploadDataFile`` stops as soon as it has sent) still holds the
        keys it used, saved in its config file, but answers nobody until this is called.
        """
        self.encrypt(topic, None, b"")

    def keys_saved(self) -> bool:
        """True once KafkaCrypto has written every producer key this node made into its
        config file (``oldkeys``), so that the node, started again, can still serve them.

        KafkaCrypto saves them from its background thread, once per 0.5 s cycle; it
        clears its "new keys" flag and writes the file under its lock, so reading the
        flag under that lock means the file is written. (A private attribute of the
        pinned KafkaCrypto version: it has no public call for this.)
        """
        with self._crypto._lock:
            return not bool(getattr(self._crypto, "_new_pgens", False))

    def wait_keys_saved(self, timeout: float) -> bool:
        """Waits up to ``timeout`` s for :meth:`keys_saved`; returns whether they are."""
        deadline = time.monotonic() + timeout
        while not self.keys_saved():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_STEP)
        return True

    # -- consuming

    def wait_budget(self, parts: Sequence[str]) -> float:
        """How long a message whose ``parts`` failed may wait before a caller that
        retries it itself reports it (upstream's per-part initial or later wait)."""
        with self._options_lock:
            return max((self.options.budget(part) for part in parts), default=0.0)

    def waited_out(self, parts: Sequence[str]) -> None:
        """A caller retrying by itself let ``parts`` wait their budget out: from now
        on the shorter ``max_wait_per_decrypt`` applies to them."""
        with self._options_lock:
            for part in parts:
                self.options.failed(part)

    def decrypt(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        *,
        max_wait: float | None = None,
    ) -> Decrypted | NotYetDecryptable:
        """Decrypts one consumed message's key and value.

        Waits for the key exchange as :class:`DecryptOptions` says (or up to
        ``max_wait`` seconds per part when given). KafkaCrypto itself also waits up to
        about 10 s inside the first call that meets a new key index. Never raises for a
        missing key: the result says what is missing, naming topic, partition and offset.
        """
        started = time.monotonic()
        plain: dict[str, bytes | None] = {"key": None}
        failed: list[Literal["key", "value"]] = []
        never = False
        passed = False
        parts: list[tuple[Literal["key", "value"], Any, bytes | None]] = [
            ("key", self._key_des, key),
            ("value", self._value_des, value),
        ]
        for part, deserializer, raw in parts:
            if raw is None:
                plain[part] = None
                continue
            # Key and value share one key index: once the key is known to be missing,
            # waiting again for the value would only double the hold-up.
            wait = 0.0 if failed and not never else max_wait
            got = self._decrypt_part(deserializer, topic, part, raw, wait)
            if isinstance(got, bytes):
                plain[part] = got
                continue
            possibly = bool(got.isPossiblyDecryptable())
            if not possibly and self.options.treat_undecryptable_as_plaintext:
                plain[part] = bytes(raw)
                passed = True
                continue
            failed.append(part)
            never = never or not possibly
        waited = time.monotonic() - started
        if failed:
            return NotYetDecryptable(
                topic,
                partition,
                offset,
                tuple(failed),
                possibly_decryptable=not never,
                waited=waited,
                reason=self._why(topic, never, value, waited),
            )
        out_value = plain.get("value")
        assert out_value is not None
        return Decrypted(topic, partition, offset, plain["key"], out_value, passed)

    def _decrypt_part(
        self, deserializer: Any, topic: str, part: str, raw: bytes, max_wait: float | None
    ) -> bytes | Any:
        message: Any = deserializer.deserialize(topic, raw)
        if message.isCleartext(retry=False):
            return bytes(message.getMessage(retry=False))
        with self._options_lock:
            budget = self.options.budget(part) if max_wait is None else max_wait
        deadline = time.monotonic() + budget
        while message.isPossiblyDecryptable() and time.monotonic() < deadline:
            time.sleep(_POLL_STEP)
            if message.isCleartext():
                return bytes(message.getMessage(retry=False))
        if max_wait is None:
            with self._options_lock:
                self.options.failed(part)
        return message

    def _why(self, topic: str, never: bool, value: bytes, waited: float) -> str:
        root = self._crypto.get_root(topic)
        if never:
            return (
                "not KafkaCrypto-encrypted (or empty), so no key can ever open it; "
                "--treat_undecryptable_as_plaintext would pass it on as it is"
            )
        index = _key_index(value)
        which = f"key index {index!r}" if index is not None else "its key index"
        # A caller retrying with no wait of its own counts the time itself.
        after = f" after waiting {waited:.1f} s" if waited >= _POLL_STEP else ""
        return (
            f"node {self.node_id} has no decryption key for root topic {root}, {which}"
            f"{after}: the key exchange over {root}.keys/{root}.reqs/"
            f"{root}.subs has not delivered it (is a producer node for {root} running, and "
            "does this node's chain allow this topic under the producer's root of trust?)"
        )

    def close(self) -> None:
        """Stops the key-exchange thread and closes KafkaCrypto's clients (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._crypto.close()
        except Exception:  # a half-closed client at shutdown must not mask the caller's error
            log.debug("closing KafkaCrypto failed", exc_info=True)

    def __enter__(self) -> CryptoNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_node(
    settings: KafkaCryptoSettings,
    broker: Mapping[str, Any],
    *,
    options: DecryptOptions | None = None,
    block_on_new_key: bool = True,
) -> CryptoNode:
    """A :class:`CryptoNode`, with the ways opening one fails as one :class:`CryptoError`
    that says what to do (a node already in use, node files that cannot be read)."""
    try:
        return CryptoNode(settings, broker, options=options, block_on_new_key=block_on_new_key)
    except BlockingIOError:
        # KafkaCrypto locks the node's config file for as long as the node runs.
        raise CryptoError(
            f"KafkaCrypto node {settings.node_config} is in use by another process (it "
            "locks its config file while it runs); give each process its own node"
        ) from None
    except OSError as err:
        raise CryptoError(f"cannot open KafkaCrypto node {settings.node_config}: {err}") from None


def _key_index(raw: bytes) -> object:
    """The key index inside a KafkaCrypto message, for log lines (None if unreadable)."""
    if not raw or raw[0] != _ENCRYPTED_MARK:
        return None
    try:
        fields = _msgpack.unpackb(raw[1:], raw=True)
    except Exception:
        return None
    if not isinstance(fields, list) or len(fields) != 3:
        return None
    index = fields[0]
    return index.hex() if isinstance(index, bytes) else index


def is_encrypted(raw: bytes | None) -> bool:
    """True when ``raw`` looks like KafkaCrypto output (a cheap check, not a proof)."""
    return raw is not None and len(raw) > 0 and raw[0] == _ENCRYPTED_MARK


# ---------------------------------------------------------------- provisioning

_USAGES: dict[str, tuple[str, ...]] = {
    "producer": ("key-encrypt",),
    "consumer": ("key-encrypt-request", "key-encrypt-subscribe"),
    "prodcon": ("key-encrypt", "key-encrypt-request", "key-encrypt-subscribe"),
}
_LIFETIME = 10 * 366 * 86400
_ED25519 = 1


@dataclass(frozen=True)
class NodeSpec:
    """One node to provision."""

    node_id: str
    role: Literal["producer", "consumer", "prodcon"]
    #: Topics (their root names, up to the first ".") the node may use; empty = all.
    topics: tuple[str, ...] = ()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # KafkaCrypto's key derivation prints salts and public keys to stdout.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _pack(obj: object) -> bytes:
    out: bytes = _msgpack.packb(obj, default=_kc_utils.msgpack_default_pack, use_bin_type=True)
    return out


def provision_nodes(
    directory: Path,
    nodes: Sequence[NodeSpec],
    *,
    rot_password: str,
    provisioning_password: str,
    bootstrap_servers: str,
    security_protocol: str = "PLAINTEXT",
    sub_interval: int | None = None,
) -> dict[str, Path]:
    """Provisions ``nodes`` under one root of trust into ``directory``.

    Each node gets ``directory/<node_id>/<node_id>.config`` (with ``.crypto`` and
    ``.seed`` beside it), the layout OpenMSIStream's ``node_id`` expects. Nodes provisioned
    with the same two passwords trust each other; the passwords derive the root and
    provisioner signing keys (KafkaCrypto's ``PasswordROT``/``PasswordProvisioner``), so
    the same passwords on another machine provision nodes of the same trust domain.
    Returns each node id's config path. ``sub_interval`` shortens KafkaCrypto's
    60 s wait between repeated key requests (tests).
    """
    require_kafkacrypto()
    if len(rot_password) < 12 or len(provisioning_password) < 6:
        raise CryptoError("the root password needs 12+ characters, the provisioning one 6+")
    with _quiet():
        rot: Any = _kc_provisioners.PasswordROT(rot_password, _ED25519)
        prov: Any = _kc_provisioners.PasswordProvisioner(provisioning_password, rot._pk, _ED25519)
    # An allowlist entry: [expiry (0 = none), restrictions (none), public key].
    trusted_root = _pack([0, _pack([]), rot._pk])
    written: dict[str, Path] = {}
    for spec in nodes:
        usages = list(_USAGES[spec.role])
        prov_link = rot._sk.crypto_sign(
            _pack([0, _pack([["usages", usages]]), prov._pk[spec.role]])
        )
        node_dir = directory / spec.node_id
        node_dir.mkdir(parents=True, exist_ok=True)
        base = node_dir / spec.node_id
        config_path = base.with_suffix(".config")
        crypto_path = base.with_suffix(".crypto")
        seed_path = base.with_suffix(".seed")
        for path in (config_path, crypto_path, seed_path):
            if path.exists():
                raise CryptoError(f"{path} exists already; provision into a fresh directory")
        # Written by hand: KafkaCrypto's own ratchet initialisation logs the new seed
        # sealed to a built-in escrow key.
        seed_path.write_bytes(_pack([0, _pysodium.randombytes(_kc_ratchet.Ratchet.SECRETSIZE)]))
        seed_path.chmod(0o600)
        identity: Any = _kc_cryptokey.CryptoKey(str(crypto_path), keytypes=[_ED25519])
        crypto_path.chmod(0o600)
        index = next(
            i for i in range(identity.get_num_spk()) if identity.get_spk(i).same_type(_ED25519)
        )
        public = identity.get_spk(index)
        roots = sorted({t.split(".", 1)[0] for t in spec.topics})
        limits: list[list[object]] = [["usages", usages]]
        if roots:
            limits.append(["topics", roots])
        limits.append(["pathlen", 1])
        node_link = prov._sk[spec.role].crypto_sign(
            _pack([time.time() + _LIFETIME, _pack(limits), public])
        )
        chain = _pack([prov_link, node_link])
        # Check the chain the way a peer will before writing it down.
        usage = "key-encrypt" if "key-encrypt" in usages else usages[0]
        _kc_chain.process_chain(chain, roots[0] if roots else None, usage, allowlist=[trusted_root])

        store: Any = _kc.KafkaCryptoStore(str(config_path), spec.node_id, conf_global_logger=False)
        try:
            store.store_value("maxage", _LIFETIME, section="crypto")
            store.store_value(f"chain{index}", chain, section="chains")
            store.store_value(f"rot{index}", trusted_root, section="allowlist")
            # A new store trusts KafkaCrypto's built-in temporary root; a provisioned
            # node must trust only its own.
            store.store_value("temporary", None, section="allowlist")
            store.store_value("cryptokey", _FILE_PREFIX + crypto_path.name)
            store.store_value("ratchet", _FILE_PREFIX + seed_path.name)
            if spec.role in ("producer", "prodcon"):
                store.store_value("mgmt_long_keyindex", True)
            if sub_interval is not None:
                store.store_value("crypto_sub_interval", sub_interval)
            store.store_value("bootstrap_servers", bootstrap_servers, section="kafka")
            store.store_value("security_protocol", security_protocol, section="kafka")
        finally:
            store.close()
        written[spec.node_id] = config_path
    return written


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import os
    import secrets

    parser = argparse.ArgumentParser(
        prog="python -m s3transfer_stream.crypto",
        description="Provision KafkaCrypto nodes (OpenMSIStream's node-directory layout).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prov = sub.add_parser("provision", help="make fresh node directories")
    prov.add_argument("directory", type=Path)
    prov.add_argument(
        "--node",
        action="append",
        required=True,
        metavar="NODE_ID:ROLE[:TOPIC,...]",
        help="a node to make; ROLE is producer, consumer or prodcon; repeatable",
    )
    prov.add_argument("--bootstrap-servers", required=True)
    prov.add_argument("--security-protocol", default="PLAINTEXT")
    prov.add_argument("--sub-interval", type=int, default=None)
    args = parser.parse_args(argv)

    specs: list[NodeSpec] = []
    for text in args.node:
        node_id, _, rest = text.partition(":")
        role, _, topics = rest.partition(":")
        if role not in _USAGES:
            parser.error(f"--node {text!r}: role must be one of {', '.join(_USAGES)}")
        specs.append(NodeSpec(node_id, role, tuple(t for t in topics.split(",") if t)))
    # Passwords come from the environment so they never show in a process listing;
    # without them each run is its own trust domain.
    rot_password = os.environ.get("S3TS_KC_ROT_PASSWORD") or secrets.token_urlsafe(24)
    prov_password = os.environ.get("S3TS_KC_PROVISIONING_PASSWORD") or secrets.token_urlsafe(24)
    written = provision_nodes(
        args.directory,
        specs,
        rot_password=rot_password,
        provisioning_password=prov_password,
        bootstrap_servers=args.bootstrap_servers,
        security_protocol=args.security_protocol,
        sub_interval=args.sub_interval,
    )
    for node_id, path in written.items():
        print(f"{node_id}\t{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
