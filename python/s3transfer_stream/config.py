"""Config files in OpenMSIStream's format (``docs/compatibility.md``, "Config files").

A config file is a ``configparser`` INI file (default ``%`` interpolation, so a
literal ``%`` is written ``%%``; keys are lowercased) with these sections:

* ``[broker]``: Kafka settings shared by producers and consumers (merged into both);
* ``[producer]`` and ``[consumer]``: confluent-kafka / librdkafka settings;
* ``[s3]``: ``access_key_id``, ``secret_key_id``, ``endpoint_url`` and ``region``;
  optionally ``ca_bundle``, a PEM file of the CA certificates an ``https://``
  endpoint's certificate is checked against (else ``$AWS_CA_BUNDLE`` if set, else
  the CAs botocore trusts by default; a certificate that does not verify fails);
* ``[heartbeat]`` and ``[log]``: settings of the producer for the heartbeat and
  log topics, used when they set ``prefer.separate.producer`` (see
  :mod:`s3transfer_stream.heartbeats`); ``[log]`` may also set
  ``max.logs.per.message`` and ``log.level``;
* ``[kafkacrypto]``: the KafkaCrypto node (``node_id`` or ``config_file``) of an
  encrypted topic, as OpenMSIStream names it; kept as :attr:`TransferConfig.kafkacrypto`
  and resolved by :meth:`TransferConfig.kafkacrypto_settings` (the processor decrypts
  with it, the producers encrypt);
* anything else is kept by name but not used.

A value that starts with ``$`` names environment variables (``$X``, ``${X}``,
``$X/suffix``) and is expanded; an unset variable is an error that names the
variable but never shows any value. Values stay strings (confluent-kafka accepts
them), unlike upstream, which turns ``batch.size = 2000000`` into ``2000000.0``.

:data:`CONFIG_SECTIONS` and :data:`CONFIG_KEYS` list the sections and the keys this
package itself reads or changes (the loader below takes its section names, the
``[s3]`` keys and the accepted serializer names from them, and
``docs/configuration.md`` is generated from them); every other key of a Kafka
section is handed to confluent-kafka as it is.

Sections listed in ``require`` are checked strictly. Other ``[producer]``,
``[consumer]`` and ``[s3]`` sections are loaded when they can be and otherwise
dropped with a warning, so that a producer can use a config whose ``[s3]`` section
names variables only the stream processor sets (upstream reads sections lazily to
the same effect). ``[broker]``, which both sides use, is always checked strictly.

About 760 lines, on purpose: every section, key, `$NAME` substitution and
warning of OpenMSIStream's config format is read here, so the rules live in one
place (docs/configuration.md is generated from them and the CLIs).
"""

from __future__ import annotations

import configparser
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .crypto import KafkaCryptoSettings

__all__ = [
    "CONFIG_DIR_ENV",
    "CONFIG_KEYS",
    "CONFIG_SECTIONS",
    "PACKAGED_CONFIG_DIR",
    "UPSTREAM_CONFIG_DIR_ENV",
    "ConfigKey",
    "ConfigSection",
    "S3Settings",
    "TransferConfig",
    "load_config",
    "resolve_config_path",
]

#: Directory searched first for config files given by name.
CONFIG_DIR_ENV = "S3TRANSFER_STREAM_CONFIG_DIR"
#: OpenMSIStream's variable for the same purpose, used when ours is not set.
UPSTREAM_CONFIG_DIR_ENV = "OPENMSISTREAM_CONFIG_FILE_DIR"
#: The config files shipped with the package.
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "config_files"


@dataclass(frozen=True)
class ConfigSection:
    """A section of the config file and what it is for."""

    name: str
    meaning: str


@dataclass(frozen=True)
class ConfigKey:
    """A key this package reads or changes. ``default`` is what applies when the
    file does not set it ("" when nothing does); ``only`` is the one value accepted,
    if any."""

    section: str
    key: str
    meaning: str
    required: bool = False
    default: str = ""
    only: str = ""


