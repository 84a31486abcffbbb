"""The processor's lifecycle logic without a broker or a server: the ledger, the
uploader over an object store that fails on purpose, and a consumer loop over a
consumer that answers commits as told."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from confluent_kafka import KafkaError, TopicPartition
from s3transfer_stream import _core
from s3transfer_stream.journal import TransferJournal
from s3transfer_stream.processor import uploads as uploads_module
from s3transfer_stream.processor.ledger import Ledger
from s3transfer_stream.processor.loop import ConsumerLoop, consumer_settings
from s3transfer_stream.processor.options import ProcessorOptions, Stats
from s3transfer_stream.processor.uploads import Uploader
from s3transfer_stream.registry import StreamRegistry
from s3transfer_stream.s3 import Validation

LOG = logging.getLogger("test-units")


def chunks(name: str, data: bytes, size: int) -> list[bytes]:
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    fh = hashlib.sha512(data).digest()
    out, off = [], 0
    for i, d in enumerate(pieces):
        out.append(
            _core.encode_chunk(
                name, fh, hashlib.sha512(d).digest(), off, i + 1, len(pieces), "", "", d, 1.0
            )
        )
        off += len(d)
    return out


class FakeStore:
    """Stores objects in a dict; ``faults`` is a list of exceptions raised by the
    next PUTs, one each."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.faults: list[Exception] = []
        self.calls = 0
        self.client = None

    def put(self, key: str, data: Any, *, crc64nvme: int, **_: Any) -> dict[str, str]:
        self.calls += 1
        if self.faults:
            raise self.faults.pop(0)
        self.objects[key] = bytes(memoryview(data))
        return {}

    def stored_position(self, key: str) -> tuple[str, str] | None:
        return ("etag", "") if key in self.objects else None

    def validate_object(self, key: str, size: int, sent: Any, sha512: bytes) -> Validation:
        ok = hashlib.sha512(self.objects[key]).digest() == sha512
        return Validation(ok, "sha512-reread", "fake")

    def abort_multipart(self, key: str, upload_id: str) -> None:
        pass


def denied() -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "AccessDenied", "Message": "no"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        },
        "PutObject",
    )


def unavailable() -> ClientError:
    return ClientError(
        {"Error": {"Code": "ServiceUnavailable"}, "ResponseMetadata": {"HTTPStatusCode": 503}},
        "PutObject",
    )


def new_uploader(
    tmp_path: Path, store: FakeStore, options: ProcessorOptions
) -> tuple[Ledger, Uploader, TransferJournal, StreamRegistry]:
    """An uploader over ``store`` with a fresh ledger, journal and registry."""
    ledger = Ledger(5 << 20, 64 << 20)
    journal = TransferJournal(tmp_path, "t", "g")
    registry = StreamRegistry(tmp_path, "t", "g")
    up = Uploader(
        options=options,
        store=store,  # type: ignore[arg-type]
        ledger=ledger,
        journal=journal,
        registry=registry,
        stats=Stats(),
        log=LOG,
    )
    return ledger, up, journal, registry


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(uploads_module, "FIRST_DELAY", 0.01)
    options = ProcessorOptions(bucket="b", topic="t", group_id="g", output_dir=tmp_path)
    store = FakeStore()
    ledger, up, journal, registry = new_uploader(tmp_path, store, options)
    yield store, ledger, up, journal
    up.stop(grace=5)
    registry.close()
    journal.close()


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_transient_errors_are_retried_until_the_file_lands_and_only_then_committed(
    parts: Any,
) -> None:
    store, ledger, up, journal = parts
    store.faults = [EndpointConnectionError(endpoint_url="http://x"), unavailable(), unavailable()]
    msgs = chunks("a.dat", b"x" * 1000, 300)
    ledger.assigned(0, 0, None)
    events, _, _ = ledger.feed([(0, i, m) for i, m in enumerate(msgs)])
    up.handle(events)
    wait_until(lambda: "t/a.dat" in store.objects)
    wait_until(lambda: ledger.commit_offsets([0]) == [(0, len(msgs), "")])
    assert store.calls == 4
    assert up.health.reachable
    assert [e.outcome for e in TransferJournal(journal.path.parent, "t", "g").entries] == [
        "transferred"
    ]


