"""Producer side against the real Kafka broker: what lands on the topic, and the registry."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import log_ends
from kafka_fixtures import Record, read_topic
from s3transfer_stream import _core
from s3transfer_stream.cli import upload_file
from s3transfer_stream.kafka import file_partition, make_producer
from s3transfer_stream.producer import DirectoryUploader, send_file
from s3transfer_stream.registry import (
    ProducerRegistry,
    UploadedRow,
    UploadInProgressRow,
    read_table,
)

pytestmark = pytest.mark.integration

CHUNK = 16384
LAG = 0.5


def _data(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    block = hashlib.sha512(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha512(block).digest()
        out += block
    return bytes(out[:n])


def _by_file(records: list[Record]) -> dict[str, list[tuple[Record, Any]]]:
    """Decoded chunks grouped by relative path (subdir/filename)."""
    files: dict[str, list[tuple[Record, Any]]] = defaultdict(list)
    for record in records:
        chunk = _core.decode_chunk(record.value)
        rel = f"{chunk.subdir_str}/{chunk.filename}" if chunk.subdir_str else chunk.filename
        files[rel].append((record, chunk))
    return files


def _check_file(
    entries: list[tuple[Record, Any]], source: bytes, subdir: str, filename: str, n_partitions: int
) -> None:
    """One complete, consistent copy of ``source`` (possibly several times, if re-sent)."""
    rel = f"{subdir}/{filename}" if subdir else filename
    n_total = entries[0][1].n_total_chunks
    assert len(entries) % n_total == 0
    partitions = {record.partition for record, _ in entries}
    assert partitions == {file_partition(rel, n_partitions)}
    by_index = {}
    for record, chunk in entries:
        assert chunk.n_total_chunks == n_total
        assert chunk.subdir_str == subdir
        assert chunk.filename == filename
        assert chunk.file_hash == hashlib.sha512(source).digest()
        assert record.key == _core.message_key(subdir, filename, chunk.chunk_i, n_total)
        by_index[chunk.chunk_i] = chunk
    assert sorted(by_index) == list(range(1, n_total + 1))
    rebuilt = bytearray()
    for i in range(1, n_total + 1):
        assert by_index[i].chunk_offset_write == len(rebuilt)
        rebuilt += by_index[i].data
    assert bytes(rebuilt) == source


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[Any]:
    p = make_producer({"bootstrap.servers": kafka_bootstrap}, chunk_size=CHUNK)
    yield p
    p.flush(10)


# --------------------------------------------------------------------------- send_file


def test_send_files_and_read_them_back(
    kafka_bootstrap: str, new_topic: Callable[..., str], producer: Any, tmp_path: Path
) -> None:
    topic = new_topic(3)
    root = tmp_path / "root"
    files = {
        "multi.dat": _data(5 * CHUNK + 123, 1),
        "empty.dat": b"",
        "données/sub dir/ünï cødé 数据.bin": _data(3 * CHUNK, 2),
        "exact.dat": _data(CHUNK, 3),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    delivered: list[tuple[str, int]] = []
    results = {}
    for rel in files:
        results[rel] = send_file(
            producer,
            topic,
            root / rel,
            root=root,
            chunk_size=CHUNK,
            on_delivery=lambda i, err, rel=rel: delivered.append((rel, i)) if err is None else None,
        )
    for rel, result in results.items():
        assert result.complete, (rel, result.errors)
        assert result.n_delivered == result.n_chunks == max(1, -(-len(files[rel]) // CHUNK))
        assert result.size == len(files[rel])
        assert result.file_hash == hashlib.sha512(files[rel]).digest()
    assert sorted(delivered) == sorted(
        (rel, i) for rel, r in results.items() for i in range(1, r.n_chunks + 1)
    )

    by_file = _by_file(read_topic(kafka_bootstrap, topic))
    assert set(by_file) == set(files)
    for rel, data in files.items():
        subdir, _, name = rel.rpartition("/")
        _check_file(by_file[rel], data, subdir, name, 3)
    empty = by_file["empty.dat"]
    assert len(empty) == 1 and empty[0][1].data == b"" and empty[0][1].n_total_chunks == 1
    assert empty[0][0].key == "_empty.dat_chunk_1_of_1"
    nested = by_file["données/sub dir/ünï cødé 数据.bin"]
    assert nested[0][0].key.startswith("données_sub dir_ünï cødé 数据.bin_chunk_")


def test_send_with_threads_and_without_root(
    kafka_bootstrap: str, new_topic: Callable[..., str], producer: Any, tmp_path: Path
) -> None:
    topic = new_topic(3)
    data = _data(40 * CHUNK + 7, 4)
    path = tmp_path / "sub" / "threads.dat"
    path.parent.mkdir()
    path.write_bytes(data)
    result = send_file(producer, topic, path, chunk_size=CHUNK, n_threads=3, batch_size=4)
    assert result.complete and result.n_delivered == 41 and result.subdir == ""
    by_file = _by_file(read_topic(kafka_bootstrap, topic))
    assert list(by_file) == ["threads.dat"]
    _check_file(by_file["threads.dat"], data, "", "threads.dat", 3)


def test_send_a_subset_of_chunks(
    kafka_bootstrap: str, new_topic: Callable[..., str], producer: Any, tmp_path: Path
) -> None:
    topic = new_topic(3)
    path = tmp_path / "part.dat"
    path.write_bytes(_data(6 * CHUNK, 5))
    result = send_file(producer, topic, path, root=tmp_path, chunk_size=CHUNK, chunks={2, 5, 6})
    assert result.complete and result.n_delivered == 3 and result.n_chunks == 6
    records = read_topic(kafka_bootstrap, topic)
    assert sorted(r.key for r in records) == [f"_part.dat_chunk_{i}_of_6" for i in (2, 5, 6)]


def test_upload_file_cli(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = new_topic(3)
    data = _data(3 * CHUNK + 1, 6)
    path = tmp_path / "dir" / "cli file.dat"
    path.parent.mkdir()
    path.write_bytes(data)
    argv = [str(path), "--topic_name", topic, "--chunk_size", str(CHUNK), "--n_threads", "2"]
    assert upload_file.main(argv) == 0
    err = capsys.readouterr().err
    assert f"to partition {file_partition('cli file.dat', 3)} of the {topic} topic" in err
    assert not list(path.parent.glob("*.log"))  # no log file next to the file
    by_file = _by_file(read_topic(kafka_bootstrap, topic))
    _check_file(by_file["cli file.dat"], data, "", "cli file.dat", 3)

    assert upload_file.main([str(path), "--topic_name", f"{topic}-missing"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"topic '{topic}-missing' does not exist" in err
    assert len(err.splitlines()) == 1


def _name_on_missing_partition(n_real: int, n_claimed: int) -> str:
    return next(
        f"lost{i}.dat" for i in range(1000) if file_partition(f"lost{i}.dat", n_claimed) >= n_real
    )


def test_undeliverable_chunks_are_reported(
    new_topic: Callable[..., str],
    producer: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunks the broker refuses (here: a partition the topic does not have) are
    counted as failed, and UploadDataFile exits with status 1 saying so."""
    topic = new_topic(3)
    path = tmp_path / _name_on_missing_partition(3, 50)
    path.write_bytes(_data(2 * CHUNK, 16))
    failed: list[int] = []
    result = send_file(
        producer,
        topic,
        path,
        chunk_size=CHUNK,
        n_partitions=50,
        on_delivery=lambda i, err: failed.append(i) if err is not None else None,
    )
    assert not result.complete
    assert result.n_failed == 2 and result.n_delivered == 0 and sorted(failed) == [1, 2]
    assert any("PARTITION" in e for e in result.errors), result.errors

    monkeypatch.setattr(upload_file, "partition_count", lambda client, topic: 50)
    assert upload_file.main([str(path), "--topic_name", topic]) == 1
    err = capsys.readouterr().err
    assert f"1 of 1 chunk(s) of {path} could not be delivered to the {topic} topic" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- directory


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def _registry(root: Path, topic: str) -> tuple[list[UploadInProgressRow], list[UploadedRow]]:
    logs = root / "LOGS"
    return (
        read_table(UploadInProgressRow, logs / f"upload_to_{topic}_in_progress.csv"),
        read_table(UploadedRow, logs / f"uploaded_to_{topic}.csv"),
    )


