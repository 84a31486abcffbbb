"""Type stub of the Rust extension ``s3transfer_stream._core`` (source: ``rust/python.rs``).

Byte arguments are ``bytes`` exactly: the extension borrows them without a copy
and refuses ``bytearray``/``memoryview``/:class:`Buffer` with ``TypeError``
(wrap those in ``bytes(...)`` first). Integer arguments typed ``int`` below are
unsigned 64-bit unless said otherwise; a negative or too large value raises
``OverflowError``. Every class is final (none can be subclassed), and the frozen
ones expose read-only attributes.
"""

import sys
from collections.abc import Sequence
from os import PathLike
from typing import Literal, Protocol, Self, TypeAlias, final

from s3transfer_stream.errors import ChunkError, FileAssemblyError

__all__ = [
    "MAX_PARTS",
    "MIN_PART_SIZE",
    "Assembler",
    "Buffer",
    "DecodedChunk",
    "Event",
    "FileChunker",
    "FileComplete",
    "FileFailed",
    "FileInfo",
    "FileStarted",
    "FileSuperseded",
    "MessageRejected",
    "PartReady",
    "Progress",
    "Sha512",
    "crc64nvme",
    "decode_chunk",
    "encode_chunk",
    "key_prefix",
    "message_key",
    "parse_message_key",
    "sha512",
    "sha512_backend",
    "sha512_lanes",
]

#: S3's minimum size of every multipart part but the last (5 MiB).
MIN_PART_SIZE: int
#: S3's maximum number of parts of one multipart upload (10000).
MAX_PARTS: int

@final
class Buffer:
    """Read-only bytes owned by Rust, shared through the buffer protocol without a copy.

    Not constructible from Python; ``memoryview(buf)`` and ``bytes(buf)`` work, and
    so does any API that takes a read-only bytes-like object.
    """

    def __len__(self) -> int: ...
    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...

