"""The upload directory's version log: what each file looked like when it was sent."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..logs import get_logger

__all__ = ["FileVersion", "VersionLog"]


@dataclass(frozen=True)
class FileVersion:
    """The version of a file last sent: what it looked like when it was hashed."""

    size: int
    mtime_ns: int
    file_hash: str
    chunk_size: int
    n_chunks: int
    state: str  # "sending" or "sent"


class VersionLog:
    """``LOGS/upload_to_<topic>_versions.jsonl``: one JSON line per file version started
    or completed, so that a restart can tell whether a partly sent file is still the
    same (same SHA-512 and chunk size: resume) and whether a completed file was
    modified since (other size or mtime: send again). OpenMSIStream's registry tables
    have no column for this, and their format must stay as it is. The log is compacted
    (last line per file) when opened; a torn last line is ignored.
    """

    #: The log is rewritten when it has this many more lines than twice its files.
    compact_slack = 10_000

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._latest: dict[str, FileVersion] = {}
        lines = 0
        try:
            with path.open(encoding="utf-8", errors="surrogateescape") as handle:
                for line in handle:
                    lines += 1
                    try:
                        record = json.loads(line)
                        self._latest[str(record["path"])] = FileVersion(
                            size=int(record["size"]),
                            mtime_ns=int(record["mtime_ns"]),
                            file_hash=str(record["hash"]),
                            chunk_size=int(record["chunk_size"]),
                            n_chunks=int(record["n_chunks"]),
                            state=str(record["state"]),
                        )
                    except (ValueError, KeyError, TypeError):
                        continue
        except FileNotFoundError:
            pass
        if lines != len(self._latest):
            self._rewrite()
        self._lines = len(self._latest)
        self._handle = path.open("a", encoding="utf-8", errors="surrogateescape")

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", encoding="utf-8", errors="surrogateescape") as handle:
            for rel, version in self._latest.items():
                handle.write(self._line(rel, version))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    @staticmethod
    def _line(rel: str, v: FileVersion) -> str:
        record = {
            "path": rel,
            "size": v.size,
            "mtime_ns": v.mtime_ns,
            "hash": v.file_hash,
            "chunk_size": v.chunk_size,
            "n_chunks": v.n_chunks,
            "state": v.state,
        }
        return json.dumps(record, ensure_ascii=False) + "\n"

    def get(self, rel: str) -> FileVersion | None:
        with self._lock:
            return self._latest.get(rel)

    def record(self, rel: str, version: FileVersion) -> None:
        with self._lock:
            self._latest[rel] = version
            if self._handle.closed:
                return
            try:
                if self._lines > 2 * len(self._latest) + self.compact_slack:
                    # Compact while running too, so a long run's log stays small.
                    self._handle.close()
                    self._rewrite()
                    self._lines = len(self._latest)
                    self._handle = self.path.open("a", encoding="utf-8", errors="surrogateescape")
                else:
                    self._handle.write(self._line(rel, version))
                    self._lines += 1
                self._handle.flush()
            except OSError as exc:
                get_logger().warning(f"could not write {self.path}: {exc}")

    def close(self) -> None:
        with self._lock:
            if not self._handle.closed:
                self._handle.close()
