"""DataFileUploadDirectory resending a chunk whose delivery failed, without a broker.

A stand-in producer fails the first delivery of one chunk and, just before it reports
the failure, changes the file: elsewhere (the chunk is resent and the upload
completes, because only that chunk is read again and checked), or inside that chunk
(the upload of that version stops, naming the file, and the file is sent again later).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError
from s3transfer_stream import _core
from s3transfer_stream.producer import DirectoryUploader
from s3transfer_stream.registry import ProducerRegistry

CHUNK = 16384
N_CHUNKS = 4
TOPIC = "resend"


class FailingOnceProducer:
    """Keeps what is produced; when polled, reports each delivery, failing the first
    one of ``fail_chunk`` after calling ``before_failing``."""

    def __init__(self, fail_chunk: int, before_failing: Callable[[], None]) -> None:
        self.fail_chunk = fail_chunk
        self.before_failing: Callable[[], None] | None = before_failing
        self.lock = threading.Lock()
        self.produced: list[tuple[int, bytes]] = []
        self.pending: list[tuple[Callable[[Any, Any], None], int]] = []

    def produce(
        self,
        *,
        topic: str,
        key: str,
        value: Any,
        partition: int,
        on_delivery: Callable[[Any, Any], None],
    ) -> None:
        parsed = _core.parse_message_key(key)
        assert parsed is not None and topic == TOPIC and partition == 0
        with self.lock:
            self.produced.append((parsed[1], bytes(value)))
            self.pending.append((on_delivery, parsed[1]))

    def poll(self, timeout: float = 0.0) -> int:
        with self.lock:
            pending, self.pending = self.pending, []
        for report, chunk_i in pending:
            error = None
            if chunk_i == self.fail_chunk and self.before_failing is not None:
                self.before_failing()
                self.before_failing = None
                error = KafkaError(KafkaError._MSG_TIMED_OUT)
            report(error, None)
        if not pending:
            time.sleep(min(timeout, 0.01))
        return len(pending)

    def flush(self, timeout: float | None = None) -> int:
        self.poll()
        return len(self)

    def __len__(self) -> int:
        with self.lock:
            return len(self.pending)


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def overwrite(path: Path, offset: int, data: bytes) -> Callable[[], None]:
    def change() -> None:
        with path.open("r+b") as handle:
            handle.seek(offset)
            handle.write(data)

    return change


def start_uploader(root: Path, producer: FailingOnceProducer) -> DirectoryUploader:
    # The lag keeps the watcher from sending the changed file again during the test.
    uploader = DirectoryUploader(
        root,
        producer,
        TOPIC,
        n_partitions=1,
        chunk_size=CHUNK,
        upload_existing=True,
        watchdog_lag_time=60,
        n_threads=1,
    )
    uploader.start()
    return uploader


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, Path, bytes]:
    root = tmp_path / "upload"
    root.mkdir()
    body = os.urandom(N_CHUNKS * CHUNK)
    path = root / "a.bin"
    path.write_bytes(body)
    an_hour_ago = time.time() - 3600  # ready at once at start
    os.utime(path, (an_hour_ago, an_hour_ago))
    return root, path, body


def test_a_change_elsewhere_in_the_file_does_not_stop_a_resent_chunk(
    source: tuple[Path, Path, bytes],
) -> None:
    root, path, body = source
    producer = FailingOnceProducer(2, overwrite(path, 3 * CHUNK + 10, b"changed in chunk 4"))
    uploader = start_uploader(root, producer)
    try:
        wait_for(lambda: uploader.status().uploaded == 1, "the upload to complete")
    finally:
        status = uploader.stop()
    assert [chunk_i for chunk_i, _ in producer.produced] == [1, 2, 3, 4, 2]
    first, again = (value for chunk_i, value in producer.produced if chunk_i == 2)
    assert again == first
    assert _core.decode_chunk(again).data == body[CHUNK : 2 * CHUNK]
    assert status.failed == 0 and status.uploaded_paths == ["a.bin"]
    registry = ProducerRegistry(root / "LOGS", TOPIC)
    assert registry.is_completed("a.bin")
    assert registry.in_progress_rows() == []


def test_a_resent_chunk_that_changed_stops_that_version_naming_the_file(
    source: tuple[Path, Path, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    root, path, _ = source
    producer = FailingOnceProducer(2, overwrite(path, CHUNK + 10, b"changed in chunk 2"))
    uploader = start_uploader(root, producer)
    try:
        wait_for(
            lambda: any("changed while it was being sent" in r.message for r in caplog.records),
            "the resend to be refused",
        )
        registry_left = uploader.registry.chunks_to_send("a.bin")
        counts = uploader.counts()
    finally:
        uploader.stop()
    (record,) = [r for r in caplog.records if "changed while it was being sent" in r.message]
    assert str(path) in record.message and "chunk 2 no longer matches" in record.message
    assert [chunk_i for chunk_i, _ in producer.produced] == [1, 2, 3, 4]
    assert registry_left == {2}
    assert counts["uploaded"] == 0 and counts["in_progress"] == 0 and counts["waiting"] == 1