def _uploader(root: Path, producer: Any, topic: str, **kwargs: Any) -> DirectoryUploader:
    options: dict[str, Any] = {"chunk_size": CHUNK, "watchdog_lag_time": LAG}
    options.update(kwargs)
    return DirectoryUploader(root, producer, topic, **options)


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_directory_sends_new_files_only_eligible_ones(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    producer: Any,
    tmp_path: Path,
    polling: bool,
) -> None:
    topic = new_topic(3)
    root = tmp_path / "watched"
    root.mkdir()
    (root / "before.dat").write_bytes(b"already here")  # not sent: no --upload_existing
    uploader = _uploader(root, producer, topic, use_polling_observer=polling)
    uploader.start()
    try:
        time.sleep(0.3)
        wanted = {
            "a.dat": _data(4 * CHUNK + 5, 7),
            "sub/catalog.csv": b"id;name\n1;x\n",
            "sub/deeper/ü.bin": _data(CHUNK * 2, 8),
        }
        unwanted = {
            ".hidden": b"h",
            "x.log": b"log",
            "sub/.b/c.dat": b"c",
            "LOGS/x.dat": b"l",
        }
        created = time.monotonic()
        for rel, data in {**unwanted, **wanted}.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        waited = _wait(lambda: uploader.status().uploaded == len(wanted), LAG + 5, "the new files")
        # lag, +1 s for the polling observer's period, + sending
        assert waited <= LAG + (2.5 if polling else 1.5), waited
        assert time.monotonic() - created >= LAG
        time.sleep(LAG + 0.5)  # time for anything else to (wrongly) go out
        status = uploader.status()
        assert status.uploaded == len(wanted) and status.failed == 0
    finally:
        final = uploader.stop()
    assert sorted(final.uploaded_paths) == sorted(wanted)
    by_file = _by_file(read_topic(kafka_bootstrap, topic))
    assert set(by_file) == set(wanted)
    for rel, data in wanted.items():
        subdir, _, name = rel.rpartition("/")
        _check_file(by_file[rel], data, subdir, name, 3)
    in_progress, completed = _registry(root, topic)
    assert in_progress == []
    assert sorted(row.rel_filepath.as_posix() for row in completed) == sorted(wanted)
    assert {row.rel_filepath.as_posix(): row.n_chunks for row in completed}["a.dat"] == 5