#: The sections of a config file, in the order they are documented.
CONFIG_SECTIONS: tuple[ConfigSection, ...] = (
    ConfigSection(
        "broker",
        "Kafka settings shared by every client (merged under [producer] and [consumer], "
        "whose own keys win; also used by the admin clients and the heartbeat/log producer). "
        "Always checked strictly.",
    ),
    ConfigSection(
        "producer",
        "confluent-kafka / librdkafka producer settings for UploadDataFile and "
        "DataFileUploadDirectory (required by both); any librdkafka key is passed on.",
    ),
    ConfigSection(
        "consumer",
        "confluent-kafka / librdkafka consumer settings for S3TransferStreamProcessor "
        "(required by it); any librdkafka key is passed on, except the ones below that it "
        "sets itself.",
    ),
    ConfigSection(
        "s3",
        "How to reach the S3 server (required by S3TransferStreamProcessor; the bucket is "
        "the command line's bucket_name).",
    ),
    ConfigSection(
        "heartbeat",
        "Producer settings for the heartbeat topic, used only with "
        "prefer.separate.producer = true (otherwise heartbeats use [broker] + [producer]).",
    ),
    ConfigSection(
        "log",
        "Producer settings for the log topic, as [heartbeat]; plus two keys for the log buffer.",
    ),
    ConfigSection(
        "kafkacrypto",
        "OpenMSIStream's encryption settings: the KafkaCrypto node whose keys encrypt or "
        "decrypt the topic (needs the extra: pip install 's3transfer-stream[crypto]'; "
        "docs/encryption.md). UploadDataFile and DataFileUploadDirectory encrypt every "
        "message's key and value with it; S3TransferStreamProcessor decrypts with it. Any "
        "other section is ignored.",
    ),
)

_KAFKA_SECTIONS = ("broker", "producer", "consumer")
_SIDE_SECTIONS = ("heartbeat", "log")