def test_a_permanent_error_is_recorded_then_committed_past(parts: Any) -> None:
    store, ledger, up, journal = parts
    store.faults = [denied()]
    msgs = chunks("b.dat", b"y" * 10, 300)
    ledger.assigned(0, 0, None)
    events, _, _ = ledger.feed([(0, 0, msgs[0])])
    up.handle(events)
    wait_until(lambda: ledger.commit_offsets([0]) == [(0, 1, "")])
    assert store.objects == {}
    (entry,) = TransferJournal(journal.path.parent, "t", "g").entries
    assert entry.outcome == "failed" and "AccessDenied" in entry.reason


def test_while_s3_is_down_nothing_is_committed_past_the_waiting_file(parts: Any) -> None:
    store, ledger, up, _ = parts
    store.faults = [unavailable()] * 10_000
    ledger.assigned(0, 0, None)
    events, _, _ = ledger.feed([(0, 0, chunks("c.dat", b"z", 10)[0])])
    up.handle(events)
    wait_until(lambda: not up.health.reachable)
    time.sleep(0.2)
    assert ledger.commit_offsets([0]) == [(0, 0, "")]
    store.faults.clear()
    wait_until(lambda: ledger.commit_offsets([0]) == [(0, 1, "")])


def test_an_older_instance_of_a_key_is_never_written_after_a_newer_one(parts: Any) -> None:
    store, ledger, up, _ = parts
    gate = threading.Event()
    real_put = store.put
    order: list[bytes] = []

    def put(key: str, data: Any, *, crc64nvme: int, **_: Any) -> dict[str, str]:
        if bytes(memoryview(data)) == b"old":
            gate.wait(5)
        order.append(bytes(memoryview(data)))
        return real_put(key, data, crc64nvme=crc64nvme)

    store.put = put
    ledger.assigned(0, 0, None)
    old, new = chunks("k", b"old", 10), chunks("k", b"new", 10)
    events, _, _ = ledger.feed([(0, 0, old[0])])
    up.handle(events)
    events, _, _ = ledger.feed([(0, 1, new[0])])
    up.handle(events)
    time.sleep(0.2)
    assert order == []  # the newer one waits for the older one's write
    gate.set()
    wait_until(lambda: len(order) == 2)
    assert order == [b"old", b"new"]
    assert store.objects["t/k"] == b"new"


class FakeConsumer:
    """Records commits; the test answers them through the loop's on_commit."""

    def __init__(self) -> None:
        self.commits: list[list[TopicPartition]] = []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append(offsets)


def test_a_failed_commit_is_sent_again_and_only_a_confirmed_one_counts(tmp_path: Path) -> None:
    ledger = Ledger(5 << 20, 64 << 20)
    options = ProcessorOptions(bucket="b", topic="t", group_id="g", output_dir=tmp_path)
    settings, incremental = consumer_settings({"group.id": "g"}, LOG)
    assert not incremental and settings["enable.auto.commit"] == "false"
    loop = ConsumerLoop(
        0,
        options=options,
        settings=settings,
        incremental=False,
        ledger=ledger,
        uploader=None,  # type: ignore[arg-type]
        stats=Stats(),
        log=LOG,
        stop=threading.Event(),
    )
    loop.owned = {0}
    c = FakeConsumer()
    ledger.assigned(0, 0, None)
    ledger.feed([(0, 0, b"junk"), (0, 1, b"junk")])
    loop.commit(c)
    assert [(tp.partition, tp.offset) for tp in c.commits[-1]] == [(0, 2)]
    loop.commit(c)
    assert len(c.commits) == 1  # in flight: not sent twice
    # The broker refuses it (a rebalance in progress).
    loop._on_commit(KafkaError(KafkaError.ILLEGAL_GENERATION), c.commits[-1])
    assert 0 not in loop.acked or loop.acked[0][0] != 2
    loop.commit(c)
    assert len(c.commits) == 2  # sent again
    loop._on_commit(None, c.commits[-1])
    assert loop.acked[0] == (2, "")
    loop.commit(c)
    assert len(c.commits) == 2  # confirmed: nothing more to send


