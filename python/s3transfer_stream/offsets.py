"""Which offsets may be committed, and what the commit remembers.

The rule (the low watermark): for each partition commit

    min(next offset to read,
        lowest offset of a message of a file that is not yet safely in the bucket)

where "safely" means uploaded and validated, or recorded as bad data (a corrupted
chunk or a file hash mismatch, which reading again cannot fix). Files whose
upload failed stay pinned for the rest of the run, so the next run with the same
group id reads them again and retries.

Files finish out of order, so above the watermark there can be messages of files
that are already done. Their offsets ride along in the commit's metadata (a
compact list of offset runs); a restart, by any member of the group, skips those
messages without decoding them instead of transferring their files again. The
broker keeps at most ``offset.metadata.max.bytes`` (4096 by default) per
partition; runs that do not fit are left out, which costs a repeated upload of
those files after a crash, never a lost file.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable

METADATA_PREFIX = "s3ts1:"
METADATA_LIMIT = 3500


class OffsetRuns:
    """Disjoint, sorted half-open ranges of offsets."""

    def __init__(self, runs: Iterable[tuple[int, int]] = ()) -> None:
        self._runs: list[tuple[int, int]] = []
        for lo, hi in runs:
            self.add(lo, hi)

    def runs(self) -> list[tuple[int, int]]:
        return list(self._runs)

    def __len__(self) -> int:
        return sum(hi - lo for lo, hi in self._runs)

    def add(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        runs = self._runs
        i = bisect_left(runs, (lo, lo))
        if i > 0 and runs[i - 1][1] >= lo:
            i -= 1
        j = i
        while j < len(runs) and runs[j][0] <= hi:
            lo = min(lo, runs[j][0])
            hi = max(hi, runs[j][1])
            j += 1
        runs[i:j] = [(lo, hi)]

    def prune_below(self, offset: int) -> None:
        """Drops everything below ``offset`` (already committed past)."""
        kept = []
        for lo, hi in self._runs:
            if hi <= offset:
                continue
            kept.append((max(lo, offset), hi))
        self._runs = kept

    def encode(self, base: int, topic_id: str = "", limit: int = METADATA_LIMIT) -> str:
        """``s3ts1:<topic id>:<gap>+<len>,...`` with gaps counted from ``base`` then from
        each run's end. The topic id keeps a re-created topic of the same name from
        inheriting the runs."""
        head = f"{METADATA_PREFIX}{topic_id}:"
        parts: list[str] = []
        size = len(head)
        at = base
        for lo, hi in self._runs:
            if hi <= base:
                continue
            lo = max(lo, base)
            piece = f"{lo - at}+{hi - lo}"
            if size + len(piece) + 1 > limit:
                break
            parts.append(piece)
            size += len(piece) + 1
            at = hi
        return head + ",".join(parts) if parts else ""

    @classmethod
    def decode(cls, text: str | None, base: int, topic_id: str = "") -> OffsetRuns:
        """The runs encoded by :meth:`encode` for this topic id; anything else (other
        tools' metadata, another incarnation of the topic) is empty."""
        out = cls()
        head = f"{METADATA_PREFIX}{topic_id}:"
        if not text or not text.startswith(head) or base < 0:
            return out
        at = base
        try:
            for piece in text[len(head) :].split(","):
                gap, length = piece.split("+")
                lo = at + int(gap)
                hi = lo + int(length)
                if int(gap) < 0 or int(length) <= 0:
                    return cls()
                out.add(lo, hi)
                at = hi
        except ValueError:
            return cls()
        return out


class Watermarks:
    """Tracks, per partition, what was read, what is pinned and what is done."""

    def __init__(self, topic_id: str = "") -> None:
        self.topic_id = topic_id
        self._lock = threading.Lock()
        self._next: dict[int, int] = {}
        self._pins: dict[int, list[tuple[int, int]]] = {}
        self._held: dict[int, list[tuple[int, int]]] = {}
        self._done: dict[int, OffsetRuns] = {}

    def consumed(self, partition: int, offset: int) -> None:
        with self._lock:
            if offset + 1 > self._next.get(partition, -1):
                self._next[partition] = offset + 1

    def pin(self, instance: int, pins: list[tuple[int, int]]) -> None:
        """Keeps a completed file's offsets uncommitted while it is being uploaded."""
        with self._lock:
            self._pins[instance] = list(pins)

    def done(self, instance: int, offsets: list[tuple[int, list[tuple[int, int]]]]) -> None:
        """The file is safely in the bucket (or recorded as bad): release its offsets."""
        with self._lock:
            self._pins.pop(instance, None)
            for partition, runs in offsets:
                done = self._done.setdefault(partition, OffsetRuns())
                for lo, hi in runs:
                    done.add(lo, hi)

    def hold(self, instance: int) -> None:
        """Keeps a failed upload's offsets uncommitted for the rest of the run."""
        with self._lock:
            pins = self._pins.pop(instance, None)
            if pins:
                self._held[instance] = pins

    def forget(self, partitions: Iterable[int]) -> None:
        """The partitions were revoked. Pins stay: an upload still running, or one that
        failed, must keep holding the commit back if the partition comes back to this
        process (to another of its threads, typically), until it is done or the run ends."""
        with self._lock:
            for p in partitions:
                self._next.pop(p, None)
                self._done.pop(p, None)

    def next_offsets(self) -> dict[int, int]:
        with self._lock:
            return dict(self._next)

    def pinned_partitions(self, instance: int) -> set[int]:
        with self._lock:
            return {p for p, _ in self._pins.get(instance, [])}

    def commit_positions(
        self, partitions: Iterable[int], assembler_pins: dict[int, int]
    ) -> dict[int, tuple[int, str]]:
        """``{partition: (offset to commit, metadata)}`` for partitions read so far."""
        with self._lock:
            out: dict[int, tuple[int, str]] = {}
            for p in partitions:
                if p not in self._next:
                    continue
                pos = self._next[p]
                if p in assembler_pins:
                    pos = min(pos, assembler_pins[p])
                for table in (self._pins, self._held):
                    for pins in table.values():
                        for pp, off in pins:
                            if pp == p:
                                pos = min(pos, off)
                done = self._done.get(p)
                meta = ""
                if done is not None:
                    done.prune_below(pos)
                    meta = done.encode(pos, self.topic_id)
                out[p] = (pos, meta)
            return out