#: The keys this package reads or changes itself.
CONFIG_KEYS: tuple[ConfigKey, ...] = (
    *(
        ConfigKey(section, "node_id", "OpenMSIStream's KafkaCrypto node id: dropped, unused")
        for section in (*_KAFKA_SECTIONS, *_SIDE_SECTIONS)
    ),
    ConfigKey(
        "broker",
        "bootstrap.servers",
        "the Kafka brokers (host:port, comma separated); UploadDataFile and "
        "DataFileUploadDirectory stop with a config error without it in [broker] or [producer]",
    ),
    ConfigKey(
        "producer",
        "key.serializer",
        "checked, then removed (we encode the message keys ourselves)",
        only="StringSerializer",
    ),
    ConfigKey(
        "producer",
        "value.serializer",
        "checked, then removed (we encode the chunk messages ourselves)",
        only="DataFileChunkSerializer",
    ),
    ConfigKey(
        "producer",
        "message.max.bytes",
        "largest message; a value below the chunk size + 65536 is a config error",
        default="the larger of 1000000 and --chunk_size + 65536",
    ),
    ConfigKey(
        "producer",
        "queue.buffering.max.kbytes",
        "memory bound of the messages waiting to be sent",
        default="131072 (128 MiB); DataFileUploadDirectory: --queue_max_size",
    ),
    ConfigKey("producer", "linger.ms", "how long a batch is collected", default="100"),
    ConfigKey("producer", "compression.type", "compression of the batches", default="lz4"),
    ConfigKey(
        "consumer",
        "group.id",
        "the consumer group, also part of the registry file names; 'create_new' (any case) "
        "stands for a new UUID each run; --consumer_group_id replaces it",
    ),
    ConfigKey(
        "consumer",
        "auto.offset.reset",
        "where a group without committed offsets starts; 'none' is removed (as OpenMSIStream does)",
        default="earliest",
    ),
    ConfigKey(
        "consumer",
        "enable.auto.commit",
        "always turned off (offsets are committed once files are in the bucket); a warning "
        "unless the file sets it to False (or 0)",
        default="false",
    ),
    ConfigKey(
        "consumer",
        "enable.auto.offset.store",
        "always turned off (offsets are stored by the commit rule)",
        default="false",
    ),
    ConfigKey(
        "consumer",
        "key.deserializer",
        "checked, then removed (message keys are not used for reassembly)",
        only="StringDeserializer",
    ),
    ConfigKey(
        "consumer",
        "value.deserializer",
        "checked, then removed (we decode the chunk messages ourselves)",
        only="DataFileChunkDeserializer",
    ),
    ConfigKey(
        "consumer",
        "fetch.queue.backoff.ms",
        "back-off once the prefetch queue is full",
        default="10",
    ),
    ConfigKey(
        "consumer",
        "queued.max.messages.kbytes",
        "prefetch queue per consumer thread",
        default="16384",
    ),
    ConfigKey(
        "consumer",
        "session.timeout.ms",
        "how soon a dead member's partitions move on (classic protocol only)",
        default="10000",
    ),
    ConfigKey(
        "consumer",
        "group.protocol",
        "'consumer' (KIP-848): the settings the broker decides then (session.timeout.ms, "
        "heartbeat.interval.ms, partition.assignment.strategy, ...) are dropped with a warning",
        default="classic",
    ),
    ConfigKey(
        "kafkacrypto",
        "config_file",
        "the node's KafkaCrypto config file (a leading 'file#' is dropped; a relative path "
        "is taken beside this config file first); wins over node_id",
    ),
    ConfigKey(
        "kafkacrypto",
        "node_id",
        "the node's id: <dir>/<node_id>/<node_id>.config is looked for in "
        "$S3TRANSFER_STREAM_CONFIG_DIR (else $OPENMSISTREAM_CONFIG_FILE_DIR), the package's "
        "config_files, this config file's directory, then the working directory",
    ),
    ConfigKey("s3", "access_key_id", "the S3 access key id (a secret: use $NAME)", required=True),
    ConfigKey("s3", "secret_key_id", "the S3 secret key (a secret: use $NAME)", required=True),
    ConfigKey(
        "s3",
        "endpoint_url",
        "the S3 server's URL; https:// is put in front of a value without a scheme",
        required=True,
    ),
    ConfigKey("s3", "region", "the S3 region name", required=True),
    ConfigKey(
        "s3",
        "ca_bundle",
        "a PEM file of the CA certificates an https endpoint's certificate is checked "
        "against (it must exist); a certificate that does not verify is an error",
        default="botocore's: $AWS_CA_BUNDLE if set, else its bundled CAs",
    ),
    *(
        entry
        for section in _SIDE_SECTIONS
        for entry in (
            ConfigKey(
                section,
                "prefer.separate.producer",
                "true, 1, yes or on: this section's settings (over [broker] unless it sets "
                "bootstrap.servers) make the producer of these messages; anything else: "
                "[broker] + [producer] do",
                default="false",
            ),
            ConfigKey(
                section,
                "key.serializer",
                "checked, then removed",
                only="StringSerializer",
            ),
            ConfigKey(
                section,
                "value.serializer",
                "checked, then removed (the messages are JSON text)",
                only="StringSerializer",
            ),
        )
    ),
    ConfigKey(
        "log",
        "max.logs.per.message",
        "log lines kept between two log messages (older ones are dropped first)",
        default="65536",
    ),
    ConfigKey(
        "log",
        "log.level",
        "only lines at this level or above are sent (a level name or number)",
        default="every line the program logs",
    ),
)

_S3_KEYS = tuple(entry.key for entry in CONFIG_KEYS if entry.section == "s3" and entry.required)
_CREATE_NEW = "create_new"

# The (de)serializer names OpenMSIStream's config files may hold, and the one each key
# accepts: our own code turns chunks into message bytes and back, so the setting is only
# checked and then removed from what is handed to confluent-kafka.
_SERDE_ALLOWED = {
    entry.key: entry.only
    for entry in CONFIG_KEYS
    if entry.section in ("producer", "consumer") and entry.key.endswith("serializer")
}
_SERDE_NAMES = frozenset(
    f"{kind}{suffix}"
    for kind in ("String", "Integer", "Double", "DataFileChunk")
    for suffix in ("Serializer", "Deserializer")
)

