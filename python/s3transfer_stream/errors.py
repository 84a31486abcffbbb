"""The exception classes of s3transfer-stream.

Every error the package raises on purpose is one of these, so callers can catch
``S3TransferStreamError`` and know it came from a bad message, a bad setting or a
failed transfer rather than from a bug. The Rust core raises the same classes
(it imports them from here; ``rust/error.rs`` lists what it can report), so there
is one hierarchy for both languages. Two kinds of error stay built-in: a file that
cannot be read is an ``OSError`` (``FileNotFoundError`` etc.), and a bad argument
(a chunk index out of range) a ``ValueError``.

Messages name the file, field, key or setting at fault and never contain secrets;
the classes raised by the Rust core also carry them as attributes, ``None`` where
not known.
"""

from __future__ import annotations


class S3TransferStreamError(Exception):
    """Base class of every error raised on purpose by s3transfer-stream."""


class ConfigError(S3TransferStreamError, ValueError):
    """A config file, section, key, environment variable or CLI option is missing or wrong.

    ``field``: the setting at fault (``part_size``, ``chunk_size`` ...) when it is one of
    the Rust core's.
    """

    field: str | None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ChunkError(S3TransferStreamError, ValueError):
    """A Kafka message is not a well-formed OpenMSIStream file chunk.

    ``field``: the msgpack field at fault (``filename``, ``chunk_i`` ... or ``message``);
    ``filename``: the file the chunk belongs to, if its first field could be read;
    ``partition``, ``offset``: where the message was read, for a message the consumer
    rejected (``None`` for :func:`~s3transfer_stream._core.decode_chunk`).
    """

    field: str | None
    filename: str | None
    partition: int | None
    offset: int | None

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        filename: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.filename = filename
        self.partition = partition
        self.offset = offset


class ChunkHashError(ChunkError):
    """A chunk's data does not match the SHA-512 the producer sent with it."""


class FileAssemblyError(S3TransferStreamError):
    """The chunks of one file contradict each other (overlaps, sizes, counts) or its file hash.

    Not raised: the consumer's :class:`~s3transfer_stream._core.FileFailed` event carries
    one as ``error``. ``field``: the msgpack field at fault (``n_total_chunks``,
    ``chunk_offset_write``, ``file_hash`` ...), if one is; ``filename``: the file's name;
    ``partition``, ``offset``: the message at which the file failed; ``chunk_i``: the
    chunk at fault, if one is.
    """

    field: str | None
    filename: str | None
    partition: int | None
    offset: int | None
    chunk_i: int | None

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        filename: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        chunk_i: int | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.filename = filename
        self.partition = partition
        self.offset = offset
        self.chunk_i = chunk_i


class FileChangedError(S3TransferStreamError, ValueError):
    """A file being sent changed since it was hashed, so its chunks could not agree.

    ``filename``: the path of the file; ``chunk_i``: the chunk that no longer matches.
    A ``ValueError`` too, as it was before it had a class of its own.
    """

    filename: str | None
    chunk_i: int | None

    def __init__(
        self, message: str, *, filename: str | None = None, chunk_i: int | None = None
    ) -> None:
        super().__init__(message)
        self.filename = filename
        self.chunk_i = chunk_i


class TransferError(S3TransferStreamError):
    """A file could not be stored in, or validated against, the S3 bucket."""
