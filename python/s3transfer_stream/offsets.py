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