# Same variable syntax as os.path.expandvars on POSIX: $name or ${name}.
_VARIABLE_RE = re.compile(r"\$(\w+|\{[^}]*\})")

# Kafka settings whose values must never be shown (repr of a TransferConfig).
_SECRET_KEY_PARTS = (
    "password",
    "secret",
    "sasl.username",
    "ssl.key.pem",
    "credentials",
    "token",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.extensions",
)


# --------------------------------------------------------------------------- lookup


def _config_dirs() -> list[Path]:
    dirs: list[Path] = []
    for variable in (CONFIG_DIR_ENV, UPSTREAM_CONFIG_DIR_ENV):
        value = os.environ.get(variable, "")
        if value:
            dirs.append(Path(value).expanduser())
            break
    dirs.append(PACKAGED_CONFIG_DIR)
    return dirs


def resolve_config_path(name_or_path: str) -> Path:
    """The config file meant by ``name_or_path``.

    An existing file path is used as is. Otherwise a name whose last part has no
    ``.`` gets ``.config`` appended and is looked up in ``$S3TRANSFER_STREAM_CONFIG_DIR``
    if set, else in ``$OPENMSISTREAM_CONFIG_FILE_DIR`` if set, and then in the
    package's ``config_files`` directory.
    """
    if not name_or_path.strip():
        raise ConfigError("no config file given (the name is empty)")
    given = Path(name_or_path).expanduser()
    if given.is_file():
        return given.resolve()
    searched = [given]
    name = name_or_path if "." in PurePath(name_or_path).name else f"{name_or_path}.config"
    for directory in _config_dirs():
        candidate = directory / name
        if candidate.is_file():
            return candidate.resolve()
        if candidate not in searched:
            searched.append(candidate)
    env_note = ", ".join(
        f"${variable} is {'set' if os.environ.get(variable) else 'not set'}"
        for variable in (CONFIG_DIR_ENV, UPSTREAM_CONFIG_DIR_ENV)
    )
    raise ConfigError(
        f"config file {name_or_path!r} not found; looked for "
        + ", ".join(str(path) for path in searched)
        + f" ({env_note})"
    )


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, repr=False)
class S3Settings:
    """How to reach the S3 server (the bucket comes from the command line).

    ``repr()`` and ``str()`` hide the access key id and the secret.
    """

    access_key_id: str
    secret_key_id: str
    endpoint_url: str
    region: str
    #: PEM file of the CAs to verify an https endpoint with ("": botocore's default,
    #: which honours ``$AWS_CA_BUNDLE``).
    ca_bundle: str = ""

    def __repr__(self) -> str:
        return (
            f"S3Settings(access_key_id='***', secret_key_id='***', "
            f"endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
            f"ca_bundle={self.ca_bundle!r})"
        )

    def __str__(self) -> str:
        return self.__repr__()

    @classmethod
    def from_section(cls, values: Mapping[str, str], source: Path) -> S3Settings:
        """Settings from the (expanded) ``[s3]`` section of the config file ``source``."""
        missing = [key for key in _S3_KEYS if key not in values]
        if missing:
            raise ConfigError(
                f"{source}: [s3] has no {', '.join(missing)} (it needs {', '.join(_S3_KEYS)})"
            )
        endpoint = values["endpoint_url"].strip()
        if not endpoint:
            raise ConfigError(f"{source}: [s3] endpoint_url is empty")
        if "://" not in endpoint:
            endpoint = f"https://{endpoint}"
        ca_bundle = values.get("ca_bundle", "").strip()
        if ca_bundle:
            ca_path = Path(ca_bundle).expanduser()
            if not ca_path.is_file():
                raise ConfigError(f"{source}: [s3] ca_bundle {ca_bundle!r} is not a file")
            ca_bundle = str(ca_path)
        return cls(
            access_key_id=values["access_key_id"],
            secret_key_id=values["secret_key_id"],
            endpoint_url=endpoint,
            region=values["region"],
            ca_bundle=ca_bundle,
        )


