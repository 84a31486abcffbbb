"""s3transfer-stream: move data files through Apache Kafka into S3.

Wire- and config-compatible with OpenMSIStream; the byte work (chunk codec,
hashing, reassembly) is done by the Rust extension ``s3transfer_stream._core``.
"""

from __future__ import annotations

from .errors import (
    ChunkError,
    ChunkHashError,
    ConfigError,
    FileAssemblyError,
    FileChangedError,
    S3TransferStreamError,
    TransferError,
)

__version__ = "0.1.0"

__all__ = [
    "ChunkError",
    "ChunkHashError",
    "ConfigError",
    "FileAssemblyError",
    "FileChangedError",
    "S3TransferStreamError",
    "TransferError",
    "__version__",
]
