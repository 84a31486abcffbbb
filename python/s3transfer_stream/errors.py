"""The exception classes of s3transfer-stream.

Every error the package raises on purpose is one of these, so callers can catch
``S3TransferStreamError`` and know it came from a bad message, a bad setting or a
failed transfer rather than from a bug. The Rust core raises the same classes
(it imports them from here), so there is one hierarchy for both languages.
Messages name the file, field, key or setting at fault and never contain secrets.
"""

from __future__ import annotations


class S3TransferStreamError(Exception):
    """Base class of every error raised on purpose by s3transfer-stream."""


class ConfigError(S3TransferStreamError, ValueError):
    """A config file, section, key, environment variable or CLI option is missing or wrong."""


class ChunkError(S3TransferStreamError, ValueError):
    """A Kafka message is not a well-formed OpenMSIStream file chunk."""


class ChunkHashError(ChunkError):
    """A chunk's data does not match the SHA-512 the producer sent with it."""


class FileAssemblyError(S3TransferStreamError):
    """The chunks of one file contradict each other (overlaps, sizes, counts)."""


class TransferError(S3TransferStreamError):
    """A file could not be stored in, or validated against, the S3 bucket."""