def _redacted(settings: Mapping[str, str]) -> dict[str, str]:
    return {
        key: "***" if any(part in key for part in _SECRET_KEY_PARTS) else value
        for key, value in settings.items()
    }


@dataclass(frozen=True)
class TransferConfig:
    """A loaded config file.

    ``producer`` and ``consumer`` already include ``[broker]`` (their own keys win),
    have no ``node_id`` and no (de)serializer keys, and are ready for confluent-kafka
    (values are strings). ``consumer`` has ``group.id = create_new`` replaced by a fresh
    UUID and ``auto.offset.reset = none`` removed. ``notes`` lists sections that were
    not required and could not be loaded. ``fresh_group_id`` is the one UUID that
    ``create_new`` stands for, in the file and on the command line alike, so every
    consumer thread of a run joins the same group.
    """

    path: Path
    broker: dict[str, str]
    producer: dict[str, str]
    consumer: dict[str, str]
    s3: S3Settings | None
    sections: frozenset[str]
    notes: tuple[str, ...] = ()
    fresh_group_id: str = field(default="", repr=False, compare=False)
    #: ``[heartbeat]`` and ``[log]`` (expanded; no node_id, no serializer keys).
    heartbeat: dict[str, str] = field(default_factory=dict, repr=False)
    log: dict[str, str] = field(default_factory=dict, repr=False)
    #: ``[kafkacrypto]`` (expanded), or None when the file has no such section.
    kafkacrypto: dict[str, str] | None = field(default=None, repr=False)
    kafkacrypto_error: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.fresh_group_id:
            object.__setattr__(self, "fresh_group_id", str(uuid.uuid1()))

    def __repr__(self) -> str:
        return (
            f"TransferConfig(path={self.path!r}, broker={_redacted(self.broker)!r}, "
            f"producer={_redacted(self.producer)!r}, consumer={_redacted(self.consumer)!r}, "
            f"s3={self.s3!r}, heartbeat={_redacted(self.heartbeat)!r}, "
            f"log={_redacted(self.log)!r}, sections={sorted(self.sections)!r})"
        )

    def producer_settings(self) -> dict[str, str]:
        """A copy of the producer settings, for ``confluent_kafka.Producer``."""
        return dict(self.producer)

    def effective_group_id(self, group_id: str | None = None) -> str:
        """The consumer group a run uses: ``group_id`` (from the command line) if given,
        as with OpenMSIStream, else the file's ``group.id``; ``create_new`` (any case)
        stands for :attr:`fresh_group_id`, the same UUID at every call. Use it to name
        the registry files too."""
        if group_id is not None:
            if not group_id.strip():
                raise ConfigError("the consumer group id given is empty")
            return _group_id(group_id, self.fresh_group_id)
        from_file = self.consumer.get("group.id", "")
        if not from_file.strip():
            raise ConfigError(
                f"no consumer group id: {self.path} sets no group.id in [consumer] or "
                "[broker] and none was given on the command line"
            )
        return from_file

    def consumer_settings(self, group_id: str | None = None) -> dict[str, str]:
        """A copy of the consumer settings with ``group.id`` set to
        :meth:`effective_group_id` of ``group_id``."""
        settings = dict(self.consumer)
        settings["group.id"] = self.effective_group_id(group_id)
        return settings

    def kafkacrypto_settings(self) -> KafkaCryptoSettings | None:
        """The KafkaCrypto node ``[kafkacrypto]`` names, or None without the section.

        Resolved on request, not by :func:`load_config`: only a program that encrypts
        or decrypts needs KafkaCrypto installed and the node's files present. Raises
        :class:`ConfigError` naming this file and the key when the extra is missing or
        the node cannot be found.
        """
        if self.kafkacrypto is None:
            return None
        if self.kafkacrypto_error:
            raise ConfigError(self.kafkacrypto_error)
        # Imported here: a config without the section never loads KafkaCrypto.
        from . import crypto

        try:
            crypto.require_kafkacrypto()
            return crypto.KafkaCryptoSettings.from_section(
                self.kafkacrypto, self.path, search_dirs=_config_dirs()
            )
        except crypto.CryptoError as exc:
            raise ConfigError(f"{self.path}: {exc}") from None

    def warnings(self) -> list[str]:
        """Things in the file that work but are probably not what the user wants."""
        found: list[str] = []
        if "consumer" in self.sections and self.consumer:
            auto_commit = self.consumer.get("enable.auto.commit")
            if auto_commit is None or auto_commit.strip().lower() not in ("false", "0"):
                shown = "missing" if auto_commit is None else f"set to {auto_commit!r}"
                found.append(
                    f"enable.auto.commit is not False in [consumer] of {self.path}: it is "
                    f"{shown}. The processor turns auto-commit off and commits offsets itself "
                    "once files are safely in the bucket (auto-commit could commit the offsets "
                    "of files not yet stored, and a crash would lose them). Set "
                    "enable.auto.commit = False to make the file say what happens."
                )
        found.extend(self.notes)
        return found