class BusyUploader:
    """An uploader whose one file, in partition 0, is uploading until ``done`` is set."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.revoked_partitions: set[int] = set()

    def uploads(self) -> list[Any]:
        if self.done.is_set():
            return []
        return [type("Upload", (), {"state": "uploading", "offsets": [(0, 5)]})()]

    def revoked(self, dropped: list[Any], partitions: set[int]) -> None:
        self.revoked_partitions |= partitions


def test_a_revocation_waits_for_uploads_in_flight_but_not_again_when_stopping(
    tmp_path: Path,
) -> None:
    """A rebalance lets a file in flight finish (up to the grace) so that we commit it;
    at shutdown ``_finish`` has already given it the whole grace, so the revocation
    that ``consumer.close()`` sends commits at once instead of waiting once more."""
    options = ProcessorOptions(
        bucket="b", topic="t", group_id="g", output_dir=tmp_path, shutdown_grace=3.0
    )
    for stopping in (False, True):
        ledger = Ledger(5 << 20, 64 << 20)
        uploader = BusyUploader()
        loop = ConsumerLoop(
            0,
            options=options,
            settings={},
            incremental=False,
            ledger=ledger,
            uploader=uploader,  # type: ignore[arg-type]
            stats=Stats(),
            log=LOG,
            stop=threading.Event(),
        )
        loop.owned = {0}
        loop.shutting_down = stopping
        ledger.assigned(0, 0, None)
        ledger.feed([(0, 0, b"junk"), (0, 1, b"junk")])
        c = FakeConsumer()
        threading.Timer(1.0, uploader.done.set).start()
        t0 = time.monotonic()
        loop._on_revoke(c, [TopicPartition("t", 0)])
        took = time.monotonic() - t0
        if stopping:
            assert took < 0.5, took
        else:
            assert 0.9 < took < 2.5, took
        assert [(tp.partition, tp.offset) for tp in c.commits[-1]] == [(0, 2)]
        assert uploader.revoked_partitions == {0} and loop.owned == set()
        uploader.done.wait()


def test_consumer_protocol_drops_the_settings_the_broker_owns() -> None:
    settings, incremental = consumer_settings(
        {"group.protocol": "consumer", "session.timeout.ms": "6000"}, LOG, warn=False
    )
    assert incremental and "session.timeout.ms" not in settings
    _, incremental = consumer_settings({"partition.assignment.strategy": "cooperative-sticky"}, LOG)
    assert incremental


@pytest.mark.integration
def test_a_late_upload_after_takeover_never_overwrites_a_newer_version(
    tmp_path: Path, new_bucket: Any, s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Build item 6: the partition moved away while this member still owned the file;
    meanwhile the new owner stored a newer version (later in the same partition). The
    late write is conditional and skipped; an older stored version is overwritten."""
    from s3transfer_stream.s3 import ObjectStore

    bucket = new_bucket()
    store = ObjectStore(s3_client, bucket)
    options = ProcessorOptions(bucket=bucket, topic="t", group_id="g", output_dir=tmp_path)
    ledger = Ledger(5 << 20, 64 << 20, "TID")
    journal = TransferJournal(tmp_path, "t", "g")
    registry = StreamRegistry(tmp_path, "t", "g")
    up = Uploader(
        options=options,
        store=store,
        ledger=ledger,
        journal=journal,
        registry=registry,
        stats=Stats(),
        log=LOG,
    )
    try:
        ledger.assigned(0, 0, None)
        newer = b"newer version"
        store.put("t/f.dat", newer, crc64nvme=_core.crc64nvme(newer), position="TID/0/10")
        events, _, _ = ledger.feed([(0, 3, chunks("f.dat", b"late older", 100)[0])])
        up.handle(events[:1])
        up.revoked([], {0})
        up.handle(events[1:])
        wait_until(lambda: ledger.commit_offsets([0]) == [(0, 4, "")])
        assert s3_client.get_object(Bucket=bucket, Key="t/f.dat")["Body"].read() == newer
        # An older version in the bucket is replaced (conditionally).
        events, _, _ = ledger.feed([(0, 20, chunks("f.dat", b"newest", 100)[0])])
        up.handle(events[:1])
        up.revoked([], {0})
        up.handle(events[1:])
        wait_until(lambda: ledger.commit_offsets([0]) == [(0, 21, "")])
        assert s3_client.get_object(Bucket=bucket, Key="t/f.dat")["Body"].read() == b"newest"
        head = s3_client.head_object(Bucket=bucket, Key="t/f.dat")
        assert head["Metadata"]["s3ts-position"] == "TID/0/20"
    finally:
        up.stop(grace=5)
        registry.close()
        journal.close()


class AssigningConsumer(FakeConsumer):
    """Also answers what the assignment callbacks ask: committed offsets, assign, resume."""

    def __init__(self, committed: dict[int, int]) -> None:
        super().__init__()
        self.group_committed = committed

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.group_committed.get(tp.partition, -1001))
            for tp in tps
        ]

    def assign(self, tps: list[TopicPartition]) -> None:
        pass

    def resume(self, tps: list[TopicPartition]) -> None:
        pass


