"""The stall monitor: files that cannot complete, files that pin a partition, files given up.

Run from the main thread every few seconds. It reports (once per file):
- a file being received that got no chunk for ``stall_seconds`` although every
  partition this process owns is read to its end (its other chunks were not
  produced, or sit in partitions another group member owns): registry status
  ``waiting_for_chunks``;
- any file not yet settled (receiving, uploading, held) that has pinned a
  partition for ``stall_seconds`` while newer messages arrived there;
and it gives up a file being received that got no chunk for ``abandon_seconds``
while at least ``abandon_offset_gap`` newer messages arrived in one of its
partitions: registry status ``abandoned``, so one dead producer cannot pin a
partition for ever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .. import _core
from ..registry import StreamRegistry
from .ledger import Ledger
from .loop import ConsumerLoop
from .options import ProcessorOptions
from .uploads import Uploader


class StallMonitor:
    def __init__(
        self,
        *,
        options: ProcessorOptions,
        ledger: Ledger,
        uploader: Uploader,
        registry: StreamRegistry,
        loops: Callable[[], list[ConsumerLoop]],
        log: logging.Logger,
    ) -> None:
        self.o = options
        self.ledger = ledger
        self.uploader = uploader
        self.registry = registry
        self.loops = loops
        self.log = log
        self._last = 0.0
        self.waiting: set[int] = set()
        self._pin_reported: set[int] = set()

    def check(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 5.0:
            return
        self._last = now
        loops = self.loops()
        log_end: dict[int, int] = {}
        owned: set[int] = set()
        for lp in loops:
            log_end.update(lp.log_end)
            owned |= lp.owned
        caught_up = bool(loops) and all(lp.caught_up for lp in loops)
        n_partitions = max((lp.n_partitions for lp in loops), default=0)
        live = set()
        for pr in self.ledger.progress():
            info = pr.file
            live.add(info.instance)
            gaps = [log_end[p] - end for p, end in pr.max_offsets if p in log_end]
            gap = max(gaps, default=0)
            if pr.state == "receiving":
                if info.echo and pr.idle_seconds >= self.o.abandon_seconds:
                    self._abandon(
                        info.instance, "stray duplicate chunks of a file already transferred"
                    )
                    continue
                if pr.idle_seconds >= self.o.abandon_seconds and gap >= self.o.abandon_offset_gap:
                    self._abandon(
                        info.instance,
                        f"{pr.chunks} of {info.n_chunks} chunks arrived and none for "
                        f"{pr.idle_seconds:.0f} s while {gap} newer messages arrived in its partitions "
                        f"{sorted(pr.partitions)} (producer stopped?)",
                    )
                    continue
                if (
                    caught_up
                    and pr.idle_seconds >= self.o.stall_seconds
                    and info.instance not in self.waiting
                    and not info.echo
                ):
                    self._report_waiting(pr.file, pr.chunks, pr.partitions, owned, n_partitions)
                    continue
            if (
                gap > 0
                and pr.idle_seconds >= self.o.stall_seconds
                and info.instance not in self._pin_reported
                and info.instance not in self.waiting
                and not info.echo
            ):
                self._pin_reported.add(info.instance)
                why = {
                    "receiving": f"waiting for chunks ({pr.chunks} of {info.n_chunks} arrived)",
                    "uploading": self.uploader.health.describe(),
                    "failed": "its failure is being recorded",
                }.get(pr.state, pr.state)
                if info.instance in self.uploader.held:
                    why = f"its upload cannot go on in this run: {self.uploader.held[info.instance][1]}"
                pins = ", ".join(f"{p}@{end}" for p, end in pr.max_offsets)
                self.log.warning(
                    f"{info.rel_output_path} has kept offsets of partitions {sorted(pr.partitions)} of "
                    f"{self.o.topic} uncommitted for {pr.idle_seconds:.0f} s while {gap} newer messages "
                    f"arrived (its last messages: {pins}): {why}"
                )
        self.waiting &= live
        self._pin_reported &= live

    def _abandon(self, instance: int, why: str) -> None:
        found = self.ledger.abandon(instance)
        if found is not None:
            self.uploader.abandon(*found, why)

    def _report_waiting(
        self,
        info: _core.FileInfo,
        chunks: int,
        partitions: list[int],
        owned: set[int],
        n_partitions: int,
    ) -> None:
        self.waiting.add(info.instance)
        topic, group = self.o.topic, self.o.group_id
        if len(owned) < n_partitions:
            others = sorted(set(range(n_partitions)) - owned)
            advice = (
                "it completes once one process owns all of them: for topics written that way run "
                "one process with more --n_threads"
            )
            if len(partitions) > 1:
                why = (
                    f"its other chunks must be in partitions {others} of {topic}, which another member "
                    f"of group {group} owns (the producer spread this file over partitions "
                    f"{sorted(partitions)}...); {advice}"
                )
            else:
                # One partition so far: a file-affine producer still sending (or stopped)
                # looks the same as a spreading one whose other chunks went elsewhere.
                why = (
                    "either the producer has not sent its other chunks (stopped, or still sending), "
                    "or it spreads a file's chunks over partitions, as OpenMSIStream's producers can, "
                    f"and they are in partitions {others} of {topic}, which another member of group "
                    f"{group} owns; in that case {advice}"
                )
        else:
            why = "the producer has not sent its other chunks (stopped, or still sending)"
        self.log.warning(
            f"{info.rel_output_path} has {chunks} of {info.n_chunks} chunks and no more arrived for "
            f"{self.o.stall_seconds:g} s although partitions {sorted(owned)} are read to their end: {why}. "
            "Its offsets stay uncommitted, so nothing is lost"
        )
        self.registry.mark_waiting(info.rel_path, info.filename, info.n_chunks)