def _group_id(value: str, fresh: str) -> str:
    return fresh if value.strip().lower() == _CREATE_NEW else value


# --------------------------------------------------------------------------- loading


def _expand(value: str, source: Path, section: str, key: str) -> str:
    """Expand a value that starts with ``$``; every variable it names must be set."""
    if not value.startswith("$"):
        return value
    names = [match.group(1).strip("{}") for match in _VARIABLE_RE.finditer(value)]
    if not names:
        raise ConfigError(
            f"{source}: [{section}] {key} starts with '$' but names no environment variable"
        )
    missing = [name for name in names if not name or name not in os.environ]
    if missing:
        listed = ", ".join(f"${name}" if name else "${}" for name in missing)
        raise ConfigError(
            f"{source}: [{section}] {key} needs the environment variable {listed}, which is not set"
        )
    return os.path.expandvars(value)


def _section(parser: configparser.ConfigParser, source: Path, section: str) -> dict[str, str]:
    """The interpolated and expanded values of one section (DEFAULT keys included)."""
    values: dict[str, str] = {}
    for key in parser.options(section):
        try:
            raw = parser.get(section, key)
        except configparser.InterpolationMissingOptionError as exc:
            raise ConfigError(
                f"{source}: [{section}] {key} refers to %({exc.reference})s, which is not "
                "defined; write a literal % as %%"
            ) from None
        except configparser.InterpolationError:
            raise ConfigError(
                f"{source}: [{section}] {key} has a bad % interpolation; write a literal % as %%"
            ) from None
        values[key] = _expand(raw, source, section, key)
    return values


def _check_serde(values: Mapping[str, str], source: Path, section: str) -> None:
    for key, allowed in _SERDE_ALLOWED.items():
        if key not in values:
            continue
        value = values[key].strip()
        if value == allowed:
            continue
        shown = value if value in _SERDE_NAMES else "an unsupported value"
        raise ConfigError(
            f"{source}: [{section}] {key} is {shown}; only {allowed} is supported there "
            f"(message {'keys are text' if key.startswith('key') else 'values are file chunks'}"
            ", and s3transfer-stream does the (de)serialising itself)"
        )


def _kafka_settings(
    broker: Mapping[str, str],
    own: Mapping[str, str],
    source: Path,
    section: str,
    fresh_group_id: str,
) -> dict[str, str]:
    _check_serde(own, source, section)
    merged = {**broker, **own}
    for key in ("node_id", *_SERDE_ALLOWED):
        merged.pop(key, None)
    if section == "consumer":
        if merged.get("auto.offset.reset", "").strip().lower() == "none":
            del merged["auto.offset.reset"]
        if "group.id" in merged:
            merged["group.id"] = _group_id(merged["group.id"], fresh_group_id)
    return merged


