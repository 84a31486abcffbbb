"""Regression tests, against the real Kafka and S3, for findings 1, 3 and 8 of the
delivery-guarantee issue: each lost or failed a file on the processor before the
lifecycle redesign."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    ProcessorRun,
    committed_offsets,
    encoded_chunks,
    journal_entries,
    journal_outcomes,
    list_objects,
    produce,
    read_object,
    write_tree,
)
from s3transfer_stream import _core
from s3transfer_stream.registry import InProgressRow, ProcessedRow, read_table

pytestmark = pytest.mark.integration

MiB = 1 << 20


def registry_tables(
    out: Path, topic: str, group: str
) -> tuple[list[InProgressRow], list[ProcessedRow]]:
    logs = out / "LOGS"
    in_progress = read_table(
        InProgressRow, logs / f"consuming_from_{topic}_by_{group}_in_progress.csv"
    )
    processed = read_table(ProcessedRow, logs / f"processed_from_{topic}_by_{group}.csv")
    return in_progress, processed


def crafted(name: str, chunk_i: int, n: int, offset: int, data: bytes, file_hash: bytes) -> bytes:
    return _core.encode_chunk(
        name, file_hash, hashlib.sha512(data).digest(), offset, chunk_i, n, "", "", data, 1.0
    )


def test_a_finished_file_sent_again_smaller_or_same_size_lands_again(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """Finding 1: an instrument rewrites a file in place (fewer chunks, newer mtime;
    then the same number of chunks): every version is transferred, the last one stays."""
    topic = new_topic(partitions=1)
    bucket = new_bucket()
    group = f"g-{uuid.uuid4().hex[:8]}"
    run = ProcessorRun(bucket, topic, group, tmp_path / "out")
    run.wait_for(lambda: "Listening to the" in run.stderr(), 60, "startup")
    src = tmp_path / "src"
    key = f"{topic}/inst/run.dat"
    versions = [os.urandom(5 * 524288 + 7), os.urandom(2 * 524288 + 1), os.urandom(2 * 524288 + 9)]
    sent = 0
    for n, data in enumerate(versions, 1):
        write_tree(src, {"inst/run.dat": data})
        os.utime(src / "inst/run.dat", (1_700_000_000 + n, 1_700_000_000 + n))
        sent += produce(
            kafka_bootstrap, topic, ((k, v, 0) for k, v in encoded_chunks(src, "inst/run.dat"))
        )
        run.wait_for(
            lambda n=n: run.stderr().count("Transferred inst/run.dat") == n, 120, f"version {n}"
        )
        assert read_object(s3_client, bucket, key) == data
        # The n-th transfer line is the n-th journal entry, of this version's size.
        entries = journal_entries(tmp_path / "out" / "LOGS", topic, group)
        assert [(e.rel_path, e.outcome, e.size) for e in entries] == [
            ("inst/run.dat", "transferred", len(v)) for v in versions[:n]
        ]
    assert run.quit() == 0
    assert sent == 6 + 3 + 3
    assert committed_offsets(kafka_bootstrap, topic, group) == {0: sent}
    in_progress, processed = registry_tables(tmp_path / "out", topic, group)
    assert in_progress == []
    assert [(r.rel_filepath.as_posix(), r.n_chunks) for r in processed] == [
        ("inst/run.dat", 6),
        ("inst/run.dat", 3),
        ("inst/run.dat", 3),
    ]


def test_crafted_small_messages_cannot_fill_memory_or_fail_a_real_file(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """Finding 3: messages of 1 byte at the end of a part of files claiming 1000
    chunks once filled the reassembly budget (a zero-filled part per byte), and the
    next real file failed and was committed past. Finding 8: a forged chunk of the
    same path with more chunks once pushed out the real file in progress."""
    topic = new_topic(partitions=1)
    bucket = new_bucket()
    group = f"g-{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    real = os.urandom(12 * MiB + 5)
    write_tree(src, {"real.bin": real})
    chunks = encoded_chunks(src, "real.bin")
    stray = [
        (f"s{k}", crafted(f"stray{k}.dat", 2, 1000, 5 * MiB - 1, b"x", bytes(64)), 0)
        for k in range(40)
    ]
    forged = ("f", crafted("real.bin", 1, 50, 0, b"forged", bytes([7]) * 64), 0)
    messages = [*stray, (chunks[0][0], chunks[0][1], 0), forged]
    messages += [(k, v, 0) for k, v in chunks[1:]]
    n = produce(kafka_bootstrap, topic, messages)
    run = ProcessorRun(
        bucket, topic, group, tmp_path / "out", "--part_size", "5", "--max_buffer_mib", "10"
    )
    run.wait_for(lambda: f"{topic}/real.bin" in list_objects(s3_client, bucket), 120, "the file")
    assert read_object(s3_client, bucket, f"{topic}/real.bin") == real
    run.command("check")
    run.wait_for(lambda: "stray0.dat" in run.stderr(), 30, "check listing the strays")
    # The strays and the forgery never complete: they keep the offsets before them
    # uncommitted (until abandoned), never the real file.
    assert committed_offsets(kafka_bootstrap, topic, group).get(0, 0) < n
    # The first stray is message 0: nothing at all can be committed yet.
    assert committed_offsets(kafka_bootstrap, topic, group).get(0, 0) == 0
    assert run.quit() == 0
    err = run.stderr()
    assert "Failed to transfer" not in err and "cannot be reassembled" not in err
    assert "Failed (0): none" in err  # the check listing: no failed file
    assert list_objects(s3_client, bucket) == {f"{topic}/real.bin": len(real)}
    # Nothing was given up: the journal holds the real file's transfer alone; the
    # registry lists the strays as in progress (none failed) and the real file processed.
    out = tmp_path / "out"
    assert journal_outcomes(out / "LOGS", topic, group) == [("real.bin", "transferred")]
    in_progress, processed = registry_tables(out, topic, group)
    # The forgery is dropped when it is read while the real file is in progress. Read
    # again after the real file finished (its partition re-read from a deferred chunk),
    # it starts an instance of its own, in progress with its 50 chunks: the limitation
    # test_faults.py xfails for stray copies of another version. Seen once in CI.
    rows = [(r.rel_filepath.as_posix(), r.status, r.n_chunks) for r in in_progress]
    rows = [row for row in rows if row != ("real.bin", "in_progress", 50)]
    assert sorted(rows) == sorted((f"stray{k}.dat", "in_progress", 1000) for k in range(40))
    assert [(r.rel_filepath.as_posix(), r.n_chunks) for r in processed] == [
        ("real.bin", len(chunks))
    ]
    assert committed_offsets(kafka_bootstrap, topic, group).get(0, 0) == 0


def test_stray_files_are_abandoned_and_then_committed_past(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """Findings 3 and 11: files that will never complete are given up after
    --abandon_seconds once the log moved on, recorded as abandoned, and committed past."""
    topic = new_topic(partitions=1)
    bucket = new_bucket()
    group = f"g-{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    files = {f"ok/{i}.dat": os.urandom(1000 + i) for i in range(8)}
    write_tree(src, files)
    stray = [(f"s{k}", crafted(f"stray{k}.dat", 2, 3, 10, b"x", bytes(64)), 0) for k in range(3)]
    good = [(k, v, 0) for rel in files for k, v in encoded_chunks(src, rel)]
    n = produce(kafka_bootstrap, topic, stray + good)
    run = ProcessorRun(
        bucket,
        topic,
        group,
        tmp_path / "out",
        "--abandon_seconds",
        "4",
        "--abandon_offset_gap",
        "5",
        "--stall_report_seconds",
        "2",
    )
    run.wait_for(lambda: run.stderr().count("Giving up stray") == 3, 90, "the strays given up")
    run.wait_for(
        lambda: committed_offsets(kafka_bootstrap, topic, group).get(0) == n, 60, "commit at end"
    )
    assert run.quit() == 0
    assert list_objects(s3_client, bucket) == {f"{topic}/{rel}": len(d) for rel, d in files.items()}
    from s3transfer_stream.registry import InProgressRow, read_table

    rows = read_table(
        InProgressRow,
        tmp_path / "out" / "LOGS" / f"consuming_from_{topic}_by_{group}_in_progress.csv",
    )
    assert sorted((r.rel_filepath.as_posix(), r.status) for r in rows) == [
        (f"stray{k}.dat", "abandoned") for k in range(3)
    ]
    # The three "Giving up" lines are journal entries that account for their offsets.
    assert journal_outcomes(tmp_path / "out" / "LOGS", topic, group) == sorted(
        [(rel, "transferred") for rel in files] + [(f"stray{k}.dat", "abandoned") for k in range(3)]
    )
    _, processed = registry_tables(tmp_path / "out", topic, group)
    assert sorted(r.rel_filepath.as_posix() for r in processed) == sorted(files)