def test_a_thread_that_hears_late_it_lost_a_partition_cannot_commit_past_a_spread_file(
    parts: Any,
) -> None:
    """Issue 7, the unexplained spread loss: partition 1 moves from thread 0 to thread
    1 of the same process, and thread 1 is assigned it (and re-reads it from the
    commit) before thread 0 handles the loss (``on_lost`` after a broker outage, or a
    revocation handled late). Thread 0's late release used to drop the spread file
    whose chunks thread 1 had just re-read as duplicates and reset the read position,
    so thread 1 committed partition 1 past chunks of a file never transferred."""
    store, ledger, up, _ = parts
    options = ProcessorOptions(bucket="b", topic="t", group_id="g", output_dir=Path("."))
    group = {1: 18}
    loops, consumers = [], []
    for index in (0, 1):
        loop = ConsumerLoop(
            index,
            options=options,
            settings={},
            incremental=False,
            ledger=ledger,
            uploader=up,
            stats=Stats(),
            log=LOG,
            stop=threading.Event(),
        )
        loops.append(loop)
        consumers.append(AssigningConsumer(group))
    data = bytes(range(256)) * 4
    msgs = chunks("spread.bin", data, 256)  # 4 chunks: 3 in partition 1, 1 in partition 0
    p1 = [(1, 18 + i, m) for i, m in enumerate(msgs[:3])] + [(1, 21, chunks("x", b"x", 9)[0])]
    loops[0]._on_assign(consumers[0], [TopicPartition("t", 1)])
    events, _, _ = ledger.feed(p1, reader=0)
    up.handle(events)
    # Thread 1 is assigned partition 1 and re-reads it; thread 0 has not heard yet.
    loops[1]._on_assign(consumers[1], [TopicPartition("t", 1)])
    events, _, _ = ledger.feed(p1, reader=1)
    up.handle(events)
    wait_until(lambda: "t/x" in store.objects)
    loops[0]._on_lost(consumers[0], [TopicPartition("t", 1)])
    # Thread 1 reads on (one more small file) and commits.
    events, _, _ = ledger.feed([(1, 22, chunks("y", b"y", 9)[0])], reader=1)
    up.handle(events)
    wait_until(lambda: "t/y" in store.objects)
    loops[1].commit(consumers[1])
    sent = [tp.offset for batch in consumers[1].commits for tp in batch if tp.partition == 1]
    assert all(o <= 18 for o in sent), f"partition 1 committed past the spread file: {sent}"
    assert [(p, o) for p, o, _ in ledger.commit_offsets([1], reader=1)] == [(1, 18)]
    assert ledger.commit_offsets([1], reader=0) == []
    # The last chunk arrives in partition 0 (assigned to thread 1): the file lands and
    # only then may partition 1 move past it.
    loops[1]._on_assign(consumers[1], [TopicPartition("t", 0)])
    events, _, _ = ledger.feed([(0, 0, msgs[3])], reader=1)
    up.handle(events)
    wait_until(lambda: "t/spread.bin" in store.objects)
    assert store.objects["t/spread.bin"] == data
    wait_until(lambda: ledger.commit_offsets([1], reader=1) == [(1, 23, "")])


def test_a_multipart_upload_started_for_a_file_dropped_meanwhile_is_aborted(parts: Any) -> None:
    """Fault matrix seed 101: a revocation dropped a file while its part worker was
    still starting the multipart upload (S3 answering 503); the upload was created
    afterwards, and nobody completed or aborted it."""
    store, ledger, up, _ = parts
    gate = threading.Event()
    aborted: list[tuple[str, str]] = []

    def start_multipart(key: str, **_: Any) -> str:
        gate.wait(10)
        return "U1"

    store.start_multipart = start_multipart
    store.upload_part = lambda *a, **k: {"ETag": "e", "PartNumber": 1}
    store.abort_multipart = lambda key, upload_id: aborted.append((key, upload_id))
    data = bytes(range(256)) * (32 << 10)  # 8 MiB: one full 5 MiB part, then the rest
    msgs = chunks("big.bin", data, 1 << 20)
    ledger.assigned(0, 0, None)
    events, _, _ = ledger.feed([(0, i, m) for i, m in enumerate(msgs[:6])])
    assert [e.kind for e in events] == ["started", "part"]
    up.handle(events)
    time.sleep(0.1)  # the part worker waits in start_multipart
    up.revoked(ledger.revoked([0]), {0})
    gate.set()
    wait_until(lambda: aborted == [("t/big.bin", "U1")])
    assert ledger.pinned_offsets() == {}


