"""The transfer journal: the durable record that a file instance is in the bucket
(or was given up, with the reason).

One JSON line per transferred file, appended and fsynced *before* the registry
row is written and before its offsets are released for commit. It is what makes
a crash at any moment cost neither a file nor a duplicate registry row:

- a crash after the journal line but before the registry row: the next run
  restores the row from the journal, exactly as it would have been;
- a crash after the registry row but before the commit: the next run reads the
  file's messages again, but the journal lists their offsets, so they are
  skipped instead of transferred and recorded a second time.

The file lives next to the registry (``LOGS/``) and is private to one consumer
group and topic. Across processes and hosts the same knowledge travels in the
committed offsets' metadata (:mod:`s3transfer_stream.offsets`).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from . import failpoints
from .logs import get_logger
from .registry import journal_path

#: Entries kept when the journal is compacted at start-up.
KEEP_ENTRIES = 20_000

Runs = list[tuple[int, list[tuple[int, int]]]]


@dataclass(frozen=True)
class JournalEntry:
    rel_path: str
    filename: str
    n_chunks: int
    key: str
    size: int
    first_message: datetime
    processed_at: datetime
    offsets: Runs
    #: Kafka's id of the topic incarnation the offsets refer to ("" if unknown).
    topic_id: str = ""
    #: ``transferred``, or how the file was given up (``failed``, ``mismatched_hash``,
    #: ``abandoned``): either way its offsets are accounted for.
    outcome: str = "transferred"
    reason: str = ""

    @property
    def transferred(self) -> bool:
        return self.outcome == "transferred"

    def to_json(self) -> str:
        return json.dumps(
            {
                "rel": self.rel_path,
                "filename": self.filename,
                "n_chunks": self.n_chunks,
                "key": self.key,
                "size": self.size,
                "first_message": self.first_message.isoformat(),
                "processed_at": self.processed_at.isoformat(),
                "offsets": self.offsets,
                "topic_id": self.topic_id,
                **(
                    {"outcome": self.outcome, "reason": self.reason} if not self.transferred else {}
                ),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, line: str) -> JournalEntry:
        d: dict[str, Any] = json.loads(line)
        return cls(
            rel_path=str(d["rel"]),
            filename=str(d["filename"]),
            n_chunks=int(d["n_chunks"]),
            key=str(d["key"]),
            size=int(d["size"]),
            first_message=datetime.fromisoformat(d["first_message"]),
            processed_at=datetime.fromisoformat(d["processed_at"]),
            offsets=[(int(p), [(int(a), int(b)) for a, b in runs]) for p, runs in d["offsets"]],
            topic_id=str(d.get("topic_id", "")),
            outcome=str(d.get("outcome", "transferred")),
            reason=str(d.get("reason", "")),
        )


class TransferJournal:
    """Append-only, fsynced; read and compacted once at start-up."""

    def __init__(self, logs_dir: Path, topic: str, group_id: str) -> None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        self.path = journal_path(logs_dir, topic, group_id)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = self._synced = 0
        self.entries = self._load()
        if len(self.entries) > KEEP_ENTRIES:
            self.entries = self.entries[-KEEP_ENTRIES:]
            self._rewrite()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _load(self) -> list[JournalEntry]:
        if not self.path.exists():
            return []
        entries = []
        lines = self.path.read_text(encoding="utf-8").split("\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entries.append(JournalEntry.from_json(line))
            except (ValueError, KeyError, TypeError):
                # A crash mid-append leaves at most a torn last line.
                where = "last line" if n >= len(lines) - 1 else f"line {n}"
                get_logger().warning(f"Ignoring an unreadable {where} of {self.path}")
        return entries

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for e in self.entries:
                fh.write(e.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def append(self, entry: JournalEntry) -> None:
        """Returns once the entry is on disk. Appends from several upload threads
        share fsyncs (group commit): one fsync covers every line written before it."""
        line = entry.to_json() + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()
            self._written += 1
            mine = self._written
        with self._sync_lock:
            if self._synced < mine:
                upto = self._written
                os.fsync(self._fh.fileno())
                self._synced = upto
        failpoints.hit("journaled")

    def close(self) -> None:
        with self._lock:
            self._fh.close()
