"""The lifecycle ledger: the one owner of every file instance, and the commit rule.

The owner itself lives in Rust (:class:`s3transfer_stream._core.Assembler`): it
holds each file instance from its first chunk, through *complete* or *failed*,
until :meth:`Ledger.settle` says it is durably done (in the bucket and in the
journal) or durably given up (recorded). Commit positions are computed in the
same critical section that moves instances between those states, so no thread
ever sees a file that is neither pinned nor done. This module adds only what
Kafka needs around it: decoding and encoding the commit metadata that carries
the done offsets above a watermark (:mod:`s3transfer_stream.offsets`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from .. import _core
from ..logs import get_logger
from ..offsets import OffsetRuns

LOG = get_logger()


class Ledger:
    """Thread-safe; shared by every consumer thread and the uploader of one process."""

    def __init__(self, part_size: int, max_buffered: int, topic_id: str = "") -> None:
        self.core = _core.Assembler(part_size, max_buffered)
        self.topic_id = topic_id

    def feed(
        self, messages: Sequence[Any], reader: int = 0
    ) -> tuple[list[_core.Event], int, list[tuple[int, int]]]:
        """``(events, n_stored, deferred)``: ``deferred`` lists ``(partition, offset)``
        to read again (out-of-order bytes that did not fit in the memory limit).

        ``reader`` is the consumer thread that read the messages. Every
        per-partition call names it: a partition moves between threads of one
        process by a rebalance whose callbacks each thread runs in its own time,
        so the old reader may hear it lost a partition after the new one began
        reading it, and must then change nothing there."""
        return self.core.feed(list(messages), reader)

    def settle(self, instance: int) -> bool:
        settled = self.core.settle(instance)
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug(f"Settled file instance {instance}" + ("" if settled else " (was not owned)"))
        return settled

    def abandon(
        self, instance: int
    ) -> tuple[_core.FileInfo, list[tuple[int, list[tuple[int, int]]]]] | None:
        return self.core.abandon(instance)

    def skip_offsets(self, partition: int, runs: Iterable[tuple[int, int]]) -> None:
        self.core.skip_offsets(partition, list(runs))

    def assigned(
        self, partition: int, committed: int, metadata: str | None, reader: int = 0
    ) -> tuple[int, int]:
        """Returns ``(offset to start reading from, messages known done above it)``."""
        runs = (
            OffsetRuns.decode(metadata, committed, self.topic_id).runs() if committed >= 0 else []
        )
        start = self.core.assigned(partition, committed, runs, reader)
        return start, sum(b - a for a, b in runs)

    def skip_ahead(self, partition: int, reader: int = 0) -> int | None:
        return self.core.skip_ahead(partition, reader)

    def committed(self, partition: int, offset: int) -> None:
        self.core.committed(partition, offset)

    def revoked(self, partitions: Sequence[int], reader: int = 0) -> list[_core.FileInfo]:
        dropped = self.core.revoked(list(partitions), reader)
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug(
                f"Thread {reader} released partitions {sorted(partitions)}; dropped "
                + (", ".join(f"{f.rel_path} (instance {f.instance})" for f in dropped) or "no file")
            )
        return dropped

    def commit_offsets(
        self, partitions: Iterable[int], reader: int = 0
    ) -> list[tuple[int, int, str]]:
        """``[(partition, offset, metadata)]`` that ``reader`` may commit now."""
        return [
            (p, offset, OffsetRuns(runs).encode(offset, self.topic_id))
            for p, offset, runs in self.core.commit_positions(sorted(partitions), reader)
        ]

    def progress(self) -> list[_core.Progress]:
        return self.core.progress()

    def pinned_offsets(self) -> dict[int, int]:
        return self.core.pinned_offsets()

    @property
    def buffered_bytes(self) -> int:
        return self.core.buffered_bytes