def test_a_dropped_file_is_aborted_only_after_its_parts_on_the_wire_end(parts: Any) -> None:
    """CI, crash matrix spread-2-threads: a revocation aborted a multipart upload while
    a part of it was still being sent; SeaweedFS stored the late part and listed the
    upload again, so it stayed open for ever. AWS, too, may keep a part that arrives
    after the abort. The abort must wait for the parts on the wire, and parts not yet
    sent must not start."""
    store, ledger, up, _ = parts
    in_part = threading.Event()
    gate = threading.Event()
    calls: list[str] = []

    def upload_part(key: str, upload_id: str, number: int, data: Any, crc: int) -> Any:
        calls.append(f"part {number} start")
        if number == 1:
            in_part.set()
            gate.wait(10)
        calls.append(f"part {number} end")
        return {"ETag": "e", "PartNumber": number}

    store.start_multipart = lambda key, **_: "U1"
    store.upload_part = upload_part
    store.abort_multipart = lambda key, upload_id: calls.append(f"abort {upload_id}")
    data = bytes(range(256)) * (64 << 10)  # 16 MiB: three full 5 MiB parts, then the rest
    msgs = chunks("big.bin", data, 1 << 20)
    ledger.assigned(0, 0, None)
    events, _, _ = ledger.feed([(0, i, m) for i, m in enumerate(msgs[:6])])
    assert [e.kind for e in events] == ["started", "part"]
    up.handle(events)
    assert in_part.wait(10)
    up.revoked(ledger.revoked([0]), {0})
    time.sleep(0.3)  # an abort that does not wait would run now
    assert calls == ["part 1 start"]
    gate.set()
    wait_until(lambda: "abort U1" in calls)
    assert calls == ["part 1 start", "part 1 end", "abort U1"]
    assert ledger.pinned_offsets() == {}


def settle_multipart_file(ledger: Ledger, up: Uploader) -> None:
    """Hands the uploader a whole 8 MiB file (multipart) and waits until it is settled."""
    msgs = chunks("big.bin", bytes(range(256)) * (32 << 10), 1 << 20)
    ledger.assigned(0, 0, None)
    events, _, _ = ledger.feed([(0, i, m) for i, m in enumerate(msgs)])
    up.handle(events)
    wait_until(lambda: ledger.pinned_offsets() == {})