def test_directory_upload_existing_skip_completed_and_resend_modified(
    kafka_bootstrap: str, new_topic: Callable[..., str], producer: Any, tmp_path: Path
) -> None:
    topic = new_topic(3)
    root = tmp_path / "watched"
    (root / "s").mkdir(parents=True)
    first = _data(3 * CHUNK, 9)
    (root / "s" / "f.dat").write_bytes(first)
    (root / "g.dat").write_bytes(b"small")
    old = time.time() - 60
    os.utime(root / "s" / "f.dat", (old, old))
    os.utime(root / "g.dat", (old, old))

    with _uploader(root, producer, topic, upload_existing=True) as uploader:
        _wait(lambda: uploader.status().uploaded == 2, 10, "the existing files")
    assert len(read_topic(kafka_bootstrap, topic)) == 3 + 1

    # A restart skips both: uploaded and unchanged.
    with _uploader(root, producer, topic, upload_existing=True) as uploader:
        _wait(lambda: uploader.status().skipped == 2, 10, "the files to be skipped")
        time.sleep(LAG + 0.5)
        assert uploader.status().uploaded == 0
    assert len(read_topic(kafka_bootstrap, topic)) == 4

    # Modified while stopped: sent again in full at the next start.
    second = _data(4 * CHUNK, 10)
    (root / "s" / "f.dat").write_bytes(second)
    with _uploader(root, producer, topic, upload_existing=True) as uploader:
        _wait(lambda: uploader.status().uploaded == 1, LAG + 10, "the modified file")
        # Modified while running (after being sent): sent again in full.
        third = _data(2 * CHUNK, 11)
        (root / "s" / "f.dat").write_bytes(third)
        _wait(lambda: uploader.status().uploaded == 2, LAG + 10, "the file modified again")
        assert uploader.status().skipped == 1  # g.dat
    records = read_topic(kafka_bootstrap, topic)
    chunks = [_core.decode_chunk(r.value) for r in records]
    hashes = [c.file_hash for c in chunks if c.filename == "f.dat"]
    assert hashes.count(hashlib.sha512(first).digest()) == 3
    assert hashes.count(hashlib.sha512(second).digest()) == 4
    assert hashes.count(hashlib.sha512(third).digest()) == 2
    in_progress, completed = _registry(root, topic)
    assert in_progress == []
    assert [row.rel_filepath.as_posix() for row in completed].count("s/f.dat") == 3


