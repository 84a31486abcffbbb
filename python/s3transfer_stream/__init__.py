"""s3transfer-stream: move data files through Apache Kafka into S3.

Wire- and config-compatible with OpenMSIStream; the byte work (chunk codec,
hashing, reassembly) is done by the Rust extension ``s3transfer_stream._core``.
"""

from __future__ import annotations

from importlib.metadata import version as _distribution_version

from .errors import (
    ChunkError,
    ChunkHashError,
    ConfigError,
    FileAssemblyError,
    FileChangedError,
    S3TransferStreamError,
    TransferError,
)

#: Cargo.toml's version, which maturin writes into the package metadata.
__version__ = _distribution_version("s3transfer-stream")

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