def test_a_record_of_open_uploads_that_cannot_be_written_fails_the_file_not_s3(
    parts: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The record is written inside the attempt that S3 failures are retried around;
    a full disk there must not be taken for S3 being down (retried for ever, a new
    upload each time, S3 marked unreachable): the file fails once, naming the record."""
    from s3transfer_stream.stale_uploads import OpenUploads

    store, ledger, up, journal = parts
    started: list[str] = []

    def start_multipart(key: str, **_: Any) -> str:
        started.append(key)
        return f"U{len(started)}"

    store.start_multipart = start_multipart
    store.upload_part = lambda *a, **k: {"ETag": "e", "PartNumber": 1}
    record = OpenUploads(tmp_path / "open_uploads.0.jsonl")
    up.open_uploads = record

    def full(*_: Any, **__: Any) -> None:
        raise OSError(28, "No space left on device")

    record._append = full  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        settle_multipart_file(ledger, up)
    assert started == []  # the intent could not be recorded: no upload was started
    assert up.health.reachable
    assert [e.outcome for e in TransferJournal(journal.path.parent, "t", "g").entries] == ["failed"]
    assert f"could not write the record of open uploads {record.path}" in caplog.text
    record.close()


def test_an_abort_that_fails_is_logged_and_the_file_still_recorded_as_failed(
    parts: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An abort after a part was refused must not skip recording the failure (the
    file would stay pinned until a restart)."""
    store, ledger, up, journal = parts

    def upload_part(*_: Any, **__: Any) -> Any:
        raise denied()

    def abort_multipart(key: str, upload_id: str) -> None:
        raise unavailable()

    store.start_multipart = lambda key, **_: "U1"
    store.upload_part = upload_part
    store.abort_multipart = abort_multipart
    with caplog.at_level(logging.WARNING):
        settle_multipart_file(ledger, up)
    assert "Could not abort the multipart upload U1 of t/big.bin" in caplog.text
    assert [e.outcome for e in TransferJournal(journal.path.parent, "t", "g").entries] == ["failed"]


def test_an_abort_refused_for_a_while_is_tried_again_in_the_same_run(
    parts: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault matrix seed 2222741196: the survivor's abort of a dropped file's multipart
    upload met a few refused connections (botocore's three attempts all failed) and
    was left "for the next start"; the member then ran on and quit, and the upload
    stayed open in the bucket. A transient failure must be retried in this run."""
    store, ledger, up, journal = parts
    attempts: list[str] = []

    def abort_multipart(key: str, upload_id: str) -> None:
        attempts.append(upload_id)
        if len(attempts) <= 2:
            raise unavailable()

    def upload_part(*_: Any, **__: Any) -> Any:
        raise denied()

    store.start_multipart = lambda key, **_: "U1"
    store.upload_part = upload_part
    store.abort_multipart = abort_multipart
    data = bytes(range(256)) * (32 << 10)  # 8 MiB
    msgs = chunks("big.bin", data, 1 << 20)
    ledger.assigned(0, 0, None)
    events, _, _ = ledger.feed([(0, i, m) for i, m in enumerate(msgs)])
    with caplog.at_level(logging.INFO):
        up.handle(events)
        wait_until(lambda: ledger.pinned_offsets() == {})  # not held up by the abort
        wait_until(lambda: len(attempts) == 3)
    assert attempts == ["U1", "U1", "U1"]
    assert "Could not abort the multipart upload U1 of t/big.bin" in caplog.text
    assert [e.outcome for e in TransferJournal(journal.path.parent, "t", "g").entries] == ["failed"]


def test_the_upload_bound_counts_bytes_so_many_small_files_go_side_by_side(
    tmp_path: Path,
) -> None:
    """The backlog bound is max_parts_in_flight parts' worth of bytes: ten small
    files waiting for S3 leave room (a bound in uploads would stop at four), and
    files adding up to four parts' worth fill it."""
    options = ProcessorOptions(
        bucket="b", topic="t", group_id="g", output_dir=tmp_path, part_size=5 << 20
    )
    store = FakeStore()
    gate = threading.Event()
    real_put = store.put

    def put(key: str, data: Any, **kw: Any) -> dict[str, str]:
        gate.wait(10)
        return real_put(key, data, **kw)

    store.put = put  # type: ignore[method-assign]
    ledger, up, journal, registry = new_uploader(tmp_path, store, options)
    try:
        ledger.assigned(0, 0, None)
        msgs = [chunks(f"s{i}.dat", bytes([i]) * 1000, 1 << 20)[0] for i in range(10)]
        events, _, _ = ledger.feed([(0, i, m) for i, m in enumerate(msgs)])
        up.handle(events)
        assert up.can_accept()
        big = [chunks(f"b{i}.dat", bytes([i]) * (5 << 20), 1 << 20) for i in range(4)]
        flat = [m for f in big for m in f]
        events, _, _ = ledger.feed([(0, 10 + i, m) for i, m in enumerate(flat)])
        up.handle(events)
        assert not up.can_accept()
        gate.set()
        wait_until(lambda: len(store.objects) == 14)
        wait_until(up.can_accept)
    finally:
        gate.set()
        up.stop(grace=5)
        registry.close()
        journal.close()


def test_download_regex_selects_files_by_their_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenMSIStream's --download_regex: only files whose relative path matches
    (re.match) are transferred; the others are read and not uploaded."""
    monkeypatch.setattr(uploads_module, "FIRST_DELAY", 0.01)
    options = ProcessorOptions(
        bucket="b",
        topic="t",
        group_id="g",
        output_dir=tmp_path,
        download_regex=re.compile(r".*\.dat$"),
    )
    store = FakeStore()
    ledger, up, journal, registry = new_uploader(tmp_path, store, options)
    try:
        skipped = chunks("skip.bin", b"s" * 700, 300)
        kept = chunks("keep.dat", b"k" * 700, 300)
        ledger.assigned(0, 0, None)
        feed = [(0, i, m) for i, m in enumerate(skipped + kept)]
        events, _, _ = ledger.feed(feed)
        up.handle(events)
        wait_until(lambda: bool(registry.processed_rows()))
        assert list(store.objects) == ["t/keep.dat"]
        assert [row.filename for row in registry.processed_rows()] == ["keep.dat"]
    finally:
        up.stop(grace=5)
        registry.close()
        journal.close()