def test_directory_failed_file_stays_in_progress(
    new_topic: Callable[..., str], producer: Any, tmp_path: Path
) -> None:
    """A file whose chunks cannot be delivered is retried, then reported as failed and
    left in progress in the registry for the next run (never listed as uploaded)."""
    topic = new_topic(3)
    root = tmp_path / "watched"
    root.mkdir()
    name = _name_on_missing_partition(3, 50)
    with _uploader(root, producer, topic, n_partitions=50) as uploader:
        (root / name).write_bytes(_data(2 * CHUNK, 17))
        _wait(lambda: uploader.status().failed == 1, LAG + 15, "the failure")
        assert uploader.status().uploaded == 0
    in_progress, completed = _registry(root, topic)
    assert completed == []
    assert [(r.rel_filepath.as_posix(), r.chunks_to_send) for r in in_progress] == [(name, {1, 2})]


def _previous_run(
    root: Path, topic: str, rel: str, n_chunks: int, delivered: list[int], file_hash: bytes | None
) -> None:
    """Registry rows (and our versions log) as a run stopped mid-file leaves them."""
    registry = ProducerRegistry(root / "LOGS", topic)
    registry.register_started(rel, Path(rel).name, n_chunks)
    for i in delivered:
        registry.register_chunk_delivered(rel, Path(rel).name, n_chunks, i)
    registry.close()
    if file_hash is not None:
        st = (root / rel).stat()
        line = (
            f'{{"path": "{rel}", "size": {st.st_size}, "mtime_ns": {st.st_mtime_ns}, '
            f'"hash": "{file_hash.hex()}", "chunk_size": {CHUNK}, "n_chunks": {n_chunks}, '
            '"state": "sending"}\n'
        )
        (root / "LOGS" / f"upload_to_{topic}_versions.jsonl").write_text(line)


@pytest.mark.parametrize("case", ["unchanged", "changed", "no_version_record"])
def test_directory_resumes_only_missing_chunks(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    producer: Any,
    tmp_path: Path,
    case: str,
) -> None:
    topic = new_topic(3)
    root = tmp_path / "watched"
    (root / "sub").mkdir(parents=True)
    data = _data(8 * CHUNK - 3, 12)
    rel = "sub/resume.dat"
    (root / rel).write_bytes(data)
    recorded_hash = hashlib.sha512(data if case != "changed" else b"older").digest()
    _previous_run(
        root, topic, rel, 8, [1, 2, 3, 5], None if case == "no_version_record" else recorded_hash
    )
    assert _registry(root, topic)[0][0].chunks_to_send == {4, 6, 7, 8}

    with _uploader(root, producer, topic) as uploader:  # no upload_existing: resumed anyway
        _wait(lambda: uploader.status().uploaded == 1, 10, "the resumed file")
    records = read_topic(kafka_bootstrap, topic)
    sent = sorted(_core.decode_chunk(r.value).chunk_i for r in records)
    assert sent == ([4, 6, 7, 8] if case == "unchanged" else list(range(1, 9)))
    if case != "unchanged":
        _check_file(next(iter(_by_file(records).values())), data, "sub", "resume.dat", 3)
    assert {r.partition for r in records} == {file_partition(rel, 3)}
    in_progress, completed = _registry(root, topic)
    assert in_progress == []
    assert [row.rel_filepath.as_posix() for row in completed] == [rel]