def _side_settings(parser: configparser.ConfigParser, source: Path, section: str) -> dict[str, str]:
    """``[heartbeat]`` or ``[log]``: checked strictly (an unset variable is an
    error); serializer keys may only name StringSerializer (the messages are text)."""
    values = _section(parser, source, section)
    for key in ("key.serializer", "value.serializer"):
        value = values.pop(key, None)
        if value is not None and value.strip() != "StringSerializer":
            shown = value if value.strip() in _SERDE_NAMES else "an unsupported value"
            raise ConfigError(
                f"{source}: [{section}] {key} is {shown}; only StringSerializer is supported "
                "there (heartbeat and log messages are JSON text)"
            )
    values.pop("node_id", None)
    return values


def _read(source: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    try:
        with source.open(encoding="utf-8") as handle:
            parser.read_file(handle, source=str(source))
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: the config file is not UTF-8 text") from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(
            f"{source}, line {exc.lineno}: a setting comes before the first [section] header"
        ) from None
    except configparser.ParsingError as exc:
        lines = ", ".join(str(lineno) for lineno, _ in exc.errors)
        raise ConfigError(f"{source}: lines that are not 'key = value': {lines}") from None
    except configparser.Error as exc:
        # Duplicate sections/options: the message names them, not their values.
        raise ConfigError(f"{source}: {exc.message}") from None
    return parser


def load_config(name_or_path: str, *, require: Sequence[str] = ()) -> TransferConfig:
    """Load the config file ``name_or_path`` (see :func:`resolve_config_path`).

    ``require`` names the sections the caller needs, e.g. ``("producer",)`` or
    ``("consumer", "s3")``: each must exist and is checked strictly. Raises
    :class:`ConfigError` naming the file, section, key or variable at fault.
    """
    source = resolve_config_path(name_or_path)
    parser = _read(source)
    sections = frozenset(parser.sections())
    required = set(require)
    missing = sorted(section for section in required if section not in sections)
    if missing:
        present = ", ".join(f"[{name}]" for name in sorted(sections)) or "none"
        raise ConfigError(
            f"{source}: no {', '.join(f'[{name}]' for name in missing)} section "
            f"(sections present: {present})"
        )

    notes: list[str] = []
    fresh_group_id = str(uuid.uuid1())
    broker: dict[str, str] = {}
    if "broker" in sections:
        broker = _section(parser, source, "broker")
        _check_serde(broker, source, "broker")
        broker.pop("node_id", None)
    broker_for_clients = {k: v for k, v in broker.items() if k not in _SERDE_ALLOWED}

    kafka: dict[str, dict[str, str]] = {}
    for section in _KAFKA_SECTIONS[1:]:
        try:
            own = _section(parser, source, section) if section in sections else {}
            kafka[section] = _kafka_settings(
                broker_for_clients, own, source, section, fresh_group_id
            )
        except ConfigError as exc:
            if section in required:
                raise
            notes.append(f"[{section}] not loaded (not needed here): {exc}")
            kafka[section] = {}

    s3: S3Settings | None = None
    if "s3" in sections:
        try:
            s3 = S3Settings.from_section(_section(parser, source, "s3"), source)
        except ConfigError as exc:
            if "s3" in required:
                raise
            notes.append(f"[s3] not loaded (not needed here): {exc}")

    side: dict[str, dict[str, str]] = {}
    for section in _SIDE_SECTIONS:
        side[section] = _side_settings(parser, source, section) if section in sections else {}

    kafkacrypto: dict[str, str] | None = None
    kafkacrypto_error = ""
    if "kafkacrypto" in sections:
        try:
            kafkacrypto = _section(parser, source, "kafkacrypto")
        except ConfigError as exc:
            # Only a program that decrypts needs the section: it fails when it asks.
            kafkacrypto, kafkacrypto_error = {}, str(exc)

    return TransferConfig(
        path=source,
        broker=broker_for_clients,
        producer=kafka["producer"],
        consumer=kafka["consumer"],
        s3=s3,
        sections=sections,
        notes=tuple(notes),
        fresh_group_id=fresh_group_id,
        heartbeat=side["heartbeat"],
        log=side["log"],
        kafkacrypto=kafkacrypto,
        kafkacrypto_error=kafkacrypto_error,
    )
