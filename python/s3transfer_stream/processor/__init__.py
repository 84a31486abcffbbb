"""The consumer side: Kafka chunk messages in, validated objects in the bucket out."""

from .main import S3TransferStreamProcessor, member_id
from .options import MiB, ProcessorOptions, Stats, TransferResult

__all__ = [
    "MiB",
    "ProcessorOptions",
    "S3TransferStreamProcessor",
    "Stats",
    "TransferResult",
    "member_id",
]