def test_stop_mid_file_then_resume(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """A real stop while a file is being sent: the next run sends exactly the rest."""
    topic = new_topic(3)
    root = tmp_path / "watched"
    root.mkdir()
    n = 400
    data = _data(n * CHUNK, 13)
    (root / "big.dat").write_bytes(data)
    old = time.time() - 60
    os.utime(root / "big.dat", (old, old))
    # A tiny producer queue makes sending slow enough to stop in the middle.
    slow = make_producer(
        {"bootstrap.servers": kafka_bootstrap, "queue.buffering.max.messages": "4"},
        chunk_size=CHUNK,
    )
    uploader = _uploader(root, slow, topic, upload_existing=True, batch_size=2, n_threads=1)
    uploader.start()
    _wait(lambda: uploader.status().chunks_delivered >= 20, 20, "the first chunks")
    first = uploader.stop()
    assert first.uploaded == 0 and first.in_progress == 1
    in_progress, _ = _registry(root, topic)
    assert len(in_progress) == 1
    delivered = in_progress[0].chunks_delivered
    assert 20 <= len(delivered) < n
    assert len(read_topic(kafka_bootstrap, topic)) >= len(delivered)

    with _uploader(root, make_producer({"bootstrap.servers": kafka_bootstrap}), topic) as again:
        _wait(lambda: again.status().uploaded == 1, 30, "the rest of the file")
    records = read_topic(kafka_bootstrap, topic)
    counts: dict[int, int] = defaultdict(int)
    first_copy: dict[int, Record] = {}
    for record in records:
        chunk_i = _core.decode_chunk(record.value).chunk_i
        counts[chunk_i] += 1
        first_copy.setdefault(chunk_i, record)
    assert sorted(counts) == list(range(1, n + 1))
    # Chunks the registry listed as delivered were not sent again.
    assert all(counts[i] == 1 for i in delivered)
    _check_file(
        [(r, _core.decode_chunk(r.value)) for r in first_copy.values()], data, "", "big.dat", 3
    )
    in_progress, completed = _registry(root, topic)
    assert in_progress == [] and len(completed) == 1


# --------------------------------------------------------------------------- CLI


def _start_cli(
    root: Path, topic: str, *extra: str, output: Any = subprocess.PIPE
) -> subprocess.Popen[str]:
    """``output``: where stdout and stderr go (a pipe is read only at the end, so a
    program logging more than a pipe holds needs a file)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "s3transfer_stream.cli.upload_directory",
            str(root),
            "--topic_name",
            topic,
            "--chunk_size",
            str(CHUNK),
            "--watchdog_lag_time",
            str(LAG),
            *extra,
        ],
        stdin=subprocess.PIPE,
        stdout=output,
        stderr=output,
        text=True,
        env=os.environ.copy(),
    )


def test_cli_check_and_quit_on_stdin(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(3)
    root = tmp_path / "watched"
    root.mkdir()
    (root / "existing.dat").write_bytes(_data(2 * CHUNK, 14))
    process = _start_cli(root, topic, "--upload_existing", "--update_seconds", "-1")
    try:
        completed_csv = root / "LOGS" / f"uploaded_to_{topic}.csv"
        _wait(lambda: len(read_table(UploadedRow, completed_csv)) == 1, 30, "existing.dat")
        (root / "new" / "later.dat").parent.mkdir()
        (root / "new" / "later.dat").write_bytes(_data(3 * CHUNK, 15))
        _wait(lambda: len(read_table(UploadedRow, completed_csv)) == 2, 30, "later.dat")
        assert process.stdin is not None
        process.stdin.write("check\n")
        process.stdin.flush()
        time.sleep(0.5)
        process.stdin.write("quit\n")
        process.stdin.flush()
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert "Of the 2 file(s) found in" in err
    assert "2 uploaded in this run" in err
    assert "Uploaded 2 file(s) (5 chunks" in err  # the final summary
    assert (root / "LOGS" / "DataFileUploadDirectory.log").exists()
    by_file = _by_file(read_topic(kafka_bootstrap, topic))
    assert set(by_file) == {"existing.dat", "new/later.dat"}


def test_cli_sigterm_stops_cleanly(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(1)
    root = tmp_path / "watched"
    root.mkdir()
    process = _start_cli(root, topic)
    try:
        time.sleep(2.0)  # started and listening
        (root / "x.dat").write_bytes(b"payload")
        completed_csv = root / "LOGS" / f"uploaded_to_{topic}.csv"
        _wait(lambda: len(read_table(UploadedRow, completed_csv)) == 1, 30, "x.dat")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "SIGTERM received" in err
    assert "Uploaded 1 file(s)" in err
    assert [r.key for r in read_topic(kafka_bootstrap, topic)] == ["_x.dat_chunk_1_of_1"]


def _whole(entries: list[tuple[Record, Any]], source: bytes) -> bool:
    """Whether the chunks in ``entries`` (duplicates allowed) make up ``source``."""
    by_index = {chunk.chunk_i: chunk for _, chunk in entries}
    n_total = entries[0][1].n_total_chunks
    if set(by_index) != set(range(1, n_total + 1)):
        return False
    ordered = sorted(by_index.values(), key=lambda c: c.chunk_offset_write)
    return b"".join(bytes(c.data) for c in ordered) == source


def test_cli_killed_mid_run_then_restarted_loses_no_file(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """SIGKILL while files are being sent and completed (the registry's latest rows only
    in memory: they reach its files within 5 s), then a restart on the same directory:
    every file ends up whole in the topic and as uploaded in the registry; the files of
    the killed run's last seconds may have been sent twice."""
    topic = new_topic(3)
    root = tmp_path / "watched"
    sources = {
        f"d{i % 4}/f{i:04d}.dat": _data(CHUNK * (i % 3) + 100 + i, 30 + i) for i in range(1500)
    }
    for rel, data in sources.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    first_log = (tmp_path / "first.log").open("w")
    first = _start_cli(root, topic, "--upload_existing", "--update_seconds", "-1", output=first_log)
    try:
        _wait(lambda: sum(log_ends(kafka_bootstrap, topic).values()) >= 200, 60, "200 messages")
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    sent_before = set(_by_file(read_topic(kafka_bootstrap, topic)))
    assert 0 < len(sent_before) < len(sources), "killed before the end, else this shows nothing"

    first_log.close()
    second_log = (tmp_path / "second.log").open("w")
    second = _start_cli(
        root, topic, "--upload_existing", "--update_seconds", "-1", output=second_log
    )
    logs = root / "LOGS"
    try:
        _wait(
            lambda: len(read_table(UploadedRow, logs / f"uploaded_to_{topic}.csv")) >= len(sources),
            120,
            "every file in the registry as uploaded",
        )
        assert second.stdin is not None
        second.stdin.write("quit\n")
        second.stdin.flush()
        second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
        second_log.close()
    err = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    uploaded = read_table(UploadedRow, logs / f"uploaded_to_{topic}.csv")
    assert {r.rel_filepath.as_posix() for r in uploaded} == set(sources)
    assert read_table(UploadInProgressRow, logs / f"upload_to_{topic}_in_progress.csv") == []
    files = _by_file(read_topic(kafka_bootstrap, topic))
    assert set(files) == set(sources)
    assert [rel for rel, data in sources.items() if not _whole(files[rel], data)] == []
