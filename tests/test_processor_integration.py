"""S3TransferStreamProcessor end to end, against the real Kafka broker and S3 server."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from helpers import (
    CHUNK,
    ProcessorRun,
    S3Proxy,
    committed_offsets,
    encoded_chunks,
    filled_log_ends,
    journal_entries,
    journal_outcomes,
    list_objects,
    multipart_parts,
    produce,
    produce_tree,
    rand_bytes,
    read_object,
    write_tree,
)
from s3transfer_stream import _core
from s3transfer_stream.registry import InProgressRow, ProcessedRow, read_table

pytestmark = pytest.mark.integration


def list_topics(bootstrap: str) -> set[str]:
    from confluent_kafka.admin import AdminClient

    topics: dict[str, Any] = (
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics
    )
    return set(topics)


def tree_of_54(rng: random.Random) -> dict[str, bytes]:
    files = {
        "empty.dat": b"",
        "one_byte.bin": b"\x07",
        "two_chunks.bin": rng.randbytes(2 * CHUNK),
        "two_chunks_plus_one.bin": rng.randbytes(2 * CHUNK + 1),
        "a/b/c/deep.txt": b"deep\n" * 1000,
        "données/résumé_数据.dat": rng.randbytes(70_000),
        "big/large.bin": rng.randbytes(64 * 2**20 + 12_345),
        "catalog.csv": b"id;name\n1;x\n",
    }
    for i in range(46):
        files[f"sub{i % 5}/nested{i % 3}/file_{i:02d}.dat"] = rng.randbytes(
            rng.randrange(1, 3 * CHUNK)
        )
    return files


def registry_tables(
    out: Path, topic: str, group: str
) -> tuple[list[InProgressRow], list[ProcessedRow]]:
    logs = out / "LOGS"
    in_progress = read_table(
        InProgressRow, logs / f"consuming_from_{topic}_by_{group}_in_progress.csv"
    )
    processed = read_table(ProcessedRow, logs / f"processed_from_{topic}_by_{group}.csv")
    return in_progress, processed


def test_tree_of_54_files_lands_identical_and_validated(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    rng = random.Random(1)
    files = tree_of_54(rng)
    src = tmp_path / "src"
    write_tree(src, files)
    topic = new_topic(partitions=3)
    bucket = new_bucket()
    produce_tree(kafka_bootstrap, topic, src, files, partitions=3)

    group = f"g-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    run = ProcessorRun(bucket, topic, group, out)
    expected = {f"{topic}/{rel}": len(data) for rel, data in files.items()}
    run.wait_for(lambda: list_objects(s3_client, bucket) == expected, 300, "all 54 objects")
    run.wait_for(lambda: run.stderr().count("Transferred ") >= len(files), 60, "54 transfer lines")
    # Each transfer line follows its journal entry (written before the registry row).
    logs = out / "LOGS"
    assert journal_outcomes(logs, topic, group) == sorted((rel, "transferred") for rel in files)
    run.command("check")
    run.wait_for(lambda: "files transferred so far" in run.stderr(), 30, "the check output")
    assert run.quit() == 0
    err = run.stderr()

    for rel, data in files.items():
        key = f"{topic}/{rel}"
        got = read_object(s3_client, bucket, key)
        assert hashlib.sha512(got).digest() == hashlib.sha512(data).digest(), rel
        line = next(
            ln for ln in err.splitlines() if f"Transferred {rel} -> s3://{bucket}/{key} " in ln
        )
        assert (
            "validated:" in line and "confirmed by the server" in line
        ) or "re-read object matches" in line
    big_line = next(ln for ln in err.splitlines() if "Transferred big/large.bin" in ln)
    assert " parts)" in big_line, big_line  # a multipart upload
    # ... of 9 parts of the default 8 MiB (its ETag says so), as the line says.
    assert "9 parts)" in big_line, big_line
    assert multipart_parts(s3_client, bucket, f"{topic}/big/large.bin") == 9
    assert multipart_parts(s3_client, bucket, f"{topic}/two_chunks.bin") == 0
    entries = {e.rel_path: e for e in journal_entries(logs, topic, group)}
    assert {rel: (e.key, e.size) for rel, e in entries.items()} == {
        rel: (f"{topic}/{rel}", len(data)) for rel, data in files.items()
    }
    assert f"{len(files)} files transferred so far" in err
    assert f"and {len(files)} files were transferred to the {bucket} bucket" in err
    # Every message consumed was committed: the group stands at the log end.
    assert committed_offsets(kafka_bootstrap, topic, group) == filled_log_ends(
        kafka_bootstrap, topic
    )

    in_progress, processed = registry_tables(out, topic, group)
    assert in_progress == []
    assert sorted(r.rel_filepath.as_posix() for r in processed) == sorted(files)
    # Consolidated: no per-thread file is left (ours have private names, upstream's a _t suffix).
    assert not list(logs.glob("s3transfer-stream_processed_*.csv"))
    assert not list(logs.glob(f"processed_from_{topic}_by_{group}_t*.csv"))
    # No multipart upload was left open.
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_out_of_order_duplicates_and_bad_files(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """Chunks spread over partitions in random order (as OpenMSIStream producers do),
    with duplicates; plus a file with a corrupted chunk and one whose hash mismatches."""
    rng = random.Random(2)
    good = {
        "g/one.bin": rng.randbytes(5 * CHUNK + 17),
        "g/two.bin": rng.randbytes(3 * CHUNK),
        "three.txt": b"three" * 7,
        "g/big.bin": rng.randbytes(20 * 2**20 + 5),
    }
    src = tmp_path / "src"
    write_tree(src, good)
    topic = new_topic(partitions=4)
    bucket = new_bucket()
    msgs: list[tuple[str, Any, int]] = []
    for rel in good:
        for key, value in encoded_chunks(src, rel):
            partition = rng.randrange(4)
            msgs.append((key, value, partition))
            if rng.random() < 0.3:  # sent twice, as a producer retry would
                msgs.append((key, value, partition))

    # A file with one corrupted chunk: the data no longer matches its chunk hash.
    write_tree(src, {"bad/corrupt.bin": rng.randbytes(3 * CHUNK)})
    corrupt = encoded_chunks(src, "bad/corrupt.bin")
    broken = bytearray(corrupt[1][1])
    broken[-100] ^= 0xFF
    corrupt[1] = (corrupt[1][0], bytes(broken))
    msgs += [(k, v, 0) for k, v in corrupt]

    # A file whose chunks are each intact but whose file hash is not theirs.
    content = rng.randbytes(2 * CHUNK + 3)
    wrong_hash = hashlib.sha512(b"something else").digest()
    pieces = [content[i : i + CHUNK] for i in range(0, len(content), CHUNK)]
    for i, piece in enumerate(pieces):
        value = _core.encode_chunk(
            "mismatch.bin",
            wrong_hash,
            hashlib.sha512(piece).digest(),
            i * CHUNK,
            i + 1,
            len(pieces),
            "bad",
            "",
            piece,
            1.0,
        )
        msgs.append((_core.message_key("bad", "mismatch.bin", i + 1, len(pieces)), value, 1))
    rng.shuffle(msgs)
    produce(kafka_bootstrap, topic, msgs)

    group = f"g-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    run = ProcessorRun(bucket, topic, group, out)
    expected = {f"{topic}/{rel}": len(data) for rel, data in good.items()}
    run.wait_for(lambda: list_objects(s3_client, bucket) == expected, 180, "the good objects")
    run.wait_for(
        lambda: run.stderr().count("cannot be reassembled") >= 2, 60, "both bad files reported"
    )
    assert run.quit() == 0

    for rel, data in good.items():
        assert read_object(s3_client, bucket, f"{topic}/{rel}") == data, rel
    objects = list_objects(s3_client, bucket)
    assert f"{topic}/bad/corrupt.bin" not in objects
    assert f"{topic}/bad/mismatch.bin" not in objects
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    in_progress, processed = registry_tables(out, topic, group)
    status = {r.rel_filepath.as_posix(): r.status for r in in_progress}
    assert status == {"bad/corrupt.bin": "failed", "bad/mismatch.bin": "mismatched_hash"}
    assert sorted(r.rel_filepath.as_posix() for r in processed) == sorted(good)
    err = run.stderr()
    assert "bad/corrupt.bin" in err and "chunk 2/3 is corrupted" in err
    # What the two "cannot be reassembled" lines report is recorded: the journal gives
    # both up with their reason, and their messages are committed past like the rest.
    logs = out / "LOGS"
    given_up = {
        e.rel_path: (e.outcome, e.reason)
        for e in journal_entries(logs, topic, group)
        if not e.transferred
    }
    assert sorted(given_up) == ["bad/corrupt.bin", "bad/mismatch.bin"]
    assert given_up["bad/corrupt.bin"][0] == "failed"
    assert "chunk 2/3 is corrupted" in given_up["bad/corrupt.bin"][1]
    assert given_up["bad/mismatch.bin"][0] == "mismatched_hash"
    assert journal_outcomes(logs, topic, group) == sorted(
        [(rel, "transferred") for rel in good]
        + [("bad/corrupt.bin", "failed"), ("bad/mismatch.bin", "mismatched_hash")]
    )
    assert committed_offsets(kafka_bootstrap, topic, group) == filled_log_ends(
        kafka_bootstrap, topic
    )


def test_sigterm_shuts_down_cleanly_with_summary(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    src = tmp_path / "src"
    files = {"x.dat": b"x" * 1000}
    write_tree(src, files)
    topic = new_topic(partitions=1)
    bucket = new_bucket()
    produce_tree(kafka_bootstrap, topic, src, files, partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    run = ProcessorRun(bucket, topic, group, out)
    run.wait_for(lambda: f"{topic}/x.dat" in list_objects(s3_client, bucket), 120, "the object")
    run.wait_for(lambda: "Transferred x.dat" in run.stderr(), 30, "the transfer line")
    assert read_object(s3_client, bucket, f"{topic}/x.dat") == files["x.dat"]
    assert run.terminate() == 0
    err = run.stderr()
    assert "SIGTERM received: shutting down" in err
    assert (
        "1 total messages were consumed, 1 messages were successfully processed, and 1 files" in err
    )
    _, processed = registry_tables(out, topic, group)
    assert [r.rel_filepath.as_posix() for r in processed] == ["x.dat"]
    assert journal_outcomes(out / "LOGS", topic, group) == [("x.dat", "transferred")]
    # The one message was committed before the shutdown ended.
    assert committed_offsets(kafka_bootstrap, topic, group) == {0: 1}
    # A restart with the same group reads nothing again: the offset was committed.
    run2 = ProcessorRun(bucket, topic, group, out)
    run2.wait_for(lambda: "Listening to the" in run2.stderr(), 60, "startup")
    assert run2.quit() == 0
    assert "0 total messages were consumed" in run2.stderr()
    # ... and so recorded nothing new.
    _, processed = registry_tables(out, topic, group)
    assert [r.rel_filepath.as_posix() for r in processed] == ["x.dat"]
    assert journal_outcomes(out / "LOGS", topic, group) == [("x.dat", "transferred")]
    assert committed_offsets(kafka_bootstrap, topic, group) == {0: 1}


def test_closed_stdin_does_not_stop_the_processor(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    topic = new_topic(partitions=1)
    bucket = new_bucket()
    group = f"g-{uuid.uuid4().hex[:8]}"
    run = ProcessorRun(bucket, topic, group, tmp_path / "out")
    run.wait_for(lambda: "Listening to the" in run.stderr(), 60, "startup")
    assert run.proc.stdin is not None
    run.proc.stdin.close()
    run.wait_for(lambda: run.stderr().count("] .") >= 1, 30, "an alive marker after stdin closed")
    assert run.proc.poll() is None
    # Alive as the marker says, and still working: a file sent now lands and is committed.
    src = tmp_path / "src"
    write_tree(src, {"after.dat": b"sent after stdin closed"})
    produce_tree(kafka_bootstrap, topic, src, ["after.dat"], partitions=1)
    run.wait_for(lambda: f"{topic}/after.dat" in list_objects(s3_client, bucket), 60, "the file")
    assert read_object(s3_client, bucket, f"{topic}/after.dat") == b"sent after stdin closed"
    run.wait_for(
        lambda: committed_offsets(kafka_bootstrap, topic, group) == {0: 1}, 30, "the commit"
    )
    assert run.terminate() == 0


def test_bad_config_and_unreachable_services_fail_clearly(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any
) -> None:
    bucket = new_bucket()
    topic = new_topic(partitions=1)
    cli = [sys.executable, "-m", "s3transfer_stream.cli.processor"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=120)

    def recorded(output_dir: Path) -> list[str]:
        """Files a run left under its output dir other than its own log file: a
        registry table, a journal, a claim."""
        return sorted(
            p.relative_to(output_dir).as_posix()
            for p in output_dir.rglob("*")
            if p.is_file() and p.name != "S3TransferStreamProcessor.log"
        )

    cfg = tmp_path / "no_s3.config"
    cfg.write_text(
        "[broker]\nbootstrap.servers = $LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS\n"
        "[consumer]\ngroup.id = create_new\n"
    )
    r = run(
        bucket, "--topic_name", topic, "--config", str(cfg), "--output_dir", str(tmp_path / "o1")
    )
    assert r.returncode == 2
    assert "[s3]" in r.stderr and str(cfg) in r.stderr
    assert recorded(tmp_path / "o1") == []

    missing_topic = "no-such-topic-" + uuid.uuid4().hex[:6]
    r = run(bucket, "--topic_name", missing_topic, "--output_dir", str(tmp_path / "o2"))
    assert r.returncode == 2
    assert "does not exist" in r.stderr and missing_topic in r.stderr
    assert recorded(tmp_path / "o2") == []
    assert missing_topic not in list_topics(os.environ["LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS"])

    missing_bucket = "missing-" + uuid.uuid4().hex[:6]
    r = run(missing_bucket, "--topic_name", topic, "--output_dir", str(tmp_path / "o3"))
    assert r.returncode == 1
    assert "cannot use bucket" in r.stderr and missing_bucket in r.stderr
    assert os.environ["SECRET_KEY_ID"] not in r.stderr
    assert recorded(tmp_path / "o3") == []
    # The bucket it could not use is still missing (the processor never creates one).
    with pytest.raises(ClientError) as exc:
        s3_client.head_bucket(Bucket=missing_bucket)
    assert exc.value.response["Error"]["Code"] in ("404", "NoSuchBucket")
    assert list_objects(s3_client, bucket) == {}

    r = run("bad/bucket", "--topic_name", topic)
    assert r.returncode == 2 and "bucket name 'bad/bucket'" in r.stderr


def test_access_denied_is_permanent_recorded_committed_past_and_redriven_by_sending_again(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """The bucket refuses writes (AccessDenied): retrying cannot help, so each file is
    recorded as failed, with its reason, and committed past; the next run does not
    read them again, and sending the file again transfers it."""
    proxy = S3Proxy(int(os.environ["S3TS_S3_PORT"]))
    try:
        src = tmp_path / "src"
        files = {"first.dat": b"1" * 5000, "later/second.bin": os.urandom(6 * 2**20 + 3)}
        write_tree(src, files)
        topic = new_topic(partitions=1)
        bucket = new_bucket()
        group = f"g-{uuid.uuid4().hex[:8]}"
        out = tmp_path / "out"
        env = {**os.environ, "ENDPOINT_URL": proxy.url}
        run = ProcessorRun(bucket, topic, group, out, "--part_size", "5", env=env, tag="denied")
        run.wait_for(lambda: "Listening to the" in run.stderr(), 60, "startup")
        proxy.deny()
        n_messages = produce_tree(kafka_bootstrap, topic, src, files, partitions=1)
        run.wait_for(lambda: run.stderr().count("Failed to transfer") >= 2, 120, "both failures")
        run.wait_for(
            lambda: committed_offsets(kafka_bootstrap, topic, group) == {0: n_messages},
            60,
            "the commit past the failed files",
        )
        assert run.quit() == 0
        assert proxy.denied > 0
        assert list_objects(s3_client, bucket) == {}
        in_progress, processed = registry_tables(out, topic, group)
        assert {r.rel_filepath.as_posix(): r.status for r in in_progress} == {
            "first.dat": "failed",
            "later/second.bin": "failed",
        }
        assert processed == []
        err = run.stderr()
        assert "AccessDenied" in err and "first.dat" in err and "committed past" in err
        # The journal gives both files up, with S3's answer as the reason.
        reasons = {
            e.rel_path: (e.outcome, "AccessDenied" in e.reason)
            for e in journal_entries(out / "LOGS", topic, group)
        }
        assert reasons == {"first.dat": ("failed", True), "later/second.bin": ("failed", True)}

        proxy.allow()
        run2 = ProcessorRun(bucket, topic, group, out, "--part_size", "5", env=env, tag="retry")
        run2.wait_for(lambda: "Listening to the" in run2.stderr(), 60, "startup")
        time.sleep(3)
        assert list_objects(s3_client, bucket) == {}
        assert committed_offsets(kafka_bootstrap, topic, group) == {0: n_messages}
        # The operator re-drives the files by sending them again.
        produce_tree(kafka_bootstrap, topic, src, files, partitions=1)
        expected = {f"{topic}/{rel}": len(data) for rel, data in files.items()}
        run2.wait_for(lambda: list_objects(s3_client, bucket) == expected, 120, "the re-sent files")
        run2.wait_for(lambda: run2.stderr().count("Transferred ") >= 2, 30, "transfer lines")
        assert run2.quit() == 0
        for rel, data in files.items():
            assert read_object(s3_client, bucket, f"{topic}/{rel}") == data
        in_progress, processed = registry_tables(out, topic, group)
        assert sorted(r.rel_filepath.as_posix() for r in processed) == sorted(files)
        assert in_progress == []
        # The journal adds the two transfers after the two failures.
        entries = journal_entries(out / "LOGS", topic, group)
        assert [e.outcome for e in entries] == ["failed", "failed", "transferred", "transferred"]
        assert sorted(e.rel_path for e in entries[2:]) == sorted(files)
        assert committed_offsets(kafka_bootstrap, topic, group) == {0: 2 * n_messages}
    finally:
        proxy.close()


def test_s3_outage_is_ridden_out_inside_the_run(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """Finding 5: S3 refuses connections, then stalls, then answers 503 while files
    complete; nothing fails, nothing is committed past them, and every file lands
    in the same run once S3 is back (no restart)."""
    proxy = S3Proxy(int(os.environ["S3TS_S3_PORT"]))
    try:
        rng = random.Random(5)
        files = {f"o/f{i}.dat": rand_bytes(rng, rng.randint(1, 3 * CHUNK)) for i in range(12)}
        files["o/big.bin"] = rand_bytes(rng, 11 * 2**20 + 17)
        src = tmp_path / "src"
        write_tree(src, files)
        topic = new_topic(partitions=3)
        bucket = new_bucket()
        group = f"g-{uuid.uuid4().hex[:8]}"
        out = tmp_path / "out"
        env = {**os.environ, "ENDPOINT_URL": proxy.url}
        run = ProcessorRun(
            bucket, topic, group, out, "--part_size", "5", "--n_threads", "2", env=env
        )
        run.wait_for(lambda: "Listening to the" in run.stderr(), 60, "startup")
        proxy.refuse()
        n_messages = produce_tree(kafka_bootstrap, topic, src, files, partitions=3)
        run.wait_for(lambda: "S3 unreachable since" in run.stderr(), 60, "the outage warning")
        # Unreachable indeed: nothing reached the bucket, nothing was given up.
        assert list_objects(s3_client, bucket) == {}
        assert journal_entries(out / "LOGS", topic, group) == []
        time.sleep(4)
        proxy.stall()
        time.sleep(4)
        proxy.unavailable()
        time.sleep(4)
        # Nothing was committed past the files waiting for S3.
        assert sum(committed_offsets(kafka_bootstrap, topic, group).values()) < n_messages
        run.command("check")
        run.wait_for(lambda: "files transferred so far" in run.stderr(), 30, "the check output")
        check_line = next(
            line for line in run.stderr().splitlines() if "files transferred so far" in line
        )
        assert "S3 unreachable since" in check_line
        assert list_objects(s3_client, bucket) == {}
        assert journal_entries(out / "LOGS", topic, group) == []
        proxy.allow()
        expected = {f"{topic}/{rel}": len(data) for rel, data in files.items()}
        run.wait_for(lambda: list_objects(s3_client, bucket) == expected, 180, "every object")
        run.wait_for(
            lambda: sum(committed_offsets(kafka_bootstrap, topic, group).values()) == n_messages,
            60,
            "commits at the log end",
        )
        assert run.quit() == 0
        err = run.stderr()
        assert "S3 reachable again" in err
        assert "Failed to transfer" not in err
        # Each file transferred once, none given up.
        assert journal_outcomes(out / "LOGS", topic, group) == sorted(
            (rel, "transferred") for rel in files
        )
        for rel, data in files.items():
            assert read_object(s3_client, bucket, f"{topic}/{rel}") == data
        in_progress, processed = registry_tables(out, topic, group)
        assert in_progress == []
        assert sorted(r.rel_filepath.as_posix() for r in processed) == sorted(files)
        assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        proxy.close()


def test_file_produced_twice_is_listed_twice_and_restart_adds_nothing(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    src = tmp_path / "src"
    files = {"twice/same.dat": os.urandom(3 * CHUNK + 10)}
    write_tree(src, files)
    topic = new_topic(partitions=2)
    bucket = new_bucket()
    group = f"g-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    produce_tree(kafka_bootstrap, topic, src, files, partitions=2)
    run = ProcessorRun(bucket, topic, group, out, "--validate", "full")
    run.wait_for(lambda: run.stderr().count("Transferred twice/same.dat") == 1, 120, "first copy")
    assert read_object(s3_client, bucket, f"{topic}/twice/same.dat") == files["twice/same.dat"]
    assert journal_outcomes(out / "LOGS", topic, group) == [("twice/same.dat", "transferred")]
    produce_tree(kafka_bootstrap, topic, src, files, partitions=2)  # the same file again
    run.wait_for(lambda: run.stderr().count("Transferred twice/same.dat") == 2, 120, "second copy")
    assert run.quit() == 0
    assert "re-read object matches the producer's SHA-512" in run.stderr()
    assert list_objects(s3_client, bucket) == {f"{topic}/twice/same.dat": 3 * CHUNK + 10}
    assert read_object(s3_client, bucket, f"{topic}/twice/same.dat") == files["twice/same.dat"]
    assert journal_outcomes(out / "LOGS", topic, group) == [("twice/same.dat", "transferred")] * 2
    ends = filled_log_ends(kafka_bootstrap, topic)
    assert sum(ends.values()) == 2 * 4  # two copies of a four-chunk file
    assert committed_offsets(kafka_bootstrap, topic, group) == ends
    _, processed = registry_tables(out, topic, group)
    assert [r.rel_filepath.as_posix() for r in processed] == ["twice/same.dat"] * 2

    run2 = ProcessorRun(bucket, topic, group, out, tag="again")
    run2.wait_for(lambda: "Listening to the" in run2.stderr(), 60, "startup")
    time.sleep(3)
    assert run2.quit() == 0
    assert "Transferred" not in run2.stderr()
    _, processed = registry_tables(out, topic, group)
    assert len(processed) == 2
    assert journal_outcomes(out / "LOGS", topic, group) == [("twice/same.dat", "transferred")] * 2
    assert committed_offsets(kafka_bootstrap, topic, group) == ends


def test_recreated_topic_does_not_inherit_what_the_old_one_had_done(
    tmp_path: Path, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """Same group and output dir, topic deleted and created again: the journal's offsets
    belong to the old topic and must not make the processor skip the new messages."""
    from s3transfer_stream.kafka import create_topic, delete_topic

    topic = f"recreated-{uuid.uuid4().hex[:8]}"
    bucket = new_bucket()
    group = f"g-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    src = tmp_path / "src"
    write_tree(src, {"a.dat": b"first topic", "b.dat": b"second topic"})
    create_topic(kafka_bootstrap, topic, 1)
    try:
        produce_tree(kafka_bootstrap, topic, src, ["a.dat"], partitions=1)
        run = ProcessorRun(bucket, topic, group, out, tag="1")
        run.wait_for(lambda: f"{topic}/a.dat" in list_objects(s3_client, bucket), 60, "a.dat")
        run.wait_for(lambda: "Transferred a.dat" in run.stderr(), 30, "the transfer line")
        assert run.quit() == 0
        assert read_object(s3_client, bucket, f"{topic}/a.dat") == b"first topic"
        assert committed_offsets(kafka_bootstrap, topic, group) == {0: 1}
        delete_topic(kafka_bootstrap, topic)
        deadline = time.monotonic() + 60
        while True:
            try:
                create_topic(kafka_bootstrap, topic, 1)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        produce_tree(kafka_bootstrap, topic, src, ["b.dat"], partitions=1)  # offset 0 again
        run2 = ProcessorRun(bucket, topic, group, out, tag="2")
        run2.wait_for(lambda: f"{topic}/b.dat" in list_objects(s3_client, bucket), 60, "b.dat")
        assert run2.quit() == 0
        assert read_object(s3_client, bucket, f"{topic}/b.dat") == b"second topic"
        assert read_object(s3_client, bucket, f"{topic}/a.dat") == b"first topic"
        # The new topic's message 0 was transferred and committed, and recorded beside
        # the old topic's (two journal entries of different topic incarnations).
        assert committed_offsets(kafka_bootstrap, topic, group) == {0: 1}
        _, processed = registry_tables(out, topic, group)
        assert sorted(r.rel_filepath.as_posix() for r in processed) == ["a.dat", "b.dat"]
        entries = journal_entries(out / "LOGS", topic, group)
        assert [(e.rel_path, e.outcome) for e in entries] == [
            ("a.dat", "transferred"),
            ("b.dat", "transferred"),
        ]
        assert entries[0].topic_id != entries[1].topic_id
    finally:
        delete_topic(kafka_bootstrap, topic)