@final
class DecodedChunk:
    """One decoded OpenMSIStream chunk message (copies of its fields)."""

    @property
    def filename(self) -> str: ...
    @property
    def file_hash(self) -> bytes:
        """Raw 64-byte SHA-512 digest of the whole file."""
    @property
    def chunk_hash(self) -> bytes:
        """Raw 64-byte SHA-512 digest of ``data``."""
    @property
    def chunk_offset_write(self) -> int: ...
    @property
    def chunk_i(self) -> int:
        """1-based chunk index."""
    @property
    def n_total_chunks(self) -> int: ...
    @property
    def subdir_str(self) -> str: ...
    @property
    def filename_append(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def file_mtime(self) -> float | None:
        """``None`` for the 9-field form, else the float as sent (``0.0`` = unknown)."""
    @property
    def n_fields(self) -> Literal[9, 10]: ...
    @property
    def rel_path(self) -> str:
        """``subdir/filename`` without the append."""
    @property
    def rel_output_path(self) -> str:
        """``subdir/<stem><append><suffix>``: the object key below the topic."""

def decode_chunk(value: bytes, *, verify: bool = True) -> DecodedChunk:
    """Decodes a Kafka message value.

    Raises :class:`~s3transfer_stream.errors.ChunkError` for a malformed message and
    :class:`~s3transfer_stream.errors.ChunkHashError` (only with ``verify``) when the
    data does not match the chunk hash; both carry ``.field`` and ``.filename``
    (``.partition`` and ``.offset`` are ``None`` here).
    """

def encode_chunk(
    filename: str,
    file_hash: bytes,
    chunk_hash: bytes,
    chunk_offset_write: int,
    chunk_i: int,
    n_total_chunks: int,
    subdir_str: str,
    filename_append: str,
    data: bytes,
    file_mtime: float | None = None,
) -> bytes:
    """Encodes the canonical message (10 fields with ``file_mtime``, else 9).

    Raises :class:`~s3transfer_stream.errors.ChunkError` if a hash is not 64 bytes;
    nothing else is validated.
    """

def message_key(subdir_str: str, filename: str, chunk_i: int, n_total_chunks: int) -> str: ...
def key_prefix(subdir_str: str, filename: str) -> str: ...
def parse_message_key(key: str) -> tuple[str, int, int] | None:
    """``(prefix, chunk_i, n_total_chunks)``, or ``None`` if ``key`` is not a chunk key."""

def sha512(data: bytes) -> bytes: ...
def sha512_backend() -> str:
    """Which SHA-512 the core hashes with: ``"OpenSSL (<path of libcrypto>)"``, the
    library ``hashlib`` loaded, or ``"ring"`` followed by why not OpenSSL (for
    instance ``S3TS_SHA512=ring``, which keeps to ring for A/B measurements)."""

def sha512_lanes() -> int:
    """How many chunk checks one SHA-512 pass hashes: 8 in the lanes of AVX-512 (after a
    self-test against ring), or 1 (no AVX-512F, or ``S3TS_SHA512_LANES=1``)."""

def crc64nvme(data: bytes) -> int: ...

@final
class Sha512:
    """Incremental SHA-512."""

    def __new__(cls) -> Self: ...
    def update(self, data: bytes) -> None: ...
    def digest(self) -> bytes:
        """The digest so far (the state is kept; more ``update`` calls may follow)."""

@final
class FileInfo:
    """One instance (generation) of a file being assembled."""

    @property
    def instance(self) -> int:
        """Unique per file instance within one :class:`Assembler`."""
    @property
    def rel_path(self) -> str: ...
    @property
    def rel_output_path(self) -> str: ...
    @property
    def filename(self) -> str: ...
    @property
    def n_chunks(self) -> int: ...
    @property
    def file_hash(self) -> bytes: ...
    @property
    def file_mtime(self) -> float | None: ...
    @property
    def echo(self) -> bool:
        """Same hash and chunk count as a file already reassembled earlier in the log
        (produced again, or stray duplicate chunks); it pins no offsets."""
    @property
    def first_partition(self) -> int:
        """Partition of the message its first chunk came in."""
    @property
    def first_offset(self) -> int: ...

@final
class FileStarted:
    """First chunk of a new file instance."""

    @property
    def kind(self) -> Literal["started"]: ...
    @property
    def file(self) -> FileInfo: ...

@final
class PartReady:
    """A complete part of a file that needs a multipart upload."""

    @property
    def kind(self) -> Literal["part"]: ...
    @property
    def file(self) -> FileInfo: ...
    @property
    def part_number(self) -> int:
        """1-based part number."""
    @property
    def data(self) -> Buffer: ...
    @property
    def size(self) -> int: ...
    @property
    def crc64nvme(self) -> int: ...

@final
class FileComplete:
    """Every chunk arrived and the file hash matched. The instance stays owned by
    the assembler (its offsets pinned) until :meth:`Assembler.settle`."""

    @property
    def kind(self) -> Literal["complete"]: ...
    @property
    def file(self) -> FileInfo: ...
    @property
    def data(self) -> Buffer | None:
        """The whole file when it fits in one part (a single PUT), else ``None``."""
    @property
    def size(self) -> int: ...
    @property
    def crc64nvme(self) -> int: ...
    @property
    def parts(self) -> int:
        """Parts released for a multipart upload."""
    @property
    def offsets(self) -> list[tuple[int, list[tuple[int, int]]]]:
        """Per partition, half-open ranges of the offsets of the file's messages
        (duplicates included, and those of generations it superseded)."""
    @property
    def pins(self) -> list[tuple[int, int]]:
        """``(partition, lowest offset)`` of the file's messages."""

@final
class FileFailed:
    """The file cannot be completed from these chunks; owned until settled (after
    its failure is recorded)."""

    @property
    def kind(self) -> Literal["failed"]: ...
    @property
    def file(self) -> FileInfo: ...
    @property
    def reason(self) -> str:
        """``str(error)``."""
    @property
    def hash_mismatch(self) -> bool: ...
    @property
    def error(self) -> FileAssemblyError:
        """Why, with the message at which the file failed (``.partition``, ``.offset``)."""
    @property
    def offsets(self) -> list[tuple[int, list[tuple[int, int]]]]: ...
    @property
    def pins(self) -> list[tuple[int, int]]: ...

@final
class FileSuperseded:
    """A newer generation of the path (``by``) completed; this one is not needed."""

    @property
    def kind(self) -> Literal["superseded"]: ...
    @property
    def file(self) -> FileInfo: ...
    @property
    def by(self) -> FileInfo: ...

@final
class MessageRejected:
    """The message is not a usable chunk; no file state was touched."""

    @property
    def kind(self) -> Literal["rejected"]: ...
    @property
    def file(self) -> None: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def error(self) -> ChunkError:
        """The exception that rejected the message (``.partition`` and ``.offset`` are set)."""

Event: TypeAlias = (
    FileStarted | PartReady | FileComplete | FileFailed | FileSuperseded | MessageRejected
)

@final
class Progress:
    """A file instance not yet settled."""

    @property
    def file(self) -> FileInfo: ...
    @property
    def chunks(self) -> int:
        """Chunks received."""
    @property
    def buffered(self) -> int:
        """Bytes held for reassembly."""
    @property
    def partitions(self) -> list[int]: ...
    @property
    def max_offsets(self) -> list[tuple[int, int]]:
        """Per partition, the offset after the file's last message."""
    @property
    def idle_seconds(self) -> float:
        """Since its last chunk (receiving), or since it completed or failed."""
    @property
    def state(self) -> Literal["receiving", "uploading", "failed"]: ...

class _KafkaMessage(Protocol):
    """What :meth:`Assembler.add_messages` needs of a ``confluent_kafka.Message``.

    ``partition()``/``offset()`` returning ``None`` raises ``TypeError``; a ``None``
    value is a ``rejected`` event.
    """

    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def value(self) -> bytes | None: ...

#: ``(partition, offset, value)``.
_MessageTuple: TypeAlias = tuple[int, int, bytes | None]

@final
class Assembler:
    """Reassembles files from chunk messages and owns every file instance until it
    is settled; shared by all consumer threads (see ``rust/assembler.rs``)."""

    def __new__(cls, part_size: int = ..., max_buffered: int = ...) -> Self:
        """``part_size`` defaults to 8 MiB; below :data:`MIN_PART_SIZE` it raises
        :class:`~s3transfer_stream.errors.ConfigError`."""
    @staticmethod
    def _with_tiny_parts(part_size: int, max_buffered: int | None = None) -> Assembler:
        """An assembler allowing parts below S3's minimum (tests only)."""
    @property
    def part_size(self) -> int: ...
    @property
    def buffered_bytes(self) -> int:
        """Bytes now held for reassembly by unfinished files."""
    @property
    def buffer_limit(self) -> int: ...
    def add_messages(
        self, messages: Sequence[_KafkaMessage | _MessageTuple], reader: int = 0
    ) -> tuple[list[Event], int]:
        """Feeds a batch; returns ``(events, n_stored)`` (usable chunks, new or duplicate)."""
    def feed(
        self, messages: Sequence[_KafkaMessage | _MessageTuple], reader: int = 0
    ) -> tuple[list[Event], int, list[tuple[int, int]]]:
        """Like :meth:`add_messages`; also ``(partition, offset)`` of each partition
        whose messages were deferred for lack of memory: read again from there.
        ``reader`` is the consumer thread that read them: messages of a partition
        another thread reads now change nothing."""
    def settle(self, instance: int) -> bool:
        """The instance is durably done or given up: its offsets may be committed past."""
    def abandon(
        self, instance: int
    ) -> tuple[FileInfo, list[tuple[int, list[tuple[int, int]]]]] | None:
        """Gives up a file being received (returned with its offsets); it stays
        owned until settled."""
    def assigned(
        self,
        partition: int,
        committed: int,
        done_above: Sequence[tuple[int, int]],
        reader: int = 0,
    ) -> int:
        """The partition was assigned to thread ``reader`` at ``committed`` (-1: none);
        returns where to read from."""
    def skip_ahead(self, partition: int, reader: int = 0) -> int | None:
        """If the read position starts a done run, the offset to seek to instead."""
    def committed(self, partition: int, offset: int) -> None:
        """A commit succeeded: never commit below ``offset`` again."""
    def revoked(self, partitions: Sequence[int], reader: int = 0) -> list[FileInfo]:
        """The partitions left thread ``reader`` (those another thread was assigned
        meanwhile stay its); returns files dropped with them."""
    def commit_positions(
        self, partitions: Sequence[int], reader: int = 0
    ) -> list[tuple[int, int, list[tuple[int, int]]]]:
        """``(partition, offset to commit, done runs above it)`` for the partitions
        ``reader`` has read so far."""
    def pinned_offsets(self) -> dict[int, int]:
        """Per partition, the lowest offset still needed by a file not yet settled."""
    def skip_offsets(self, partition: int, ranges: Sequence[tuple[int, int]]) -> None:
        """Marks half-open offset ranges as already accounted for: skipped undecoded."""
    def skip_end(self, partition: int, offset: int) -> int | None:
        """Where the skipped range holding ``offset`` ends, if ``offset`` is in one."""
    def in_progress(self) -> list[tuple[FileInfo, int, int, list[int]]]:
        """``(file, chunks received, bytes buffered, partitions)`` for files being received."""
    def progress(self) -> list[Progress]:
        """Every instance not yet settled."""

@final
class FileChunker:
    """Cuts one file into chunk messages; the constructor reads and hashes the whole file.

    Raises ``OSError`` if the file cannot be read, and
    :class:`~s3transfer_stream.errors.ConfigError` for a ``chunk_size`` of 0.
    """

    def __new__(cls, path: str | PathLike[str], chunk_size: int = 524288) -> Self: ...
    @property
    def size(self) -> int: ...
    @property
    def n_chunks(self) -> int:
        """At least 1: an empty file is one empty chunk."""
    @property
    def chunk_size(self) -> int: ...
    @property
    def file_mtime(self) -> float:
        """``os.stat(path).st_mtime`` at construction (``0.0`` if unknown)."""
    @property
    def file_hash(self) -> bytes: ...
    def messages(
        self,
        first: int,
        count: int,
        subdir_str: str,
        filename: str,
        filename_append: str = "",
    ) -> list[Buffer]:
        """Messages of chunks ``first..first+count`` (1-based, clipped to the file).

        Each chunk is read from the file opened at construction and checked against
        the CRC64NVME of the first pass; after :meth:`close`, from the path opened
        again for this call, each chunk checked against its recorded chunk hash.
        Only the chunks asked for are read. Raises
        :class:`~s3transfer_stream.errors.FileChangedError` (a ``ValueError``) naming
        the file if a chunk read differs from the one hashed at construction (or the
        last one is read and the file's size changed), ``OSError`` if it cannot be
        read, and ``ValueError`` for a ``first`` of 0.
        """
    def close(self) -> None:
        """Closes the file (waiting for ``messages`` calls reading it); the size,
        hashes and later ``messages`` calls stay available."""
    @property
    def closed(self) -> bool: ...
