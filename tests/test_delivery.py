"""Delivery guarantees of the redesigned processor, against the real Kafka and S3
(issue 7, findings 2, 4, 7 and 11).

- Finding 2: commits follow each poll batch (not only the 2 s timer) and a commit
  counts as done only once the broker confirmed it, so commits that failed while the
  broker was down are sent again when it is back.
- Finding 4: cooperative-sticky and the KIP-848 ``group.protocol=consumer`` groups get
  their partitions on a restart (``incremental_assign``).
- Finding 7: a file spread over partitions of two threads of one process survives
  another process taking one of them mid-file; committed offsets never go backwards.
- Finding 11: a stuck file that pins the watermark is reported, listed by ``check`` and
  finally given up; SIGTERM with S3 hanging ends within the grace period without
  committing past the file.

Also ``test_partition_paused_at_a_rebalance_is_read_again``, for a bug these tests found.
Three processor bugs they found are fixed and the tests pass (they were xfail with
their diagnosis until then): done runs pruned before the commit was confirmed (files
transferred twice after a rebalance), an application pause librdkafka keeps across a
rebalance (a partition reassigned while paused was never read again), and a file's
lock held across a hanging ``start_multipart`` (SIGTERM took the grace + 60 s).

``test_commits_are_retried_after_the_broker_was_down`` stops and restarts the shared
local broker (``services/kafka.sh``); it always starts it again, and other runs using
the broker at that time see the outage too.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    CHUNK,
    ProcessorRun,
    S3Proxy,
    committed_offsets,
    encoded_chunks,
    kafka_service,
    list_objects,
    log_ends,
    produce,
    produce_tree,
    read_object,
    write_tree,
)
from s3transfer_stream.registry import InProgressRow, ProcessedRow, read_table

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
ASSIGNED = ("starting from", "resuming at offset")


# -- helpers ------------------------------------------------------------------------


def config_with(tmp_path: Path, name: str, consumer: dict[str, str]) -> Path:
    """The packaged local config with keys of its [consumer] section set (replaced
    where the file has them, added otherwise)."""
    import s3transfer_stream

    text = (Path(s3transfer_stream.__file__).parent / "config_files" / "local.config").read_text()
    assert "[consumer]\n" in text
    extra = ""
    for k, v in consumer.items():
        line = re.compile(rf"^{re.escape(k)}\s*=.*$", re.MULTILINE)
        if line.search(text):
            text = line.sub(f"{k} = {v}", text, count=1)
        else:
            extra += f"{k} = {v}\n"
    path = tmp_path / f"{name}.config"
    path.write_text(text.replace("[consumer]\n", "[consumer]\n" + extra, 1))
    return path


def committed_now(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """``committed_offsets``, or {} while the broker cannot answer (restarting)."""
    try:
        return committed_offsets(bootstrap, topic, group)
    except Exception:
        return {}


def at_log_ends(bootstrap: str, topic: str, group: str) -> bool:
    """Whether the group's committed offset of every non-empty partition is its log end."""
    try:
        ends = log_ends(bootstrap, topic)
        got = committed_offsets(bootstrap, topic, group)
    except Exception:  # the broker is still coming back
        return False
    return all(got.get(p, 0) == end for p, end in ends.items())


