"""Several processor processes in one consumer group: scale-out and rebalances."""

from __future__ import annotations

import hashlib
import random
import re
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    CHUNK,
    ProcessorRun,
    committed_offsets,
    encoded_chunks,
    filled_log_ends,
    journal_entries,
    list_objects,
    produce,
    produce_tree,
    read_object,
    write_tree,
)
from s3transfer_stream.kafka import file_partition
from s3transfer_stream.registry import InProgressRow, ProcessedRow, read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRANSFER = re.compile(r"Transferred (.+?) -> s3://")


def tree(rng: random.Random, n: int) -> dict[str, bytes]:
    files = {
        f"scan_{i % 4}/img_{i:03d}.raw": rng.randbytes(rng.randrange(1, 2_500_000))
        for i in range(n)
    }
    for i in range(4):
        files[f"volumes/vol_{i}.bin"] = rng.randbytes(9 * 2**20 + i)
    return files


def start_members(
    bucket: str, topic: str, group: str, root: Path, n: int, *extra: str
) -> list[ProcessorRun]:
    """Starts ``n`` processors in one group and waits until every one owns partitions."""
    runs = [
        ProcessorRun(
            bucket, topic, group, root / f"member{i}", "--part_size", "5", *extra, tag=f"m{i}"
        )
        for i in range(n)
    ]
    for r in runs:
        r.wait_for(
            lambda r=r: "starting from" in r.stderr() or "resuming at" in r.stderr(),
            60,
            "assignment",
        )
    return runs


def transferred(runs: list[ProcessorRun]) -> list[str]:
    return [m.group(1) for r in runs for m in TRANSFER.finditer(r.stderr())]


def journaled(root: Path, topic: str, group: str, n: int) -> list[list[tuple[str, str]]]:
    """(rel_path, outcome) of each member's journal entries, member by member."""
    return [
        [
            (e.rel_path, e.outcome)
            for e in journal_entries(root / f"member{i}" / "LOGS", topic, group)
        ]
        for i in range(n)
    ]


def processed_rows(root: Path, topic: str, group: str, n: int) -> list[str]:
    rows: list[str] = []
    for i in range(n):
        path = root / f"member{i}" / "LOGS" / f"processed_from_{topic}_by_{group}.csv"
        if path.exists():
            rows += [r.rel_filepath.as_posix() for r in read_table(ProcessedRow, path)]
    return rows