class CommitSampler:
    """Reads the group's committed offsets every ``interval`` seconds in a thread."""

    def __init__(self, bootstrap: str, topic: str, group: str, n: int, interval: float) -> None:
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import AdminClient

        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, p) for p in range(n)]
        )
        self.group = group
        self.interval = interval
        self.samples: list[tuple[float, dict[int, int]]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = self.admin.list_consumer_group_offsets([self.request])[self.group].result(
                    timeout=10
                )
                got = {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}
                self.samples.append((time.monotonic(), got))
            except Exception:
                self.errors += 1
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def per_partition(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for _, got in self.samples:
            for p, off in got.items():
                out.setdefault(p, []).append(off)
        return out

    def assert_never_backwards(self) -> None:
        for p, seq in self.per_partition().items():
            back = [(a, b) for a, b in itertools.pairwise(seq) if b < a]
            assert not back, f"committed offset of partition {p} went backwards: {back} in {seq}"


def wait_until(predicate: Any, timeout: float, what: str, runs: Iterable[ProcessorRun]) -> None:
    runs = list(runs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for r in runs:
            if r.proc.poll() is not None:
                raise AssertionError(
                    f"processor exited early ({r.proc.returncode}):\n{r.stderr()[-5000:]}"
                )
        time.sleep(0.3)
    tails = "\n".join(f"--- {r.stderr_path.name}\n{r.stderr()[-4000:]}" for r in runs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def wait_check(run: ProcessorRun, pattern: str, timeout: float, what: str) -> None:
    """Types ``check`` every 2 s until its output matches ``pattern`` (a regex)."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        run.command("check")
        try:
            run.wait_for(lambda: rx.search(run.stderr()) is not None, 2, what)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def wait_assigned(run: ProcessorRun, n: int = 1, timeout: float = 60) -> None:
    def count() -> int:
        err = run.stderr()
        return sum(err.count(word) for word in ASSIGNED)

    run.wait_for(lambda: count() >= n, timeout, f"{n} partition assignment line(s)")


def expected_objects(topic: str, files: dict[str, bytes]) -> dict[str, int]:
    return {f"{topic}/{rel}": len(data) for rel, data in files.items()}


def assert_landed(client: Any, bucket: str, topic: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert read_object(client, bucket, f"{topic}/{rel}") == data, rel


def small_files(rng: random.Random, prefix: str, n: int, top: int = 40_000) -> dict[str, bytes]:
    return {f"{prefix}/f{i:03d}.dat": rng.randbytes(rng.randrange(1, top)) for i in range(n)}


def processed_paths(out: Path, topic: str, group: str) -> list[str]:
    path = out / "LOGS" / f"processed_from_{topic}_by_{group}.csv"
    return [r.rel_filepath.as_posix() for r in read_table(ProcessedRow, path)]


def in_progress_status(out: Path, topic: str, group: str) -> dict[str, str]:
    path = out / "LOGS" / f"consuming_from_{topic}_by_{group}_in_progress.csv"
    return {r.rel_filepath.as_posix(): r.status for r in read_table(InProgressRow, path)}


def produce_round_robin(bootstrap: str, topic: str, src: Path, rels: Iterable[str], n: int) -> int:
    """Produces file i (all its chunks) to partition i % n, so every partition gets files."""
    msgs = [(k, v, i % n) for i, rel in enumerate(rels) for k, v in encoded_chunks(src, rel)]
    return produce(bootstrap, topic, msgs)


# -- finding 2: commits --------------------------------------------------------------


def test_commits_follow_each_poll_batch_not_only_the_timer(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """A steady trickle of one-chunk files: the committed offset moves after (about)
    every poll batch, far more often than the 2 s commit timer alone would move it,
    and it reaches the log end once the files have landed."""
    rng = random.Random(21)
    files = small_files(rng, "trickle", 40, top=2000)
    src = tmp_path / "src"
    write_tree(src, files)
    topic = new_topic(partitions=1)
    bucket = new_bucket()
    group = f"batch-{uuid.uuid4().hex[:8]}"
    run = ProcessorRun(bucket, topic, group, tmp_path / "out", "--n_threads", "1")
    wait_assigned(run)
    sampler = CommitSampler(kafka_bootstrap, topic, group, 1, 0.1)
    try:
        t0 = time.monotonic()
        for rel in files:  # one file every 0.2 s for 8 s
            produce_tree(kafka_bootstrap, topic, src, [rel], partitions=1)
            time.sleep(0.2)
        streamed = time.monotonic() - t0
        run.wait_for(
            lambda: list_objects(s3_client, bucket) == expected_objects(topic, files),
            60,
            "every object",
        )
        run.wait_for(lambda: at_log_ends(kafka_bootstrap, topic, group), 30, "commits at the end")
    finally:
        sampler.stop()
    assert run.quit() == 0
    assert_landed(s3_client, bucket, topic, files)
    sampler.assert_never_backwards()
    during = [got.get(0) for t, got in sampler.samples if t0 <= t <= t0 + streamed]
    distinct = sorted({v for v in during if v is not None})
    # The 2 s timer alone gives at most streamed / 2 + 1 distinct values (5 in 8 s).
    assert len(distinct) >= streamed / 2 + 4, (
        f"the committed offset took only {len(distinct)} values in {streamed:.1f} s "
        f"of streaming ({distinct}): commits do not follow the poll batches"
    )


@pytest.mark.slow
@pytest.mark.parametrize("session", ["steady", "rejoin"])
def test_commits_are_retried_after_the_broker_was_down(
    session: str,
    tmp_path: Path,
    new_topic: Any,
    new_bucket: Any,
    s3_client: Any,
    kafka_bootstrap: str,
) -> None:
    """Files of partition 0 are read while S3 hangs; the broker is stopped, S3 comes
    back and the files land while the broker is down, so their commits cannot succeed.
    Once the broker is back, partition 0's commit must reach its log end in the same
    run, although nothing new arrives there (a commit recorded as done when it was
    only sent is never sent again). Files produced to partition 1 during and after the
    outage land too, each once.

    ``steady``: session.timeout.ms 45 s, longer than the outage, so the members'
    sessions do not expire (the old code fails here: its commit failed with
    COORDINATOR_LOAD_IN_PROGRESS and was never sent again); the group may still
    rebalance once after the restart. ``rejoin``: the local config's 6 s, so the
    members' sessions expire and they rejoin after the outage."""
    rng = random.Random(22)
    first = small_files(rng, "before", 6)
    during = small_files(rng, "during", 4)
    after = small_files(rng, "after", 4)
    src = tmp_path / "src"
    write_tree(src, {**first, **during, **after})
    topic = new_topic(partitions=2)
    bucket = new_bucket()
    group = f"outage-{uuid.uuid4().hex[:8]}"
    proxy = S3Proxy(int(os.environ["S3TS_S3_PORT"]))
    env = {**os.environ, "ENDPOINT_URL": proxy.url}
    producer_errors: list[BaseException] = []
    try:
        # Debug lines (reads, commits) go to LOGS/S3TransferStreamProcessor.log only.
        settings = {"session.timeout.ms": "45000"} if session == "steady" else {}
        config = config_with(tmp_path, session, settings)
        run = ProcessorRun(
            bucket,
            topic,
            group,
            tmp_path / "out",
            "--config",
            str(config),
            "--n_threads",
            "2",
            "--logger_file_level",
            "debug",
            env=env,
        )
        wait_assigned(run, 2)
        proxy.stall()
        chunks = [kv for rel in first for kv in encoded_chunks(src, rel)]
        n_first = produce(kafka_bootstrap, topic, [(k, v, 0) for k, v in chunks])
        wait_check(run, f"{n_first} messages read", 30, "the files to be read")
        assert list_objects(s3_client, bucket) == {}
        t_stop = time.monotonic()
        try:
            kafka_service("stop")
            proxy.allow()  # the files land while the broker is down
            run.wait_for(
                lambda: list_objects(s3_client, bucket) == expected_objects(topic, first),
                60,
                "the files read before the outage",
            )
            time.sleep(3)  # commits are attempted (and fail) while the broker is down

            def produce_during() -> None:
                try:
                    msgs = [(k, v, 1) for rel in during for k, v in encoded_chunks(src, rel)]
                    produce(kafka_bootstrap, topic, msgs)  # delivered once the broker is back
                except BaseException as err:
                    producer_errors.append(err)

            bg = threading.Thread(target=produce_during, daemon=True)
            bg.start()
            time.sleep(1)
        finally:
            kafka_service("start")
        outage = time.monotonic() - t_stop
        bg.join(90)
        assert not producer_errors, producer_errors
        # A rebalance after the restart may find the partitions paused (uploads at
        # their bound during the S3 stall): they must be read again all the same.
        wait_until(
            lambda: committed_now(kafka_bootstrap, topic, group).get(0) == n_first,
            60,
            f"partition 0's commit at its log end {n_first} after a {outage:.0f} s outage",
            [run],
        )
        produce(
            kafka_bootstrap,
            topic,
            [(k, v, 1) for rel in after for k, v in encoded_chunks(src, rel)],
        )
        everything = {**first, **during, **after}
        run.wait_for(
            lambda: list_objects(s3_client, bucket) == expected_objects(topic, everything),
            90,
            "the files produced during and after the outage",
        )
        run.wait_for(lambda: at_log_ends(kafka_bootstrap, topic, group), 60, "commits at the end")
        assert run.quit() == 0
        assert_landed(s3_client, bucket, topic, everything)
        processed = processed_paths(tmp_path / "out", topic, group)
        assert set(processed) == set(everything)
        again = sorted({rel for rel in processed if processed.count(rel) > 1})
        # Failed commits during the outage must not make done files forgotten.
        assert again == [], f"transferred twice: {again}"
    finally:
        proxy.close()


# -- finding 4: assignors -------------------------------------------------------------


def restart_transfers_new_files(
    tmp_path: Path,
    topic: str,
    bucket: str,
    s3_client: Any,
    kafka_bootstrap: str,
    config: Path,
    name: str,
) -> ProcessorRun:
    rng = random.Random(name)
    first = small_files(rng, "first", 5)
    second = small_files(rng, "second", 5)
    second["second/multi.bin"] = rng.randbytes(3 * CHUNK + 7)
    src = tmp_path / "src"
    write_tree(src, {**first, **second})
    group = f"{name}-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    args = ("--config", str(config), "--n_threads", "2")
    produce_round_robin(kafka_bootstrap, topic, src, first, 2)
    run1 = ProcessorRun(bucket, topic, group, out, *args, tag="1")
    run1.wait_for(
        lambda: list_objects(s3_client, bucket) == expected_objects(topic, first),
        60,
        "the first run's files",
    )
    run1.wait_for(lambda: at_log_ends(kafka_bootstrap, topic, group), 30, "first run's commits")
    assert run1.quit() == 0
    assert set(committed_offsets(kafka_bootstrap, topic, group)) == {0, 1}

    run2 = ProcessorRun(bucket, topic, group, out, *args, tag="2")
    wait_assigned(run2, 2)
    produce_round_robin(kafka_bootstrap, topic, src, second, 2)
    both = {**first, **second}
    run2.wait_for(
        lambda: list_objects(s3_client, bucket) == expected_objects(topic, both),
        60,
        "the second run's files",
    )
    run2.wait_for(lambda: at_log_ends(kafka_bootstrap, topic, group), 30, "second run's commits")
    assert run2.quit() == 0
    assert_landed(s3_client, bucket, topic, both)
    assert "must be made using incremental_assign" not in run2.stderr()
    assert sorted(processed_paths(out, topic, group)) == sorted(both)
    assert run2.stderr().count("Transferred ") == len(second)  # nothing done twice
    return run2


def test_cooperative_sticky_restart_gets_its_partitions(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    config = config_with(tmp_path, "coop", {"partition.assignment.strategy": "cooperative-sticky"})
    restart_transfers_new_files(
        tmp_path, new_topic(partitions=2), new_bucket(), s3_client, kafka_bootstrap, config, "coop"
    )


def test_consumer_group_protocol_restart_gets_its_partitions(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """KIP-848 (``group.protocol = consumer``): the settings the broker now owns
    (session.timeout.ms and heartbeat.interval.ms of the local config) are dropped
    with a warning instead of making the consumer refuse to start."""
    config = config_with(tmp_path, "kip848", {"group.protocol": "consumer"})
    run2 = restart_transfers_new_files(
        tmp_path,
        new_topic(partitions=2),
        new_bucket(),
        s3_client,
        kafka_bootstrap,
        config,
        "kip848",
    )
    assert "Ignoring consumer setting session.timeout.ms" in run2.stderr()


@pytest.mark.slow
def test_two_cooperative_processes_one_joining_mid_run(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """2 processes x 2 threads, cooperative-sticky, the second joining while files
    flow: every file lands byte for byte, once, and commits reach the log end."""
    rng = random.Random(24)
    files = small_files(rng, "coop", 60, top=300_000)
    for i in range(3):
        files[f"coop/multi_{i}.bin"] = rng.randbytes(6 * 2**20 + i)
    rels = list(files)
    src = tmp_path / "src"
    write_tree(src, files)
    topic = new_topic(partitions=4)
    bucket = new_bucket()
    group = f"coopjoin-{uuid.uuid4().hex[:8]}"
    config = config_with(tmp_path, "coop", {"partition.assignment.strategy": "cooperative-sticky"})
    args = ("--config", str(config), "--n_threads", "2", "--part_size", "5")
    sampler = CommitSampler(kafka_bootstrap, topic, group, 4, 0.3)
    try:
        a = ProcessorRun(bucket, topic, group, tmp_path / "a", *args, tag="a")
        wait_assigned(a, 4)
        # Before the join (with a multipart file), while the second process joins, after.
        produce_tree(kafka_bootstrap, topic, src, rels[:20] + rels[-3:-2], partitions=4)
        b = ProcessorRun(bucket, topic, group, tmp_path / "b", *args, tag="b")
        for rel in rels[20:40] + rels[-2:-1]:
            produce_tree(kafka_bootstrap, topic, src, [rel], partitions=4)
            time.sleep(0.1)
        wait_assigned(b)
        a.wait_for(lambda: "were reassigned" in a.stderr(), 30, "partitions to move to b")
        for rel in rels[40:-3] + rels[-1:]:
            produce_tree(kafka_bootstrap, topic, src, [rel], partitions=4)
            time.sleep(0.05)
        wait_until(
            lambda: list_objects(s3_client, bucket) == expected_objects(topic, files),
            120,
            "every object",
            [a, b],
        )
        wait_until(lambda: at_log_ends(kafka_bootstrap, topic, group), 60, "commits", [a, b])
    finally:
        sampler.stop()
    assert a.quit() == 0 and b.quit() == 0
    assert_landed(s3_client, bucket, topic, files)
    done = processed_paths(tmp_path / "a", topic, group) + processed_paths(
        tmp_path / "b", topic, group
    )
    assert sorted(done) == sorted(files), "each file transferred exactly once by the group"
    assert "Transferred " in b.stderr(), "the joining process took part"
    assert "must be made using incremental_assign" not in a.stderr() + b.stderr()
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    sampler.assert_never_backwards()


# -- finding 7: revocation --------------------------------------------------------------


@pytest.mark.slow
def test_spread_file_survives_a_partition_moving_away_and_back(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """An OpenMSIStream-style file spread over the 3 partitions of a topic, read by a
    process with 2 threads (cooperative-sticky). Mid-file a second process joins and
    the rebalance moves one of those partitions to it; after it leaves, the first
    process owns all partitions again and the file lands byte for byte. Committed
    offsets never go backwards."""
    rng = random.Random(25)
    data = rng.randbytes(12 * CHUNK + 99)
    others = small_files(rng, "other", 6)
    src = tmp_path / "src"
    write_tree(src, {"spread/file.bin": data, **others})
    chunks = encoded_chunks(src, "spread/file.bin")
    topic = new_topic(partitions=3)
    bucket = new_bucket()
    group = f"revoke-{uuid.uuid4().hex[:8]}"
    config = config_with(tmp_path, "coop", {"partition.assignment.strategy": "cooperative-sticky"})
    args = ("--config", str(config), "--stall_report_seconds", "600")
    sampler = CommitSampler(kafka_bootstrap, topic, group, 3, 0.3)
    try:
        a = ProcessorRun(bucket, topic, group, tmp_path / "a", *args, "--n_threads", "2", tag="a")
        wait_assigned(a, 3)
        produce_tree(kafka_bootstrap, topic, src, list(others)[:3], partitions=3)
        produce(kafka_bootstrap, topic, [(k, v, i % 3) for i, (k, v) in enumerate(chunks[:6])])
        wait_check(a, r"spread/file\.bin \(in progress: 6/13 chunks", 30, "the first half read")

        b = ProcessorRun(bucket, topic, group, tmp_path / "b", *args, "--n_threads", "1", tag="b")
        wait_assigned(b)
        a.wait_for(lambda: "were reassigned" in a.stderr(), 60, "the partition to move")
        produce(
            kafka_bootstrap,
            topic,
            [(k, v, (i + 6) % 3) for i, (k, v) in enumerate(chunks[6:])],
        )
        produce_tree(kafka_bootstrap, topic, src, list(others)[3:], partitions=3)
        wait_check(b, r"\tspread/file\.bin \(", 30, "the new owner to hold chunks of the file")
        time.sleep(2)
        assert f"{topic}/spread/file.bin" not in list_objects(s3_client, bucket)
        assert b.quit() == 0

        key = f"{topic}/spread/file.bin"
        a.wait_for(lambda: key in list_objects(s3_client, bucket), 90, "the spread file")
        a.wait_for(lambda: at_log_ends(kafka_bootstrap, topic, group), 60, "commits at the end")
    finally:
        sampler.stop()
    assert a.quit() == 0
    assert read_object(s3_client, bucket, f"{topic}/spread/file.bin") == data
    assert_landed(s3_client, bucket, topic, others)
    assert processed_paths(tmp_path / "a", topic, group).count("spread/file.bin") == 1
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert len(sampler.samples) > 10
    sampler.assert_never_backwards()


@pytest.mark.slow
def test_partition_paused_at_a_rebalance_is_read_again(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """S3 hangs, so the uploads reach their bound and the processor pauses its
    partitions; a second process joins (eager assignor: everything is revoked and
    reassigned); S3 comes back. The partition the first process got back must be read
    again: every file, old and new, lands and commits reach the log end."""
    rng = random.Random(28)
    # 8 files of 2 chunks, 4-8 MiB in all: over the upload bound of one 5 MiB part
    # (--max_parts_in_flight 1 --part_size 5), counted in bytes.
    first = {
        f"paused/f{i:03d}.dat": rng.randbytes(CHUNK + rng.randrange(1, CHUNK)) for i in range(8)
    }
    later = small_files(rng, "later", 4)
    src = tmp_path / "src"
    write_tree(src, {**first, **later})
    topic = new_topic(partitions=2)
    bucket = new_bucket()
    group = f"paused-{uuid.uuid4().hex[:8]}"
    proxy = S3Proxy(int(os.environ["S3TS_S3_PORT"]))
    try:
        env = {**os.environ, "ENDPOINT_URL": proxy.url}
        # A short grace: the revocation waits at most that long for the hanging uploads.
        a = ProcessorRun(
            bucket,
            topic,
            group,
            tmp_path / "a",
            "--n_threads",
            "1",
            "--shutdown_grace_seconds",
            "3",
            "--max_parts_in_flight",
            "1",
            "--part_size",
            "5",
            env=env,
            tag="a",
        )
        wait_assigned(a, 2)
        proxy.stall()
        produce_round_robin(kafka_bootstrap, topic, src, first, 2)
        # The uploads hang: at the bound consumption pauses.
        wait_check(a, r"\b([6-9]|1[0-6]) messages read", 30, "the upload bound to be reached")
        time.sleep(1)
        b = ProcessorRun(bucket, topic, group, tmp_path / "b", "--n_threads", "1", tag="b")
        wait_assigned(b)
        a.wait_for(lambda: a.stderr().count("were reassigned") >= 1, 30, "the rebalance")
        wait_assigned(a, 3)  # one of the two partitions came back
        proxy.allow()
        produce_round_robin(kafka_bootstrap, topic, src, later, 2)
        everything = {**first, **later}
        wait_until(
            lambda: list_objects(s3_client, bucket) == expected_objects(topic, everything),
            25,
            "every file (the partition the first process got back must be read)",
            [a, b],
        )
        wait_until(lambda: at_log_ends(kafka_bootstrap, topic, group), 30, "commits", [a, b])
        assert b.quit() == 0 and a.quit() == 0
    finally:
        proxy.close()
    assert_landed(s3_client, bucket, topic, {**first, **later})


# -- finding 11: stuck files and bounded shutdown ---------------------------------------


def test_stuck_file_is_reported_listed_and_given_up(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """A producer died after the first chunks of a file while other files keep
    arriving in the same partition: the file pinning the watermark is reported,
    listed by ``check``, then given up (``abandoned``) and committed past."""
    rng = random.Random(26)
    dead = rng.randbytes(6 * CHUNK)
    others = small_files(rng, "live", 40, top=5000)
    src = tmp_path / "src"
    write_tree(src, {"dead/producer.bin": dead, **others})
    topic = new_topic(partitions=1)
    bucket = new_bucket()
    group = f"stuck-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    run = ProcessorRun(
        bucket,
        topic,
        group,
        out,
        "--n_threads",
        "1",
        "--stall_report_seconds",
        "3",
        "--abandon_seconds",
        "14",
        "--abandon_offset_gap",
        "5",
    )
    wait_assigned(run)
    produce(
        kafka_bootstrap, topic, [(k, v, 0) for k, v in encoded_chunks(src, "dead/producer.bin")[:2]]
    )
    rels = list(others)
    stop = threading.Event()
    sent: list[str] = []

    def stream() -> None:
        for rel in rels:
            if stop.is_set():
                return
            produce_tree(kafka_bootstrap, topic, src, [rel], partitions=1)
            sent.append(rel)
            time.sleep(0.4)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        pinned = re.compile(
            r"WARNING.*dead/producer\.bin (has kept offsets .* uncommitted|has 2 of 6 chunks.*"
            r"Its offsets stay uncommitted)"
        )
        run.wait_for(lambda: pinned.search(run.stderr()) is not None, 30, "the pin warning")
        assert "Giving up dead/producer.bin" not in run.stderr()
        run.command("check")
        listed = re.compile(r"\tdead/producer\.bin \((waiting for chunks|in progress): 2/6 chunks")
        run.wait_for(lambda: listed.search(run.stderr()) is not None, 10, "check listing it")
        run.wait_for(lambda: "Giving up dead/producer.bin" in run.stderr(), 30, "the give-up")
    finally:
        stop.set()
        streamer.join(60)
    run.wait_for(
        lambda: in_progress_status(out, topic, group).get("dead/producer.bin") == "abandoned",
        15,
        "the abandoned registry row",
    )
    run.wait_for(lambda: len(list_objects(s3_client, bucket)) == len(sent), 30, "the live files")
    run.wait_for(lambda: at_log_ends(kafka_bootstrap, topic, group), 30, "commits at the end")
    assert run.quit() == 0
    landed = list_objects(s3_client, bucket)
    assert f"{topic}/dead/producer.bin" not in landed
    assert landed == {f"{topic}/{rel}": len(others[rel]) for rel in sent}
    assert len(sent) >= 10
    assert "recorded as abandoned" in run.stderr()
    assert in_progress_status(out, topic, group) == {"dead/producer.bin": "abandoned"}


@pytest.mark.parametrize(
    "what",
    ["single_put", "multipart"],
)
def test_sigterm_with_s3_hanging_ends_within_the_grace_and_commits_nothing_past(
    what: str,
    tmp_path: Path,
    new_topic: Any,
    new_bucket: Any,
    s3_client: Any,
    kafka_bootstrap: str,
) -> None:
    """S3 accepts connections and never answers while a file is being uploaded;
    SIGTERM with ``--shutdown_grace_seconds 5``: the process exits 0 well within the
    grace plus a margin, nothing is committed past the file, and the next run (S3
    answering again) transfers it."""
    rng = random.Random(27)
    if what == "multipart":
        files = {"hang/multi.bin": rng.randbytes(11 * 2**20 + 5), "hang/small.dat": b"s" * 1000}
        n_expected = 24
        # The first 5 MiB part (10 chunks) is read and its upload hangs; the upload
        # bound then pauses consumption.
        read = r"\b[12]\d messages read"
    else:
        files = {"hang/small.dat": b"s" * 1000, "hang/two.bin": rng.randbytes(CHUNK + 3)}
        n_expected = 3
        read = r"\b3 messages read"
    src = tmp_path / "src"
    write_tree(src, files)
    topic = new_topic(partitions=1)
    bucket = new_bucket()
    group = f"sigterm-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    proxy = S3Proxy(int(os.environ["S3TS_S3_PORT"]))
    try:
        env = {**os.environ, "ENDPOINT_URL": proxy.url}
        run = ProcessorRun(
            bucket,
            topic,
            group,
            out,
            "--part_size",
            "5",
            "--shutdown_grace_seconds",
            "5",
            env=env,
            tag="hang",
        )
        wait_assigned(run)
        proxy.stall()
        n = produce_tree(kafka_bootstrap, topic, src, files, partitions=1)
        assert n == n_expected
        wait_check(run, read, 30, "the files to be read")
        time.sleep(1)
        t0 = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        try:
            rc: int | None = run.proc.wait(40)
        except subprocess.TimeoutExpired:
            rc = None
            # What it is waiting for: every thread's stack, into its stderr.
            run.proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
        took = time.monotonic() - t0
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.wait(1 if rc is None else 10)  # kills it if it is still running
        stopped = run.stderr()
        assert "SIGTERM received" in stopped
        assert committed_offsets(kafka_bootstrap, topic, group).get(0, 0) == 0
        assert list_objects(s3_client, bucket) == {}
    finally:
        proxy.close()

    run2 = ProcessorRun(bucket, topic, group, out, "--part_size", "5", tag="after")
    run2.wait_for(
        lambda: list_objects(s3_client, bucket) == expected_objects(topic, files),
        90,
        "the files after the restart",
    )
    run2.wait_for(lambda: at_log_ends(kafka_bootstrap, topic, group), 30, "commits at the end")
    assert run2.quit() == 0
    assert_landed(s3_client, bucket, topic, files)
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # Last, so that the rest is checked even when the shutdown is too slow.
    assert rc is not None, (
        f"still running {took:.0f} s after SIGTERM with --shutdown_grace_seconds 5:\n"
        + stopped[-12000:]
    )
    assert rc == 0, stopped[-3000:]
    assert took < 40