def test_three_processes_share_a_topic_and_transfer_each_file_once(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    rng = random.Random(5)
    files = tree(rng, 56)
    src = tmp_path / "src"
    write_tree(src, files)
    topic = new_topic(partitions=6)
    bucket = new_bucket()
    group = f"scale-{uuid.uuid4().hex[:8]}"
    runs = start_members(bucket, topic, group, tmp_path, 3)
    produce_tree(kafka_bootstrap, topic, src, files, partitions=6)
    expected = {f"{topic}/{rel}": len(data) for rel, data in files.items()}
    runs[0].wait_for(lambda: list_objects(s3_client, bucket) == expected, 300, "every object")
    runs[0].wait_for(lambda: len(transferred(runs)) >= len(files), 60, "every transfer line")
    for r in runs:
        assert r.quit() == 0

    done = transferred(runs)
    assert sorted(done) == sorted(files), "each file is transferred exactly once by the group"
    assert sum(1 for r in runs if TRANSFER.search(r.stderr())) >= 2, "the work was shared"
    assert sorted(processed_rows(tmp_path, topic, group, 3)) == sorted(files)
    # What the transfer lines say, the members' journals say: each file once, by the
    # member that logged it; and the group committed everything.
    journals = journaled(tmp_path, topic, group, 3)
    assert sorted(e for j in journals for e in j) == sorted((rel, "transferred") for rel in files)
    for r, j in zip(runs, journals, strict=True):
        assert sorted(m.group(1) for m in TRANSFER.finditer(r.stderr())) == sorted(
            rel for rel, _ in j
        )
    assert committed_offsets(kafka_bootstrap, topic, group) == filled_log_ends(
        kafka_bootstrap, topic
    )
    for rel, data in files.items():
        assert (
            hashlib.sha256(read_object(s3_client, bucket, f"{topic}/{rel}")).digest()
            == hashlib.sha256(data).digest()
        )


def test_survivors_finish_the_files_of_a_killed_member(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    rng = random.Random(6)
    files = tree(rng, 80)
    src = tmp_path / "src"
    write_tree(src, files)
    topic = new_topic(partitions=6)
    bucket = new_bucket()
    group = f"rebal-{uuid.uuid4().hex[:8]}"
    runs = start_members(bucket, topic, group, tmp_path, 3)
    produce_tree(kafka_bootstrap, topic, src, files, partitions=6)
    victim = runs[1]
    victim.wait_for(lambda: "Transferred " in victim.stderr(), 120, "the victim to be busy")
    # Killed once it has committed past a file it transferred, so that the partition's
    # next owner resumes at a committed offset (killed before, it would start from
    # auto.offset.reset and say nothing of "resuming": the takeover check below raced).
    first = TRANSFER.search(victim.stderr())
    assert first is not None
    partition = file_partition(first.group(1), 6)
    victim.wait_for(
        lambda: committed_offsets(kafka_bootstrap, topic, group).get(partition, 0) > 0,
        60,
        f"the victim's commit on partition {partition}",
    )
    victim.proc.send_signal(signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    survivors = [runs[0], runs[2]]

    expected = {f"{topic}/{rel}": len(data) for rel, data in files.items()}
    survivors[0].wait_for(lambda: list_objects(s3_client, bucket) == expected, 300, "every object")
    # An object the victim stored and did not journal before the kill is in the bucket,
    # but its file is still to be transferred by a survivor (CI run of f78609c: three
    # such files, the members quit before the survivors got to them).
    survivors[0].wait_for(
        lambda: (
            set(transferred(runs)) | {rel for rel, _ in journaled(tmp_path, topic, group, 3)[1]}
            == set(files)
        ),
        120,
        "every file transferred by a survivor or journaled by the victim",
    )
    # The victim may have transferred all its files before it died; its partitions are
    # taken over only once its session timed out (10 s), so wait for that before quitting.
    survivors[0].wait_for(
        lambda: any("resuming at offset" in r.stderr() for r in survivors),
        60,
        "a survivor to take over the victim's partitions",
    )
    for r in survivors:
        assert r.quit() == 0
    for rel, data in files.items():
        got = read_object(s3_client, bucket, f"{topic}/{rel}")
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), rel
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # The survivors took over the victim's partitions (after its session timed out).
    taken_over = sum(r.stderr().count("resuming at offset") for r in survivors)
    assert taken_over >= 1
    # The journals hold what the transfer lines say, member by member, and nothing was
    # given up; the survivors committed the victim's partitions to their ends too.
    journals = journaled(tmp_path, topic, group, 3)
    # A file the victim journaled (and committed past) just before the kill has no
    # transfer line anywhere: the survivors rightly skip it (CI run of b606e50).
    done = transferred(runs)
    assert set(done) | {rel for rel, _ in journals[1]} == set(files)
    for i in (0, 2):
        assert sorted(m.group(1) for m in TRANSFER.finditer(runs[i].stderr())) == sorted(
            rel for rel, _ in journals[i]
        )
    # The victim may have died between a journal entry and its transfer line.
    assert {m.group(1) for m in TRANSFER.finditer(victim.stderr())} <= {
        rel for rel, _ in journals[1]
    }
    assert {outcome for j in journals for _, outcome in j} == {"transferred"}
    assert {rel for j in journals for rel, _ in j} == set(files)
    # The survivors' registries list what they journaled (the victim's rows die with it:
    # its next start would restore them from its journal).
    for i in (0, 2):
        path = tmp_path / f"member{i}" / "LOGS" / f"processed_from_{topic}_by_{group}.csv"
        assert sorted(r.rel_filepath.as_posix() for r in read_table(ProcessedRow, path)) == sorted(
            rel for rel, _ in journals[i]
        )
    assert committed_offsets(kafka_bootstrap, topic, group) == filled_log_ends(
        kafka_bootstrap, topic
    )


def test_file_split_across_members_is_reported_and_lands_once_one_member_owns_it(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """An OpenMSIStream-style producer spreads a file's chunks over partitions; with two
    processes each sees half. Both say so; when one leaves, the other completes the file."""
    src = tmp_path / "src"
    data = random.Random(7).randbytes(6 * CHUNK + 5)
    write_tree(src, {"split/file.bin": data})
    topic = new_topic(partitions=2)
    bucket = new_bucket()
    group = f"split-{uuid.uuid4().hex[:8]}"
    runs = start_members(
        bucket, topic, group, tmp_path, 2, "--stall_report_seconds", "3", "--n_threads", "1"
    )
    chunks = encoded_chunks(src, "split/file.bin")
    produce(kafka_bootstrap, topic, [(k, v, i % 2) for i, (k, v) in enumerate(chunks)])
    for r in runs:
        r.wait_for(
            lambda r=r: (
                "split/file.bin has 3 of 7 chunks" in r.stderr()
                or "split/file.bin has 4 of 7 chunks" in r.stderr()
            ),
            120,
            "the report",
        )
        assert "another member of group" in r.stderr()
    for i in range(2):
        path = (
            tmp_path / f"member{i}" / "LOGS" / f"consuming_from_{topic}_by_{group}_in_progress.csv"
        )

        def rows(path: Path = path) -> list[tuple[str, str]]:
            return [(r.rel_filepath.as_posix(), r.status) for r in read_table(InProgressRow, path)]

        # The registry writes a changed table within its flush interval (5 s), so the
        # row can trail the report: reading it once right after the report raced.
        runs[i].wait_for(
            lambda rows=rows: rows() == [("split/file.bin", "waiting_for_chunks")],
            30,
            f"member {i}'s waiting_for_chunks row",
        )
        assert rows() == [("split/file.bin", "waiting_for_chunks")]
    assert list_objects(s3_client, bucket) == {}
    # Neither member can commit past the file's first chunk (offset 0 of each partition),
    # nor has given it up.
    assert committed_offsets(kafka_bootstrap, topic, group) == {}
    assert journaled(tmp_path, topic, group, 2) == [[], []]

    assert runs[1].quit() == 0  # the other member now owns both partitions
    runs[0].wait_for(
        lambda: f"{topic}/split/file.bin" in list_objects(s3_client, bucket), 120, "the file"
    )
    assert runs[0].quit() == 0
    assert read_object(s3_client, bucket, f"{topic}/split/file.bin") == data
    processed = read_table(
        ProcessedRow, tmp_path / "member0" / "LOGS" / f"processed_from_{topic}_by_{group}.csv"
    )
    assert [r.rel_filepath.as_posix() for r in processed] == ["split/file.bin"]
    assert journaled(tmp_path, topic, group, 2) == [[("split/file.bin", "transferred")], []]
    assert committed_offsets(kafka_bootstrap, topic, group) == {0: 4, 1: 3}
